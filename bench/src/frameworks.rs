//! Simulated frameworks on the Rust framework library (`mesoblk_framework::scheduler`): each
//! launches small command tasks into its offers until its share of the total is launched, then
//! declines for an hour and SUPPRESSes. The shared [`Book`] records when each launch's ACCEPT
//! was sent and answered, and when its TASK_RUNNING reached the scheduler.
//!
//! ACCEPTs, DECLINEs and ACKNOWLEDGEs (explicit acknowledgements) go out on their own tasks so
//! the callback returns at once: status updates are recorded when they arrive, not after the
//! framework's earlier calls were answered (with the driver's implicit acknowledgements, each
//! update would wait for the acknowledgement of the one before). At most [`CALLS_IN_FLIGHT`]
//! calls are in flight per framework (each may hold a connection).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mesoblk_framework::operations::{refuse_seconds, scalar, scalar_sum};
use mesoblk_framework::proto::mesos::v1::{
    CommandInfo, FrameworkId, FrameworkInfo, MasterInfo, Offer, OfferId, TaskId, TaskInfo,
    TaskState, TaskStatus,
};
use mesoblk_framework::scheduler::{Scheduler, SchedulerConfig, SchedulerDriver};
use mesoblk_framework::ContentType;
use tokio::sync::{Notify, Semaphore};

/// How long the master keeps a disconnected framework and its tasks: an overloaded master
/// disconnects a framework whose event queue fills up, and the driver resubscribes.
const FAILOVER_TIMEOUT_SECS: f64 = 600.0;

/// An error with its sources (the driver's errors say what failed in their source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Calls (ACCEPT, DECLINE, ACKNOWLEDGE) one framework has in flight at most.
pub(crate) const CALLS_IN_FLIGHT: usize = 8;

/// The resources of one task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskShape {
    /// CPUs per task.
    pub(crate) cpus: f64,
    /// Memory per task, MB.
    pub(crate) mem: f64,
}

impl TaskShape {
    /// How many tasks fit into `cpus` and `mem` (counted in thousandths, as the master does, so
    /// float noise in offers cannot lose a task).
    pub(crate) fn fit(&self, cpus: f64, mem: f64) -> usize {
        let thousandths = |x: f64| (x * 1000.0).round().max(0.0) as u64;
        let by_cpus = thousandths(cpus) / thousandths(self.cpus).max(1);
        let by_mem = thousandths(mem) / thousandths(self.mem).max(1);
        usize::try_from(by_cpus.min(by_mem)).unwrap_or(usize::MAX)
    }
}

/// What the frameworks saw, for the report.
#[derive(Debug, Default)]
pub(crate) struct Records {
    /// When each task was launched (its ACCEPT queued to be sent), by task id.
    pub(crate) sent: HashMap<String, Instant>,
    /// Time from sending each ACCEPT (once a call slot is free) to the master's answer.
    pub(crate) accept_latencies: Vec<Duration>,
    /// Time from launching a task to its TASK_RUNNING reaching the scheduler.
    pub(crate) running_latencies: Vec<Duration>,
    /// The first ACCEPT sent.
    pub(crate) first_launch: Option<Instant>,
    /// The last TASK_RUNNING received.
    pub(crate) last_running: Option<Instant>,
    /// TASK_RUNNING updates received again (resent by the master before their acknowledgement
    /// reached it).
    pub(crate) repeated_updates: u64,
    /// Tasks that ended in another state, with the state and message.
    pub(crate) failures: Vec<String>,
    /// DECLINE, SUPPRESS and ACKNOWLEDGE calls that failed (harmless: see where counted).
    pub(crate) soft_call_failures: u64,
    /// Times a framework's stream broke (the driver then resubscribes).
    pub(crate) disconnections: u64,
    /// ACCEPT calls the master refused or that failed, and framework errors: the run fails.
    pub(crate) call_errors: Vec<String>,
    /// OFFERS events received, and offers in them.
    pub(crate) offer_events: u64,
    /// Offers received.
    pub(crate) offers: u64,
}

/// The frameworks' shared records and the signal that every task is running.
#[derive(Debug)]
pub(crate) struct Book {
    records: Mutex<Records>,
    total: usize,
    /// Woken when every task is running or one failed.
    pub(crate) settled: Notify,
}

impl Book {
    /// A book for `total` tasks.
    pub(crate) fn new(total: usize) -> Self {
        Book {
            records: Mutex::new(Records::default()),
            total,
            settled: Notify::new(),
        }
    }

    /// The records so far.
    pub(crate) fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether every task is running, or something failed (the run is over either way).
    pub(crate) fn is_settled(&self) -> bool {
        let r = self.records();
        r.running_latencies.len() >= self.total
            || !r.failures.is_empty()
            || !r.call_errors.is_empty()
    }

    fn check_settled(&self) {
        if self.is_settled() {
            self.settled.notify_waiters();
        }
    }
}

/// One simulated framework.
struct SimFramework {
    index: usize,
    remaining: usize,
    next_task: usize,
    shape: TaskShape,
    book: Arc<Book>,
    suppressed: bool,
    calls: Arc<Semaphore>,
}

impl SimFramework {
    fn task(&mut self, offer: &Offer) -> TaskInfo {
        let id = format!("fw{}-t{}", self.index, self.next_task);
        self.next_task += 1;
        TaskInfo {
            name: id.clone(),
            task_id: TaskId { value: id },
            agent_id: offer.agent_id.clone(),
            resources: vec![
                scalar("cpus", self.shape.cpus),
                scalar("mem", self.shape.mem),
            ],
            command: Some(CommandInfo {
                value: Some("true".into()),
                ..CommandInfo::default()
            }),
            ..TaskInfo::default()
        }
    }

    fn launch(&mut self, driver: &SchedulerDriver, offer: &Offer, n: usize) {
        let tasks: Vec<TaskInfo> = (0..n).map(|_| self.task(offer)).collect();
        let sent = Instant::now();
        {
            let mut r = self.book.records();
            r.first_launch.get_or_insert(sent);
            for task in &tasks {
                r.sent.insert(task.task_id.value.clone(), sent);
            }
        }
        let (driver, book, offer_id) = (driver.clone(), self.book.clone(), offer.id.clone());
        let calls = self.calls.clone();
        tokio::spawn(async move {
            let Ok(_permit) = calls.acquire().await else {
                return;
            };
            let call_sent = Instant::now();
            // Unused parts of the offer come back at once: other launches may want them.
            let result = driver
                .launch_tasks(vec![offer_id], tasks, Some(refuse_seconds(0.0)))
                .await;
            let mut r = book.records();
            match result {
                Ok(()) => r.accept_latencies.push(call_sent.elapsed()),
                Err(e) => r.call_errors.push(format!("ACCEPT: {}", chain(&e))),
            }
            drop(r);
            book.check_settled();
        });
    }

    fn decline(&mut self, driver: &SchedulerDriver, offers: Vec<OfferId>) {
        // Once done, keep the offers away for an hour and stop asking (SUPPRESS), as a finished
        // framework should; until then, the default filter.
        let done = self.remaining == 0;
        let suppress = done && !self.suppressed;
        self.suppressed |= done;
        let filters = done.then(|| refuse_seconds(3600.0));
        let (driver, book) = (driver.clone(), self.book.clone());
        let calls = self.calls.clone();
        tokio::spawn(async move {
            let Ok(_permit) = calls.acquire().await else {
                return;
            };
            // A failed DECLINE or SUPPRESS costs nothing but a later offer (offers are void after
            // a disconnection): counted, not fatal.
            let mut failed = 0;
            if !offers.is_empty() && driver.decline(offers, filters).await.is_err() {
                failed += 1;
            }
            if suppress && driver.suppress(Vec::new()).await.is_err() {
                failed += 1;
            }
            book.records().soft_call_failures += failed;
        });
    }

    fn acknowledge(&self, driver: &SchedulerDriver, status: TaskStatus) {
        let (driver, book, calls) = (driver.clone(), self.book.clone(), self.calls.clone());
        tokio::spawn(async move {
            let Ok(_permit) = calls.acquire().await else {
                return;
            };
            // An unacknowledged update comes again: counted, not fatal.
            if driver.acknowledge_status_update(&status).await.is_err() {
                book.records().soft_call_failures += 1;
            }
        });
    }
}

impl Scheduler for SimFramework {
    async fn registered(&mut self, _: &SchedulerDriver, id: &FrameworkId, _: Option<&MasterInfo>) {
        tracing::debug!(framework = %id.value, index = self.index, "registered");
    }

    async fn resource_offers(&mut self, driver: &SchedulerDriver, offers: Vec<Offer>) {
        {
            let mut r = self.book.records();
            r.offer_events += 1;
            r.offers += offers.len() as u64;
        }
        let mut unused = Vec::new();
        for offer in offers {
            let fit = self.shape.fit(
                scalar_sum(&offer.resources, "cpus"),
                scalar_sum(&offer.resources, "mem"),
            );
            let n = fit.min(self.remaining);
            if n == 0 {
                unused.push(offer.id);
                continue;
            }
            self.remaining -= n;
            self.launch(driver, &offer, n);
        }
        if !unused.is_empty() || (self.remaining == 0 && !self.suppressed) {
            self.decline(driver, unused);
        }
    }

    async fn status_update(&mut self, driver: &SchedulerDriver, status: &TaskStatus) {
        let now = Instant::now();
        self.acknowledge(driver, status.clone());
        let mut r = self.book.records();
        // A task leaves `sent` at its first TASK_RUNNING; the master resends updates that were
        // not acknowledged in time, and those repeats are only counted.
        let sent = r.sent.remove(&status.task_id.value);
        match (status.state(), sent) {
            (TaskState::TaskRunning, Some(sent)) => {
                r.running_latencies.push(now.duration_since(sent));
                r.last_running = Some(now);
            }
            (TaskState::TaskRunning, None) => r.repeated_updates += 1,
            (state, _) => r.failures.push(format!(
                "{}: {} ({})",
                status.task_id.value,
                state.as_str_name(),
                status.message.as_deref().unwrap_or("no message")
            )),
        }
        drop(r);
        self.book.check_settled();
    }

    async fn disconnected(&mut self, _: &SchedulerDriver) {
        self.book.records().disconnections += 1;
    }

    async fn error(&mut self, _: &SchedulerDriver, message: &str) {
        self.book
            .records()
            .call_errors
            .push(format!("framework {}: {message}", self.index));
        self.book.check_settled();
    }
}

/// Starts `n` frameworks against `master` (`host:port`), splitting `total` tasks between them
/// as evenly as possible. The drivers keep running on the runtime.
pub(crate) fn start(
    master: &str,
    n: usize,
    total: usize,
    shape: TaskShape,
    book: &Arc<Book>,
) -> anyhow::Result<Vec<SchedulerDriver>> {
    let mut drivers = Vec::with_capacity(n);
    for index in 0..n {
        let share = total / n + usize::from(index < total % n);
        let info = FrameworkInfo {
            user: "nobody".into(),
            name: format!("sim-framework-{index}"),
            failover_timeout: Some(FAILOVER_TIMEOUT_SECS),
            ..FrameworkInfo::default()
        };
        let mut config = SchedulerConfig::new(master);
        config.content_type = ContentType::Protobuf;
        config.implicit_acknowledgements = false;
        let driver = SchedulerDriver::new(info, config)?;
        driver.start(SimFramework {
            index,
            remaining: share,
            next_task: 0,
            shape,
            book: book.clone(),
            suppressed: false,
            calls: Arc::new(Semaphore::new(CALLS_IN_FLIGHT)),
        })?;
        drivers.push(driver);
    }
    Ok(drivers)
}
