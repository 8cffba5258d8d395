//! HTTP/1.1 upgrades (WebSocket) through the sidecar: the handshake is proxied like
//! any request, and on `101 Switching Protocols` both upgraded connections are
//! spliced together byte for byte. Shared by the inbound and outbound proxies.

use super::{InboundProxy, ProxyBody};
use crate::ratelimit::RateLimitHeaders;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::net::IpAddr;
use tracing::debug;

/// An HTTP/1.1 request asking to switch protocols (`Connection: upgrade` + `Upgrade`).
/// HTTP/2 has no such mechanism (RFC 9113 §8.6).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
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
pub(crate) fn restore_upgrade_headers(headers: &mut http::HeaderMap, upgrade: Option<HeaderValue>) {
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Once both sides have switched protocols, copies bytes both ways until either side
/// closes. The tunnel is its own task: it outlives the request that opened it.
pub(crate) fn splice(on_client: OnUpgrade, on_upstream: OnUpgrade) {
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

impl InboundProxy {
    /// Forwards an upgrade handshake to the app over HTTP/1.1 (whatever
    /// `OUTRIDER_APP_PROTOCOL` says: upgrades exist only in HTTP/1.1) and splices the
    /// connections when the app agrees.
    pub(super) async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        peer: IpAddr,
        limit: Option<RateLimitHeaders>,
    ) -> Response<ProxyBody> {
        let on_client = hyper::upgrade::on(&mut req);
        let upgrade = req.headers().get(header::UPGRADE).cloned();
        let mut upstream = self.rewrite(req, peer, Version::HTTP_11);
        restore_upgrade_headers(upstream.headers_mut(), upgrade);
        let mut response = match self.client.request(upstream).await {
            Ok(response) => response,
            Err(error) => return self.app_error(&error),
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return self.downstream_response(response, limit);
        }
        let on_app = hyper::upgrade::on(&mut response);
        splice(on_client, on_app);
        let agreed = response.headers().get(header::UPGRADE).cloned();
        let mut response = self.downstream_response(response, limit);
        restore_upgrade_headers(response.headers_mut(), agreed);
        response
    }
}
