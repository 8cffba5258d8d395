//! HTTP/1.1 upgrades (WebSocket) through the sidecar: the handshake is proxied like
//! any request, and on `101 Switching Protocols` both upgraded connections are
//! spliced together byte for byte.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

/// An HTTP/1.1 request asking to switch protocols (`Connection: upgrade` + `Upgrade`).
/// HTTP/2 has no such mechanism (RFC 9113 §8.6).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Puts back the two hop-by-hop headers an upgrade needs, after the usual removal.
pub fn restore_upgrade_headers(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Once both sides have switched protocols, copies bytes both ways until either side
/// closes. The tunnel is its own task: it outlives the request that opened it.
pub fn splice(on_client: OnUpgrade, on_upstream: OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(on_client, on_upstream) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    debug!(%error, "upgraded connection ended with an error");
                }
            }
            Err(error) => debug!(%error, "upgrade failed"),
        }
    });
}
