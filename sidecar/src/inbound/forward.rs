//! The innermost inbound layer: rewrites a request for the app (origin-form URI on the
//! app's address, no hop-by-hop headers, forwarding headers) and sends it over a
//! pooled connection; an upgrade's `101` splices the two connections.

use crate::config::AppProtocol;
use crate::proxy::headers::{self, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::proxy::respond::local;
use crate::proxy::{client, upgrade, Call, ErrorChain, Local, ProxyBody};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::{Client, ResponseFuture};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::Service;
use tracing::warn;

/// The app: its address and the pools of connections to it. Cloning shares them.
#[derive(Clone)]
pub struct ToApp {
    app: Arc<App>,
}

struct App {
    authority: Authority,
    /// HTTP/1.1 to the app: every request for an `http1` app, upgrades for any app.
    http1: Client<client::FixedConnector, Incoming>,
    /// HTTP/2 to an `h2c` app (a multiplexed connection per name called): its URIs
    /// carry the caller's authority, the connections go to the app.
    h2c: Option<Client<client::FixedConnector, Incoming>>,
}

impl ToApp {
    pub fn new(app_addr: SocketAddr, protocol: AppProtocol) -> Self {
        // A `SocketAddr` always renders as a valid authority (`1.2.3.4:80`, `[::1]:80`).
        let authority = Authority::from_maybe_shared(Bytes::from(app_addr.to_string()))
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        ToApp {
            app: Arc::new(App {
                authority,
                http1: client::pooled_to(app_addr, false),
                h2c: (protocol == AppProtocol::H2c).then(|| client::pooled_to(app_addr, true)),
            }),
        }
    }
}

impl Service<Call> for ToApp {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ToAppFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pools open connections on demand; there is nothing to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let Call { mut req, peer, .. } = call;
        let app = &self.app;
        // A header lookup, so plain requests pay nothing for upgrade support.
        if upgrade::is_upgrade(&req) {
            // Upgrades exist only in HTTP/1.1, whatever `OUTRIDER_APP_PROTOCOL` says.
            let on_client = hyper::upgrade::on(&mut req);
            let asked = req.headers().get(header::UPGRADE).cloned();
            let mut upstream = app.rewrite(req, peer.ip(), Version::HTTP_11);
            upgrade::restore_upgrade_headers(upstream.headers_mut(), asked);
            return ToAppFuture {
                inner: app.http1.request(upstream),
                on_client: Some(on_client),
            };
        }
        let (client, version) = match &app.h2c {
            Some(h2c) => (h2c, Version::HTTP_2),
            None => (&app.http1, Version::HTTP_11),
        };
        let upstream = app.rewrite(req, peer.ip(), version);
        ToAppFuture {
            inner: client.request(upstream),
            on_client: None,
        }
    }
}

impl App {
    /// Turns a request from the world into one for the app: origin-form URI on the
    /// app's address, the app's HTTP `version`, no hop-by-hop headers, forwarding
    /// headers added.
    fn rewrite(&self, req: Request<Incoming>, peer: IpAddr, version: Version) -> Request<Incoming> {
        let (mut parts, body) = req.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();

        // HTTP/2 carries the authority in the URI, not in `Host`; keep it for the app,
        // which would otherwise see the sidecar's own target address.
        if !parts.headers.contains_key(header::HOST) {
            if let Some(authority) = &uri.authority {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(header::HOST, host);
                }
            }
        }
        headers::remove_hop_by_hop(&mut parts.headers);
        headers::append_forwarded_for(&mut parts.headers, peer);
        if !parts.headers.contains_key(&X_FORWARDED_PROTO) {
            parts
                .headers
                .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        }
        if !parts.headers.contains_key(&X_REQUEST_ID) {
            parts.headers.insert(X_REQUEST_ID.clone(), headers::new_request_id());
        }

        // The client sends origin-form on the wire; it needs scheme and authority to
        // pick the pooled connection.
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        if version == Version::HTTP_2 {
            // An h2c app reads the name the caller used from :authority.
            if let Some(name) = parts.headers.remove(header::HOST) {
                if let Ok(a) = Authority::try_from(name.as_bytes()) {
                    uri.authority = Some(a);
                }
            }
        }
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| {
            // Unreachable: scheme, authority and path are all set above.
            Uri::from_static("http://127.0.0.1/")
        });
        parts.version = version;
        Request::from_parts(parts, body)
    }
}

pin_project! {
    pub struct ToAppFuture {
        #[pin]
        inner: ResponseFuture,
        // The client's side of an upgrade, spliced to the app's on `101`.
        on_client: Option<OnUpgrade>,
    }
}

impl Future for ToAppFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match ready!(this.inner.poll(cx)) {
            Ok(response) => response,
            Err(error) => return Poll::Ready(Ok(app_error(&error))),
        };
        let agreed = match this.on_client.take() {
            Some(on_client) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                upgrade::splice(on_client, hyper::upgrade::on(&mut response));
                response.headers().get(header::UPGRADE).cloned()
            }
            _ => None,
        };
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        upgrade::restore_upgrade_headers(&mut parts.headers, agreed);
        Poll::Ready(Ok(Response::from_parts(parts, Either::Left(body))))
    }
}

fn app_error(error: &hyper_util::client::legacy::Error) -> Response<ProxyBody> {
    let status = upstream_error_status(error);
    warn!(%status, error = %ErrorChain(error), "app unreachable");
    let body = if status == StatusCode::SERVICE_UNAVAILABLE {
        "app did not accept the connection in time\n"
    } else {
        client::failure_reason(error).unwrap_or("app unreachable\n")
    };
    local(status, body, Local::UpstreamFailed)
}

/// 503 when the app did not accept the connection within [`crate::proxy::CONNECT_TIMEOUT`] (it is
/// up but wedged, or its backlog is full): a transient state worth retrying. 502 for
/// everything else: refused (app down), reset, malformed response.
pub(super) fn upstream_error_status(error: &(dyn StdError + 'static)) -> StatusCode {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
        }
        source = e.source();
    }
    StatusCode::BAD_GATEWAY
}
