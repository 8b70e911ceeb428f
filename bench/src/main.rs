//! `mesoblk-master-sim`: simulated agents and frameworks against a real master on loopback,
//! for issue #5's benchmark (`scripts/bench-master` runs it; docs/benchmarks.md has the figures).
//!
//! The run: register and subscribe every agent (then read the master's RSS), start every
//! framework, wait until every task is TASK_RUNNING (then read the RSS again and the master's
//! allocation timer), print the figures against the targets. A run fails (non-zero exit) when
//! something goes wrong — an agent cannot register, a call is refused, a task ends in another
//! state, the deadline passes — never because a target is missed.

mod agents;
mod frameworks;
mod report;
mod stats;
mod timeline;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

use agents::AgentShape;
use frameworks::{Book, TaskShape};
use report::{quantile_ms, Report};

/// Simulated agents and frameworks against a real mesoblk master.
#[derive(Debug, Parser)]
#[command(name = "mesoblk-master-sim", version, about)]
struct Args {
    /// The master, `host:port`.
    #[arg(long, default_value = "127.0.0.1:5050")]
    master: String,
    /// Simulated agents.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Simulated frameworks.
    #[arg(long, default_value_t = 200)]
    frameworks: usize,
    /// Tasks launched in all, split evenly between the frameworks.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// CPUs of each agent.
    #[arg(long, default_value_t = 2.0)]
    agent_cpus: f64,
    /// Memory of each agent, MB.
    #[arg(long, default_value_t = 2048.0)]
    agent_mem: f64,
    /// CPUs of each task.
    #[arg(long, default_value_t = 0.1)]
    task_cpus: f64,
    /// Memory of each task, MB.
    #[arg(long, default_value_t = 32.0)]
    task_mem: f64,
    /// The master's process id, for its RSS (`/proc/<pid>/status`); without it no RSS is
    /// reported.
    #[arg(long)]
    master_pid: Option<u32>,
    /// Agents registering at the same time.
    #[arg(long, default_value_t = 64)]
    register_concurrency: usize,
    /// Agent status updates in flight at once (each may hold a connection; pongs have 64 more).
    #[arg(long, default_value_t = 1024)]
    posts_in_flight: usize,
    /// Give up (and fail) if the tasks are not all running this many seconds after the
    /// frameworks start.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Also write the figures here, as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Raises the soft descriptor limit to what the run needs (one stream per agent, the posts in
/// flight, a few connections per framework, slack), or says how to.
fn raise_fd_limit(needed: u64) -> anyhow::Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "this run needs about {needed} file descriptors but the hard limit (ulimit -Hn) is \
             {hard}: raise it, or run fewer agents"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    Ok(())
}

fn check_capacity(args: &Args, shape: TaskShape) -> anyhow::Result<()> {
    let per_agent = shape.fit(args.agent_cpus, args.agent_mem);
    if per_agent == 0 || args.agents.saturating_mul(per_agent) < args.tasks {
        bail!(
            "{} agents of {} cpus / {} MB hold {} tasks of {} cpus / {} MB, fewer than --tasks {}",
            args.agents,
            args.agent_cpus,
            args.agent_mem,
            args.agents.saturating_mul(per_agent),
            shape.cpus,
            shape.mem,
            args.tasks
        );
    }
    if args.frameworks == 0 || args.tasks < args.frameworks {
        bail!("every framework needs at least one task (--tasks ≥ --frameworks ≥ 1)");
    }
    Ok(())
}

async fn wait_until_settled(book: &Book, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let notified = book.settled.notified();
        if book.is_settled() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let running = book.records().running_latencies.len();
            bail!("only {running} tasks running after {timeout:?}");
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Report> {
    let task = TaskShape {
        cpus: args.task_cpus,
        mem: args.task_mem,
    };
    check_capacity(&args, task)?;
    // Per framework: its event stream, one spare connection, its calls in flight.
    let per_framework = 2 + frameworks::CALLS_IN_FLIGHT;
    let needed =
        (args.agents + args.posts_in_flight + 64 + per_framework * args.frameworks + 1024) as u64;
    raise_fd_limit(needed)?;
    let master_url = format!("http://{}", args.master);
    let rss = |pid: Option<u32>| pid.map(report::rss_mib).transpose();

    let started = Instant::now();
    let agent_shape = AgentShape {
        cpus: args.agent_cpus,
        mem: args.agent_mem,
    };
    let agents = agents::start(
        &master_url,
        args.agents,
        agent_shape,
        args.register_concurrency,
        args.posts_in_flight,
    )
    .await?;
    let registration_secs = started.elapsed().as_secs_f64();
    tracing::info!(
        agents = agents.count,
        secs = registration_secs,
        "agents registered"
    );
    let rss_registered_mib = rss(args.master_pid)?;

    let cpu = |pid: Option<u32>| pid.map(report::cpu_secs).transpose();
    let master_cpu_before = cpu(args.master_pid)?;
    let sim_cpu_before = report::cpu_secs(std::process::id())?;
    let book = Arc::new(Book::new(args.tasks));
    let frameworks_started = Instant::now();
    let sampler = tokio::spawn(timeline::sample(
        master_url.clone(),
        book.clone(),
        frameworks_started,
    ));
    let _drivers = frameworks::start(&args.master, args.frameworks, args.tasks, task, &book)?;
    wait_until_settled(&book, Duration::from_secs(args.timeout)).await?;
    let rss_running_mib = rss(args.master_pid)?;
    let master_cpu_launch_secs = cpu(args.master_pid)?
        .zip(master_cpu_before)
        .map(|(after, before)| after - before);
    let sim_cpu_launch_secs = report::cpu_secs(std::process::id())? - sim_cpu_before;
    let master_metrics = report::allocator_metrics(&master_url).await?;
    let timeline = sampler.await.unwrap_or_default();
    let (master_launched_all_secs, master_running_all_secs) =
        timeline::milestones(&timeline, args.tasks);

    let failed_posts = agents.counters.failed_posts.load(Ordering::Relaxed);
    let closed_streams = agents.counters.closed_streams.load(Ordering::Relaxed);
    if failed_posts > 0 || closed_streams > 0 {
        bail!("agents: {failed_posts} pongs or status updates failed, {closed_streams} streams closed by the master");
    }
    let mut r = book.records();
    if !r.failures.is_empty() || !r.call_errors.is_empty() {
        bail!(
            "{} tasks failed, {} calls failed; first: {:?}",
            r.failures.len(),
            r.call_errors.len(),
            r.failures.iter().chain(&r.call_errors).next()
        );
    }
    let frameworks_running_all_secs = r.last_running.map_or(0.0, |last| {
        last.duration_since(frameworks_started).as_secs_f64()
    });
    let launch_secs = match (r.first_launch, r.last_running) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let tasks_running = r.running_latencies.len();
    #[allow(clippy::cast_precision_loss)] // task counts are far below 2^52.
    let tasks_per_sec = if launch_secs > 0.0 {
        tasks_running as f64 / launch_secs
    } else {
        0.0
    };
    Ok(Report {
        agents: agents.count,
        run_tasks: agents.counters.run_tasks.load(Ordering::Relaxed),
        frameworks: args.frameworks,
        tasks_running,
        registration_secs,
        launch_secs,
        tasks_per_sec,
        running_latency_p50_ms: quantile_ms(&mut r.running_latencies, 0.5),
        running_latency_p99_ms: quantile_ms(&mut r.running_latencies, 0.99),
        accept_p50_ms: quantile_ms(&mut r.accept_latencies, 0.5),
        accept_p99_ms: quantile_ms(&mut r.accept_latencies, 0.99),
        repeated_updates: r.repeated_updates,
        disconnections: r.disconnections,
        soft_call_failures: r.soft_call_failures,
        offer_events: r.offer_events,
        offers: r.offers,
        master_metrics,
        rss_registered_mib,
        rss_running_mib,
        master_cpu_launch_secs,
        sim_cpu_launch_secs,
        master_launched_all_secs,
        master_running_all_secs,
        frameworks_running_all_secs,
        timeline,
        load_average: report::load_average(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesoblk_cli::init_logging("warn");
    let args = Args::parse();
    let report_path = args.report.clone();
    let report = run(args).await?;
    print!("{}", report.table());
    if let Some(path) = report_path {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    // The agents' streams and the drivers would keep the runtime busy: leave now.
    std::process::exit(0);
}
