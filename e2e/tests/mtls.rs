//! Mutual TLS between sidecars, end to end: real control plane and sidecar processes,
//! a recording app behind `web`, a caller `shop` whose app sends through its outbound
//! port, and curl as the TLS client nobody here wrote.

mod common;

use common::*;
use outrider_testkit::{free_port, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SHOP: &str = "spiffe://outrider.local/ns/default/svc/shop";

struct Mesh {
    cp: ControlPlane,
    web: Sidecar,
    web_app: RecordingApp,
    shop: Sidecar,
    dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(cp_env: &[(&str, &str)]) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let env = cp_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cp = ControlPlane::start_with(&dir.path().join("cp"), None, env).await;
        let (web_app, port) = RecordingApp::start().await;
        let web = Sidecar::start(&cp.grpc(), "web", "web-a", port, &dir.path().join("web")).await;
        let shop = Sidecar::start(&cp.grpc(), "shop", "shop-a", free_port(), &dir.path().join("shop")).await;
        let mesh = Mesh {
            cp,
            web,
            web_app,
            shop,
            dir,
        };
        mesh.until_mtls().await;
        mesh
    }

    /// `n` calls from shop's app to web over one new client connection (so that
    /// handshakes happen throughout, with the newest certificates): counts the 200s
    /// in `ok`, anything else in `failed`.
    async fn calls(&self, n: usize, ok: &mut u32, failed: &mut Vec<String>) {
        let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        for _ in 0..n {
            let r = c
                .get(format!("http://127.0.0.1:{}/", self.shop.outbound_port))
                .header("host", "web")
                .send()
                .await;
            match r.map(|r| r.status().as_u16()) {
                Ok(200) => *ok += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
    }

    fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits until a call from shop to web arrives over mTLS (both certificates issued
    /// and shop's table listing web's identity).
    async fn until_mtls(&self) {
        let r = wait_until(SOON, || async {
            let (status, _) = call_service(&self.shop, "web").await;
            status == 200 && self.web_app.last_peer_identity().as_deref() == Some(SHOP)
        })
        .await;
        if r.is_err() {
            self.shop.proc.print_log_tail(30);
            self.web.proc.print_log_tail(30);
            panic!(
                "shop never reached web over mTLS: {:?}",
                self.web_app.last_peer_identity()
            );
        }
    }
}

/// `curl` over TLS to `port` with `extra` arguments: its exit code and the HTTP status
/// (0 when there was no answer). `-k`: workload certificates carry no DNS names, so
/// curl cannot check the server's; what is tested is the server's check of curl.
/// On a blocking thread: the app that answers runs on this test's runtime.
async fn curl_tls(port: u16, extra: &[&str]) -> (i32, u16) {
    let url = format!("https://127.0.0.1:{port}/");
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .args(&extra)
            .arg(&url)
            .output()
            .expect("curl runs")
    })
    .await
    .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (out.status.code().unwrap_or(-1), status)
}

/// A CA nobody in the mesh trusts, and a leaf it signed claiming shop's identity,
/// written as `dir/foreign.{crt,key}`.
fn foreign_identity(dir: &Path) -> (PathBuf, PathBuf) {
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(SHOP.try_into().unwrap())];
    let leaf = leaf.signed_by(&key, &ca).unwrap();
    let (crt, pem) = (dir.join("foreign.crt"), dir.join("foreign.key"));
    std::fs::write(&crt, leaf.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    (crt, pem)
}

#[tokio::test]
async fn mesh_calls_travel_over_mtls_and_the_app_learns_who_called() {
    let m = Mesh::start(&[]).await;
    // The caller's outbound dialled web's inbound with TLS (the app saw shop's proven
    // identity, which only a TLS connection carries).
    assert_eq!(m.web_app.last_peer_identity().as_deref(), Some(SHOP));
    let dump = m.shop.config_dump().await;
    let endpoint = &dump["destinations"]["services"][0]["endpoints"][0];
    assert_eq!(
        endpoint["identity"], "spiffe://outrider.local/ns/default/svc/web",
        "{dump}"
    );

    // Calls made before shop learnt web's identity were plaintext: count from here.
    let plaintext_before = m.web.metric("outrider_sidecar_plaintext_requests_total").await;
    // Permissive (no policy): a plaintext caller is served, with no identity, and
    // one it claims is removed.
    let r = client()
        .get(format!("{}/", m.web.inbound()))
        .header("x-outrider-peer-identity", SHOP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(m.web_app.last_peer_identity(), None);
    // What an operator reads before going strict: the mode, and the plaintext
    // requests web still receives (this one more; mesh calls come over mTLS).
    let plaintext = m.web.metric("outrider_sidecar_plaintext_requests_total").await;
    assert_eq!(plaintext, plaintext_before + 1);
    let reported = wait_until(SOON, || async {
        let web = m.cp.get_json("/services/web").await;
        web["mtls"] == "permissive" && web["plaintextRequests"] == plaintext
    })
    .await;
    assert!(reported.is_ok(), "{}", m.cp.get_json("/services/web").await);

    // curl presenting shop's own certificate and key (from its state directory) is
    // a proven shop; with no certificate, or one from another CA, the handshake fails
    // and the app hears nothing.
    let shop_state = m.state("shop");
    let (crt, key) = (shop_state.join("identity.crt"), shop_state.join("identity.key"));
    let (code, status) = curl_tls(
        m.web.inbound_port,
        &["--cert", crt.to_str().unwrap(), "--key", key.to_str().unwrap()],
    )
    .await;
    assert_eq!((code, status), (0, 200));
    assert_eq!(m.web_app.last_peer_identity().as_deref(), Some(SHOP));

    let before = m.web_app.requests();
    let (code, status) = curl_tls(m.web.inbound_port, &[]).await;
    assert!(
        code != 0 && status == 0,
        "no client certificate: curl {code}, HTTP {status}"
    );
    let (fcrt, fkey) = foreign_identity(m.dir.path());
    let (code, status) = curl_tls(
        m.web.inbound_port,
        &["--cert", fcrt.to_str().unwrap(), "--key", fkey.to_str().unwrap()],
    )
    .await;
    assert!(
        code != 0 && status == 0,
        "another CA's certificate: curl {code}, HTTP {status}"
    );
    assert_eq!(m.web_app.requests(), before, "no refused caller reached the app");
}

#[tokio::test]
async fn strict_mode_serves_mtls_callers_and_refuses_plaintext_ones() {
    let mut m = Mesh::start(&[]).await;
    let (status, body) = m.cp.put_policy("web", "authorization", r#"{"mtls": "strict"}"#).await;
    assert_eq!(status, 200, "{body}");
    m.web.wait_revision(body["revision"].as_u64().unwrap()).await;

    let before = m.web_app.requests();
    let r = client().get(format!("{}/", m.web.inbound())).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["rule"], "mtls", "{problem}");
    assert_eq!(
        m.web_app.requests(),
        before,
        "the plaintext request never reached the app"
    );

    for _ in 0..20 {
        assert_eq!(call_service(&m.shop, "web").await.0, 200);
    }
    assert_eq!(m.web_app.requests(), before + 20);
    assert_eq!(m.web_app.last_peer_identity().as_deref(), Some(SHOP));
    assert_eq!(m.cp.get_json("/services/web").await["mtls"], "strict");
}

#[tokio::test]
async fn short_lived_certificates_renew_under_traffic_without_a_failed_request() {
    // Four-second certificates: each sidecar renews every 2.4–3.2 s.
    let m = Mesh::start(&[("OUTRIDER_CERT_TTL", "4s")]).await;
    let serial = |name: &str| std::fs::read(m.state(name).join("identity.crt")).unwrap_or_default();
    let mut serials = std::collections::HashSet::new();
    let (mut ok, mut failed) = (0u32, Vec::new());
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        m.calls(10, &mut ok, &mut failed).await;
        serials.insert((serial("web"), serial("shop")));
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(
        serials.len() >= 4,
        "the certificates were renewed several times under traffic ({} pairs seen)",
        serials.len()
    );
    assert_eq!(m.web_app.last_peer_identity().as_deref(), Some(SHOP));
}

#[tokio::test]
async fn with_the_control_plane_down_a_restarted_sidecar_keeps_its_identity_and_mtls_keeps_working() {
    let mut m = Mesh::start(&[]).await;
    m.cp.proc.terminate();
    m.web.proc.terminate();
    m.web.restart().await;
    let r = wait_until(SOON, || async {
        call_service(&m.shop, "web").await.0 == 200 && m.web_app.last_peer_identity().as_deref() == Some(SHOP)
    })
    .await;
    assert!(
        r.is_ok(),
        "the restarted web served shop over mTLS from its saved identity"
    );
}

#[tokio::test]
async fn an_instance_that_cannot_prove_the_listed_identity_receives_nothing() {
    let m = Mesh::start(&[]).await;
    // `api` gets a certificate of its own, then the control plane goes away and web
    // dies, and api's sidecar comes back on web's address: shop's last-known table
    // still lists web there.
    let (api_app, api_port) = RecordingApp::start().await;
    let api_state = m.state("api");
    let mut api = Sidecar::start(&m.cp.grpc(), "api", "api-a", api_port, &api_state).await;
    wait_until(SOON, || async { api_state.join("identity.crt").exists() })
        .await
        .expect("api got a certificate");
    api.proc.terminate();
    let (mut cp, mut web) = (m.cp, m.web);
    cp.proc.terminate();
    web.proc.kill9();
    let web_addr = format!("127.0.0.1:{}", web.inbound_port);
    let _impostor = Sidecar::start_with(
        &cp.grpc(),
        "api",
        "api-a",
        "v1",
        api_port,
        &api_state,
        &[("OUTRIDER_INBOUND_ADDR", web_addr.as_str())],
    )
    .await;
    // Something is there, and it serves: plaintext reaches api's app.
    let direct = client().get(format!("http://{web_addr}/")).send().await.unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(api_app.requests(), 1);

    for _ in 0..5 {
        let (status, _) = call_service(&m.shop, "web").await;
        assert!(status == 502 || status == 503, "shop got {status} from an impostor");
    }
    assert_eq!(api_app.requests(), 1, "no request meant for web reached api");
}

/// `outrider-control-plane ca <args>` on the mesh's store: whether it succeeded, and
/// what it printed.
fn ca(m: &Mesh, args: &[&str]) -> (bool, String) {
    let out = Command::new(outrider_testkit::bin_path("outrider-control-plane"))
        .args(["--data-dir", &m.cp.data_dir.display().to_string(), "ca"])
        .args(args)
        .envs(m.cp.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The certificates of a PEM file, DER (none when it cannot be read).
fn certificates(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read(path).unwrap_or_default();
    x509_parser::pem::Pem::iter_from_buffer(&text)
        .filter_map(|p| p.ok().map(|p| p.contents))
        .collect()
}

/// Whether the leaf in `state`'s identity.crt was signed by the root `root` (DER).
fn signed_by(state: &Path, root: &[u8]) -> bool {
    let Some(leaf) = certificates(&state.join("identity.crt")).into_iter().next() else {
        return false;
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(root).unwrap();
    leaf.verify_signature(Some(root.public_key())).is_ok()
}

#[tokio::test]
async fn a_root_rotation_under_traffic_fails_no_request() {
    // Five-second certificates, so the old root may be retired five seconds after
    // the new one begins to sign.
    let m = std::sync::Arc::new(Mesh::start(&[("OUTRIDER_CERT_TTL", "5s")]).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (m, stop) = (m.clone(), stop.clone());
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                m.calls(5, &mut ok, &mut failed).await;
            }
            (ok, failed)
        }
    });
    let bundle = |name: &str| certificates(&m.state(name).join("trust-bundle.pem"));
    let everywhere = |want: usize| {
        let m = m.clone();
        async move {
            wait_until(Duration::from_secs(30), || async {
                ["web", "shop"]
                    .iter()
                    .all(|n| certificates(&m.state(n).join("trust-bundle.pem")).len() == want)
            })
            .await
        }
    };

    let (added, text) = ca(&m, &["add-root"]);
    assert!(added, "{text}");
    everywhere(2).await.expect("both sidecars trust the new root");
    let new_root = bundle("web")[1].clone();

    let (activated, text) = ca(&m, &["activate-root"]);
    assert!(activated, "{text}");
    // Too early: a certificate of the old root may still be in use.
    let (early, text) = ca(&m, &["retire-root", "--generation", "1"]);
    assert!(!early && text.contains("may still have signed certificates"), "{text}");
    wait_until(Duration::from_secs(30), || async {
        ["web", "shop"].iter().all(|n| signed_by(&m.state(n), &new_root))
    })
    .await
    .expect("both sidecars hold a certificate from the new root");

    wait_until(Duration::from_secs(30), || async {
        ca(&m, &["retire-root", "--generation", "1"]).0
    })
    .await
    .expect("the old root can be retired once its certificates have expired");
    everywhere(1).await.expect("both sidecars dropped the old root");
    assert_eq!(bundle("shop")[0], new_root);
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 50, "traffic ran throughout ({ok} requests)");
    let (_, roots) = ca(&m, &["roots"]);
    assert!(
        roots.contains("signing") && !roots.lines().any(|l| l.starts_with("1 ")),
        "{roots}"
    );
}

/// The kubelet's probes under strict mTLS: sent to the app port they would be
/// plaintext and refused, so the injector moves them to the health port, where the
/// sidecar makes them from inside the Pod (here: `OUTRIDER_APP_PROBES` as the injector
/// writes it).
#[tokio::test]
async fn under_strict_mtls_the_probes_the_sidecar_makes_for_the_kubelet_reach_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(&dir.path().join("cp"), None, Vec::new()).await;
    let (app, port) = RecordingApp::start().await;
    let probes = format!(
        r#"{{"web/readyz": {{"port": {port}, "path": "/ready", "scheme": "HTTP", "httpHeaders": [], "timeoutSeconds": 1}}}}"#
    );
    let mut web = Sidecar::start_with(
        &cp.grpc(),
        "web",
        "web-a",
        "v1",
        port,
        &dir.path().join("web"),
        &[("OUTRIDER_APP_PROBES", probes.as_str())],
    )
    .await;
    let (status, body) = cp.put_policy("web", "authorization", r#"{"mtls": "strict"}"#).await;
    assert_eq!(status, 200, "{body}");
    web.wait_revision(body["revision"].as_u64().unwrap()).await;

    let before = app.requests();
    let r = client().get(format!("{}/ready", web.inbound())).send().await.unwrap();
    assert_eq!(r.status(), 403, "a plaintext probe of the app port is refused");
    assert_eq!(app.requests(), before);

    let r = client()
        .get(format!("{}/app-health/web/readyz", web.health()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(app.requests(), before + 1, "the probe reached the app");
    let r = client()
        .get(format!("{}/app-health/web/livez", web.health()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "only the probes the Pod has");
}
