//! The mesh's certificate authority: signs workload certificates for the SPIFFE ID a
//! control stream registered as, with a root kept in the store or the operator's issuer.
//!
//! The sidecar makes its key and sends a CSR; only the public key is taken from it. The
//! leaf's names, usages and lifetime are the CA's, so a CSR can ask for nothing but the
//! stream's own identity (or leave the name to us).

use crate::store::{CaRoot, Store, StoreError};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

/// Leaves start up to this much before they are signed, so a sidecar whose clock is a
/// little behind ours does not see a certificate from the future. Never more than a
/// tenth of the TTL: sidecars renew at a share of notBefore..notAfter, and a short TTL
/// must not be eaten by the backdating.
const BACKDATE: Duration = Duration::from_secs(60);

fn backdate(ttl: Duration) -> Duration {
    BACKDATE.min(ttl / 10)
}

/// How long a root made on first start lasts.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The CA's settings (`--trust-domain`, `--cert-ttl`, `--ca-cert`, `--ca-key`).
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: String,
    pub cert_ttl: Duration,
    /// PEM: the operator's issuer first, then its chain up to (optionally) the root.
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operator's issuer (`--ca-cert`/`--ca-key`) or a stored root is unusable.
    #[error("{0}")]
    Issuer(String),
    /// The CSR is not one we sign; the text says why and is sent to the sidecar.
    #[error("certificate request refused: {0}")]
    Refused(String),
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A signed leaf, as sent to the sidecar.
#[derive(Debug, Clone)]
pub struct Issued {
    pub spiffe_id: String,
    /// The leaf first, then any intermediates.
    pub chain_pem: String,
    pub trust_bundle_pem: String,
    pub not_after_ms: i64,
}

/// A name a server certificate is for (`--tls-san`, the webhook's service names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(std::net::IpAddr),
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(n) => f.write_str(n),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl std::str::FromStr for San {
    type Err = String;

    /// An IP address, or a DNS name (a leading `*.` for a wildcard).
    fn from_str(s: &str) -> Result<San, String> {
        let s = s.trim();
        if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(San::Ip(ip));
        }
        let name = s.strip_prefix("*.").unwrap_or(s).trim_end_matches('.');
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "{s:?} is neither an IP address nor a DNS name (letters, digits, '-' and '.')"
            ));
        }
        Ok(San::Dns(s.trim_end_matches('.').to_ascii_lowercase()))
    }
}

/// A certificate for the control plane's own listeners, with its key (made here, in
/// memory, never stored).
pub struct ServerCert {
    /// DER, the leaf first, then any intermediates.
    pub chain: Vec<Vec<u8>>,
    /// PKCS #8 DER.
    pub key: Vec<u8>,
    pub not_before: std::time::SystemTime,
    pub not_after: std::time::SystemTime,
}

/// What signs: the issuer's certificate (as rcgen needs it) and key, when it expires,
/// and the intermediates to send after each leaf.
struct Signer {
    issuer: rcgen::Certificate,
    key: KeyPair,
    not_after: OffsetDateTime,
    intermediates_pem: String,
}

pub struct Ca {
    trust_domain: String,
    ttl: Duration,
    /// Whether the roots are the store's (re-read by [`Ca::reload`]) rather than the
    /// operator's issuer, which changes only with a restart.
    from_store: bool,
    /// What signs and what is trusted now; sessions subscribe to push a changed
    /// bundle to their sidecars.
    current: watch::Sender<Arc<Current>>,
}

/// The signer and the trust bundle in force.
pub struct Current {
    signer: Signer,
    /// The store's generation of the signing root (0: the operator's issuer).
    pub signer_generation: i64,
    pub bundle_pem: String,
}

impl Ca {
    /// The operator's issuer when `--ca-cert`/`--ca-key` are given; otherwise the
    /// store's roots, making the first one if there is none.
    pub async fn open(store: &Store, cfg: &CaConfig) -> Result<Ca, CaError> {
        outrider_policy::validate_trust_domain(&cfg.trust_domain)
            .map_err(|m| CaError::Issuer(format!("--trust-domain: {m}")))?;
        if cfg.cert_ttl < Duration::from_secs(1) {
            return Err(CaError::Issuer("--cert-ttl must be at least 1s".into()));
        }
        let current = match (&cfg.ca_cert, &cfg.ca_key) {
            (Some(cert), Some(key)) => {
                let (signer, bundle_pem) = operator_signer(cert, key)?;
                Current {
                    signer,
                    signer_generation: 0,
                    bundle_pem,
                }
            }
            (None, None) => current_of(&roots(store, &cfg.trust_domain).await?)?,
            _ => return Err(CaError::Issuer("--ca-cert and --ca-key go together".into())),
        };
        Ok(Ca {
            trust_domain: cfg.trust_domain.clone(),
            ttl: cfg.cert_ttl,
            from_store: cfg.ca_cert.is_none(),
            current: watch::Sender::new(Arc::new(current)),
        })
    }

    /// Re-reads the store's roots (another process may have added, activated or
    /// retired one: `ca add-root` and the rest run beside the control plane);
    /// whether anything changed. The operator's issuer is never re-read.
    pub async fn reload(&self, store: &Store) -> Result<bool, CaError> {
        if !self.from_store {
            return Ok(false);
        }
        let roots = store.ca_roots().await?;
        let now = self.current.borrow().clone();
        let bundle = bundle_of(&roots);
        if signing(&roots).map(|r| r.generation) == Some(now.signer_generation) && bundle == now.bundle_pem {
            return Ok(false);
        }
        self.current.send_replace(Arc::new(current_of(&roots)?));
        Ok(true)
    }

    /// The signer and bundle now, and each later change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Current>> {
        self.current.subscribe()
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`.
    pub fn spiffe_id(&self, namespace: &str, service: &str) -> String {
        outrider_policy::spiffe_id(&self.trust_domain, namespace, service)
    }

    /// The roots sidecars trust, PEM.
    pub fn trust_bundle_pem(&self) -> String {
        self.current.borrow().bundle_pem.clone()
    }

    /// Signs a leaf for `namespace`/`service` (the identity the stream registered as)
    /// with the key `csr` carries. A CSR that fails its signature check or names any
    /// other identity is refused.
    pub fn issue(&self, csr: &[u8], namespace: &str, service: &str) -> Result<Issued, CaError> {
        let spiffe_id = self.spiffe_id(namespace, service);
        let csr = CertificateSigningRequestParams::from_der(&csr.to_vec().into())
            .map_err(|e| CaError::Refused(format!("csr: not a valid, self-signed PKCS #10 request ({e})")))?;
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::URI(uri) if uri.as_str() == spiffe_id => {}
                other => {
                    return Err(CaError::Refused(format!(
                        "csr: asks for {other:?}; this stream may only be {spiffe_id}"
                    )))
                }
            }
        }
        let current = self.current.borrow().clone();
        let now = OffsetDateTime::now_utc();
        // Whole seconds, as the certificate encodes it, so the expiry recorded is exact.
        let not_after = (now + self.ttl).min(current.signer.not_after);
        let not_after = not_after.replace_nanosecond(0).unwrap_or(not_after);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, service);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.clone().try_into()?)];
        params.not_before = now - backdate(self.ttl);
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&csr.public_key, &current.signer.issuer, &current.signer.key)?;
        Ok(Issued {
            spiffe_id,
            chain_pem: format!("{}{}", leaf.pem(), current.signer.intermediates_pem),
            trust_bundle_pem: current.bundle_pem.clone(),
            not_after_ms: (not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }
}

impl Ca {
    /// A server certificate for `names` (DNS and IP SANs), valid for the
    /// workload TTL, on a key made now.
    pub fn issue_server(&self, names: &[San]) -> Result<ServerCert, CaError> {
        let first = names
            .first()
            .ok_or_else(|| CaError::Refused("a server certificate needs at least one name".into()))?;
        let current = self.current.borrow().clone();
        let signer = &current.signer;
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        let not_after = (now + self.ttl).min(signer.not_after);
        let not_after = not_after.replace_nanosecond(0).unwrap_or(not_after);
        let not_before = now - backdate(self.ttl);
        let not_before = not_before.replace_nanosecond(0).unwrap_or(not_before);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Outrider");
        dn.push(DnType::CommonName, first.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n {
                San::Dns(d) => Ok(SanType::DnsName(d.clone().try_into()?)),
                San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &signer.issuer, &signer.key)?;
        let mut chain = vec![leaf.der().to_vec()];
        for pem in pem_blocks(&signer.intermediates_pem).map_err(CaError::Issuer)? {
            chain.push(first_der(&pem).map_err(CaError::Issuer)?);
        }
        Ok(ServerCert {
            chain,
            key: key.serialize_der(),
            not_before: not_before.into(),
            not_after: not_after.into(),
        })
    }
}

/// The trust bundle as `ca bundle` prints it: the operator's root when given one,
/// otherwise every trusted root in the store (made now if there is none yet, the same
/// way a starting control plane does, so both agree).
pub async fn trust_bundle(store: &Store, cfg: &CaConfig) -> Result<String, CaError> {
    Ok(Ca::open(store, cfg).await?.trust_bundle_pem())
}

/// How often a control plane re-reads the store's roots: `ca add-root` and the other
/// rotation steps reach every replica, and through them every sidecar, within this.
pub const ROOTS_POLL: Duration = Duration::from_secs(2);

/// Follows the store's roots until `stop`: each change goes to every session
/// ([`Ca::subscribe`]), which sends it to its sidecar.
pub async fn follow_roots(ca: Arc<Ca>, store: Store, stop: outrider_runtime::shutdown::CancellationToken) {
    let mut tick = tokio::time::interval(ROOTS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match ca.reload(&store).await {
            Ok(true) => {
                let current = ca.current.borrow().clone();
                tracing::info!(signer = current.signer_generation, "CA roots changed");
            }
            Ok(false) => {}
            // The store is away: the roots in force stay in force.
            Err(e) => tracing::debug!(error = %e, "could not re-read the CA roots"),
        }
    }
}

/// The newest activated root: the one that signs.
fn signing(roots: &[CaRoot]) -> Option<&CaRoot> {
    roots.iter().rev().find(|r| r.activated_at_ms.is_some())
}

/// The signer and bundle the store's `roots` give.
fn current_of(roots: &[CaRoot]) -> Result<Current, CaError> {
    let newest = signing(roots).ok_or_else(|| CaError::Issuer("the store has no activated CA root".into()))?;
    let signer = signer(&newest.cert_pem, &newest.key_pem, String::new())
        .map_err(|e| CaError::Issuer(format!("stored CA root {}: {e}", newest.generation)))?;
    Ok(Current {
        signer,
        signer_generation: newest.generation,
        bundle_pem: bundle_of(roots),
    })
}

/// Adds a new root to the store's bundle, trusted at once and not signing until
/// `activate_root`: `ca add-root`. Returns its generation.
pub async fn add_root(store: &Store, trust_domain: &str) -> Result<i64, CaError> {
    let (cert, key) = new_root(trust_domain)?;
    Ok(store.add_ca_root(&cert, &key).await?)
}

/// The store's trusted roots, oldest first, after making the first one if needed.
async fn roots(store: &Store, trust_domain: &str) -> Result<Vec<CaRoot>, CaError> {
    store.seal_ca_root_keys().await?;
    let existing = store.ca_roots().await?;
    if !existing.is_empty() {
        return Ok(existing);
    }
    let (cert, key) = new_root(trust_domain)?;
    Ok(store.ensure_ca_root(&cert, &key).await?)
}

fn bundle_of(roots: &[CaRoot]) -> String {
    roots.iter().map(|r| r.cert_pem.as_str()).collect()
}

/// A self-signed ECDSA P-256 root for the trust domain: (cert PEM, key PEM).
fn new_root(trust_domain: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outrider");
    dn.push(DnType::CommonName, format!("Outrider root CA {trust_domain}"));
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_LIFETIME;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The issuer `cert_pem` (its first certificate) with `key_pem`, checked to belong
/// together and to be a CA that has not expired.
fn signer(cert_pem: &str, key_pem: &str, intermediates_pem: String) -> Result<Signer, String> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| format!("key: {e}"))?;
    let der = first_der(cert_pem)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("certificate: {e}"))?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err("the key does not belong to the certificate".into());
    }
    if !x509.is_ca() {
        return Err("the certificate is not a CA (basicConstraints cA is not set)".into());
    }
    let not_after = x509.validity().not_after.to_datetime();
    if not_after <= OffsetDateTime::now_utc() {
        return Err(format!("the certificate expired at {not_after}"));
    }
    let params = CertificateParams::from_ca_cert_der(&der.into()).map_err(|e| format!("certificate: {e}"))?;
    // rcgen signs with an issuer `Certificate`; only its name and key identifier
    // are used, so re-signing the parsed parameters with the same key gives one.
    let issuer = params.self_signed(&key).map_err(|e| format!("certificate: {e}"))?;
    Ok(Signer {
        issuer,
        key,
        not_after,
        intermediates_pem,
    })
}

/// The operator's issuer: `cert` holds the issuer first and then its chain; the
/// bundle is the chain's last certificate (its root, or the issuer itself).
fn operator_signer(cert: &std::path::Path, key: &std::path::Path) -> Result<(Signer, String), CaError> {
    let read = |p: &std::path::Path, flag: &str| {
        std::fs::read_to_string(p).map_err(|e| CaError::Issuer(format!("{flag} {}: {e}", p.display())))
    };
    let (cert_text, key_text) = (read(cert, "--ca-cert")?, read(key, "--ca-key")?);
    let pems = pem_blocks(&cert_text).map_err(|e| CaError::Issuer(format!("--ca-cert {}: {e}", cert.display())))?;
    let (Some(first), Some(last)) = (pems.first(), pems.last()) else {
        return Err(CaError::Issuer(format!(
            "--ca-cert {}: no CERTIFICATE block",
            cert.display()
        )));
    };
    // Leaves go out with every certificate but the root: the issuer itself when it
    // is an intermediate, nothing when it is the root.
    let intermediates = pems[..pems.len() - 1].concat();
    let signer =
        signer(first, &key_text, intermediates).map_err(|e| CaError::Issuer(format!("--ca-cert/--ca-key: {e}")))?;
    Ok((signer, last.clone()))
}

/// Each CERTIFICATE block of `text`, re-encoded as PEM.
fn pem_blocks(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
        let pem = pem.map_err(|e| format!("not PEM: {e}"))?;
        if pem.label == "CERTIFICATE" {
            out.push(to_pem(&pem.contents));
        }
    }
    Ok(out)
}

fn first_der(pem_text: &str) -> Result<Vec<u8>, String> {
    for pem in x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes()) {
        let pem = pem.map_err(|e| format!("certificate: not PEM: {e}"))?;
        if pem.label == "CERTIFICATE" {
            return Ok(pem.contents);
        }
    }
    Err("certificate: no CERTIFICATE block".into())
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// 128 random bits, positive (the top bit clear, as DER integers are signed): every
/// certificate, a renewal with the same key included, has a serial of its own.
fn random_serial() -> SerialNumber {
    let mut bytes = rand::random::<[u8; 16]>();
    bytes[0] &= 0x7f;
    SerialNumber::from(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{store_test, TestStore};
    use x509_parser::extensions::GeneralName;

    fn cfg(ttl: Duration) -> CaConfig {
        CaConfig {
            trust_domain: "outrider.local".into(),
            cert_ttl: ttl,
            ca_cert: None,
            ca_key: None,
        }
    }

    fn csr(sans: &[SanType]) -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans.to_vec();
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        (key, der)
    }

    fn leaf_der(issued: &Issued) -> Vec<u8> {
        first_der(&issued.chain_pem).unwrap()
    }

    store_test!(
        the_leaf_names_the_streams_spiffe_id_with_both_usages_and_verifies_against_the_bundle,
        |s| {
            let ca = Ca::open(s, &cfg(Duration::from_secs(3600))).await.unwrap();
            let (key, der) = csr(&[]);
            let issued = ca.issue(&der, "default", "web").unwrap();
            assert_eq!(issued.spiffe_id, "spiffe://outrider.local/ns/default/svc/web");
            let leaf = leaf_der(&issued);
            let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
            assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
            let san = cert.subject_alternative_name().unwrap().unwrap();
            let uris: Vec<_> = san.value.general_names.iter().collect();
            assert_eq!(uris, [&GeneralName::URI("spiffe://outrider.local/ns/default/svc/web")]);
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);
            assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
            assert!(!cert.is_ca());
            let root_der = first_der(&ca.trust_bundle_pem()).unwrap();
            let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
            cert.verify_signature(Some(root.public_key())).unwrap();
        }
    );

    store_test!(a_csr_for_another_identity_or_a_dns_name_is_refused, |s| {
        let ca = Ca::open(s, &cfg(Duration::from_secs(3600))).await.unwrap();
        let other = SanType::URI("spiffe://outrider.local/ns/default/svc/db".try_into().unwrap());
        let mine = SanType::URI("spiffe://outrider.local/ns/default/svc/web".try_into().unwrap());
        let dns = SanType::DnsName("web.example.com".try_into().unwrap());
        for sans in [vec![other], vec![mine.clone(), dns]] {
            let (_, der) = csr(&sans);
            let err = ca.issue(&der, "default", "web").unwrap_err();
            assert!(matches!(err, CaError::Refused(_)), "{err}");
        }
        // Asking for its own identity is fine.
        let (_, der) = csr(&[mine]);
        ca.issue(&der, "default", "web").unwrap();
    });

    store_test!(a_tampered_csr_is_refused, |s| {
        let ca = Ca::open(s, &cfg(Duration::from_secs(3600))).await.unwrap();
        let (_, mut der) = csr(&[]);
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert!(matches!(ca.issue(&der, "default", "web"), Err(CaError::Refused(_))));
        assert!(matches!(
            ca.issue(b"garbage", "default", "web"),
            Err(CaError::Refused(_))
        ));
    });

    store_test!(the_lifetime_is_the_ttl_with_a_little_backdating, |s| {
        let ca = Ca::open(s, &cfg(Duration::from_secs(600))).await.unwrap();
        let (_, der) = csr(&[]);
        let issued = ca.issue(&der, "default", "web").unwrap();
        let leaf = leaf_der(&issued);
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let v = cert.validity();
        let lifetime = v.not_after.timestamp() - v.not_before.timestamp();
        assert_eq!(lifetime, 600 + 60, "backdated by 60 s");
        assert_eq!(
            backdate(Duration::from_secs(10)),
            Duration::from_secs(1),
            "a tenth of a short TTL"
        );
        assert_eq!(issued.not_after_ms / 1000, v.not_after.timestamp());
    });

    store_test!(replicas_starting_at_once_agree_on_one_root, |s| {
        let c = cfg(Duration::from_secs(3600));
        let (a, b) = tokio::join!(Ca::open(s, &c), Ca::open(s, &c));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.trust_bundle_pem(), b.trust_bundle_pem());
        assert_eq!(s.ca_roots().await.unwrap().len(), 1);
        // A leaf from one verifies against the other's bundle: the same signer.
        let (_, der) = csr(&[]);
        let leaf = leaf_der(&a.issue(&der, "default", "web").unwrap());
        let root_der = first_der(&b.trust_bundle_pem()).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        cert.verify_signature(Some(root.public_key())).unwrap();
    });

    #[test]
    fn sans_are_ip_addresses_or_dns_names_and_anything_else_is_refused() {
        assert_eq!("127.0.0.1".parse(), Ok(San::Ip("127.0.0.1".parse().unwrap())));
        assert_eq!("[::1]".parse(), Ok(San::Ip("::1".parse().unwrap())));
        assert_eq!(" Localhost. ".parse(), Ok(San::Dns("localhost".into())));
        assert_eq!("*.outrider.svc".parse(), Ok(San::Dns("*.outrider.svc".into())));
        for bad in ["", "a b", "-x.svc", "x..svc", "http://x", "x_y"] {
            assert!(bad.parse::<San>().is_err(), "{bad:?}");
        }
    }

    store_test!(
        a_server_certificate_names_its_dns_and_ip_sans_and_verifies_against_the_bundle,
        |s| {
            let ca = Ca::open(s, &cfg(Duration::from_secs(3600))).await.unwrap();
            let names = [
                San::Dns("cp.outrider.svc".into()),
                San::Ip("127.0.0.1".parse().unwrap()),
            ];
            let cert = ca.issue_server(&names).unwrap();
            let (_, leaf) = x509_parser::parse_x509_certificate(&cert.chain[0]).unwrap();
            let san = leaf.subject_alternative_name().unwrap().unwrap();
            assert_eq!(
                san.value.general_names,
                [
                    GeneralName::DNSName("cp.outrider.svc"),
                    GeneralName::IPAddress(&[127, 0, 0, 1])
                ]
            );
            let eku = leaf.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && !eku.client_auth);
            let root_der = first_der(&ca.trust_bundle_pem()).unwrap();
            let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
            leaf.verify_signature(Some(root.public_key())).unwrap();
            let again = ca.issue_server(&names).unwrap();
            assert_ne!(again.key, cert.key, "each certificate has a key of its own");
            assert!(cert.not_before < cert.not_after);
            assert!(ca.issue_server(&[]).is_err());
        }
    );

    #[tokio::test]
    async fn the_operators_issuer_signs_and_its_root_is_the_bundle_and_no_root_is_stored() {
        let t = TestStore::sqlite().await;
        let dir = tempfile::tempdir().unwrap();
        let (root_pem, root_key_pem) = new_root("ops").unwrap();
        let root_key = KeyPair::from_pem(&root_key_pem).unwrap();
        let root = CertificateParams::from_ca_cert_pem(&root_pem)
            .unwrap()
            .self_signed(&root_key)
            .unwrap();
        let int_key = KeyPair::generate().unwrap();
        let mut int = CertificateParams::default();
        int.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        int.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let int = int.signed_by(&int_key, &root, &root_key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), format!("{}{}", int.pem(), root_pem)).unwrap();
        std::fs::write(dir.path().join("ca.key"), int_key.serialize_pem()).unwrap();
        let mut c = cfg(Duration::from_secs(3600));
        c.ca_cert = Some(dir.path().join("ca.crt"));
        c.ca_key = Some(dir.path().join("ca.key"));

        let ca = Ca::open(&t.store, &c).await.unwrap();
        assert_eq!(ca.trust_bundle_pem(), root_pem);
        let (_, der) = csr(&[]);
        let issued = ca.issue(&der, "default", "web").unwrap();
        assert!(
            issued.chain_pem.ends_with(&int.pem()),
            "the intermediate follows the leaf"
        );
        let leaf_der = leaf_der(&issued);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let (_, int_x509) = x509_parser::parse_x509_certificate(int.der()).unwrap();
        leaf.verify_signature(Some(int_x509.public_key())).unwrap();
        assert!(t.store.ca_roots().await.unwrap().is_empty());

        // A key that is not the certificate's is refused, naming the flags.
        std::fs::write(dir.path().join("ca.key"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let err = Ca::open(&t.store, &c).await.err().unwrap().to_string();
        assert!(
            err.contains("--ca-cert/--ca-key") && err.contains("does not belong"),
            "{err}"
        );
        t.cleanup().await;
    }
}
