//! Several control-plane replicas on one PostgreSQL serve as one.

mod common;
use common::*;
use outrider_testkit::{echo, free_port, wait_until};

#[tokio::test]
async fn a_write_through_replica_a_reaches_a_sidecar_on_replica_b() {
    let db = PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let a = ControlPlane::start_with(&dir.path().join("a"), Some(&db.url), vec![]).await;
    let b = ControlPlane::start_with(&dir.path().join("b"), Some(&db.url), vec![]).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let mut on_b = Sidecar::start(&b.grpc(), "web", "web-b", app_port, &dir.path().join("sb")).await;
    let mut on_a = Sidecar::start(&a.grpc(), "web", "web-a", app_port, &dir.path().join("sa")).await;

    // Both replicas see both sidecars (the registry lives in the store).
    for cp in [&a, &b] {
        wait_until(SOON, || async {
            cp.sidecar_status("default/web-a").await.as_deref() == Some("healthy")
                && cp.sidecar_status("default/web-b").await.as_deref() == Some("healthy")
        })
        .await
        .unwrap();
    }

    let (status, body) = a
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rev = body["revision"].as_u64().unwrap();
    on_b.wait_revision(rev).await;
    on_a.wait_revision(rev).await;
    let codes = on_b.burst(20, None).await;
    assert!((5..=7).contains(&count(&codes, 200)), "{codes:?}");

    // A clean stop on replica A is seen by replica B, and membership re-splits there.
    let (status, body) = b
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules":[{"name":"all","requestsPerSecond":4,"burst":4,"scope":"service"}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_until(SOON, || async { on_b.config_dump().await["serviceShare"] == 0.5 })
        .await
        .unwrap();
    on_a.proc.terminate();
    wait_until(SOON, || async {
        b.sidecar_status("default/web-a").await.as_deref() == Some("disconnected")
    })
    .await
    .unwrap();
    wait_until(SOON, || async { on_b.config_dump().await["serviceShare"] == 1.0 })
        .await
        .unwrap();
}
