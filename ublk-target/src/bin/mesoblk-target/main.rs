//! `mesoblk-target`: create, list and delete mesoblk ublk block devices.
//!
//! Each device is served by its own detached process (`mesoblk-target serve`), so `add` returns
//! as soon as the device is live and one server crash affects one device only. Errors print one
//! line on stderr and exit non-zero; nothing is left behind by a failed `add`.

mod cache;
mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ublk_target::backend::file::DirectIo;
use ublk_target::cache::CacheMode;
use ublk_target::daemon::DEFAULT_RUN_DIR;
use ublk_target::device_cache::InvalidCacheChoice;
use ublk_target::spec::parse_size;

/// Userspace block devices for mesoblk, served through Linux ublk.
#[derive(Debug, Parser)]
#[command(name = "mesoblk-target", version, about, propagate_version = true)]
struct Cli {
    /// Folder for device records and server logs.
    #[arg(long, global = true, default_value = DEFAULT_RUN_DIR, value_name = "DIR")]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a device and return once /dev/ublkbN is live; prints its id and path.
    Add(AddArgs),
    /// Stop and delete a device.
    Del(DelArgs),
    /// Start a new server for a device whose server died (kill -9, crash); the device and its
    /// mounts stay in place and held I/O resumes.
    Recover {
        /// The device id (N in /dev/ublkbN).
        #[arg(long, short = 'n', value_name = "ID")]
        id: u32,
        /// What to do if the device's cache store fails validation (default: refuse).
        #[arg(long, value_enum, value_name = "CHOICE")]
        cache_invalid: Option<InvalidCacheArg>,
    },
    /// Inspect and control a live device's cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Change a live device's rate limits (takes effect at once; kept across recovery).
    SetQos(SetQosArgs),
    /// List devices.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what the running kernel's ublk driver supports.
    Features {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve one device in this process (what `add` runs in the background).
    #[command(hide = true)]
    Serve(ServeArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// A regular file (--path).
    File,
    /// A block device (--path).
    Blockdev,
    /// Memory of the serving process (--size).
    Ram,
    /// Discards writes; for benchmarks (--size).
    Null,
}

/// The cache subcommands; each names the device by id (N in /dev/ublkbN).
#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Print the cache's counters: hits and misses, dirty bytes, writeback rate, evictions,
    /// flush latency.
    Status {
        /// The device id.
        id: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write back all dirty data; returns when the backing store holds it, flushed.
    Flush {
        /// The device id.
        id: u32,
    },
    /// Switch the cache mode live; leaving writeback, returns once the dirty data is drained.
    Mode {
        /// The device id.
        id: u32,
        /// writeback, writethrough, writearound or none.
        #[arg(value_parser = parse_cache_mode)]
        mode: CacheMode,
    },
    /// Drain the cache and remove it from the live device (its store is reformatted empty).
    Detach {
        /// The device id.
        id: u32,
    },
}

/// The operator's choice for a cache store that fails validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum InvalidCacheArg {
    /// Write back the dirty data the valid part of its journal names, then reformat it.
    FlushValid,
    /// Reformat it; the dirty data it held is lost.
    Discard,
}

impl From<InvalidCacheArg> for InvalidCacheChoice {
    fn from(arg: InvalidCacheArg) -> Self {
        match arg {
            InvalidCacheArg::FlushValid => InvalidCacheChoice::FlushValid,
            InvalidCacheArg::Discard => InvalidCacheChoice::Discard,
        }
    }
}

fn parse_cache_mode(text: &str) -> Result<CacheMode, String> {
    text.parse()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DirectIoArg {
    /// O_DIRECT or fail.
    Required,
    /// O_DIRECT where supported, else buffered (logged).
    Optional,
    /// Buffered I/O.
    Disabled,
}

impl From<DirectIoArg> for DirectIo {
    fn from(arg: DirectIoArg) -> Self {
        match arg {
            DirectIoArg::Required => DirectIo::Required,
            DirectIoArg::Optional => DirectIo::Optional,
            DirectIoArg::Disabled => DirectIo::Disabled,
        }
    }
}

#[derive(Debug, Args)]
struct AddArgs {
    /// Where the blocks live.
    #[arg(long, value_enum)]
    backend: BackendKind,
    /// Backing file or block device (file and blockdev backends).
    #[arg(long, value_name = "PATH")]
    path: Option<PathBuf>,
    /// Device size, e.g. 256M or 1G (default: the whole backing store).
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    size: Option<u64>,
    /// Device id to use (default: the lowest free one).
    #[arg(long, short = 'n', value_name = "ID")]
    id: Option<u32>,
    /// Hardware queues, one serving thread each.
    #[arg(long, short = 'q', default_value_t = 1)]
    queues: u16,
    /// Requests in flight per queue.
    #[arg(long, short = 'd', default_value_t = 128)]
    depth: u16,
    /// Largest single read or write.
    #[arg(long, value_parser = parse_size, default_value = "256K", value_name = "BYTES")]
    max_io_size: u64,
    /// Direct-I/O policy for file and blockdev backends.
    #[arg(long, value_enum, default_value = "optional")]
    direct_io: DirectIoArg,
    #[command(flatten)]
    qos: QosArgs,
    /// Also draw from this QoS group's shared budget (see `set-qos --group`).
    #[arg(long, value_name = "NAME")]
    qos_group: Option<String>,
    /// A cache store in front of the backing store: an existing file or block device, or
    /// `ram` (memory of the server; never writeback).
    #[arg(long, value_name = "PATH")]
    cache: Option<PathBuf>,
    /// Bytes of the cache store to use (default: all of it; required for `ram`).
    #[arg(long, value_parser = parse_size, value_name = "BYTES", requires = "cache")]
    cache_size: Option<u64>,
    /// writeback, writethrough (default), writearound or none.
    #[arg(long, value_parser = parse_cache_mode, value_name = "MODE", requires = "cache")]
    cache_mode: Option<CacheMode>,
    /// What to do if the cache store fails validation (default: refuse).
    #[arg(long, value_enum, value_name = "CHOICE", requires = "cache")]
    cache_invalid: Option<InvalidCacheArg>,
    /// Serve in the foreground instead of in a background process.
    #[arg(long)]
    foreground: bool,
}

/// Rate limits, named after QEMU's `throttling.*` options. Bursts and peak rates: `--qos-json`.
#[derive(Debug, Default, Args)]
struct QosArgs {
    /// Limit on all operations per second.
    #[arg(long, value_name = "OPS")]
    iops_total: Option<u64>,
    /// Limit on reads per second.
    #[arg(long, value_name = "OPS")]
    iops_read: Option<u64>,
    /// Limit on writes (and discards) per second.
    #[arg(long, value_name = "OPS")]
    iops_write: Option<u64>,
    /// Limit on bytes per second, read and written together (e.g. 100M).
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    bps_total: Option<u64>,
    /// Limit on bytes read per second.
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    bps_read: Option<u64>,
    /// Limit on bytes written per second.
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    bps_write: Option<u64>,
    /// Count an I/O of N bytes as ceil(N / SIZE) operations (normalises large I/Os).
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    iops_size: Option<u64>,
    /// All limits as JSON (including bursts and peak rates); excludes the flags above.
    #[arg(long, value_name = "JSON", conflicts_with_all = [
        "iops_total", "iops_read", "iops_write", "bps_total", "bps_read", "bps_write", "iops_size"
    ])]
    qos_json: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "group"])))]
struct SetQosArgs {
    /// The device id (N in /dev/ublkbN).
    #[arg(long, short = 'n', value_name = "ID")]
    id: Option<u32>,
    /// A QoS group instead of a device: created if missing, else its shared limits change for
    /// every member at once.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Remove every limit.
    #[arg(long, conflicts_with = "qos_json")]
    unlimited: bool,
    #[command(flatten)]
    qos: QosArgs,
}

#[derive(Debug, Args)]
struct DelArgs {
    /// The device id (N in /dev/ublkbN).
    #[arg(long, short = 'n', value_name = "ID")]
    id: u32,
    /// Delete even if the block device is mounted or open.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The device spec as JSON.
    #[arg(long, required_unless_present = "spec_from_stdin")]
    spec: Option<String>,
    /// Wait for the spec (one line of JSON) on stdin: a server started ahead of its device.
    /// EOF instead of a spec ends it without doing anything.
    #[arg(long, conflicts_with = "spec")]
    spec_from_stdin: bool,
    /// Detach from the caller's session.
    #[arg(long)]
    detach: bool,
    /// Take over the quiesced device named by the spec's id.
    #[arg(long)]
    recover: bool,
    /// This server's log file, renamed to `<run-dir>/<id>.log` once the id is known.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli: Cli = match mesoblk_cli::parse("mesoblk-target") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // Servers log their life story to their log file; one-shot commands stay quiet but for
    // warnings, so their output is the answer and, on failure, one line of error.
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    mesoblk_cli::init_logging(default_level);
    mesoblk_cli::exit("mesoblk-target", commands::run(cli))
}
