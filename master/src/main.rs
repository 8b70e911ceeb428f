//! `mesoblk-master`: parses Mesos-named flags, binds, serves the router until SIGINT/SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use mesoblk_master::auth::{AuthConfig, Credentials, Secret};
use mesoblk_master::config::{parse_duration, Config, DEFAULT_MAX_COMPLETED_FRAMEWORKS};
use mesoblk_master::registry::{
    self, EmbeddedOptions, EmbeddedRegistry, InMemoryRegistry, Registry,
};
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
    /// Work directory; the registry (the master's persistent state) is kept in
    /// <work_dir>/registry. Without it the registry is in memory and nothing survives a restart.
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
    #[command(flatten)]
    cluster: mesoblk_master::flags::ClusterFlags,
    #[command(flatten)]
    registry: RegistryFlags,
    #[command(flatten)]
    auth: AuthFlags,
}

/// Where the registry lives (`crate::registry`).
#[derive(Debug, clap::Args)]
#[command(rename_all = "snake_case")]
struct RegistryFlags {
    /// Registry persistence: `replicated_log` (Mesos's name; here the embedded log in
    /// <work_dir>/registry, a single replica) or `in_memory` (nothing survives a restart).
    /// Default: replicated_log with --work_dir, in_memory without.
    #[arg(long)]
    registry: Option<String>,
}

/// Authentication (`crate::auth`). Boolean flags take `=true|false`; alone they mean true.
#[derive(Debug, clap::Args)]
#[command(rename_all = "snake_case")]
struct AuthFlags {
    /// Credentials for HTTP authentication: a path or file:// URL of Mesos's JSON
    /// `{"credentials":[{"principal":..,"secret":..}]}` or of `principal secret` lines.
    #[arg(long)]
    credentials: Option<String>,
    /// Only authenticated frameworks may subscribe (mesoblk: same as
    /// --authenticate_http_frameworks, all its frameworks being HTTP ones).
    #[arg(long, alias = "authenticate", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    authenticate_frameworks: bool,
    /// Only authenticated HTTP frameworks may use /api/v1/scheduler.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    authenticate_http_frameworks: bool,
    /// Authenticate the operator API and the legacy endpoints that change things.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    authenticate_http_readwrite: bool,
    /// Authenticate the read-only legacy endpoints and metrics.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    authenticate_http_readonly: bool,
    /// Only agents presenting the shared secret of --agent_secret_file may talk to the master.
    #[arg(long, alias = "authenticate_slaves", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    authenticate_agents: bool,
    /// File holding the agents' shared secret (agents send it as `Authorization: Bearer`).
    #[arg(long)]
    agent_secret_file: Option<PathBuf>,
    /// HTTP authenticator for operators; only `basic` exists.
    #[arg(long, default_value = "basic")]
    http_authenticators: String,
    /// HTTP authenticator for frameworks; only `basic` exists.
    #[arg(long, default_value = "basic")]
    http_framework_authenticators: String,
}

impl AuthFlags {
    fn config(&self) -> anyhow::Result<AuthConfig> {
        for (flag, value) in [
            ("--http_authenticators", &self.http_authenticators),
            (
                "--http_framework_authenticators",
                &self.http_framework_authenticators,
            ),
        ] {
            if value != "basic" {
                anyhow::bail!("{flag}={value}: only the 'basic' HTTP authenticator is supported");
            }
        }
        let credentials = match &self.credentials {
            Some(location) => Some(Arc::new(Credentials::load(location)?)),
            None => None,
        };
        let agent_secret = match (self.authenticate_agents, &self.agent_secret_file) {
            (true, Some(path)) => Some(Secret::load(path)?),
            (true, None) => anyhow::bail!("--authenticate_agents needs --agent_secret_file"),
            (false, _) => None,
        };
        Ok(AuthConfig {
            credentials,
            frameworks: self.authenticate_frameworks || self.authenticate_http_frameworks,
            readwrite: self.authenticate_http_readwrite,
            readonly: self.authenticate_http_readonly,
            agent_secret,
        })
    }

    /// The flags as GET_FLAGS reports them (file names, never secrets).
    fn reported(&self) -> Vec<(String, String)> {
        let mut flags = vec![
            (
                "authenticate_frameworks".to_string(),
                self.authenticate_frameworks.to_string(),
            ),
            (
                "authenticate_http_frameworks".into(),
                self.authenticate_http_frameworks.to_string(),
            ),
            (
                "authenticate_http_readwrite".into(),
                self.authenticate_http_readwrite.to_string(),
            ),
            (
                "authenticate_http_readonly".into(),
                self.authenticate_http_readonly.to_string(),
            ),
            (
                "authenticate_agents".into(),
                self.authenticate_agents.to_string(),
            ),
            (
                "http_authenticators".into(),
                self.http_authenticators.clone(),
            ),
        ];
        if let Some(location) = &self.credentials {
            flags.push(("credentials".into(), location.clone()));
        }
        if let Some(path) = &self.agent_secret_file {
            flags.push(("agent_secret_file".into(), path.display().to_string()));
        }
        flags
    }
}

/// Opens the registry `--registry` and `--work_dir` ask for. The embedded one exits the process
/// if it ever fails, so that no change it could not store is acknowledged (Mesos aborts too).
fn open_registry(flags: &Flags) -> anyhow::Result<Arc<dyn Registry>> {
    let kind = flags.registry.registry.as_deref();
    let embedded = match (kind, &flags.work_dir) {
        (Some("in_memory"), _) => None,
        (Some("replicated_log") | None, Some(dir)) => Some(dir.join("registry")),
        (Some("replicated_log"), None) => {
            anyhow::bail!("--work_dir is needed for the replicated_log registry (or pass --registry=in_memory)")
        }
        (None, None) => None,
        (Some(other), _) => {
            anyhow::bail!("'{other}' is not a supported option for registry persistence")
        }
    };
    let Some(dir) = embedded else {
        tracing::warn!("the registry is in memory: nothing survives a restart (pass --work_dir)");
        return Ok(Arc::new(InMemoryRegistry::new()));
    };
    let registry = EmbeddedRegistry::open(&dir, EmbeddedOptions::default())
        .with_context(|| format!("opening the registry in '{}'", dir.display()))?;
    registry.set_failure_hook(Box::new(|error| {
        eprintln!("mesoblk-master: the registry failed, stopping: {error}");
        std::process::exit(1);
    }));
    Ok(Arc::new(registry))
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
        config.auth = self.auth.config()?;
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
        // After the list above is set, so GET_FLAGS shows the cluster flags too.
        self.cluster.apply(&mut config);
        config.flags.extend(self.auth.reported());
        if let Some(kind) = &self.registry.registry {
            config.flags.push(("registry".into(), kind.clone()));
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
    let flags: Flags = match mesoblk_cli::parse("mesoblk-master") {
        Ok(flags) => flags,
        Err(code) => return code,
    };
    mesoblk_cli::init_logging("info");
    mesoblk_cli::exit("mesoblk-master", run(&flags))
}

fn run(flags: &Flags) -> anyhow::Result<()> {
    let mut config = flags.config()?;
    config.registry = open_registry(flags)?;
    let recovered =
        registry::recover(config.registry.as_ref()).context("recovering the registry")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let address = SocketAddr::new(flags.ip, flags.port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let master = MasterHandle::new(config);
        tracing::info!(
            master_id = recovered.master_id.as_deref().unwrap_or(""),
            incarnation = recovered.incarnation,
            "recovered the registry"
        );
        master.with(|m| m.recover(&recovered));
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
