//! The innermost inbound layer: rewrites a request for the app (origin-form URI on the
//! app's address, no hop-by-hop headers, forwarding headers) and sends it over a
//! pooled connection; an upgrade's `101` splices the two connections.
//!
//! Nothing waits forever: a request body that stalls is cut (`408`, the client's
//! fault; `504` when it is the app that stopped reading), and once the request has
//! been sent in full the app has [`Timeouts::response`] for its response head
//! (`504`). A client whose body breaks gets `400`, not an app failure.

use super::Timeouts;
use crate::config::AppProtocol;
use crate::proxy::body::{Progress, Watched};
use crate::proxy::headers::{self, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::proxy::respond::local;
use crate::proxy::OriginalDst;
use crate::proxy::{client, root_cause, upgrade, Call, ErrorChain, Local, ProxyBody};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::{Client, ResponseFuture};
use pin_project_lite::pin_project;
use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tokio::time::Sleep;
use tower::Service;
use tracing::{debug, warn};

/// What the app is sent: the client's body, watched for stalls and breaks.
type AppBody = Watched<Incoming>;

/// The app: its address and the pools of connections to it, and, for connections
/// the capture rules redirected, the app on each other port they were sent to.
/// Cloning shares them.
#[derive(Clone)]
pub struct ToApp {
    app: Arc<App>,
    ports: Arc<OtherPorts>,
}

/// The app on ports other than `OUTRIDER_APP_PORT`, made on first use. Read
/// without a lock (one load per redirected request); a new port copies the map.
struct OtherPorts {
    by_port: ArcSwap<HashMap<u16, Arc<App>>>,
    protocol: AppProtocol,
    timeouts: Timeouts,
}

/// Pools are kept for this many other ports; a request to one more gets a connection
/// of its own. A Pod's ports are few, and a caller that walks every port of it must
/// not grow the map without bound.
const MAX_OTHER_PORTS: usize = 64;

impl OtherPorts {
    fn app(&self, port: u16) -> Arc<App> {
        if let Some(app) = self.by_port.load().get(&port) {
            return Arc::clone(app);
        }
        let app = Arc::new(App::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            self.protocol,
            self.timeouts,
        ));
        let mut kept = Arc::clone(&app);
        self.by_port.rcu(|map| {
            let mut map = HashMap::clone(map);
            if let Some(raced) = map.get(&port) {
                kept = Arc::clone(raced);
            } else if map.len() < MAX_OTHER_PORTS {
                map.insert(port, Arc::clone(&app));
            }
            map
        });
        kept
    }
}

struct App {
    authority: Authority,
    port: u16,
    /// HTTP/1.1 to the app: every request for an `http1` app, upgrades for any app.
    http1: Client<client::FixedConnector, AppBody>,
    /// HTTP/2 to an `h2c` app (a multiplexed connection per name called): its URIs
    /// carry the caller's authority, the connections go to the app.
    h2c: Option<Client<client::FixedConnector, AppBody>>,
    timeouts: Timeouts,
}

impl ToApp {
    pub fn new(app_addr: SocketAddr, protocol: AppProtocol, timeouts: Timeouts) -> Self {
        ToApp {
            app: Arc::new(App::new(app_addr, protocol, timeouts)),
            ports: Arc::new(OtherPorts {
                by_port: ArcSwap::default(),
                protocol,
                timeouts,
            }),
        }
    }

    /// The app a request goes to: on the port a redirected connection was sent to,
    /// else on `OUTRIDER_APP_PORT`.
    fn app_for<B>(&self, req: &Request<B>) -> AppRef<'_> {
        match req.extensions().get::<OriginalDst>() {
            Some(OriginalDst(dst)) if dst.port() != self.app.port => AppRef::Other(self.ports.app(dst.port())),
            _ => AppRef::Main(&self.app),
        }
    }
}

/// The app of one request: the usual one borrowed (no reference count touched on
/// the common path), or another port's.
enum AppRef<'a> {
    Main(&'a App),
    Other(Arc<App>),
}

impl std::ops::Deref for AppRef<'_> {
    type Target = App;

    fn deref(&self) -> &App {
        match self {
            AppRef::Main(app) => app,
            AppRef::Other(app) => app,
        }
    }
}

impl App {
    fn new(app_addr: SocketAddr, protocol: AppProtocol, timeouts: Timeouts) -> Self {
        // A `SocketAddr` always renders as a valid authority (`1.2.3.4:80`, `[::1]:80`).
        let authority = Authority::from_maybe_shared(Bytes::from(app_addr.to_string()))
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        App {
            authority,
            port: app_addr.port(),
            http1: client::pooled_to(app_addr, false),
            h2c: (protocol == AppProtocol::H2c).then(|| client::pooled_to(app_addr, true)),
            timeouts,
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
        let app = &self.app_for(&req);
        // A header lookup, so plain requests pay nothing for upgrade support.
        if upgrade::is_upgrade(&req) {
            // Upgrades exist only in HTTP/1.1, whatever `OUTRIDER_APP_PROTOCOL` says.
            let on_client = hyper::upgrade::on(&mut req);
            let asked = req.headers().get(header::UPGRADE).cloned();
            let (mut upstream, progress) = app.rewrite(req, peer.ip(), Version::HTTP_11);
            upgrade::restore_upgrade_headers(upstream.headers_mut(), asked);
            return ToAppFuture::new(app.http1.request(upstream), Some(on_client), progress, app.timeouts);
        }
        let (client, version) = match &app.h2c {
            Some(h2c) => (h2c, Version::HTTP_2),
            None => (&app.http1, Version::HTTP_11),
        };
        let (upstream, progress) = app.rewrite(req, peer.ip(), version);
        ToAppFuture::new(client.request(upstream), None, progress, app.timeouts)
    }
}

impl App {
    /// Turns a request from the world into one for the app: origin-form URI on the
    /// app's address, the app's HTTP `version`, no hop-by-hop headers, forwarding
    /// headers added, the body watched.
    fn rewrite(&self, req: Request<Incoming>, peer: IpAddr, version: Version) -> (Request<AppBody>, Arc<Progress>) {
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
        let (body, progress) = Watched::new(body);
        (Request::from_parts(parts, body), progress)
    }
}

pin_project! {
    pub struct ToAppFuture {
        #[pin]
        inner: ResponseFuture,
        // The client's side of an upgrade, spliced to the app's on `101`.
        on_client: Option<OnUpgrade>,
        // Fires at the next deadline: the body's idle limit while it is sent, then
        // the response head's.
        #[pin]
        timer: Sleep,
        progress: Arc<Progress>,
        timeouts: Timeouts,
    }
}

/// What ran out when the timer fires.
#[derive(Clone, Copy)]
enum Expiry {
    /// The request has been sent; the app has not answered.
    Head,
    /// The request body made no progress.
    Body,
}

impl ToAppFuture {
    fn new(inner: ResponseFuture, on_client: Option<OnUpgrade>, progress: Arc<Progress>, timeouts: Timeouts) -> Self {
        let (deadline, _) = next_deadline(&progress, timeouts);
        ToAppFuture {
            inner,
            on_client,
            timer: tokio::time::sleep_until(deadline.into()),
            progress,
            timeouts,
        }
    }
}

fn next_deadline(progress: &Progress, timeouts: Timeouts) -> (Instant, Expiry) {
    match progress.sent_at() {
        Some(sent) => (sent + timeouts.response, Expiry::Head),
        None => (progress.last_frame_at() + timeouts.body_idle, Expiry::Body),
    }
}

impl Future for ToAppFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(error)) if this.progress.client_failed() => {
                debug!(error = %ErrorChain(&error), "client's request body failed");
                return Poll::Ready(Ok(local(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {}\n", root_cause(&error)),
                    Local::ClientFault,
                )));
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Ok(app_error(&error))),
            Poll::Pending => {
                // Registered before reading the progress, so that the request being
                // sent wakes this task to arm the response head's timer.
                this.progress.register(cx.waker());
                loop {
                    let (deadline, expiry) = next_deadline(this.progress, *this.timeouts);
                    let deadline = tokio::time::Instant::from_std(deadline);
                    if this.timer.deadline() != deadline {
                        this.timer.as_mut().reset(deadline);
                    }
                    ready!(this.timer.as_mut().poll(cx));
                    // A frame may have come (or the body ended) since the deadline was
                    // computed; then a later one applies.
                    if next_deadline(this.progress, *this.timeouts).0 > Instant::now() {
                        continue;
                    }
                    return Poll::Ready(Ok(expired(expiry, this.progress)));
                }
            }
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

fn expired(expiry: Expiry, progress: &Progress) -> Response<ProxyBody> {
    match expiry {
        Expiry::Head => {
            warn!("app did not answer in time");
            local(
                StatusCode::GATEWAY_TIMEOUT,
                "app did not answer in time\n",
                Local::UpstreamFailed,
            )
        }
        Expiry::Body if progress.waiting_on_client() => local(
            StatusCode::REQUEST_TIMEOUT,
            "request body timed out\n",
            Local::ClientFault,
        ),
        Expiry::Body => {
            warn!("app stopped reading the request body");
            local(
                StatusCode::GATEWAY_TIMEOUT,
                "app did not read the request body in time\n",
                Local::UpstreamFailed,
            )
        }
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
