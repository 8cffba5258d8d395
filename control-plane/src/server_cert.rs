//! The control plane's own server certificates from its CA (`--tls-san`, the
//! injection webhook): issued at start for a fixed set of names, served through a
//! rustls resolver, and replaced before they expire without a restart.
//!
//! Each certificate has a fresh key made in memory; neither ever touches the store
//! or a disk, so every replica has its own and a restart makes a new one.

use crate::ca::{Ca, CaError, San};
use arc_swap::ArcSwap;
use outrider_runtime::shutdown::CancellationToken;
use outrider_runtime::Backoff;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// Renewal starts when this share of the lifetime has passed, leaving a third for
/// retries should signing ever fail.
const RENEW_AT: f64 = 2.0 / 3.0;

/// Serves whatever certificate is current; [`IssuedCert::renew`] swaps it.
#[derive(Debug)]
pub struct IssuedCert {
    names: Vec<San>,
    current: ArcSwap<CertifiedKey>,
    /// When the current certificate is due for renewal.
    renew_at: ArcSwap<SystemTime>,
}

impl ResolvesServerCert for IssuedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl IssuedCert {
    /// A certificate for `names`, issued now.
    pub fn issue(ca: &Ca, names: Vec<San>) -> Result<Arc<IssuedCert>, CaError> {
        let (key, renew_at) = certified(ca, &names)?;
        Ok(Arc::new(IssuedCert {
            names,
            current: ArcSwap::from_pointee(key),
            renew_at: ArcSwap::from_pointee(renew_at),
        }))
    }

    /// The names the certificate is for.
    pub fn names(&self) -> &[San] {
        &self.names
    }

    /// The current certificate (leaf first), DER.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Issues a new certificate and serves it from the next handshake on.
    pub fn renew(&self, ca: &Ca) -> Result<(), CaError> {
        let (key, renew_at) = certified(ca, &self.names)?;
        self.current.store(Arc::new(key));
        self.renew_at.store(Arc::new(renew_at));
        Ok(())
    }

    /// Renews each certificate when it is due, and at once when the CA's signer or
    /// bundle changes (a root rotation: the certificate then chains to the root that
    /// signs now, before the old one is retired), until `stop`; a failure is retried
    /// on a backoff while the old certificate is still served.
    pub async fn keep_renewed(self: Arc<Self>, ca: Arc<Ca>, stop: CancellationToken) {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut failures = 0;
        let mut changes = ca.subscribe();
        loop {
            let due = **self.renew_at.load();
            let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = changes.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
            match self.renew(&ca) {
                Ok(()) => {
                    failures = 0;
                    info!(names = ?self.names.iter().map(San::to_string).collect::<Vec<_>>(), "server certificate renewed");
                }
                Err(e) => {
                    warn!(error = %e, "server certificate renewal failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.delay(failures)) => {}
                        () = stop.cancelled() => return,
                    }
                    failures = failures.saturating_add(1);
                }
            }
        }
    }
}

fn certified(ca: &Ca, names: &[San]) -> Result<(CertifiedKey, SystemTime), CaError> {
    let issued = ca.issue_server(names)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key));
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CaError::Issuer(format!("server key: {e}")))?;
    let chain = issued.chain.into_iter().map(CertificateDer::from).collect();
    let lifetime = issued.not_after.duration_since(issued.not_before).unwrap_or_default();
    Ok((
        CertifiedKey::new(chain, signing),
        issued.not_before + lifetime.mul_f64(RENEW_AT),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CaConfig;
    use crate::store::tests::{store_test, TestStore};
    use crate::store::Store;

    store_test!(renewal_swaps_in_a_new_certificate_for_the_same_names, |s| {
        let cfg = CaConfig {
            trust_domain: "outrider.local".into(),
            cert_ttl: Duration::from_secs(3600),
            ca_cert: None,
            ca_key: None,
        };
        let ca = Ca::open(s, &cfg).await.unwrap();
        let cert = IssuedCert::issue(&ca, vec![San::Dns("localhost".into())]).unwrap();
        let before = cert.chain();
        let due = **cert.renew_at.load();
        let from_now = due.duration_since(SystemTime::now()).unwrap();
        assert!(
            from_now > Duration::from_secs(2300) && from_now < Duration::from_secs(2400),
            "{from_now:?}"
        );
        cert.renew(&ca).unwrap();
        assert_ne!(cert.chain(), before);
        let chain = cert.chain();
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [x509_parser::extensions::GeneralName::DNSName("localhost")]
        );
    });
}
