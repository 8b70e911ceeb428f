//! Kernel tier: the whole cluster in the qemu guest (root, `ublk_drv`): the real master, the
//! real agent binary with a block pool on the scratch disk's file system, and a pymesos
//! scheduler. Tasks get real ublk devices: one formats and mounts its BLOCK disk (a slice of the
//! RAW pool) and runs fio with verification; a CREATE_DISK MOUNT volume passes fio with
//! verification and keeps what one task wrote for the next, DESTROY_DISK gives the capacity back, and a disk the offer does not hold
//! is refused with TASK_ERROR. A BLOCK disk of a writeback-cached profile serves a task that
//! verifies what it wrote, and its cache figures reach the master. A profile's spare device
//! serves a BLOCK task that verifies what it wrote, is made again, and is gone once the agent
//! stops.
//!
//! Needs `mesoblk-target` next to the agent binary (scripts/test builds it) and the scratch disk
//! `$MESOBLK_TEST_DISK` (formatted here). Fails, never skips, without them.

mod cluster_common;

use cluster_common::pool::{
    agent_with_cached_profile, agent_with_pool, agent_with_spares, cache_pool_dir, disk_resources,
    offer_where, open_gate_and_finish, scratch, source_type, task_end, POOL_MB,
};
use cluster_common::{Master, Scheduler};
use serde_json::{json, Value};

const FIO: &str = "fio --name=verify --size=32M --bs=64k --rw=randwrite --ioengine=psync \
                   --verify=crc32c --do_verify=1 --end_fsync=1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_formats_mounts_and_verifies_its_block_disk() {
    let scratch = scratch();
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_pool(&master, dir.path(), &scratch);
    let mut scheduler = Scheduler::start(&master.address());

    let raw = offer_where(&mut scheduler, "the RAW pool offered", |o| {
        disk_resources(o).iter().any(|d| source_type(d) == "RAW")
    })
    .await;
    let pool = disk_resources(&raw)
        .into_iter()
        .find(|d| source_type(d) == "RAW")
        .unwrap();
    assert_eq!(pool["scalar"]["value"], POOL_MB as f64, "{pool:#}");
    assert_eq!(pool["disk"]["source"]["profile"], "fast");

    let block = format!(
        "set -e; case \"$MESOBLK_BLOCK_DEVICE\" in /dev/ublkb*) ;; *) exit 9 ;; esac; \
         test -b \"$MESOBLK_BLOCK_DEVICE\"; mkfs.ext4 -q -F \"$MESOBLK_BLOCK_DEVICE\"; \
         mkdir -p m; mount \"$MESOBLK_BLOCK_DEVICE\" m; {FIO} --directory=m; umount m"
    );
    scheduler
        .launch_specs(vec![json!({"id": "block", "command": block, "mem": 256,
                                  "disk": {"mb": 256, "profile": "fast"}})])
        .await;
    let end = task_end(&mut scheduler, "block").await;
    assert_eq!(
        end["state"],
        "TASK_FINISHED",
        "{end}\nagent log:\n{}",
        agent.log_text()
    );
    // A slice of a RAW pool with a container path (an ephemeral MOUNT disk) is refused by
    // the master, as Mesos refuses non-persistent volumes; MOUNT disks come from CREATE_DISK.
    scheduler
        .launch_specs(vec![json!({"id": "ephemeral-mount", "command": "true",
                                  "disk": {"mb": 16, "profile": "fast", "mount": "data"}})])
        .await;
    scheduler.update("ephemeral-mount", "TASK_ERROR").await;
    // Their ephemeral volumes are gone with them.
    agent
        .wait_state("the pool empty again", |s| s["pools"][0]["volumes"] == 0)
        .await;
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_volume_keeps_data_between_tasks_and_destroying_it_returns_the_capacity() {
    let scratch = scratch();
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_pool(&master, dir.path(), &scratch);
    let mut scheduler = Scheduler::start(&master.address());

    scheduler
        .send(json!({"cmd": "accept", "operations": [
            {"create_disk": {"mb": 128, "profile": "fast", "type": "MOUNT"}}
        ]}))
        .await;
    scheduler
        .wait_new("accepted", |e| e["event"] == "accepted")
        .await;
    let offer = offer_where(&mut scheduler, "the new MOUNT volume offered", |o| {
        disk_resources(o).iter().any(|d| source_type(d) == "MOUNT")
    })
    .await;
    let disks = disk_resources(&offer);
    let volume = disks
        .iter()
        .find(|d| source_type(d) == "MOUNT")
        .unwrap()
        .clone();
    assert_eq!(volume["scalar"]["value"], 128.0);
    assert!(volume["disk"]["source"]["id"].is_string(), "{volume:#}");
    let raw = disks.iter().find(|d| source_type(d) == "RAW").unwrap();
    assert_eq!(raw["scalar"]["value"], (POOL_MB - 128) as f64);

    let writer = format!(
        "set -e; findmnt \"$MESOBLK_MOUNT_PATH\"; {FIO} --directory=\"$MESOBLK_MOUNT_PATH\"; \
         echo kept-across-tasks > \"$MESOBLK_MOUNT_PATH/note\""
    );
    scheduler
        .launch_specs(vec![
            json!({"id": "writer", "volume": volume, "mem": 256, "command": writer}),
        ])
        .await;
    let end = task_end(&mut scheduler, "writer").await;
    assert_eq!(
        end["state"],
        "TASK_FINISHED",
        "{end}\nagent log:\n{}",
        agent.log_text()
    );
    scheduler
        .launch_specs(vec![json!({"id": "reader", "volume": volume,
            "command": "grep -q kept-across-tasks \"$MESOBLK_MOUNT_PATH/note\""})])
        .await;
    let end = task_end(&mut scheduler, "reader").await;
    assert_eq!(
        end["state"],
        "TASK_FINISHED",
        "{end}\nagent log:\n{}",
        agent.log_text()
    );

    // A disk larger than the offer holds, and a profile the agent does not have, are refused.
    scheduler
        .launch_specs(vec![
            json!({"id": "too-big", "command": "true", "disk": {"mb": 100000, "profile": "fast"}}),
            json!({"id": "no-profile", "command": "true", "disk": {"mb": 16, "profile": "nope"}}),
        ])
        .await;
    let big = scheduler.update("too-big", "TASK_ERROR").await;
    assert!(!big["message"].as_str().unwrap_or("").is_empty(), "{big}");
    scheduler.update("no-profile", "TASK_ERROR").await;

    // DESTROY_DISK: the volume's capacity returns to the RAW pool.
    let offer = offer_where(&mut scheduler, "the volume offered again", |o| {
        disk_resources(o).iter().any(|d| source_type(d) == "MOUNT")
    })
    .await;
    let volume = disk_resources(&offer)
        .into_iter()
        .find(|d| source_type(d) == "MOUNT")
        .unwrap();
    scheduler
        .send(json!({"cmd": "accept", "operations": [{"destroy_disk": volume}]}))
        .await;
    scheduler
        .wait_new("accepted", |e| e["event"] == "accepted")
        .await;
    offer_where(&mut scheduler, "the whole pool offered again", |o| {
        let disks = disk_resources(o);
        disks.iter().all(|d| source_type(d) != "MOUNT")
            && disks
                .iter()
                .any(|d| source_type(d) == "RAW" && d["scalar"]["value"] == POOL_MB as f64)
    })
    .await;
    agent
        .wait_state("no volume left", |s| s["pools"][0]["volumes"] == 0)
        .await;
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_keeps_its_device_across_a_kill_9_of_the_agent() {
    let scratch = scratch();
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_with_pool(&master, dir.path(), &scratch);
    let mut scheduler = Scheduler::start(&master.address());
    let gate = dir.path().join("go");
    // Writes a pattern, waits for the gate (the agent dies and comes back meanwhile), then
    // reads the pattern back through the same device.
    let command = format!(
        "set -e; dev=\"$MESOBLK_BLOCK_DEVICE\"; \
         head -c 4194304 /dev/urandom > pattern; \
         dd if=pattern of=\"$dev\" bs=1M oflag=direct status=none; \
         while [ ! -e {gate} ]; do sleep 0.1; done; \
         dd if=\"$dev\" of=back bs=1M count=4 iflag=direct status=none; cmp pattern back",
        gate = gate.display()
    );
    scheduler
        .launch_specs(vec![json!({"id": "steady", "command": command, "mem": 128,
                                  "disk": {"mb": 64, "profile": "fast"}})])
        .await;
    scheduler.update("steady", "TASK_RUNNING").await;
    let before = agent
        .wait_state("the device attached", |s| {
            s["volumes"].as_array().is_some_and(|v| v.len() == 1)
        })
        .await;

    agent.kill9();
    agent.restart();
    let after = agent
        .wait_state("re-registered with the task running", |s| {
            s["registered"] == true
                && s["frameworks"][0]["executors"][0]["tasks"][0]["state"] == "TASK_RUNNING"
        })
        .await;
    assert_eq!(after["id"], before["id"]);
    assert_eq!(
        after["volumes"], before["volumes"],
        "the same volume, still attached"
    );

    open_gate_and_finish(&gate, &mut scheduler, "steady", &agent).await;
    agent
        .wait_state("the ephemeral volume gone", |s| {
            s["pools"][0]["volumes"] == 0
        })
        .await;
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_device_reports_its_figures_to_the_master() {
    let scratch = scratch();
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_pool(&master, dir.path(), &scratch);
    let mut scheduler = Scheduler::start(&master.address());
    let gate = dir.path().join("stop");
    let command = format!(
        "set -e; while [ ! -e {gate} ]; do \
         dd if=/dev/zero of=\"$MESOBLK_BLOCK_DEVICE\" bs=64k count=64 oflag=direct status=none; \
         done",
        gate = gate.display()
    );
    scheduler
        .launch_specs(vec![json!({"id": "busy", "command": command, "mem": 128,
                                  "disk": {"mb": 64, "profile": "fast"}})])
        .await;
    scheduler.update("busy", "TASK_RUNNING").await;

    let device = device_at_master(&master, &agent, |d| {
        d["write_bytes_per_second"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    assert_eq!(device["task_id"]["value"], "busy", "{device:#}");
    assert!(device["device"].as_str().unwrap().starts_with("/dev/ublkb"));
    assert!(
        device["latency_p99_us"].as_f64().unwrap() > 0.0,
        "{device:#}"
    );
    assert_eq!(device["errors"], 0, "{device:#}");
    assert_eq!(device["profile"], "fast");

    open_gate_and_finish(&gate, &mut scheduler, "busy", &agent).await;
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_profile_serves_a_block_disk_and_its_cache_figures_reach_the_master() {
    let scratch = scratch();
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_cached_profile(&master, dir.path(), &scratch);
    let mut scheduler = Scheduler::start(&master.address());
    let gate = dir.path().join("stop");
    // 256 KiB of random data, written with O_DIRECT and fsync'd, read back and compared, over
    // and over until the gate opens (each round makes the data dirty again, younger than the
    // 30 s after which writeback writes it back); 256 KiB never written are read once (cache
    // misses). Small, so that a round takes seconds even where a loaded TCG guest needs a
    // second per request. Once the gate is open, a last read back compares again.
    let command = format!(
        "set -e; dev=\"$MESOBLK_BLOCK_DEVICE\"; case \"$dev\" in /dev/ublkb*) ;; *) exit 9 ;; esac; \
         head -c 262144 /dev/urandom > pattern; \
         dd if=\"$dev\" of=/dev/null bs=64k count=4 skip=512 iflag=direct status=none; \
         while [ ! -e {gate} ]; do \
         dd if=pattern of=\"$dev\" bs=64k oflag=direct conv=fsync status=none; \
         dd if=\"$dev\" of=back bs=64k count=4 iflag=direct status=none; cmp pattern back; \
         sleep 0.5; done; \
         dd if=\"$dev\" of=back bs=64k count=4 iflag=direct status=none; cmp pattern back",
        gate = gate.display()
    );
    scheduler
        .launch_specs(vec![json!({"id": "cached", "command": command, "mem": 128,
                                  "disk": {"mb": 64, "profile": "cached"}})])
        .await;
    scheduler.update("cached", "TASK_RUNNING").await;

    let device = device_at_master(&master, &agent, |d| {
        d["cache_dirty_bytes"].as_u64().unwrap_or(0) > 0
            && d["cache_read_hits"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(device["task_id"]["value"], "cached", "{device:#}");
    assert_eq!(device["profile"], "cached", "{device:#}");
    assert_eq!(device["errors"], 0, "{device:#}");
    let dirty = device["cache_dirty_bytes"].as_u64().unwrap();
    assert!(
        dirty <= 256 << 10 && dirty % 4096 == 0,
        "dirty bytes beyond the 256 KiB written, or not whole blocks: {device:#}"
    );
    assert!(
        device["cache_read_misses"].as_u64().unwrap() > 0,
        "the never-written MiB was read from the cache: {device:#}"
    );

    open_gate_and_finish(&gate, &mut scheduler, "cached", &agent).await;
    // The ephemeral volume is destroyed with the task, its cache store with it.
    agent
        .wait_state("the ephemeral volume gone", |s| {
            s["pools"][0]["volumes"] == 0
        })
        .await;
    let stores: Vec<_> = std::fs::read_dir(cache_pool_dir(&scratch))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(stores.is_empty(), "cache stores left behind: {stores:?}");
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_device_serves_a_block_task_is_made_again_and_goes_with_the_agent() {
    let scratch = scratch();
    let master = Master::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent_with_spares(&master, dir.path(), &scratch, 64);
    let state = agent
        .wait_state("a spare device made", |s| {
            s["spares"].as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    let spare = state["spares"][0]["device_id"].as_u64().unwrap();
    assert_eq!(state["pools"][0]["spares"], 1, "{state:#}");
    assert_eq!(
        state["pools"][0]["volumes"], 0,
        "spares are not volumes: {state:#}"
    );
    let mut scheduler = Scheduler::start(&master.address());
    offer_where(&mut scheduler, "the RAW pool offered whole", |o| {
        disk_resources(o)
            .iter()
            .any(|d| source_type(d) == "RAW" && d["scalar"]["value"] == POOL_MB as f64)
    })
    .await;

    let verify = "set -e; test -b \"$MESOBLK_BLOCK_DEVICE\"; \
                  cmp -n 1048576 /dev/zero \"$MESOBLK_BLOCK_DEVICE\"; \
                  head -c 1048576 /dev/urandom > data; \
                  dd if=data of=\"$MESOBLK_BLOCK_DEVICE\" bs=64k oflag=direct conv=fsync status=none; \
                  dd if=\"$MESOBLK_BLOCK_DEVICE\" of=back bs=64k count=16 iflag=direct status=none; \
                  cmp data back";
    scheduler
        .launch_specs(vec![json!({"id": "on-spare", "command": verify,
                                  "disk": {"mb": 64, "profile": "fast"}})])
        .await;
    let end = task_end(&mut scheduler, "on-spare").await;
    assert_eq!(
        end["state"],
        "TASK_FINISHED",
        "{end}\nagent log:\n{}",
        agent.log_text()
    );
    let attached = format!("device=/dev/ublkb{spare}");
    assert!(
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("disk attached task=on-spare") && l.contains(&attached)),
        "the task got the spare's device {spare}:\n{}",
        agent.log_text()
    );
    agent
        .wait_state("the spare made again, the task's volume gone", |s| {
            s["spares"].as_array().is_some_and(|a| a.len() == 1) && s["pools"][0]["volumes"] == 0
        })
        .await;
    scheduler.stop().await;

    // A stopping agent stops its spares and removes their files.
    assert!(agent.terminate().success(), "{}", agent.log_text());
    let left: Vec<_> = std::fs::read_dir(scratch.mount.join("pool"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "files left in the pool: {left:?}");
}

/// The first device entry in the master's `/master/state` that satisfies `check`, polled until
/// the agent's periodic DeviceStats bring one.
async fn device_at_master(
    master: &Master,
    agent: &cluster_common::Agent,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("http://{}/master/state", master.address());
    let deadline = std::time::Instant::now() + cluster_common::WAIT;
    loop {
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let state: Value = serde_json::from_str(&body).unwrap();
        let device = state["slaves"][0]["mesoblk_devices"][0].clone();
        if check(&device) {
            return device;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such device figures reached the master: {device:#}\nagent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
