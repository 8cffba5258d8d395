//! An AuthorizationPolicy written through the API is enforced by the service's own
//! sidecar: real control plane and sidecar binaries, a real app on a loopback socket
//! that records every request it receives.
//!
//! Until sidecars speak mTLS every caller here is plaintext, so rules that need an
//! authenticated peer are proven only in the negative (they never fit a plaintext caller).

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

struct Setup {
    cp: ControlPlane,
    sidecar: Sidecar,
    app: RecordingApp,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(&dir.path().join("cp")).await;
        let (app, port) = RecordingApp::start().await;
        let mut sidecar = Sidecar::start(&cp.grpc(), "web", "web-a", port, &dir.path().join("a")).await;
        sidecar.wait_revision(0).await;
        Setup {
            cp,
            sidecar,
            app,
            _dir: dir,
        }
    }

    /// Writes the policy and waits until the sidecar enforces it.
    async fn apply(&mut self, doc: &str) {
        let (status, body) = self.cp.put_policy("web", "authorization", doc).await;
        assert_eq!(status, 200, "{body}");
        self.sidecar.wait_revision(body["revision"].as_u64().unwrap()).await;
    }

    async fn send(&self, method: &str, path: &str) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        client()
            .request(method, format!("{}{path}", self.sidecar.inbound()))
            .send()
            .await
            .unwrap()
    }

    async fn denied_total(&self, dry_run: bool, rule: &str) -> u64 {
        self.sidecar
            .metric(&format!(
                "outrider_authz_denied_total{{dry_run=\"{dry_run}\",rule=\"{rule}\"}}"
            ))
            .await
    }
}

/// The 403's problem document.
async fn problem(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    r.json().await.unwrap()
}

const DENY_BY_DEFAULT: &str = r#"{"defaultAction": "deny", "rules": [
  {"name": "no-secrets", "match": {"pathPrefix": "/api/secret"}, "action": "deny"},
  {"name": "api-reads", "match": {"pathPrefix": "/api", "methods": ["GET"]}, "action": "allow"}]}"#;

#[tokio::test]
async fn a_deny_by_default_policy_lets_through_only_what_a_rule_allows_and_names_who_denied() {
    let mut s = Setup::start().await;
    s.apply(DENY_BY_DEFAULT).await;

    assert_eq!(s.send("GET", "/api/items").await.status(), 200);
    let by_default = problem(s.send("POST", "/api/items").await).await;
    assert_eq!(by_default["rule"], "defaultAction", "{by_default}");
    assert_eq!(by_default["status"], 403);
    let by_rule = problem(s.send("GET", "/api/secret/key").await).await;
    assert_eq!(by_rule["rule"], "no-secrets", "{by_rule}");
    assert_eq!(problem(s.send("GET", "/web").await).await["rule"], "defaultAction");

    assert_eq!(s.app.requests(), 1, "only the allowed request reached the app");
    assert_eq!(s.denied_total(false, "defaultAction").await, 2);
    assert_eq!(s.denied_total(false, "no-secrets").await, 1);
    assert_eq!(s.sidecar.config_dump().await["authorization"]["defaultAction"], "deny");
}

#[tokio::test]
async fn a_dry_run_lets_everything_through_and_counts_what_it_would_deny() {
    let mut s = Setup::start().await;
    let dry = DENY_BY_DEFAULT.replacen('{', r#"{"dryRun": true, "#, 1);
    s.apply(&dry).await;

    for (method, path) in [
        ("GET", "/api/items"),
        ("POST", "/api/items"),
        ("GET", "/api/secret/key"),
        ("PUT", "/"),
    ] {
        assert_eq!(s.send(method, path).await.status(), 200, "{method} {path}");
    }
    assert_eq!(s.app.requests(), 4);
    assert_eq!(s.denied_total(true, "defaultAction").await, 2);
    assert_eq!(s.denied_total(true, "no-secrets").await, 1);
    assert_eq!(
        s.denied_total(false, "defaultAction").await,
        0,
        "nothing was denied for real"
    );

    // The counts reach the control plane in health reports, for the dashboard.
    let id = s.sidecar.id();
    let reported = outrider_testkit::wait_until(SOON, || async {
        let row = s.cp.sidecar_row(&id).await.unwrap_or_default();
        let denied = row["health"]["authzDenied"].as_array().cloned().unwrap_or_default();
        denied
            .iter()
            .any(|d| d["rule"] == "defaultAction" && d["dryRun"] == true && d["count"] == 2)
    })
    .await;
    assert!(reported.is_ok(), "{}", s.cp.sidecar_row(&id).await.unwrap_or_default());
}

#[tokio::test]
async fn strict_mtls_refuses_plaintext_callers_and_nothing_reaches_the_app() {
    let mut s = Setup::start().await;
    s.apply(r#"{"mtls": "strict", "rules": [{"name": "all", "action": "allow"}]}"#)
        .await;

    for method in ["GET", "POST", "OPTIONS"] {
        let refused = problem(s.send(method, "/").await).await;
        assert_eq!(refused["rule"], "mtls", "{refused}");
    }
    // Not HTTP at all: the connection is closed without the app hearing of it.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", s.sidecar.inbound_port))
        .await
        .unwrap();
    raw.write_all(b"\x16\x03\x01\x00\x05hello\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SOON, raw.read_to_end(&mut rest)).await;
    assert_eq!(s.app.requests(), 0, "nothing reached the app");
    assert_eq!(s.denied_total(false, "mtls").await, 3);
}

#[tokio::test]
async fn a_client_sent_peer_identity_never_reaches_the_app() {
    let mut s = Setup::start().await;
    let forged = "spiffe://outrider.local/ns/default/svc/admin";
    let send = |s: &Setup| {
        client()
            .get(format!("{}/api", s.sidecar.inbound()))
            .header("x-outrider-peer-identity", forged)
            .send()
    };
    // Without a policy, and with one: the header is the proxy's alone.
    assert_eq!(send(&s).await.unwrap().status(), 200);
    s.apply(r#"{"rules": [{"name": "all", "action": "allow"}]}"#).await;
    assert_eq!(send(&s).await.unwrap().status(), 200);
    let seen = s.app.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for headers in seen.iter() {
        assert!(!headers.contains_key("x-outrider-peer-identity"), "{headers:?}");
    }
}

#[tokio::test]
async fn a_rule_for_named_callers_never_fits_a_plaintext_caller() {
    let mut s = Setup::start().await;
    s.apply(
        r#"{"defaultAction": "deny", "rules": [
          {"name": "frontend-only", "from": ["frontend"], "action": "allow"},
          {"name": "any-peer", "from": ["*"], "action": "allow"}]}"#,
    )
    .await;
    assert_eq!(problem(s.send("GET", "/").await).await["rule"], "defaultAction");

    // A deny rule for `frontend` does not catch a plaintext caller either.
    s.apply(r#"{"rules": [{"name": "block-frontend", "from": ["frontend"], "action": "deny"}]}"#)
        .await;
    assert_eq!(s.send("GET", "/").await.status(), 200);
    assert_eq!(s.app.requests(), 1);
}

/// One unary gRPC call with grpcio to `target`; prints the status code's name.
const GRPC_CALL: &str = r#"
import json, sys, grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    call = channel.unary_unary("/outrider.Echo/Who", request_serializer=None, response_deserializer=None)
    try:
        call(b"hello", timeout=10)
        print(json.dumps({"code": "OK"}))
    except grpc.RpcError as e:
        print(json.dumps({"code": e.code().name, "details": e.details()}))
"#;

#[tokio::test]
async fn a_denied_grpc_caller_gets_permission_denied() {
    // The pinned clients' Python, as the interop tests find it; CI always has one.
    let python = std::env::var_os("OUTRIDER_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyclients/bin/python"));
    if !python.exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must have the Python clients");
        eprintln!("skipped: no Python with grpcio (set OUTRIDER_TEST_PYTHON)");
        return;
    }
    let mut s = Setup::start().await;
    s.apply(r#"{"defaultAction": "deny"}"#).await;
    let target = format!("127.0.0.1:{}", s.sidecar.inbound_port);
    let out = Command::new(python)
        .arg("-c")
        .arg(GRPC_CALL)
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outcome: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["code"], "PERMISSION_DENIED", "{outcome}");
    assert!(
        outcome["details"].as_str().unwrap().contains("defaultAction"),
        "{outcome}"
    );
    assert_eq!(s.app.requests(), 0);
}
