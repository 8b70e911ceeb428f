//! The scheduler library: implement [`Scheduler`], hand it to a [`SchedulerDriver`], and the
//! driver keeps the framework subscribed to the master and calls you as events arrive.
//!
//! ```no_run
//! use mesoblk_framework::proto::mesos::v1::{FrameworkId, FrameworkInfo, MasterInfo, Offer};
//! use mesoblk_framework::scheduler::{Scheduler, SchedulerConfig, SchedulerDriver};
//!
//! struct Decliner;
//!
//! impl Scheduler for Decliner {
//!     async fn registered(&mut self, _: &SchedulerDriver, id: &FrameworkId, _: Option<&MasterInfo>) {
//!         println!("registered as {}", id.value);
//!     }
//!
//!     async fn resource_offers(&mut self, driver: &SchedulerDriver, offers: Vec<Offer>) {
//!         let ids = offers.into_iter().map(|o| o.id).collect();
//!         if let Err(e) = driver.decline(ids, None).await {
//!             eprintln!("decline failed: {e}");
//!         }
//!     }
//! }
//!
//! # async fn example() -> Result<(), mesoblk_framework::scheduler::DriverError> {
//! let framework = FrameworkInfo {
//!     user: "nobody".into(),
//!     name: "decliner".into(),
//!     failover_timeout: Some(60.0),
//!     ..FrameworkInfo::default()
//! };
//! let driver = SchedulerDriver::new(framework, SchedulerConfig::new("127.0.0.1:5050"))?;
//! driver.run(Decliner).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Threading model
//!
//! [`SchedulerDriver::start`] spawns two tasks on the current tokio runtime:
//! - the **subscription task** subscribes, reads the event stream, watches heartbeats and
//!   reconnects; it never runs user code;
//! - the **callback task** calls the [`Scheduler`]'s methods **sequentially**, in event order,
//!   awaiting each before the next; then it sends implicit acknowledgements.
//!
//! They are joined by a bounded queue ([`SchedulerConfig::event_queue_max`]); a slow callback
//! eventually makes the subscription task stop reading (TCP then pushes back on the master).
//! The driver handle is `Clone + Send + Sync`; callbacks receive it and may call any method,
//! including awaiting calls (they use a separate HTTP connection, never the stream) and
//! [`stop`](SchedulerDriver::stop)/[`abort`](SchedulerDriver::abort). Calls may also be made
//! from any other task. Dropping every handle does not stop a started driver: stop or abort it.
//!
//! # Connection, heartbeats and failover
//!
//! - SUBSCRIBE is a `POST /api/v1/scheduler` answered with a chunked RecordIO stream in the
//!   configured encoding (JSON by default, protobuf on request); the answer's
//!   `Mesos-Stream-Id` goes on every later call.
//! - `307` redirects to the leader are followed (protocol-relative `Location: //host:port/…`),
//!   and later calls go to that leader; `503` (no leader yet) is retried with backoff.
//! - No event (HEARTBEATs included) for `heartbeat_interval × heartbeat_misses_max` (the
//!   interval comes from SUBSCRIBED, 15 s when absent) counts as a lost connection, as does the
//!   stream closing or failing: `disconnected` is called and the driver resubscribes with its
//!   framework id after a bounded, jittered exponential backoff
//!   ([`SchedulerConfig::reconnect`]); the master then keeps the framework and its tasks
//!   (failover) if it came back within `FrameworkInfo.failover_timeout`, and `reregistered`
//!   follows. Exhausting the backoff aborts the driver (`error`, then `join` returns the error).
//! - An ERROR event (framework removed, or failed over to another scheduler) or a SUBSCRIBE
//!   refused with a 4xx aborts the driver: `error` is the last callback.
//! - [`stop(false)`](SchedulerDriver::stop) sends TEARDOWN (the master removes the framework);
//!   `stop(true)` and `abort()` just close the stream, keeping the framework for its
//!   `failover_timeout`.
//!
//! # Acknowledgements
//!
//! Status updates that carry a `uuid` must be acknowledged or the agent resends them. By
//! default the driver acknowledges each one after `status_update` returns (and each operation
//! status after `operation_status`); with
//! [`SchedulerConfig::implicit_acknowledgements`] off, call
//! [`SchedulerDriver::acknowledge_status_update`] yourself. Updates without a `uuid` (from the
//! master: reconciliation, lost agents) are never acknowledged.

mod callbacks;
mod calls;
mod config;
mod dispatch;
mod driver;
mod error;
mod session;

pub use crate::lifecycle::DriverStatus;
pub use callbacks::Scheduler;
pub use config::{
    basic_authorization, framework_info, SchedulerConfig, DEFAULT_HEARTBEAT_INTERVAL,
};
pub use driver::SchedulerDriver;
pub use error::DriverError;
