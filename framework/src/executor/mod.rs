//! The executor library: implement [`Executor`], hand it to an [`ExecutorDriver`] built from
//! the environment the agent set, and the driver subscribes to the agent
//! (`POST /api/v1/executor`, Mesos's v1 executor API), calls you as events arrive and delivers
//! your status updates reliably.
//!
//! ```no_run
//! use mesoblk_framework::executor::{Executor, ExecutorDriver};
//! use mesoblk_framework::proto::mesos::v1::{KillPolicy, TaskId, TaskInfo, TaskState, TaskStatus};
//!
//! struct Echo;
//!
//! impl Executor for Echo {
//!     async fn launch_task(&mut self, driver: &ExecutorDriver, task: TaskInfo) {
//!         for state in [TaskState::TaskRunning, TaskState::TaskFinished] {
//!             let status = TaskStatus {
//!                 task_id: task.task_id.clone(),
//!                 state: state as i32,
//!                 ..TaskStatus::default()
//!             };
//!             if let Err(e) = driver.send_status_update(status) {
//!                 eprintln!("cannot send an update: {e}");
//!             }
//!         }
//!     }
//!
//!     async fn kill_task(&mut self, driver: &ExecutorDriver, task_id: &TaskId, _: Option<&KillPolicy>) {
//!         let status = TaskStatus {
//!             task_id: task_id.clone(),
//!             state: TaskState::TaskKilled as i32,
//!             ..TaskStatus::default()
//!         };
//!         let _ = driver.send_status_update(status);
//!     }
//! }
//!
//! # async fn example() -> Result<(), mesoblk_framework::executor::ExecutorError> {
//! let driver = ExecutorDriver::from_env()?;
//! driver.run(Echo).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Threading model
//!
//! [`ExecutorDriver::start`] spawns three tasks on the current tokio runtime: the
//! **subscription task** (subscribes, reads events, handles ACKNOWLEDGED itself, recovers a
//! lost agent), the **update sender** (POSTs status updates) and the **callback task**, which
//! calls the [`Executor`]'s methods sequentially in event order. The handle is
//! `Clone + Send + Sync`: callbacks receive it, and a task's own worker (a thread or a task)
//! keeps a clone to send the task's later updates.
//!
//! # Reliable status updates
//!
//! [`ExecutorDriver::send_status_update`] stamps the update (executor id, SOURCE_EXECUTOR,
//! timestamp, a fresh uuid) and queues it; it returns at once, even while disconnected. The
//! update stays in the driver until the agent's ACKNOWLEDGED event names its uuid: it is POSTed
//! on the live connection (retried with backoff when the POST fails), resent when it stays
//! unacknowledged, and carried by every resubscription as `unacknowledged_updates`, together
//! with the launched tasks none of whose updates was acknowledged yet
//! (`unacknowledged_tasks`). Details and bounds: [`ExecutorConfig`].
//!
//! # Losing the agent, shutting down
//!
//! When the connection to the agent breaks (closed, failed, or silent for
//! [`ExecutorConfig::idle_timeout`]), `disconnected` is called. If the framework checkpoints
//! (`MESOS_CHECKPOINT=1`, see [`ExecutorEnvironment`]) the driver resubscribes, waiting a random
//! time up to `MESOS_SUBSCRIPTION_BACKOFF_MAX` between attempts, until `MESOS_RECOVERY_TIMEOUT`
//! after the failure; without checkpointing, or after that, it shuts down. A
//! shutdown (that, or the agent's SHUTDOWN event) calls [`Executor::shutdown`] within
//! `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD`, sends what updates it can in the rest of that
//! period, and stops the driver: [`ExecutorDriver::join`] returns and the process should exit.

mod callbacks;
mod config;
mod dispatch;
mod driver;
pub mod env;
mod error;
mod session;
mod updates;

pub use crate::lifecycle::DriverStatus;
pub use callbacks::Executor;
pub use config::ExecutorConfig;
pub use driver::ExecutorDriver;
pub use env::{EnvError, ExecutorEnvironment};
pub use error::ExecutorError;
pub use updates::{BookFull, ResendPolicy};
