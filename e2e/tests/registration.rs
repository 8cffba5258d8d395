//! Sidecars register themselves from the environment and leave cleanly.

mod common;
use common::*;
use outrider_testkit::{echo, free_port, wait_until};

#[tokio::test]
async fn sidecar_registers_healthy_and_shows_disconnected_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let mut sc = Sidecar::start(&cp.grpc(), "web", "web-1", app_port, &dir.path().join("sc")).await;

    wait_until(SOON, || async {
        cp.sidecar_status(&sc.id()).await.as_deref() == Some("healthy")
    })
    .await
    .expect("sidecar shows healthy");
    let row = cp.get_json("/sidecars").await[0].clone();
    assert_eq!(row["service"], "web");
    assert_eq!(row["version"], "v1");
    assert_eq!(row["namespace"], "default");
    assert_eq!(row["inboundPort"], sc.inbound_port);
    // Without policy the sidecar still gets a snapshot and is ready.
    outrider_testkit::wait_for_http_ok(&format!("{}/readyz", sc.admin()), SOON)
        .await
        .unwrap();

    assert!(sc.proc.terminate().success(), "sidecar exits 0 on SIGTERM");
    wait_until(SOON, || async {
        cp.sidecar_status(&sc.id()).await.as_deref() == Some("disconnected")
    })
    .await
    .expect("sidecar shows disconnected after a clean stop");
}

#[tokio::test]
async fn sidecar_without_the_registration_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(
        &dir.path().join("cp"),
        None,
        vec![("OUTRIDER_REGISTRATION_TOKEN".into(), "s3cret-registration".into())],
    )
    .await;
    let app_port = free_port();
    let _app = echo(app_port);
    let bad = Sidecar::start_with(
        &cp.grpc(),
        "web",
        "bad",
        "v1",
        app_port,
        &dir.path().join("a"),
        &[("OUTRIDER_TOKEN", "wrong")],
    )
    .await;
    let good = Sidecar::start_with(
        &cp.grpc(),
        "web",
        "good",
        "v1",
        app_port,
        &dir.path().join("b"),
        &[("OUTRIDER_TOKEN", "s3cret-registration")],
    )
    .await;
    wait_until(SOON, || async {
        cp.sidecar_status(&good.id()).await.as_deref() == Some("healthy")
    })
    .await
    .unwrap();
    assert_eq!(
        cp.sidecar_status(&bad.id()).await,
        None,
        "a sidecar with a wrong token never registers"
    );
    assert!(!bad.proc.log().contains("s3cret-registration") && !good.proc.log().contains("s3cret-registration"));
}

#[test]
fn control_plane_refuses_a_public_address_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let http = format!("0.0.0.0:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut p = outrider_testkit::Proc::spawn(
        outrider_testkit::bin_path("outrider-control-plane"),
        &[
            "--http-addr",
            &http,
            "--grpc-addr",
            &grpc,
            "--data-dir",
            &dir.path().display().to_string(),
        ],
        &[],
    );
    let status = p
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("exits instead of listening");
    assert!(!status.success());
    assert!(
        p.log().contains("OUTRIDER_API_TOKEN"),
        "the error names the missing token: {}",
        p.log()
    );
}
