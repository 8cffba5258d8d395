//! TLS on the control plane's ports and for every client of them, with the real
//! binaries: a CA and a certificate for 127.0.0.1 made here (rcgen), the control
//! plane given `--tls-cert`/`--tls-key`, sidecars and `outriderctl` given the CA
//! (or not), and an https log sink.

mod common;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use common::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrider_testkit::{bin_path, echo, free_port, wait_for, wait_until, Proc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tower::ServiceExt as _;

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`,
/// written as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn create(dir: &Path, name: &str) -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let write = |file: &str, body: &str| {
            let p = dir.join(format!("{name}-{file}"));
            std::fs::write(&p, body).unwrap();
            p
        };
        Self {
            ca: write("ca.pem", &ca.pem()),
            cert: write("cert.pem", &cert.pem()),
            key: write("key.pem", &key.serialize_pem()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client that trusts this CA only.
    fn client(&self) -> reqwest::Client {
        tls_client(&std::fs::read(&self.ca).unwrap(), None)
    }
}

/// A control plane serving both ports over TLS.
struct TlsControlPlane {
    proc: Proc,
    grpc_port: u16,
    http_port: u16,
    /// Trusts the control plane's certificate.
    client: reqwest::Client,
}

impl TlsControlPlane {
    /// With `pki`'s certificate (`--tls-cert`/`--tls-key`).
    async fn start(dir: &Path, pki: &Pki) -> Self {
        let (cert, key) = (pki.cert.display().to_string(), pki.key.display().to_string());
        Self::start_with(
            dir,
            &[("OUTRIDER_TLS_CERT", &cert), ("OUTRIDER_TLS_KEY", &key)],
            pki.client(),
        )
        .await
    }

    /// With the TLS settings in `env`, waiting until `client` gets `/readyz` over https.
    async fn start_with(dir: &Path, env: Env<'_>, client: reqwest::Client) -> Self {
        let (grpc_port, http_port) = (free_port(), free_port());
        let (grpc, http) = (format!("127.0.0.1:{grpc_port}"), format!("127.0.0.1:{http_port}"));
        let data = dir.join("cp").display().to_string();
        let mut all_env = vec![("OUTRIDER_LOG", "info")];
        all_env.extend_from_slice(env);
        let proc = Proc::spawn(
            bin_path("outrider-control-plane"),
            &["--grpc-addr", &grpc, "--http-addr", &http, "--data-dir", &data],
            &all_env,
        );
        let ready = format!("https://127.0.0.1:{http_port}/readyz");
        let up = wait_until(SOON, || async {
            client.get(&ready).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        if let Err(e) = up {
            proc.print_log_tail(50);
            panic!("control plane not ready over https: {e}");
        }
        Self {
            proc,
            grpc_port,
            http_port,
            client,
        }
    }

    fn api(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/api/v1{path}", self.http_port)
    }

    fn grpc(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.grpc_port)
    }

    /// A `web` sidecar (pod `pod`, with its own echo app) that verifies this control
    /// plane with the CA file `ca`.
    async fn sidecar(&self, dir: &Path, pod: &str, ca: &Path) -> (Sidecar, Proc) {
        let app_port = free_port();
        let app = echo(app_port);
        let ca = ca.display().to_string();
        let state = dir.join(pod);
        let extra = [("OUTRIDER_CA_FILE", ca.as_str())];
        let sidecar = Sidecar::start_with(&self.grpc("https"), "web", pod, "v1", app_port, &state, &extra).await;
        (sidecar, app)
    }

    /// Waits until `sidecar` (pod `pod`) is listed healthy; prints both logs if not.
    async fn wait_healthy(&self, sidecar: &Sidecar, pod: &str) {
        let healthy = wait_until(SOON, || async {
            self.sidecars()
                .await
                .iter()
                .any(|s| s["pod"] == pod && s["status"] == "healthy")
        })
        .await;
        if healthy.is_err() {
            sidecar.proc.print_log_tail(30);
            self.proc.print_log_tail(30);
            panic!("sidecar {pod} never showed up healthy");
        }
    }

    async fn sidecars(&self) -> Vec<Value> {
        let r = self.client.get(self.api("/sidecars")).send().await.unwrap();
        r.json::<Vec<Value>>().await.unwrap()
    }
}

#[tokio::test]
async fn the_control_plane_with_a_certificate_serves_its_api_over_https_and_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "cp");
    let cp = TlsControlPlane::start(dir.path(), &pki).await;

    let r = pki.client().get(cp.api("/services")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), serde_json::json!([]));

    let plaintext = client()
        .get(format!("http://127.0.0.1:{}/readyz", cp.http_port))
        .send()
        .await;
    assert!(
        plaintext.is_err(),
        "a plaintext request to the TLS port got an answer: {plaintext:?}"
    );

    // A client without the CA refuses the certificate: nothing is trusted by accident.
    let untrusted = client().get(cp.api("/services")).send().await.unwrap_err();
    assert!(format!("{untrusted:?}").contains("UnknownIssuer"), "{untrusted:?}");
}

#[tokio::test]
async fn outriderctl_with_the_ca_file_talks_to_an_https_control_plane_and_without_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "cp");
    let cp = TlsControlPlane::start(dir.path(), &pki).await;
    let server = format!("https://127.0.0.1:{}", cp.http_port);
    let ca = pki.ca.display().to_string();

    let (ok, stdout, stderr) = outriderctl(
        &["--server", &server, "--ca-file", &ca, "-o", "json", "get", "services"],
        None,
    );
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), serde_json::json!([]));

    let (ok, _, stderr) = outriderctl(&["--server", &server, "get", "services"], None);
    assert!(!ok);
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[tokio::test]
async fn a_sidecar_given_the_ca_file_registers_over_tls_and_enforces_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "cp");
    let cp = TlsControlPlane::start(dir.path(), &pki).await;
    let r = pki
        .client()
        .put(cp.api("/services/web/policies/rate-limit"))
        .header("content-type", "application/json")
        .body(r#"{"rules":[{"name":"all","requestsPerSecond":100,"burst":100}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revision = r.json::<Value>().await.unwrap()["revision"].as_u64().unwrap();

    let (mut sidecar, _app) = cp.sidecar(dir.path(), "web-tls", &pki.ca).await;
    sidecar.wait_revision(revision).await;
    cp.wait_healthy(&sidecar, "web-tls").await;
}

#[tokio::test]
async fn with_tls_san_both_ports_serve_a_certificate_from_the_mesh_ca_that_the_bundle_verifies() {
    let dir = tempfile::tempdir().unwrap();
    // The bundle first, on the new store: the root it makes is the one the control
    // plane then signs its own certificate with.
    let bundle = dir.path().join("bundle.pem");
    let pem = ca_bundle(&dir.path().join("cp"), &bundle);
    let cp = TlsControlPlane::start_with(
        dir.path(),
        &[("OUTRIDER_TLS_SAN", "127.0.0.1,localhost")],
        tls_client(pem.as_bytes(), None),
    )
    .await;

    for host in ["127.0.0.1", "localhost"] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "--cacert", &bundle.display().to_string()])
            .arg(format!("https://{host}:{}/readyz", cp.http_port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl --cacert to {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A name the certificate is not for is refused by a verifying client.
    let other = tls_client(
        pem.as_bytes(),
        Some((
            "cp.example.test",
            format!("127.0.0.1:{}", cp.http_port).parse().unwrap(),
        )),
    );
    let err = other
        .get(format!("https://cp.example.test:{}/readyz", cp.http_port))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");

    let (sidecar, _app) = cp.sidecar(dir.path(), "web-san", &bundle).await;
    cp.wait_healthy(&sidecar, "web-san").await;
}

#[tokio::test]
async fn tls_san_with_the_operators_certificate_is_refused_at_start_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "cp");
    let (cert, key) = (pki.cert.display().to_string(), pki.key.display().to_string());
    let data = dir.path().join("cp").display().to_string();
    let mut proc = Proc::spawn(
        bin_path("outrider-control-plane"),
        &[
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
            &data,
        ],
        &[
            ("OUTRIDER_TLS_SAN", "localhost"),
            ("OUTRIDER_TLS_CERT", &cert),
            ("OUTRIDER_TLS_KEY", &key),
        ],
    );
    let status = proc.wait_exit(SOON).expect("the control plane exits");
    assert!(!status.success());
    let log = proc.log();
    assert!(log.contains("--tls-san") && log.contains("--tls-cert"), "{log}");
}

/// Extra variables of a sidecar.
type Env<'a> = &'a [(&'a str, &'a str)];

/// Starts a `web` sidecar against `control_plane` with `extra` variables and waits
/// until its log says why it cannot connect; returns that log.
async fn refused_sidecar(dir: &Path, pod: &str, control_plane: &str, extra: &[(&str, &str)], says: &str) -> String {
    let sidecar = Sidecar::start_with(control_plane, "web", pod, "v1", free_port(), &dir.join(pod), extra).await;
    let log = wait_for(SOON, || async {
        let log = sidecar.proc.log();
        if log.contains(says) {
            Ok(log)
        } else {
            Err(anyhow::anyhow!("not logged yet"))
        }
    })
    .await;
    match log {
        Ok(log) => log,
        Err(e) => {
            sidecar.proc.print_log_tail(30);
            panic!("sidecar {pod} never logged {says:?}: {e}");
        }
    }
}

#[tokio::test]
async fn a_sidecar_that_cannot_verify_the_control_plane_or_speaks_plaintext_to_it_never_registers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path(), "cp");
    let other = Pki::create(dir.path(), "other");
    let cp = TlsControlPlane::start(dir.path(), &pki).await;
    let wrong_ca = other.ca.display().to_string();

    let cases: [(&str, String, Env<'_>, &str); 3] = [
        (
            "web-wrong-ca",
            cp.grpc("https"),
            &[("OUTRIDER_CA_FILE", &wrong_ca)],
            "invalid peer certificate",
        ),
        // Without a CA file the system roots decide, and they do not know the test CA.
        ("web-system-roots", cp.grpc("https"), &[], "invalid peer certificate"),
        // Plaintext to the TLS port is never mistaken for a session.
        ("web-plaintext", cp.grpc("http"), &[], "control plane unavailable"),
    ];
    for (pod, url, extra, why) in cases {
        let log = refused_sidecar(dir.path(), pod, &url, extra, "control plane unavailable").await;
        assert!(log.contains(why), "{pod}: {log}");
    }
    assert_eq!(cp.sidecars().await, Vec::<Value>::new());
}

/// An NDJSON collector behind TLS with `pki`'s certificate; returns its URL.
async fn https_collector(pki: &Pki, lines: Arc<Mutex<Vec<String>>>) -> String {
    let chain = rustls::pki_types::pem::PemObject::pem_slice_iter(pki.cert_pem.as_bytes())
        .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
        .unwrap();
    let key = rustls::pki_types::pem::PemObject::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = Router::new().route(
        "/ingest",
        post(move |body: Bytes| {
            let lines = Arc::clone(&lines);
            async move {
                let text = String::from_utf8_lossy(&body).into_owned();
                lines
                    .lock()
                    .unwrap()
                    .extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}/ingest", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req| app.clone().oneshot(req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn an_https_log_sink_verified_with_the_ca_file_receives_access_records() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let sink_pki = Pki::create(dir.path(), "sink");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let url = https_collector(&sink_pki, Arc::clone(&lines)).await;
    let app_port = free_port();
    let _app = echo(app_port);
    let ca = sink_pki.ca.display().to_string();
    let mut sidecar = Sidecar::start_with(
        &cp.grpc(),
        "web",
        "web-a",
        "v1",
        app_port,
        &dir.path().join("sidecar"),
        &[("OUTRIDER_CA_FILE", &ca)],
    )
    .await;
    let doc = format!(
        r#"{{"accessLog": {{"enabled": true}},
             "sink": {{"type": "http", "url": "{url}", "format": "ndjson", "batchSize": 1, "flushInterval": "100ms"}}}}"#
    );
    let (status, body) = cp.put_policy("web", "logging", &doc).await;
    assert_eq!(status, 200, "{body}");
    sidecar.wait_revision(body["revision"].as_u64().unwrap()).await;

    let shipped = wait_until(SOON, || async {
        let _ = client().get(format!("{}/over-tls", sidecar.inbound())).send().await;
        lines.lock().unwrap().iter().any(|l| l.contains("/over-tls"))
    })
    .await;
    if shipped.is_err() {
        sidecar.proc.print_log_tail(40);
        panic!("no access record reached the https sink");
    }
}
