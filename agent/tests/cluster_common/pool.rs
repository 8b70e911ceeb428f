//! The kernel tier's block pool (`kernel_*` tests, in the qemu guest): the scratch disk
//! `$MESOBLK_TEST_DISK` formatted and mounted, an agent with one pool on it, and helpers for
//! the disks in offers and the ends of tasks.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::{bin_dir, Agent, Master, Scheduler};

pub const POOL_MB: u64 = 700;

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// The scratch disk, freshly formatted and mounted; unmounted on drop.
pub struct Scratch {
    pub mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

pub fn scratch() -> Scratch {
    assert!(
        Path::new("/dev/ublk-control").exists(),
        "/dev/ublk-control is missing: kernel tests run in the guest (scripts/vm-run)"
    );
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "kernel tests run as root"
    );
    assert!(
        bin_dir().join("mesoblk-target").is_file(),
        "mesoblk-target must be next to mesoblk-agent (cargo build -p ublk-target)"
    );
    let disk = std::env::var("MESOBLK_TEST_DISK")
        .expect("MESOBLK_TEST_DISK must name a scratch block device (scripts/test attaches one)");
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("scratch");
    std::fs::create_dir(&mount).unwrap();
    run("mkfs.ext4", &["-q", "-F", &disk]);
    run("mount", &[&disk, mount.to_str().unwrap()]);
    Scratch { mount, _dir: dir }
}

/// An agent with one pool (`local`, on the scratch disk) and one ext4 profile (`fast`).
pub fn agent_with_pool(master: &Master, dir: &Path, scratch: &Scratch) -> Agent {
    let pool = scratch.mount.join("pool");
    let storage = json!({
        "pools": [{"name": "local", "dir": pool, "size": format!("{POOL_MB}M")}],
        "profiles": [{"name": "fast", "pool": "local", "filesystem": "ext4"}],
    });
    agent_with_storage(master, dir, scratch, &storage)
}

/// [`agent_with_pool`]'s agent whose profile keeps one spare device of `spare_mb` MB.
pub fn agent_with_spares(master: &Master, dir: &Path, scratch: &Scratch, spare_mb: u64) -> Agent {
    let storage = json!({
        "pools": [{"name": "local", "dir": scratch.mount.join("pool"), "size": format!("{POOL_MB}M")}],
        "profiles": [{"name": "fast", "pool": "local", "filesystem": "ext4",
                      "spares": [{"size": format!("{spare_mb}M")}]}],
    });
    agent_with_storage(master, dir, scratch, &storage)
}

/// The cache pool of [`agent_with_cached_profile`], on the scratch disk too.
pub fn cache_pool_dir(scratch: &Scratch) -> PathBuf {
    scratch.mount.join("nvme")
}

/// An agent whose only profile (`cached`) serves volumes of the `local` pool through a
/// writeback cache: a 32 MiB store per volume in the `nvme` pool.
pub fn agent_with_cached_profile(master: &Master, dir: &Path, scratch: &Scratch) -> Agent {
    let storage = json!({
        "pools": [
            {"name": "local", "dir": scratch.mount.join("pool"), "size": format!("{POOL_MB}M")},
            {"name": "nvme", "dir": cache_pool_dir(scratch), "size": "128M"},
        ],
        "profiles": [{"name": "cached", "pool": "local", "cache": "writeback",
                      "cache_pool": "nvme", "cache_size": "32M"}],
    });
    agent_with_storage(master, dir, scratch, &storage)
}

/// An agent with the storage configuration `storage` (pools on the scratch disk).
fn agent_with_storage(master: &Master, dir: &Path, scratch: &Scratch, storage: &Value) -> Agent {
    let config = dir.join("storage.json");
    std::fs::write(&config, storage.to_string()).unwrap();
    let extra = [
        "--block_pool_config".to_string(),
        config.display().to_string(),
        "--block_pool_dirs".to_string(),
        scratch.mount.display().to_string(),
    ];
    Agent::start(&master.address(), dir, &extra)
}

pub fn disk_resources(offer: &Value) -> Vec<Value> {
    offer["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "disk")
        .cloned()
        .collect()
}

pub fn source_type(disk: &Value) -> &str {
    disk["disk"]["source"]["type"].as_str().unwrap_or("")
}

/// Takes offers (declining them) until one satisfies `check`.
pub async fn offer_where(
    scheduler: &mut Scheduler,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + super::WAIT;
    loop {
        scheduler.send(json!({"cmd": "offer"})).await;
        let offer = scheduler
            .wait_new("an offer", |e| e["event"] == "offer")
            .await;
        if check(&offer) {
            return offer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}; last offer: {offer:#}"
        );
    }
}

/// The terminal update of `task`.
pub async fn task_end(scheduler: &mut Scheduler, task: &str) -> Value {
    scheduler
        .wait_for(&format!("{task} ends"), |e| {
            e["event"] == "update"
                && e["task_id"] == task
                && ["TASK_FINISHED", "TASK_FAILED", "TASK_ERROR", "TASK_LOST"]
                    .contains(&e["state"].as_str().unwrap_or(""))
        })
        .await
}

/// Creates `gate`, the file the task's command loops until, and checks that the task then
/// ends TASK_FINISHED (with the agent's log if it does not).
pub async fn open_gate_and_finish(
    gate: &Path,
    scheduler: &mut Scheduler,
    task: &str,
    agent: &Agent,
) {
    std::fs::write(gate, b"").unwrap();
    let end = task_end(scheduler, task).await;
    assert_eq!(
        end["state"],
        "TASK_FINISHED",
        "{end}\nagent log:\n{}",
        agent.log_text()
    );
}
