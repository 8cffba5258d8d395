//! TLS for the control plane's two ports: the rustls server configurations (ALPN `h2`
//! on the gRPC port, `http/1.1` on the HTTP port) built from a certificate resolver,
//! and the operator's PEM certificate chain and key (`--tls-cert`/`--tls-key`).
//!
//! [`ServerTls::from_resolver`] is the seam for certificates that do not come from
//! files (the control plane's own CA behind `--tls-san`): whatever resolves the
//! certificate, both ports are served the same way.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "--tls-cert (OUTRIDER_TLS_CERT) and --tls-key (OUTRIDER_TLS_KEY) go together: {given} is set, {missing} is not"
    )]
    Half { given: &'static str, missing: &'static str },
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--tls-cert {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("--tls-key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("--tls-key {key} is not the key of --tls-cert {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server side of TLS on both ports.
#[derive(Clone)]
pub struct ServerTls {
    grpc: TlsAcceptor,
    http: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

/// The one crypto provider of every rustls configuration here, chosen explicitly so
/// that no other crate's feature choice can change it.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process-wide default provider, for the rustls clients built by
/// other crates (sqlx's PostgreSQL connections). Called once at start; a second call
/// changes nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ServerTls {
    /// `--tls-cert` and `--tls-key`: both, or neither (`None`: plaintext).
    pub fn from_files(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Half {
                given: "--tls-cert",
                missing: "--tls-key",
            }),
            (None, Some(_)) => Err(TlsError::Half {
                given: "--tls-key",
                missing: "--tls-cert",
            }),
            (Some(cert), Some(key)) => {
                let certified = load_certified_key(cert, key)?;
                let resolver = rustls::sign::SingleCertAndKey::from(certified);
                Self::from_resolver(Arc::new(resolver)).map(Some)
            }
        }
    }

    /// Both ports served with whatever certificate `resolver` picks per handshake.
    pub fn from_resolver(resolver: Arc<dyn ResolvesServerCert>) -> Result<Self, TlsError> {
        let config = |alpn: &[u8]| -> Result<TlsAcceptor, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(&resolver));
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Self {
            grpc: config(b"h2")?,
            http: config(b"http/1.1")?,
        })
    }

    /// The gRPC port's acceptor (ALPN `h2`).
    pub fn grpc(&self) -> TlsAcceptor {
        self.grpc.clone()
    }

    /// The HTTP port's acceptor (ALPN `http/1.1`: the port speaks HTTP/1 only).
    pub fn http(&self) -> TlsAcceptor {
        self.http.clone()
    }
}

/// A TLS handshake that must finish within `timeout`; a client that stalls it is
/// dropped like one that stalls its request head.
pub async fn accept<IO>(acceptor: &TlsAcceptor, io: IO, timeout: Duration) -> std::io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, acceptor.accept(io))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// The certificate chain (leaf first) and its private key, checked to belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read("--tls-cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert.to_owned(),
            reason: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.to_owned(),
            reason: "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    let key_pem = read("--tls-key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (expected PEM PKCS#8, PKCS#1 or SEC1)".into()
            }
            e => format!("not a PEM private key: {e}"),
        },
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Key {
            path: key.to_owned(),
            reason: format!("unsupported private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_naming_the_missing_flag() {
        let e = ServerTls::from_files(Some(Path::new("/x.pem")), None).unwrap_err();
        assert!(
            e.to_string().contains("--tls-cert") && e.to_string().contains("--tls-key is not"),
            "{e}"
        );
        let e = ServerTls::from_files(None, Some(Path::new("/x.pem"))).unwrap_err();
        assert!(e.to_string().contains("--tls-key is set"), "{e}");
        assert!(ServerTls::from_files(None, None).unwrap().is_none());
    }

    #[test]
    fn unreadable_or_wrong_files_are_refused_naming_the_file_and_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let good_cert = write(dir.path(), "cert.pem", &cert);
        let good_key = write(dir.path(), "key.pem", &key);
        let missing = dir.path().join("missing.pem");

        let e = load_certified_key(&missing, &good_key).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read --tls-cert") && e.contains("missing.pem"),
            "{e}"
        );

        let e = load_certified_key(&good_key, &good_key).unwrap_err().to_string();
        assert!(
            e.contains("--tls-cert") && e.contains("key.pem") && e.contains("no certificate"),
            "{e}"
        );

        let e = load_certified_key(&good_cert, &good_cert).unwrap_err().to_string();
        assert!(
            e.contains("--tls-key") && e.contains("cert.pem") && e.contains("no private key"),
            "{e}"
        );

        let (_, other_key) = self_signed();
        let other_key = write(dir.path(), "other-key.pem", &other_key);
        let e = load_certified_key(&good_cert, &other_key).unwrap_err().to_string();
        assert!(e.contains("is not the key of --tls-cert"), "{e}");

        assert!(ServerTls::from_files(Some(&good_cert), Some(&good_key))
            .unwrap()
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stalls_the_tls_handshake_is_dropped_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (cert, key) = (write(dir.path(), "c.pem", &cert), write(dir.path(), "k.pem", &key));
        let tls = ServerTls::from_files(Some(&cert), Some(&key)).unwrap().unwrap();
        // The client end stays open and silent: no ClientHello ever comes.
        let (_client, server) = tokio::io::duplex(1024);
        let err = accept(&tls.grpc(), server, Duration::from_secs(10)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }
}
