//! Workload identity end to end: real control plane and sidecar processes, the
//! certificate read from the sidecar's state directory and checked against what
//! `outrider-control-plane ca bundle` prints.

mod common;

use common::*;
use outrider_testkit::{bin_path, free_port, wait_until};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

const WEB: &str = "spiffe://outrider.local/ns/default/svc/web";

/// `outrider-control-plane --data-dir <dir> ca bundle` with `env`, its stdout.
fn ca_bundle(data_dir: &Path, env: &[(String, String)]) -> String {
    let out = std::process::Command::new(bin_path("outrider-control-plane"))
        .args(["--data-dir", &data_dir.display().to_string(), "ca", "bundle"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every certificate of a PEM text, DER.
fn ders(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect()
}

/// Serial and notAfter (epoch s) of the first certificate of `pem`.
fn serial_and_expiry(pem: &str) -> (String, i64) {
    let der = &ders(pem)[0];
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    (c.raw_serial_as_string(), c.validity().not_after.timestamp())
}

/// The certificate the sidecar keeps, once it has one.
async fn issued(state: &Path) -> String {
    let path = state.join("identity.crt");
    wait_until(Duration::from_secs(20), || async { path.exists() })
        .await
        .expect("the sidecar got a certificate");
    std::fs::read_to_string(path).unwrap()
}

/// The leaf's URI SANs, and whether it verifies against a root of `bundle`.
fn check_leaf(chain: &str, bundle: &str) -> (Vec<String>, bool) {
    let chain = ders(chain);
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let uris = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    // The issuer is the next certificate in the chain, or a root itself.
    let issuers: Vec<Vec<u8>> = chain[1..].iter().cloned().chain(ders(bundle)).collect();
    let verifies = issuers.iter().any(|der| {
        let (_, issuer) = x509_parser::parse_x509_certificate(der).unwrap();
        leaf.verify_signature(Some(issuer.public_key())).is_ok()
    });
    // An intermediate must itself chain to the bundle.
    let chained = chain[1..].iter().all(|int| {
        let (_, int) = x509_parser::parse_x509_certificate(int).unwrap();
        ders(bundle).iter().any(|der| {
            let (_, root) = x509_parser::parse_x509_certificate(der).unwrap();
            int.verify_signature(Some(root.public_key())).is_ok()
        })
    });
    (uris, verifies && chained)
}

/// RFC 3339 of epoch seconds, as the sidecar's config_dump writes it.
fn time_of(secs: i64) -> String {
    let d = x509_parser::time::ASN1Time::from_timestamp(secs).unwrap();
    d.to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Polls `f` until it gives a value, for up to `timeout`.
async fn poll<T, Fut: std::future::Future<Output = Option<T>>>(
    timeout: Duration,
    mut f: impl FnMut() -> Fut,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(t) = f().await {
            return Some(t);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under `dir`, as bytes.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else if let Ok(b) = std::fs::read(&path) {
            out.extend(b);
        }
    }
    out
}

#[tokio::test]
async fn a_sidecar_gets_a_certificate_for_its_spiffe_id_that_verifies_against_ca_bundle_and_keeps_its_key() {
    let cp_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(cp_dir.path()).await;
    let sc = Sidecar::start(&cp.grpc(), "web", "web-1", free_port(), state.path()).await;

    let chain = issued(state.path()).await;
    let bundle = ca_bundle(cp_dir.path(), &[]);
    let (uris, verifies) = check_leaf(&chain, &bundle);
    assert_eq!(uris, [WEB]);
    assert!(verifies, "the leaf chains to `ca bundle`'s output");

    // GET /sidecars shows the identity and its expiry.
    let (_, not_after) = serial_and_expiry(&chain);
    let row = poll(SOON, || async {
        let row = cp.sidecar_row(&sc.id()).await.unwrap_or_default();
        (row["identity"] == WEB).then_some(row)
    })
    .await
    .expect("the identity in GET /sidecars");
    let expiry = row["certificateExpiry"].as_str().unwrap().to_owned();
    let dump = sc.config_dump().await;
    assert_eq!(dump["identity"]["spiffeId"], WEB);
    let dumped = dump["identity"]["notAfter"].as_str().unwrap().to_owned();
    // Both RFC 3339 of the leaf's notAfter (to the second; the API adds milliseconds).
    assert_eq!(expiry.get(..19), dumped.get(..19), "{expiry} vs {dumped}");
    let leaf_not_after = time_of(not_after);
    assert_eq!(
        expiry.get(..19),
        Some(&leaf_not_after[..19]),
        "{expiry} vs notAfter {not_after}"
    );
    assert!(
        !dump.to_string().contains("PRIVATE KEY"),
        "config_dump never shows the key"
    );

    // The key is the sidecar's alone: 0600, and nowhere in the control plane's store.
    let key_path = state.path().join("identity.key");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_path).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(body.len() > 40);
    let stored = all_bytes(cp_dir.path());
    let first_line = key.lines().nth(1).unwrap().as_bytes();
    assert!(
        !stored.windows(first_line.len()).any(|w| w == first_line),
        "the sidecar's key is in the control plane's data dir"
    );
}

#[tokio::test]
async fn a_sidecar_restarted_while_the_control_plane_is_down_keeps_its_certificate() {
    let cp_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(cp_dir.path()).await;
    let mut sc = Sidecar::start(&cp.grpc(), "web", "web-1", free_port(), state.path()).await;
    let (serial, _) = serial_and_expiry(&issued(state.path()).await);

    cp.proc.terminate();
    sc.proc.terminate();
    sc.restart().await;
    let dump = poll(SOON, || async {
        let dump = sc.config_dump().await;
        dump["identity"]["serial"].is_string().then_some(dump)
    })
    .await
    .expect("an identity after the restart");
    assert_eq!(dump["identity"]["spiffeId"], WEB);
    let kept = dump["identity"]["serial"].as_str().unwrap().replace(':', "");
    assert_eq!(kept.to_lowercase(), serial.replace(':', "").to_lowercase());
    assert_eq!(dump["controlPlaneConnected"], false);
}

#[tokio::test]
async fn with_a_10s_ttl_the_sidecar_renews_before_its_certificate_expires() {
    let cp_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let env = vec![("OUTRIDER_CERT_TTL".to_owned(), "10s".to_owned())];
    let cp = ControlPlane::start_with(cp_dir.path(), None, env).await;
    let _sc = Sidecar::start(&cp.grpc(), "web", "web-1", free_port(), state.path()).await;
    let (serial, not_after) = serial_and_expiry(&issued(state.path()).await);

    let path = state.path().join("identity.crt");
    let (seen_at, new_expiry) = poll(Duration::from_secs(30), || async {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current.is_empty() {
            return None;
        }
        let (s, e) = serial_and_expiry(&current);
        (s != serial).then_some((now, e))
    })
    .await
    .expect("a renewed certificate");
    // Seen no earlier than it was written: if the old one was still valid then, the
    // renewal came before it expired.
    assert!(
        seen_at < not_after,
        "renewed at {seen_at}, the old one expired at {not_after}"
    );
    assert!(new_expiry > not_after);
}

#[tokio::test]
async fn an_operator_ca_signs_the_leaves_and_is_the_bundle() {
    let pki = tempfile::tempdir().unwrap();
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root = params.self_signed(&root_key).unwrap();
    let (cert_path, key_path) = (pki.path().join("ca.crt"), pki.path().join("ca.key"));
    std::fs::write(&cert_path, root.pem()).unwrap();
    std::fs::write(&key_path, root_key.serialize_pem()).unwrap();
    let env = vec![
        ("OUTRIDER_CA_CERT".to_owned(), cert_path.display().to_string()),
        ("OUTRIDER_CA_KEY".to_owned(), key_path.display().to_string()),
    ];

    let cp_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_with(cp_dir.path(), None, env.clone()).await;
    let _sc = Sidecar::start(&cp.grpc(), "web", "web-1", free_port(), state.path()).await;
    let chain = issued(state.path()).await;
    let (uris, verifies) = check_leaf(&chain, &root.pem());
    assert_eq!(uris, [WEB]);
    assert!(verifies, "the operator's CA signed the leaf");
    assert_eq!(ca_bundle(cp_dir.path(), &env), root.pem());
    let saved = std::fs::read_to_string(state.path().join("trust-bundle.pem")).unwrap();
    assert_eq!(saved, root.pem(), "the sidecar trusts the operator's root");
}
