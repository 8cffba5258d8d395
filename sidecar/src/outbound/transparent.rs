//! Connections redirected to the outbound port (`outrider-sidecar init`'s iptables
//! rules): where the app meant to connect (`SO_ORIGINAL_DST`) and what it speaks.
//!
//! A connection whose original destination is the listener's own address (or that
//! has none) was not redirected: the app called the outbound port itself (explicit
//! mode). A redirected one is told apart by its first bytes, peeked (not read): an
//! HTTP/1 request line (`GET `, `POST `…) or the HTTP/2 preface (`PRI * HTTP/2.0`) is
//! served as HTTP, with the original destination on every request
//! ([`OriginalDst`]); anything else, or nothing within [`DETECT_TIMEOUT`] (a protocol
//! where the server speaks first, such as MySQL or SMTP), is opaque and spliced by
//! [`Passthrough::splice`].

use super::passthrough::Passthrough;
use crate::proxy::{Accept, Accepted, ConnInfo, OriginalDst};
use socket2::SockRef;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// How long a redirected connection's first bytes are waited for before it is taken
/// to be a server-first protocol and spliced. A client-first client sends its first
/// bytes with (or right after) the handshake; a server-first one sends nothing until
/// the server's greeting, which the splice then delivers, so this is the delay such a
/// connection sees once, at its start. 300 ms is far above one scheduling delay on a
/// loaded node and far below a database driver's connect timeout.
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(300);

/// While the first bytes are an incomplete prefix, they are peeked again this often.
const PEEK_INTERVAL: Duration = Duration::from_millis(5);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// HTTP/1 methods (RFC 9110 §9 and PATCH), each followed by a space on the wire.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http,
    Opaque,
    /// A prefix of an HTTP start: more bytes decide.
    NeedMore,
}

/// Classifies the first bytes of a connection (pure; see the module docs).
pub fn classify(first: &[u8]) -> Detected {
    if first.is_empty() {
        return Detected::NeedMore;
    }
    let mut partial = false;
    for start in METHODS.iter().copied().chain([H2_PREFACE]) {
        if first.starts_with(start) {
            return Detected::Http;
        }
        if start.starts_with(first) {
            partial = true;
        }
    }
    if partial {
        Detected::NeedMore
    } else {
        Detected::Opaque
    }
}

/// Peeks at `stream` until [`classify`] decides, the client closes, or
/// [`DETECT_TIMEOUT`] passes (opaque).
async fn detect(stream: &TcpStream) -> Detected {
    let mut buf = [0u8; H2_PREFACE.len()];
    let decided = tokio::time::timeout(DETECT_TIMEOUT, async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Detected::Opaque,
                Ok(n) => n,
            };
            match classify(&buf[..n]) {
                Detected::NeedMore if n < buf.len() => tokio::time::sleep(PEEK_INTERVAL).await,
                Detected::NeedMore => return Detected::Opaque,
                decided => return decided,
            }
        }
    })
    .await;
    decided.unwrap_or(Detected::Opaque)
}

/// Where a connection was going before it was redirected here; `None` when it was
/// not redirected (or the kernel keeps no record, as without connection tracking).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = SockRef::from(stream);
    let dst = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    .ok()?
    .as_socket()?;
    let same = dst.port() == local.port() && dst.ip().to_canonical() == local.ip().to_canonical();
    (!same).then_some(dst)
}

/// The outbound listener's [`Accept`]: explicit connections as they are, redirected
/// ones by what they speak.
#[derive(Clone)]
pub struct Transparent {
    passthrough: Arc<Passthrough>,
}

impl Transparent {
    pub fn new(passthrough: Arc<Passthrough>) -> Self {
        Transparent { passthrough }
    }
}

impl Accept for Transparent {
    async fn accept(&self, stream: TcpStream, _: SocketAddr) -> Option<Accepted> {
        let Some(dst) = original_dst(&stream) else {
            return Some(Accepted::plain(stream));
        };
        match detect(&stream).await {
            Detected::Http => Some(Accepted {
                io: Either::Left(stream),
                info: ConnInfo {
                    original_dst: Some(OriginalDst(dst)),
                    ..ConnInfo::default()
                },
            }),
            Detected::Opaque | Detected::NeedMore => {
                self.passthrough.splice(stream, dst).await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_starts_are_told_from_everything_else() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
            b"PRI * HTTP/2.0\r\n\r\nSM",
            b"PATCH ",
        ] {
            assert_eq!(classify(http), Detected::Http, "{:?}", String::from_utf8_lossy(http));
        }
        // TLS ClientHello, PostgreSQL startup, a Redis command, lowercase, no space.
        for opaque in [
            &[0x16, 0x03, 0x01, 0x02][..],
            &[0, 0, 0, 8, 4, 210, 22, 47],
            b"*1\r\n$4\r\nPING",
            b"get / HTTP/1.1",
            b"GETX",
            b"PRI * HTTP/1.1",
        ] {
            assert_eq!(classify(opaque), Detected::Opaque, "{opaque:?}");
        }
        for partial in [&b""[..], b"G", b"GE", b"GET", b"PR", b"PRI * HTTP/2", b"DELE"] {
            assert_eq!(classify(partial), Detected::NeedMore, "{partial:?}");
        }
    }

    /// A connected pair over loopback: (the client's end, the accepted end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    #[tokio::test]
    async fn a_connection_not_redirected_has_no_original_destination() {
        let (_client, accepted) = pair().await;
        assert_eq!(original_dst(&accepted), None);
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_timeout_and_a_slow_request_line_is_http() {
        let (_silent, accepted) = pair().await;
        assert_eq!(detect(&accepted).await, Detected::Opaque);

        use tokio::io::AsyncWriteExt;
        let (mut slow, accepted) = pair().await;
        slow.write_all(b"GE").await.unwrap();
        let detecting = tokio::spawn(async move { detect(&accepted).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        slow.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(detecting.await.unwrap(), Detected::Http);
    }
}
