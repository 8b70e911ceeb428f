//! A scheduler for the tests: subscribes over `/api/v1/scheduler` JSON, sends calls with its
//! stream id, and reads events by type. Events of other types that arrive meanwhile are kept (in
//! order) for later reads, so no OFFERS or UPDATE slips by unseen. Every wait is bounded.

use std::collections::VecDeque;
use std::time::Duration;

use mesoblk_proto::json::to_json;
use mesoblk_proto::mesos::v1::scheduler::event;
use serde_json::{json, Value};

use super::{subscribe_body, Endpoint, EventStream};

/// A subscribed scheduler.
pub struct Framework {
    pub stream: EventStream,
    pub id: String,
    kept: VecDeque<(event::Type, Value)>,
}

impl Framework {
    /// Subscribes `{"user":"tester","name":"tester"<extra>}`.
    pub async fn subscribe(master: &Endpoint, extra: &str) -> Framework {
        let mut stream = master.subscribe(&subscribe_body("tester", extra)).await;
        let id = stream.subscribed().await;
        Framework {
            stream,
            id,
            kept: VecDeque::new(),
        }
    }

    /// Subscribes again as framework `id` (after a master restart or failover), with `extra`
    /// fields in its `FrameworkInfo` as for [`Framework::subscribe`].
    pub async fn resubscribe(master: &Endpoint, id: &str, extra: &str) -> Framework {
        let body = format!(
            r#"{{"type":"SUBSCRIBE","framework_id":{{"value":"{id}"}},"subscribe":{{"framework_info":{{"user":"tester","name":"tester","id":{{"value":"{id}"}}{extra}}}}}}}"#
        );
        let mut stream = master.subscribe(&body).await;
        assert_eq!(stream.subscribed().await, id);
        Framework {
            stream,
            id: id.to_owned(),
            kept: VecDeque::new(),
        }
    }

    /// Sends a call (its `framework_id` filled in) and returns the status code.
    pub async fn call(&self, master: &Endpoint, mut body: Value) -> u16 {
        body["framework_id"] = json!({"value": self.id});
        let response = master.call(&self.stream.stream_id, &body.to_string()).await;
        response.status().as_u16()
    }

    fn take_kept(&mut self, kind: event::Type) -> Option<Value> {
        let at = self.kept.iter().position(|(k, _)| *k == kind)?;
        self.kept.remove(at).map(|(_, v)| v)
    }

    /// The next event of `kind` (as Mesos JSON), within `limit`.
    pub async fn within(&mut self, kind: event::Type, limit: Duration) -> Option<Value> {
        if let Some(kept) = self.take_kept(kind) {
            return Some(kept);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.stream.next_event_within(left).await?;
            let value: Value = serde_json::from_str(&to_json(&event)).expect("JSON");
            match event.r#type() {
                k if k == kind => return Some(value),
                event::Type::Heartbeat => {}
                other => self.kept.push_back((other, value)),
            }
        }
    }

    /// The next event of `kind`.
    pub async fn next(&mut self, kind: event::Type) -> Value {
        self.within(kind, super::WAIT)
            .await
            .unwrap_or_else(|| panic!("a {kind:?} event in time"))
    }

    /// The first offer of the next OFFERS event.
    pub async fn offer(&mut self) -> Value {
        self.next(event::Type::Offers).await["offers"]["offers"][0].clone()
    }

    /// The status of the next UPDATE.
    pub async fn update(&mut self) -> Value {
        self.next(event::Type::Update).await["update"]["status"].clone()
    }

    /// The status of the next UPDATE_OPERATION_STATUS.
    pub async fn operation(&mut self) -> Value {
        self.next(event::Type::UpdateOperationStatus).await["update_operation_status"]["status"]
            .clone()
    }

    /// DECLINE without a filter.
    pub async fn decline(&self, master: &Endpoint, offer: &Value) {
        let body = json!({"type":"DECLINE","decline":{"offer_ids":[offer["id"]],
            "filters":{"refuse_seconds":0.0}}});
        assert_eq!(self.call(master, body).await, 202);
    }

    /// The next offer for which `pred` holds; others are declined without a filter (a disk
    /// alone is not allocatable, so held offers must come back to be combined).
    pub async fn offer_where(&mut self, master: &Endpoint, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let offer = self.offer().await;
            if pred(&offer) {
                return offer;
            }
            self.decline(master, &offer).await;
        }
    }

    /// ACKNOWLEDGE of an update's status, when it has a uuid (as pymesos does).
    pub async fn ack(&self, master: &Endpoint, status: &Value) {
        if status.get("uuid").is_none() {
            return;
        }
        let body = json!({"type":"ACKNOWLEDGE","acknowledge":{
            "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": status["uuid"]}});
        assert_eq!(self.call(master, body).await, 202);
    }
}
