//! The executor's books for reliable status updates (pure: no I/O, time passed in).
//!
//! Every update the executor sends is kept until the agent's ACKNOWLEDGED event names its
//! `uuid` (which happens once the scheduler acknowledged it). An update is POSTed once per
//! connection; a connection's SUBSCRIBE carries every unacknowledged update and every task that
//! was launched but has no acknowledged update yet (Mesos's `unacknowledged_updates` and
//! `unacknowledged_tasks`), which counts as sending them. An update the agent accepted but that
//! stays unacknowledged is POSTed again after `resend_initial`, doubling up to `resend_max`,
//! at most `resends_max` times per connection (the agent ignores duplicates by uuid).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use mesoblk_proto::mesos::v1::executor::call;
use mesoblk_proto::mesos::v1::{TaskInfo, TaskStatus};

/// When accepted updates are sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendPolicy {
    /// First resend after this long without acknowledgement.
    pub resend_initial: Duration,
    /// Longest interval between resends.
    pub resend_max: Duration,
    /// Resends per update and connection.
    pub resends_max: u32,
}

#[derive(Debug, Clone)]
struct Pending {
    status: TaskStatus,
    /// The connection it was last sent on, and when.
    sent: Option<(u64, Instant)>,
    /// Resends on that connection.
    resends: u32,
}

impl Pending {
    fn uuid(&self) -> &[u8] {
        self.status.uuid.as_deref().unwrap_or_default()
    }
}

/// Why an update was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} status updates are waiting for acknowledgement; not taking more")]
pub struct BookFull(pub usize);

/// Unacknowledged updates and tasks.
#[derive(Debug)]
pub(crate) struct Book {
    updates: VecDeque<Pending>,
    tasks: BTreeMap<String, TaskInfo>,
    updates_max: usize,
    policy: ResendPolicy,
}

impl Book {
    pub(crate) fn new(updates_max: usize, policy: ResendPolicy) -> Self {
        Book {
            updates: VecDeque::new(),
            tasks: BTreeMap::new(),
            updates_max: updates_max.max(1),
            policy,
        }
    }

    /// A task was launched: unacknowledged until one of its updates is.
    pub(crate) fn launched(&mut self, task: TaskInfo) {
        self.tasks.insert(task.task_id.value.clone(), task);
    }

    /// Keeps `status` (which has its `uuid`) until acknowledged.
    pub(crate) fn add(&mut self, status: TaskStatus) -> Result<(), BookFull> {
        if self.updates.len() >= self.updates_max {
            return Err(BookFull(self.updates.len()));
        }
        debug_assert!(status.uuid.as_ref().is_some_and(|u| u.len() == 16));
        self.updates.push_back(Pending {
            status,
            sent: None,
            resends: 0,
        });
        Ok(())
    }

    /// ACKNOWLEDGED(`task_id`, `uuid`): forgets that update, and the task's launch. Returns
    /// whether an update was known.
    pub(crate) fn acknowledged(&mut self, task_id: &str, uuid: &[u8]) -> bool {
        let before = self.updates.len();
        self.updates
            .retain(|p| !(p.uuid() == uuid && p.status.task_id.value == task_id));
        let known = self.updates.len() != before;
        if known {
            self.tasks.remove(task_id);
        }
        known
    }

    /// What a SUBSCRIBE carries.
    pub(crate) fn subscribe_body(&self) -> call::Subscribe {
        call::Subscribe {
            unacknowledged_tasks: self.tasks.values().cloned().collect(),
            unacknowledged_updates: self
                .updates
                .iter()
                .map(|p| call::Update {
                    status: p.status.clone(),
                })
                .collect(),
        }
    }

    /// `uuids` went out with connection `connection`'s SUBSCRIBE at `now`.
    pub(crate) fn subscribed(&mut self, connection: u64, uuids: &[Vec<u8>], now: Instant) {
        for pending in &mut self.updates {
            if uuids.iter().any(|u| u.as_slice() == pending.uuid()) {
                pending.sent = Some((connection, now));
                pending.resends = 0;
            }
        }
    }

    /// The next update to POST on `connection` at `now`, oldest first: one never sent on it,
    /// or one whose resend is due.
    pub(crate) fn next_due(&self, connection: u64, now: Instant) -> Option<TaskStatus> {
        self.updates
            .iter()
            .find(|p| self.is_due(p, connection, now))
            .map(|p| p.status.clone())
    }

    fn is_due(&self, pending: &Pending, connection: u64, now: Instant) -> bool {
        match pending.sent {
            Some((on, at)) if on == connection => {
                pending.resends < self.policy.resends_max
                    && now.saturating_duration_since(at) >= self.resend_interval(pending.resends)
            }
            _ => true,
        }
    }

    fn resend_interval(&self, resends: u32) -> Duration {
        self.policy
            .resend_initial
            .saturating_mul(1u32 << resends.min(20))
            .min(self.policy.resend_max)
    }

    /// When the next resend on `connection` is due (`None`: nothing to wait for).
    pub(crate) fn next_resend_at(&self, connection: u64) -> Option<Instant> {
        self.updates
            .iter()
            .filter_map(|p| match p.sent {
                Some((on, at)) if on == connection && p.resends < self.policy.resends_max => {
                    Some(at + self.resend_interval(p.resends))
                }
                _ => None,
            })
            .min()
    }

    /// The agent accepted the update `uuid` on `connection` at `now`.
    pub(crate) fn sent(&mut self, uuid: &[u8], connection: u64, now: Instant) {
        if let Some(pending) = self.updates.iter_mut().find(|p| p.uuid() == uuid) {
            if pending.sent.is_some_and(|(on, _)| on == connection) {
                pending.resends += 1;
            }
            pending.sent = Some((connection, now));
        }
    }

    /// Whether every update went out on `connection` at least once.
    pub(crate) fn all_sent_on(&self, connection: u64) -> bool {
        self.updates
            .iter()
            .all(|p| p.sent.is_some_and(|(on, _)| on == connection))
    }

    /// Unacknowledged updates.
    pub(crate) fn len(&self) -> usize {
        self.updates.len()
    }
}

#[cfg(test)]
mod tests {
    use mesoblk_proto::mesos::v1::{AgentId, TaskId, TaskState};

    use super::*;

    const POLICY: ResendPolicy = ResendPolicy {
        resend_initial: Duration::from_secs(10),
        resend_max: Duration::from_secs(40),
        resends_max: 3,
    };

    fn status(task: &str, uuid: u8) -> TaskStatus {
        TaskStatus {
            task_id: TaskId { value: task.into() },
            state: TaskState::TaskRunning as i32,
            uuid: Some(vec![uuid; 16]),
            ..TaskStatus::default()
        }
    }

    fn task(id: &str) -> TaskInfo {
        TaskInfo {
            name: id.into(),
            task_id: TaskId { value: id.into() },
            agent_id: AgentId { value: "a".into() },
            ..TaskInfo::default()
        }
    }

    #[test]
    fn updates_are_kept_until_acknowledged() {
        let mut book = Book::new(10, POLICY);
        book.launched(task("t1"));
        book.add(status("t1", 1)).expect("room");
        book.add(status("t1", 2)).expect("room");
        let body = book.subscribe_body();
        assert_eq!(body.unacknowledged_tasks.len(), 1);
        assert_eq!(body.unacknowledged_updates.len(), 2);
        assert!(!book.acknowledged("t1", &[9; 16]), "unknown uuid");
        assert!(!book.acknowledged("t2", &[1; 16]), "uuid of another task");
        assert!(book.acknowledged("t1", &[1; 16]));
        let body = book.subscribe_body();
        assert!(
            body.unacknowledged_tasks.is_empty(),
            "an update of it was acknowledged"
        );
        assert_eq!(body.unacknowledged_updates.len(), 1);
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn each_connection_sends_every_update_once_then_resends_with_backoff() {
        let mut book = Book::new(10, POLICY);
        let t0 = Instant::now();
        book.add(status("t", 1)).expect("room");
        book.add(status("t", 2)).expect("room");
        assert_eq!(book.next_due(1, t0).and_then(|s| s.uuid), Some(vec![1; 16]));
        book.sent(&[1; 16], 1, t0);
        assert_eq!(book.next_due(1, t0).and_then(|s| s.uuid), Some(vec![2; 16]));
        book.sent(&[2; 16], 1, t0);
        assert!(book.all_sent_on(1));
        assert_eq!(book.next_due(1, t0), None);
        assert_eq!(book.next_resend_at(1), Some(t0 + Duration::from_secs(10)));
        let t10 = t0 + Duration::from_secs(10);
        assert!(book.next_due(1, t10).is_some());
        book.sent(&[1; 16], 1, t10);
        assert_eq!(
            book.next_due(1, t10 + Duration::from_secs(19))
                .and_then(|s| s.uuid),
            Some(vec![2; 16])
        );
        // The first one's next resend is 20 s later, then 40 s (the cap), then never (3 resends).
        book.sent(&[1; 16], 1, t10 + Duration::from_secs(20));
        book.sent(&[1; 16], 1, t10 + Duration::from_secs(60));
        book.sent(&[2; 16], 1, t10 + Duration::from_secs(60));
        let late = t10 + Duration::from_secs(3_600);
        assert_eq!(
            book.next_due(1, late).and_then(|s| s.uuid),
            Some(vec![2; 16])
        );
        // A new connection sends everything again, unless its SUBSCRIBE carried it.
        assert!(!book.all_sent_on(2));
        book.subscribed(2, &[vec![1; 16]], late);
        assert_eq!(
            book.next_due(2, late).and_then(|s| s.uuid),
            Some(vec![2; 16])
        );
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = Book::new(2, POLICY);
        book.add(status("t", 1)).expect("room");
        book.add(status("t", 2)).expect("room");
        assert_eq!(book.add(status("t", 3)), Err(BookFull(2)));
    }
}
