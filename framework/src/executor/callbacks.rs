//! The [`Executor`] trait: what a custom executor implements to be told what the agent says.

use std::future::Future;

use mesoblk_proto::mesos::v1::{
    AgentInfo, ExecutorInfo, FrameworkInfo, KillPolicy, TaskGroupInfo, TaskId, TaskInfo,
};

use super::ExecutorDriver;

/// A framework's executor: the driver calls these as the agent's events arrive.
///
/// Callbacks are `async fn`s called **one at a time, in event order**, from one task the
/// driver spawns; they may call the driver (send status updates, messages) and await. A task's
/// work should run on tasks or threads of its own: `launch_task` starts it, sends TASK_RUNNING
/// and returns, and the work later sends its terminal update through a clone of the driver.
pub trait Executor: Send + 'static {
    /// The executor subscribed to the agent for the first time.
    fn registered(
        &mut self,
        driver: &ExecutorDriver,
        executor_info: &ExecutorInfo,
        framework_info: &FrameworkInfo,
        agent_info: &AgentInfo,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, executor_info, framework_info, agent_info);
        async {}
    }

    /// The executor subscribed again, to a restarted agent (checkpointing frameworks only).
    fn reregistered(
        &mut self,
        driver: &ExecutorDriver,
        agent_info: &AgentInfo,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, agent_info);
        async {}
    }

    /// The connection to the agent broke; the driver is trying to resubscribe (when the
    /// framework checkpoints) or about to call `shutdown`.
    fn disconnected(&mut self, driver: &ExecutorDriver) -> impl Future<Output = ()> + Send {
        let _ = driver;
        async {}
    }

    /// Run `task`: start it, send TASK_RUNNING (or TASK_FAILED), return.
    fn launch_task(
        &mut self,
        driver: &ExecutorDriver,
        task: TaskInfo,
    ) -> impl Future<Output = ()> + Send;

    /// Run the tasks of `group` together (LAUNCH_GROUP). By default each is launched through
    /// [`launch_task`](Self::launch_task) in turn.
    fn launch_group(
        &mut self,
        driver: &ExecutorDriver,
        group: TaskGroupInfo,
    ) -> impl Future<Output = ()> + Send {
        async move {
            for task in group.tasks {
                self.launch_task(driver, task).await;
            }
        }
    }

    /// Kill `task_id` (within `kill_policy`'s grace period when given), then send TASK_KILLED.
    fn kill_task(
        &mut self,
        driver: &ExecutorDriver,
        task_id: &TaskId,
        kill_policy: Option<&KillPolicy>,
    ) -> impl Future<Output = ()> + Send;

    /// The scheduler sent a message (not reliable).
    fn framework_message(
        &mut self,
        driver: &ExecutorDriver,
        data: &[u8],
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, data);
        async {}
    }

    /// Kill every task and send their terminal updates: the agent asked the executor to shut
    /// down, or the agent is gone for good. Bounded by the shutdown grace period; the driver
    /// stops after it (once its pending updates are sent, within the same period).
    fn shutdown(&mut self, driver: &ExecutorDriver) -> impl Future<Output = ()> + Send {
        let _ = driver;
        async {}
    }

    /// The agent reported an error (an ERROR event).
    fn error(&mut self, driver: &ExecutorDriver, message: &str) -> impl Future<Output = ()> + Send {
        let _ = (driver, message);
        async {}
    }
}
