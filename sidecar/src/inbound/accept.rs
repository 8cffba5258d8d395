//! What the inbound port does with a connection before HTTP is spoken: a TLS
//! ClientHello is another sidecar's mTLS (terminated with this workload's
//! certificate; the caller's identity is read from the certificate it proved), and
//! anything else is plaintext, told apart by the first byte without consuming it.
//! Whether plaintext is then allowed is the AuthorizationPolicy's `mtls` mode, judged
//! per request by the authz layer.

use crate::identity;
use crate::mtls::spiffe_id_of;
use crate::proxy::identity::PeerIdentity;
use crate::proxy::{Accept, Accepted, ConnInfo};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

/// A TLS record's first byte: content type 22, handshake. No HTTP method starts
/// with it, nor does the h2c preface.
const TLS_HANDSHAKE: u8 = 0x16;

/// A caller that opened a connection says something at once; one that does not is
/// left to the HTTP server's own head timeout.
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(10);

/// A TLS handshake between sidecars takes a round trip or two; this bounds a peer
/// that starts one and stalls.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct MeshAccept {
    identity: identity::Handle,
}

impl MeshAccept {
    pub fn new(identity: identity::Handle) -> Self {
        MeshAccept { identity }
    }
}

impl Accept for MeshAccept {
    async fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Option<Accepted> {
        let mut first = [0u8; 1];
        match tokio::time::timeout(FIRST_BYTE_WAIT, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
            Ok(Err(error)) => {
                debug!(%peer, %error, "connection failed before its first byte");
                return None;
            }
            // Plaintext, an early close, or a caller that waits for the server.
            _ => return Some(Accepted::plain(stream)),
        }
        let Some(workload) = self.identity.load_full() else {
            // Callers dial with TLS only once the control plane listed this
            // instance's identity, which it does after issuing it; a sidecar that
            // lost it (expired while the control plane was away) cannot serve TLS.
            debug!(%peer, "TLS caller refused: this sidecar holds no certificate");
            return None;
        };
        let acceptor = TlsAcceptor::from(workload.tls.server_config());
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                debug!(%peer, %error, "mTLS handshake refused");
                return None;
            }
            Err(_) => {
                debug!(%peer, "mTLS handshake timed out");
                return None;
            }
        };
        let peer_identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| spiffe_id_of(leaf))
            .and_then(|id| PeerIdentity::new(&id));
        if peer_identity.is_none() {
            // The verifier demanded a certificate chained to the mesh's roots; one
            // without a SPIFFE ID is no workload's.
            debug!(%peer, "mTLS caller refused: its certificate names no SPIFFE ID");
            return None;
        }
        Some(Accepted {
            io: tokio_util::either::Either::Right(Box::new(tls)),
            info: ConnInfo {
                peer_identity,
                ..ConnInfo::default()
            },
        })
    }
}
