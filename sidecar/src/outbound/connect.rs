//! How the outbound proxy dials an instance: plaintext, or mTLS when the control
//! plane listed the instance's identity. The balance layer marks such an attempt
//! with the `https` scheme, so plaintext and mTLS connections to one address never
//! share a pool; this connector then presents this workload's certificate and makes
//! the instance prove exactly the identity listed for it. A failed proof is a
//! connect failure: the attempt is retried elsewhere and the endpoint counted as
//! failing, like one that refuses connections.

use crate::mtls::Credentials;
use crate::proxy::{client, CONNECT_TIMEOUT};
use crate::state::SidecarState;
use http::uri::Scheme;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TLS 1.3 handshake is one round trip; this bounds an instance that accepts TCP
/// and then stalls.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct MeshConnector {
    tcp: HttpConnector,
    state: Arc<SidecarState>,
    h2: bool,
}

impl MeshConnector {
    pub fn new(state: Arc<SidecarState>, h2: bool) -> Self {
        let mut tcp = client::connector();
        // The scheme says whether to add TLS (here), not whether to dial.
        tcp.enforce_http(false);
        MeshConnector { tcp, state, h2 }
    }

    /// The settings for an mTLS attempt to `uri`'s instance: this workload's
    /// certificate and the identity the instance must prove.
    fn plan(&self, uri: &Uri) -> Result<(Arc<rustls::ClientConfig>, IpAddr), BoxError> {
        let authority = uri.authority().ok_or("no instance address")?;
        let ip: IpAddr = authority
            .host()
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .map_err(|_| "instance address is not an IP address")?;
        let workload = self
            .state
            .identity
            .load_full()
            .ok_or("this sidecar holds no certificate for mTLS")?;
        let expected = self
            .state
            .applied
            .load()
            .as_ref()
            .and_then(|a| a.destinations.identity_at(authority))
            .ok_or("the instance is no longer listed with an identity")?;
        let credentials: &Credentials = &workload.tls;
        Ok((credentials.client_config(&expected, self.h2)?, ip))
    }
}

impl Service<Uri> for MeshConnector {
    type Response = TokioIo<MeshStream>;
    type Error = BoxError;
    // One allocation per new connection, not per request.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let plan = if uri.scheme() == Some(&Scheme::HTTPS) {
            match self.plan(&uri) {
                Ok(plan) => Some(plan),
                Err(e) => return Box::pin(async move { Err(e) }),
            }
        } else {
            None
        };
        let connecting = self.tcp.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let Some((config, ip)) = plan else {
                return Ok(TokioIo::new(MeshStream(Either::Left(tcp))));
            };
            let handshake = TlsConnector::from(config).connect(ServerName::IpAddress(ip.into()), tcp);
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT.max(CONNECT_TIMEOUT), handshake)
                .await
                .map_err(|_| "mTLS handshake timed out")??;
            Ok(TokioIo::new(MeshStream(Either::Right(Box::new(tls)))))
        })
    }
}

/// A connection to an instance: plaintext or mTLS. A newtype only so that it can
/// tell hyper what ALPN agreed.
pub struct MeshStream(Either<TcpStream, Box<TlsStream<TcpStream>>>);

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        match &self.0 {
            Either::Left(tcp) => tcp.connected(),
            Either::Right(tls) => {
                let (tcp, session) = tls.get_ref();
                if session.alpn_protocol() == Some(b"h2") {
                    tcp.connected().negotiated_h2()
                } else {
                    tcp.connected()
                }
            }
        }
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
