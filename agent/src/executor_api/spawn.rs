//! Starting a custom executor's process: its sandbox, its environment, and `mesoblk-launcher`
//! (its own session and process group; see `crate::executor::launcher`).
//!
//! The environment (lowest priority first): the agent's base environment; the `MESOS_*`
//! variables Mesos gives executors ([`mesos_vars`]); the caller's extra variables (the tasks'
//! block devices); the executor's own `CommandInfo.environment`.
//!
//! With cgroups, the launcher is moved into the executor's new group (after its checkpoint
//! names the group) before it may start the executor, so nothing of it runs unlimited.

use std::path::PathBuf;
use std::time::Duration;

use mesoblk_proto::mesos::v1::{ExecutorInfo, FrameworkInfo};

use super::recovery::{self, ExecutorRecord};
use super::ExecutorApiConfig;
use crate::checkpoint::{create_dirs, Checkpointer, RunId};
use crate::executor::command;
use crate::executor::env::{inherited_base, merge, stout_duration};
use crate::executor::launcher::LauncherArgs;
use crate::executor::process::{self, Leader, ReleaseError};
use crate::executor::runner::{make_sandbox, resolve_user};
use crate::executor::{Cgroups, Limits};

/// The variables of one executor (besides the ones every executor gets).
#[derive(Clone, Debug)]
pub(super) struct ExecutorVars<'a> {
    /// `MESOS_FRAMEWORK_ID`.
    pub(super) framework_id: &'a str,
    /// `MESOS_EXECUTOR_ID`.
    pub(super) executor_id: &'a str,
    /// `MESOS_SANDBOX` and `MESOS_DIRECTORY`.
    pub(super) sandbox: &'a str,
    /// `MESOS_CHECKPOINT`: `"1"` or `"0"`.
    pub(super) checkpoint: bool,
    /// `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD`.
    pub(super) shutdown_grace: Duration,
}

/// The `MESOS_*` variables of a custom executor, as Mesos's agent sets them.
pub(super) fn mesos_vars(
    config: &ExecutorApiConfig,
    vars: &ExecutorVars<'_>,
) -> Vec<(String, String)> {
    let agent_id = config.layout.agent_id();
    let pairs = [
        ("MESOS_AGENT_ENDPOINT", config.agent_endpoint.clone()),
        ("MESOS_AGENT_ID", agent_id.to_string()),
        (
            "MESOS_CHECKPOINT",
            if vars.checkpoint { "1" } else { "0" }.into(),
        ),
        ("MESOS_DIRECTORY", vars.sandbox.to_string()),
        ("MESOS_EXECUTOR_ID", vars.executor_id.to_string()),
        (
            "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
            stout_duration(vars.shutdown_grace),
        ),
        ("MESOS_FRAMEWORK_ID", vars.framework_id.to_string()),
        ("MESOS_HTTP_COMMAND_EXECUTOR", "0".into()),
        (
            "MESOS_RECOVERY_TIMEOUT",
            stout_duration(config.recovery_timeout),
        ),
        ("MESOS_SANDBOX", vars.sandbox.to_string()),
        ("MESOS_SLAVE_ID", agent_id.to_string()),
        (
            "MESOS_SUBSCRIPTION_BACKOFF_MAX",
            stout_duration(config.subscription_backoff_max),
        ),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The shutdown grace period of `executor`: its own, else the configured one.
pub(super) fn shutdown_grace(config: &ExecutorApiConfig, executor: &ExecutorInfo) -> Duration {
    executor
        .shutdown_grace_period
        .as_ref()
        .map_or(config.shutdown_grace, command::duration)
}

/// A started executor.
#[derive(Debug)]
pub(super) struct Started {
    pub(super) run: RunId,
    pub(super) sandbox: PathBuf,
    pub(super) leader: Leader,
    pub(super) cgroup: Option<PathBuf>,
}

/// Checks that `executor` can be started (a command, a valid environment); pure.
pub(super) fn check(executor: &ExecutorInfo) -> Result<(), String> {
    let command = executor
        .command
        .as_ref()
        .ok_or("the ExecutorInfo has no command")?;
    command::argv(command)?;
    command::task_env(command)?;
    Ok(())
}

/// Starts `executor` of `framework` in a new sandbox; checkpoints the run before the
/// executor's first instruction (see `crate::executor::launcher`). `Err` says why not;
/// nothing is left running then.
pub(super) fn start(
    config: &ExecutorApiConfig,
    checkpointer: &Checkpointer,
    framework: &FrameworkInfo,
    executor: &ExecutorInfo,
    extra_env: &[(String, String)],
    cgroup: Option<(&Cgroups, &Limits)>,
) -> Result<Started, String> {
    let command = executor.command.clone().unwrap_or_default();
    let argv = command::argv(&command)?;
    let own_env = command::task_env(&command)?;
    let user_name = command
        .user
        .as_deref()
        .or(Some(framework.user.as_str()))
        .filter(|u| !u.is_empty());
    let user = resolve_user(user_name, config.switch_user).map_err(|e| e.message())?;
    let framework_id = framework.id.clone().unwrap_or_default().value;
    let run = RunId {
        framework_id: framework_id.clone(),
        executor_id: executor.executor_id.value.clone(),
        container_id: uuid::Uuid::new_v4().to_string(),
    };
    let layout = &config.layout;
    let sandbox = layout.sandbox_dir(&run);
    let owner = user.as_ref().map(|u| (u.uid, u.gid));
    let stderr = make_sandbox(&sandbox, owner)
        .map_err(|e| format!("cannot prepare the sandbox {}: {e}", sandbox.display()))?;
    recovery::write_infos(checkpointer, &run, framework, executor)
        .and_then(|()| create_dirs(&layout.run_meta_dir(&run)))
        .map_err(|e| e.to_string())?;
    let sandbox_str = sandbox.to_string_lossy();
    let mesos = mesos_vars(
        config,
        &ExecutorVars {
            framework_id: &framework_id,
            executor_id: &run.executor_id,
            sandbox: &sandbox_str,
            checkpoint: framework.checkpoint(),
            shutdown_grace: shutdown_grace(config, executor),
        },
    );
    let base = config.base_env.clone().unwrap_or_else(inherited_base);
    let env: Vec<(String, String)> = merge(&[&base, &mesos, extra_env, &own_env])
        .into_iter()
        .collect();
    let args = LauncherArgs {
        status_file: layout.launcher_status_path(&run),
        stdout: sandbox.join("stdout"),
        stderr: sandbox.join("stderr"),
        workdir: sandbox.clone(),
        user: user.as_ref().map(|u| u.name.clone()),
        argv0: argv.argv0,
        program: argv.program,
        args: argv.args,
    };
    let pending = process::spawn_launcher(&config.launcher, &args, &env, stderr)
        .map_err(|e| format!("cannot start {}: {e}", config.launcher.display()))?;
    let mut record = ExecutorRecord::new(&run, pending.pid(), pending.start_ticks, &sandbox);
    let cgroup_path = match cgroup {
        Some((cgroups, limits)) => match cgroups.create(&run.container_id, limits) {
            Ok(path) => Some(path),
            Err(e) => {
                pending.abort();
                let _ = checkpointer.remove_run(&run);
                return Err(format!("cannot make the executor's cgroup: {e}"));
            }
        },
        None => None,
    };
    record.cgroup.clone_from(&cgroup_path);
    // Checkpointed, then moved into its cgroup, before the launcher may go on.
    let prepared = recovery::write_record(checkpointer, &record)
        .map_err(|e| e.to_string())
        .and_then(|()| match (cgroup, &cgroup_path) {
            (Some((cgroups, _)), Some(path)) => cgroups
                .add_process(path, pending.pid())
                .map_err(|e| format!("cannot move the executor into its cgroup: {e}")),
            _ => Ok(()),
        });
    if let Err(e) = prepared {
        pending.abort();
        if let (Some((cgroups, _)), Some(path)) = (cgroup, &cgroup_path) {
            let _ = cgroups.remove(path);
        }
        let _ = checkpointer.remove_run(&run);
        return Err(e);
    }
    let released = process::release(pending, config.launch_timeout);
    let leader = match released {
        Ok((leader, pid)) => {
            tracing::info!(executor = %run.executor_id, framework = %run.framework_id, pid,
                "executor started");
            leader
        }
        Err(e) => {
            if let (Some((cgroups, _)), Some(path)) = (cgroup, &cgroup_path) {
                let _ = cgroups.remove(path);
            }
            let _ = checkpointer.remove_run(&run);
            return Err(match e {
                ReleaseError::Refused(m) | ReleaseError::Broken(m) => m,
                ReleaseError::Timeout(t) => format!("the launcher did not answer within {t:?}"),
            });
        }
    };
    Ok(Started {
        run,
        sandbox,
        leader,
        cgroup: cgroup_path,
    })
}
