//! Whom the sidecar's own clients trust (`OUTRIDER_CA_FILE`, or the same PEM inline in
//! `OUTRIDER_CA_PEM`, as injection gives it): the control plane is verified against
//! those certificates, or the system roots without any; log sinks and reload hooks
//! against the system roots plus them. Every client is rustls.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read OUTRIDER_CA_FILE {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// `what`: `OUTRIDER_CA_FILE <path>` or `OUTRIDER_CA_PEM`.
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("OUTRIDER_CONTROL_PLANE {url:?}: {reason}")]
    ControlPlane { url: String, reason: String },
}

/// The extra roots from `OUTRIDER_CA_FILE`, if any (PEM, one or more certificates).
#[derive(Debug, Clone, Default)]
pub struct Trust {
    ca_pem: Option<Vec<u8>>,
    extra: Vec<reqwest::Certificate>,
}

impl Trust {
    pub fn load(ca_file: Option<&Path>) -> Result<Self, TrustError> {
        let Some(path) = ca_file else {
            return Ok(Self::default());
        };
        let pem = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(format!("OUTRIDER_CA_FILE {}", path.display()), pem)
    }

    /// The certificates of `OUTRIDER_CA_PEM` (or, without it, of `ca_file`).
    pub fn load_either(ca_file: Option<&Path>, ca_pem: Option<&str>) -> Result<Self, TrustError> {
        match ca_pem.filter(|p| !p.trim().is_empty()) {
            Some(pem) => Self::from_pem("OUTRIDER_CA_PEM".into(), pem.as_bytes().to_vec()),
            None => Self::load(ca_file),
        }
    }

    /// `pem` (one or more certificates), read from `what`.
    fn from_pem(what: String, pem: Vec<u8>) -> Result<Self, TrustError> {
        let pem_error = |reason: String| TrustError::Pem {
            what: what.clone(),
            reason,
        };
        let extra =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| pem_error(format!("not PEM certificates: {e}")))?;
        if extra.is_empty() {
            return Err(pem_error(
                "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        Ok(Self {
            ca_pem: Some(pem),
            extra,
        })
    }

    /// The control stream's endpoint: `http://` is plaintext, `https://` is TLS
    /// verified against `OUTRIDER_CA_FILE` (or the system roots), with no fallback
    /// to plaintext; any other URL is refused.
    pub fn control_plane(&self, url: &str) -> Result<Endpoint, TrustError> {
        let refuse = |reason: String| TrustError::ControlPlane {
            url: url.to_owned(),
            reason,
        };
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| refuse(e.to_string()))?;
        let uri = endpoint.uri().clone();
        if uri.host().is_none_or(str::is_empty) {
            return Err(refuse("expected http://host:port or https://host:port".into()));
        }
        match uri.scheme_str() {
            Some("http") => Ok(endpoint),
            Some("https") => {
                let tls = ClientTlsConfig::new().timeout(Duration::from_secs(5));
                let tls = match &self.ca_pem {
                    Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                    None => tls.with_native_roots(),
                };
                endpoint.tls_config(tls).map_err(|e| refuse(error_chain(&e)))
            }
            _ => Err(refuse("expected an http:// or https:// URL".into())),
        }
    }

    /// A client for log sinks and reload hooks: rustls, the system roots and the
    /// extra roots.
    pub fn http_client(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        self.extra
            .iter()
            .cloned()
            .fold(builder.use_rustls_tls(), reqwest::ClientBuilder::add_root_certificate)
    }
}

/// An error and its causes on one line ("transport error: … invalid peer
/// certificate: UnknownIssuer"): tonic's and reqwest's own `Display` stop at the
/// outermost, which hides why a TLS connection failed.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_url_that_is_neither_http_nor_https_is_refused_naming_the_variable() {
        let trust = Trust::default();
        assert!(trust.control_plane("http://127.0.0.1:18000").is_ok());
        for bad in ["ftp://cp:18000", "cp:18000", "http://"] {
            let e = trust.control_plane(bad).unwrap_err().to_string();
            assert!(e.starts_with("OUTRIDER_CONTROL_PLANE"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = Trust::load(Some(&path)).unwrap_err().to_string();
        assert!(
            e.contains("OUTRIDER_CA_FILE") && e.contains("ca.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = Trust::load(Some(&dir.path().join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read OUTRIDER_CA_FILE"), "{e}");
        let e = Trust::load_either(Some(&path), Some("nor this"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("OUTRIDER_CA_PEM: ") && e.contains("no certificate"),
            "{e}"
        );
    }
}
