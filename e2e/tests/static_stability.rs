//! The control plane going away never breaks traffic (`docs/reference.md`, Static stability).

mod common;
use common::*;
use outrider_testkit::{echo, free_port, wait_until};

#[tokio::test]
async fn sidecar_keeps_enforcing_through_control_plane_loss_and_its_own_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let mut sc = Sidecar::start(&cp.grpc(), "web", "web-1", app_port, &dir.path().join("sc")).await;
    let (status, body) = cp
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules":[{"name":"all","requestsPerSecond":1,"burst":3}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rev = body["revision"].as_u64().unwrap();
    sc.wait_revision(rev).await;

    cp.proc.kill9();
    wait_until(SOON, || async {
        sc.config_dump().await["controlPlaneConnected"] == false
    })
    .await
    .unwrap();
    let codes = sc.burst(10, None).await;
    assert!(
        (3..=4).contains(&count(&codes, 200)),
        "still enforcing after kill -9: {codes:?}"
    );

    // Restart the sidecar while the control plane is still down.
    sc.proc.terminate();
    sc.restart().await;
    outrider_testkit::wait_for_http_ok(&format!("{}/readyz", sc.admin()), SOON)
        .await
        .expect("ready from disk");
    let dump = sc.config_dump().await;
    assert_eq!(dump["source"], "persisted");
    assert_eq!(dump["revision"], rev);
    let codes = sc.burst(10, None).await;
    assert!(
        (3..=4).contains(&count(&codes, 200)),
        "enforces the persisted policy: {codes:?}"
    );

    // Control plane back: the sidecar reconnects on its own and shows healthy.
    cp.restart().await;
    wait_until(SOON, || async {
        cp.sidecar_status(&sc.id()).await.as_deref() == Some("healthy")
    })
    .await
    .expect("reconnected");
    wait_until(SOON, || async { sc.config_dump().await["source"] == "control-plane" })
        .await
        .unwrap();
    assert_eq!(sc.config_dump().await["revision"], rev);
}

#[tokio::test]
async fn embedded_store_keeps_policies_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("cp")).await;
    let (status, _) = cp
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules":[{"name":"all","requestsPerSecond":7}]}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert!(cp.proc.terminate().success(), "control plane exits 0 on SIGTERM");
    cp.restart().await;
    let p = cp.get_json("/services/web/policies/rate-limit").await;
    assert_eq!(p["document"]["rules"][0]["requestsPerSecond"], 7.0);
    assert_eq!(p["revision"], 1);
    assert!(dir.path().join("cp/outrider.db").exists());
}

#[tokio::test]
async fn unreachable_app_gets_502_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let sc = Sidecar::start(&cp.grpc(), "web", "web-1", free_port(), &dir.path().join("sc")).await;
    let r = client().get(format!("{}/", sc.inbound())).send().await.unwrap();
    assert_eq!(r.status(), 502);
}
