//! Simulated agents: each registers with the master over the agent protocol
//! (`proto/mesoblk/agent/v1/agent.proto`), keeps its RecordIO event stream open, answers PING
//! with a pong and RUN_TASK with a TASK_RUNNING status update at once. Nothing runs: the point
//! is the master's load, not the agents'.
//!
//! Every stream holds one connection of its own (a streaming response occupies it); pongs and
//! status updates share one client whose in-flight requests are bounded, so the sim needs about
//! one descriptor per agent plus that bound. Pongs have a bound of their own: behind a backlog
//! of status updates they would arrive too late and the master would remove the agents.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesoblk::agent::v1 as agent;
use mesoblk_proto::mesos::v1::agent_info::{capability, Capability};
use mesoblk_proto::mesos::v1::{task_status, AgentId, AgentInfo, TaskState, TaskStatus};
use mesoblk_proto::recordio;
use mesoblk_proto::resource::scalar;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// The largest event record a simulated agent accepts.
const RECORD_MAX: u64 = 16 << 20;
/// The pong endpoint.
const PONG: &str = "/agent/v1/pong";
/// Pongs in flight at most.
const PONGS_IN_FLIGHT: usize = 64;
/// Longest wait for one request of the agent protocol.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What every simulated agent offers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AgentShape {
    /// CPUs per agent.
    pub(crate) cpus: f64,
    /// Memory per agent, MB.
    pub(crate) mem: f64,
}

/// Counters of what the agents did, shared with the report.
#[derive(Debug, Default)]
pub(crate) struct AgentCounters {
    /// RUN_TASK events received.
    pub(crate) run_tasks: AtomicU64,
    /// Requests (pongs, status updates) the master refused or that failed.
    pub(crate) failed_posts: AtomicU64,
    /// Streams that ended while the run was going on.
    pub(crate) closed_streams: AtomicU64,
}

/// The agents' shared side: the master's URL, the posting client and its bound.
struct Poster {
    master: String,
    client: reqwest::Client,
    /// Status updates and registrations in flight.
    in_flight: Semaphore,
    /// Pongs in flight.
    pongs: Semaphore,
    counters: Arc<AgentCounters>,
}

impl Poster {
    async fn post(&self, path: &str, body: Vec<u8>) -> anyhow::Result<reqwest::Response> {
        let bound = if path == PONG {
            &self.pongs
        } else {
            &self.in_flight
        };
        let _permit = bound.acquire().await?;
        let request = self
            .client
            .post(format!("{}{path}", self.master))
            .header("Content-Type", "application/x-protobuf")
            .header("Accept", "application/x-protobuf")
            .body(body);
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
            .await
            .with_context(|| format!("{path}: no answer in {REQUEST_TIMEOUT:?}"))??;
        Ok(response)
    }

    /// Posts and expects `status`; failures are counted, not fatal (the master's retries and
    /// the report's task counts show their effect).
    async fn post_expecting(&self, path: &str, body: Vec<u8>, status: u16) {
        match self.post(path, body).await {
            Ok(r) if r.status().as_u16() == status => {}
            Ok(r) => {
                self.counters.failed_posts.fetch_add(1, Ordering::Relaxed);
                warn!(path, status = %r.status(), "the master refused a post");
            }
            Err(e) => {
                self.counters.failed_posts.fetch_add(1, Ordering::Relaxed);
                warn!(path, error = %e, "post failed");
            }
        }
    }
}

fn registration(index: usize, shape: AgentShape) -> agent::RegisterAgent {
    let capabilities = [
        capability::Type::MultiRole,
        capability::Type::HierarchicalRole,
        capability::Type::ReservationRefinement,
    ]
    .into_iter()
    .map(|t| Capability {
        r#type: Some(t as i32),
    })
    .collect();
    agent::RegisterAgent {
        agent_info: AgentInfo {
            hostname: format!("sim-agent-{index}"),
            port: Some(5051),
            resources: vec![scalar("cpus", shape.cpus), scalar("mem", shape.mem)],
            ..Default::default()
        },
        endpoint: "http://127.0.0.1:5051".into(),
        capabilities,
        resource_providers: Vec::new(),
        secret: None,
        version: Some(concat!("mesoblk-master-sim ", env!("CARGO_PKG_VERSION")).into()),
    }
}

/// The running agents: dropping this does not stop them; they end with the runtime.
pub(crate) struct Agents {
    /// How many registered and subscribed.
    pub(crate) count: usize,
    /// What they did.
    pub(crate) counters: Arc<AgentCounters>,
}

/// Registers and subscribes `n` agents, `concurrency` at a time, and leaves their streams
/// running. Any agent failing to register or subscribe fails the run.
pub(crate) async fn start(
    master: &str,
    n: usize,
    shape: AgentShape,
    concurrency: usize,
    posts_in_flight: usize,
) -> anyhow::Result<Agents> {
    let counters = Arc::new(AgentCounters::default());
    let poster = Arc::new(Poster {
        master: master.trim_end_matches('/').to_owned(),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(posts_in_flight + PONGS_IN_FLIGHT)
            .build()?,
        in_flight: Semaphore::new(posts_in_flight.max(1)),
        pongs: Semaphore::new(PONGS_IN_FLIGHT),
        counters: counters.clone(),
    });
    // Streams never go back to a pool, so their client keeps no idle connections.
    let streams = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let results: Vec<anyhow::Result<()>> = stream::iter(0..n)
        .map(|i| {
            let poster = poster.clone();
            let streams = streams.clone();
            async move { start_one(&poster, &streams, i, shape).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(Agents { count: n, counters })
}

async fn start_one(
    poster: &Arc<Poster>,
    streams: &reqwest::Client,
    index: usize,
    shape: AgentShape,
) -> anyhow::Result<()> {
    let register = ContentType::Protobuf.encode(&registration(index, shape));
    let response = poster.post("/agent/v1/register", register).await?;
    if response.status() != 200 {
        bail!(
            "agent {index}: registration answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let registered: agent::Registered = ContentType::Protobuf
        .decode(&response.bytes().await?)
        .with_context(|| format!("agent {index}: decoding Registered"))?;
    let agent_id = registered.agent_id;
    let subscribe = agent::Subscribe {
        agent_id: agent_id.clone(),
        secret: None,
    };
    let request = streams
        .post(format!("{}/agent/v1/subscribe", poster.master))
        .header("Content-Type", "application/x-protobuf")
        .header("Accept", "application/x-protobuf")
        .body(ContentType::Protobuf.encode(&subscribe));
    let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
        .await
        .with_context(|| format!("agent {index}: subscribe timed out"))??;
    if response.status() != 200 {
        bail!("agent {index}: subscribe answered {}", response.status());
    }
    tokio::spawn(read_stream(poster.clone(), agent_id, response));
    Ok(())
}

async fn read_stream(poster: Arc<Poster>, agent_id: AgentId, mut response: reqwest::Response) {
    let mut decoder = recordio::Decoder::new(RECORD_MAX);
    while let Ok(Some(chunk)) = response.chunk().await {
        let records = match decoder.feed(&chunk) {
            Ok(records) => records,
            Err(e) => {
                warn!(agent = %agent_id.value, error = %e, "bad RecordIO from the master");
                break;
            }
        };
        for record in records {
            match ContentType::Protobuf.decode::<agent::Event>(&record) {
                Ok(event) => react(&poster, &agent_id, event),
                Err(e) => warn!(agent = %agent_id.value, error = %e, "undecodable event"),
            }
        }
    }
    debug!(agent = %agent_id.value, "stream ended");
    poster
        .counters
        .closed_streams
        .fetch_add(1, Ordering::Relaxed);
}

/// Answers an event without holding up the stream: each answer is its own task.
fn react(poster: &Arc<Poster>, agent_id: &AgentId, event: agent::Event) {
    use agent::event::Type;
    let body = match event.r#type() {
        Type::Ping => {
            let pong = agent::Pong {
                agent_id: agent_id.clone(),
                sequence: event.ping.and_then(|p| p.sequence),
            };
            Some((PONG, ContentType::Protobuf.encode(&pong)))
        }
        Type::RunTask => {
            poster.counters.run_tasks.fetch_add(1, Ordering::Relaxed);
            event.run_task.map(|run| {
                let update = running(agent_id, run);
                (
                    "/agent/v1/status_update",
                    ContentType::Protobuf.encode(&update),
                )
            })
        }
        // Acknowledgements and everything else need no answer from an agent that keeps no
        // status-update store.
        _ => None,
    };
    if let Some((path, body)) = body {
        let poster = poster.clone();
        tokio::spawn(async move { poster.post_expecting(path, body, 202).await });
    }
}

/// TASK_RUNNING for a task just told to run, with a fresh 16-byte uuid as an executor sends.
fn running(agent_id: &AgentId, run: agent::event::RunTask) -> agent::StatusUpdate {
    let task_id = run.task.task_id;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    agent::StatusUpdate {
        framework_id: run.framework.id.unwrap_or_default(),
        agent_id: agent_id.clone(),
        status: TaskStatus {
            task_id,
            state: TaskState::TaskRunning as i32,
            source: Some(task_status::Source::Executor as i32),
            timestamp: Some(timestamp),
            uuid: Some(uuid::Uuid::new_v4().as_bytes().to_vec()),
            ..Default::default()
        },
        latest_state: None,
    }
}
