//! A `Scheduler` that reports every callback to the test through a channel, and the test side
//! that waits for them (bounded).

use std::time::Duration;

use mesoblk_framework::scheduler::{Scheduler, SchedulerDriver};
use mesoblk_proto::mesos::v1::{
    AgentId, ExecutorId, FrameworkId, MasterInfo, Offer, OfferId, OperationStatus, TaskStatus,
};
use tokio::sync::mpsc;

use super::WAIT;

/// One callback.
#[derive(Debug, Clone)]
pub enum Seen {
    Registered(String),
    Reregistered,
    Disconnected,
    Offers(Vec<Offer>),
    Rescinded(String),
    Update(TaskStatus),
    Operation(OperationStatus),
    Message(Vec<u8>),
    AgentLost(String),
    ExecutorLost(String),
    Error(String),
}

/// The scheduler.
pub struct Recorder {
    tx: mpsc::UnboundedSender<Seen>,
}

/// The test's end. Callbacks skipped while waiting for another kind are kept, in order, for
/// later waits, so none slips by unseen.
pub struct Seeing {
    rx: mpsc::UnboundedReceiver<Seen>,
    kept: std::collections::VecDeque<Seen>,
}

pub fn recorder() -> (Recorder, Seeing) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Recorder { tx },
        Seeing {
            rx,
            kept: Default::default(),
        },
    )
}

impl Recorder {
    fn see(&self, seen: Seen) {
        let _ = self.tx.send(seen);
    }
}

impl Scheduler for Recorder {
    async fn registered(&mut self, _: &SchedulerDriver, id: &FrameworkId, _: Option<&MasterInfo>) {
        self.see(Seen::Registered(id.value.clone()));
    }

    async fn reregistered(&mut self, _: &SchedulerDriver, _: Option<&MasterInfo>) {
        self.see(Seen::Reregistered);
    }

    async fn disconnected(&mut self, _: &SchedulerDriver) {
        self.see(Seen::Disconnected);
    }

    async fn resource_offers(&mut self, _: &SchedulerDriver, offers: Vec<Offer>) {
        self.see(Seen::Offers(offers));
    }

    async fn offer_rescinded(&mut self, _: &SchedulerDriver, offer_id: &OfferId) {
        self.see(Seen::Rescinded(offer_id.value.clone()));
    }

    async fn status_update(&mut self, _: &SchedulerDriver, status: &TaskStatus) {
        self.see(Seen::Update(status.clone()));
    }

    async fn operation_status(&mut self, _: &SchedulerDriver, status: &OperationStatus) {
        self.see(Seen::Operation(status.clone()));
    }

    async fn framework_message(
        &mut self,
        _: &SchedulerDriver,
        _: &ExecutorId,
        _: &AgentId,
        data: &[u8],
    ) {
        self.see(Seen::Message(data.to_vec()));
    }

    async fn agent_lost(&mut self, _: &SchedulerDriver, agent_id: &AgentId) {
        self.see(Seen::AgentLost(agent_id.value.clone()));
    }

    async fn executor_lost(
        &mut self,
        _: &SchedulerDriver,
        executor_id: &ExecutorId,
        _: &AgentId,
        _: Option<i32>,
    ) {
        self.see(Seen::ExecutorLost(executor_id.value.clone()));
    }

    async fn error(&mut self, _: &SchedulerDriver, message: &str) {
        self.see(Seen::Error(message.to_owned()));
    }
}

impl Seeing {
    /// The next new callback within `limit`, if any (kept ones are not looked at).
    pub async fn within(&mut self, limit: Duration) -> Option<Seen> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next callback (kept ones first).
    pub async fn next(&mut self) -> Seen {
        if let Some(seen) = self.kept.pop_front() {
            return seen;
        }
        self.within(WAIT).await.expect("a callback in time")
    }

    /// The first callback (kept or new) that `pick` accepts; the others are kept.
    pub async fn until<T>(&mut self, what: &str, mut pick: impl FnMut(Seen) -> Option<T>) -> T {
        let mut kept = std::mem::take(&mut self.kept);
        while let Some(seen) = kept.pop_front() {
            if let Some(found) = pick(seen.clone()) {
                self.kept.extend(kept);
                return found;
            }
            self.kept.push_back(seen);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let seen = self
                .within(left)
                .await
                .unwrap_or_else(|| panic!("timed out waiting for {what}"));
            if let Some(found) = pick(seen.clone()) {
                return found;
            }
            self.kept.push_back(seen);
        }
    }

    pub async fn registered(&mut self) -> String {
        self.until("registered", |s| match s {
            Seen::Registered(id) => Some(id),
            _ => None,
        })
        .await
    }

    pub async fn offers(&mut self) -> Vec<Offer> {
        self.until("offers", |s| match s {
            Seen::Offers(offers) => Some(offers),
            _ => None,
        })
        .await
    }

    pub async fn update(&mut self) -> TaskStatus {
        self.until("a status update", |s| match s {
            Seen::Update(status) => Some(status),
            _ => None,
        })
        .await
    }

    pub async fn operation(&mut self) -> OperationStatus {
        self.until("an operation status", |s| match s {
            Seen::Operation(status) => Some(status),
            _ => None,
        })
        .await
    }

    /// Asserts that nothing `matching` is seen (kept, or new for `period`); the rest is kept.
    pub async fn none_for(&mut self, period: Duration, mut matching: impl FnMut(&Seen) -> bool) {
        for seen in &self.kept {
            assert!(!matching(seen), "unexpected {seen:?}");
        }
        let deadline = tokio::time::Instant::now() + period;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.within(left).await {
                None => return,
                Some(seen) => {
                    assert!(!matching(&seen), "unexpected {seen:?}");
                    self.kept.push_back(seen);
                }
            }
        }
    }
}
