//! Kernel tier: `io.max` on a task's ublk device, through the real master and the real agent
//! binary with `--isolation cgroups/cpu,cgroups/mem` in the qemu guest. A command task and a
//! custom executor on a BLOCK disk of a profile with QoS find their device's line, derived from
//! the profile, in their own cgroup's `io.max`; a task on a profile without QoS has no line.
//!
//! Needs root, cgroup v2 at /sys/fs/cgroup, `/dev/ublk-control`, `mesoblk-target` next to the
//! agent binary and the scratch disk `$MESOBLK_TEST_DISK`; fails, never skips, without them.

mod cluster_common;

use std::path::Path;

use cluster_common::pool::{scratch, task_end};
use cluster_common::{Agent, Master, Scheduler};
use serde_json::json;

/// The profile `limited`'s QoS and the `io.max` limits it gives (reads capped by the total ops
/// rate; writes at their peak rate).
const QOS: &str = r#"{"read_ops": {"ops_per_sec": 800}, "total_ops": {"ops_per_sec": 500},
    "write_bytes": {"bytes_per_sec": 4194304, "max_bytes_per_sec": 8388608}}"#;
const LIMITS: &str = "rbps=max wbps=8388608 riops=500 wiops=500";

/// A shell command writing to `out` its device's `MAJ:MIN`, then its cgroup's `io.max`.
fn report(out: &Path) -> String {
    format!(
        "set -e; dev=$(cat /sys/class/block/${{MESOBLK_BLOCK_DEVICE#/dev/}}/dev); \
         cg=$(cut -d: -f3 /proc/self/cgroup | head -n1); \
         {{ echo \"$dev\"; cat /sys/fs/cgroup$cg/io.max; }} > {out}.tmp; mv {out}.tmp {out}",
        out = out.display()
    )
}

/// The device and the `io.max` lines a task reported.
fn reported(out: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(out).unwrap();
    let mut lines = text.lines().map(str::to_owned);
    let device = lines.next().expect("the device's number");
    (device, lines.collect())
}

fn wait_file(out: &Path, agent: &Agent) {
    let deadline = std::time::Instant::now() + cluster_common::WAIT;
    while !out.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} written; agent log:\n{}",
            out.display(),
            agent.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_get_io_max_on_their_device_from_its_profile_qos() {
    assert!(
        Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "cgroup v2 at /sys/fs/cgroup"
    );
    let scratch = scratch();
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("storage.json");
    let qos: serde_json::Value = serde_json::from_str(QOS).unwrap();
    std::fs::write(
        &config,
        json!({
            "pools": [{"name": "local", "dir": scratch.mount.join("pool"), "size": "600M"}],
            "profiles": [{"name": "limited", "pool": "local", "qos": qos},
                         {"name": "plain", "pool": "local"}],
        })
        .to_string(),
    )
    .unwrap();
    let parent = format!("mesoblk-iomax-{}", std::process::id());
    let extra: Vec<String> = [
        "--block_pool_config",
        config.to_str().unwrap(),
        "--block_pool_dirs",
        scratch.mount.to_str().unwrap(),
        "--isolation",
        "cgroups/cpu,cgroups/mem",
        "--cgroups_root",
        &parent,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = Agent::start(&master.address(), dir.path(), &extra);
    let mut scheduler = Scheduler::start(&master.address());

    let (command_out, plain_out, custom_out) = (
        dir.path().join("command.out"),
        dir.path().join("plain.out"),
        dir.path().join("custom.out"),
    );
    let custom = format!("{}; exec sleep 600", report(&custom_out));
    scheduler
        .launch_specs(vec![
            json!({"id": "command", "command": report(&command_out),
                   "disk": {"mb": 32, "profile": "limited"}}),
            json!({"id": "plain", "command": report(&plain_out),
                   "disk": {"mb": 32, "profile": "plain"}}),
            json!({"id": "custom", "command": custom, "executor": true,
                   "disk": {"mb": 32, "profile": "limited"}}),
        ])
        .await;
    for task in ["command", "plain"] {
        let end = task_end(&mut scheduler, task).await;
        assert_eq!(end["state"], "TASK_FINISHED", "{end}\n{}", agent.log_text());
    }
    let (device, lines) = reported(&command_out);
    assert_eq!(
        lines,
        [format!("{device} {LIMITS}")],
        "the command task's io.max"
    );
    let (_, lines) = reported(&plain_out);
    assert!(lines.is_empty(), "no QoS, no line: {lines:?}");

    // The custom executor (a shell that never subscribes) reports from its own group.
    wait_file(&custom_out, &agent);
    let (device, lines) = reported(&custom_out);
    assert_eq!(
        lines,
        [format!("{device} {LIMITS}")],
        "the executor's io.max"
    );
    scheduler.send(json!({"cmd": "kill", "id": "custom"})).await;
    scheduler.update("custom", "TASK_KILLED").await;
    agent
        .wait_state("every device released", |s| {
            s["volumes"].as_array().is_some_and(Vec::is_empty)
        })
        .await;
    scheduler.stop().await;
    drop(agent);
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&parent));
}
