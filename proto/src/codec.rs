//! Media types of the Mesos v1 HTTP APIs and the encode/decode pair for each.
//!
//! Conventions are Mesos's (libprocess `Request::acceptsMediaType`, master `http.cpp`):
//! - `Content-Type` is compared by exact string equality with `application/json` or
//!   `application/x-protobuf` (parameters such as `; charset=utf-8` make it unsupported);
//! - `Accept` is a comma-separated list; an entry matches a type exactly, as `type/*` or `*/*`
//!   (case-insensitively), and counts unless its `q` parameter is not a number above 0; a missing
//!   header accepts everything; JSON is preferred over protobuf;
//! - protobuf bodies follow proto2 parsing: unknown enum values are dropped and missing required
//!   fields are an error, as `Message::ParseFromString` does.

use prost_reflect::{DynamicMessage, ReflectMessage};

use crate::json::{self, JsonError};

/// `application/json`.
pub const APPLICATION_JSON: &str = "application/json";
/// `application/x-protobuf`.
pub const APPLICATION_PROTOBUF: &str = "application/x-protobuf";

/// The two encodings a Mesos v1 API speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// Mesos JSON ([`crate::json`]).
    Json,
    /// Binary protobuf.
    Protobuf,
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A JSON body that is not JSON, or does not fit the message.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// A protobuf body that is malformed or lacks required fields; the text says which.
    #[error("{0}")]
    Protobuf(String),
}

impl ContentType {
    /// The media type string.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => APPLICATION_JSON,
            ContentType::Protobuf => APPLICATION_PROTOBUF,
        }
    }

    /// The encoding named by a `Content-Type` header value (exact match, as Mesos).
    pub fn from_content_type(value: &str) -> Option<Self> {
        match value {
            APPLICATION_JSON => Some(ContentType::Json),
            APPLICATION_PROTOBUF => Some(ContentType::Protobuf),
            _ => None,
        }
    }

    /// The encoding for a response given the request's `Accept` header: JSON if acceptable,
    /// else protobuf if acceptable, else `None` (406).
    pub fn negotiate(accept: Option<&str>) -> Option<Self> {
        if accepts_media_type(accept, APPLICATION_JSON) {
            Some(ContentType::Json)
        } else if accepts_media_type(accept, APPLICATION_PROTOBUF) {
            Some(ContentType::Protobuf)
        } else {
            None
        }
    }

    /// Encodes `message` in this encoding.
    pub fn encode<M: ReflectMessage>(self, message: &M) -> Vec<u8> {
        match self {
            ContentType::Json => json::to_json(message).into_bytes(),
            ContentType::Protobuf => message.encode_to_vec(),
        }
    }

    /// Decodes a body of this encoding.
    pub fn decode<M: ReflectMessage + Default>(self, body: &[u8]) -> Result<M, DecodeError> {
        match self {
            ContentType::Json => Ok(json::from_json(body)?),
            ContentType::Protobuf => decode_protobuf(body),
        }
    }
}

/// Decodes binary protobuf with proto2 semantics (see the module docs).
pub fn decode_protobuf<M: ReflectMessage + Default>(body: &[u8]) -> Result<M, DecodeError> {
    let descriptor = M::default().descriptor();
    let mut message = DynamicMessage::decode(descriptor, body)
        .map_err(|e| DecodeError::Protobuf(format!("malformed protobuf: {e}")))?;
    json::drop_unknown_enum_values(&mut message);
    let missing = json::missing_required_fields(&message);
    if !missing.is_empty() {
        return Err(DecodeError::Protobuf(format!(
            "missing required fields: {}",
            missing.join(", ")
        )));
    }
    message
        .transcode_to::<M>()
        .map_err(|e| DecodeError::Protobuf(format!("malformed protobuf: {e}")))
}

/// Whether an `Accept` header value admits `media_type` (libprocess's rules, see the module
/// docs).
pub fn accepts_media_type(accept: Option<&str>, media_type: &str) -> bool {
    let Some((major, _)) = media_type.split_once('/') else {
        return false;
    };
    let Some(accept) = accept else {
        return true;
    };
    let accept: String = accept
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\n'))
        .collect();
    let candidates = [
        media_type.to_string(),
        format!("{major}/*"),
        "*/*".to_string(),
    ];
    for candidate in &candidates {
        for entry in accept.split(',').filter(|e| !e.is_empty()) {
            let mut parts = entry.split(';').filter(|p| !p.is_empty());
            let Some(range) = parts.next() else {
                continue;
            };
            if !range.eq_ignore_ascii_case(candidate) {
                continue;
            }
            let q: Vec<&str> = parts
                .filter_map(|p| p.split_once('='))
                .filter(|(k, _)| *k == "q")
                .map(|(_, v)| v)
                .collect();
            return match q.as_slice() {
                [value] => value.parse::<f64>().is_ok_and(|q| q > 0.0),
                _ => true,
            };
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_is_an_exact_match() {
        assert_eq!(
            ContentType::from_content_type("application/json"),
            Some(ContentType::Json)
        );
        assert_eq!(
            ContentType::from_content_type("application/x-protobuf"),
            Some(ContentType::Protobuf)
        );
        assert_eq!(
            ContentType::from_content_type("application/json; charset=utf-8"),
            None
        );
        assert_eq!(ContentType::from_content_type("Application/JSON"), None);
        assert_eq!(ContentType::from_content_type("text/plain"), None);
    }

    #[test]
    fn accept_follows_libprocess() {
        let json = Some(ContentType::Json);
        let protobuf = Some(ContentType::Protobuf);
        assert_eq!(ContentType::negotiate(None), json);
        assert_eq!(ContentType::negotiate(Some("*/*")), json);
        assert_eq!(ContentType::negotiate(Some("application/*")), json);
        assert_eq!(
            ContentType::negotiate(Some("application/x-protobuf")),
            protobuf
        );
        assert_eq!(
            ContentType::negotiate(Some("Application/X-Protobuf")),
            protobuf
        );
        assert_eq!(
            ContentType::negotiate(Some("application/json;q=0, */*")),
            protobuf
        );
        assert_eq!(
            ContentType::negotiate(Some("text/html, application/json ; q=0.5")),
            json
        );
        assert_eq!(ContentType::negotiate(Some("text/html")), None);
        assert_eq!(ContentType::negotiate(Some("application/json;q=0")), None);
        assert_eq!(ContentType::negotiate(Some("application/json;q=abc")), None);
        assert_eq!(ContentType::negotiate(Some("")), None);
    }
}
