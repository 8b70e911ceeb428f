//! `block-bench`: benchmarks N mesoblk block devices at once.
//!
//! It takes N slices of a storage profile's RAW pool from the offers and launches one task per
//! slice; the agent serves each slice to its task as a fresh `/dev/ublkbN` that lives as long
//! as the task. The tasks run under a custom executor (`block-bench-executor`, the other half
//! of this example) that runs fio against the device and sends the figures back as a framework
//! message; the scheduler prints them as a table.
//!
//! ```text
//! cargo build -p mesoblk-framework --examples
//! target/debug/examples/block-bench --master 127.0.0.1:5050 --profile standard --disks 2
//! ```
//!
//! Exits 0 when every task finished and reported, 1 otherwise.

mod job;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use job::{Job, JobResult};
use mesoblk_framework::block;
use mesoblk_framework::operations::{refuse_seconds, scalar};
use mesoblk_framework::proto::mesos::v1::{
    AgentId, CommandInfo, ExecutorId, ExecutorInfo, FrameworkId, MasterInfo, Offer, TaskId,
    TaskInfo, TaskStatus,
};
use mesoblk_framework::proto::task_state::is_terminal;
use mesoblk_framework::scheduler::{framework_info, Scheduler, SchedulerConfig, SchedulerDriver};

/// Runs fio on N block devices of a profile and prints what each one did.
#[derive(Parser, Debug)]
#[command(name = "block-bench")]
struct Args {
    /// The master, `HOST:PORT`.
    #[arg(long, default_value = "127.0.0.1:5050")]
    master: String,
    /// The agent's storage profile the devices come from.
    #[arg(long, default_value = "standard")]
    profile: String,
    /// How many devices (and tasks).
    #[arg(long, default_value_t = 2)]
    disks: usize,
    /// Size of each device in MB.
    #[arg(long, default_value_t = 256)]
    size_mb: u32,
    /// fio's `--rw`.
    #[arg(long, default_value = "randrw")]
    rw: String,
    /// fio's `--bs`.
    #[arg(long, default_value = "4k")]
    bs: String,
    /// fio's `--iodepth`.
    #[arg(long, default_value_t = 16)]
    iodepth: u32,
    /// Seconds each fio job runs.
    #[arg(long, default_value_t = 10)]
    runtime: u32,
    /// The executor binary (default: `block-bench-executor` next to this program).
    #[arg(long)]
    executor: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The user tasks run as (default: this process's user).
    #[arg(long)]
    user: Option<String>,
}

/// How a task ended and what it reported.
#[derive(Default)]
struct TaskOutcome {
    end: Option<TaskStatus>,
    result: Option<JobResult>,
}

struct BlockBench {
    args: Args,
    executor: PathBuf,
    launched: usize,
    tasks: BTreeMap<String, TaskOutcome>,
    report: Arc<Mutex<Option<Report>>>,
}

/// What `main` prints after the driver stops.
struct Report {
    tasks: BTreeMap<String, TaskOutcome>,
    error: Option<String>,
}

impl BlockBench {
    fn job(&self) -> Job {
        Job {
            rw: self.args.rw.clone(),
            bs: self.args.bs.clone(),
            iodepth: self.args.iodepth,
            runtime_secs: self.args.runtime,
        }
    }

    fn task(
        &self,
        offer: &Offer,
        slice: &mesoblk_framework::proto::mesos::v1::Resource,
    ) -> TaskInfo {
        let id = format!("block-bench-{}", self.launched + 1);
        let executor = ExecutorInfo {
            executor_id: ExecutorId { value: id.clone() },
            name: Some("block-bench-executor".into()),
            command: Some(CommandInfo {
                value: Some(self.executor.display().to_string()),
                shell: Some(false),
                ..CommandInfo::default()
            }),
            resources: vec![scalar("cpus", 0.1), scalar("mem", 32.0)],
            ..ExecutorInfo::default()
        };
        TaskInfo {
            name: id.clone(),
            task_id: TaskId { value: id },
            agent_id: offer.agent_id.clone(),
            resources: vec![
                scalar("cpus", 0.4),
                scalar("mem", 128.0),
                block::task_disk(slice, None),
            ],
            executor: Some(executor),
            data: serde_json::to_vec(&self.job()).ok(),
            ..TaskInfo::default()
        }
    }

    /// Tasks for as many still-wanted devices as `offer` has room for.
    fn tasks_for(&mut self, offer: &Offer) -> Vec<TaskInfo> {
        let wanted = self.args.disks - self.launched;
        let mut tasks = Vec::new();
        for slice in block::raw_slices(offer, &self.args.profile, self.args.size_mb.into(), wanted)
        {
            let task = self.task(offer, &slice);
            println!(
                "Launching {} on agent {} with a {} MB device from profile {:?}.",
                task.task_id.value, offer.hostname, self.args.size_mb, self.args.profile
            );
            self.tasks
                .insert(task.task_id.value.clone(), TaskOutcome::default());
            self.launched += 1;
            tasks.push(task);
        }
        tasks
    }

    fn all_reported(&self) -> bool {
        self.launched == self.args.disks
            && self
                .tasks
                .values()
                .all(|t| t.end.is_some() && (t.result.is_some() || !finished(t)))
    }

    async fn finish(&mut self, driver: &SchedulerDriver, error: Option<String>) {
        let report = Report {
            tasks: std::mem::take(&mut self.tasks),
            error,
        };
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        if let Err(e) = driver.stop(false).await {
            eprintln!("block-bench: could not tear the framework down: {e}");
        }
    }

    async fn maybe_done(&mut self, driver: &SchedulerDriver) {
        if self.all_reported() {
            self.finish(driver, None).await;
        }
    }
}

fn finished(outcome: &TaskOutcome) -> bool {
    outcome
        .end
        .as_ref()
        .is_some_and(|s| s.state() == mesoblk_framework::proto::mesos::v1::TaskState::TaskFinished)
}

impl Scheduler for BlockBench {
    async fn registered(&mut self, _: &SchedulerDriver, id: &FrameworkId, _: Option<&MasterInfo>) {
        println!(
            "Registered as framework {}; waiting for offers with {:?} storage.",
            id.value, self.args.profile
        );
    }

    async fn resource_offers(&mut self, driver: &SchedulerDriver, offers: Vec<Offer>) {
        for offer in offers {
            let tasks = if self.launched < self.args.disks {
                self.tasks_for(&offer)
            } else {
                Vec::new()
            };
            let result = if tasks.is_empty() {
                driver
                    .decline(vec![offer.id], Some(refuse_seconds(5.0)))
                    .await
            } else {
                driver
                    .launch_tasks(vec![offer.id], tasks, Some(refuse_seconds(5.0)))
                    .await
            };
            if let Err(e) = result {
                self.finish(driver, Some(format!("the master refused a call: {e}")))
                    .await;
                return;
            }
        }
    }

    async fn status_update(&mut self, driver: &SchedulerDriver, status: &TaskStatus) {
        let message = status.message.as_deref().unwrap_or("");
        println!(
            "  {} is {} {message}",
            status.task_id.value,
            status.state().as_str_name()
        );
        if !is_terminal(status.state()) {
            return;
        }
        if let Some(task) = self.tasks.get_mut(&status.task_id.value) {
            task.end = Some(status.clone());
        }
        self.maybe_done(driver).await;
    }

    async fn framework_message(
        &mut self,
        driver: &SchedulerDriver,
        _: &ExecutorId,
        _: &AgentId,
        data: &[u8],
    ) {
        match serde_json::from_slice::<JobResult>(data) {
            Ok(result) => {
                if let Some(task) = self.tasks.get_mut(&result.task_id) {
                    task.result = Some(result);
                }
            }
            Err(e) => eprintln!("block-bench: an executor sent an unreadable result: {e}"),
        }
        self.maybe_done(driver).await;
    }

    async fn agent_lost(&mut self, driver: &SchedulerDriver, agent_id: &AgentId) {
        self.finish(driver, Some(format!("agent {} was lost", agent_id.value)))
            .await;
    }

    async fn error(&mut self, _: &SchedulerDriver, message: &str) {
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        report.get_or_insert(Report {
            tasks: std::mem::take(&mut self.tasks),
            error: Some(format!("the master ended the framework: {message}")),
        });
    }
}

/// Prints the table; returns whether every task finished with a result.
fn print_report(report: &Report) -> bool {
    println!();
    println!(
        "{:<16} {:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "task",
        "device",
        "read IOPS",
        "read MiB/s",
        "read p99",
        "write IOPS",
        "write MiB/s",
        "write p99"
    );
    let mut ok = report.error.is_none();
    for (id, task) in &report.tasks {
        match &task.result {
            Some(r) if finished(task) => println!(
                "{:<16} {:<14} {:>10.0} {:>10.1} {:>8.0}us {:>10.0} {:>10.1} {:>8.0}us",
                id,
                r.device,
                r.read.iops,
                r.read.bandwidth_kib / 1024.0,
                r.read.p99_latency_us,
                r.write.iops,
                r.write.bandwidth_kib / 1024.0,
                r.write.p99_latency_us
            ),
            _ => {
                ok = false;
                let end = task.end.as_ref().map_or("did not end".to_owned(), |s| {
                    format!(
                        "{} {}",
                        s.state().as_str_name(),
                        s.message.as_deref().unwrap_or("")
                    )
                });
                println!("{id:<16} no result: {end}");
            }
        }
    }
    if let Some(error) = &report.error {
        println!("FAILED: {error}");
    }
    ok
}

fn default_executor() -> PathBuf {
    let here = std::env::current_exe().unwrap_or_default();
    here.with_file_name("block-bench-executor")
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.disks == 0 {
        eprintln!("block-bench: --disks must be at least 1");
        return ExitCode::FAILURE;
    }
    let executor = args.executor.clone().unwrap_or_else(default_executor);
    if !executor.is_file() {
        eprintln!(
            "block-bench: the executor {} does not exist (see --executor)",
            executor.display()
        );
        return ExitCode::FAILURE;
    }
    let framework = framework_info("block-bench", args.user.clone());
    let timeout = Duration::from_secs(args.timeout);
    let report = Arc::new(Mutex::new(None));
    let driver = match SchedulerDriver::new(framework, SchedulerConfig::new(&args.master)) {
        Ok(driver) => driver,
        Err(e) => {
            eprintln!("block-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bench = BlockBench {
        args,
        executor,
        launched: 0,
        tasks: BTreeMap::new(),
        report: report.clone(),
    };
    if tokio::time::timeout(timeout, driver.run(bench))
        .await
        .is_err()
    {
        eprintln!("block-bench: gave up after {} s", timeout.as_secs());
        let _ = driver.stop(false).await;
    }
    let report = report.lock().unwrap_or_else(|p| p.into_inner()).take();
    match report {
        Some(report) if print_report(&report) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
