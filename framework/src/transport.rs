//! HTTP plumbing shared by the scheduler and executor drivers: POSTing one call, following
//! leader redirects and retrying "unavailable", and reading a RecordIO event stream.
//!
//! Conventions (Mesos v1 HTTP APIs, see `docs/scheduler-http-api.md` and pymesos/mesos-go):
//! - every request is a `POST` whose `Content-Type` and `Accept` are the driver's encoding;
//! - `307 Temporary Redirect` names the leading master in `Location`, often protocol-relative
//!   (`//host:port/api/v1/scheduler`); it is resolved against the URL that answered and followed
//!   at most [`REDIRECTS_MAX`] times per request, and a `Location` without a path keeps the
//!   request's path;
//! - `503 Service Unavailable` (no leader yet, or recovery in progress) is retried after a
//!   jittered backoff when the caller allows it, a bounded number of times;
//! - any other non-2xx answer becomes [`TransportError::Status`] with at most
//!   [`ERROR_BODY_BYTES_MAX`] bytes of the body as its message;
//! - every wait is bounded: connecting, each request, each read of a stream.

use std::collections::VecDeque;
use std::time::Duration;

use mesoblk_proto::codec::{ContentType, DecodeError};
use mesoblk_proto::recordio::{self, RecordIoError};
use prost_reflect::ReflectMessage;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Response, StatusCode, Url};

use crate::backoff::{Backoff, BackoffPolicy};

/// A boxed error from a lower layer.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Redirects followed for one request.
pub const REDIRECTS_MAX: u32 = 10;
/// Bytes of an error answer's body kept as its message.
pub const ERROR_BODY_BYTES_MAX: usize = 4096;
/// Largest event accepted on a stream (an OFFERS event of a big cluster stays far below).
pub const EVENT_BYTES_MAX: u64 = 64 << 20;
/// The header carrying a scheduler subscription's stream id.
pub const MESOS_STREAM_ID: &str = "Mesos-Stream-Id";

/// Why an exchange with a master or an agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A URL that cannot be used.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The text given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection or the request failed below HTTP.
    #[error("request to {url} failed")]
    Request {
        /// Where it went.
        url: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// No answer in time.
    #[error("request to {url} got no answer within {after:?}")]
    Timeout {
        /// Where it went.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// A non-2xx answer (other than a followed 307 or a retried 503).
    #[error("{url} answered {status}: {message}")]
    Status {
        /// Who answered.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the body (Mesos puts the reason there).
        message: String,
    },
    /// More redirects than [`REDIRECTS_MAX`].
    #[error("{url} redirected more than {REDIRECTS_MAX} times")]
    TooManyRedirects {
        /// The last URL redirected from.
        url: String,
    },
    /// A 307 whose `Location` is missing or unusable.
    #[error("{url} answered 307 without a usable Location ({location:?})")]
    BadRedirect {
        /// Who answered.
        url: String,
        /// The header's value, if any.
        location: Option<String>,
    },
    /// Still 503 after every allowed retry.
    #[error("{url} was unavailable (503) for {attempts} attempts")]
    Unavailable {
        /// Who answered.
        url: String,
        /// Requests made.
        attempts: u32,
    },
    /// The answer is not in the requested encoding.
    #[error("{url} answered with Content-Type {got:?}, expected {expected:?}")]
    ContentType {
        /// Who answered.
        url: String,
        /// The header's value.
        got: Option<String>,
        /// What was asked for.
        expected: &'static str,
    },
    /// A subscription answer without `Mesos-Stream-Id`.
    #[error("{url} did not send a Mesos-Stream-Id header")]
    MissingStreamId {
        /// Who answered.
        url: String,
    },
    /// The stream is not RecordIO.
    #[error("the event stream from {url} is not valid RecordIO")]
    RecordIo {
        /// Who sent it.
        url: String,
        /// The framing error.
        #[source]
        source: RecordIoError,
    },
    /// An event that does not decode.
    #[error("an event from {url} does not decode")]
    Decode {
        /// Who sent it.
        url: String,
        /// The decoding error.
        #[source]
        source: DecodeError,
    },
    /// The peer broke the protocol (a stream that ended, or did not start with SUBSCRIBED).
    #[error("{url}: {message}")]
    Protocol {
        /// Who answered.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Nothing arrived on a stream for too long (no heartbeat).
    #[error("nothing arrived from {url} for {idle:?}")]
    Idle {
        /// Who stopped sending.
        url: String,
        /// How long was waited.
        idle: Duration,
    },
}

impl TransportError {
    /// The HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        match self {
            TransportError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: network trouble, timeouts, 5xx, a broken stream.
    /// A 4xx answer, an unusable URL or a protocol violation will not get better by waiting.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Status { status, .. } => *status >= 500,
            TransportError::InvalidUrl { .. }
            | TransportError::BadRedirect { .. }
            | TransportError::ContentType { .. }
            | TransportError::MissingStreamId { .. } => false,
            _ => true,
        }
    }
}

/// Resolves `base` (`host:port`, `http://host:port` or a URL with a path prefix) and appends
/// `api_path` (`api/v1/scheduler`) to it.
pub(crate) fn endpoint_url(base: &str, api_path: &str) -> Result<Url, TransportError> {
    let invalid = |reason: &str| TransportError::InvalidUrl {
        url: base.to_owned(),
        reason: reason.to_owned(),
    };
    let text = if base.contains("://") {
        base.to_owned()
    } else {
        format!("http://{base}")
    };
    let mut url = Url::parse(&text).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.join(api_path).map_err(|e| invalid(&e.to_string()))
}

/// One HTTP client configured for one encoding.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    client: reqwest::Client,
    content_type: ContentType,
    authorization: Option<HeaderValue>,
}

impl Transport {
    /// A client. `streaming` clients keep no idle connections, so every subscription gets a
    /// connection of its own and closing it closes the socket.
    pub(crate) fn new(
        content_type: ContentType,
        connect_timeout: Duration,
        authorization: Option<&str>,
        streaming: bool,
    ) -> Result<Self, TransportError> {
        let authorization = authorization
            .map(|value| {
                let mut value =
                    HeaderValue::from_str(value).map_err(|_| TransportError::InvalidUrl {
                        url: "Authorization".into(),
                        reason: "the credential is not a valid header value".into(),
                    })?;
                value.set_sensitive(true);
                Ok::<_, TransportError>(value)
            })
            .transpose()?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true);
        if streaming {
            builder = builder.pool_max_idle_per_host(0);
        }
        let client = builder.build().map_err(|e| TransportError::Request {
            url: String::new(),
            source: Box::new(e),
        })?;
        Ok(Transport {
            client,
            content_type,
            authorization,
        })
    }

    /// The encoding of requests and answers.
    pub(crate) fn content_type(&self) -> ContentType {
        self.content_type
    }

    /// Encodes a message in this client's encoding.
    pub(crate) fn encode<M: ReflectMessage>(&self, message: &M) -> Vec<u8> {
        self.content_type.encode(message)
    }

    /// POSTs `body` to `url` until a 2xx answer: 307s are followed, 503s retried per
    /// `unavailable` (none: a 503 is an error at once). `timeout` bounds each request up to its
    /// answer's headers. Returns the URL that answered and the answer, body unread.
    pub(crate) async fn post(
        &self,
        url: &Url,
        body: Vec<u8>,
        stream_id: Option<&str>,
        timeout: Duration,
        unavailable: Option<BackoffPolicy>,
    ) -> Result<(Url, Response), TransportError> {
        let mut url = url.clone();
        let mut redirects = 0u32;
        let mut requests = 0u32;
        let mut backoff = unavailable.map(Backoff::new);
        loop {
            requests += 1;
            let response = self.send(&url, body.clone(), stream_id, timeout).await?;
            let status = response.status();
            if status.is_success() {
                return Ok((url, response));
            }
            if status == StatusCode::TEMPORARY_REDIRECT {
                redirects += 1;
                if redirects > REDIRECTS_MAX {
                    return Err(TransportError::TooManyRedirects {
                        url: url.to_string(),
                    });
                }
                let target = redirect_target(&url, &response)?;
                tracing::debug!(from = %url, to = %target, "following a leader redirect");
                url = target;
                continue;
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                if let Some(delay) = backoff.as_mut().and_then(Backoff::next_delay) {
                    tracing::debug!(%url, ?delay, "unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                return Err(TransportError::Unavailable {
                    url: url.to_string(),
                    attempts: requests,
                });
            }
            let message = read_bounded(response, ERROR_BODY_BYTES_MAX, timeout).await;
            return Err(TransportError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                message,
            });
        }
    }

    async fn send(
        &self,
        url: &Url,
        body: Vec<u8>,
        stream_id: Option<&str>,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let media = HeaderValue::from_static(self.content_type.as_str());
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, media.clone())
            .header(ACCEPT, media)
            .body(body);
        if let Some(id) = stream_id {
            request = request.header(MESOS_STREAM_ID, id);
        }
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        match tokio::time::timeout(timeout, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(TransportError::Request {
                url: url.to_string(),
                source: Box::new(e),
            }),
            Err(_) => Err(TransportError::Timeout {
                url: url.to_string(),
                after: timeout,
            }),
        }
    }

    /// Checks that a streaming answer is in this client's encoding (mesos-go's rule: exactly).
    pub(crate) fn check_content_type(
        &self,
        url: &Url,
        response: &Response,
    ) -> Result<(), TransportError> {
        let got = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if got == Some(self.content_type.as_str()) {
            Ok(())
        } else {
            Err(TransportError::ContentType {
                url: url.to_string(),
                got: got.map(str::to_owned),
                expected: self.content_type.as_str(),
            })
        }
    }
}

/// Where a 307 points, resolved against the URL that answered.
fn redirect_target(url: &Url, response: &Response) -> Result<Url, TransportError> {
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bad = || TransportError::BadRedirect {
        url: url.to_string(),
        location: location.clone(),
    };
    let text = location
        .as_deref()
        .filter(|l| !l.is_empty())
        .ok_or_else(bad)?;
    let mut target = url.join(text).map_err(|_| bad())?;
    if !matches!(target.scheme(), "http" | "https") || target.host_str().is_none() {
        return Err(bad());
    }
    if target.path() == "/" {
        // `/master/redirect` style: only the leader's address.
        target.set_path(url.path());
    }
    Ok(target)
}

/// Reads at most `max` bytes of a body as text (for error messages); never fails.
async fn read_bounded(mut response: Response, max: usize, timeout: Duration) -> String {
    let mut body = Vec::new();
    let read = async {
        while body.len() < max {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
    body.truncate(max);
    String::from_utf8_lossy(&body).trim().to_owned()
}

/// Reads and drops a call's answer body (bounded), so the connection can be reused.
pub(crate) async fn drain(response: Response, timeout: Duration) {
    let _ = read_bounded(response, ERROR_BODY_BYTES_MAX, timeout).await;
}

/// The RecordIO events of one streaming answer.
#[derive(Debug)]
pub(crate) struct EventReader {
    url: String,
    response: Response,
    content_type: ContentType,
    decoder: recordio::Decoder,
    records: VecDeque<Vec<u8>>,
}

impl EventReader {
    /// Reads the body of `response` (from `url`) as events encoded as `content_type`.
    pub(crate) fn new(url: &Url, response: Response, content_type: ContentType) -> Self {
        EventReader {
            url: url.to_string(),
            response,
            content_type,
            decoder: recordio::Decoder::new(EVENT_BYTES_MAX),
            records: VecDeque::new(),
        }
    }

    /// The next event; `Ok(None)` when the stream ended cleanly. Fails with
    /// [`TransportError::Idle`] when no byte arrives for `idle`.
    pub(crate) async fn next<E: ReflectMessage + Default>(
        &mut self,
        idle: Duration,
    ) -> Result<Option<E>, TransportError> {
        loop {
            if let Some(record) = self.records.pop_front() {
                return self
                    .content_type
                    .decode(&record)
                    .map(Some)
                    .map_err(|source| TransportError::Decode {
                        url: self.url.clone(),
                        source,
                    });
            }
            let chunk = match tokio::time::timeout(idle, self.response.chunk()).await {
                Err(_) => {
                    return Err(TransportError::Idle {
                        url: self.url.clone(),
                        idle,
                    })
                }
                Ok(Err(e)) => {
                    return Err(TransportError::Request {
                        url: self.url.clone(),
                        source: Box::new(e),
                    })
                }
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(chunk))) => chunk,
            };
            let records = self
                .decoder
                .feed(&chunk)
                .map_err(|source| TransportError::RecordIo {
                    url: self.url.clone(),
                    source,
                })?;
            self.records.extend(records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_bare_addresses_and_urls() {
        let url = |s| endpoint_url(s, "api/v1/scheduler").map(|u| u.to_string());
        assert_eq!(
            url("127.0.0.1:5050").unwrap(),
            "http://127.0.0.1:5050/api/v1/scheduler"
        );
        assert_eq!(
            url("http://master:5050").unwrap(),
            "http://master:5050/api/v1/scheduler"
        );
        assert_eq!(
            url("http://proxy/mesos").unwrap(),
            "http://proxy/mesos/api/v1/scheduler"
        );
        assert!(url("ftp://master").is_err());
        assert!(url("http://").is_err());
    }

    #[test]
    fn retryable_errors_are_network_trouble_and_5xx() {
        let status = |status| TransportError::Status {
            url: String::new(),
            status,
            message: String::new(),
        };
        assert!(status(500).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(403).is_retryable());
        assert_eq!(status(403).status(), Some(403));
        assert!(TransportError::Idle {
            url: String::new(),
            idle: Duration::from_secs(1)
        }
        .is_retryable());
        assert!(!TransportError::MissingStreamId { url: String::new() }.is_retryable());
    }
}
