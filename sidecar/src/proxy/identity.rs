//! The caller's proven identity, as a request extension.
//!
//! The accept loop inserts a [`PeerIdentity`] on every request of a connection whose
//! peer presented a workload certificate (mTLS); a plaintext connection's requests
//! carry none. Layers read it with [`PeerIdentity::of`]; nothing else tells who calls.

use http::{HeaderName, HeaderValue, Request};
use std::sync::Arc;

/// The header the app reads the caller's identity from. Whatever a client sends in it
/// is removed by the inbound proxy; only the proxy sets it.
pub static PEER_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-outrider-peer-identity");

/// A caller's SPIFFE ID (`spiffe://<trust-domain>/ns/<namespace>/svc/<service>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    id: Arc<str>,
    /// The same, ready for [`PEER_IDENTITY_HEADER`]: cloned per request, not rebuilt.
    header: HeaderValue,
}

impl PeerIdentity {
    /// `None` when `id` cannot travel in a header (it then cannot be a SPIFFE ID either).
    pub fn new(id: &str) -> Option<Self> {
        Some(PeerIdentity {
            header: HeaderValue::from_str(id).ok()?,
            id: id.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn header_value(&self) -> HeaderValue {
        self.header.clone()
    }

    /// The identity of `req`'s caller; `None` for a plaintext caller.
    pub fn of<B>(req: &Request<B>) -> Option<&PeerIdentity> {
        req.extensions().get::<PeerIdentity>()
    }
}
