//! A test agent speaking the agent protocol over real HTTP to a real master: it registers with
//! resources (cpus, mem, ports and a RAW disk pool from a resource provider), keeps its event
//! stream, answers PINGs, runs "tasks" by reporting states as scripted, answers KILL with
//! TASK_KILLED and operations with their outcome, and can disconnect and re-register. Every
//! event it receives (but PING) is also handed to the test. Every wait is bounded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::agent_info::{capability, Capability};
use mesoblk_proto::mesos::v1::resource::{disk_info, DiskInfo};
use mesoblk_proto::mesos::v1::{
    offer, task_status, value, AgentId, AgentInfo, ExecutorId, FrameworkId, FrameworkInfo, Label,
    Labels, OperationState, OperationStatus, Resource, ResourceProviderId, ResourceProviderInfo,
    Task, TaskId, TaskState, TaskStatus, Uuid,
};
use mesoblk_proto::recordio;
use tokio::sync::mpsc;

use super::WAIT;
pub use mesoblk_proto::resource::scalar;

/// The resource provider id of the test agent's RAW pool.
pub const PROVIDER: &str = "rp-test";

/// What the agent does with a task it is told to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskScript {
    /// TASK_STARTING, TASK_RUNNING, and it keeps running.
    Run,
    /// TASK_STARTING, TASK_RUNNING, TASK_FINISHED.
    Finish,
    /// Nothing: the test reports states itself.
    Silent,
}

/// How the agent behaves; changeable while it runs.
#[derive(Clone, Debug)]
pub struct Behavior {
    pub answer_pings: bool,
    pub script: TaskScript,
    /// Scripts for particular task ids, overriding `script`.
    pub scripts: BTreeMap<String, TaskScript>,
    pub answer_kills: bool,
    /// The state operations end in.
    pub operations: OperationState,
}

impl Behavior {
    fn script_for(&self, task_id: &str) -> TaskScript {
        self.scripts.get(task_id).copied().unwrap_or(self.script)
    }
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            answer_pings: true,
            script: TaskScript::Run,
            scripts: BTreeMap::new(),
            answer_kills: true,
            operations: OperationState::OperationFinished,
        }
    }
}

/// What the agent knows about its tasks (for re-registration).
#[derive(Default, Debug)]
struct Books {
    frameworks: BTreeMap<String, FrameworkInfo>,
    tasks: BTreeMap<(String, String), Task>,
    unacked: BTreeMap<(String, String), VecDeque<agent::StatusUpdate>>,
    disks: u64,
}

struct Shared {
    client: reqwest::Client,
    master: String,
    agent_id: Mutex<String>,
    behavior: Mutex<Behavior>,
    books: Mutex<Books>,
}

/// A running test agent.
pub struct TestAgent {
    shared: Arc<Shared>,
    register: agent::RegisterAgent,
    pub events: mpsc::UnboundedReceiver<agent::Event>,
    sender: mpsc::UnboundedSender<agent::Event>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

pub fn ports(begin: u64, end: u64) -> Resource {
    Resource {
        name: "ports".into(),
        r#type: value::Type::Ranges as i32,
        ranges: Some(value::Ranges {
            range: vec![value::Range { begin, end }],
        }),
        ..Default::default()
    }
}

/// A RAW pool of the test provider, `mb` MB of profile `profile`.
pub fn raw_pool(profile: &str, mb: f64) -> Resource {
    Resource {
        provider_id: Some(ResourceProviderId {
            value: PROVIDER.into(),
        }),
        disk: Some(DiskInfo {
            source: Some(disk_info::Source {
                r#type: disk_info::source::Type::Raw as i32,
                vendor: Some("mesoblk".into()),
                profile: Some(profile.into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..scalar("disk", mb)
    }
}

/// The usual test machine: 4 cpus, 4 GiB, ports 31000-32000, a 10 GiB "fast" pool.
pub fn standard_resources() -> Vec<Resource> {
    vec![
        scalar("cpus", 4.0),
        scalar("mem", 4096.0),
        ports(31000, 32000),
        raw_pool("fast", 10240.0),
    ]
}

fn registration(hostname: &str, resources: Vec<Resource>) -> agent::RegisterAgent {
    let capabilities = [
        capability::Type::MultiRole,
        capability::Type::HierarchicalRole,
        capability::Type::ReservationRefinement,
        capability::Type::ResourceProvider,
        capability::Type::AgentOperationFeedback,
    ]
    .into_iter()
    .map(|t| Capability {
        r#type: Some(t as i32),
    })
    .collect();
    agent::RegisterAgent {
        agent_info: AgentInfo {
            hostname: hostname.into(),
            port: Some(5051),
            resources,
            ..Default::default()
        },
        endpoint: "http://127.0.0.1:5051".into(),
        capabilities,
        resource_providers: vec![ResourceProviderInfo {
            id: Some(ResourceProviderId {
                value: PROVIDER.into(),
            }),
            r#type: "org.mesoblk.rp.ublk".into(),
            name: "pools".into(),
            ..Default::default()
        }],
        secret: None,
        version: Some("test".into()),
    }
}

async fn post(shared: &Shared, path: &str, body: Vec<u8>) -> reqwest::Response {
    let request = shared
        .client
        .post(format!("{}{path}", shared.master))
        .header("Content-Type", "application/x-protobuf")
        .header("Accept", "application/x-protobuf")
        .body(body);
    tokio::time::timeout(WAIT, request.send())
        .await
        .expect("the master answers in time")
        .expect("request")
}

fn new_uuid() -> Vec<u8> {
    uuid::Uuid::new_v4().as_bytes().to_vec()
}

impl TestAgent {
    /// Registers with `master` (`http://host:port`) and opens the stream.
    pub async fn start(master: &str, hostname: &str, resources: Vec<Resource>) -> TestAgent {
        let shared = Arc::new(Shared {
            // No idle connections kept: a master killed and restarted on the same port would
            // leave dead ones in the pool.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
            master: master.trim_end_matches('/').to_owned(),
            agent_id: Mutex::new(String::new()),
            behavior: Mutex::new(Behavior::default()),
            books: Mutex::new(Books::default()),
        });
        let register = registration(hostname, resources);
        let response = post(
            &shared,
            "/agent/v1/register",
            ContentType::Protobuf.encode(&register),
        )
        .await;
        assert_eq!(
            response.status(),
            200,
            "registration: {:?}",
            response.text().await
        );
        let body = response.bytes().await.expect("body");
        let registered: agent::Registered =
            ContentType::Protobuf.decode(&body).expect("Registered");
        *shared.agent_id.lock().unwrap() = registered.agent_id.value;
        let (sender, events) = mpsc::unbounded_channel();
        let mut agent = TestAgent {
            shared,
            register,
            events,
            sender,
            reader: None,
        };
        agent.connect().await;
        agent
    }

    pub fn id(&self) -> String {
        self.shared.agent_id.lock().unwrap().clone()
    }

    pub fn behave(&self, change: impl FnOnce(&mut Behavior)) {
        change(&mut self.shared.behavior.lock().unwrap());
    }

    /// Opens the event stream and starts reading it.
    pub async fn connect(&mut self) {
        let body = agent::Subscribe {
            agent_id: AgentId { value: self.id() },
            secret: None,
        };
        let response = post(
            &self.shared,
            "/agent/v1/subscribe",
            ContentType::Protobuf.encode(&body),
        )
        .await;
        assert_eq!(
            response.status(),
            200,
            "subscribe: {:?}",
            response.text().await
        );
        let shared = self.shared.clone();
        let sender = self.sender.clone();
        self.reader = Some(tokio::spawn(read_stream(shared, response, sender)));
    }

    /// Drops the stream (and stops answering pings until told otherwise).
    pub fn disconnect(&mut self) {
        self.behave(|b| b.answer_pings = false);
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }

    /// What the agent reports as its resources when it re-registers (a real agent reports its
    /// current total, volumes and created disks included).
    pub fn report_resources(&mut self, resources: Vec<Resource>) {
        self.register.agent_info.resources = resources;
    }

    /// Re-registers with the same id, its tasks and unacknowledged updates, and reconnects.
    pub async fn reregister(&mut self) -> reqwest::StatusCode {
        let mut message = agent::ReregisterAgent {
            agent: self.register.clone(),
            ..Default::default()
        };
        message.agent.agent_info.id = Some(AgentId { value: self.id() });
        {
            let books = self.shared.books.lock().unwrap();
            message.frameworks = books.frameworks.values().cloned().collect();
            message.tasks = books.tasks.values().cloned().collect();
            message.unacknowledged_updates = books.unacked.values().flatten().cloned().collect();
        }
        let response = post(
            &self.shared,
            "/agent/v1/reregister",
            ContentType::Protobuf.encode(&message),
        )
        .await;
        let status = response.status();
        if status == 200 {
            self.behave(|b| b.answer_pings = true);
            self.connect().await;
        }
        status
    }

    /// The next event that is not PING.
    pub async fn next_event(&mut self) -> agent::Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an agent event in time")
            .expect("the agent's stream is open")
    }

    /// Skips events until one of type `kind`.
    pub async fn next_of(&mut self, kind: agent::event::Type) -> agent::Event {
        loop {
            let event = self.next_event().await;
            if event.r#type() == kind {
                return event;
            }
        }
    }

    /// Reports a task state (with a fresh uuid, as an executor would); returns the uuid.
    pub async fn update(&self, framework_id: &str, task_id: &str, state: TaskState) -> Vec<u8> {
        send_update(&self.shared, framework_id, task_id, state).await
    }

    /// Posts raw bytes to an agent endpoint (for bad-input tests).
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        post(&self.shared, path, body).await
    }

    /// Updates the agent holds that were not acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.shared
            .books
            .lock()
            .unwrap()
            .unacked
            .values()
            .map(VecDeque::len)
            .sum()
    }
}

async fn send_update(
    shared: &Shared,
    framework_id: &str,
    task_id: &str,
    state: TaskState,
) -> Vec<u8> {
    let agent_id = shared.agent_id.lock().unwrap().clone();
    let uuid = new_uuid();
    let update = agent::StatusUpdate {
        framework_id: FrameworkId {
            value: framework_id.into(),
        },
        agent_id: AgentId { value: agent_id },
        status: TaskStatus {
            task_id: TaskId {
                value: task_id.into(),
            },
            state: state as i32,
            source: Some(task_status::Source::Executor as i32),
            executor_id: Some(ExecutorId {
                value: task_id.into(),
            }),
            timestamp: Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            ),
            uuid: Some(uuid.clone()),
            ..Default::default()
        },
        latest_state: None,
    };
    {
        let mut books = shared.books.lock().unwrap();
        let key = (framework_id.to_owned(), task_id.to_owned());
        if let Some(task) = books.tasks.get_mut(&key) {
            task.state = state as i32;
        }
        books
            .unacked
            .entry(key)
            .or_default()
            .push_back(update.clone());
    }
    let response = post(
        shared,
        "/agent/v1/status_update",
        ContentType::Protobuf.encode(&update),
    )
    .await;
    assert_eq!(
        response.status(),
        202,
        "status update: {:?}",
        response.text().await
    );
    uuid
}

async fn read_stream(
    shared: Arc<Shared>,
    mut response: reqwest::Response,
    sender: mpsc::UnboundedSender<agent::Event>,
) {
    let mut decoder = recordio::Decoder::new(16 << 20);
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            _ => return,
        };
        let Ok(records) = decoder.feed(&chunk) else {
            return;
        };
        for record in records {
            let Ok(event) = ContentType::Protobuf.decode::<agent::Event>(&record) else {
                continue;
            };
            react(&shared, &event).await;
            if event.r#type() != agent::event::Type::Ping {
                let _ = sender.send(event);
            }
        }
    }
}

/// The agent's automatic reactions.
async fn react(shared: &Arc<Shared>, event: &agent::Event) {
    let behavior = shared.behavior.lock().unwrap().clone();
    use agent::event::Type;
    match event.r#type() {
        Type::Ping if behavior.answer_pings => {
            let pong = agent::Pong {
                agent_id: AgentId {
                    value: shared.agent_id.lock().unwrap().clone(),
                },
                sequence: event.ping.as_ref().and_then(|p| p.sequence),
            };
            let _ = post(
                shared,
                "/agent/v1/pong",
                ContentType::Protobuf.encode(&pong),
            )
            .await;
        }
        Type::RunTask => {
            let Some(run) = &event.run_task else { return };
            book_task(shared, &run.framework, &run.task);
            let framework = run.framework.id.clone().unwrap_or_default().value;
            let id = run.task.task_id.value.clone();
            let script = behavior.script_for(&id);
            run_script(shared.clone(), framework, id, script);
        }
        Type::RunTaskGroup => {
            let Some(run) = &event.run_task_group else {
                return;
            };
            for task in &run.task_group.tasks {
                book_task(shared, &run.framework, task);
                let framework = run.framework.id.clone().unwrap_or_default().value;
                let id = task.task_id.value.clone();
                let script = behavior.script_for(&id);
                run_script(shared.clone(), framework, id, script);
            }
        }
        Type::KillTask if behavior.answer_kills => {
            let Some(kill) = &event.kill_task else { return };
            let (framework, task) = (kill.framework_id.value.clone(), kill.task_id.value.clone());
            let shared = shared.clone();
            tokio::spawn(async move {
                send_update(&shared, &framework, &task, TaskState::TaskKilled).await;
            });
        }
        Type::Acknowledge => {
            let Some(ack) = &event.acknowledge else {
                return;
            };
            let key = (ack.framework_id.value.clone(), ack.task_id.value.clone());
            let mut books = shared.books.lock().unwrap();
            if let Some(queue) = books.unacked.get_mut(&key) {
                queue.retain(|u| u.status.uuid.as_deref() != Some(ack.uuid.as_slice()));
            }
            let terminal = books.tasks.get(&key).is_some_and(|t| {
                matches!(
                    TaskState::try_from(t.state),
                    Ok(TaskState::TaskFinished | TaskState::TaskKilled | TaskState::TaskFailed)
                )
            });
            if terminal && books.unacked.get(&key).is_none_or(VecDeque::is_empty) {
                books.tasks.remove(&key);
                books.unacked.remove(&key);
            }
        }
        Type::ApplyOperation => {
            let Some(apply) = &event.apply_operation else {
                return;
            };
            let status = operation_outcome(shared, &apply.operation_info, behavior.operations);
            let update = agent::OperationStatusUpdate {
                agent_id: AgentId {
                    value: shared.agent_id.lock().unwrap().clone(),
                },
                framework_id: apply.framework_id.clone(),
                operation_uuid: apply.operation_uuid.clone(),
                status,
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let body = ContentType::Protobuf.encode(&update);
                let response = post(&shared, "/agent/v1/operation_status", body).await;
                if response.status() != 202 {
                    eprintln!(
                        "test agent: operation status refused: {:?}",
                        response.text().await
                    );
                }
            });
        }
        Type::ShutdownFramework => {
            let Some(shutdown) = &event.shutdown_framework else {
                return;
            };
            let mut books = shared.books.lock().unwrap();
            books
                .tasks
                .retain(|k, _| k.0 != shutdown.framework_id.value);
            books
                .unacked
                .retain(|k, _| k.0 != shutdown.framework_id.value);
        }
        _ => {}
    }
}

fn book_task(
    shared: &Shared,
    framework: &FrameworkInfo,
    task: &mesoblk_proto::mesos::v1::TaskInfo,
) {
    let framework_id = framework.id.clone().unwrap_or_default();
    let mut books = shared.books.lock().unwrap();
    books
        .frameworks
        .insert(framework_id.value.clone(), framework.clone());
    books.tasks.insert(
        (framework_id.value.clone(), task.task_id.value.clone()),
        Task {
            name: task.name.clone(),
            task_id: task.task_id.clone(),
            framework_id,
            executor_id: task.executor.as_ref().map(|e| e.executor_id.clone()),
            agent_id: task.agent_id.clone(),
            state: TaskState::TaskStaging as i32,
            resources: task.resources.clone(),
            ..Default::default()
        },
    );
}

fn run_script(shared: Arc<Shared>, framework: String, task: String, script: TaskScript) {
    let states: &[TaskState] = match script {
        TaskScript::Run => &[TaskState::TaskStarting, TaskState::TaskRunning],
        TaskScript::Finish => &[
            TaskState::TaskStarting,
            TaskState::TaskRunning,
            TaskState::TaskFinished,
        ],
        TaskScript::Silent => &[],
    };
    tokio::spawn(async move {
        for state in states {
            send_update(&shared, &framework, &task, *state).await;
        }
    });
}

/// The agent's answer to an operation: CREATE_DISK turns the RAW source into a disk of the
/// target type with an id and a `path` label; DESTROY_DISK returns it to the pool.
fn operation_outcome(
    shared: &Shared,
    info: &offer::Operation,
    state: OperationState,
) -> OperationStatus {
    let mut converted = Vec::new();
    if state == OperationState::OperationFinished {
        if let Some(create) = &info.create_disk {
            let n = {
                let mut books = shared.books.lock().unwrap();
                books.disks += 1;
                books.disks
            };
            let mut disk = create.source.clone();
            disk.allocation_info = None;
            if let Some(source) = disk.disk.as_mut().and_then(|d| d.source.as_mut()) {
                source.r#type = create.target_type;
                source.id = Some(format!("vol-{n}"));
                source.metadata = Some(Labels {
                    labels: vec![Label {
                        key: "path".into(),
                        value: Some(format!("/dev/ublkb{n}")),
                    }],
                });
            }
            converted.push(disk);
        }
        if let Some(destroy) = &info.destroy_disk {
            let mut pool = destroy.source.clone();
            pool.allocation_info = None;
            if let Some(source) = pool.disk.as_mut().and_then(|d| d.source.as_mut()) {
                source.r#type = disk_info::source::Type::Raw as i32;
                source.id = None;
                source.metadata = None;
            }
            converted.push(pool);
        }
    }
    OperationStatus {
        operation_id: info.id.clone(),
        state: state as i32,
        message: (state != OperationState::OperationFinished).then(|| "scripted failure".into()),
        converted_resources: converted,
        uuid: Some(Uuid { value: new_uuid() }),
        ..Default::default()
    }
}

/// Waits `d` (a bounded pause for "nothing happens" checks).
pub async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}
