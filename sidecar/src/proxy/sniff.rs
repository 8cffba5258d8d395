//! Is a captured plaintext connection HTTP (both proxies ask, of redirected
//! connections)? Told by its first bytes, without
//! consuming them: an HTTP/1 request starts with a method token and a space, and the
//! h2c preface (`PRI * HTTP/2.0…`) does too. Anything else, or silence for
//! [`DETECT_TIMEOUT`] (a server-first protocol such as MySQL, where the client waits
//! for the server's greeting), is opaque TCP.

use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a captured connection may stay silent before it is taken for a
/// server-first protocol. An HTTP client sends its request as soon as it connected;
/// one that connects ahead of time and waits longer than this is passed through to
/// the app untouched, which still answers it, only without the sidecar's policy.
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(300);

/// The longest method token looked for. The registered methods are at most 17
/// bytes (`UPDATEREDIRECTREF`).
const MAX_METHOD: usize = 20;

/// Between two looks at a connection whose first bytes did not decide yet (a
/// client that writes its request line in pieces).
const PEEK_AGAIN: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http,
    /// Not HTTP, or nothing said in time.
    Opaque,
    /// The client closed before saying anything.
    Closed,
}

/// What `bytes` (the start of a connection) say; `None` while they could still be
/// the start of a request line.
pub fn classify(bytes: &[u8]) -> Option<Sniffed> {
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b' ' if i > 0 => return Some(Sniffed::Http),
            // Methods in use are upper-case tokens; a lower-case or binary first
            // word is some other protocol's.
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => {}
            _ => return Some(Sniffed::Opaque),
        }
    }
    None
}

/// Looks at the first bytes of `stream` (leaving them there) until they decide,
/// for at most [`DETECT_TIMEOUT`].
pub async fn sniff(stream: &TcpStream) -> std::io::Result<Sniffed> {
    let deadline = Instant::now() + DETECT_TIMEOUT;
    let mut buf = [0u8; MAX_METHOD + 1];
    let mut seen = 0;
    loop {
        let Ok(peeked) = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await else {
            return Ok(Sniffed::Opaque);
        };
        let n = peeked?;
        if n == 0 {
            return Ok(if seen == 0 { Sniffed::Closed } else { Sniffed::Opaque });
        }
        if let Some(decided) = classify(&buf[..n]) {
            return Ok(decided);
        }
        if Instant::now() >= deadline {
            return Ok(Sniffed::Opaque);
        }
        // A peek returns at once while unread bytes wait, so it cannot wait for more
        // of them: look again shortly.
        if n == seen {
            tokio::time::sleep(PEEK_AGAIN.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        seen = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn request_lines_and_the_h2c_preface_are_http() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /api HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1",
            b"M-SEARCH * HTTP/1.1",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET ",
        ] {
            assert_eq!(
                classify(start),
                Some(Sniffed::Http),
                "{:?}",
                String::from_utf8_lossy(start)
            );
        }
    }

    #[test]
    fn other_protocols_are_opaque() {
        for start in [
            &b"\x16\x03\x01\x02\x00"[..],        // a TLS ClientHello
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL's SSLRequest
            b"*1\r\n$4\r\nPING\r\n",             // Redis
            b"hello\n",                          // a lower-case word
            b" GET / HTTP/1.1",                  // no method before the space
            b"GET\r\n",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1", // longer than any method
        ] {
            assert_eq!(
                classify(start),
                Some(Sniffed::Opaque),
                "{:?}",
                String::from_utf8_lossy(start)
            );
        }
    }

    #[test]
    fn a_method_without_its_space_yet_is_undecided() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"DELETE"), None);
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_request_line_in_pieces_is_http_and_its_bytes_stay_unread() {
        let (mut client, server) = pair().await;
        let writer = tokio::spawn(async move {
            client.write_all(b"GE").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
            client
        });
        assert_eq!(sniff(&server).await.unwrap(), Sniffed::Http);
        let _client = writer.await.unwrap();
        let mut buf = [0u8; 3];
        server.peek(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET", "nothing consumed");
    }

    #[tokio::test]
    async fn a_silent_client_is_a_server_first_protocol_and_one_that_hangs_up_is_closed() {
        let (client, server) = pair().await;
        assert_eq!(sniff(&server).await.unwrap(), Sniffed::Opaque);
        drop(client);
        let (client, server) = pair().await;
        drop(client);
        assert_eq!(sniff(&server).await.unwrap(), Sniffed::Closed);
    }
}
