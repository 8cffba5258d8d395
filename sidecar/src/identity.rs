//! The sidecar's workload identity: an ECDSA P-256 key made here (it never leaves the
//! sidecar), the certificate the control plane signs for it, and when to renew.
//!
//! Key, certificate and trust bundle live in the state directory (mode 0600, written
//! atomically), so a restart while the control plane is away keeps the identity until
//! the certificate expires. The current identity is published through a [`Handle`]
//! that both proxies' mTLS read without locking.

use crate::mtls::{spiffe_id, Credentials};
use arc_swap::ArcSwapOption;
use outrider_runtime::fs::{write_atomic_with, WriteOptions};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const KEY_FILE: &str = "identity.key";
pub const CERT_FILE: &str = "identity.crt";
pub const BUNDLE_FILE: &str = "trust-bundle.pem";

/// Renewal falls at this share of the lifetime, ± [`RENEW_JITTER`]: early enough that
/// a control plane away for a while does not cost the identity, spread so that a fleet
/// issued at once does not renew at once.
const RENEW_AT: f64 = 0.7;
const RENEW_JITTER: f64 = 0.1;

/// The identity in force. The key is here for mTLS; nothing serialises it.
pub struct Workload {
    /// Both proxies' TLS settings for this certificate, built once.
    pub tls: Arc<Credentials>,
    pub spiffe_id: String,
    /// PEM: the leaf first, then any intermediates.
    pub chain_pem: String,
    pub trust_bundle_pem: String,
    pub key_pem: String,
    /// Hex, as the certificate carries it.
    pub serial: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// When to ask for the next certificate (epoch ms), drawn once per certificate.
    pub renew_at_ms: i64,
}

impl std::fmt::Debug for Workload {
    // Never the key, should a Workload ever reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

/// The identity in force, shared: empty until a valid certificate is held.
pub type Handle = Arc<ArcSwapOption<Workload>>;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("identity key: {0}")]
    Key(String),
    #[error("certificate: {0}")]
    Certificate(String),
}

/// The key pair and where its files go.
pub struct IdentityFiles {
    dir: PathBuf,
    key: KeyPair,
    /// The SPIFFE ID's path this sidecar may hold: `/ns/<namespace>/svc/<service>`.
    path: String,
}

impl IdentityFiles {
    /// Loads the key from `dir`, or makes and saves one. Also returns the saved
    /// certificate when it is still valid at `now_ms`, belongs to the key and names
    /// this sidecar's namespace and service.
    pub fn open(
        dir: &Path,
        namespace: &str,
        service: &str,
        now_ms: i64,
    ) -> Result<(IdentityFiles, Option<Workload>), IdentityError> {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let key_path = dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => match KeyPair::from_pem(&pem) {
                Ok(k) => Some(k),
                Err(e) => {
                    // Unreadable: the identity is lost either way; a new key gets a new one.
                    tracing::warn!(path = %key_path.display(), error = %e, "identity key unreadable; making a new one");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(IdentityError::Io { path: key_path, source }),
        };
        let (key, fresh) = match key {
            Some(k) => (k, false),
            None => {
                let k = KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
                write_private(&key_path, k.serialize_pem().as_bytes())?;
                (k, true)
            }
        };
        let files = IdentityFiles {
            dir: dir.to_owned(),
            key,
            path: format!("/ns/{namespace}/svc/{service}"),
        };
        if fresh {
            return Ok((files, None));
        }
        let saved = (
            std::fs::read_to_string(dir.join(CERT_FILE)),
            std::fs::read_to_string(dir.join(BUNDLE_FILE)),
        );
        let workload = match saved {
            (Ok(chain), Ok(bundle)) => match files.workload(&chain, &bundle, now_ms) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::info!(error = %e, "saved certificate not usable; asking for a new one");
                    None
                }
            },
            _ => None,
        };
        Ok((files, workload))
    }

    /// A PKCS #10 request for this key, DER. It names nothing: the control plane sets
    /// the identity the stream registered as.
    pub fn csr_der(&self) -> Result<Vec<u8>, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        Ok(csr.der().to_vec())
    }

    /// Checks an issued chain (this key's, this sidecar's identity, valid now), saves it
    /// with the bundle, and returns it as the identity to put in force.
    pub fn accept(&self, chain_pem: &str, bundle_pem: &str, now_ms: i64) -> Result<Workload, IdentityError> {
        let w = self.workload(chain_pem, bundle_pem, now_ms)?;
        // The bundle first: a certificate on disk is never newer than the roots it needs.
        write_private(&self.dir.join(BUNDLE_FILE), bundle_pem.as_bytes())?;
        write_private(&self.dir.join(CERT_FILE), chain_pem.as_bytes())?;
        Ok(w)
    }

    /// The certificate in force with a new trust bundle (a root added or retired),
    /// saved; its renewal time stays.
    pub fn rebundle(&self, current: &Workload, bundle_pem: &str, now_ms: i64) -> Result<Workload, IdentityError> {
        let mut w = self.workload(&current.chain_pem, bundle_pem, now_ms)?;
        w.renew_at_ms = current.renew_at_ms;
        write_private(&self.dir.join(BUNDLE_FILE), bundle_pem.as_bytes())?;
        Ok(w)
    }

    fn workload(&self, chain_pem: &str, bundle_pem: &str, now_ms: i64) -> Result<Workload, IdentityError> {
        let bad = IdentityError::Certificate;
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).map_err(|e| bad(format!("not PEM: {e}")))?;
        let leaf = pem.parse_x509().map_err(|e| bad(format!("not X.509: {e}")))?;
        if leaf.public_key().subject_public_key.data.as_ref() != self.key.public_key_raw() {
            return Err(bad("issued for another key".into()));
        }
        let spiffe_id = spiffe_id(&leaf).ok_or_else(|| bad("no spiffe:// URI SAN".into()))?;
        if !spiffe_id.ends_with(&self.path) {
            return Err(bad(format!(
                "{spiffe_id} is not this sidecar's identity ({})",
                self.path
            )));
        }
        let not_before_ms = leaf.validity().not_before.timestamp().saturating_mul(1000);
        let not_after_ms = leaf.validity().not_after.timestamp().saturating_mul(1000);
        if now_ms >= not_after_ms {
            return Err(bad(format!("expired at {not_after_ms} ms")));
        }
        if bundle_pem.trim().is_empty() {
            return Err(bad("no trust bundle came with it".into()));
        }
        let key_pem = self.key.serialize_pem();
        let tls = Credentials::new(chain_pem, &key_pem, bundle_pem).map_err(|e| bad(e.to_string()))?;
        Ok(Workload {
            tls: Arc::new(tls),
            spiffe_id,
            chain_pem: chain_pem.to_owned(),
            trust_bundle_pem: bundle_pem.to_owned(),
            key_pem,
            serial: leaf.raw_serial_as_string(),
            not_before_ms,
            not_after_ms,
            renew_at_ms: renew_at(not_before_ms, not_after_ms, rand::random::<f64>()),
        })
    }
}

/// [`RENEW_AT`] of the lifetime, moved by up to ± [`RENEW_JITTER`] of it; `unit` is
/// uniform in [0, 1).
fn renew_at(not_before_ms: i64, not_after_ms: i64, unit: f64) -> i64 {
    let lifetime = (not_after_ms - not_before_ms).max(0) as f64;
    let share = RENEW_AT + RENEW_JITTER * (2.0 * unit - 1.0);
    not_before_ms + (lifetime * share) as i64
}

/// Key material: created 0600 (never wider, not even for a moment), replaced atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let options = WriteOptions {
        mode: Some(0o600),
        durable: true,
    };
    write_atomic_with(path, bytes, &options).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa, SanType};
    use std::os::unix::fs::PermissionsExt;

    const NOW: i64 = 1_800_000_000_000;

    /// A root that signs nothing here: a bundle the certificates need only parse against.
    fn roots() -> String {
        let key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.self_signed(&key).unwrap().pem()
    }

    /// Signs `files`' key for `uri`, valid for [from, to] (seconds around NOW).
    fn issue(files: &IdentityFiles, key: Option<&KeyPair>, uri: &str, from: i64, to: i64) -> String {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let mut leaf = CertificateParams::default();
        leaf.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let at = |s: i64| time::OffsetDateTime::from_unix_timestamp(NOW / 1000 + s).unwrap();
        leaf.not_before = at(from);
        leaf.not_after = at(to);
        leaf.signed_by(key.unwrap_or(&files.key), &ca, &ca_key).unwrap().pem()
    }

    const WEB: &str = "spiffe://outrider.local/ns/default/svc/web";

    #[test]
    fn the_key_is_made_once_kept_0600_and_a_saved_certificate_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (files, none) = IdentityFiles::open(dir.path(), "default", "web", NOW).unwrap();
        assert!(none.is_none());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let chain = issue(&files, None, WEB, -60, 3600);
        let first = files.accept(&chain, &roots(), NOW).unwrap();
        for f in [CERT_FILE, BUNDLE_FILE] {
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }

        let (again, saved) = IdentityFiles::open(dir.path(), "default", "web", NOW + 1000).unwrap();
        let saved = saved.expect("the saved certificate is still valid");
        assert_eq!(
            (saved.serial.as_str(), saved.spiffe_id.as_str()),
            (first.serial.as_str(), WEB)
        );
        assert_eq!(again.key.public_key_raw(), files.key.public_key_raw());
    }

    #[test]
    fn a_certificate_for_another_key_service_or_expired_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = IdentityFiles::open(dir.path(), "default", "web", NOW).unwrap();
        let other = KeyPair::generate().unwrap();
        let cases = [
            (issue(&files, Some(&other), WEB, -60, 3600), "another key"),
            (
                issue(&files, None, "spiffe://outrider.local/ns/default/svc/db", -60, 3600),
                "not this",
            ),
            (issue(&files, None, WEB, -7200, -3600), "expired"),
        ];
        for (chain, why) in cases {
            let err = files.accept(&chain, &roots(), NOW).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        assert!(!dir.path().join(CERT_FILE).exists(), "nothing refused is saved");
    }

    #[test]
    fn renewal_falls_between_60_and_80_percent_of_the_lifetime() {
        assert_eq!(renew_at(0, 1000, 0.5), 700);
        assert_eq!(renew_at(0, 1000, 0.0), 600);
        assert!(renew_at(0, 1000, 0.999_999) <= 800);
        assert_eq!(renew_at(5000, 5000, 0.5), 5000);
    }

    #[test]
    fn the_request_carries_this_key_and_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = IdentityFiles::open(dir.path(), "default", "web", NOW).unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_der(&files.csr_der().unwrap().into()).unwrap();
        assert!(csr.params.subject_alt_names.is_empty());
        assert_eq!(
            rcgen::PublicKeyData::der_bytes(&csr.public_key),
            files.key.public_key_raw()
        );
    }
}
