//! Mutual TLS between sidecars: what a workload certificate gives the two proxies.
//!
//! The inbound proxy presents the certificate and demands one from every TLS caller
//! (chained to the mesh's trust bundle); the outbound proxy presents it too and checks
//! that the instance it dialled proves the identity the control plane listed for that
//! endpoint, not merely some mesh identity, so a sidecar of another service (or an
//! impostor holding another service's certificate) never receives a request meant
//! for this one. Built once per certificate ([`Credentials::new`]), so a handshake
//! parses nothing. A leaf: it knows PEM and rustls, not the sidecar's state.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ClientSessionMemoryCache, Resumption};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use x509_parser::extensions::GeneralName;

/// ALPN ids, so that an HTTP/2 caller and the inbound agree without the h2c preface
/// dance; the inbound still tells the two apart by the first bytes.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Sessions each side remembers for resumption: an instance is dialled by, and
/// dials, a bounded set of peers, and a resumed handshake skips the signatures.
const SESSION_CACHE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("trust bundle: {0}")]
    Verifier(String),
}

/// One workload certificate's TLS settings, for both proxies.
pub struct Credentials {
    server: Arc<ServerConfig>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    resumption: Arc<ClientSessionMemoryCache>,
    /// Client settings per (expected peer, HTTP/2): one per destination service.
    clients: Mutex<HashMap<(Arc<str>, bool), Arc<ClientConfig>>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// From the issued chain (leaf first), the workload key and the trust bundle.
    pub fn new(chain_pem: &str, key_pem: &str, bundle_pem: &str) -> Result<Self, MtlsError> {
        let pem = |what, e: rustls::pki_types::pem::Error| MtlsError::Pem {
            what,
            reason: e.to_string(),
        };
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem("certificate chain", e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| pem("workload key", e))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
            roots.add(cert.map_err(|e| pem("trust bundle", e))?)?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| MtlsError::Verifier(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        server.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Credentials {
            server: Arc::new(server),
            chain,
            key,
            roots,
            provider,
            resumption: Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE)),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// What the inbound proxy terminates mTLS with.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// What the outbound proxy dials an instance of `expected` with (HTTP/2 or
    /// HTTP/1.1 by ALPN). Made once per destination identity, then shared, so
    /// resumption works across connections.
    pub fn client_config(&self, expected: &Arc<str>, h2: bool) -> Result<Arc<ClientConfig>, MtlsError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&(Arc::clone(expected), h2)) {
            return Ok(Arc::clone(c));
        }
        let verifier = PeerIs {
            roots: Arc::clone(&self.roots),
            expected: Arc::clone(expected),
            algorithms: self.provider.signature_verification_algorithms,
        };
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![if h2 { ALPN_H2 } else { ALPN_HTTP1 }.to_vec()];
        config.resumption = Resumption::store(Arc::clone(&self.resumption) as _);
        let config = Arc::new(config);
        clients.insert((Arc::clone(expected), h2), Arc::clone(&config));
        Ok(config)
    }
}

/// The `spiffe://` identity a certificate (DER) names in its URI SAN.
pub fn spiffe_id_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    spiffe_id(&cert)
}

/// A parsed certificate's first `spiffe://` URI SAN.
pub fn spiffe_id(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
        _ => None,
    })
}

/// Checks an instance's certificate: chained to the mesh's roots, valid now, and
/// naming exactly the identity expected of that endpoint. Workload certificates
/// carry no DNS names, so the usual name check does not apply; this one replaces it.
#[derive(Debug)]
struct PeerIs {
    roots: Arc<RootCertStore>,
    expected: Arc<str>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerIs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, intermediates, now, self.algorithms.all)?;
        match spiffe_id_of(end_entity) {
            Some(id) if *id == *self.expected => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!(
                "the instance proved {id}, not {}",
                self.expected
            ))),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
