//! How the two listeners treat connections that do not behave: the HTTP port's
//! accept loop (request-head and idle timeouts, a cap on open connections, the
//! peer's address on every request) and the gRPC port's handshake deadline, with
//! or without TLS (the TLS handshake counts against the same time).
//!
//! Without these, a client that opens connections and sends half a request head,
//! or only the HTTP/2 preface, holds a socket and a task for as long as it likes.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use outrider_runtime::shutdown::CancellationToken;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceExt;
use tracing::{debug, warn};

/// How the HTTP port treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time for a request head to arrive, counted from the connection's start or the
    /// end of the previous response, so it is also the idle keep-alive timeout.
    pub header_timeout: Duration,
    /// Connections open at once; more wait in the listen queue.
    pub max_connections: usize,
}

/// Serves `app` over HTTP/1.1 on `listener` (inside TLS when `tls` is given) until
/// `stop`, then lets in-flight requests finish (the caller bounds how long). Each
/// request carries its peer's address as `ConnectInfo<SocketAddr>` (the
/// failed-authentication throttle reads it).
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let Some((stream, peer)) = accept_until(&listener, "HTTP", &stop).await else {
            break;
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        // Taken before the handshake, so that a drain waits for it too.
        let watcher = graceful.watcher();
        let (builder, tls) = (builder.clone(), tls.clone());
        tokio::spawn(async move {
            // A head that timed out or a reset is the client's doing, not a server fault.
            let served = match tls {
                None => watcher.watch(builder.serve_connection(TokioIo::new(stream), svc)).await,
                // The handshake gets the head's time, so a client that stalls it
                // holds a connection no longer than one that stalls its head.
                Some(tls) => match crate::tls::accept(&tls, stream, limits.header_timeout).await {
                    Ok(stream) => watcher.watch(builder.serve_connection(TokioIo::new(stream), svc)).await,
                    Err(e) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                },
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "HTTP connection closed");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The gRPC port's accepted connections over TLS, each handshaken on its own task
/// (a slow client never holds up the next) within `handshake`, which also bounds
/// the HTTP/2 preface that follows: one deadline for the whole handshake. The
/// returned future is the accept loop, which ends at `stop`; the stream ends with it.
pub fn tls_incoming(
    listener: TcpListener,
    tls: TlsAcceptor,
    handshake: Duration,
    stop: CancellationToken,
) -> (
    impl Future<Output = ()> + Send + 'static,
    ReceiverStream<io::Result<HandshakeDeadline<TlsStream<TcpStream>>>>,
) {
    let (tx, rx) = mpsc::channel(64);
    let accepting = async move {
        loop {
            let Some((stream, peer)) = accept_until(&listener, "gRPC", &stop).await else {
                break;
            };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + handshake;
                match crate::tls::accept(&tls, stream, handshake).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(HandshakeDeadline::until(stream, deadline))).await;
                    }
                    Err(e) => debug!(%peer, error = %e, "TLS handshake failed"),
                }
            });
        }
    };
    (accepting, ReceiverStream::new(rx))
}

/// The next connection (with `TCP_NODELAY`), or `None` once `stop` is cancelled.
async fn accept_until(listener: &TcpListener, port: &str, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(error = %e, "{port} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    }
}

/// The HTTP/2 connection preface and the head of the client's first frame (its
/// SETTINGS): what a gRPC client sends at once before anything else.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// A gRPC connection that must deliver [`HANDSHAKE_BYTES`] within a deadline, or
/// its reads fail and the server closes it. tonic has no preface timeout, and its
/// HTTP/2 keep-alive pings start only once a handshake is done; after that they
/// find dead peers, so the deadline ends with the handshake.
pub struct HandshakeDeadline<IO> {
    io: IO,
    seen: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> HandshakeDeadline<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        Self::until(io, tokio::time::Instant::now() + timeout)
    }

    /// The same with a deadline that has already started (a TLS handshake used part
    /// of it).
    pub fn until(io: IO, deadline: tokio::time::Instant) -> Self {
        Self {
            io,
            seen: 0,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HandshakeDeadline<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Polled first so that its waker is registered while the read is pending.
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface and first frame within the handshake timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.seen += buf.filled().len() - before;
            if this.seen >= HANDSHAKE_BYTES {
                this.deadline = None;
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HandshakeDeadline<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for HandshakeDeadline<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_stops_before_its_first_frame_fails_at_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut guarded = HandshakeDeadline::new(server, Duration::from_secs(10));
        let mut client = client;
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = guarded.read(&mut buf).await.unwrap();
        assert_eq!(n, 24);
        let err = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_handshake_a_silent_connection_is_left_to_keep_alive() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut guarded = HandshakeDeadline::new(server, Duration::from_secs(10));
        client.write_all(&[0u8; HANDSHAKE_BYTES]).await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < HANDSHAKE_BYTES {
            got += guarded.read(&mut buf).await.unwrap();
        }
        let later = tokio::time::timeout(Duration::from_secs(60), guarded.read(&mut buf)).await;
        assert!(
            later.is_err(),
            "no deadline once the handshake is in: the read just waits"
        );
    }
}
