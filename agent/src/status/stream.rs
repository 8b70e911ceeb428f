//! The pure core of the status-update store: per task, an ordered queue of updates not yet
//! acknowledged, at most one of them in flight, retried with exponential backoff (no I/O; the
//! clock is passed in).
//!
//! Rules (Mesos's `TaskStatusUpdateManager`):
//! - updates of one task are sent in the order they were added, one at a time: the next one
//!   goes out only after the scheduler acknowledged the previous one;
//! - the update in flight is sent again after `initial`, then after twice that, ..., at most
//!   `max` apart, until acknowledged;
//! - an acknowledgement must name the oldest unacknowledged update; one naming a recently
//!   acknowledged update is a harmless duplicate, any other is refused;
//! - an update whose uuid was already added is a duplicate and ignored; nothing is added after
//!   a terminal update;
//! - the latest update (hence the task's latest state) is kept after it is acknowledged.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use mesoblk_proto::mesos::v1::{TaskState, TaskStatus};
use thiserror::Error;

use super::task_state::is_terminal;
use super::update::{status_state, status_uuid, uuid_string, TaskKey, UpdateUuid};

/// The most unacknowledged updates one task may have; more means its executor floods us.
pub const MAX_PENDING_PER_TASK: usize = 1024;

/// How many acknowledged uuids a stream remembers to recognise duplicate acknowledgements.
pub const ACKED_MEMORY: usize = 64;

/// When an unacknowledged update is sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first send.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// Mesos's agent: 10 s, doubling, at most 10 min.
    pub const MESOS: Backoff = Backoff {
        initial: Duration::from_secs(10),
        max: Duration::from_secs(600),
    };

    /// The wait after one of `current`.
    pub fn next(&self, current: Duration) -> Duration {
        debug_assert!(self.initial <= self.max && !self.initial.is_zero());
        current.saturating_mul(2).clamp(self.initial, self.max)
    }
}

/// An update or acknowledgement that a stream refuses.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The update has no 16-byte uuid.
    #[error("the status update has no 16-byte uuid")]
    NoUuid,
    /// The update names another task than the stream's.
    #[error("the status update is for task {got}, not {expected}")]
    WrongTask {
        /// The stream's task.
        expected: String,
        /// The update's task.
        got: String,
    },
    /// An update after the task's terminal update.
    #[error("the task already has its terminal update ({})", .terminal.as_str_name())]
    Terminated {
        /// The terminal state.
        terminal: TaskState,
    },
    /// Too many unacknowledged updates.
    #[error("the task has {MAX_PENDING_PER_TASK} unacknowledged status updates already")]
    Full,
    /// An acknowledgement that is not for the oldest unacknowledged update.
    #[error("unexpected acknowledgement {got} (expecting {})", .expected.as_deref().unwrap_or("none"))]
    UnexpectedAck {
        /// The acknowledged uuid.
        got: String,
        /// The oldest unacknowledged update's uuid.
        expected: Option<String>,
    },
    /// No stream for the task.
    #[error("no status updates for this task")]
    UnknownTask,
}

/// What adding an update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// Queued for sending.
    Queued,
    /// Already known (same uuid): nothing changed.
    Duplicate,
}

/// What an acknowledgement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acked {
    /// The oldest update was acknowledged; `complete` when it was the terminal one.
    Acked {
        /// The terminal update is acknowledged: the stream is done.
        complete: bool,
    },
    /// A recently acknowledged update, acknowledged again: nothing changed.
    Duplicate,
}

/// When a stream (or the whole queue) needs attention next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wake {
    /// An update waits to be sent now.
    Now,
    /// The update in flight is to be sent again at this time.
    At(Instant),
    /// Nothing to send.
    Idle,
}

#[derive(Clone, Debug)]
struct InFlight {
    uuid: UpdateUuid,
    retry_at: Instant,
    interval: Duration,
}

/// One task's updates.
#[derive(Clone, Debug)]
pub struct UpdateStream {
    task_id: String,
    pending: VecDeque<TaskStatus>,
    in_flight: Option<InFlight>,
    acked: VecDeque<UpdateUuid>,
    latest: Option<TaskStatus>,
}

impl UpdateStream {
    /// An empty stream for `task_id`.
    pub fn new(task_id: impl Into<String>) -> UpdateStream {
        UpdateStream {
            task_id: task_id.into(),
            pending: VecDeque::new(),
            in_flight: None,
            acked: VecDeque::new(),
            latest: None,
        }
    }

    /// Whether `status` would be accepted, and how, without changing anything.
    pub fn check_add(&self, status: &TaskStatus) -> Result<Added, StreamError> {
        let uuid = status_uuid(status).ok_or(StreamError::NoUuid)?;
        if status.task_id.value != self.task_id {
            return Err(StreamError::WrongTask {
                expected: self.task_id.clone(),
                got: status.task_id.value.clone(),
            });
        }
        if self.acked.contains(&uuid) || self.pending.iter().any(|s| status_uuid(s) == Some(uuid)) {
            return Ok(Added::Duplicate);
        }
        if let Some(latest) = &self.latest {
            let terminal = status_state(latest);
            if is_terminal(terminal) {
                return Err(StreamError::Terminated { terminal });
            }
        }
        if self.pending.len() >= MAX_PENDING_PER_TASK {
            return Err(StreamError::Full);
        }
        Ok(Added::Queued)
    }

    /// Adds `status` at the end of the queue.
    pub fn add(&mut self, status: TaskStatus) -> Result<Added, StreamError> {
        let added = self.check_add(&status)?;
        if added == Added::Queued {
            self.latest = Some(status.clone());
            self.pending.push_back(status);
        }
        debug_assert!(self.pending.len() <= MAX_PENDING_PER_TASK);
        Ok(added)
    }

    /// Whether acknowledging `uuid` would be accepted, and how, without changing anything.
    pub fn check_ack(&self, uuid: &UpdateUuid) -> Result<Acked, StreamError> {
        match self.pending.front().and_then(status_uuid) {
            Some(front) if front == *uuid => Ok(Acked::Acked {
                complete: self.pending.len() == 1 && is_terminal(status_state(&self.pending[0])),
            }),
            _ if self.acked.contains(uuid) => Ok(Acked::Duplicate),
            front => Err(StreamError::UnexpectedAck {
                got: uuid_string(uuid),
                expected: front.as_ref().map(uuid_string),
            }),
        }
    }

    /// Acknowledges the oldest update.
    pub fn acknowledge(&mut self, uuid: &UpdateUuid) -> Result<Acked, StreamError> {
        let acked = self.check_ack(uuid)?;
        if let Acked::Acked { .. } = acked {
            let done = self.pending.pop_front().expect("checked: a pending update");
            debug_assert_eq!(status_uuid(&done), Some(*uuid));
            self.in_flight = None;
            if self.acked.len() == ACKED_MEMORY {
                self.acked.pop_front();
            }
            self.acked.push_back(*uuid);
        }
        Ok(acked)
    }

    /// The update to send now, if one is due: the oldest unacknowledged one, when it is not in
    /// flight or its retry time has come. Marks it in flight until `now` + the backoff.
    pub fn due(&mut self, now: Instant, backoff: &Backoff) -> Option<&TaskStatus> {
        let front = self.pending.front()?;
        let uuid = status_uuid(front).expect("queued updates have uuids");
        let interval = match &self.in_flight {
            None => backoff.initial,
            Some(f) if f.retry_at <= now => backoff.next(f.interval),
            Some(_) => return None,
        };
        debug_assert!(self.in_flight.as_ref().is_none_or(|f| f.uuid == uuid));
        self.in_flight = Some(InFlight {
            uuid,
            retry_at: now + interval,
            interval,
        });
        self.pending.front()
    }

    /// When this stream needs attention.
    pub fn wake(&self) -> Wake {
        match (&self.in_flight, self.pending.is_empty()) {
            (_, true) => Wake::Idle,
            (None, false) => Wake::Now,
            (Some(f), false) => Wake::At(f.retry_at),
        }
    }

    /// Forgets the retry timer: the oldest update is due again now, with the initial backoff
    /// (after the agent re-registered, as Mesos does).
    pub fn reset_backoff(&mut self) {
        self.in_flight = None;
    }

    /// The unacknowledged updates, oldest first.
    pub fn pending(&self) -> impl ExactSizeIterator<Item = &TaskStatus> {
        self.pending.iter()
    }

    /// The latest update added (acknowledged or not).
    pub fn latest(&self) -> Option<&TaskStatus> {
        self.latest.as_ref()
    }

    /// The task's latest state.
    pub fn latest_state(&self) -> Option<TaskState> {
        self.latest.as_ref().map(status_state)
    }

    /// Whether the terminal update was added and acknowledged.
    pub fn is_complete(&self) -> bool {
        self.pending.is_empty() && self.latest_state().is_some_and(is_terminal)
    }
}

/// An update to send to the master.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// The task.
    pub key: TaskKey,
    /// The update.
    pub status: TaskStatus,
    /// The task's latest state (newer than `status.state` when older updates are still
    /// unacknowledged): `StatusUpdate.latest_state` of the agent protocol.
    pub latest_state: TaskState,
}

/// Every task's stream.
#[derive(Clone, Debug)]
pub struct UpdateQueues {
    streams: BTreeMap<TaskKey, UpdateStream>,
    backoff: Backoff,
}

impl UpdateQueues {
    /// No streams; retries follow `backoff`.
    pub fn new(backoff: Backoff) -> UpdateQueues {
        assert!(!backoff.initial.is_zero() && backoff.initial <= backoff.max);
        UpdateQueues {
            streams: BTreeMap::new(),
            backoff,
        }
    }

    /// The retry policy.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// Whether `status` would be accepted for `framework_id`, without changing anything.
    pub fn check_add(&self, framework_id: &str, status: &TaskStatus) -> Result<Added, StreamError> {
        let key = TaskKey::new(framework_id, status.task_id.value.clone());
        match self.streams.get(&key) {
            Some(stream) => stream.check_add(status),
            None => UpdateStream::new(key.task_id).check_add(status),
        }
    }

    /// Adds an update of a task of `framework_id`.
    pub fn add(&mut self, framework_id: &str, status: TaskStatus) -> Result<Added, StreamError> {
        let key = TaskKey::new(framework_id, status.task_id.value.clone());
        self.check_add(framework_id, &status)?;
        let task_id = key.task_id.clone();
        self.streams
            .entry(key)
            .or_insert_with(|| UpdateStream::new(task_id))
            .add(status)
    }

    /// Whether an acknowledgement would be accepted, without changing anything.
    pub fn check_ack(&self, key: &TaskKey, uuid: &UpdateUuid) -> Result<Acked, StreamError> {
        self.streams
            .get(key)
            .ok_or(StreamError::UnknownTask)?
            .check_ack(uuid)
    }

    /// The scheduler acknowledged update `uuid` of task `key`.
    pub fn acknowledge(&mut self, key: &TaskKey, uuid: &UpdateUuid) -> Result<Acked, StreamError> {
        self.streams
            .get_mut(key)
            .ok_or(StreamError::UnknownTask)?
            .acknowledge(uuid)
    }

    /// Every update due now (at most one per task), marked in flight.
    pub fn due(&mut self, now: Instant) -> Vec<Outgoing> {
        let backoff = self.backoff;
        let mut out = Vec::new();
        for (key, stream) in &mut self.streams {
            let latest_state = stream.latest_state();
            if let Some(status) = stream.due(now, &backoff) {
                out.push(Outgoing {
                    key: key.clone(),
                    status: status.clone(),
                    latest_state: latest_state.expect("a stream with updates has a latest one"),
                });
            }
        }
        out
    }

    /// When the queue needs attention next (the earliest of its streams).
    pub fn wake(&self) -> Wake {
        self.streams
            .values()
            .map(UpdateStream::wake)
            .min()
            .unwrap_or(Wake::Idle)
    }

    /// Every stream's oldest update is due again now (after re-registering with the master).
    pub fn reset_backoff(&mut self) {
        self.streams
            .values_mut()
            .for_each(UpdateStream::reset_backoff);
    }

    /// One task's stream.
    pub fn stream(&self, key: &TaskKey) -> Option<&UpdateStream> {
        self.streams.get(key)
    }

    /// Every task's stream.
    pub fn streams(&self) -> impl Iterator<Item = (&TaskKey, &UpdateStream)> {
        self.streams.iter()
    }

    /// Puts a task's stream in place (recovery), replacing any it had.
    pub fn insert(&mut self, key: TaskKey, stream: UpdateStream) {
        debug_assert_eq!(key.task_id, stream.task_id);
        self.streams.insert(key, stream);
    }

    /// Forgets a task's stream.
    pub fn remove(&mut self, key: &TaskKey) -> Option<UpdateStream> {
        self.streams.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::task_status::Source;
    use proptest::prelude::*;

    use super::*;
    use crate::status::update::NewStatus;

    fn update(task: &str, state: TaskState) -> TaskStatus {
        NewStatus::new(task, state, Source::Executor).build(std::time::SystemTime::now())
    }

    fn uuid(s: &TaskStatus) -> UpdateUuid {
        status_uuid(s).unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    fn backoff() -> Backoff {
        Backoff {
            initial: 10 * MS,
            max: 40 * MS,
        }
    }

    #[test]
    fn one_in_flight_per_task_retried_with_doubling_backoff() {
        let mut q = UpdateQueues::new(backoff());
        let t0 = Instant::now();
        let starting = update("t", TaskState::TaskStarting);
        let running = update("t", TaskState::TaskRunning);
        q.add("fw", starting.clone()).unwrap();
        q.add("fw", running.clone()).unwrap();
        assert_eq!(q.wake(), Wake::Now);

        let sent = q.due(t0);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status, starting);
        assert_eq!(sent[0].latest_state, TaskState::TaskRunning);
        assert!(q.due(t0 + 9 * MS).is_empty());
        assert_eq!(q.wake(), Wake::At(t0 + 10 * MS));

        // Retries at +10, then 20 and 40 (the cap) apart, always the same update.
        let mut at = t0;
        for wait in [10, 20, 40, 40] {
            at += wait * MS;
            assert!(q.due(at - MS).is_empty());
            let sent = q.due(at);
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].status, starting);
        }

        let key = TaskKey::new("fw", "t");
        assert_eq!(
            q.acknowledge(&key, &uuid(&running)),
            Err(StreamError::UnexpectedAck {
                got: uuid_string(&uuid(&running)),
                expected: Some(uuid_string(&uuid(&starting)))
            })
        );
        assert_eq!(
            q.acknowledge(&key, &uuid(&starting)),
            Ok(Acked::Acked { complete: false })
        );
        assert_eq!(q.acknowledge(&key, &uuid(&starting)), Ok(Acked::Duplicate));
        // The next one goes out at once, with the initial backoff again.
        let sent = q.due(at);
        assert_eq!(sent[0].status, running);
        assert_eq!(q.wake(), Wake::At(at + 10 * MS));
    }

    #[test]
    fn terminal_updates_close_the_stream_and_latest_state_survives_acks() {
        let mut q = UpdateQueues::new(backoff());
        let key = TaskKey::new("fw", "t");
        let finished = update("t", TaskState::TaskFinished);
        q.add("fw", finished.clone()).unwrap();
        assert_eq!(q.add("fw", finished.clone()), Ok(Added::Duplicate));
        assert_eq!(
            q.add("fw", update("t", TaskState::TaskRunning)),
            Err(StreamError::Terminated {
                terminal: TaskState::TaskFinished
            })
        );
        assert_eq!(
            q.acknowledge(&key, &uuid(&finished)),
            Ok(Acked::Acked { complete: true })
        );
        let stream = q.stream(&key).unwrap();
        assert!(stream.is_complete());
        assert_eq!(stream.latest_state(), Some(TaskState::TaskFinished));
        assert_eq!(q.wake(), Wake::Idle);
        assert_eq!(
            q.add("fw", update("other", TaskState::TaskRunning).clone())
                .unwrap(),
            Added::Queued
        );
        let mut bad = update("t2", TaskState::TaskRunning);
        bad.uuid = Some(vec![1, 2, 3]);
        assert_eq!(q.add("fw", bad), Err(StreamError::NoUuid));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(usize, bool),
        Advance(u64),
        AckInFlight(usize),
        AckOther(usize, usize),
        Reset,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, prop::bool::weighted(0.1)).prop_map(|(t, term)| Op::Add(t, term)),
            3 => (0..50u64).prop_map(Op::Advance),
            3 => (0..3usize).prop_map(Op::AckInFlight),
            1 => (0..3usize, 0..8usize).prop_map(|(t, i)| Op::AckOther(t, i)),
            1 => Just(Op::Reset),
        ]
    }

    proptest! {
        /// Against a model of per-task lists: sends are always the oldest unacknowledged update
        /// of their task, a task's in-flight update only changes when acknowledged, retries
        /// respect the backoff, and nothing acknowledged is ever sent again.
        #[test]
        fn queue_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
            let mut q = UpdateQueues::new(backoff());
            let mut now = Instant::now();
            let tasks = ["a", "b", "c"];
            // Per task: every update added, how many are acknowledged, the last send time.
            let mut added: Vec<Vec<TaskStatus>> = vec![Vec::new(); 3];
            let mut acked = [0usize; 3];
            let mut last_sent: [Option<(UpdateUuid, Instant, Duration)>; 3] = [None; 3];
            for op in ops {
                match op {
                    Op::Add(t, terminal) => {
                        let state = if terminal { TaskState::TaskFailed } else { TaskState::TaskRunning };
                        let s = update(tasks[t], state);
                        let closed = added[t].last().is_some_and(|l| is_terminal(status_state(l)));
                        let r = q.add("fw", s.clone());
                        if closed {
                            prop_assert!(r.is_err());
                        } else {
                            prop_assert_eq!(r, Ok(Added::Queued));
                            added[t].push(s);
                        }
                    }
                    Op::Advance(ms) => {
                        now += MS * ms as u32;
                        for out in q.due(now) {
                            let t = tasks.iter().position(|n| *n == out.key.task_id).unwrap();
                            let u = uuid(&out.status);
                            prop_assert_eq!(u, uuid(&added[t][acked[t]]));
                            if let Some((prev, at, interval)) = last_sent[t] {
                                if prev == u {
                                    prop_assert!(now >= at + interval);
                                }
                            }
                            let interval = match last_sent[t] {
                                Some((prev, _, i)) if prev == u => backoff().next(i),
                                _ => backoff().initial,
                            };
                            last_sent[t] = Some((u, now, interval));
                        }
                    }
                    Op::AckInFlight(t) => {
                        let key = TaskKey::new("fw", tasks[t]);
                        if acked[t] < added[t].len() {
                            let u = uuid(&added[t][acked[t]]);
                            let r = q.acknowledge(&key, &u);
                            prop_assert!(matches!(r, Ok(Acked::Acked { .. })), "{:?}", r);
                            acked[t] += 1;
                        }
                    }
                    Op::AckOther(t, i) => {
                        let key = TaskKey::new("fw", tasks[t]);
                        if let Some(s) = added[t].get(i) {
                            let r = q.acknowledge(&key, &uuid(s));
                            if i < acked[t] {
                                prop_assert!(r == Ok(Acked::Duplicate));
                            } else if i == acked[t] {
                                prop_assert!(matches!(r, Ok(Acked::Acked { .. })), "{:?}", r);
                                acked[t] += 1;
                            } else {
                                prop_assert!(r.is_err());
                            }
                        }
                    }
                    Op::Reset => {
                        q.reset_backoff();
                        last_sent = [None; 3];
                    }
                }
                for t in 0..3 {
                    let key = TaskKey::new("fw", tasks[t]);
                    let pending: Vec<_> = q.stream(&key).map(|s| s.pending().map(uuid).collect()).unwrap_or_default();
                    let want: Vec<_> = added[t][acked[t]..].iter().map(uuid).collect();
                    prop_assert_eq!(pending, want);
                }
            }
        }
    }
}
