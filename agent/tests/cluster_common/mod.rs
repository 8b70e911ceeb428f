//! A real cluster for the agent's tests: the real master (its library, in this process, on a
//! loopback port), the real `mesoblk-agent` binary as a child process, and a pymesos 0.3.15
//! scheduler (`tests/compat/scheduler.py`) driven line by line. Every wait is bounded.

#![allow(dead_code, unreachable_pub)] // Each test binary uses a different part.

pub mod pool;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mesoblk_master::{router, Config, MasterHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Upper bound on any single wait.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("address").port()
}

/// The real master, served from this process.
pub struct Master {
    pub port: u16,
    pub handle: MasterHandle,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Master {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Master {
    /// A master with short timers: 50 ms allocations, agents pinged every 200 ms and removed
    /// after 25 missed pings (5 s), status updates retried after 1 s.
    pub async fn start() -> Master {
        Master::start_on(0).await
    }

    /// A master on `port` (0: any).
    pub async fn start_on(port: u16) -> Master {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .expect("bind the master");
        let port = listener.local_addr().expect("address").port();
        let mut config = Config::new("127.0.0.1", Ipv4Addr::LOCALHOST, port);
        config.allocation_interval = Duration::from_millis(50);
        config.agent_ping_timeout = Duration::from_millis(200);
        config.max_agent_ping_timeouts = 25;
        config.status_update_retry_interval = Duration::from_secs(1);
        config.heartbeat_interval = Duration::from_secs(1);
        let handle = MasterHandle::new(config);
        let app = router(handle.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Master {
            port,
            handle,
            server,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The folder of the test's binaries (`mesoblk-agent`, `mesoblk-launcher`).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mesoblk-agent"))
        .parent()
        .expect("a folder")
        .to_path_buf()
}

/// The real agent binary, as a child process with its log in a file.
pub struct Agent {
    pub port: u16,
    pub work_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Agent {
    /// Starts an agent of `master` in `work_dir`, without block pools unless `extra` says so.
    pub fn start(master: &str, work_dir: &Path, extra: &[String]) -> Agent {
        let port = free_port();
        let mut args: Vec<String> = [
            "--master",
            master,
            "--ip",
            "127.0.0.1",
            "--hostname",
            "127.0.0.1",
            "--resources",
            "cpus:4;mem:4096;ports:[31000-32000]",
            "--attributes",
            "rack:r1;level:3",
            "--isolation",
            "posix/cpu,posix/mem",
            "--registration_backoff_factor",
            "100ms",
            "--executor_shutdown_grace_period",
            "2secs",
            "--device_stats_interval",
            "1secs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A flag `extra` gives replaces its default here (the agent takes each flag once).
        let mut i = 0;
        while i < args.len() {
            if args[i].starts_with("--") && extra.contains(&args[i]) {
                args.drain(i..i + 2);
            } else {
                i += 2;
            }
        }
        args.extend(["--port".to_string(), port.to_string()]);
        args.extend([
            "--work_dir".to_string(),
            work_dir.join("work").display().to_string(),
            "--block_run_dir".to_string(),
            work_dir.join("run").display().to_string(),
        ]);
        args.extend(extra.iter().cloned());
        let mut agent = Agent {
            port,
            work_dir: work_dir.join("work"),
            log: work_dir.join("agent.log"),
            args,
            child: None,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        self.spawn_unchecked();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("mesoblk-agent exited with {status}:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "agent listening in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process without waiting for it to listen.
    fn spawn_unchecked(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_mesoblk-agent"))
            .args(&self.args)
            .env("RUST_LOG", "info,mesoblk_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mesoblk-agent");
        self.child = Some(child);
    }

    /// `kill -9`: the agent dies at once; its tasks do not.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    /// SIGTERM: the agent shuts down by itself (bounded wait); its tasks keep running.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.wait_exit(child, "stop on SIGTERM")
    }

    /// Starts the agent again with the same flags.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "killed first");
        self.spawn();
    }

    /// Starts the agent again (killed first) and waits, bounded, for it to exit by itself.
    pub fn restart_until_exit(&mut self) -> std::process::ExitStatus {
        assert!(self.child.is_none(), "killed first");
        self.spawn_unchecked();
        let child = self.child.take().expect("spawned");
        self.wait_exit(child, "exit in time")
    }

    /// Waits, bounded, for the agent process to exit; kills it and fails when it does not.
    fn wait_exit(&self, mut child: std::process::Child, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent did not {what}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET on the agent's API: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = tokio::time::timeout(WAIT, reqwest::get(self.url(path)))
            .await
            .expect("the agent answers in time")
            .expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Waits until `/state` satisfies `check`.
    pub async fn wait_state(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self.get_json("/state").await;
            if check(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{what} in time; last state: {state:#}\nagent log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every executor in an agent's `/state`, of every framework.
pub fn executors_of(state: &Value) -> Vec<Value> {
    state["frameworks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["executors"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The executor `id` in an agent's `/state`.
pub fn executor_of(state: &Value, id: &str) -> Option<Value> {
    executors_of(state).into_iter().find(|e| e["id"] == id)
}

/// The pymesos virtualenv's python (`scripts/setup` makes it; a missing one fails the test):
/// `$MESOBLK_VENV` (what `scripts/vm-run` passes to the guest), else the cache's.
pub fn python() -> PathBuf {
    if let Some(venv) = std::env::var_os("MESOBLK_VENV") {
        let python = PathBuf::from(venv).join("bin/python");
        assert!(
            python.exists(),
            "no python in $MESOBLK_VENV ({})",
            python.display()
        );
        return python;
    }
    let cache = std::env::var_os("MESOBLK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache")
                });
            base.join("mesoblk")
        });
    let python = cache.join("venv/bin/python");
    assert!(
        python.exists(),
        "no pymesos virtualenv at {}: run scripts/setup (this test never skips)",
        python.display()
    );
    python
}

/// The command of the pymesos custom executor (`tests/executor_api_pymesos.py`, a
/// `MesosExecutorDriver`) under the virtualenv's python.
pub fn pymesos_executor_command() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/executor_api_pymesos.py");
    format!("{} {script}", python().display())
}

/// The user tasks run as: the one running the tests.
pub fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
        .expect("the current user has a name")
}

/// The pymesos scheduler of `tests/compat/scheduler.py`.
pub struct Scheduler {
    stderr: tempfile::NamedTempFile,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every event read so far.
    pub seen: Vec<Value>,
}

impl Scheduler {
    pub fn start(master: &str) -> Scheduler {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/compat/scheduler.py");
        // pymesos logs (reconnections, tracebacks) go to a file shown when a wait fails.
        let stderr = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = Command::new(python())
            .arg(script)
            .arg(master)
            .arg(current_user())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr.reopen().expect("reopen the log")))
            .kill_on_drop(true)
            .spawn()
            .expect("start python");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        Scheduler {
            stderr,
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    pub async fn send(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the scheduler");
        self.stdin.flush().await.expect("flush");
    }

    /// The next event matching `check` (events before it are kept in `seen`).
    pub async fn wait_for(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.seen.iter().find(|e| check(e)) {
            return found.clone();
        }
        self.wait_new(what, check).await
    }

    /// The next event read from now on that matches `check`.
    pub async fn wait_new(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{what} in time; events: {:#?}", self.seen))
                .expect("read the scheduler")
                .unwrap_or_else(|| {
                    panic!(
                        "the scheduler ended before {what}; events: {:#?}",
                        self.seen
                    )
                });
            let event: Value = serde_json::from_str(&line).expect("a JSON event");
            assert_ne!(event["event"], "error", "scheduler error: {event}");
            self.seen.push(event.clone());
            if check(&event) {
                return event;
            }
        }
    }

    /// The events seen, one per line, offers left out (they are long), and pymesos's log.
    pub fn summary(&self) -> String {
        let events: Vec<String> = self
            .seen
            .iter()
            .filter(|e| e["event"] != "offer")
            .map(Value::to_string)
            .collect();
        let log = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        format!("{}\npymesos log:\n{log}", events.join("\n"))
    }

    /// The update of `task` to `state`.
    pub async fn update(&mut self, task: &str, state: &str) -> Value {
        self.wait_for(&format!("{task} {state}"), |e| {
            e["event"] == "update" && e["task_id"] == task && e["state"] == state
        })
        .await
    }

    /// The states `task` went through, in order.
    pub fn states(&self, task: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|e| e["event"] == "update" && e["task_id"] == task)
            .map(|e| e["state"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Launches shell tasks `(id, command)` on the next offer.
    pub async fn launch(&mut self, tasks: &[(&str, &str)]) -> Value {
        let tasks: Vec<Value> = tasks
            .iter()
            .map(|(id, command)| json!({"id": id, "command": command}))
            .collect();
        self.launch_specs(tasks).await
    }

    /// Launches tasks given as JSON specs (see the script's docs).
    pub async fn launch_specs(&mut self, tasks: Vec<Value>) -> Value {
        self.send(json!({"cmd": "launch", "tasks": tasks})).await;
        self.wait_new("launched", |e| e["event"] == "launched")
            .await
    }

    pub async fn stop(mut self) {
        self.send(json!({"cmd": "stop"})).await;
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// The real `mesoblk-master` binary as a child process (for master restarts), in-memory
/// registry. It must be built (`cargo build -p mesoblk-master`; `cargo test --workspace` does).
pub struct MasterProcess {
    pub port: u16,
    pub log: PathBuf,
    extra: Vec<String>,
    child: Option<std::process::Child>,
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl MasterProcess {
    pub fn start(port: u16, log: PathBuf) -> MasterProcess {
        MasterProcess::start_with(port, log, &[])
    }

    /// A master with extra flags.
    pub fn start_with(port: u16, log: PathBuf, extra: &[&str]) -> MasterProcess {
        let binary = bin_dir().join("mesoblk-master");
        assert!(
            binary.is_file(),
            "{} is missing: build it with `cargo build -p mesoblk-master`",
            binary.display()
        );
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("master log");
        let port_text = port.to_string();
        let child = std::process::Command::new(binary)
            .args([
                "--ip",
                "127.0.0.1",
                "--port",
                &port_text,
                "--hostname",
                "127.0.0.1",
            ])
            .args([
                "--allocation_interval",
                "50ms",
                "--agent_ping_timeout",
                "200ms",
            ])
            .args([
                "--max_agent_ping_timeouts",
                "25",
                "--heartbeat_interval",
                "1secs",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start mesoblk-master");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "master listening in time");
            std::thread::sleep(Duration::from_millis(20));
        }
        MasterProcess {
            port,
            log,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: Some(child),
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends `signal` to the master.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
        nix::sys::signal::kill(pid, signal).expect("signal the master");
    }

    /// Kills the master (SIGKILL) and starts a new one on the same port; with its in-memory
    /// registry it knows no agent.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let fresh = MasterProcess::start_with(self.port, self.log.clone(), &extra);
        *self = fresh;
    }

    /// GET on the master: its JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let response = tokio::time::timeout(WAIT, reqwest::get(url))
            .await
            .expect("the master answers in time")
            .expect("request");
        serde_json::from_str(&response.text().await.expect("body")).expect("JSON")
    }

    /// Waits until `/master/state` satisfies `check`; a timeout shows it and `agent`'s log.
    pub async fn wait_state(
        &self,
        what: &str,
        agent: &Agent,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self.get_json("/master/state").await;
            if check(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{what} in time; master state: {state:#}\nagent log:\n{}",
                agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
