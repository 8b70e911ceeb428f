//! `mesoblk-agent`: parses Mesos-named agent flags, opens and recovers block storage, binds the
//! agent's HTTP port, and runs the agent (`mesoblk_agent::node`) until SIGINT/SIGTERM. Tasks
//! keep running when the agent stops; a restarted agent takes them over.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use mesoblk_agent::executor::CgroupConfig;
use mesoblk_agent::node::{resources, AgentConfig};
use mesoblk_agent::status::Backoff;
use mesoblk_agent::storage::{Storage, StorageConfig, StorageOptions, DEFAULT_RUN_DIR};
use mesoblk_proto::stout::parse_duration;

/// The mesoblk agent: registers with a mesoblk master, runs command tasks, and gives them ublk
/// block devices from its pools. Flags are named as Mesos's agent flags.
#[derive(Debug, Parser)]
#[command(name = "mesoblk-agent", version, about, long_about = None, rename_all = "snake_case")]
struct Flags {
    /// The master, HOST:PORT (or http://HOST:PORT).
    #[arg(long)]
    master: String,
    /// Work directory: checkpoints, sandboxes and volume records.
    #[arg(long)]
    work_dir: PathBuf,
    /// IP address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    ip: IpAddr,
    /// IP address the master and tasks reach the agent at (default: --ip; for 0.0.0.0 the
    /// hostname's address, else 127.0.0.1).
    #[arg(long)]
    advertise_ip: Option<IpAddr>,
    /// Port to listen on.
    #[arg(long, default_value_t = 5051)]
    port: u16,
    /// Hostname reported to the master (default: the system's).
    #[arg(long)]
    hostname: Option<String>,
    /// Resources, e.g. `cpus:2;mem:1024;ports:[31000-32000]`; cpus, mem and ports not named
    /// are detected (ports: 31000-32000). Block pools add their disks.
    #[arg(long, default_value = "")]
    resources: String,
    /// Attributes, e.g. `rack:r1;zone:2`.
    #[arg(long, default_value = "")]
    attributes: String,
    /// The block storage configuration (pools and profiles, JSON; see docs/agent-storage.md).
    /// Without it the agent has no block pools.
    #[arg(long)]
    block_pool_config: Option<PathBuf>,
    /// Comma-separated folders block pools may live in.
    #[arg(long, value_delimiter = ',')]
    block_pool_dirs: Vec<PathBuf>,
    /// Device records and device server logs.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    block_run_dir: PathBuf,
    /// Device servers (`mesoblk-target serve`) started ahead of their devices, waiting for
    /// their spec; 0 starts each one when its device is needed.
    #[arg(long, default_value_t = mesoblk_agent::storage::idle_servers::DEFAULT_IDLE_SERVERS)]
    block_idle_servers: usize,
    /// How long a task has between SIGTERM and SIGKILL when its framework or executor is
    /// shut down, and MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD (stout syntax: `5secs`).
    #[arg(long, default_value = "5secs", value_parser = parse_duration)]
    executor_shutdown_grace_period: Duration,
    /// How long a custom executor has to subscribe to the agent before it is killed and its
    /// tasks fail.
    #[arg(long, default_value = "1mins", value_parser = parse_duration)]
    executor_registration_timeout: Duration,
    /// File holding the agents' shared secret (the master's --agent_secret_file).
    #[arg(long)]
    agent_secret_file: Option<PathBuf>,
    /// Folder of the helper binaries (`mesoblk-launcher`, `mesoblk-target`); default: the
    /// folder of this binary.
    #[arg(long)]
    launcher_dir: Option<PathBuf>,
    /// Run tasks as their user (CommandInfo.user, else FrameworkInfo.user).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    switch_user: bool,
    /// `cgroups/cpu,cgroups/mem` puts each task in a cgroup v2 with its limits;
    /// `posix/cpu,posix/mem` runs tasks without cgroups.
    #[arg(long, default_value = "cgroups/cpu,cgroups/mem")]
    isolation: String,
    /// The agent's cgroup under /sys/fs/cgroup.
    #[arg(long, default_value = "mesoblk")]
    cgroups_root: String,
    /// How often the attached devices' figures (IOPS, bandwidth, latency, throttling) go to
    /// the master for its dashboard; `0secs` sends none.
    #[arg(long, default_value = "10secs", value_parser = parse_duration)]
    device_stats_interval: Duration,
    /// The first wait between registration attempts (doubling, at most a minute).
    #[arg(long, default_value = "1secs", value_parser = parse_duration)]
    registration_backoff_factor: Duration,
    /// How long the sandbox of an ended executor run is kept before it is deleted (less as
    /// the disk fills; see --gc_disk_headroom).
    #[arg(long, default_value = "1weeks", value_parser = parse_duration)]
    gc_delay: Duration,
    /// How often the work dir's disk usage is checked and ended sandboxes are collected.
    #[arg(long, default_value = "1mins", value_parser = positive_duration)]
    disk_watch_interval: Duration,
    /// Disk fraction kept free: sandboxes go after gc_delay × max(0, 1 − headroom − usage).
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    gc_disk_headroom: f64,
}

/// A stout duration above zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(duration)
}

/// A number in [0, 1].
fn fraction(text: &str) -> Result<f64, String> {
    let x: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{x} is not between 0 and 1"));
    }
    Ok(x)
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn read_secret(path: &PathBuf) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --agent_secret_file {}", path.display()))?;
    let secret = text.trim();
    anyhow::ensure!(
        !secret.is_empty(),
        "--agent_secret_file {} is empty",
        path.display()
    );
    Ok(secret.to_owned())
}

fn cgroups(isolation: &str, root: &str) -> anyhow::Result<Option<CgroupConfig>> {
    let mut cgroups = false;
    for part in isolation
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match part {
            "cgroups/cpu" | "cgroups/mem" => cgroups = true,
            "posix/cpu" | "posix/mem" => {}
            other => anyhow::bail!("--isolation: unknown isolator '{other}'"),
        }
    }
    Ok(cgroups.then(|| CgroupConfig {
        parent: root.to_owned(),
        ..CgroupConfig::default()
    }))
}

impl Flags {
    fn helper_dir(&self) -> PathBuf {
        self.launcher_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("."))
        })
    }

    /// The address to bind, and the endpoint the master and tasks reach the agent at:
    /// `--advertise_ip`, else `--ip`, else (for 0.0.0.0) the hostname's first non-loopback IPv4
    /// address, as Mesos's agent derives it, else 127.0.0.1.
    fn address(&self, hostname: &str) -> (SocketAddr, String) {
        let resolved = || {
            (hostname, self.port)
                .to_socket_addrs()
                .ok()?
                .map(|a| a.ip())
                .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        };
        let advertised = self.advertise_ip.unwrap_or(if self.ip.is_unspecified() {
            resolved().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            self.ip
        });
        let endpoint = format!("http://{}", SocketAddr::new(advertised, self.port));
        (SocketAddr::new(self.ip, self.port), endpoint)
    }

    fn config(&self) -> anyhow::Result<AgentConfig> {
        let master = self.master.trim_end_matches('/');
        let master_url = if master.starts_with("http://") {
            master.to_owned()
        } else {
            anyhow::ensure!(
                master.contains(':') && !master.contains('/'),
                "--master must be HOST:PORT, not '{}'",
                self.master
            );
            format!("http://{master}")
        };
        let given = resources::parse_resources(&self.resources)
            .map_err(|e| anyhow::anyhow!("--resources: {e}"))?;
        let attributes = resources::parse_attributes(&self.attributes)
            .map_err(|e| anyhow::anyhow!("--attributes: {e}"))?;
        let secret = self
            .agent_secret_file
            .as_ref()
            .map(read_secret)
            .transpose()?;
        let hostname = self.hostname.clone().unwrap_or_else(system_hostname);
        let (_, endpoint) = self.address(&hostname);
        Ok(AgentConfig {
            master_url,
            work_dir: self.work_dir.clone(),
            hostname,
            endpoint,
            port: self.port,
            resources: resources::with_defaults(given),
            attributes,
            secret,
            launcher: self.helper_dir().join("mesoblk-launcher"),
            switch_user: self.switch_user,
            cgroups: cgroups(&self.isolation, &self.cgroups_root)?,
            executor_shutdown_grace_period: self.executor_shutdown_grace_period,
            executor_registration_timeout: self.executor_registration_timeout,
            registration_backoff: self
                .registration_backoff_factor
                .max(Duration::from_millis(10)),
            status_backoff: Backoff::MESOS,
            device_stats_interval: self.device_stats_interval,
            gc: mesoblk_agent::gc::GcPolicy {
                delay: self.gc_delay,
                disk_headroom: self.gc_disk_headroom,
            },
            disk_watch_interval: self.disk_watch_interval,
        })
    }

    /// Opens and recovers storage; refuses pools without ublk.
    fn storage(&self) -> anyhow::Result<Storage> {
        let config = match &self.block_pool_config {
            Some(path) => StorageConfig::from_file(path)
                .map_err(|e| anyhow::anyhow!("--block_pool_config {}: {e}", path.display()))?,
            None => {
                tracing::info!("no --block_pool_config: the agent runs without block pools");
                StorageConfig::default()
            }
        };
        let mut options = StorageOptions::new(&self.work_dir, self.block_pool_dirs.clone());
        options.run_dir.clone_from(&self.block_run_dir);
        options.idle_servers = self.block_idle_servers;
        options.target_exe = self.helper_dir().join("mesoblk-target");
        let mut storage =
            Storage::open(config, &options).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let report = storage.recover();
        for problem in &report.problems {
            tracing::warn!(%problem, "storage recovery");
        }
        Ok(storage)
    }
}

fn main() -> ExitCode {
    let flags: Flags = match mesoblk_cli::parse("mesoblk-agent") {
        Ok(flags) => flags,
        Err(code) => return code,
    };
    mesoblk_cli::init_logging("info");
    mesoblk_cli::exit("mesoblk-agent", run(&flags))
}

fn run(flags: &Flags) -> anyhow::Result<()> {
    let config = flags.config()?;
    std::fs::create_dir_all(&flags.work_dir)
        .with_context(|| format!("creating --work_dir {}", flags.work_dir.display()))?;
    let storage = flags.storage()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let (address, _) = flags.address(&config.hostname);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        tracing::info!(%address, endpoint = %config.endpoint, master = %config.master_url, "mesoblk-agent listening");
        mesoblk_agent::node::run(config, storage, listener, shutdown_signal())
            .await
            .map_err(anyhow::Error::from)
    })?;
    // Tasks and device servers keep running; the watcher threads are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
