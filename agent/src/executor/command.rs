//! What a command task asks for, read from its `TaskInfo` (pure).
//!
//! - `CommandInfo.shell` (default true): run `/bin/sh -c <value>`; otherwise `value` is the
//!   program and `arguments` its whole `argv`, `arguments[0]` included (Mesos's
//!   `execvp(value, arguments)`), with `argv[0] = value` when `arguments` is empty.
//! - The user: `CommandInfo.user`, else `FrameworkInfo.user`; empty means the agent's own.
//! - Limits: the task's `cpus` and `mem` (MB) scalar resources.
//! - Kill grace period: `TaskInfo.kill_policy.grace_period`, else the agent's default.

use std::ffi::OsString;
use std::time::Duration;

use mesoblk_proto::mesos::v1::{
    environment, value, CommandInfo, DurationInfo, ExecutorId, ExecutorInfo, FrameworkInfo,
    TaskInfo,
};

/// The longest command value and argument list accepted (bounds what is put on a command line).
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// The program and arguments of a command task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Argv {
    /// The program.
    pub program: OsString,
    /// `argv[0]`, when it differs from the program.
    pub argv0: Option<OsString>,
    /// `argv[1..]`.
    pub args: Vec<OsString>,
}

/// Reads the program and arguments of a command; `Err` says what is wrong with it.
pub fn argv(command: &CommandInfo) -> Result<Argv, String> {
    let value = command
        .value
        .as_deref()
        .ok_or("the task's CommandInfo has no value")?;
    let size = value.len() + command.arguments.iter().map(String::len).sum::<usize>();
    if size > MAX_COMMAND_BYTES {
        return Err(format!(
            "the command is {size} bytes long (at most {MAX_COMMAND_BYTES})"
        ));
    }
    if value.contains('\0') || command.arguments.iter().any(|a| a.contains('\0')) {
        return Err("the command contains a NUL byte".into());
    }
    if command.shell() {
        return Ok(Argv {
            program: "/bin/sh".into(),
            argv0: None,
            args: vec!["-c".into(), value.into()],
        });
    }
    if value.is_empty() {
        return Err("the task's CommandInfo.value (the executable) is empty".into());
    }
    let (argv0, args) = match command.arguments.split_first() {
        Some((first, rest)) => (Some(first.into()), rest.iter().map(Into::into).collect()),
        None => (None, Vec::new()),
    };
    Ok(Argv {
        program: value.into(),
        argv0,
        args,
    })
}

/// The task's own environment variables; secrets are refused (not supported).
pub fn task_env(command: &CommandInfo) -> Result<Vec<(String, String)>, String> {
    let Some(env) = &command.environment else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(env.variables.len());
    for var in &env.variables {
        if var.r#type() == environment::variable::Type::Secret || var.secret.is_some() {
            return Err(format!(
                "environment variable {} is a secret; secrets are not supported",
                var.name
            ));
        }
        if var.name.is_empty() || var.name.contains(['=', '\0']) {
            return Err(format!("invalid environment variable name {:?}", var.name));
        }
        let value = var.value.clone().unwrap_or_default();
        if value.contains('\0') {
            return Err(format!(
                "environment variable {} contains a NUL byte",
                var.name
            ));
        }
        out.push((var.name.clone(), value));
    }
    Ok(out)
}

/// The user the task runs as, if any is named.
pub fn task_user<'a>(framework: &'a FrameworkInfo, task: &'a TaskInfo) -> Option<&'a str> {
    let command_user = task.command.as_ref().and_then(|c| c.user.as_deref());
    command_user
        .or(Some(framework.user.as_str()))
        .filter(|u| !u.is_empty())
}

/// The sum of the task's scalar resources named `name`.
pub fn scalar(task: &TaskInfo, name: &str) -> Option<f64> {
    let values: Vec<f64> = task
        .resources
        .iter()
        .filter(|r| r.name == name && r.r#type() == value::Type::Scalar)
        .filter_map(|r| r.scalar.as_ref().map(|s| s.value))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A `DurationInfo` as a `Duration` (negative durations are zero).
pub fn duration(info: &DurationInfo) -> Duration {
    Duration::from_nanos(u64::try_from(info.nanoseconds).unwrap_or(0))
}

/// The kill grace period: the kill's own policy, else the task's, else `default`.
pub fn kill_grace(task: &TaskInfo, requested: Option<Duration>, default: Duration) -> Duration {
    requested
        .or_else(|| {
            task.kill_policy
                .as_ref()
                .and_then(|p| p.grace_period.as_ref())
                .map(duration)
        })
        .unwrap_or(default)
}

/// The `ExecutorInfo` of a command task's executor, named as Mesos names it (its id is the
/// task's id).
pub fn command_executor_info(framework: &FrameworkInfo, task: &TaskInfo) -> ExecutorInfo {
    let id = &task.task_id.value;
    let command = task.command.clone().unwrap_or_default();
    let shown = match (command.shell(), command.value.as_deref()) {
        (true, None) => "(Command: NO COMMAND)".to_string(),
        (true, Some(v)) => format!("(Command: sh -c '{}')", abbreviate(v)),
        (false, None) => "(Command: NO EXECUTABLE)".to_string(),
        (false, Some(v)) => {
            let mut all = vec![v.to_string()];
            all.extend(command.arguments.iter().cloned());
            format!("(Command: [{}])", abbreviate(&all.join(", ")))
        }
    };
    ExecutorInfo {
        executor_id: ExecutorId { value: id.clone() },
        framework_id: framework.id.clone(),
        name: Some(format!("Command Executor (Task: {id}) {shown}")),
        command: Some(CommandInfo {
            environment: command.environment,
            uris: command.uris,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The first 12 characters and `...` when longer than 15, as Mesos shortens commands.
fn abbreviate(s: &str) -> String {
    if s.chars().count() > 15 {
        format!("{}...", s.chars().take(12).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::{value::Scalar, Environment, KillPolicy, Resource, TaskId};

    use super::*;

    fn command(shell: bool, value: &str, args: &[&str]) -> CommandInfo {
        CommandInfo {
            shell: Some(shell),
            value: Some(value.into()),
            arguments: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn shell_and_argv_modes() {
        assert_eq!(
            argv(&command(true, "echo hi; exit 3", &[])).unwrap(),
            Argv {
                program: "/bin/sh".into(),
                argv0: None,
                args: vec!["-c".into(), "echo hi; exit 3".into()],
            }
        );
        assert_eq!(
            argv(&command(false, "/bin/echo", &["echo", "a", "b"])).unwrap(),
            Argv {
                program: "/bin/echo".into(),
                argv0: Some("echo".into()),
                args: vec!["a".into(), "b".into()],
            }
        );
        // shell defaults to true.
        let mut c = command(true, "true", &[]);
        c.shell = None;
        assert_eq!(argv(&c).unwrap().program, OsString::from("/bin/sh"));
        assert!(argv(&CommandInfo::default()).is_err());
        assert!(argv(&command(false, "", &[])).is_err());
        assert!(argv(&command(true, "a\0b", &[])).is_err());
    }

    #[test]
    fn environment_users_resources_and_grace() {
        let mut c = command(true, "x", &[]);
        c.environment = Some(Environment {
            variables: vec![environment::Variable {
                name: "A".into(),
                value: Some("1".into()),
                ..Default::default()
            }],
        });
        assert_eq!(task_env(&c).unwrap(), vec![("A".into(), "1".into())]);
        c.environment.as_mut().unwrap().variables[0].r#type =
            Some(environment::variable::Type::Secret as i32);
        assert!(task_env(&c).unwrap_err().contains("secret"));

        let framework = FrameworkInfo {
            user: "fwuser".into(),
            ..Default::default()
        };
        let mut task = TaskInfo {
            task_id: TaskId { value: "t".into() },
            command: Some(command(true, "x", &[])),
            ..Default::default()
        };
        assert_eq!(task_user(&framework, &task), Some("fwuser"));
        task.command.as_mut().unwrap().user = Some("cmduser".into());
        assert_eq!(task_user(&framework, &task), Some("cmduser"));
        assert_eq!(
            task_user(&FrameworkInfo::default(), &TaskInfo::default()),
            None
        );

        let cpu = |v: f64| Resource {
            name: "cpus".into(),
            r#type: value::Type::Scalar as i32,
            scalar: Some(Scalar { value: v }),
            ..Default::default()
        };
        task.resources = vec![cpu(0.5), cpu(0.25)];
        assert_eq!(scalar(&task, "cpus"), Some(0.75));
        assert_eq!(scalar(&task, "mem"), None);

        let default = Duration::from_secs(3);
        assert_eq!(kill_grace(&task, None, default), default);
        task.kill_policy = Some(KillPolicy {
            grace_period: Some(DurationInfo {
                nanoseconds: 1_000_000,
            }),
        });
        assert_eq!(kill_grace(&task, None, default), Duration::from_millis(1));
        assert_eq!(
            kill_grace(&task, Some(Duration::ZERO), default),
            Duration::ZERO
        );
    }

    #[test]
    fn executor_info_is_named_like_mesos() {
        let task = TaskInfo {
            task_id: TaskId { value: "t1".into() },
            command: Some(command(true, "sleep 1000; echo done", &[])),
            ..Default::default()
        };
        let info = command_executor_info(&FrameworkInfo::default(), &task);
        assert_eq!(info.executor_id.value, "t1");
        assert_eq!(
            info.name.as_deref(),
            Some("Command Executor (Task: t1) (Command: sh -c 'sleep 1000; ...')")
        );
    }
}
