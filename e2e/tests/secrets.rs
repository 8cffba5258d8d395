//! Secrets end to end: PUT through the API, a private file in the owning service's
//! sidecars' secrets directory (and nobody else's), updates and deletes following,
//! and the value nowhere else: not in `/config_dump`, `snapshot.pb`, the API's
//! answers or either process's log. A plaintext stream from another host gets none.

mod common;
use common::*;
use outrider_testkit::{echo, free_port, wait_until};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const FIRST: &str = "e2e-first-value-7c1f9a";
const SECOND: &str = "e2e-second-value-3b8d2e";

async fn put_secret(cp: &ControlPlane, service: &str, name: &str, value: &str) -> u64 {
    let r = client()
        .put(cp.api(&format!("/services/{service}/secrets/{name}")))
        .header("content-type", "text/plain")
        .body(value.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let meta: serde_json::Value = r.json().await.unwrap();
    assert_eq!(meta["size"], value.len());
    meta["revision"].as_u64().unwrap()
}

async fn file_becomes(path: &Path, want: Option<&str>) {
    let r = wait_until(SOON, || async {
        match want {
            Some(v) => std::fs::read_to_string(path).is_ok_and(|t| t == v),
            None => !path.exists(),
        }
    })
    .await;
    r.unwrap_or_else(|e| panic!("{} never became {want:?}: {e}", path.display()));
}

fn assert_nowhere(values: &[&str], places: &[(&str, String)]) {
    for (what, text) in places {
        for v in values {
            assert!(!text.contains(v), "{what} contains a secret value");
        }
    }
}

#[tokio::test]
async fn a_secret_reaches_only_its_services_sidecars_as_a_private_file_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let (web_state, api_state) = (dir.path().join("web"), dir.path().join("api"));
    let mut web = Sidecar::start(&cp.grpc(), "web", "web-a", app_port, &web_state).await;
    let mut api = Sidecar::start(&cp.grpc(), "api", "api-a", app_port, &api_state).await;
    web.wait_revision(0).await;
    api.wait_revision(0).await;

    let rev = put_secret(&cp, "web", "db-password", FIRST).await;
    let file = web_state.join("secrets").join("db-password");
    file_becomes(&file, Some(FIRST)).await;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    web.wait_revision(rev).await;
    // Another service's secret for api makes api's sidecar take a snapshot too, so
    // its secrets directory is known to be up to date when web's file is not in it.
    let api_rev = put_secret(&cp, "api", "other", "api-only").await;
    file_becomes(&api_state.join("secrets").join("other"), Some("api-only")).await;
    api.wait_revision(api_rev).await;
    assert!(!api_state.join("secrets").join("db-password").exists());
    assert!(!web_state.join("secrets").join("other").exists());

    let rev = put_secret(&cp, "web", "db-password", SECOND).await;
    file_becomes(&file, Some(SECOND)).await;
    web.wait_revision(rev).await;
    let snapshot_pb = std::fs::read(web_state.join("snapshot.pb")).unwrap();
    let dump = web.config_dump().await.to_string();
    let listing = cp.get_json("/services/web/secrets").await;
    assert_eq!(listing[0]["name"], "db-password");
    assert_eq!(listing[0]["size"], SECOND.len());
    let history = cp.get_json(&format!("/revisions/{rev}")).await;

    // The CLI: a Secret envelope whose value comes from a file next to it, a
    // metadata table, and a delete.
    let envelope = dir.path().join("secret.yaml");
    std::fs::write(dir.path().join("api-key.txt"), FIRST).unwrap();
    std::fs::write(
        &envelope,
        "kind: Secret\nservice: web\nname: api-key\nvalueFrom: {file: api-key.txt}\n",
    )
    .unwrap();
    let (code, out, err) = ctl(&cp, &["apply", "-f", envelope.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Secret web/api-key set"), "{out}");
    file_becomes(&web_state.join("secrets").join("api-key"), Some(FIRST)).await;
    let (code, table, err) = ctl(&cp, &["get", "secrets", "web"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("api-key") && table.contains("db-password"), "{table}");
    let (code, _, err) = ctl(&cp, &["delete", "secret", "web", "api-key"]);
    assert_eq!(code, 0, "{err}");
    assert_nowhere(&[FIRST, SECOND], &[("outriderctl's output", format!("{out}{table}"))]);

    let r = client()
        .delete(cp.api("/services/web/secrets/db-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    file_becomes(&file, None).await;
    file_becomes(&web_state.join("secrets").join("api-key"), None).await;

    assert_nowhere(
        &[FIRST, SECOND],
        &[
            ("snapshot.pb", String::from_utf8_lossy(&snapshot_pb).into_owned()),
            ("/config_dump", dump),
            ("GET /services/web/secrets", listing.to_string()),
            ("GET /revisions/{n}", history.to_string()),
            ("the control plane's log", cp.proc.log()),
            ("web's sidecar log", web.proc.log()),
            ("api's sidecar log", api.proc.log()),
        ],
    );
}

/// This machine's address on its default route, if it has one besides loopback.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route and source.
    socket.connect("192.0.2.254:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn a_plaintext_stream_from_another_host_gets_no_secrets_and_keeps_its_files() {
    let Some(ip) = non_loopback_address() else {
        // The rule itself is proven by grpc::tests::secrets_travel_only_over_tls_or_from_loopback.
        eprintln!("no non-loopback address on this machine: skipping the network half of the rule");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = "e2e-registration-token";
    let env = vec![("OUTRIDER_REGISTRATION_TOKEN".to_owned(), token.to_owned())];
    let cp = ControlPlane::start_on("0.0.0.0", &dir.path().join("cp"), None, env).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let rev = put_secret(&cp, "web", "db-password", FIRST).await;

    let extra = [("OUTRIDER_TOKEN", token)];
    let (near_state, far_state) = (dir.path().join("near"), dir.path().join("far"));
    let mut near = Sidecar::start_with(&cp.grpc(), "web", "web-near", "v1", app_port, &near_state, &extra).await;
    let far_url = format!("http://{}", std::net::SocketAddr::new(ip, cp.grpc_port));
    let mut far = Sidecar::start_with(&far_url, "web", "web-far", "v1", app_port, &far_state, &extra).await;
    near.wait_revision(rev).await;
    far.wait_revision(rev).await;
    assert_eq!(
        std::fs::read_to_string(near_state.join("secrets").join("db-password")).unwrap(),
        FIRST
    );
    assert!(!far_state.join("secrets").join("db-password").exists());
    let said = wait_until(SOON, || async {
        cp.proc
            .log()
            .contains("secrets are sent only over TLS or from a loopback address")
            && far.proc.log().contains("the control plane sends no secrets")
    })
    .await;
    if said.is_err() {
        cp.proc.print_log_tail(30);
        far.proc.print_log_tail(30);
        panic!("the withheld secrets are not reported on both sides");
    }
    // The far sidecar still follows policy: it is the secrets alone that stay home.
    let (status, body) = cp
        .put_policy(
            "web",
            "rate-limit",
            r#"{"rules": [{"name": "all", "requestsPerSecond": 100}]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    far.wait_revision(body["revision"].as_u64().unwrap()).await;
    assert!(!far_state.join("secrets").join("db-password").exists());
    assert_nowhere(&[FIRST], &[("the far sidecar's log", far.proc.log())]);
}
