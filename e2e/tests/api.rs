//! The REST API refuses bad input clearly and loses nothing.

mod common;
use common::*;
use serde_json::Value;

async fn latest_revision(cp: &ControlPlane) -> u64 {
    cp.get_json("/revisions")
        .await
        .as_array()
        .unwrap()
        .first()
        .map_or(0, |r| r["revision"].as_u64().unwrap())
}

async fn put(
    cp: &ControlPlane,
    path: &str,
    body: impl Into<reqwest::Body>,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut r = client()
        .put(cp.api(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(m) = if_match {
        r = r.header("if-match", m);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn invalid_documents_get_problem_json_naming_the_field_and_leave_no_revision() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let cases = [
        (
            r#"{"rules":[{"name":"a","requestsPerSecond":-5}]}"#,
            422,
            Some("rules[0].requestsPerSecond"),
        ),
        (
            r#"{"rules":[{"name":"a","requestsPerSecond":5,"key":"cookie:x"}]}"#,
            422,
            Some("rules[0].key"),
        ),
        (
            r#"{"rules":[{"name":"a","requestsPerSecond":"five"}]}"#,
            422,
            Some("rules[0].requestsPerSecond"),
        ),
        (r#"{"rules":"none"}"#, 422, Some("rules")),
        (r#"{"rules":[{"name":"a","#, 400, None),
    ];
    for (doc, status, field) in cases {
        let r = put(&cp, "/services/web/policies/rate-limit", doc, None).await;
        assert_eq!(r.status().as_u16(), status, "{doc}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], status);
        if let Some(field) = field {
            let fields: Vec<&str> = body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap())
                .collect();
            assert!(fields.contains(&field), "{doc}: {body}");
        }
    }
    assert_eq!(latest_revision(&cp).await, 0, "nothing was stored");
    let r = client()
        .get(cp.api("/services/web/policies/rate-limit"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn stale_if_match_gets_412_and_keeps_the_newer_document() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let path = "/services/web/policies/rate-limit";
    let r = put(&cp, path, r#"{"rules":[{"name":"a","requestsPerSecond":1}]}"#, None).await;
    let etag1 = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = put(
        &cp,
        path,
        r#"{"rules":[{"name":"a","requestsPerSecond":2}]}"#,
        Some(&etag1),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = put(
        &cp,
        path,
        r#"{"rules":[{"name":"a","requestsPerSecond":3}]}"#,
        Some(&etag1),
    )
    .await;
    assert_eq!(r.status(), 412);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["currentRevision"], 2);
    let current = cp.get_json(path).await;
    assert_eq!(current["document"]["rules"][0]["requestsPerSecond"], 2.0);
    assert_eq!(latest_revision(&cp).await, 2);
    let r = client()
        .delete(cp.api(path))
        .header("if-match", etag1.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412, "a stale delete is refused too");
}

#[tokio::test]
async fn oversized_bodies_unknown_things_and_dry_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let big = vec![b' '; 1024 * 1024 + 10];
    let r = put(&cp, "/services/web/config/big.txt", big, None).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    let r = put(&cp, "/services/web/policies/ratelimit", "{}", None).await;
    assert_eq!(r.status(), 404, "unknown kind");
    let r = client().get(cp.api("/services/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = put(&cp, "/services/Bad_Name/policies/rate-limit", r#"{"rules":[]}"#, None).await;
    assert_eq!(r.status(), 422);

    let r = put(
        &cp,
        "/services/web/policies/rate-limit?dryRun=true",
        r#"{"rules":[{"name":"a","requestsPerSecond":1}]}"#,
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["dryRun"], true);
    assert_eq!(latest_revision(&cp).await, 0, "a dry run stores nothing");

    // History and revert through the API.
    put(
        &cp,
        "/services/web/policies/rate-limit",
        r#"{"rules":[{"name":"a","requestsPerSecond":1}]}"#,
        None,
    )
    .await;
    put(
        &cp,
        "/services/web/policies/rate-limit",
        r#"{"rules":[{"name":"a","requestsPerSecond":9}]}"#,
        None,
    )
    .await;
    let rec = cp.get_json("/revisions/2").await;
    assert_eq!(rec["before"]["rules"][0]["requestsPerSecond"], 1.0);
    assert_eq!(rec["after"]["rules"][0]["requestsPerSecond"], 9.0);
    let r = client().post(cp.api("/revisions/2/revert")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let now = cp.get_json("/services/web/policies/rate-limit").await;
    assert_eq!(now["document"]["rules"][0]["requestsPerSecond"], 1.0);
    assert_eq!(now["revision"], 3);
    let services = cp.get_json("/services").await;
    assert_eq!(services[0]["name"], "web");
}

#[tokio::test]
async fn api_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(
        &dir.path().join("cp"),
        None,
        vec![("OUTRIDER_API_TOKEN".into(), "tok-123".into())],
    )
    .await;
    let r = client().get(cp.api("/services")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(cp.api("/services"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(cp.api("/services"))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .put(cp.api("/services/web/policies/rate-limit"))
        .bearer_auth("tok-123")
        .header("content-type", "application/json")
        .body(r#"{"rules":[{"name":"a","requestsPerSecond":1}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hist = client()
        .get(cp.api("/revisions"))
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(hist[0]["actor"], "admin");
    assert!(!cp.proc.log().contains("tok-123"), "the token never reaches the logs");
}
