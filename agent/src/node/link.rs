//! The master link: registration (or re-registration with the agent's tasks), the event
//! stream (RecordIO of protobuf `Event`s), a watchdog on the master's PINGs, and reconnection
//! with exponential backoff and jitter. A lost stream, a 403 or an unreachable master all lead
//! to a re-registration. A 410 to a (re-)registration means an operator marked this agent gone
//! (MARK_AGENT_GONE): it may never come back with its id, so the agent stops with that error.

use std::sync::Arc;
use std::time::Duration;

use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::agent_info::{capability, Capability};
use mesoblk_proto::mesos::v1::{AgentId, AgentInfo, Task};
use mesoblk_proto::recordio;

use super::{identity, lock, Node, NodeError};

/// Largest event accepted on the stream.
const EVENT_MAX_BYTES: u64 = 64 << 20;
/// Longest wait between registration attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Bound on a request to the master other than the stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long without a PING before the stream is given up, when the master names no interval.
const DEFAULT_SILENCE: Duration = Duration::from_secs(75);

/// Why a call to the master failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    /// The master does not know this agent (403): re-register.
    #[error("403 Forbidden: the master does not know this agent")]
    Forbidden,
    /// The master refuses this agent for good (410): it was marked gone.
    #[error("410 Gone: {0}")]
    Gone(String),
    /// Any other failure, for the log.
    #[error("{0}")]
    Other(String),
}

/// The HTTP client for the master (plain HTTP).
pub(super) fn client() -> Result<reqwest::Client, NodeError> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?)
}

/// POSTs a protobuf body to the master; the response when 2xx.
pub(super) async fn post(
    node: &Node,
    client: &reqwest::Client,
    path: &str,
    body: Vec<u8>,
    timeout: Option<Duration>,
) -> Result<reqwest::Response, CallError> {
    let mut request = client
        .post(format!("{}{path}", node.config.master_url))
        .header("Content-Type", ContentType::Protobuf.as_str())
        .header("Accept", ContentType::Protobuf.as_str())
        .body(body);
    if let Some(secret) = &node.config.secret {
        request = request.bearer_auth(secret);
    }
    if let Some(timeout) = timeout {
        request = request.timeout(timeout);
    }
    let response = request
        .send()
        .await
        .map_err(|e| CallError::Other(format!("POST {path}: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == reqwest::StatusCode::FORBIDDEN {
        return Err(CallError::Forbidden);
    }
    let text = response.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::GONE {
        return Err(CallError::Gone(text.trim().to_owned()));
    }
    Err(CallError::Other(format!(
        "POST {path}: {status}: {}",
        text.trim()
    )))
}

/// Posts one message, with the usual timeout.
pub(super) async fn send<M: prost_reflect::ReflectMessage>(
    node: &Node,
    client: &reqwest::Client,
    path: &str,
    message: &M,
) -> Result<(), CallError> {
    let body = ContentType::Protobuf.encode(message);
    post(node, client, path, body, Some(REQUEST_TIMEOUT))
        .await
        .map(|_| ())
}

fn capabilities() -> Vec<Capability> {
    [
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
    .collect()
}

fn registration(node: &Node, agent_id: Option<&str>) -> agent::RegisterAgent {
    let provider = lock(&node.storage).provider_info();
    agent::RegisterAgent {
        agent_info: AgentInfo {
            hostname: node.config.hostname.clone(),
            port: Some(i32::from(node.config.port)),
            resources: node.total_resources(),
            attributes: node.config.attributes.clone(),
            id: agent_id.map(|value| AgentId {
                value: value.to_owned(),
            }),
            ..Default::default()
        },
        endpoint: node.config.endpoint.clone(),
        capabilities: capabilities(),
        resource_providers: vec![provider],
        secret: node.config.secret.clone(),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
    }
}

/// The running custom executors as a re-registration reports them, each with its framework id
/// (Mesos's `ReregisterSlaveMessage.executor_infos`).
fn custom_executors(
    summaries: &[crate::executor_api::ExecutorSummary],
) -> Vec<mesoblk_proto::mesos::v1::ExecutorInfo> {
    summaries
        .iter()
        .map(|summary| {
            let mut info = summary.info.clone();
            info.framework_id = summary.framework.id.clone();
            info
        })
        .collect()
}

/// What a re-registering agent reports: its frameworks, tasks (with their latest states) and
/// unacknowledged updates.
fn reregistration(node: &Node, agent_id: &str) -> agent::ReregisterAgent {
    let mut message = agent::ReregisterAgent {
        agent: registration(node, Some(agent_id)),
        ..Default::default()
    };
    let Some(rt) = node.runtime() else {
        return message;
    };
    // Before the books and the store: the executor API calls its sink (which takes the
    // store) with its table locked.
    message.executors = custom_executors(&rt.executors.executors());
    // Lock order everywhere: books, then store (the executor's sink takes the store).
    let books = lock(&rt.books);
    let mut store = lock(&rt.store);
    message.frameworks = books.frameworks().map(|(_, f)| f.clone()).collect();
    message.tasks = books
        .tasks()
        .map(|(key, task)| {
            let mut task: Task = task.clone();
            if let Some(state) = store.stream(key).and_then(|s| s.latest_state()) {
                task.state = state as i32;
            }
            task
        })
        .collect();
    drop(books);
    for (key, stream) in store.streams() {
        let latest = stream.latest_state();
        message
            .unacknowledged_updates
            .extend(stream.pending().map(|status| agent::StatusUpdate {
                framework_id: mesoblk_proto::mesos::v1::FrameworkId {
                    value: key.framework_id.clone(),
                },
                agent_id: AgentId {
                    value: agent_id.to_owned(),
                },
                status: status.clone(),
                latest_state: latest.map(|s| s as i32),
            }));
    }
    // Sent again by the sender right after the stream is up, as Mesos's agent does.
    store.reset_backoff();
    drop(store);
    let now = std::time::Instant::now();
    for pending in lock(&node.operations).values_mut() {
        pending.next_send = now;
    }
    message
}

/// Registers (or re-registers) once; the answer, or why not.
async fn register_once(
    node: &Arc<Node>,
    client: &reqwest::Client,
) -> Result<agent::Registered, CallError> {
    let known = node.agent_id().map(str::to_owned);
    let (path, body) = match &known {
        Some(id) => (
            "/agent/v1/reregister",
            ContentType::Protobuf.encode(&reregistration(node, id)),
        ),
        None => (
            "/agent/v1/register",
            ContentType::Protobuf.encode(&registration(node, None)),
        ),
    };
    let response = post(node, client, path, body, Some(REQUEST_TIMEOUT)).await?;
    let bytes = response
        .bytes()
        .await
        .map_err(|e| CallError::Other(format!("reading the registration answer: {e}")))?;
    let registered: agent::Registered = ContentType::Protobuf
        .decode(&bytes)
        .map_err(|e| CallError::Other(format!("undecodable registration answer: {e}")))?;
    if let Some(id) = &known {
        if registered.agent_id.value != *id {
            return Err(CallError::Other(format!(
                "the master re-registered agent {id} as {}",
                registered.agent_id.value
            )));
        }
    }
    Ok(registered)
}

/// Registers until it works, waiting longer after each failure.
async fn register(
    node: &Arc<Node>,
    client: &reqwest::Client,
) -> Result<agent::Registered, NodeError> {
    let mut wait = node.config.registration_backoff;
    loop {
        match register_once(node, client).await {
            Ok(registered) => {
                let id = registered.agent_id.value.clone();
                if node.agent_id().is_none() {
                    identity::store(&node.config.work_dir, &id)?;
                    node.start_runtime(&id)?;
                }
                tracing::info!(agent = %id, master = %registered.master_info.id, "registered with the master");
                node.counters
                    .registrations
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                lock(&node.link).master = Some(registered.master_info.clone());
                return Ok(registered);
            }
            Err(CallError::Gone(message)) => {
                tracing::error!(%message, "the master refuses this agent for good");
                return Err(NodeError::Gone(message));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "cannot register with the master");
                let jitter = wait.mul_f64(fastrand::f64());
                tokio::time::sleep(wait + jitter).await;
                wait = (wait * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Registers, keeps the stream, re-registers when it is lost; returns only on a SHUTDOWN from
/// the master or a local failure.
pub(super) async fn run(node: Arc<Node>, client: reqwest::Client) -> Result<(), NodeError> {
    loop {
        let registered = register(&node, &client).await?;
        let silence = registered
            .ping_interval_seconds
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(DEFAULT_SILENCE, |s| {
                Duration::from_secs_f64(
                    s * f64::from(registered.max_ping_timeouts.unwrap_or(5).max(1) + 1),
                )
            });
        match stream(&node, &client, silence).await {
            Ok(StreamEnd::Shutdown) => {
                wait_for_tasks(&node).await;
                return Ok(());
            }
            Ok(StreamEnd::Lost(why)) => tracing::warn!(%why, "event stream lost; re-registering"),
            Err(e) => tracing::warn!(error = %e, "cannot open the event stream; re-registering"),
        }
        node.set_connected(false);
        let pause = node.config.registration_backoff.mul_f64(fastrand::f64());
        tokio::time::sleep(pause).await;
    }
}

/// After a SHUTDOWN: waits (bounded by the shutdown grace period and a second) for the killed
/// tasks to end, so their terminal updates are stored before the agent exits.
async fn wait_for_tasks(node: &Node) {
    let deadline = tokio::time::Instant::now()
        + node.config.executor_shutdown_grace_period
        + Duration::from_secs(1);
    while node
        .runtime()
        .is_some_and(|rt| !rt.executor.tasks().is_empty())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How an open stream ended.
enum StreamEnd {
    Lost(String),
    Shutdown,
}

async fn stream(
    node: &Arc<Node>,
    client: &reqwest::Client,
    silence: Duration,
) -> Result<StreamEnd, CallError> {
    let agent_id = node.agent_id().unwrap_or_default().to_owned();
    let subscribe = agent::Subscribe {
        agent_id: AgentId { value: agent_id },
        secret: node.config.secret.clone(),
    };
    let body = ContentType::Protobuf.encode(&subscribe);
    let mut response = post(node, client, "/agent/v1/subscribe", body, None).await?;
    node.set_connected(true);
    tracing::info!("event stream open");
    let mut decoder = recordio::Decoder::new(EVENT_MAX_BYTES);
    loop {
        let chunk = tokio::select! {
            chunk = tokio::time::timeout(silence, response.chunk()) => chunk,
            () = node.relink.notified() => return Ok(StreamEnd::Lost("the master refused a call with 403".into())),
        };
        let chunk = match chunk {
            Err(_) => return Ok(StreamEnd::Lost(format!("no PING for {silence:?}"))),
            Ok(Err(e)) => return Ok(StreamEnd::Lost(e.to_string())),
            Ok(Ok(None)) => return Ok(StreamEnd::Lost("the master closed the stream".into())),
            Ok(Ok(Some(chunk))) => chunk,
        };
        let records = decoder
            .feed(&chunk)
            .map_err(|e| CallError::Other(format!("bad RecordIO on the stream: {e}")))?;
        for record in records {
            let event: agent::Event = match ContentType::Protobuf.decode(&record) {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable event ignored");
                    continue;
                }
            };
            if super::events::handle(node, client, event) {
                return Ok(StreamEnd::Shutdown);
            }
        }
    }
}
