//! Where a connection redirected to a proxy port (`outrider-sidecar init`'s nat
//! rules) was going: the kernel keeps the original destination in its connection
//! tracking, read with `SO_ORIGINAL_DST` (`IP6T_SO_ORIGINAL_DST` for IPv6).

use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The original destination of `stream`, or `None` when it was not redirected: a
/// direct connection to the proxy port (its original destination is the socket's own
/// address), or no connection tracking at all (no nat rules in the namespace).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let socket = socket2::SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        // A dual-stack listener's IPv4 caller: the record is IPv4's.
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    };
    let original = original.ok()?.as_socket()?;
    let itself = original.port() == local.port() && original.ip().to_canonical() == local.ip().to_canonical();
    (!itself).then_some(original)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
    }
}
