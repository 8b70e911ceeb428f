//! Authentication: HTTP Basic principals for frameworks and operators, a shared secret for agents.
//!
//! Each endpoint belongs to a realm, as in Mesos's master (`src/master/master.cpp` routes):
//!
//! | realm | endpoints | enabled by |
//! |---|---|---|
//! | `mesos-master-scheduler` | `/api/v1/scheduler` | `--authenticate_http_frameworks` (or `--authenticate_frameworks`) |
//! | `mesos-master-readwrite` | `/api/v1`, `/master/{teardown,reserve,unreserve,create-volumes,destroy-volumes,quota,weights,maintenance/schedule,machine/down,machine/up}`, and any path not listed here | `--authenticate_http_readwrite` |
//! | `mesos-master-readonly` | `/master/{state,state-summary,frameworks,slaves,tasks,roles,flags,maintenance/status}` (and `.json` aliases), `/metrics/snapshot`, `/metrics`, `/files/*` | `--authenticate_http_readonly` |
//! | `mesoblk-agent` | `/agent/*` (mesoblk's agent protocol) | `--authenticate_agents` |
//! | none | `/version`, `/health`, `/master/health`, `/master/redirect` | never authenticated |
//!
//! In an enabled Basic realm a request needs `Authorization: Basic base64(principal:secret)`
//! matching `--credentials`; otherwise it gets Mesos's `401 Unauthorized.` with
//! `WWW-Authenticate: Basic realm="<realm>"`. Agents send `Authorization: Bearer <secret>`, the
//! content of `--agent_secret_file` (the same file on master and agents); a missing or wrong one
//! gets 401 with `WWW-Authenticate: Bearer realm="mesoblk-agent"`. Secrets are compared in
//! constant time and never logged; an authenticated request carries its [`Principal`] as a
//! request extension.
//!
//! On the scheduler API the principal must also match the framework's, as Mesos checks it
//! (`validation::scheduler::call::validate` and `Master::Http::scheduler`): a SUBSCRIBE whose
//! `FrameworkInfo.principal` differs gets 400 `Failed to validate scheduler::Call: Authenticated
//! principal 'p' does not match principal 'q' set in `FrameworkInfo``, one without a principal
//! gets the authenticated one filled in; any other call for a known framework whose principal
//! differs gets 400 with the same sentence. (Mesos answers 400 here, not 403: 403 is for a
//! framework that is not subscribed, which the scheduler handler reports.)
//!
//! Deviation from Mesos, on purpose: `--authenticate_frameworks` (Mesos: SASL for the old
//! driver API, which mesoblk does not serve) also turns on `--authenticate_http_frameworks`,
//! since every mesoblk framework is an HTTP one and the flag's intent is "only authenticated
//! frameworks may register". Credentials files may be JSON (Mesos's only format since 1.x) or the
//! older plain-text `principal secret` lines.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mesoblk_proto::codec::ContentType;
use mesoblk_proto::mesos::v1::scheduler::{call, Call};
use serde::Deserialize;
use tracing::{info, warn};

use crate::error::ApiError;
use crate::http::BODY_BYTES_MAX;
use crate::state::MasterHandle;

/// Realm of the scheduler API.
pub const SCHEDULER_REALM: &str = "mesos-master-scheduler";
/// Realm of the operator API and the legacy endpoints that change things.
pub const READWRITE_REALM: &str = "mesos-master-readwrite";
/// Realm of the legacy read-only endpoints and metrics.
pub const READONLY_REALM: &str = "mesos-master-readonly";
/// Realm of mesoblk's agent protocol.
pub const AGENT_REALM: &str = "mesoblk-agent";

/// Largest credentials or secret file read.
const FILE_BYTES_MAX: u64 = 1 << 20;

/// Why a credentials or secret file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read the {what} '{path}'")]
    Read {
        /// Which file ("credentials file", "agent secret file").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not usable (the reason never quotes a secret).
    #[error("the {what} '{path}' is invalid: {reason}")]
    Invalid {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A secret: compared in constant time, never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// Whether `presented` equals the secret. The time taken depends only on the lengths.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let (a, b) = (&self.0, presented);
        let mut diff = u64::from(a.len() != b.len());
        for i in 0..a.len().max(b.len()) {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            diff |= u64::from(x ^ y);
        }
        std::hint::black_box(diff) == 0
    }

    /// Reads a secret file (the agents' shared secret): its content without surrounding
    /// whitespace, which must not be empty.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        const WHAT: &str = "agent secret file";
        let text = read_small(WHAT, path)?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(AuthError::Invalid {
                what: WHAT,
                path: path.into(),
                reason: "the secret is empty".into(),
            });
        }
        warn_if_readable_by_others(path);
        Ok(Secret::new(secret.as_bytes()))
    }
}

/// Principals and their secrets, from `--credentials`.
#[derive(Clone, Default)]
pub struct Credentials {
    secrets: BTreeMap<String, Secret>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("principals", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct JsonCredentials {
    credentials: Vec<JsonCredential>,
}

#[derive(Deserialize)]
struct JsonCredential {
    principal: String,
    #[serde(default)]
    secret: Option<String>,
}

fn read_small(what: &'static str, path: &Path) -> Result<String, AuthError> {
    let read_error = |source| AuthError::Read {
        what,
        path: path.into(),
        source,
    };
    let length = std::fs::metadata(path).map_err(read_error)?.len();
    if length > FILE_BYTES_MAX {
        return Err(AuthError::Invalid {
            what,
            path: path.into(),
            reason: format!("larger than {FILE_BYTES_MAX} bytes"),
        });
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    String::from_utf8(bytes).map_err(|_| AuthError::Invalid {
        what,
        path: path.into(),
        reason: "not UTF-8 text".into(),
    })
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(metadata) = std::fs::metadata(path) {
        if metadata.permissions().mode() & 0o007 != 0 {
            warn!(
                file = %path.display(),
                "permissions on the file are too open; it should not be accessible by others"
            );
        }
    }
}

impl Credentials {
    /// Parses Mesos's JSON (`{"credentials":[{"principal":"p","secret":"s"}]}`) or the older
    /// plain text (one `principal secret` pair per line). Every principal needs a non-empty
    /// secret and appears once.
    pub fn parse(text: &str) -> Result<Self, String> {
        let pairs: Vec<(String, String)> = if text.trim_start().starts_with('{') {
            // serde's messages can quote values, so only the position is reported.
            let parsed: JsonCredentials = serde_json::from_str(text).map_err(|e| {
                format!(
                    "not a JSON credentials object (line {}, column {})",
                    e.line(),
                    e.column()
                )
            })?;
            parsed
                .credentials
                .into_iter()
                .map(|c| (c.principal, c.secret.unwrap_or_default()))
                .collect()
        } else {
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(
                    |(n, line)| match line.split_whitespace().collect::<Vec<_>>()[..] {
                        [principal, secret] => Ok((principal.to_string(), secret.to_string())),
                        _ => Err(format!(
                            "line {}: expected 'principal secret' separated by whitespace",
                            n + 1
                        )),
                    },
                )
                .collect::<Result<_, _>>()?
        };
        let mut secrets = BTreeMap::new();
        for (principal, secret) in pairs {
            if principal.is_empty() {
                return Err("a credential has an empty principal".into());
            }
            if secret.is_empty() {
                return Err(format!("principal '{principal}' has no secret"));
            }
            if secrets
                .insert(principal.clone(), Secret::new(secret))
                .is_some()
            {
                return Err(format!("principal '{principal}' appears twice"));
            }
        }
        if secrets.is_empty() {
            return Err("no credentials".into());
        }
        Ok(Credentials { secrets })
    }

    /// Reads `--credentials`: a path, or a `file://` URL as Mesos accepts.
    pub fn load(location: &str) -> Result<Self, AuthError> {
        const WHAT: &str = "credentials file";
        let path = Path::new(location.strip_prefix("file://").unwrap_or(location));
        let text = read_small(WHAT, path)?;
        let credentials = Credentials::parse(&text).map_err(|reason| AuthError::Invalid {
            what: WHAT,
            path: path.into(),
            reason,
        })?;
        warn_if_readable_by_others(path);
        Ok(credentials)
    }

    /// Whether `secret` is `principal`'s. An unknown principal costs the same comparison.
    pub fn verify(&self, principal: &str, secret: &[u8]) -> bool {
        static NOBODY: std::sync::LazyLock<Secret> =
            std::sync::LazyLock::new(|| Secret::new(uuid::Uuid::new_v4().to_string()));
        match self.secrets.get(principal) {
            Some(known) => known.matches(secret),
            None => {
                let _ = NOBODY.matches(secret);
                false
            }
        }
    }

    /// The principals.
    pub fn principals(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }
}

/// What to authenticate. `Default` authenticates nothing (Mesos's defaults).
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Principals and secrets (`--credentials`).
    pub credentials: Option<Arc<Credentials>>,
    /// Authenticate the scheduler API.
    pub frameworks: bool,
    /// Authenticate the read-write realm.
    pub readwrite: bool,
    /// Authenticate the read-only realm.
    pub readonly: bool,
    /// The agents' shared secret; `Some` means agents must present it.
    pub agent_secret: Option<Secret>,
}

impl AuthConfig {
    /// Refuses a realm enabled without credentials, as Mesos refuses to start.
    pub fn validate(&self) -> Result<(), String> {
        let needs_credentials = [
            (self.frameworks, "--authenticate_http_frameworks"),
            (self.readwrite, "--authenticate_http_readwrite"),
            (self.readonly, "--authenticate_http_readonly"),
        ];
        for (enabled, flag) in needs_credentials {
            if enabled && self.credentials.is_none() {
                return Err(format!("{flag} needs --credentials"));
            }
        }
        Ok(())
    }

    fn enabled(&self, realm: Realm) -> bool {
        match realm {
            Realm::Public => false,
            Realm::Scheduler => self.frameworks,
            Realm::ReadWrite => self.readwrite,
            Realm::ReadOnly => self.readonly,
            Realm::Agent => self.agent_secret.is_some(),
        }
    }
}

/// Which credentials an endpoint takes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    /// Never authenticated.
    Public,
    /// The scheduler API.
    Scheduler,
    /// Operator calls and legacy endpoints that change things.
    ReadWrite,
    /// Legacy endpoints that only read, and metrics.
    ReadOnly,
    /// mesoblk's agent protocol.
    Agent,
}

impl Realm {
    /// The realm of `path`. Unlisted paths are read-write, so a new endpoint is protected until
    /// someone decides otherwise.
    pub fn of(path: &str) -> Realm {
        const PUBLIC: &[&str] = &["/version", "/health", "/master/health", "/master/redirect"];
        const READONLY: &[&str] = &[
            "/master/state",
            "/master/state-summary",
            "/master/frameworks",
            "/master/slaves",
            "/master/tasks",
            "/master/roles",
            "/master/flags",
            "/master/maintenance/status",
            "/metrics/snapshot",
            "/metrics",
        ];
        let path = path.trim_end_matches('/');
        if PUBLIC.contains(&path) || path.starts_with("/master/redirect/") {
            Realm::Public
        } else if path == "/api/v1/scheduler" {
            Realm::Scheduler
        } else if path == "/agent" || path.starts_with("/agent/") {
            Realm::Agent
        } else if READONLY.contains(&path.strip_suffix(".json").unwrap_or(path))
            || path.starts_with("/files/")
        {
            Realm::ReadOnly
        } else {
            Realm::ReadWrite
        }
    }

    /// The name in `WWW-Authenticate`.
    pub fn name(self) -> &'static str {
        match self {
            Realm::Public | Realm::ReadWrite => READWRITE_REALM,
            Realm::Scheduler => SCHEDULER_REALM,
            Realm::ReadOnly => READONLY_REALM,
            Realm::Agent => AGENT_REALM,
        }
    }
}

/// The authenticated principal of a request (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// The middleware's state: the settings and the master (for frameworks' principals).
#[derive(Debug, Clone)]
pub struct AuthState {
    config: Arc<AuthConfig>,
    master: MasterHandle,
}

impl AuthState {
    /// For `master`, with its `Config::auth`.
    pub fn new(master: &MasterHandle) -> Self {
        AuthState {
            config: Arc::new(master.config().auth.clone()),
            master: master.clone(),
        }
    }
}

fn unauthorized(scheme: &str, realm: Realm) -> Response {
    let challenge = format!("{scheme} realm=\"{}\"", realm.name());
    let mut response = (StatusCode::UNAUTHORIZED, "401 Unauthorized.").into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The credentials of an `Authorization` header value with `scheme` (case-insensitive).
fn credentials_of<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.trim().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// The principal of a valid Basic `Authorization`, if any.
fn basic_principal(credentials: &Credentials, value: Option<&str>) -> Option<String> {
    let encoded = credentials_of(value?, "Basic")?;
    let decoded = STANDARD.decode(encoded).ok()?;
    let split = decoded.iter().position(|&b| b == b':')?;
    let principal = std::str::from_utf8(&decoded[..split]).ok()?;
    credentials
        .verify(principal, &decoded[split + 1..])
        .then(|| principal.to_string())
}

/// The middleware: authenticates the request for its realm (see the module docs).
pub async fn authenticate(
    State(state): State<AuthState>,
    request: Request,
    next: Next,
) -> Response {
    let realm = Realm::of(request.uri().path());
    if !state.config.enabled(realm) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if realm == Realm::Agent {
        let presented = authorization.and_then(|v| credentials_of(v, "Bearer"));
        let valid = match (&state.config.agent_secret, presented) {
            (Some(secret), Some(presented)) => secret.matches(presented.as_bytes()),
            _ => false,
        };
        if !valid {
            info!(path = %request.uri().path(), "refusing an agent request without the agent secret");
            return unauthorized("Bearer", realm);
        }
        return next.run(request).await;
    }
    let principal = state
        .config
        .credentials
        .as_deref()
        .and_then(|credentials| basic_principal(credentials, authorization));
    let Some(principal) = principal else {
        info!(path = %request.uri().path(), realm = realm.name(), "refusing an unauthenticated request");
        return unauthorized("Basic", realm);
    };
    let mut request = request;
    request
        .extensions_mut()
        .insert(Principal(principal.clone()));
    if realm == Realm::Scheduler {
        request = match scheduler_principal(&state.master, &principal, request).await {
            Ok(request) => request,
            Err(response) => return response,
        };
    }
    next.run(request).await
}

fn mismatch(authenticated: &str, framework: &str) -> String {
    format!(
        "Authenticated principal '{authenticated}' does not match principal '{framework}' set in \
         `FrameworkInfo`"
    )
}

/// Mesos's principal checks on a scheduler call (see the module docs). Anything the scheduler
/// handler refuses anyway (wrong method, content type, body or call) passes through unchanged.
async fn scheduler_principal(
    master: &MasterHandle,
    principal: &str,
    request: Request,
) -> Result<Request, Response> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(ContentType::from_content_type);
    let (Some(content_type), true) = (content_type, request.method() == Method::POST) else {
        return Ok(request);
    };
    let (mut parts, body) = request.into_parts();
    // The body may be re-encoded below; its length comes from the body from here on.
    parts.headers.remove(header::CONTENT_LENGTH);
    let Ok(bytes) = to_bytes(body, BODY_BYTES_MAX).await else {
        return Err(StatusCode::PAYLOAD_TOO_LARGE.into_response());
    };
    let rebuild = |bytes| Request::from_parts(parts, Body::from(bytes));
    let Ok(mut call) = content_type.decode::<Call>(&bytes) else {
        return Ok(rebuild(bytes.to_vec()));
    };
    let Ok(kind) = crate::http::scheduler::validate(&call) else {
        return Ok(rebuild(bytes.to_vec()));
    };
    if kind == call::Type::Subscribe {
        let Some(info) = call.subscribe.as_mut().map(|s| &mut s.framework_info) else {
            return Ok(rebuild(bytes.to_vec()));
        };
        match info.principal.as_deref() {
            Some(given) if given != principal => {
                return Err(ApiError::bad_request(format!(
                    "Failed to validate scheduler::Call: {}",
                    mismatch(principal, given)
                ))
                .into_response());
            }
            Some(_) => return Ok(rebuild(bytes.to_vec())),
            None => {
                warn!(
                    %principal,
                    "setting 'principal' in FrameworkInfo to the authenticated principal, which \
                     the framework did not set"
                );
                info.principal = Some(principal.to_string());
                return Ok(rebuild(content_type.encode(&call)));
            }
        }
    }
    let framework_id = call.framework_id.as_ref().map(|id| id.value.as_str());
    let known = framework_id
        .and_then(|id| master.with(|m| m.frameworks().get(id).map(|f| f.info.principal.clone())));
    match known {
        Some(framework) if framework.as_deref() != Some(principal) => Err(ApiError::bad_request(
            mismatch(principal, framework.as_deref().unwrap_or("")),
        )
        .into_response()),
        _ => Ok(rebuild(bytes.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_plain_text_credentials_parse() {
        let json = r#"{"credentials":[{"principal":"sherman","secret":"kitesurf"},
                      {"principal":"ops","secret":"s3cr:et","extra":1}]}"#;
        let credentials = Credentials::parse(json).expect("JSON parses");
        assert!(credentials.verify("sherman", b"kitesurf"));
        assert!(credentials.verify("ops", b"s3cr:et"));
        assert!(!credentials.verify("sherman", b"kitesurF"));
        assert!(!credentials.verify("nobody", b"kitesurf"));

        let text = "sherman kitesurf\n\n  ops\tsecret2  \n";
        let credentials = Credentials::parse(text).expect("text parses");
        assert_eq!(
            credentials.principals().collect::<Vec<_>>(),
            ["ops", "sherman"]
        );
        assert!(credentials.verify("ops", b"secret2"));
    }

    #[test]
    fn bad_credentials_are_refused_without_quoting_secrets() {
        for (text, expected) in [
            ("", "no credentials"),
            ("{\"credentials\":[]}", "no credentials"),
            ("alice", "line 1"),
            ("alice a b", "line 1"),
            ("alice s\nalice t", "appears twice"),
            (r#"{"credentials":[{"principal":"p"}]}"#, "has no secret"),
            (
                r#"{"credentials":[{"principal":"p","secret":12345}]}"#,
                "line 1",
            ),
            ("{ not json", "not a JSON credentials object"),
        ] {
            let error = Credentials::parse(text).expect_err(text);
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains("12345"), "{error}");
        }
    }

    #[test]
    fn secrets_compare_exactly_and_never_print() {
        let secret = Secret::new("hunter2");
        assert!(secret.matches(b"hunter2"));
        assert!(!secret.matches(b"hunter"));
        assert!(!secret.matches(b"hunter22"));
        assert!(!secret.matches(b""));
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        let credentials = Credentials::parse("alice hunter2").expect("parses");
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }

    #[test]
    fn realms_follow_mesos_routes() {
        assert_eq!(Realm::of("/api/v1/scheduler"), Realm::Scheduler);
        assert_eq!(Realm::of("/api/v1"), Realm::ReadWrite);
        assert_eq!(Realm::of("/master/teardown"), Realm::ReadWrite);
        assert_eq!(Realm::of("/master/weights"), Realm::ReadWrite);
        assert_eq!(Realm::of("/master/state"), Realm::ReadOnly);
        assert_eq!(Realm::of("/master/state.json"), Realm::ReadOnly);
        assert_eq!(Realm::of("/metrics/snapshot"), Realm::ReadOnly);
        assert_eq!(Realm::of("/files/read"), Realm::ReadOnly);
        assert_eq!(Realm::of("/agent/v1/register"), Realm::Agent);
        assert_eq!(Realm::of("/version"), Realm::Public);
        assert_eq!(Realm::of("/master/redirect"), Realm::Public);
        assert_eq!(Realm::of("/something/new"), Realm::ReadWrite);
    }

    #[test]
    fn basic_headers_are_checked() {
        let credentials = Credentials::parse("alice wonder:land").expect("parses");
        let header = format!("Basic {}", STANDARD.encode("alice:wonder:land"));
        assert_eq!(
            basic_principal(&credentials, Some(&header)).as_deref(),
            Some("alice")
        );
        let lower = format!("basic {}", STANDARD.encode("alice:wonder:land"));
        assert!(basic_principal(&credentials, Some(&lower)).is_some());
        for bad in [
            format!("Basic {}", STANDARD.encode("alice:wonder")),
            format!("Basic {}", STANDARD.encode("alice")),
            "Basic !!!".to_string(),
            format!("Bearer {}", STANDARD.encode("alice:wonder:land")),
            String::new(),
        ] {
            assert_eq!(basic_principal(&credentials, Some(&bad)), None, "{bad}");
        }
        assert_eq!(basic_principal(&credentials, None), None);
    }

    #[test]
    fn enabled_realms_need_credentials() {
        let mut config = AuthConfig {
            readwrite: true,
            ..AuthConfig::default()
        };
        assert!(config.validate().is_err());
        config.credentials = Some(Arc::new(Credentials::parse("a b").expect("parses")));
        assert!(config.validate().is_ok());
    }
}
