//! What the inbound port does with a connection before HTTP is spoken: a TLS
//! ClientHello is another sidecar's mTLS (terminated with this workload's
//! certificate; the caller's identity is read from the certificate it proved), and
//! anything else is plaintext, told apart by the first byte without consuming it.
//! Whether plaintext is then allowed is the AuthorizationPolicy's `mtls` mode, judged
//! per request by the authz layer.
//!
//! A connection the capture rules redirected here carries its original destination
//! (every request of it gets the [`OriginalDst`] extension: the app is reached on
//! that port). Its plaintext is HTTP only when its first bytes say so
//! ([`sniff`](super::sniff)); anything else is opaque TCP, passed through to the
//! app's original port untouched, or closed when the service's `mtls` is `strict`.
//! A direct connection to the inbound port is always HTTP (or mTLS), as before.

use super::opaque;
use crate::identity;
use crate::mtls::spiffe_id_of;
use crate::proxy::identity::PeerIdentity;
use crate::proxy::redirect::original_dst;
use crate::proxy::sniff::{self, Sniffed};
use crate::proxy::{Accept, Accepted, ConnInfo, OriginalDst};
use crate::state::SidecarState;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
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
    /// The applied snapshot, for the `mtls` mode of opaque plaintext.
    state: Arc<SidecarState>,
}

impl MeshAccept {
    pub fn new(state: Arc<SidecarState>) -> Self {
        MeshAccept {
            identity: Arc::clone(&state.identity),
            state,
        }
    }

    /// A captured plaintext connection: HTTP is served, opaque TCP goes to the app's
    /// original port (`None`: dealt with here).
    async fn captured_plaintext(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
        silent: bool,
    ) -> Option<Accepted> {
        let sniffed = if silent {
            Ok(Sniffed::Opaque)
        } else {
            sniff::sniff(&stream).await
        };
        match sniffed {
            Ok(Sniffed::Http) => Some(Accepted {
                io: tokio_util::either::Either::Left(stream),
                info: ConnInfo {
                    original_dst: Some(OriginalDst(dst)),
                    ..ConnInfo::default()
                },
            }),
            Ok(Sniffed::Opaque) => {
                let admitted = self
                    .state
                    .applied
                    .load()
                    .as_ref()
                    .and_then(|a| a.authz.as_ref())
                    .is_none_or(|authz| authz.admit_opaque_plaintext());
                if admitted {
                    opaque::pass_through(stream, app_on(dst), peer).await;
                } else {
                    debug!(%peer, original = %dst, "opaque plaintext closed: this service takes only mTLS (mtls: strict)");
                }
                None
            }
            Ok(Sniffed::Closed) => None,
            Err(error) => {
                debug!(%peer, %error, "connection failed before its first bytes");
                None
            }
        }
    }
}

/// Where the app is reached for a connection redirected from `dst`: its port on
/// localhost, as for `OUTRIDER_APP_PORT`.
pub fn app_on(dst: SocketAddr) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port()))
}

impl Accept for MeshAccept {
    async fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Option<Accepted> {
        let original = original_dst(&stream);
        // A captured connection that says nothing soon may be a server-first protocol.
        let wait = if original.is_some() {
            sniff::DETECT_TIMEOUT
        } else {
            FIRST_BYTE_WAIT
        };
        let mut first = [0u8; 1];
        match tokio::time::timeout(wait, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
            Ok(Err(error)) => {
                debug!(%peer, %error, "connection failed before its first byte");
                return None;
            }
            // Plaintext, an early close, or a caller that waits for the server.
            peeked => {
                return match original {
                    Some(dst) => self.captured_plaintext(stream, peer, dst, peeked.is_err()).await,
                    None => Some(Accepted::plain(stream)),
                }
            }
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
                original_dst: original.map(OriginalDst),
            },
        })
    }
}
