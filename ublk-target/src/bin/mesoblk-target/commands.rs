//! The subcommands of `mesoblk-target`.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ublk_target::admin::{self, AdminRequest, AdminResponse, DeviceReport};
use ublk_target::daemon::{self, DeviceRecord, RunDir};
use ublk_target::device_cache::{CacheSpec, CacheStoreSpec, InvalidCacheChoice};
use ublk_target::qos::{BytesLimit, Clock, GroupJoin, Joined, MonotonicClock, OpsLimit, QosLimits};
use ublk_target::spec::{BackendSpec, DeviceSpec};
use ublk_target::sys::control::{self, ControlError, DeviceState, DeviceStatus};
use ublk_target::sys::device::StartMode;
use ublk_target::sys::shm;

use crate::{cache, AddArgs, BackendKind, Cli, Command, DelArgs, QosArgs, ServeArgs, SetQosArgs};

/// How long `del` waits for a stopped device's server to exit.
const SERVER_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn run(cli: Cli) -> Result<()> {
    let run_dir = RunDir::new(cli.run_dir);
    match cli.command {
        Command::Add(args) => add(args, &run_dir),
        Command::Del(args) => del(&args, &run_dir),
        Command::List { json } => list(json, &run_dir),
        Command::Recover { id, cache_invalid } => {
            recover(id, cache_invalid.map(Into::into), &run_dir)
        }
        Command::Cache { command } => cache::run(command, &run_dir),
        Command::SetQos(args) => set_qos(&args, &run_dir),
        Command::Features { json } => features(json),
        Command::Serve(args) => serve(args, &run_dir),
    }
}

fn require_driver() -> Result<()> {
    if !Path::new(control::CONTROL_PATH).exists() {
        return Err(ControlError::NoControlDevice.into());
    }
    Ok(())
}

fn spec_from(args: &AddArgs) -> Result<DeviceSpec> {
    let needs_path = matches!(args.backend, BackendKind::File | BackendKind::Blockdev);
    let path = match (&args.path, needs_path) {
        (Some(path), true) => path.clone(),
        (None, true) => bail!("--path is required for the file and blockdev backends"),
        (Some(_), false) => bail!("--path only applies to the file and blockdev backends"),
        (None, false) => Default::default(),
    };
    let direct_io = args.direct_io.into();
    let backend = match args.backend {
        BackendKind::File => BackendSpec::File { path, direct_io },
        BackendKind::Blockdev => BackendSpec::Blockdev { path, direct_io },
        BackendKind::Ram => BackendSpec::Ram,
        BackendKind::Null => BackendSpec::Null,
    };
    let max_io_bytes = u32::try_from(args.max_io_size).context("--max-io-size is too large")?;
    Ok(DeviceSpec {
        backend,
        size: args.size,
        id: args.id,
        queues: args.queues,
        depth: args.depth,
        max_io_bytes,
        qos: qos_limits(&args.qos)?,
        qos_group: args.qos_group.clone(),
        cache: args.cache.as_deref().map(|path| CacheSpec {
            store: CacheStoreSpec::from_arg(path),
            size: args.cache_size,
            mode: args.cache_mode.unwrap_or_default(),
            on_invalid: args.cache_invalid.map(Into::into),
        }),
    })
}

fn qos_limits(args: &QosArgs) -> Result<QosLimits> {
    if let Some(json) = &args.qos_json {
        return serde_json::from_str(json).context("--qos-json is not valid QoS limits");
    }
    Ok(QosLimits {
        total_ops: args.iops_total.map(OpsLimit::per_sec),
        read_ops: args.iops_read.map(OpsLimit::per_sec),
        write_ops: args.iops_write.map(OpsLimit::per_sec),
        total_bytes: args.bps_total.map(BytesLimit::per_sec),
        read_bytes: args.bps_read.map(BytesLimit::per_sec),
        write_bytes: args.bps_write.map(BytesLimit::per_sec),
        iops_size_bytes: args.iops_size,
        ..QosLimits::default()
    })
}

fn set_qos(args: &SetQosArgs, run_dir: &RunDir) -> Result<()> {
    let limits = qos_limits(&args.qos)?;
    if limits.is_unlimited() && !args.unlimited {
        bail!("give at least one limit, or --unlimited to remove them all");
    }
    match (&args.group, args.id) {
        (Some(group), _) => set_group_qos(group, &limits, run_dir),
        (None, Some(id)) => set_device_qos(id, limits, run_dir),
        (None, None) => bail!("give --id or --group"),
    }
}

fn set_group_qos(name: &str, limits: &QosLimits, run_dir: &RunDir) -> Result<()> {
    let (group, joined) = shm::open_group(run_dir.path(), name, GroupJoin::CreateOrJoin(limits))?;
    if joined != Joined::Created {
        group.set_limits(limits, MonotonicClock.now())?;
    }
    Ok(())
}

fn set_device_qos(id: u32, limits: QosLimits, run_dir: &RunDir) -> Result<()> {
    let mut record = run_dir
        .read(id)
        .with_context(|| format!("no record of device {id} in {}", run_dir.path().display()))?;
    record.spec.qos = limits;
    // Validate against the device's own I/O size before bothering the server.
    record.spec.check_limits()?;
    let request = AdminRequest::SetQos {
        limits: Box::new(limits),
    };
    admin::ask(&run_dir.socket_path(id), &request)?;
    // Recorded so a recovered server starts with the same limits.
    run_dir.write(&record)?;
    Ok(())
}

fn add(args: AddArgs, run_dir: &RunDir) -> Result<()> {
    let spec = spec_from(&args)?;
    // Validate everything before touching the kernel, so a bad request leaves nothing behind.
    spec.open()?;
    daemon::limiter_for(&spec, run_dir)?;
    require_driver()?;
    if let Some(id) = spec.id {
        if control::device_ids().contains(&id) {
            bail!("ublk device {id} already exists");
        }
    }
    if args.foreground {
        return Ok(daemon::serve(
            &spec,
            StartMode::Add,
            run_dir,
            None,
            std::io::stdout(),
        )?);
    }
    start_server(&spec, StartMode::Add, run_dir)
}

fn start_server(spec: &DeviceSpec, mode: StartMode, run_dir: &RunDir) -> Result<()> {
    let exe = std::env::current_exe().context("cannot locate the mesoblk-target executable")?;
    let record = daemon::spawn(&exe, spec, mode, run_dir)?;
    println!("{}\t{}", record.id, record.block_path.display());
    Ok(())
}

fn recover(id: u32, cache_invalid: Option<InvalidCacheChoice>, run_dir: &RunDir) -> Result<()> {
    require_driver()?;
    let status = control::status(id)?;
    if status.state != DeviceState::Quiesced {
        return Err(ControlError::NotRecoverable {
            id,
            state: status.state,
        }
        .into());
    }
    let record = run_dir.read(id).with_context(|| {
        format!(
            "no record of device {id} in {}: its backend is unknown",
            run_dir.path().display()
        )
    })?;
    let mut spec = DeviceSpec {
        id: Some(id),
        ..record.spec
    };
    if let Some(choice) = cache_invalid {
        let Some(cache) = spec.cache.as_mut() else {
            bail!("device {id} has no cache; --cache-invalid does not apply");
        };
        cache.on_invalid = Some(choice);
    }
    start_server(&spec, StartMode::Recover, run_dir)
}

fn del(args: &DelArgs, run_dir: &RunDir) -> Result<()> {
    require_driver()?;
    let status = control::status(args.id)?;
    let block_path = format!("/dev/ublkb{}", args.id);
    if !args.force && is_in_use(Path::new(&block_path)) {
        bail!("{block_path} is in use (mounted or open); unmount it first or pass --force");
    }
    match control::stop(args.id) {
        Ok(()) | Err(ControlError::UnknownDevice(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let pid = run_dir
        .read(args.id)
        .map(|r| r.pid)
        .or(u32::try_from(status.server_pid).ok());
    if let Some(pid) = pid {
        wait_for_exit(pid, SERVER_EXIT_TIMEOUT)
            .with_context(|| format!("server {pid} of device {} did not exit", args.id))?;
    }
    // A server that exited cleanly deleted its device; one that crashed left it behind.
    if control::device_ids().contains(&args.id) {
        match control::delete(args.id) {
            Ok(()) | Err(ControlError::UnknownDevice(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    run_dir.remove(args.id);
    Ok(())
}

/// An exclusive open of a block device fails with EBUSY while it is mounted or held open
/// exclusively (by a file system, LVM, another exclusive opener).
fn is_in_use(block_path: &Path) -> bool {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(block_path)
    {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(libc::EBUSY),
    }
}

/// Waits until process `pid` is gone (or a zombie nobody reaps: orphaned servers are children of
/// init, which in a minimal guest may never wait for them).
fn wait_for_exit(pid: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

#[derive(serde::Serialize)]
struct ListedDevice {
    #[serde(flatten)]
    status: DeviceStatus,
    block_path: String,
    record: Option<DeviceRecord>,
    /// What the device's server reports (absent when it does not answer).
    server: Option<DeviceReport>,
}

fn server_report(run_dir: &RunDir, id: u32) -> Option<DeviceReport> {
    match admin::ask(&run_dir.socket_path(id), &AdminRequest::Status) {
        Ok(AdminResponse::Status(report)) => Some(*report),
        _ => None,
    }
}

fn list(json: bool, run_dir: &RunDir) -> Result<()> {
    require_driver()?;
    let devices: Vec<ListedDevice> = control::device_ids()
        .into_iter()
        .filter_map(|id| control::status(id).ok())
        .map(|status| ListedDevice {
            block_path: format!("/dev/ublkb{}", status.id),
            record: run_dir.read(status.id),
            server: server_report(run_dir, status.id),
            status,
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
        return Ok(());
    }
    println!(
        "{:<4} {:<9} {:<14} {:>12} {:>3} {:>5} {:>8}  BACKEND",
        "ID", "STATE", "PATH", "SIZE", "Q", "DEPTH", "PID"
    );
    for device in devices {
        let (size, backend) = match &device.record {
            Some(record) => (
                record.spec.size.map_or("-".to_owned(), |s| s.to_string()),
                describe(&record.spec),
            ),
            None => ("-".to_owned(), "(no record)".to_owned()),
        };
        let s = &device.status;
        println!(
            "{:<4} {:<9} {:<14} {:>12} {:>3} {:>5} {:>8}  {}",
            s.id,
            format!("{:?}", s.state).to_lowercase(),
            device.block_path,
            size,
            s.queues,
            s.depth,
            s.server_pid,
            backend
        );
    }
    Ok(())
}

fn describe(spec: &DeviceSpec) -> String {
    let backend = match &spec.backend {
        BackendSpec::File { path, .. } => format!("file {}", path.display()),
        BackendSpec::Blockdev { path, .. } => format!("blockdev {}", path.display()),
        BackendSpec::Ram => "ram".to_owned(),
        BackendSpec::Null => "null".to_owned(),
    };
    match &spec.cache {
        Some(cache) => {
            let store = match &cache.store {
                CacheStoreSpec::Path { path } => path.display().to_string(),
                CacheStoreSpec::Ram => "ram".to_owned(),
            };
            format!("{backend} (cache {store}, {})", cache.mode.name())
        }
        None => backend,
    }
}

fn features(json: bool) -> Result<()> {
    let bits = control::driver_features()?;
    let names = control::feature_names(bits);
    if json {
        println!("{}", serde_json::json!({ "bits": bits, "features": names }));
    } else {
        println!("ublk driver features 0x{bits:x}:");
        for name in names {
            println!("  {name}");
        }
    }
    Ok(())
}

fn serve(args: ServeArgs, run_dir: &RunDir) -> Result<()> {
    let spec: DeviceSpec = match &args.spec {
        Some(json) => serde_json::from_str(json).context("--spec is not a valid device spec")?,
        None => match daemon::read_spec(&mut std::io::stdin().lock()) {
            Ok(Some(spec)) => spec,
            // Dismissed before it got a device: nothing to do, nothing to report.
            Ok(None) => {
                if let Some(log) = &args.log_file {
                    let _ = std::fs::remove_file(log);
                }
                return Ok(());
            }
            Err(e) => {
                println!("error {e}");
                return Err(e.into());
            }
        },
    };
    if args.detach {
        // A new session: the caller's terminal signals and exit must not reach the server.
        nix::unistd::setsid().context("setsid")?;
    }
    let mode = if args.recover {
        StartMode::Recover
    } else {
        StartMode::Add
    };
    daemon::serve(&spec, mode, run_dir, args.log_file, std::io::stdout())?;
    Ok(())
}
