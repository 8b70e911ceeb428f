//! Test harness for the framework library: the real master (`mesoblk_master::router`) on a
//! loopback port in a runtime of its own (so a test can kill it, connections and all, and start
//! a new one on the same port), a record of the scheduler calls it received, a TCP proxy that
//! can freeze or cut connections, tiny redirecting servers, and a `Scheduler` that hands every
//! callback to the test. Every wait is bounded.

#![allow(dead_code, unreachable_pub)] // Each test binary uses a different part of the harness.

// The master's own test agent, which speaks the agent protocol to a real master (registers
// resources, runs scripted "tasks", answers operations). Reused rather than copied, so it keeps
// up with the protocol.
#[path = "../../../master/tests/common/agent.rs"]
pub mod agent;
pub mod net;
pub mod recorder;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::Response;
use mesoblk_master::{router, Config, MasterHandle};
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::scheduler::{call, Call};
use mesoblk_proto::mesos::v1::FrameworkInfo;
use serde_json::Value;

/// Upper bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Scheduler calls a master received, decoded, in order.
pub type CallLog = Arc<Mutex<Vec<Call>>>;

/// A real master serving on a runtime of its own.
pub struct TestMaster {
    pub addr: SocketAddr,
    pub handle: MasterHandle,
    pub calls: CallLog,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Settings for these tests: heartbeats every 100 ms, and the master tests' short timers for
/// agents, offers and status update retries.
pub fn test_config() -> Config {
    let mut config = Config::new("test-master.local", Ipv4Addr::LOCALHOST, 5050);
    config.heartbeat_interval = Duration::from_millis(100);
    config.allocation_interval = Duration::from_millis(50);
    config.agent_ping_timeout = Duration::from_millis(100);
    config.max_agent_ping_timeouts = 3;
    config.status_update_retry_interval = Duration::from_millis(300);
    config
}

async fn record_calls(State(calls): State<CallLog>, request: Request, next: Next) -> Response {
    if request.uri().path() != "/api/v1/scheduler" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(ContentType::from_content_type);
    if let Some(Ok(call)) = content_type.map(|c| c.decode::<Call>(&bytes)) {
        calls.lock().unwrap().push(call);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

impl TestMaster {
    /// A master with [`test_config`] on a free loopback port.
    pub fn start() -> TestMaster {
        Self::start_with(test_config(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// A master with `config` on `addr` (retrying the bind for a while, for restarts).
    pub fn start_with(mut config: Config, addr: SocketAddr) -> TestMaster {
        let listener = bind(addr);
        let addr = listener.local_addr().expect("address");
        config.advertise_port = addr.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let handle = {
            let _guard = runtime.enter();
            MasterHandle::new(config)
        };
        let calls = CallLog::default();
        let app = router(handle.clone()).layer(axum::middleware::from_fn_with_state(
            calls.clone(),
            record_calls,
        ));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
        TestMaster {
            addr,
            handle,
            calls,
            runtime: Some(runtime),
        }
    }

    /// Kills the master and every connection to it; returns its address for a restart.
    pub fn kill(mut self) -> SocketAddr {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `host:port` as a driver takes it.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The types of the scheduler calls received so far.
    pub fn call_types(&self) -> Vec<call::Type> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.r#type())
            .collect()
    }

    /// The calls of one type received so far.
    pub fn calls_of(&self, kind: call::Type) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.r#type() == kind)
            .cloned()
            .collect()
    }

    /// GET_FRAMEWORKS through the operator API: (active ids, completed ids).
    pub async fn frameworks(&self) -> (Vec<(String, bool)>, Vec<String>) {
        let client = reqwest::Client::new();
        let response = tokio::time::timeout(
            WAIT,
            client
                .post(self.url("/api/v1"))
                .header("Content-Type", "application/json")
                .header("Accept", "application/json")
                .body(r#"{"type":"GET_FRAMEWORKS"}"#)
                .send(),
        )
        .await
        .expect("answer in time")
        .expect("operator call");
        assert_eq!(response.status(), 200);
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
        let list = |key: &str| -> Vec<Value> {
            body["get_frameworks"][key]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let registered = list("frameworks")
            .iter()
            .map(|f| {
                (
                    f["framework_info"]["id"]["value"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    f["connected"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        let completed = list("completed_frameworks")
            .iter()
            .map(|f| {
                f["framework_info"]["id"]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        (registered, completed)
    }
}

fn bind(addr: SocketAddr) -> std::net::TcpListener {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => {
                listener.set_nonblocking(true).expect("non-blocking");
                return listener;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// A framework named `name` that the master keeps for `failover_timeout` seconds.
pub fn framework(name: &str, failover_timeout: f64) -> FrameworkInfo {
    FrameworkInfo {
        user: "tester".into(),
        name: name.into(),
        failover_timeout: Some(failover_timeout),
        ..FrameworkInfo::default()
    }
}

/// Polls `condition` every 20 ms until it holds, for at most [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
