//! `mesoblk-launcher`: the small helper process between the agent and a task.
//!
//! The agent cannot run code in a forked child before `exec` without `unsafe`, and a task must
//! be in its own session, in its cgroup and under its user from its first instruction, and must
//! outlive the agent. So the agent starts this helper instead, and the helper starts the task:
//!
//! 1. the agent spawns `mesoblk-launcher` with the task's environment, the sandbox as working
//!    folder, stdin and stdout as pipes to the agent, stderr appending to the sandbox's `stderr`;
//! 2. the launcher calls `setsid()` (it becomes the leader of a new session and process group,
//!    whose id is its pid; no controlling terminal) and blocks SIGTERM, SIGINT and SIGHUP for
//!    itself, so a SIGTERM to the group leaves it alive to record how the task ended;
//! 3. it opens the status file, the sandbox's `stdout` and `stderr` (before any user switch, so
//!    the status file can stay root-owned), then waits for the line `go` on stdin, after any
//!    number of lines `env NAME=VALUE`: variables the agent learnt only after spawning the
//!    launcher (the task's disks, whose devices start while the launcher starts), added to the
//!    task's environment;
//! 4. meanwhile the agent checkpoints the launcher's pid and start time and writes the pid to
//!    the task's `cgroup.procs`, then sends `go`. **This is the race avoided:** the task is
//!    forked only after the launcher is in the cgroup, so the task is born inside it and never
//!    runs a single instruction outside its limits; and a restarted agent always knows every
//!    process group it may have started. EOF instead of `go` (the agent gave up) ends the
//!    launcher without starting anything;
//! 5. the launcher switches to the task's user (supplementary groups from `initgroups`, then
//!    gid, then uid) when asked, and spawns the task with `posix_spawnp`: stdin `/dev/null`,
//!    stdout and stderr the sandbox files, an empty signal mask and default dispositions for
//!    every signal (`std::process` would pass the launcher's blocked SIGTERM on). It appends
//!    `started <pid>` to the status file, answers `started <pid>` (or `error <message>` if the
//!    user switch or the spawn failed) on stdout, then points its own stdin and stdout away from
//!    the agent's pipes: after this it holds nothing of the agent's, and the agent may die;
//! 6. it waits for the task and appends `exited <code>` or `signaled <signal>[ core]` to the
//!    status file (fsynced), then SIGKILLs its whole process group, itself included, so nothing
//!    the task left behind keeps running (Mesos destroys the container the same way).
//!
//! Status file grammar, one record per line: `started <pid>`, then at most one of
//! `exited <code>` or `signaled <signal>` optionally followed by ` core`.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{Pid, Uid, User};

/// The line the agent sends to let the launcher start the task.
pub const GO: &str = "go";
/// Prefix of a line `env NAME=VALUE` the agent may send before [`GO`].
pub const ENV_PREFIX: &str = "env ";
/// Most `env` lines accepted before `go` (a runaway agent-side bug, not a real limit).
const ENV_LINES_MAX: usize = 4096;

/// Exit code: bad arguments.
pub const EXIT_USAGE: i32 = 64;
/// Exit code: the agent closed stdin without sending `go`.
pub const EXIT_ABORTED: i32 = 65;
/// Exit code: the task could not be started (the reason was sent on stdout).
pub const EXIT_LAUNCH_FAILED: i32 = 66;

/// The launcher's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LauncherArgs {
    /// Where to record the task's pid and exit status.
    pub status_file: PathBuf,
    /// The sandbox's stdout file.
    pub stdout: PathBuf,
    /// The sandbox's stderr file.
    pub stderr: PathBuf,
    /// The task's working folder.
    pub workdir: PathBuf,
    /// Switch to this user before starting the task.
    pub user: Option<String>,
    /// The task's `argv[0]`, when not the program.
    pub argv0: Option<OsString>,
    /// The program (looked up in the task's `PATH` when it has no `/`).
    pub program: OsString,
    /// The arguments after `argv[0]`.
    pub args: Vec<OsString>,
}

impl LauncherArgs {
    /// The command line (without the launcher's own path).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            out.push(name.into());
            out.push(value);
        };
        flag("--status-file", self.status_file.clone().into());
        flag("--stdout", self.stdout.clone().into());
        flag("--stderr", self.stderr.clone().into());
        flag("--workdir", self.workdir.clone().into());
        if let Some(user) = &self.user {
            flag("--user", user.into());
        }
        if let Some(argv0) = &self.argv0 {
            flag("--argv0", argv0.clone());
        }
        out.push("--".into());
        out.push(self.program.clone());
        out.extend(self.args.iter().cloned());
        out
    }

    /// Parses what [`LauncherArgs::to_args`] wrote.
    pub fn parse(args: &[OsString]) -> Result<LauncherArgs, String> {
        let mut it = args.iter();
        let (mut status_file, mut stdout, mut stderr, mut workdir) = (None, None, None, None);
        let (mut user, mut argv0) = (None, None);
        loop {
            let flag = it.next().ok_or("missing `--` before the program")?;
            if flag == "--" {
                break;
            }
            let value = it.next().ok_or_else(|| format!("{flag:?} needs a value"))?;
            let flag = flag.to_str().ok_or("flags are UTF-8")?;
            match flag {
                "--status-file" => status_file = Some(PathBuf::from(value)),
                "--stdout" => stdout = Some(PathBuf::from(value)),
                "--stderr" => stderr = Some(PathBuf::from(value)),
                "--workdir" => workdir = Some(PathBuf::from(value)),
                "--user" => user = Some(value.to_str().ok_or("user names are UTF-8")?.into()),
                "--argv0" => argv0 = Some(value.clone()),
                other => return Err(format!("unknown flag {other}")),
            }
        }
        let program = it.next().ok_or("missing program")?.clone();
        Ok(LauncherArgs {
            status_file: status_file.ok_or("missing --status-file")?,
            stdout: stdout.ok_or("missing --stdout")?,
            stderr: stderr.ok_or("missing --stderr")?,
            workdir: workdir.ok_or("missing --workdir")?,
            user,
            argv0,
            program,
            args: it.cloned().collect(),
        })
    }
}

/// The launcher's answer to `go`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The task runs with this pid.
    Started(i32),
    /// The task could not be started.
    Error(String),
}

impl Reply {
    /// Parses one reply line.
    pub fn parse(line: &str) -> Option<Reply> {
        let line = line.trim_end_matches('\n');
        if let Some(pid) = line.strip_prefix("started ") {
            return pid.parse().ok().filter(|p| *p > 0).map(Reply::Started);
        }
        line.strip_prefix("error ")
            .map(|m| Reply::Error(m.to_string()))
    }
}

/// What a status file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskExit {
    /// The task was never started.
    NotStarted,
    /// The task started; its end was not recorded (it runs, or the launcher was killed).
    Started {
        /// The task's pid.
        pid: i32,
    },
    /// The task exited with this code.
    Exited(i32),
    /// A signal ended the task.
    Signaled {
        /// The signal's number.
        signal: i32,
        /// Whether it dumped core.
        core: bool,
    },
}

impl TaskExit {
    /// Parses a status file's content; unknown or torn lines are ignored.
    pub fn parse(text: &str) -> TaskExit {
        let mut exit = TaskExit::NotStarted;
        for line in text.lines() {
            let mut words = line.split(' ');
            let (Some(kind), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = number.parse::<i32>() else {
                continue;
            };
            exit = match kind {
                "started" => TaskExit::Started { pid: n },
                "exited" => TaskExit::Exited(n),
                "signaled" => TaskExit::Signaled {
                    signal: n,
                    core: words.next() == Some("core"),
                },
                _ => continue,
            };
        }
        exit
    }
}

/// The launcher's entry point (`mesoblk-launcher`); returns the exit code.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match LauncherArgs::parse(&args) {
        Ok(args) => run(&args),
        Err(e) => {
            eprintln!("mesoblk-launcher: {e}");
            EXIT_USAGE
        }
    }
}

fn run(args: &LauncherArgs) -> i32 {
    let mut reply = std::io::stdout();
    let prepared = prepare(args);
    let (mut status, out, err) = match prepared {
        Ok(files) => files,
        Err(message) => return fail(&mut reply, &message),
    };
    let Some(extra_env) = wait_for_go(&mut std::io::stdin().lock()) else {
        return EXIT_ABORTED;
    };
    if let Some(user) = &args.user {
        if let Err(message) = switch_user(user) {
            return fail(&mut reply, &message);
        }
    }
    let pid = match spawn_task(args, &extra_env, &out, &err) {
        Ok(pid) => pid,
        Err(message) => return fail(&mut reply, &message),
    };
    // Recorded before the answer, so a restarted agent knows the task started even if it died
    // before reading the answer.
    record(&mut status, &format!("started {pid}"));
    let _ = writeln!(reply, "started {pid}").and_then(|()| reply.flush());
    detach_from_agent(&out);
    let line = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break format!("exited {code}"),
            Ok(WaitStatus::Signaled(_, signal, true)) => {
                break format!("signaled {} core", signal as i32)
            }
            Ok(WaitStatus::Signaled(_, signal, false)) => {
                break format!("signaled {}", signal as i32)
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("mesoblk-launcher: cannot wait for the task: {e}");
                break "unknown".to_string();
            }
        }
    };
    record(&mut status, &line);
    // Ends whatever the task left in its process group, this launcher included.
    let _ = killpg(Pid::this(), Signal::SIGKILL);
    0
}

/// Reads `env NAME=VALUE` lines up to `go`; the variables, or `None` when the agent gave up
/// (EOF, anything else, too many lines).
pub fn wait_for_go(input: &mut impl BufRead) -> Option<Vec<(OsString, OsString)>> {
    let mut env = Vec::new();
    for _ in 0..=ENV_LINES_MAX {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(n) if n > 0 && line.ends_with(b"\n") => line.pop(),
            _ => return None,
        };
        if line == GO.as_bytes() {
            return Some(env);
        }
        let pair = line.strip_prefix(ENV_PREFIX.as_bytes())?;
        let eq = pair.iter().position(|b| *b == b'=').filter(|i| *i > 0)?;
        env.push((
            OsStr::from_bytes(&pair[..eq]).to_owned(),
            OsStr::from_bytes(&pair[eq + 1..]).to_owned(),
        ));
    }
    None
}

/// Starts the task with `posix_spawnp` (the program is looked up in this process's `PATH`,
/// which is the task's): stdin `/dev/null`, stdout and stderr the sandbox files, an empty signal
/// mask and every signal's default disposition (the launcher blocks SIGTERM for itself, and the
/// agent may run with some signals ignored: neither may leak into the task). Working folder and
/// environment are the launcher's own, with `extra_env` on top.
fn spawn_task(
    args: &LauncherArgs,
    extra_env: &[(OsString, OsString)],
    out: &File,
    err: &File,
) -> Result<Pid, String> {
    let c = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| format!("{s:?} contains a NUL"));
    let program = c(&args.program)?;
    let mut argv = vec![match &args.argv0 {
        Some(argv0) => c(argv0)?,
        None => program.clone(),
    }];
    for a in &args.args {
        argv.push(c(a)?);
    }
    let mut vars: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    vars.extend(extra_env.iter().cloned());
    let envp = vars
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            c(&kv)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let null = File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    let spawn_err = |e: nix::errno::Errno| format!("cannot set up the task's start: {e}");
    let mut actions = PosixSpawnFileActions::init().map_err(spawn_err)?;
    for (fd, target) in [
        (null.as_raw_fd(), 0),
        (out.as_raw_fd(), 1),
        (err.as_raw_fd(), 2),
    ] {
        actions.add_dup2(fd, target).map_err(spawn_err)?;
    }
    let mut defaults = SigSet::empty();
    for signal in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        defaults.add(signal);
    }
    let mut attr = PosixSpawnAttr::init().map_err(spawn_err)?;
    attr.set_sigmask(&SigSet::empty()).map_err(spawn_err)?;
    attr.set_sigdefault(&defaults).map_err(spawn_err)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(spawn_err)?;
    posix_spawnp(&program, &actions, &attr, &argv, &envp).map_err(|e| {
        let program = args.program.to_string_lossy();
        format!("cannot start {program}: {}", std::io::Error::from(e))
    })
}

/// Steps 2 and 3: a new session, signals blocked, the files opened.
fn prepare(args: &LauncherArgs) -> Result<(File, File, File), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid failed: {e}"))?;
    let mut blocked = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        blocked.add(s);
    }
    blocked
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let status = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&args.status_file)
        .map_err(|e| format!("cannot open {}: {e}", args.status_file.display()))?;
    // The sandbox belongs to the task's user: never follow a link planted there.
    let open = |path: &PathBuf| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    };
    Ok((status, open(&args.stdout)?, open(&args.stderr)?))
}

/// Switches to `name`'s supplementary groups, gid and uid (in that order: after `setuid` the
/// others are no longer allowed).
fn switch_user(name: &str) -> Result<(), String> {
    let user = User::from_name(name)
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("user {name:?} does not exist"))?;
    if user.uid == Uid::effective() {
        return Ok(());
    }
    let c_name = CString::new(name).map_err(|_| format!("user {name:?} contains a NUL"))?;
    nix::unistd::initgroups(&c_name, user.gid)
        .map_err(|e| format!("cannot set the groups of {name:?}: {e}"))?;
    nix::unistd::setgid(user.gid)
        .map_err(|e| format!("cannot switch to group {}: {e}", user.gid))?;
    nix::unistd::setuid(user.uid).map_err(|e| format!("cannot switch to user {name:?}: {e}"))
}

/// Points stdin at /dev/null and stdout at the sandbox's stdout: the agent's pipes are closed.
fn detach_from_agent(out: &File) {
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    let _ = nix::unistd::dup2_stdout(out);
}

fn record(status: &mut File, line: &str) {
    let written = writeln!(status, "{line}").and_then(|()| status.sync_data());
    if let Err(e) = written {
        eprintln!("mesoblk-launcher: cannot record {line:?}: {e}");
    }
}

fn fail(reply: &mut impl Write, message: &str) -> i32 {
    let message = message.replace('\n', " ");
    eprintln!("mesoblk-launcher: {message}");
    let _ = writeln!(reply, "error {message}").and_then(|()| reply.flush());
    EXIT_LAUNCH_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = LauncherArgs {
            status_file: "/m/launcher.status".into(),
            stdout: "/s/stdout".into(),
            stderr: "/s/stderr".into(),
            workdir: "/s".into(),
            user: Some("nobody".into()),
            argv0: Some("echo".into()),
            program: "/bin/echo".into(),
            args: vec!["--".into(), "-x".into()],
        };
        assert_eq!(LauncherArgs::parse(&args.to_args()), Ok(args.clone()));
        let bare = LauncherArgs {
            user: None,
            argv0: None,
            args: vec![],
            ..args
        };
        assert_eq!(LauncherArgs::parse(&bare.to_args()), Ok(bare));
        assert!(
            LauncherArgs::parse(&["--bogus".into(), "x".into(), "--".into(), "p".into()])
                .unwrap_err()
                .contains("unknown flag")
        );
    }

    #[test]
    fn env_lines_before_go_are_the_extra_variables() {
        let mut input: &[u8] = b"env A=1\nenv B=x=y\ngo\n";
        assert_eq!(
            wait_for_go(&mut input),
            Some(vec![("A".into(), "1".into()), ("B".into(), "x=y".into())])
        );
        let mut bare: &[u8] = b"go\n";
        assert_eq!(wait_for_go(&mut bare), Some(vec![]));
        for aborted in [
            &b""[..],
            b"env A=1\n",
            b"go",
            b"env =1\ngo\n",
            b"stop\ngo\n",
        ] {
            let mut input = aborted;
            assert_eq!(wait_for_go(&mut input), None, "{aborted:?}");
        }
    }

    #[test]
    fn replies_and_status_files_parse() {
        assert_eq!(Reply::parse("started 42\n"), Some(Reply::Started(42)));
        assert_eq!(
            Reply::parse("error cannot start x: nope"),
            Some(Reply::Error("cannot start x: nope".into()))
        );
        assert_eq!(Reply::parse("started -1"), None);
        assert_eq!(Reply::parse(""), None);
        assert_eq!(TaskExit::parse(""), TaskExit::NotStarted);
        assert_eq!(TaskExit::parse("started 7\n"), TaskExit::Started { pid: 7 });
        assert_eq!(
            TaskExit::parse("started 7\nexited 3\n"),
            TaskExit::Exited(3)
        );
        assert_eq!(
            TaskExit::parse("started 7\nsignaled 11 core\n"),
            TaskExit::Signaled {
                signal: 11,
                core: true
            }
        );
        // A torn last line is ignored.
        assert_eq!(
            TaskExit::parse("started 7\nexi"),
            TaskExit::Started { pid: 7 }
        );
    }
}
