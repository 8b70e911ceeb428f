//! The agent's side of a run's process group: starting the launcher and releasing it, finding
//! it again after an agent restart, signalling its group, and noticing its end.
//!
//! A launcher the agent started itself is its child until reaped ([`Leader::Child`]): the
//! zombie keeps its pid (and thus the group's id) from being reused until `try_wait` reaps it.
//! After an agent restart the launcher is nobody's child of ours ([`Leader::Adopted`]): it is
//! identified by pid **and** start time (`/proc/<pid>/stat` field 22), since the pid alone may
//! have been reused; a zombie (state `Z`, waiting for its new parent to reap it) counts as
//! ended. Signals to an adopted group are sent only after its leader was found alive with the
//! recorded start time (the check and the signal are not atomic without pidfds; the window is
//! one system call wide).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::launcher::{LauncherArgs, Reply, ENV_PREFIX, GO};

/// What `/proc/<pid>/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// The process group.
    pub pgrp: i32,
    /// The session.
    pub session: i32,
    /// The start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses the content of `/proc/<pid>/stat` (the command name may contain spaces and
/// parentheses, so fields are counted from the last `)`).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state); field N is `fields[N - 3]`.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub fn read_stat(pid: i32) -> Option<ProcStat> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

/// Whether the process `pid` that started at `start_ticks` still runs (not a zombie).
pub fn is_alive(pid: i32, start_ticks: u64) -> bool {
    read_stat(pid).is_some_and(|s| s.start_ticks == start_ticks && !matches!(s.state, 'Z' | 'X'))
}

/// The leader of a run's session and process group: its launcher.
#[derive(Debug)]
pub enum Leader {
    /// Started by this agent process.
    Child {
        /// The launcher.
        child: Child,
        /// Its start time.
        start_ticks: u64,
    },
    /// Found again after an agent restart.
    Adopted {
        /// The launcher's pid.
        pid: i32,
        /// Its start time.
        start_ticks: u64,
    },
}

impl Leader {
    /// The launcher's pid (the group's id).
    pub fn pid(&self) -> i32 {
        match self {
            Leader::Child { child, .. } => pid_of(child),
            Leader::Adopted { pid, .. } => *pid,
        }
    }

    /// The launcher's start time.
    pub fn start_ticks(&self) -> u64 {
        match self {
            Leader::Child { start_ticks, .. } | Leader::Adopted { start_ticks, .. } => *start_ticks,
        }
    }

    /// Whether the launcher ended (reaping it if it is our child).
    pub fn has_exited(&mut self) -> bool {
        match self {
            // An error from try_wait means it is no longer our child to wait for.
            Leader::Child { child, .. } => !matches!(child.try_wait(), Ok(None)),
            Leader::Adopted { pid, start_ticks } => !is_alive(*pid, *start_ticks),
        }
    }

    /// Sends `signal` to the whole process group; `false` when the group is gone.
    pub fn signal_group(&mut self, signal: Signal) -> bool {
        if let Leader::Adopted { pid, start_ticks } = self {
            if !is_alive(*pid, *start_ticks) {
                return false;
            }
        }
        if let Leader::Child { child, .. } = self {
            // Not reaped yet: its pid cannot have been reused. Reaped: the group may be.
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
        }
        match killpg(Pid::from_raw(self.pid()), signal) {
            Ok(()) => true,
            Err(nix::errno::Errno::ESRCH) => false,
            Err(e) => {
                tracing::warn!(pid = self.pid(), %signal, error = %e, "cannot signal process group");
                false
            }
        }
    }
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pids fit in i32")
}

/// A launcher started and waiting for `go`.
#[derive(Debug)]
pub struct Pending {
    /// The launcher.
    pub child: Child,
    /// Its start time.
    pub start_ticks: u64,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

/// Starts the launcher at `launcher` with `args`, exactly the environment `env`, `workdir` as
/// its working folder and `stderr` as its stderr; it waits for [`release`].
pub fn spawn_launcher(
    launcher: &Path,
    args: &LauncherArgs,
    env: &[(String, String)],
    stderr: std::fs::File,
) -> std::io::Result<Pending> {
    let mut child = Command::new(launcher)
        .args(args.to_args())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&args.workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let Some(stat) = read_stat(pid_of(&child)) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::io::Error::other(
            "the launcher vanished right after it started",
        ));
    };
    Ok(Pending {
        child,
        start_ticks: stat.start_ticks,
        stdin,
        stdout,
    })
}

impl Pending {
    /// The launcher's pid.
    pub fn pid(&self) -> i32 {
        pid_of(&self.child)
    }

    /// Gives up: closes `go`'s pipe (the launcher exits without starting anything), kills and
    /// reaps it.
    pub fn abort(self) {
        let Pending {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Why a released launcher did not start the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseError {
    /// The launcher said why.
    Refused(String),
    /// The launcher ended or answered nonsense.
    Broken(String),
    /// No answer in time.
    Timeout(Duration),
}

/// Sends `go` and reads the launcher's answer (at most `timeout`). On success returns the
/// running leader and the task's pid; on failure the launcher has been reaped.
pub fn release(pending: Pending, timeout: Duration) -> Result<(Leader, i32), ReleaseError> {
    release_with_env(pending, &[], timeout)
}

/// [`release`], adding `env` to the task's environment first (`env NAME=VALUE` lines). A
/// variable that cannot be sent on one line (a newline in it, an empty or `=` in a name) is
/// refused without starting anything.
pub fn release_with_env(
    pending: Pending,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<(Leader, i32), ReleaseError> {
    let bad = env
        .iter()
        .find(|(k, v)| k.is_empty() || k.contains(['=', '\n', '\0']) || v.contains(['\n', '\0']));
    if let Some((name, _)) = bad {
        pending.abort();
        return Err(ReleaseError::Refused(format!(
            "the variable {name:?} cannot be passed to the task"
        )));
    }
    let Pending {
        mut child,
        start_ticks,
        mut stdin,
        mut stdout,
    } = pending;
    let mut message: String = env
        .iter()
        .map(|(k, v)| format!("{ENV_PREFIX}{k}={v}\n"))
        .collect();
    message.push_str(GO);
    message.push('\n');
    // A launcher that already failed has closed its end; its answer is still in the pipe.
    let _ = stdin
        .write_all(message.as_bytes())
        .and_then(|()| stdin.flush());
    drop(stdin);
    let answer = read_line(&mut stdout, timeout);
    drop(stdout);
    let outcome = match answer {
        Ok(line) => match Reply::parse(&line) {
            Some(Reply::Started(task_pid)) => {
                return Ok((Leader::Child { child, start_ticks }, task_pid))
            }
            Some(Reply::Error(message)) => ReleaseError::Refused(message),
            None if line.is_empty() => {
                ReleaseError::Broken("the launcher exited without answering".into())
            }
            None => ReleaseError::Broken(format!("the launcher answered {line:?}")),
        },
        Err(e) => e,
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(outcome)
}

/// Reads one line (without its newline) within `timeout`; a closed pipe ends it early.
fn read_line(pipe: &mut ChildStdout, timeout: Duration) -> Result<String, ReleaseError> {
    const MAX_LINE: usize = 4096;
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(end);
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, wait) {
            Ok(0) => return Err(ReleaseError::Timeout(timeout)),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ReleaseError::Broken(format!("poll failed: {e}"))),
        }
        let mut chunk = [0u8; 512];
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReleaseError::Broken(format!("cannot read the answer: {e}"))),
        }
        if buf.len() > MAX_LINE {
            return Err(ReleaseError::Broken(
                "the launcher's answer is too long".into(),
            ));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                pgrp: 1234,
                session: 1234,
                start_ticks: 987654
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let stat = read_stat(me).unwrap();
        assert!(is_alive(me, stat.start_ticks));
        assert!(!is_alive(me, stat.start_ticks + 1));
        assert!(!is_alive(i32::MAX, 0));
    }
}
