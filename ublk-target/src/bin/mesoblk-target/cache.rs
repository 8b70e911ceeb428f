//! `mesoblk-target cache status|flush|mode|detach <id>`: requests to a live device's server over
//! its admin socket. A mode change or detach is also written to the device's record, so a
//! recovered server starts the way the device runs now.

use anyhow::{bail, Context, Result};
use ublk_target::admin::{self, AdminRequest, AdminResponse, DRAIN_TIMEOUT};
use ublk_target::cache::{CacheMode, CACHE_BLOCK};
use ublk_target::daemon::{DeviceRecord, RunDir};
use ublk_target::device_cache::CacheReport;

use crate::CacheCommand;

pub(crate) fn run(command: CacheCommand, run_dir: &RunDir) -> Result<()> {
    match command {
        CacheCommand::Status { id, json } => status(id, json, run_dir),
        CacheCommand::Flush { id } => flush(id, run_dir),
        CacheCommand::Mode { id, mode } => set_mode(id, mode, run_dir),
        CacheCommand::Detach { id } => detach(id, run_dir),
    }
}

/// The device's record, which must name a cache.
fn cached_record(id: u32, run_dir: &RunDir) -> Result<DeviceRecord> {
    let record = run_dir
        .read(id)
        .with_context(|| format!("no record of device {id} in {}", run_dir.path().display()))?;
    if record.spec.cache.is_none() {
        bail!("device {id} has no cache");
    }
    Ok(record)
}

fn ask(id: u32, run_dir: &RunDir, request: &AdminRequest) -> Result<AdminResponse> {
    cached_record(id, run_dir)?;
    let response = admin::ask_waiting(&run_dir.socket_path(id), request, DRAIN_TIMEOUT)?;
    Ok(response)
}

fn unexpected(response: &AdminResponse) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer from the device server: {response:?}")
}

fn status(id: u32, json: bool, run_dir: &RunDir) -> Result<()> {
    let report = match ask(id, run_dir, &AdminRequest::CacheStatus)? {
        AdminResponse::CacheStatus(report) => report,
        other => return Err(unexpected(&other)),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_status(&report);
    }
    Ok(())
}

fn print_status(report: &CacheReport) {
    let s = &report.stats;
    let state = if s.failed {
        "failed: an I/O error stopped the cache (kill the server, then recover)"
    } else {
        "serving"
    };
    let rows: [(&str, String); 17] = [
        ("store", report.store.clone()),
        ("state", state.to_owned()),
        ("mode", s.mode.name().to_owned()),
        ("read hits", s.read_hits.to_string()),
        ("read misses", s.read_misses.to_string()),
        ("write hits", s.write_hits.to_string()),
        ("write misses", s.write_misses.to_string()),
        ("bypassed", s.bypassed.to_string()),
        ("promotions", s.promotions.to_string()),
        ("dirty bytes", s.dirty_bytes.to_string()),
        ("cached bytes", s.cached_bytes.to_string()),
        ("capacity bytes", s.capacity_bytes.to_string()),
        ("written back bytes", s.writeback_bytes.to_string()),
        (
            "writeback rate",
            format!("{} bytes/s", report.writeback_rate_bytes_per_sec),
        ),
        ("evictions", s.evictions.to_string()),
        ("flushes", s.flushes.to_string()),
        (
            "flush latency",
            match report.mean_flush_latency_us {
                Some(mean) => format!("mean {mean} us, max {} us", s.flush_latency_us_max),
                None => "-".to_owned(),
            },
        ),
    ];
    for (name, value) in rows {
        println!("{name:<20}{value}");
    }
}

fn flush(id: u32, run_dir: &RunDir) -> Result<()> {
    match ask(id, run_dir, &AdminRequest::CacheFlush)? {
        AdminResponse::CacheDrained(drained) => {
            println!(
                "flushed: {} bytes written back",
                drained.blocks * CACHE_BLOCK
            );
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

fn set_mode(id: u32, mode: CacheMode, run_dir: &RunDir) -> Result<()> {
    let change = match ask(id, run_dir, &AdminRequest::CacheMode { mode })? {
        AdminResponse::CacheModeChanged(change) => change,
        other => return Err(unexpected(&other)),
    };
    update_record(id, run_dir, |record| {
        if let Some(cache) = record.spec.cache.as_mut() {
            cache.mode = mode;
        }
    })?;
    println!(
        "cache mode {} -> {}: done ({} bytes written back)",
        change.from.name(),
        change.to.name(),
        change.drained.blocks * CACHE_BLOCK
    );
    Ok(())
}

fn detach(id: u32, run_dir: &RunDir) -> Result<()> {
    let drained = match ask(id, run_dir, &AdminRequest::CacheDetach)? {
        AdminResponse::CacheDrained(drained) => drained,
        other => return Err(unexpected(&other)),
    };
    update_record(id, run_dir, |record| record.spec.cache = None)?;
    println!(
        "cache detached: done ({} bytes written back)",
        drained.blocks * CACHE_BLOCK
    );
    Ok(())
}

/// Records what the server now runs with, so a recovered server starts the same way.
fn update_record(id: u32, run_dir: &RunDir, change: impl FnOnce(&mut DeviceRecord)) -> Result<()> {
    let mut record = cached_record(id, run_dir)?;
    change(&mut record);
    run_dir.write(&record)?;
    Ok(())
}
