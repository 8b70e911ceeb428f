//! A minimal stand-in for an agent's executor API (`POST /api/v1/executor`), for the executor
//! driver's tests: mesoblk's agent does not serve this endpoint yet. When it does, these tests
//! should move to it. It is kept protocol-exact for what it does, following Mesos's agent
//! (`src/slave/http.cpp` `Http::executor`): POST only (405), `Content-Type` missing → 400, not
//! exactly JSON/protobuf → 415, undecodable body or ids of another executor → 400; SUBSCRIBE →
//! 200 with a RecordIO stream in the negotiated encoding (406 when none is acceptable) whose
//! first event is SUBSCRIBED; UPDATE, MESSAGE and HEARTBEAT → 202 with an empty body. The test
//! drives the rest: it pushes events (LAUNCH, ACKNOWLEDGED, SHUTDOWN…), ends the stream, or
//! refuses subscriptions (503, as an agent still recovering does).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::executor::{call, event, Call, Event};
use mesoblk_proto::mesos::v1::{
    AgentId, AgentInfo, ContainerId, ExecutorId, ExecutorInfo, FrameworkId, FrameworkInfo, TaskId,
    TaskInfo, TaskStatus,
};
use mesoblk_proto::recordio;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Shared {
    framework_id: String,
    executor_id: String,
    calls: Mutex<Vec<Call>>,
    stream: Mutex<Option<mpsc::UnboundedSender<Event>>>,
    refuse: AtomicBool,
}

/// The fake agent.
pub struct FakeAgent {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub const AGENT_ID: &str = "fake-agent-S0";

fn typed(kind: event::Type) -> Event {
    Event {
        r#type: Some(kind as i32),
        ..Event::default()
    }
}

impl FakeAgent {
    pub async fn start(framework_id: &str, executor_id: &str) -> FakeAgent {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let shared = Arc::new(Shared {
            framework_id: framework_id.into(),
            executor_id: executor_id.into(),
            ..Shared::default()
        });
        let app = axum::Router::new()
            .route("/api/v1/executor", axum::routing::any(executor_api))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeAgent {
            addr,
            shared,
            server,
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Pushes an event on the live stream; false when there is none.
    pub fn send(&self, event: Event) -> bool {
        self.shared
            .stream
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|s| s.send(event).is_ok())
    }

    pub fn launch(&self, task_id: &str) -> bool {
        self.send(Event {
            launch: Some(event::Launch {
                task: task(task_id),
            }),
            ..typed(event::Type::Launch)
        })
    }

    pub fn acknowledge(&self, status: &TaskStatus) -> bool {
        self.send(Event {
            acknowledged: Some(event::Acknowledged {
                task_id: status.task_id.clone(),
                uuid: status.uuid.clone().unwrap_or_default(),
            }),
            ..typed(event::Type::Acknowledged)
        })
    }

    pub fn shutdown(&self) -> bool {
        self.send(typed(event::Type::Shutdown))
    }

    pub fn kill(&self, task_id: &str) -> bool {
        self.send(Event {
            kill: Some(event::Kill {
                task_id: TaskId {
                    value: task_id.into(),
                },
                kill_policy: None,
            }),
            ..typed(event::Type::Kill)
        })
    }

    pub fn message(&self, data: &[u8]) -> bool {
        self.send(Event {
            message: Some(event::Message {
                data: data.to_vec(),
            }),
            ..typed(event::Type::Message)
        })
    }

    /// Ends the live stream (the agent went away).
    pub fn close_stream(&self) {
        self.shared.stream.lock().unwrap().take();
    }

    /// Answers SUBSCRIBE with 503 while `on`.
    pub fn refuse_subscriptions(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    pub fn is_streaming(&self) -> bool {
        self.shared
            .stream
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    pub fn subscribes(&self) -> Vec<call::Subscribe> {
        self.calls()
            .into_iter()
            .filter(|c| c.r#type() == call::Type::Subscribe)
            .map(|c| c.subscribe.unwrap_or_default())
            .collect()
    }

    pub fn updates(&self) -> Vec<TaskStatus> {
        self.calls()
            .into_iter()
            .filter_map(|c| c.update.map(|u| u.status))
            .collect()
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.calls()
            .into_iter()
            .filter_map(|c| c.message.map(|m| m.data))
            .collect()
    }
}

pub fn task(task_id: &str) -> TaskInfo {
    TaskInfo {
        name: task_id.into(),
        task_id: TaskId {
            value: task_id.into(),
        },
        agent_id: AgentId {
            value: AGENT_ID.into(),
        },
        ..TaskInfo::default()
    }
}

fn subscribed(shared: &Shared) -> Event {
    let framework_id = FrameworkId {
        value: shared.framework_id.clone(),
    };
    Event {
        subscribed: Some(event::Subscribed {
            executor_info: ExecutorInfo {
                executor_id: ExecutorId {
                    value: shared.executor_id.clone(),
                },
                framework_id: Some(framework_id.clone()),
                ..ExecutorInfo::default()
            },
            framework_info: FrameworkInfo {
                user: "tester".into(),
                name: "fake".into(),
                id: Some(framework_id),
                ..FrameworkInfo::default()
            },
            agent_info: AgentInfo {
                hostname: "fake-agent".into(),
                id: Some(AgentId {
                    value: AGENT_ID.into(),
                }),
                ..AgentInfo::default()
            },
            container_id: Some(ContainerId {
                value: "container-1".into(),
                parent: None,
            }),
        }),
        ..typed(event::Type::Subscribed)
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, message.to_owned()).into_response()
}

async fn executor_api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "Expecting a 'POST' request");
    }
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Expecting 'Content-Type' to be present",
        );
    };
    let Some(content_type) = content_type
        .to_str()
        .ok()
        .and_then(ContentType::from_content_type)
    else {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Content-Type",
        );
    };
    let call: Call = match content_type.decode(&body) {
        Ok(call) => call,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if call.framework_id.value != shared.framework_id
        || call.executor_id.value != shared.executor_id
    {
        return refuse(StatusCode::BAD_REQUEST, "Unknown executor");
    }
    shared.calls.lock().unwrap().push(call.clone());
    match call.r#type() {
        call::Type::Subscribe => subscribe(&shared, &headers),
        call::Type::Update | call::Type::Message | call::Type::Heartbeat => {
            StatusCode::ACCEPTED.into_response()
        }
        call::Type::Unknown => refuse(StatusCode::BAD_REQUEST, "Expecting 'type' to be present"),
    }
}

fn subscribe(shared: &Arc<Shared>, headers: &HeaderMap) -> Response {
    if shared.refuse.load(Ordering::SeqCst) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Agent has not finished recovery",
        );
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let Some(encoding) = ContentType::negotiate(accept) else {
        return refuse(StatusCode::NOT_ACCEPTABLE, "No acceptable media type");
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(subscribed(shared));
    *shared.stream.lock().unwrap() = Some(tx);
    let frames = futures::stream::unfold(rx, move |mut rx| async move {
        let event = rx.recv().await?;
        let frame = Bytes::from(recordio::encode(&encoding.encode(&event)));
        Some((Ok::<_, Infallible>(frame), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, encoding.as_str())
        .body(Body::from_stream(frames))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
