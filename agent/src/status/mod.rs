//! Task states and status updates: the task state machine, and the store that keeps every
//! task's status updates in the agent's work dir and sends them to the master until the
//! scheduler acknowledges them.
//!
//! # Pieces
//!
//! - [`task_state`]: the task state machine as the agent sees it (pure).
//! - [`update`]: building updates (uuid, source, reason, message, timestamp) and task keys.
//! - [`stream`]: per-task queues, one update in flight per task, retry backoff (pure).
//! - [`log`]: the on-disk record format with checksums (pure).
//! - [`store`]: [`StatusUpdateStore`], the queues made durable.
//!
//! # How the agent uses it
//!
//! Every update (from the built-in command executor, a custom executor, or the agent itself)
//! goes to [`StatusUpdateStore::add`], which persists it before anything is sent. The agent's
//! sender loop calls [`StatusUpdateStore::due`] whenever [`StatusUpdateStore::wake`] says so
//! and sends what it returns to the master (`StatusUpdate` of the agent protocol, with
//! `latest_state`); an `ACKNOWLEDGE` event from the master goes to
//! [`StatusUpdateStore::acknowledge`]. After re-registering, [`StatusUpdateStore::reset_backoff`]
//! makes every oldest unacknowledged update due again at once.

pub mod log;
pub mod store;
pub mod stream;
pub mod task_state;
pub mod update;

pub use store::{StatusUpdateStore, StoreError, StoreRecovery};
pub use stream::{Acked, Added, Backoff, Outgoing, StreamError, Wake};
pub use task_state::{check_transition, is_terminal, TaskLifecycle, TransitionError};
pub use update::{status_state, status_uuid, NewStatus, TaskKey, UpdateUuid};
