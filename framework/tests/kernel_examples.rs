//! Kernel tier: the example frameworks on a real cluster. A `mesoblk-master` and a
//! `mesoblk-agent` with a block pool run here (root, `ublk_drv`: the qemu guest of
//! `scripts/test`); `volume-demo` and `block-bench` (with its custom executor) run against them
//! and must succeed.
//!
//! The binaries come from the test's own target folder: `target/<profile>/mesoblk-master`,
//! `mesoblk-agent`, `mesoblk-launcher`, `mesoblk-target` and `target/<profile>/examples/*`
//! (`scripts/test` builds them). Fails, never skips, without them or without ublk.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound on the master and agent coming up and the agent registering.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one example's run (it also gets `--timeout`).
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(300);

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/kernel_examples-<hash> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

fn binary(relative: &str) -> PathBuf {
    let path = bin_dir().join(relative);
    assert!(
        path.is_file(),
        "{} is missing: scripts/test builds it with the kernel tests",
        path.display()
    );
    path
}

fn require_ublk() {
    assert!(
        Path::new("/dev/ublk-control").exists(),
        "/dev/ublk-control is missing: kernel tests must run where ublk_drv is loaded (scripts/vm-run)"
    );
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("address").port()
}

/// A child process killed and reaped on drop, its output in a log file for failures.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(command: &mut Command, log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        Daemon { child, log }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master and an agent with a pool of profile `standard` (1 GiB thinly provisioned: the
/// guest's /tmp is a small tmpfs), under one temporary folder.
struct Cluster {
    root: tempfile::TempDir,
    master: Daemon,
    agent: Daemon,
    master_address: String,
}

impl Cluster {
    fn start() -> Cluster {
        require_ublk();
        let root = tempfile::tempdir().expect("temp dir");
        let master_port = free_port();
        let master_address = format!("127.0.0.1:{master_port}");
        let master = Daemon::start(
            Command::new(binary("mesoblk-master"))
                .args(["--ip", "127.0.0.1", "--port", &master_port.to_string()])
                .arg("--work_dir")
                .arg(root.path().join("master")),
            root.path().join("master.log"),
        );
        let pools = root.path().join("pools");
        std::fs::create_dir_all(&pools).expect("pools folder");
        let config = root.path().join("storage.json");
        let storage = format!(
            r#"{{"pools": [{{"name": "local", "dir": "{}", "size": "256M", "overcommit": 4}}],
                "profiles": [{{"name": "standard", "pool": "local", "filesystem": "ext4"}}]}}"#,
            pools.join("local").display()
        );
        std::fs::write(&config, storage).expect("storage config");
        let agent = Daemon::start(
            Command::new(binary("mesoblk-agent"))
                .args(["--master", &master_address, "--ip", "127.0.0.1"])
                .args(["--port", &free_port().to_string()])
                .args(["--resources", "cpus:4;mem:2048;ports:[31000-32000]"])
                .arg("--work_dir")
                .arg(root.path().join("agent"))
                .arg("--block_pool_config")
                .arg(&config)
                .arg("--block_pool_dirs")
                .arg(&pools),
            root.path().join("agent.log"),
        );
        let mut cluster = Cluster {
            root,
            master,
            agent,
            master_address,
        };
        cluster.wait_for_agent();
        cluster
    }

    fn wait_for_agent(&mut self) {
        let url = format!("http://{}/master/state", self.master_address);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let exited = [("master", &mut self.master), ("agent", &mut self.agent)]
                .into_iter()
                .find_map(|(name, d)| d.child.try_wait().ok().flatten().map(|s| (name, s)));
            if let Some((name, status)) = exited {
                panic!("{}", self.failure(&format!("the {name} exited ({status})")));
            }
            let out = Command::new("curl").args(["-fsS", &url]).output();
            if let Ok(out) = out {
                let state: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                if state["slaves"].as_array().is_some_and(|a| !a.is_empty()) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{}", self.failure("the agent did not register in time"));
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what}\n--- master log\n{}\n--- agent log\n{}",
            self.master.log(),
            self.agent.log()
        )
    }

    /// Runs example `name` with `args` against the cluster, bounded by [`EXAMPLE_TIMEOUT`].
    fn run_example(&self, name: &str, args: &[&str]) -> Output {
        let mut child = Command::new(binary(&format!("examples/{name}")))
            .args(["--master", &self.master_address])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let deadline = Instant::now() + EXAMPLE_TIMEOUT;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let output = child.wait_with_output().expect("output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{}",
            self.failure(&format!(
                "{name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                output.status
            ))
        );
        println!("{stdout}");
        output
    }
}

#[test]
fn volume_demo_writes_and_reads_back_a_persistent_volume() {
    let cluster = Cluster::start();
    let output = cluster.run_example(
        "volume-demo",
        &[
            "--profile",
            "standard",
            "--size-mb",
            "64",
            "--data-mb",
            "8",
            "--timeout",
            "240",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    for step in [
        "Volume vol-",
        "volume-demo-writer is TASK_FINISHED",
        "volume-demo-reader is TASK_FINISHED",
        "Done: the volume was created, written, read back, and destroyed.",
    ] {
        assert!(stdout.contains(step), "{step:?} missing:\n{stdout}");
    }
    // The destroyed volume's file is gone from the pool.
    let left: Vec<_> = std::fs::read_dir(cluster.root.path().join("pools/local"))
        .expect("pool folder")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "img"))
        .collect();
    assert!(left.is_empty(), "volumes left behind: {left:?}");
}

#[test]
fn block_bench_measures_devices_through_its_custom_executor() {
    let cluster = Cluster::start();
    let executor = binary("examples/block-bench-executor");
    let output = cluster.run_example(
        "block-bench",
        &[
            "--profile",
            "standard",
            "--disks",
            "2",
            "--size-mb",
            "64",
            "--runtime",
            "2",
            "--timeout",
            "240",
            "--executor",
            executor.to_str().expect("UTF-8 path"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("block-bench-") && l.contains("/dev/ublkb"))
        .collect();
    assert_eq!(rows.len(), 2, "one result row per device:\n{stdout}");
    for row in rows {
        let read_iops: f64 = row
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no read IOPS in {row:?}"));
        assert!(read_iops > 0.0, "fio read nothing: {row:?}");
    }
}
