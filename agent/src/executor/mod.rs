//! The built-in command executor: runs a task's `CommandInfo` the way Mesos's command executor
//! does, each task in its own session, process group, sandbox and (where cgroup v2 is usable)
//! cgroup, and finds its tasks again after an agent restart.
//!
//! # Pieces
//!
//! - [`command`]: what a `TaskInfo` asks for: argv (shell or not), environment, user, limits,
//!   kill grace period, the `ExecutorInfo` Mesos would make (pure).
//! - [`env`](mod@env): the task's environment layers and stout durations (pure).
//! - [`cgroup`]: cgroup v2 `cpu.max`, `memory.max`, `io.max` under an injectable root.
//! - [`launcher`]: `mesoblk-launcher`, the helper between the agent and a task, and its
//!   protocol.
//! - [`process`]: the agent's side of a process group: spawn and release the launcher, find it
//!   again by pid and start time, signal the group.
//! - [`CommandExecutor`]: launch, kill, watch, recover.
//!
//! # A task's life
//!
//! [`CommandExecutor::launch`] checks the task (TASK_ERROR when it is malformed), resolves its
//! user (`CommandInfo.user`, else `FrameworkInfo.user`; a user that does not exist gives
//! TASK_FAILED with REASON_CONTAINER_LAUNCH_FAILED), creates the sandbox
//! `<work_dir>/slaves/<agent>/frameworks/<fw>/executors/<task>/runs/<container>/` with `stdout`
//! and `stderr` (owned by the task's user), checkpoints the framework, executor and task infos,
//! creates the cgroup with the task's limits, and starts `mesoblk-launcher`. The launcher's pid
//! and start time are checkpointed and the launcher is moved into the cgroup **before** it may
//! start the task (see [`launcher`] for that handshake and the race it avoids). TASK_STARTING
//! is sent, the launcher starts the command, and TASK_RUNNING follows. A command that cannot
//! start (missing binary in argv mode, ...) gives TASK_FAILED with
//! REASON_COMMAND_EXECUTOR_FAILED and leaves nothing running.
//!
//! The task's environment (lowest priority first): the agent's environment without its own
//! `MESOS_*`/`LIBPROCESS_*`; `MESOS_FRAMEWORK_ID`, `MESOS_EXECUTOR_ID`, `MESOS_TASK_ID`,
//! `MESOS_SLAVE_ID`/`MESOS_AGENT_ID`, `MESOS_AGENT_ENDPOINT`, `MESOS_SANDBOX` and
//! `MESOS_DIRECTORY` (the sandbox), `MESOS_CHECKPOINT` (`"1"`/`"0"` from
//! `FrameworkInfo.checkpoint`), `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD` (stout format, e.g.
//! `5secs`); the agent's extra variables (the task's block device); `CommandInfo.environment`.
//!
//! A watcher thread checks every poll interval whether a task's launcher ended. The launcher
//! records the command's exit status before it ends, and the end becomes TASK_FINISHED (exit
//! 0), TASK_FAILED ("Command exited with status 3", "Command terminated with signal
//! Segmentation fault") or TASK_KILLED (after a kill), as Mesos's command executor reports it.
//! A launcher that ended without recording anything gives TASK_FAILED with
//! REASON_EXECUTOR_TERMINATED from the agent, as Mesos's agent reports a vanished executor.
//!
//! [`CommandExecutor::kill`] sends TASK_KILLING (frameworks with `TASK_KILLING_STATE`), SIGTERM
//! to the process group, and SIGKILL to the group (and `cgroup.kill`) when the grace period
//! (`KillPolicy.grace_period`, else the configured default) is over.
//!
//! # Agent restarts
//!
//! Tasks do not depend on the agent process: the launcher is a session leader (no
//! `PR_SET_PDEATHSIG`), writes only to files, and holds none of the agent's pipes once the task
//! runs. Dropping a [`CommandExecutor`] (or killing the agent) leaves every task running.
//! [`CommandExecutor::recover`] reads the checkpoints; a launcher still alive with its recorded
//! start time is watched again (a kill in progress continues, with its original deadline); one
//! that is gone is reported from its recorded exit status, or as TASK_FAILED with
//! REASON_EXECUTOR_TERMINATED when there is none. Unacknowledged status updates are the status
//! store's (`crate::status`) to keep. Unlike Mesos, tasks of frameworks without
//! `checkpoint` are recovered too (the agent always checkpoints).

pub mod cgroup;
pub mod command;
pub mod env;
pub mod launcher;
pub mod process;
pub(crate) mod runner;

pub use cgroup::{CgroupConfig, CgroupError, Cgroups, IoLimits, Limits};
pub use runner::{
    default_launcher, end_status, signal_name, CommandExecutor, DiskGate, DiskGrant,
    ExecutorConfig, ExecutorError, KillError, LaunchError, Recovery, RunInfo, StatusSink,
    TaskLaunch, TaskUpdate,
};
