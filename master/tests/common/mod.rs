//! Test harness: the real router on a real loopback listener, an HTTP client, and a reader for
//! RecordIO event streams. Every wait is bounded.

#![allow(dead_code, unreachable_pub)] // Each test binary uses a different part of the harness.

pub mod agent;
pub mod framework;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use mesoblk_master::{router, Config, MasterHandle};
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::scheduler::{event, Event};
use mesoblk_proto::recordio;

/// Upper bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub const JSON: &str = "application/json";
pub const PROTOBUF: &str = "application/x-protobuf";

pub struct TestMaster {
    endpoint: Endpoint,
    pub handle: MasterHandle,
    server: tokio::task::JoinHandle<()>,
}

/// Where a master listens, in process or not: the calls every test makes over HTTP. A
/// [`TestMaster`] derefs to its endpoint, so helpers that take `&Endpoint` serve both.
pub struct Endpoint {
    pub addr: SocketAddr,
}

impl std::ops::Deref for TestMaster {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Short timers for agent, offer and task tests: 50 ms allocation batches, agents removed after
/// 4 × 150 ms without a pong, status updates retried after 300 ms.
pub fn fast_config() -> Config {
    let mut config = Config::new("test-master.local", Ipv4Addr::LOCALHOST, 5050);
    config.heartbeat_interval = Duration::from_secs(600);
    config.allocation_interval = Duration::from_millis(50);
    config.agent_ping_timeout = Duration::from_millis(150);
    config.max_agent_ping_timeouts = 4;
    config.status_update_retry_interval = Duration::from_millis(300);
    config
}

/// A master with Mesos's defaults but the given heartbeat interval.
pub async fn start(heartbeat: Duration) -> TestMaster {
    let mut config = Config::new("test-master.local", Ipv4Addr::LOCALHOST, 5050);
    config.heartbeat_interval = heartbeat;
    start_with(config).await
}

pub async fn start_with(config: Config) -> TestMaster {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let handle = MasterHandle::new(config);
    let app = router(handle.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestMaster {
        endpoint: Endpoint { addr },
        handle,
        server,
    }
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` to `path` with the given headers (a fresh connection each time, so dropping a
    /// streaming response closes its socket).
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let mut request = client.post(self.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        tokio::time::timeout(WAIT, request.send())
            .await
            .expect("answer in time")
            .expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &str) -> reqwest::Response {
        self.post(path, &[("Content-Type", JSON)], body.to_string())
            .await
    }

    /// A non-SUBSCRIBE scheduler call with the given stream id.
    pub async fn call(&self, stream_id: &str, body: &str) -> reqwest::Response {
        self.post(
            "/api/v1/scheduler",
            &[("Content-Type", JSON), ("Mesos-Stream-Id", stream_id)],
            body.to_string(),
        )
        .await
    }

    /// SUBSCRIBEs with a JSON body and returns the open stream.
    pub async fn subscribe(&self, body: &str) -> EventStream {
        let response = self
            .post(
                "/api/v1/scheduler",
                &[("Content-Type", JSON), ("Accept", JSON)],
                body.to_string(),
            )
            .await;
        assert_eq!(response.status(), 200, "SUBSCRIBE answers 200");
        EventStream::new(response, ContentType::Json)
    }

    /// An operator call with a JSON body, answered as JSON.
    pub async fn operator(&self, body: &str) -> serde_json::Value {
        let response = self.post_json("/api/v1", body).await;
        assert_eq!(response.status(), 200, "operator call {body}");
        let text = response.text().await.expect("body");
        serde_json::from_str(&text).expect("JSON answer")
    }
}

pub fn subscribe_body(name: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"SUBSCRIBE","subscribe":{{"framework_info":{{"user":"tester","name":"{name}"{extra}}}}}}}"#
    )
}

pub fn resubscribe_body(name: &str, id: &str, failover_timeout: f64) -> String {
    format!(
        r#"{{"type":"SUBSCRIBE","framework_id":{{"value":"{id}"}},"subscribe":{{"framework_info":{{"user":"tester","name":"{name}","id":{{"value":"{id}"}},"failover_timeout":{failover_timeout}}}}}}}"#
    )
}

/// A subscription's event stream.
pub struct EventStream {
    pub response: reqwest::Response,
    pub stream_id: String,
    pub content_type: ContentType,
    decoder: recordio::Decoder,
    records: std::collections::VecDeque<Vec<u8>>,
    /// Every raw byte read, for framing checks.
    pub raw: Vec<u8>,
}

impl EventStream {
    pub fn new(response: reqwest::Response, content_type: ContentType) -> Self {
        let stream_id = response
            .headers()
            .get("Mesos-Stream-Id")
            .and_then(|v| v.to_str().ok())
            .expect("Mesos-Stream-Id header")
            .to_string();
        EventStream {
            response,
            stream_id,
            content_type,
            decoder: recordio::Decoder::new(1 << 20),
            records: Default::default(),
            raw: Vec::new(),
        }
    }

    /// An operator API SUBSCRIBE stream (it has no `Mesos-Stream-Id`).
    pub fn operator(response: reqwest::Response, content_type: ContentType) -> Self {
        EventStream {
            response,
            stream_id: String::new(),
            content_type,
            decoder: recordio::Decoder::new(1 << 20),
            records: Default::default(),
            raw: Vec::new(),
        }
    }

    /// The next record, or `None` when the stream ended.
    pub async fn next_record(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(record) = self.records.pop_front() {
                return Some(record);
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("stream makes progress in time")
                .expect("stream reads");
            let chunk = chunk?;
            self.raw.extend_from_slice(&chunk);
            self.records
                .extend(self.decoder.feed(&chunk).expect("valid RecordIO"));
        }
    }

    /// The next event, or `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        let record = self.next_record().await?;
        Some(self.content_type.decode(&record).expect("event decodes"))
    }

    /// The next event within `limit`, or `None` if none comes (or the stream ends).
    pub async fn next_event_within(&mut self, limit: Duration) -> Option<Event> {
        loop {
            if let Some(record) = self.records.pop_front() {
                return Some(self.content_type.decode(&record).expect("event decodes"));
            }
            let chunk = match tokio::time::timeout(limit, self.response.chunk()).await {
                Ok(chunk) => chunk.expect("stream reads")?,
                Err(_) => return None,
            };
            self.raw.extend_from_slice(&chunk);
            self.records
                .extend(self.decoder.feed(&chunk).expect("valid RecordIO"));
        }
    }

    /// Skips events until one of type `kind`.
    pub async fn next_of(&mut self, kind: event::Type) -> Event {
        loop {
            let event = self.next_event().await.expect("the stream is open");
            if event.r#type() == kind {
                return event;
            }
        }
    }

    /// An event of type `kind` arriving within `limit`, if any (others are skipped).
    pub async fn any_of_within(&mut self, kind: event::Type, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event_within(left).await?;
            if event.r#type() == kind {
                return Some(event);
            }
        }
    }

    /// The next event that is not a HEARTBEAT.
    pub async fn next_non_heartbeat(&mut self) -> Option<Event> {
        loop {
            let event = self.next_event().await?;
            if event.r#type() != event::Type::Heartbeat {
                return Some(event);
            }
        }
    }

    /// Reads until the stream ends, returning the non-heartbeat events seen.
    pub async fn until_end(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next_non_heartbeat().await {
            events.push(event);
        }
        events
    }

    /// SUBSCRIBED's framework id.
    pub async fn subscribed(&mut self) -> String {
        let event = self.next_event().await.expect("SUBSCRIBED");
        assert_eq!(event.r#type(), event::Type::Subscribed, "{event:?}");
        event
            .subscribed
            .expect("subscribed body")
            .framework_id
            .value
    }
}
