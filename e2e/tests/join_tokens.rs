//! Per-service join tokens: a token for `web` registers `web` and nothing else; once
//! one exists, registration needs a token; revoking one stops new registrations.

mod common;
use common::*;
use outrider_testkit::{bin_path, echo, free_port, wait_until, Proc};
use std::path::Path;
use std::time::Duration;

/// `outrider-control-plane join-token …` on the control plane's own store.
fn join_token(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin_path("outrider-control-plane"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("join-token")
        .args(args)
        .env_remove("OUTRIDER_DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A sidecar with its app (kept alive as long as the pair is).
async fn sidecar(cp: &ControlPlane, dir: &Path, service: &str, pod: &str, token: &str) -> (Sidecar, Proc) {
    let port = free_port();
    let app = echo(port);
    let env = [("OUTRIDER_TOKEN", token)];
    let s = Sidecar::start_with(&cp.grpc(), service, pod, "v1", port, &dir.join(pod), &env).await;
    (s, app)
}

async fn refused(cp: &ControlPlane, s: &mut Sidecar, why: &str) {
    wait_until(SOON, || async { s.proc.log().contains(why) })
        .await
        .unwrap_or_else(|_| panic!("{} is not refused with {why:?}:\n{}", s.id(), s.proc.log_tail(20)));
    assert!(
        cp.sidecar_row(&s.id()).await.is_none(),
        "{} must not be registered",
        s.id()
    );
}

async fn registered(cp: &ControlPlane, s: &Sidecar) {
    let id = s.id();
    wait_until(SOON, || async {
        cp.sidecar_status(&id).await.as_deref() == Some("healthy")
    })
    .await
    .unwrap_or_else(|e| panic!("{id} never registered: {e}"));
}

#[tokio::test]
async fn a_join_token_registers_its_own_service_only_and_revoking_it_stops_new_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = ControlPlane::start(&data).await;

    // Created with the binary on the running control plane's store: the bare token on stdout.
    let (ok, web_token, err) = join_token(&data, &["create", "--service", "web", "--name", "web-deploy"]);
    assert!(ok, "{err}");
    let web_token = web_token.trim().to_owned();
    assert!(web_token.starts_with("orjt_"), "{web_token:?}");
    assert!(err.contains("web-deploy"), "{err}");

    let (web, _web_app) = sidecar(&cp, dir.path(), "web", "web-1", &web_token).await;
    registered(&cp, &web).await;
    let (mut posing, _posing_app) = sidecar(&cp, dir.path(), "api", "api-1", &web_token).await;
    refused(&cp, &mut posing, r#"registers service \"web\", not \"api\""#).await;
    let (mut anonymous, _anonymous_app) = sidecar(&cp, dir.path(), "web", "web-2", "").await;
    refused(&cp, &mut anonymous, "a registration token is required").await;
    let (mut forged, _forged_app) = sidecar(&cp, dir.path(), "web", "web-3", "orjt_0000").await;
    refused(&cp, &mut forged, "invalid registration token").await;

    // The same through the REST API: the secret is in the creating answer only.
    let http = client();
    let r = http
        .post(cp.api("/join-tokens"))
        .json(&serde_json::json!({"service": "api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    assert_eq!(created["service"], "api");
    let api_token = created["token"].as_str().unwrap().to_owned();
    let api_name = created["name"].as_str().unwrap().to_owned();
    assert!(api_name.starts_with("api-"), "{created}");
    let listed = cp.get_json("/join-tokens").await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.iter().all(|t| t.get("token").is_none()),
        "never a secret: {listed:?}"
    );
    let (_, list_out, _) = join_token(&data, &["list"]);
    assert!(
        list_out.contains("web-deploy") && list_out.contains(&api_name),
        "{list_out}"
    );
    assert!(!list_out.contains(&api_token), "{list_out}");

    let (api, _api_app) = sidecar(&cp, dir.path(), "api", "api-2", &api_token).await;
    registered(&cp, &api).await;

    // Revoked: no new registration with it; the stream already open stays.
    let r = http
        .delete(cp.api(&format!("/join-tokens/{api_name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (mut late, _late_app) = sidecar(&cp, dir.path(), "api", "api-3", &api_token).await;
    refused(&cp, &mut late, "invalid registration token").await;
    assert_eq!(cp.sidecar_status(&api.id()).await.as_deref(), Some("healthy"));
    let r = http
        .delete(cp.api(&format!("/join-tokens/{api_name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "revoked already");
    let r = http
        .post(cp.api("/join-tokens"))
        .json(&serde_json::json!({"service": "Not A Service"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}

#[test]
fn a_public_grpc_port_is_allowed_with_join_tokens_alone_and_refused_without_any() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let start = |data: &Path| {
        let grpc = format!("0.0.0.0:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let p = Proc::spawn(
            bin_path("outrider-control-plane"),
            &[
                "--grpc-addr",
                &grpc,
                "--http-addr",
                &http,
                "--data-dir",
                &data.display().to_string(),
            ],
            &[],
        );
        (p, http)
    };
    let (mut bare, _) = start(&data);
    let status = bare
        .wait_exit(Duration::from_secs(20))
        .expect("exits instead of serving");
    assert!(!status.success());
    assert!(
        bare.log().contains("OUTRIDER_REGISTRATION_TOKEN or a join token"),
        "{}",
        bare.log()
    );

    let (ok, _, err) = join_token(&data, &["create", "--service", "web"]);
    assert!(ok, "{err}");
    let (mut served, http) = start(&data);
    let ready = outrider_testkit::wait_for_port(
        http.rsplit(':').next().unwrap().parse().unwrap(),
        Duration::from_secs(20),
    );
    assert!(ready.is_ok() && served.is_running(), "{}", served.log());
    served.terminate();
}
