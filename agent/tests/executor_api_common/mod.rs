//! Helpers of the executor API tests: an "agent" (an [`ExecutorApi`] served over real HTTP on
//! loopback, on its own tokio runtime so that dropping it closes every connection, as an agent
//! crash does, and recording the calls it gets), executor infos, bounded waits on the sinks,
//! and a small HTTP client; [`cgroup`]: what the executor cgroup tests share.

#![allow(dead_code, unreachable_pub)]

pub mod cgroup;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use mesoblk_agent::checkpoint::Layout;
use mesoblk_agent::executor_api::{
    ExecutorApi, ExecutorApiConfig, ExecutorLaunch, ExecutorMessage, Sinks, TaskUpdate, Work,
};
use mesoblk_agent::status::status_state;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::executor::{call, Call, Event};
use mesoblk_proto::mesos::v1::{
    CommandInfo, ExecutorId, ExecutorInfo, FrameworkId, FrameworkInfo, TaskId, TaskInfo, TaskState,
    TaskStatus,
};
use mesoblk_proto::recordio;

/// The longest any single wait in these tests lasts.
pub const WAIT: Duration = Duration::from_secs(30);

pub const FRAMEWORK: &str = "fw-exec-1";
pub const AGENT_ID: &str = "S-exec";

/// A work dir every user can traverse.
pub fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// An agent serving the executor API on loopback.
pub struct Agent {
    pub api: ExecutorApi,
    pub addr: SocketAddr,
    pub updates: Receiver<TaskUpdate>,
    pub messages: Receiver<ExecutorMessage>,
    pub work: PathBuf,
    /// How many executors `recover` found at start.
    pub recovered: usize,
    /// Every executor call it received (refused ones too), in order.
    pub calls: CallLog,
    runtime: tokio::runtime::Runtime,
}

/// Executor calls an agent received, with their encoding.
pub type CallLog = Arc<Mutex<Vec<(ContentType, Call)>>>;

/// Records each call that decodes, then lets the executor API answer it.
async fn record_calls(State(calls): State<CallLog>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let encoding = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(ContentType::from_content_type);
    if let Some(encoding) = encoding {
        if let Ok(call) = encoding.decode::<Call>(&bytes) {
            calls.lock().unwrap().push((encoding, call));
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

impl Agent {
    /// Starts an agent on `port` (0: any) with work dir `work`; `tweak` adjusts the config.
    pub fn start(work: &Path, port: u16, tweak: impl FnOnce(&mut ExecutorApiConfig)) -> Agent {
        Agent::start_recovering(work, port, true, tweak)
    }

    /// [`Agent::start`], calling `ExecutorApi::recover` only when `recover`.
    pub fn start_recovering(
        work: &Path,
        port: u16,
        recover: bool,
        tweak: impl FnOnce(&mut ExecutorApiConfig),
    ) -> Agent {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
            .expect("bind the agent's port");
        let addr = listener.local_addr().unwrap();
        let mut config = ExecutorApiConfig::new(
            Layout::new(work, AGENT_ID),
            env!("CARGO_BIN_EXE_mesoblk-launcher"),
            &addr.to_string(),
        );
        config.poll_interval = Duration::from_millis(20);
        config.switch_user = false;
        config.kill_grace = Duration::from_secs(2);
        tweak(&mut config);
        let (status_tx, updates) = channel();
        let (message_tx, messages) = channel();
        let sinks = Sinks {
            status: Arc::new(status_tx),
            messages: Arc::new(message_tx),
        };
        let api = {
            let _guard = runtime.enter();
            ExecutorApi::new(config, sinks)
        };
        let recovered = if recover {
            api.recover().expect("recovery reads the work dir")
        } else {
            0
        };
        let calls = CallLog::default();
        let app = api.routes().layer(axum::middleware::from_fn_with_state(
            calls.clone(),
            record_calls,
        ));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Agent {
            api,
            addr,
            updates,
            messages,
            work: work.to_path_buf(),
            recovered,
            calls,
            runtime,
        }
    }

    /// The SUBSCRIBE calls received so far (refused ones too).
    pub fn subscribes(&self) -> Vec<call::Subscribe> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.r#type() == call::Type::Subscribe)
            .filter_map(|(_, c)| c.subscribe.clone())
            .collect()
    }

    /// How many calls of `kind` were received so far.
    pub fn count(&self, kind: call::Type) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.r#type() == kind)
            .count()
    }

    pub fn url(&self) -> String {
        format!("http://{}/api/v1/executor", self.addr)
    }

    /// Runs `f` on the agent's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The next status update, within [`WAIT`].
    pub fn next_update(&self) -> TaskStatus {
        let update = self
            .updates
            .recv_timeout(WAIT)
            .expect("a status update in time");
        assert_eq!(update.framework_id, FRAMEWORK);
        update.status
    }

    /// The next `n` updates, sorted by task id then state order of arrival.
    pub fn updates(&self, n: usize) -> Vec<TaskStatus> {
        (0..n).map(|_| self.next_update()).collect()
    }

    /// The next executor message, within [`WAIT`].
    pub fn next_message(&self) -> ExecutorMessage {
        self.messages
            .recv_timeout(WAIT)
            .expect("an executor message in time")
    }

    /// Waits (bounded) until no executor is left.
    pub fn wait_no_executors(&self) {
        let deadline = Instant::now() + WAIT;
        while !self.api.executors().is_empty() {
            assert!(
                Instant::now() < deadline,
                "executors still there: {:?}",
                self.api.executors()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the executor has a live connection.
    pub fn wait_connected(&self, executor_id: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let connected = self
                .api
                .executors()
                .iter()
                .any(|e| e.info.executor_id.value == executor_id && e.connected);
            if connected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "executor {executor_id} never subscribed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent: its server, connections and monitor go (executors keep running).
    pub fn crash(self) {
        let Agent { api, runtime, .. } = self;
        drop(api);
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

pub fn framework(checkpoint: bool) -> FrameworkInfo {
    FrameworkInfo {
        user: String::new(),
        name: "executor-api-test".into(),
        id: Some(FrameworkId {
            value: FRAMEWORK.into(),
        }),
        checkpoint: Some(checkpoint),
        ..Default::default()
    }
}

pub fn executor(id: &str, shell_command: &str) -> ExecutorInfo {
    ExecutorInfo {
        executor_id: ExecutorId { value: id.into() },
        framework_id: Some(FrameworkId {
            value: FRAMEWORK.into(),
        }),
        command: Some(CommandInfo {
            shell: Some(true),
            value: Some(shell_command.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn task(id: &str, data: &str) -> TaskInfo {
    TaskInfo {
        name: id.into(),
        task_id: TaskId { value: id.into() },
        agent_id: mesoblk_proto::mesos::v1::AgentId {
            value: AGENT_ID.into(),
        },
        data: Some(data.as_bytes().to_vec()),
        ..Default::default()
    }
}

pub fn launch(
    checkpoint: bool,
    executor: ExecutorInfo,
    tasks: Vec<TaskInfo>,
    extra_env: &[(&str, &str)],
) -> ExecutorLaunch {
    ExecutorLaunch {
        framework: framework(checkpoint),
        executor,
        work: Work::Tasks(tasks),
        extra_env: extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        io_limits: Default::default(),
    }
}

pub fn state(status: &TaskStatus) -> TaskState {
    status_state(status)
}

/// The python of the pymesos venv `scripts/setup` made.
pub fn venv_python() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME");
    let python = Path::new(&home).join(".cache/mesoblk/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup",
        python.display()
    );
    python
}

/// A raw HTTP answer.
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// POSTs (or `method`s) `body` with `headers` and reads the whole answer.
pub async fn request(
    url: &str,
    method: reqwest::Method,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("an answer in time")
        .expect("the request goes through");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = tokio::time::timeout(WAIT, resp.bytes())
        .await
        .expect("a body in time")
        .expect("a body")
        .to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

/// An open SUBSCRIBE stream read event by event.
pub struct EventStream {
    resp: reqwest::Response,
    decoder: recordio::Decoder,
    ready: std::collections::VecDeque<Vec<u8>>,
    encoding: ContentType,
}

impl EventStream {
    /// POSTs a SUBSCRIBE `body` in `encoding`, expecting 200.
    pub async fn open(url: &str, encoding: ContentType, body: Vec<u8>) -> EventStream {
        let resp = tokio::time::timeout(
            WAIT,
            reqwest::Client::new()
                .post(url)
                .header("content-type", encoding.as_str())
                .header("accept", encoding.as_str())
                .body(body)
                .send(),
        )
        .await
        .expect("an answer in time")
        .expect("the request goes through");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            encoding.as_str()
        );
        EventStream {
            resp,
            decoder: recordio::Decoder::new(1 << 24),
            ready: Default::default(),
            encoding,
        }
    }

    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(record) = self.ready.pop_front() {
                return Some(self.encoding.decode(&record).expect("an event decodes"));
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("an event in time")
                .expect("the stream reads")?;
            self.ready
                .extend(self.decoder.feed(&chunk).expect("valid RecordIO"));
        }
    }
}
