//! Sidecars register themselves from the environment and leave cleanly.

mod common;
use common::*;
use outrider_testkit::{echo, free_port, wait_until};
use std::time::Duration;

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
    // No token, and tokens that are empty or blank: those count as none.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, bool);
    let cases: [Case<'_>; 3] = [
        (&[], "OUTRIDER_API_TOKEN", false),
        (&[("OUTRIDER_API_TOKEN", "   ")], "OUTRIDER_API_TOKEN", false),
        (
            &[("OUTRIDER_API_TOKEN", "t0ken"), ("OUTRIDER_REGISTRATION_TOKEN", "")],
            "OUTRIDER_REGISTRATION_TOKEN",
            true,
        ),
    ];
    for (env, named, public_grpc) in cases {
        let dir = tempfile::tempdir().unwrap();
        let http = format!("0.0.0.0:{}", free_port());
        let grpc = format!("{}:{}", if public_grpc { "0.0.0.0" } else { "127.0.0.1" }, free_port());
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
            env,
        );
        let status = p
            .wait_exit(std::time::Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{env:?}: exits instead of listening"));
        assert!(!status.success(), "{env:?}");
        assert!(p.log().contains(named), "{env:?}: the error names {named}: {}", p.log());
    }
}

async fn who_answers(caller: &Sidecar) -> (u16, String) {
    call_service(caller, "web").await
}

#[tokio::test]
async fn a_second_sidecar_with_a_live_pods_name_is_refused_and_the_mesh_keeps_routing_to_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let (real_port, client_port, other_port) = (free_port(), free_port(), free_port());
    let _real_app = outrider_testkit::echo_with(real_port, "real", &[]);
    let _client_app = echo(client_port);
    let _other_app = outrider_testkit::echo_with(other_port, "impostor", &[]);
    let mut real = Sidecar::start(&cp.grpc(), "web", "web-1", real_port, &dir.path().join("real")).await;
    let caller = Sidecar::start(
        &cp.grpc(),
        "client",
        "client-1",
        client_port,
        &dir.path().join("client"),
    )
    .await;
    for id in [real.id(), caller.id()] {
        wait_until(SOON, || async {
            cp.sidecar_status(&id).await.as_deref() == Some("healthy")
        })
        .await
        .unwrap();
    }
    wait_until(SOON, || async {
        who_answers(&caller).await == (200, "real".to_owned())
    })
    .await
    .expect("the caller reaches web");

    // Another process registers with the same pod name (and so the same id).
    let mut impostor = Sidecar::start(&cp.grpc(), "web", "web-1", other_port, &dir.path().join("impostor")).await;
    wait_until(SOON, || async {
        impostor.proc.log().contains("another live sidecar is registered")
    })
    .await
    .expect("the second one is told why it is refused");
    for _ in 0..30 {
        assert_eq!(who_answers(&caller).await, (200, "real".to_owned()));
    }
    let row = cp.sidecar_row(&real.id()).await.unwrap();
    assert_eq!(row["status"], "healthy", "{row}");
    assert_eq!(
        row["inboundPort"], real.inbound_port,
        "the registration still describes the first"
    );
    assert_eq!(impostor.config_dump().await["controlPlaneConnected"], false);

    // Once the first is gone, the second (still retrying) takes the name over.
    real.proc.terminate();
    wait_until(Duration::from_secs(30), || async {
        who_answers(&caller).await == (200, "impostor".to_owned())
    })
    .await
    .expect("the retrying sidecar registers once the name is free");
    let row = cp.sidecar_row(&real.id()).await.unwrap();
    assert_eq!(row["inboundPort"], impostor.inbound_port, "{row}");
    impostor.proc.terminate();
}
