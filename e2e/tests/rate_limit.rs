//! A rate-limit policy written through the API is enforced by every sidecar.

mod common;
use common::*;
use outrider_testkit::{echo, free_port, wait_until};

const FIVE: &str = r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5}]}"#;

#[tokio::test]
async fn put_is_applied_by_every_sidecar_and_limits_thirty_rapid_requests_to_about_five() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let mut a = Sidecar::start(&cp.grpc(), "web", "web-a", app_port, &dir.path().join("a")).await;
    let mut b = Sidecar::start(&cp.grpc(), "web", "web-b", app_port, &dir.path().join("b")).await;
    a.wait_revision(0).await;

    let (status, body) = cp.put_policy("web", "rate-limit", FIVE).await;
    assert_eq!(status, 200, "{body}");
    let rev = body["revision"].as_u64().unwrap();
    a.wait_revision(rev).await;
    b.wait_revision(rev).await;
    assert_eq!(a.config_dump().await["rateLimit"]["rules"][0]["requestsPerSecond"], 5.0);

    let codes = a.burst(30, None).await;
    let ok = count(&codes, 200);
    assert!((5..=7).contains(&ok), "about 5 of 30 pass: {codes:?}");
    assert_eq!(ok + count(&codes, 429), 30, "{codes:?}");

    let r = client().get(format!("{}/", a.inbound())).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(r.headers().contains_key("ratelimit"));
    assert!(r.headers()["ratelimit-policy"].to_str().unwrap().contains("\"all\""));
    let metrics = client()
        .get(format!("{}/metrics", a.admin()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outrider_sidecar_rate_limited_total"), "{metrics}");
}

#[tokio::test]
async fn header_keys_keep_separate_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let mut a = Sidecar::start(&cp.grpc(), "web", "web-a", app_port, &dir.path().join("a")).await;
    let (status, body) = cp
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules":[{"name":"per-client","key":"header:x-client-id","requestsPerSecond":1,"burst":3}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    a.wait_revision(body["revision"].as_u64().unwrap()).await;

    let alice = a.burst(10, Some(("x-client-id", "alice"))).await;
    let bob = a.burst(10, Some(("x-client-id", "bob"))).await;
    assert!((3..=4).contains(&count(&alice, 200)), "{alice:?}");
    assert!(
        (3..=4).contains(&count(&bob, 200)),
        "bob has a bucket of his own: {bob:?}"
    );
}

#[tokio::test]
async fn service_scope_splits_the_burst_over_healthy_instances() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let mut a = Sidecar::start(&cp.grpc(), "web", "web-a", app_port, &dir.path().join("a")).await;
    let mut b = Sidecar::start(&cp.grpc(), "web", "web-b", app_port, &dir.path().join("b")).await;
    let (status, body) = cp
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules":[{"name":"all","requestsPerSecond":1,"burst":10,"scope":"service"}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rev = body["revision"].as_u64().unwrap();
    a.wait_revision(rev).await;
    b.wait_revision(rev).await;
    for s in [&a, &b] {
        wait_until(SOON, || async { s.config_dump().await["serviceShare"] == 0.5 })
            .await
            .expect("both see a half share");
    }
    let total = count(&a.burst(15, None).await, 200) + count(&b.burst(15, None).await, 200);
    assert!(
        (10..=12).contains(&total),
        "about the configured burst in total, got {total}"
    );

    // One instance leaves: the other gets the whole rate again.
    b.proc.terminate();
    wait_until(SOON, || async { a.config_dump().await["serviceShare"] == 1.0 })
        .await
        .expect("re-split after a leave");
}
