//! The accept loop both proxy listeners run: HTTP/1.1 and h2c on one port, upgrades
//! allowed, each request handed to the proxy's tower stack, graceful drain on shutdown.

use super::identity::PeerIdentity;
use super::{Call, ErrorChain, ProxyBody};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tower::Service;
use tracing::{debug, info, warn, Instrument};

/// Largest request head (request line and headers) accepted over HTTP/1.1. Larger
/// heads get `431 Request Header Fields Too Large` from hyper. 64 KiB matches what
/// common proxies accept (Envoy's default is 60 KiB) while bounding per-connection
/// memory.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Slow clients must send their whole request head within this time (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// After shutdown starts, in-flight connections get this long to finish; the rest
/// are dropped. Below Kubernetes' default 30 s grace period.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// What a listener does with a connection before HTTP is spoken on it: terminate
/// mTLS and learn the caller's identity (inbound), read the original destination of
/// a redirected connection, or nothing ([`Plain`]). It runs on the connection's own
/// task, so a slow handshake never holds up the accept loop.
pub trait Accept: Clone + Send + Sync + 'static {
    /// The stream to serve HTTP on and what every request of it carries; `None` when
    /// the connection was dealt with here (refused, or passed through untouched).
    fn accept(&self, stream: TcpStream, peer: SocketAddr) -> impl Future<Output = Option<Accepted>> + Send;
}

/// An accepted connection, ready for HTTP.
pub struct Accepted {
    pub io: ConnIo,
    pub info: ConnInfo,
}

impl Accepted {
    pub fn plain(stream: TcpStream) -> Self {
        Accepted {
            io: Either::Left(stream),
            info: ConnInfo::default(),
        }
    }
}

/// What the connection tells about each of its requests, inserted into every
/// request's extensions by [`serve`].
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The caller's proven identity (mTLS); `None` for plaintext.
    pub peer_identity: Option<PeerIdentity>,
    /// Where the caller meant to connect, for a connection redirected to the proxy.
    pub original_dst: Option<OriginalDst>,
}

impl ConnInfo {
    fn stamp<B>(&self, req: &mut Request<B>) {
        if let Some(id) = &self.peer_identity {
            req.extensions_mut().insert(id.clone());
        }
        if let Some(dst) = self.original_dst {
            req.extensions_mut().insert(dst);
        }
    }
}

/// The address a redirected connection was sent to before capture, as a request
/// extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalDst(pub SocketAddr);

/// Accepts every connection as plaintext HTTP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Accept for Plain {
    async fn accept(&self, stream: TcpStream, _: SocketAddr) -> Option<Accepted> {
        Some(Accepted::plain(stream))
    }
}

/// A connection's byte stream: plaintext, or TLS the proxy terminated.
pub type ConnIo = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// Serves `stack` on `listener` until `shutdown` resolves; then stops accepting, lets
/// in-flight requests finish (up to [`DRAIN_TIMEOUT`]) and returns. `name` labels the
/// listener in logs; `accept` prepares each connection.
///
/// The stack is cloned per request, so its services hold their state behind `Arc`s;
/// it never fails (every error is already a response).
pub async fn serve<S, A>(
    listener: tokio::net::TcpListener,
    stack: S,
    name: &'static str,
    accept: A,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<Call, Response = Response<ProxyBody>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    A: Accept,
{
    let builder = Arc::new(server_builder());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Accept errors are per-connection (aborted handshake) or
                    // resource exhaustion (EMFILE); neither should stop the proxy.
                    // Back off briefly so that exhaustion does not spin the loop.
                    warn!(%error, listener = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "set_nodelay failed");
        }
        let stack = stack.clone();
        let accept = accept.clone();
        let builder = Arc::clone(&builder);
        // Taken before `accept`: a connection it keeps (opaque TCP passed through, a
        // handshake under way) holds the drain open as an HTTP one does.
        let watcher = graceful.watcher();
        // The connection task keeps the caller's span (the sidecar's service and pod).
        tokio::spawn(
            async move {
                let Some(Accepted { io, info }) = accept.accept(stream, peer).await else {
                    return;
                };
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let mut stack = stack.clone();
                    info.stamp(&mut req);
                    async move {
                        poll_fn(|cx| stack.poll_ready(cx)).await?;
                        stack.call(Call::new(req, peer)).await
                    }
                });
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                if let Err(error) = watcher.watch(connection.into_owned()).await {
                    debug!(%peer, listener = name, error = %ErrorChain(&*error), "connection ended with an error");
                }
            }
            .in_current_span(),
        );
    }
    drop(listener);
    info!(connections = graceful.count(), listener = name, "proxy draining");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        warn!(listener = name, "drain timed out; dropping remaining connections");
    }
    Ok(())
}

/// The HTTP/1.1 + h2c settings every proxy listener serves with (head limits,
/// timers). Public so that the fuzz targets (`fuzz/`) serve the very same front over
/// in-memory streams.
pub fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // hyper has no separate head limit in the auto builder; the read buffer
        // bound is what turns an oversized head into 431.
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX));
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    /// Deals with every connection itself, as opaque pass-through does: echoes its
    /// bytes until the peer closes.
    #[derive(Clone)]
    struct Echo;

    impl Accept for Echo {
        async fn accept(&self, mut stream: TcpStream, _: SocketAddr) -> Option<Accepted> {
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            None
        }
    }

    #[tokio::test]
    async fn a_connection_the_accept_step_keeps_is_drained_not_dropped_on_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stack = tower::service_fn(|_: Call| async {
            Ok::<_, Infallible>(Response::new(ProxyBody::Right(Default::default())))
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, stack, "test", Echo, async move {
            let _ = stopped.await;
        }));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"one").await.unwrap();
        let mut got = [0u8; 3];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one");

        stop.send(()).unwrap();
        // Draining: no new connection is taken, and the open one still works.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!served.is_finished(), "serve returned with a connection open");
        conn.write_all(b"two").await.unwrap();
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"two");
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");

        drop(conn);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("serve returns once the connection closed")
            .unwrap()
            .unwrap();
    }
}
