//! Authentication over real HTTP: Basic principals on the scheduler and operator APIs, the
//! agents' shared secret, Mesos's 401/400 answers, the binary's flags, and pymesos 0.3.15 with
//! a principal and secret (`tests/compat/pymesos_auth.py`).

mod binary;
mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mesoblk_master::auth::{AuthConfig, Credentials, Secret};
use mesoblk_master::Config;

use common::{subscribe_body, TestMaster, JSON};

fn basic(principal: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{principal}:{secret}")))
}

fn credentials() -> Arc<Credentials> {
    Arc::new(Credentials::parse("alice wonderland\nbob builder\n").expect("parses"))
}

async fn master(auth: AuthConfig) -> TestMaster {
    let mut config = Config::new("test-master.local", Ipv4Addr::LOCALHOST, 5050);
    config.auth = auth;
    common::start_with(config).await
}

fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("WWW-Authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn operator_calls_need_credentials_when_readwrite_is_on() {
    let master = master(AuthConfig {
        credentials: Some(credentials()),
        readwrite: true,
        ..AuthConfig::default()
    })
    .await;
    let health = r#"{"type":"GET_HEALTH"}"#;
    for authorization in [
        None,
        Some(basic("alice", "wrong")),
        Some(basic("mallory", "wonderland")),
        Some("Basic not-base64!".to_string()),
        Some(format!("Bearer {}", STANDARD.encode("alice:wonderland"))),
    ] {
        let mut headers = vec![("Content-Type", JSON)];
        if let Some(value) = &authorization {
            headers.push(("Authorization", value));
        }
        let response = master.post("/api/v1", &headers, health.to_string()).await;
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert_eq!(
            challenge(&response),
            r#"Basic realm="mesos-master-readwrite""#
        );
        assert_eq!(response.text().await.expect("body"), "401 Unauthorized.");
    }
    let good = basic("alice", "wonderland");
    let response = master
        .post(
            "/api/v1",
            &[("Content-Type", JSON), ("Authorization", &good)],
            health.to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
    // Authentication comes before method and content checks, as in libprocess.
    let client = reqwest::Client::new();
    let get = client.get(master.url("/api/v1")).send().await.expect("GET");
    assert_eq!(get.status(), 401);
    // Public endpoints and the scheduler API (its realm is off) stay open.
    for path in ["/version", "/health", "/master/health"] {
        let response = client.get(master.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 200, "{path}");
    }
    let mut stream = master.subscribe(&subscribe_body("open", "")).await;
    stream.subscribed().await;
}

#[tokio::test]
async fn realms_that_are_off_ignore_authorization_headers() {
    let master = master(AuthConfig {
        credentials: Some(credentials()),
        ..AuthConfig::default()
    })
    .await;
    let garbage = "Basic garbage";
    let response = master
        .post(
            "/api/v1",
            &[("Content-Type", JSON), ("Authorization", garbage)],
            r#"{"type":"GET_HEALTH"}"#.to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
}

async fn subscribe_as(master: &TestMaster, authorization: &str, body: &str) -> reqwest::Response {
    master
        .post(
            "/api/v1/scheduler",
            &[
                ("Content-Type", JSON),
                ("Accept", JSON),
                ("Authorization", authorization),
            ],
            body.to_string(),
        )
        .await
}

#[tokio::test]
async fn frameworks_authenticate_and_principals_must_match() {
    let master = master(AuthConfig {
        credentials: Some(credentials()),
        frameworks: true,
        ..AuthConfig::default()
    })
    .await;
    let body = subscribe_body("auth", "");

    let response = master
        .post(
            "/api/v1/scheduler",
            &[("Content-Type", JSON), ("Accept", JSON)],
            body.clone(),
        )
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        challenge(&response),
        r#"Basic realm="mesos-master-scheduler""#
    );
    let response = subscribe_as(&master, &basic("alice", "builder"), &body).await;
    assert_eq!(response.status(), 401);

    // No principal in FrameworkInfo: the authenticated one is filled in.
    let alice = basic("alice", "wonderland");
    let response = subscribe_as(&master, &alice, &body).await;
    assert_eq!(response.status(), 200);
    let mut stream = common::EventStream::new(response, mesoblk_proto::codec::ContentType::Json);
    let framework_id = stream.subscribed().await;
    let principal = master.handle.with(|m| {
        m.frameworks()
            .get(&framework_id)
            .and_then(|f| f.info.principal.clone())
    });
    assert_eq!(principal.as_deref(), Some("alice"));

    // A different principal in FrameworkInfo: 400, as Mesos's call validation.
    let bob_framework = subscribe_body("auth", r#","principal":"bob""#);
    let response = subscribe_as(&master, &alice, &bob_framework).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.text().await.expect("body"),
        "Failed to validate scheduler::Call: Authenticated principal 'alice' does not match \
         principal 'bob' set in `FrameworkInfo`"
    );

    // Calls for alice's framework from bob: 400; from alice: accepted.
    let revive = format!(r#"{{"type":"REVIVE","framework_id":{{"value":"{framework_id}"}}}}"#);
    let bob = basic("bob", "builder");
    let response = master
        .post(
            "/api/v1/scheduler",
            &[
                ("Content-Type", JSON),
                ("Mesos-Stream-Id", &stream.stream_id),
                ("Authorization", &bob),
            ],
            revive.clone(),
        )
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.text().await.expect("body"),
        "Authenticated principal 'bob' does not match principal 'alice' set in `FrameworkInfo`"
    );
    let response = master
        .post(
            "/api/v1/scheduler",
            &[
                ("Content-Type", JSON),
                ("Mesos-Stream-Id", &stream.stream_id),
                ("Authorization", &alice),
            ],
            revive,
        )
        .await;
    assert_eq!(response.status(), 202);

    // Protobuf bodies are checked (and rewritten) the same way.
    use mesoblk_proto::mesos::v1::scheduler::{call, Call};
    use mesoblk_proto::mesos::v1::FrameworkInfo;
    let call = Call {
        r#type: Some(call::Type::Subscribe as i32),
        subscribe: Some(call::Subscribe {
            framework_info: FrameworkInfo {
                user: "tester".into(),
                name: "protobuf".into(),
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let body = mesoblk_proto::codec::ContentType::Protobuf.encode(&call);
    let response = master
        .post(
            "/api/v1/scheduler",
            &[
                ("Content-Type", common::PROTOBUF),
                ("Accept", JSON),
                ("Authorization", &bob),
            ],
            body,
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut stream = common::EventStream::new(response, mesoblk_proto::codec::ContentType::Json);
    let bobs = stream.subscribed().await;
    let principal = master.handle.with(|m| {
        m.frameworks()
            .get(&bobs)
            .and_then(|f| f.info.principal.clone())
    });
    assert_eq!(principal.as_deref(), Some("bob"));
}

#[tokio::test]
async fn bad_scheduler_calls_keep_their_own_errors_when_authenticated() {
    let master = master(AuthConfig {
        credentials: Some(credentials()),
        frameworks: true,
        ..AuthConfig::default()
    })
    .await;
    let alice = basic("alice", "wonderland");
    let response = master
        .post(
            "/api/v1/scheduler",
            &[("Content-Type", JSON), ("Authorization", &alice)],
            "{ not json".to_string(),
        )
        .await;
    assert_eq!(response.status(), 400);
    assert!(response
        .text()
        .await
        .expect("body")
        .starts_with("Failed to parse body into JSON"));
    let response = master
        .post(
            "/api/v1/scheduler",
            &[("Content-Type", "text/plain"), ("Authorization", &alice)],
            "{}".to_string(),
        )
        .await;
    assert_eq!(response.status(), 415);
    let unknown = r#"{"type":"REVIVE","framework_id":{"value":"nope"}}"#;
    let response = master
        .post(
            "/api/v1/scheduler",
            &[
                ("Content-Type", JSON),
                ("Mesos-Stream-Id", "x"),
                ("Authorization", &alice),
            ],
            unknown.to_string(),
        )
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.text().await.expect("body"),
        "Framework cannot be found"
    );
}

#[tokio::test]
async fn agents_present_the_shared_secret() {
    let master = master(AuthConfig {
        agent_secret: Some(Secret::new("s3cret-agents")),
        ..AuthConfig::default()
    })
    .await;
    let register = "/agent/v1/register";
    for authorization in [
        None,
        Some("Bearer wrong"),
        Some("Basic czNjcmV0LWFnZW50cw=="),
    ] {
        let mut headers = vec![("Content-Type", common::PROTOBUF)];
        if let Some(value) = authorization {
            headers.push(("Authorization", value));
        }
        let response = master.post(register, &headers, Vec::new()).await;
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert_eq!(challenge(&response), r#"Bearer realm="mesoblk-agent""#);
    }
    let response = master
        .post(
            register,
            &[
                ("Content-Type", common::PROTOBUF),
                ("Authorization", "Bearer s3cret-agents"),
            ],
            Vec::new(),
        )
        .await;
    assert_ne!(response.status(), 401, "the right secret passes");
    // Frameworks and operators are not affected by the agents' secret.
    let response = master
        .post_json("/api/v1", r#"{"type":"GET_HEALTH"}"#)
        .await;
    assert_eq!(response.status(), 200);
}

// ---- The binary: flags and one-line startup errors. ----

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn bad_authentication_setups_are_one_line_startup_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_secret = write(
        dir.path(),
        "c1.json",
        r#"{"credentials":[{"principal":"p"}]}"#,
    );
    let bad_text = write(dir.path(), "c2.txt", "alice\n");
    let empty_secret = write(dir.path(), "agent-secret", "  \n");
    let missing = dir.path().join("missing").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--authenticate_http_readwrite"], "needs --credentials"),
        (
            vec!["--authenticate_http_frameworks=true"],
            "needs --credentials",
        ),
        (vec!["--authenticate_frameworks"], "needs --credentials"),
        (vec!["--credentials", &no_secret], "has no secret"),
        (vec!["--credentials", &bad_text], "line 1"),
        (
            vec!["--credentials", &missing],
            "cannot read the credentials file",
        ),
        (vec!["--authenticate_agents"], "needs --agent_secret_file"),
        (
            vec![
                "--authenticate_agents",
                "--agent_secret_file",
                &empty_secret,
            ],
            "the secret is empty",
        ),
        (vec!["--http_authenticators", "jwt"], "only the 'basic'"),
    ];
    for (args, expected) in cases {
        let (code, stderr) = binary::run_to_exit(&args);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("mesoblk-master: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn the_binary_serves_with_a_plain_text_credentials_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = write(dir.path(), "credentials", "ops opsecret\n");
    let url = format!("file://{credentials}");
    let master = binary::MasterProcess::start(
        "auth-binary",
        &[
            "--credentials",
            &url,
            "--authenticate_http_readwrite",
            "--registry=in_memory",
        ],
    );
    let client = reqwest::Client::new();
    let call = |authorization: Option<String>| {
        let mut request = client
            .post(master.url("/api/v1"))
            .header("Content-Type", JSON)
            .body(r#"{"type":"GET_FLAGS"}"#);
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        request.send()
    };
    assert_eq!(call(None).await.expect("request").status(), 401);
    let response = call(Some(basic("ops", "opsecret"))).await.expect("request");
    assert_eq!(response.status(), 200);
    let flags = response.text().await.expect("body");
    assert!(flags.contains("authenticate_http_readwrite"), "{flags}");
    assert!(
        !flags.contains("opsecret"),
        "secrets are never reported: {flags}"
    );
    assert!(
        !master.log_text().contains("opsecret"),
        "secrets are never logged"
    );
}

#[test]
fn pymesos_authenticates_with_principal_and_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = write(
        dir.path(),
        "credentials.json",
        r#"{"credentials":[{"principal":"pyprincipal","secret":"pysecret"},
                           {"principal":"ops","secret":"opsecret"}]}"#,
    );
    let master = binary::MasterProcess::start(
        "auth-pymesos",
        &[
            "--credentials",
            &credentials,
            "--authenticate_http_frameworks",
            "--authenticate_http_readwrite",
            "--heartbeat_interval",
            "200ms",
            "--registry=in_memory",
        ],
    );
    let args = [
        master.address(),
        "pyprincipal".to_string(),
        "pysecret".to_string(),
        "ops".to_string(),
        "opsecret".to_string(),
    ];
    let (ok, stdout, stderr) =
        binary::run_python("pymesos_auth.py", &args, Duration::from_secs(120));
    assert!(
        ok,
        "pymesos auth script failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nmaster log:\n{}",
        master.log_text()
    );
    for line in [
        "ok: authenticated subscription",
        "ok: wrong secret refused with 401",
        "ok: principal mismatch refused with 400",
    ] {
        assert!(stdout.contains(line), "{line} in:\n{stdout}");
    }
    assert!(
        !master.log_text().contains("pysecret"),
        "secrets are never logged"
    );
}
