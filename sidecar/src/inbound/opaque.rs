//! A captured inbound connection that is not HTTP (a database protocol, a
//! server-first one, any TCP): its bytes go to the app's original port untouched,
//! both ways, until either side closes. Unless the service's `mtls` is `strict`, in
//! which case plaintext that the proxy cannot judge request by request is closed.

use crate::proxy::CONNECT_TIMEOUT;
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tracing::debug;

/// Splices `client` to `target` until both directions are done.
pub async fn pass_through(mut client: TcpStream, target: SocketAddr, peer: SocketAddr) {
    let mut app = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(app)) => app,
        Ok(Err(error)) => {
            debug!(%peer, %target, %error, "opaque connection: the app refused it");
            return;
        }
        Err(_) => {
            debug!(%peer, %target, "opaque connection: the app did not accept it in time");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut app).await {
        Ok((sent, received)) => debug!(%peer, %target, sent, received, "opaque connection closed"),
        Err(error) => debug!(%peer, %target, %error, "opaque connection ended with an error"),
    }
}
