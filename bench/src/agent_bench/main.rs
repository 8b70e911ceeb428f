//! `mesoblk-agent-bench`: block-device provisioning latency of a real agent, seen from a
//! framework (issue #6's benchmark; `scripts/bench-agent` runs it in the guest, docs/benchmarks.md
//! has the figures).
//!
//! It launches `--tasks` command tasks, each with a `--size-mb` slice of a RAW pool as its BLOCK
//! device, at most `--in-flight` of them being provisioned at once, and measures from the ACCEPT
//! it sends to the task being usable: TASK_RUNNING received and the task's first action, a 4k
//! direct read of its device, done (`provision` has the details). When every task is usable it
//! prints p50/p99, writes `--report`, waits for the file `--hold-until` if given (so the caller
//! can measure memory with every device attached), kills the tasks and waits for their ends.
//! A run fails (non-zero exit) when something goes wrong — a call refused, a task ending early,
//! the deadline passing — never because a target is missed.

mod provision;
#[path = "../stats.rs"]
mod stats;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use mesoblk_framework::proto::mesos::v1::TaskId;
use mesoblk_framework::scheduler::{framework_info, SchedulerConfig, SchedulerDriver};
use serde::Serialize;

use provision::{lock, Book, Plan, Provisioner, SharedBook};
use stats::quantile_ms;

/// Issue #6's target: p99 of ACCEPT → usable device.
const TARGET_P99_MS: f64 = 500.0;
/// How often the main loop looks at the books and the ready files.
const POLL: Duration = Duration::from_millis(2);

/// Provisioning latency of block devices on a real agent.
#[derive(Debug, Parser)]
#[command(name = "mesoblk-agent-bench", version, about)]
struct Args {
    /// The master, `host:port`.
    #[arg(long, default_value = "127.0.0.1:5050")]
    master: String,
    /// The storage profile the devices come from.
    #[arg(long, default_value = "bench")]
    profile: String,
    /// Task ids are `<prefix>-0001`, ...: phases of one run that use different prefixes can be
    /// told apart in the master's and agent's logs.
    #[arg(long, default_value = "bench")]
    task_prefix: String,
    /// Tasks (and devices).
    #[arg(long, default_value_t = 50)]
    tasks: usize,
    /// Size of each device, MB.
    #[arg(long, default_value_t = 1024.0)]
    size_mb: f64,
    /// Launches being provisioned at once.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// A folder the tasks can write to (each writes the time of its first read there).
    #[arg(long)]
    ready_dir: PathBuf,
    /// Where the JSON figures go once every task is usable.
    #[arg(long)]
    report: Option<PathBuf>,
    /// After the report, wait until this file exists before killing the tasks.
    #[arg(long)]
    hold_until: Option<PathBuf>,
    /// CPUs of each task.
    #[arg(long, default_value_t = 0.01)]
    task_cpus: f64,
    /// Memory of each task, MB.
    #[arg(long, default_value_t = 4.0)]
    task_mem: f64,
    /// The user tasks run as (default: `$USER`, else root).
    #[arg(long)]
    user: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

/// p50, p99 and max of one leg, ms.
#[derive(Debug, Serialize)]
struct Leg {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Leg {
    fn of(mut samples: Vec<Duration>) -> Leg {
        Leg {
            p50_ms: quantile_ms(&mut samples, 0.5),
            p99_ms: quantile_ms(&mut samples, 0.99),
            max_ms: quantile_ms(&mut samples, 1.0),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    tasks: usize,
    size_mb: f64,
    in_flight: usize,
    accept_to_running: Leg,
    accept_to_first_read: Leg,
    accept_to_usable: Leg,
    target_p99_ms: f64,
    target_met: bool,
    /// Each launch's timestamps (ns since the epoch), for joining with the master's and the
    /// agent's provisioning trace (`scripts/lib/provisioning-breakdown.py`).
    launches: Vec<Stamps>,
}

#[derive(Debug, Serialize)]
struct Stamps {
    task: String,
    accepted_ns: u128,
    running_ns: Option<u128>,
    read_done_ns: Option<u128>,
}

fn epoch_ns(at: SystemTime) -> u128 {
    since(UNIX_EPOCH, at).as_nanos()
}

fn since(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

fn report(book: &Book, args: &Args) -> Report {
    let legs = |f: &dyn Fn(&provision::Launch) -> Option<SystemTime>| -> Vec<Duration> {
        book.launches
            .values()
            .filter_map(|l| f(l).map(|t| since(l.accepted, t)))
            .collect()
    };
    let usable = Leg::of(legs(&provision::Launch::usable));
    Report {
        tasks: book.launches.len(),
        size_mb: args.size_mb,
        in_flight: args.in_flight,
        accept_to_running: Leg::of(legs(&|l| l.running)),
        accept_to_first_read: Leg::of(legs(&|l| l.read_done)),
        target_met: usable.p99_ms < TARGET_P99_MS,
        accept_to_usable: usable,
        target_p99_ms: TARGET_P99_MS,
        launches: book
            .launches
            .iter()
            .map(|(task, l)| Stamps {
                task: task.clone(),
                accepted_ns: epoch_ns(l.accepted),
                running_ns: l.running.map(epoch_ns),
                read_done_ns: l.read_done.map(epoch_ns),
            })
            .collect(),
    }
}

fn print(report: &Report) {
    println!(
        "{} tasks, {} MB BLOCK device each, {} in flight",
        report.tasks, report.size_mb, report.in_flight
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10}",
        "ACCEPT to", "p50 ms", "p99 ms", "max ms"
    );
    for (name, leg) in [
        ("TASK_RUNNING", &report.accept_to_running),
        ("first 4k direct read", &report.accept_to_first_read),
        ("usable (both)", &report.accept_to_usable),
    ] {
        println!(
            "{name:<26} {:>10.1} {:>10.1} {:>10.1}",
            leg.p50_ms, leg.p99_ms, leg.max_ms
        );
    }
    println!(
        "target: p99 usable < {} ms: {}",
        report.target_p99_ms,
        if report.target_met { "met" } else { "MISSED" }
    );
}

/// Polls the books until `done` holds; fails on a recorded failure or the deadline.
async fn wait_until(
    book: &SharedBook,
    args: &Args,
    deadline: Instant,
    what: &str,
    done: impl Fn(&Book) -> bool,
) -> anyhow::Result<()> {
    loop {
        {
            let mut book = lock(book);
            book.collect_reads(&args.ready_dir);
            if let Some(failure) = &book.failure {
                bail!("{failure}");
            }
            if done(&book) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {} s", args.timeout);
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn run(args: &Args, driver: &SchedulerDriver, book: &SharedBook) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    wait_until(book, args, deadline, "every task usable", |b| {
        b.all_usable(args.tasks)
    })
    .await?;
    let figures = report(&lock(book), args);
    print(&figures);
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&figures)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(hold) = &args.hold_until {
        while !hold.exists() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not appear within {} s",
                    hold.display(),
                    args.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ids: Vec<String> = {
        let mut book = lock(book);
        book.stopping = true;
        book.launches.keys().cloned().collect()
    };
    for id in ids {
        driver
            .kill_task(TaskId { value: id }, None, None)
            .await
            .context("KILL")?;
    }
    wait_until(book, args, deadline, "every task ended", Book::all_ended).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesoblk_cli::init_logging("warn");
    let args = Args::parse();
    if args.tasks == 0 || args.in_flight == 0 {
        bail!("--tasks and --in-flight must be at least 1");
    }
    std::fs::create_dir_all(&args.ready_dir)
        .with_context(|| format!("creating {}", args.ready_dir.display()))?;
    let framework = framework_info("mesoblk-agent-bench", args.user.clone());
    let driver = SchedulerDriver::new(framework, SchedulerConfig::new(&args.master))?;
    let book: SharedBook = Arc::new(Mutex::new(Book::default()));
    let plan = Plan {
        task_prefix: args.task_prefix.clone(),
        tasks: args.tasks,
        size_mb: args.size_mb,
        profile: args.profile.clone(),
        in_flight: args.in_flight,
        ready_dir: args.ready_dir.clone(),
        task_cpus: args.task_cpus,
        task_mem: args.task_mem,
    };
    driver.start(Provisioner {
        plan,
        book: book.clone(),
    })?;
    let outcome = run(&args, &driver, &book).await;
    if let Err(e) = driver.stop(false).await {
        tracing::warn!(error = %e, "could not tear the framework down");
    }
    outcome
}
