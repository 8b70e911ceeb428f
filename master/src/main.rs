//! `mesoblk-master`: parses Mesos-named flags, binds, serves the router until SIGINT/SIGTERM.

use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use mesoblk_master::config::{parse_duration, Config, DEFAULT_MAX_COMPLETED_FRAMEWORKS};
use mesoblk_master::{router, MasterHandle};

/// The mesoblk master: speaks the Mesos v1 scheduler and operator HTTP APIs. Flags are named as
/// Mesos's master flags (`--port=5050` and `--port 5050` both work).
#[derive(Debug, Parser)]
#[command(name = "mesoblk-master", version, about, long_about = None, rename_all = "snake_case")]
struct Flags {
    /// IP address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    ip: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 5050)]
    port: u16,
    /// IP address advertised to frameworks (default: --ip, or 127.0.0.1 when that is 0.0.0.0).
    #[arg(long)]
    advertise_ip: Option<Ipv4Addr>,
    /// Port advertised to frameworks (default: --port).
    #[arg(long)]
    advertise_port: Option<u16>,
    /// Hostname advertised to frameworks and used by /master/redirect (default: the system's).
    #[arg(long)]
    hostname: Option<String>,
    /// Directory of the registry (the master's persistent state).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Interval between batch allocations, in stout syntax (`1secs`, `500ms`).
    #[arg(long, default_value = "1secs", value_parser = parse_duration)]
    allocation_interval: std::time::Duration,
    /// Removed frameworks to remember.
    #[arg(long, default_value_t = DEFAULT_MAX_COMPLETED_FRAMEWORKS)]
    max_completed_frameworks: usize,
    /// Whether frameworks may run tasks as root.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    root_submissions: bool,
    /// Interval of HEARTBEAT events (mesoblk-specific; Mesos hard-codes 15secs).
    #[arg(long, default_value = "15secs", value_parser = parse_duration)]
    heartbeat_interval: std::time::Duration,
}

impl Flags {
    fn config(&self) -> anyhow::Result<Config> {
        let hostname = match &self.hostname {
            Some(h) => h.clone(),
            None => system_hostname(),
        };
        let advertise_ip = self.advertise_ip.unwrap_or(match self.ip {
            IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => Ipv4Addr::LOCALHOST,
        });
        let mut config = Config::new(
            hostname,
            advertise_ip,
            self.advertise_port.unwrap_or(self.port),
        );
        config.allocation_interval = self.allocation_interval;
        config.max_completed_frameworks = self.max_completed_frameworks;
        config.root_submissions = self.root_submissions;
        config.heartbeat_interval = self.heartbeat_interval;
        config.work_dir.clone_from(&self.work_dir);
        config.flags = vec![
            ("ip".into(), self.ip.to_string()),
            ("port".into(), self.port.to_string()),
            ("hostname".into(), config.hostname.clone()),
            (
                "allocation_interval".into(),
                format!("{:?}", self.allocation_interval),
            ),
            (
                "max_completed_frameworks".into(),
                self.max_completed_frameworks.to_string(),
            ),
            ("root_submissions".into(), self.root_submissions.to_string()),
        ];
        if let Some(dir) = &self.work_dir {
            config
                .flags
                .push(("work_dir".into(), dir.display().to_string()));
        }
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn main() -> ExitCode {
    let flags = match Flags::try_parse() {
        Ok(flags) => flags,
        Err(e) if !e.use_stderr() => {
            // --help and --version are not errors.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message plus its usage hint would span several lines; one is the contract.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "mesoblk-master: {} (try --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(&flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesoblk-master: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: &Flags) -> anyhow::Result<()> {
    let config = flags.config()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let address = SocketAddr::new(flags.ip, flags.port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let master = MasterHandle::new(config);
        tracing::info!(%address, "mesoblk-master listening");
        axum::serve(listener, router(master))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")
    })
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
    tracing::info!("shutting down");
}
