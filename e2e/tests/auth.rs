//! API tokens with roles: viewers read, editors change policy, admins manage tokens,
//! and every change names its author.

mod common;
use common::*;
use outrider_testkit::bin_path;
use serde_json::{json, Value};
use std::path::Path;

/// Runs `outrider-control-plane token …` against the store in `data_dir`.
fn token_cmd(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin_path("outrider-control-plane"))
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("OUTRIDER_DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

fn create(data_dir: &Path, name: &str, role: &str) -> String {
    let (ok, out, err) = token_cmd(data_dir, &["create", "--name", name, "--role", role]);
    assert!(ok, "token create failed: {err}");
    assert!(out.starts_with("ortk_"), "{out}");
    out
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut r = client().request(method.parse().unwrap(), url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b.to_string());
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn viewers_read_editors_change_admins_manage_tokens_and_changes_name_their_author() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = ControlPlane::start_with(&data, None, vec![("OUTRIDER_API_TOKEN".into(), "boot-secret".into())]).await;
    let viewer = create(&data, "vera", "viewer");
    let editor = create(&data, "alice", "editor");
    let rl = json!({"rules": [{"name": "all", "requestsPerSecond": 5}]});
    let policy = cp.api("/services/web/policies/rate-limit");

    // No token, or a wrong one: 401 on reads and writes alike.
    assert_eq!(call("GET", &cp.api("/services"), None, None).await.0, 401);
    assert_eq!(call("GET", &cp.api("/services"), Some("ortk_wrong"), None).await.0, 401);
    assert_eq!(call("PUT", &policy, None, Some(rl.clone())).await.0, 401);

    // The editor changes policy, and the history says who.
    let (st, body) = call("PUT", &policy, Some(&editor), Some(rl.clone())).await;
    assert_eq!(st, 200, "{body}");
    let rev = body["revision"].as_u64().unwrap();
    let (_, r) = call("GET", &cp.api(&format!("/revisions/{rev}")), Some(&viewer), None).await;
    assert_eq!(r["actor"], "alice");

    // The viewer reads everything and changes nothing.
    for path in [
        "/services",
        "/services/web",
        "/sidecars",
        "/revisions",
        "/services/web/policies/rate-limit",
    ] {
        assert_eq!(call("GET", &cp.api(path), Some(&viewer), None).await.0, 200, "{path}");
    }
    let (st, body) = call("PUT", &policy, Some(&viewer), Some(rl.clone())).await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["status"], 403);
    assert_eq!(call("DELETE", &policy, Some(&viewer), None).await.0, 403);
    let revert = cp.api(&format!("/revisions/{rev}/revert"));
    assert_eq!(call("POST", &revert, Some(&viewer), None).await.0, 403);
    let cfg = cp.api("/services/web/config/app.yaml");
    assert_eq!(call("PUT", &cfg, Some(&viewer), Some(json!({"a": 1}))).await.0, 403);
    let (_, revs) = call("GET", &cp.api("/revisions"), Some(&viewer), None).await;
    assert_eq!(revs.as_array().unwrap().len(), 1, "the viewer changed nothing: {revs}");

    // Tokens are the admin's: the editor may not list or mint them.
    assert_eq!(call("GET", &cp.api("/tokens"), Some(&editor), None).await.0, 403);
    let new = json!({"name": "ci-bot", "role": "editor"});
    assert_eq!(
        call("POST", &cp.api("/tokens"), Some(&editor), Some(new.clone()))
            .await
            .0,
        403
    );
    let (st, minted) = call("POST", &cp.api("/tokens"), Some("boot-secret"), Some(new.clone())).await;
    assert_eq!(st, 201, "{minted}");
    let bot = minted["token"].as_str().unwrap().to_owned();
    let (st, _) = call("POST", &revert, Some(&bot), None).await;
    assert_eq!(st, 200);
    let (_, revs) = call("GET", &cp.api("/revisions"), Some(&bot), None).await;
    assert_eq!(revs[0]["actor"], "ci-bot");
    let (st, bad) = call(
        "POST",
        &cp.api("/tokens"),
        Some("boot-secret"),
        Some(json!({"name": "x y", "role": "root"})),
    )
    .await;
    assert_eq!(st, 422);
    let fields: Vec<&str> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "role"]);

    // The bootstrap token is an admin named "admin"; listings never show secrets.
    let (st, list) = call("GET", &cp.api("/tokens"), Some("boot-secret"), None).await;
    assert_eq!(st, 200);
    assert!(!list.to_string().contains("ortk_"), "{list}");
    let (ok, out, _) = token_cmd(&data, &["list"]);
    assert!(
        ok && out.contains("alice") && out.contains("editor") && !out.contains("ortk_"),
        "{out}"
    );

    // Revocation through the CLI takes effect on the next request.
    let (ok, _, err) = token_cmd(&data, &["revoke", "--name", "alice"]);
    assert!(ok, "{err}");
    assert_eq!(call("GET", &cp.api("/services"), Some(&editor), None).await.0, 401);
    let (ok, _, err) = token_cmd(&data, &["revoke", "--name", "alice"]);
    assert!(!ok && err.contains("no live token"), "{err}");
}

#[tokio::test]
async fn a_stored_token_alone_closes_the_api_to_anonymous_callers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = ControlPlane::start(&data).await;
    // No token anywhere: open, as before (the server only listens on loopback then).
    assert_eq!(call("GET", &cp.api("/services"), None, None).await.0, 200);
    let viewer = create(&data, "vera", "viewer");
    assert_eq!(call("GET", &cp.api("/services"), None, None).await.0, 401);
    assert_eq!(call("GET", &cp.api("/services"), Some(&viewer), None).await.0, 200);
    // Health, readiness and metrics stay open for probes and scrapers.
    assert_eq!(
        client()
            .get(format!("{}/readyz", cp.base()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{}/metrics", cp.base()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
