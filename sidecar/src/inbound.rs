//! The inbound proxy (DESIGN §2, `0.0.0.0:15006`): traffic from the world to this
//! instance's app, rate-limited by the service's `RateLimitPolicy`.
//!
//! One port speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c); the app is reached
//! over pooled connections on localhost, HTTP/1.1 or h2c (`OUTRIDER_APP_PROTOCOL`).
//! Bodies and trailers stream both ways; HTTP/1.1 upgrades (WebSocket) are spliced
//! through ([`upgrade`]). A request goes through [`InboundProxy::handle`], which reads
//! top to bottom: rate limit → rewrite for the app → forward → record metrics.

use crate::logship::access::Pending as PendingAccess;
pub(crate) mod upgrade;

use crate::config::AppProtocol;
use crate::ratelimit::{Decision, RateLimitHeaders};
use crate::state::SidecarState;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long to wait for the app to accept a TCP connection. Localhost either
/// accepts or refuses at once; hanging here means the app is wedged (→ 503).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest request head (request line and headers) accepted over HTTP/1.1. Larger
/// heads get `431 Request Header Fields Too Large` from hyper. 64 KiB matches what
/// common proxies accept (Envoy's default is 60 KiB) while bounding per-connection
/// memory.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Slow clients must send their whole request head within this time (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle pooled connections to the app are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// After shutdown starts, in-flight connections get this long to finish; the rest
/// are dropped. Below Kubernetes' default 30 s grace period.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// Responses carry either the app's streamed body or a small local one.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The inbound proxy for one app: its address, the shared state and the pools of
/// connections to it.
pub struct InboundProxy {
    app_authority: Authority,
    state: Arc<SidecarState>,
    /// HTTP/1.1 to the app: every request for an `http1` app, upgrades for any app.
    client: Client<HttpConnector, Incoming>,
    /// The app's address as access records name it.
    upstream: Arc<str>,
    /// HTTP/2 to an `h2c` app (one multiplexed connection).
    h2c: Option<Client<HttpConnector, Incoming>>,
}

fn app_client(http2: bool) -> Client<HttpConnector, Incoming> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .http2_only(http2)
        .build(connector)
}

impl InboundProxy {
    /// A proxy to an app that speaks HTTP/1.1.
    pub fn new(app_addr: SocketAddr, state: Arc<SidecarState>) -> Self {
        Self::with_app_protocol(app_addr, state, AppProtocol::Http1)
    }

    pub fn with_app_protocol(app_addr: SocketAddr, state: Arc<SidecarState>, protocol: AppProtocol) -> Self {
        let client = app_client(false);
        let h2c = (protocol == AppProtocol::H2c).then(|| app_client(true));
        // A `SocketAddr` always renders as a valid authority (`1.2.3.4:80`, `[::1]:80`).
        let app_authority = Authority::from_maybe_shared(Bytes::from(app_addr.to_string()))
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        InboundProxy {
            app_authority,
            state,
            client,
            upstream: Arc::from(app_addr.to_string()),
            h2c,
        }
    }

    /// Handles one request from `peer`. Never fails: every error becomes a response.
    pub async fn handle(&self, mut req: Request<Incoming>, peer: IpAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        let metrics = &self.state.metrics;
        // One lock-free load of the applied snapshot serves the access log and the
        // rate limit; the guard is dropped before any `.await`, only owned values
        // (the pending record, the header values) outlive it.
        let (access, limit_headers) = {
            let applied = self.state.applied.load();
            // `None` (no allocation) unless the policy asks for access logs.
            let access = PendingAccess::begin(applied.as_deref(), &mut req, peer, new_request_id);
            match applied.as_deref() {
                // Nothing applied yet (first start, control plane unreachable, no
                // persisted snapshot): there is no policy to enforce, so fail open.
                None => (access, None),
                Some(applied) => {
                    let decision = applied.limiter.check(req.uri().path(), req.headers(), peer, started);
                    if let Decision::Deny {
                        quota,
                        retry_after_secs,
                    } = decision
                    {
                        debug!(rule = quota.rule.name(), retry_after_secs, "rate limited");
                        let mut response = text_response(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded\n");
                        decision.write_headers(response.headers_mut());
                        metrics.record_rate_limited();
                        metrics.record_request(response.status().as_u16(), started.elapsed());
                        if let Some(access) = access {
                            access.finish(&self.state, 429, response.headers(), None, started);
                        }
                        return response;
                    }
                    (access, decision.headers())
                }
            }
        };

        // A header lookup, so plain requests pay nothing for upgrade support.
        if upgrade::is_upgrade(&req) {
            let response = self.upgrade(req, peer, limit_headers).await;
            metrics.record_request(response.status().as_u16(), started.elapsed());
            return response;
        }
        let (client, version) = match &self.h2c {
            Some(h2c) => (h2c, Version::HTTP_2),
            None => (&self.client, Version::HTTP_11),
        };
        let upstream_req = self.rewrite(req, peer, version);
        let response = match client.request(upstream_req).await {
            Ok(response) => self.downstream_response(response, limit_headers),
            Err(error) => self.app_error(&error),
        };
        metrics.record_request(response.status().as_u16(), started.elapsed());
        if let Some(access) = access {
            access.finish(
                &self.state,
                response.status().as_u16(),
                response.headers(),
                Some(&self.upstream),
                started,
            );
        }
        response
    }

    fn app_error(&self, error: &hyper_util::client::legacy::Error) -> Response<ProxyBody> {
        self.state.metrics.record_upstream_error();
        let status = upstream_error_status(error);
        warn!(%status, error = %ErrorChain(error), "app unreachable");
        let body = if status == StatusCode::SERVICE_UNAVAILABLE {
            "app did not accept the connection in time\n"
        } else {
            "app unreachable\n"
        };
        text_response(status, body)
    }

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
        remove_hop_by_hop(&mut parts.headers);
        append_forwarded_for(&mut parts.headers, peer);
        if !parts.headers.contains_key(&X_FORWARDED_PROTO) {
            parts
                .headers
                .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        }
        if !parts.headers.contains_key(&X_REQUEST_ID) {
            parts.headers.insert(X_REQUEST_ID.clone(), new_request_id());
        }

        // The client sends origin-form on the wire; it needs scheme and authority to
        // pick the pooled connection.
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.app_authority.clone());
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

    fn downstream_response(
        &self,
        response: Response<Incoming>,
        limit: Option<RateLimitHeaders>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        if let Some(limit) = limit {
            limit.write_to(&mut parts.headers);
        }
        Response::from_parts(parts, Either::Left(body))
    }
}

/// Serves the inbound proxy on `listener` until `shutdown` resolves; then stops
/// accepting, lets in-flight requests finish (up to [`DRAIN_TIMEOUT`]) and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<InboundProxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_proxy(listener, proxy, "inbound", shutdown).await
}

/// What a proxy listener calls for each request.
pub(crate) trait ProxyHandler: Send + Sync + 'static {
    fn serve_request(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;
}

impl ProxyHandler for InboundProxy {
    fn serve_request(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        self.handle(req, peer.ip())
    }
}

/// The accept loop shared by the inbound and outbound listeners: HTTP/1.1 and h2c on
/// one port, upgrades allowed, graceful drain on `shutdown`.
pub(crate) async fn serve_proxy<H: ProxyHandler>(
    listener: tokio::net::TcpListener,
    proxy: Arc<H>,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let builder = server_builder();
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
        let proxy = Arc::clone(&proxy);
        let service = service_fn(move |req| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, Infallible>(proxy.serve_request(req, peer).await) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%peer, listener = name, error = %ErrorChain(&*error), "connection ended with an error");
            }
        });
    }
    drop(listener);
    info!(connections = graceful.count(), listener = name, "proxy draining");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        warn!(listener = name, "drain timed out; dropping remaining connections");
    }
    Ok(())
}

pub(crate) fn server_builder() -> auto::Builder<TokioExecutor> {
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

/// A small plain-text answer of the proxy's own (`&'static str` bodies are not copied).
pub(crate) fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Connection-scoped headers (RFC 9110 §7.6.1) must not be forwarded: the
/// `Connection` header itself, every header it names, and the classic list. `TE`
/// survives only as `trailers`, which asks about the end-to-end body.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Fast path: most requests carry none of these.
    let has_connection = headers.contains_key(header::CONNECTION);
    if has_connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            // `Connection: te` must not take `te: trailers` away from the app, but
            // everything else it lists goes.
            if name != header::TE {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    headers.remove(header::TRAILER);
    if let Some(te) = headers.get(header::TE) {
        let trailers_only = te
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
        if trailers_only {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Appends the peer to `X-Forwarded-For` (RFC 7239's de-facto predecessor): the app
/// sees the whole chain, the peer last.
fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let peer = peer.to_canonical();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => HeaderValue::from_str(&format!("{existing}, {peer}")),
        _ => HeaderValue::from_str(&peer.to_string()),
    };
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

/// A random UUID v4, hex-encoded straight into a stack buffer.
pub(crate) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Version nibble 4 and variant bits 10 (RFC 9562).
    let bits = (rand::random::<u128>() & !(0xf000_u128 << 64) & !(0xc000_u128 << 48))
        | (0x4000_u128 << 64)
        | (0x8000_u128 << 48);
    let mut id = [b'-'; 36];
    let mut nibble = 0;
    for (i, slot) in id.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        *slot = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// 503 when the app did not accept the connection within [`CONNECT_TIMEOUT`] (it is
/// up but wedged, or its backlog is full): a transient state worth retrying. 502 for
/// everything else: refused (app down), reset, malformed response.
fn upstream_error_status(error: &(dyn StdError + 'static)) -> StatusCode {
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

/// Displays an error with its sources, `a: b: c`, for one-line logs.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod passthrough_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Source;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use outrider_proto::v1::Snapshot;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;

    /// A tiny app over a real socket: answers `200` with the request's path, the
    /// headers it saw and a count of connections it accepted.
    async fn spawn_app() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let mut seen = format!("path={}\n", req.uri());
                        for (name, value) in req.headers() {
                            seen.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        seen.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("connection", "keep-alive")
                                .header("x-app", "yes")
                                .body(Full::new(Bytes::from(seen)))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, connections)
    }

    struct Proxy {
        addr: SocketAddr,
        state: Arc<SidecarState>,
        stop: Option<oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn spawn_proxy(app: SocketAddr) -> Proxy {
        let state = Arc::new(SidecarState::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let proxy = Arc::new(InboundProxy::new(app, Arc::clone(&state)));
        let done = tokio::spawn(serve(listener, proxy, async move {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            state,
            stop: Some(stop),
            done,
        }
    }

    fn apply_rate_limit(state: &SidecarState, json: &str) {
        let snapshot = Snapshot {
            revision: 1,
            nonce: "n".into(),
            service: "web".into(),
            rate_limit: json.into(),
            service_share: 1.0,
            ..Default::default()
        };
        state.apply(&snapshot, Source::ControlPlane).unwrap();
    }

    type TestClient = Client<HttpConnector, Empty<Bytes>>;

    fn client() -> TestClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    async fn get(client: &TestClient, url: String, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let response = client.request(req.body(Empty::new()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn proxies_to_the_app_over_keep_alive() {
        let (app, app_connections) = spawn_app().await;
        let proxy = spawn_proxy(app).await;
        let client = client();
        for i in 0..5 {
            let (status, headers, body) = get(
                &client,
                format!("http://{}/hello?x={i}", proxy.addr),
                &[
                    ("connection", "keep-alive, x-drop-me"),
                    ("x-drop-me", "1"),
                    ("x-keep", "2"),
                ],
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert!(body.contains(&format!("path=/hello?x={i}\n")), "{body}");
            assert!(body.contains("x-keep: 2\n"), "{body}");
            assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
            assert!(body.contains("x-request-id: "), "{body}");
            assert!(body.contains(&format!("host: {}\n", proxy.addr)), "{body}");
            assert!(!body.contains("x-drop-me"), "{body}");
            assert_eq!(headers["x-app"], "yes");
            assert!(
                !headers.contains_key("connection"),
                "hop-by-hop header leaked: {headers:?}"
            );
            // No policy applied: no rate-limit headers.
            assert!(!headers.contains_key("ratelimit"));
            // The client returns a connection to its pool from a background task
            // once the body is read; let that happen so that reuse is deterministic.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The app saw one pooled connection, not one per request.
        assert_eq!(app_connections.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(proxy.state.metrics.requests_total(), 5);
    }

    #[tokio::test]
    async fn request_bodies_stream_to_the_app() {
        let (app, _) = spawn_app().await;
        let proxy = spawn_proxy(app).await;
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let req = Request::post(format!("http://{}/upload", proxy.addr))
            .header("x-request-id", "given")
            .header("x-forwarded-for", "203.0.113.7")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let response = client.request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("body=payload\n"), "{body}");
        assert!(body.contains("x-request-id: given\n"), "{body}");
        assert!(body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"), "{body}");
    }

    #[tokio::test]
    async fn thirty_requests_at_rps5_burst5_get_five_ok_and_25_too_many() {
        let (app, _) = spawn_app().await;
        let proxy = spawn_proxy(app).await;
        apply_rate_limit(
            &proxy.state,
            r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5}]}"#,
        );
        let client = client();
        let started = Instant::now();
        let mut ok = 0;
        let mut limited = 0;
        for _ in 0..30 {
            let (status, headers, body) = get(&client, format!("http://{}/", proxy.addr), &[]).await;
            assert_eq!(headers["ratelimit-policy"], "\"all\";q=5;w=1");
            assert!(headers["ratelimit"].to_str().unwrap().starts_with("\"all\";r="));
            match status {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    limited += 1;
                    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                    assert!(retry >= 1);
                    assert_eq!(body, "rate limit exceeded\n");
                }
                other => panic!("unexpected {other}"),
            }
        }
        // Exactly 5 when the loop is quick; a very slow machine may legitimately
        // earn one more token per 200 ms elapsed.
        let refilled = (started.elapsed().as_secs_f64() * 5.0).floor() as usize;
        assert!(
            (5..=5 + refilled).contains(&ok),
            "ok={ok} after {:?}",
            started.elapsed()
        );
        assert_eq!(ok + limited, 30);
        assert_eq!(proxy.state.metrics.rate_limited_total(), limited as u64);
    }

    #[tokio::test]
    async fn header_keyed_buckets_are_separate() {
        let (app, _) = spawn_app().await;
        let proxy = spawn_proxy(app).await;
        apply_rate_limit(
            &proxy.state,
            r#"{"rules":[{"name":"per-client","key":"header:x-client-id","requestsPerSecond":0.01,"burst":2}]}"#,
        );
        let client = client();
        for id in ["a", "b"] {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let (status, _, _) = get(&client, format!("http://{}/", proxy.addr), &[("x-client-id", id)]).await;
                statuses.push(status.as_u16());
            }
            assert_eq!(statuses, [200, 200, 429], "client {id}");
        }
    }

    #[tokio::test]
    async fn app_down_is_502_quickly() {
        // Bind and drop: the port is free, so connecting is refused.
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let proxy = spawn_proxy(app).await;
        let started = Instant::now();
        let (status, _, body) = get(&client(), format!("http://{}/", proxy.addr), &[]).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body, "app unreachable\n");
        assert!(started.elapsed() < CONNECT_TIMEOUT, "took {:?}", started.elapsed());
        assert_eq!(proxy.state.metrics.upstream_errors_total(), 1);
        assert_eq!(proxy.state.metrics.health_figures().errors_total, 1);
    }

    #[tokio::test]
    async fn h2c_prior_knowledge_is_proxied() {
        let (app, _) = spawn_app().await;
        let proxy = spawn_proxy(app).await;
        let client: TestClient = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
        let response = client
            .request(
                Request::get(format!("http://{}/h2", proxy.addr))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("path=/h2\n"), "{body}");
        // The :authority pseudo-header reaches the app as Host.
        assert!(body.contains(&format!("host: {}\n", proxy.addr)), "{body}");
    }

    #[tokio::test]
    async fn oversized_header_block_gets_431() {
        let (app, _) = spawn_app().await;
        let proxy = spawn_proxy(app).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let big = "a".repeat(MAX_HEADER_BYTES + 1024);
        let request = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
        // The proxy may stop reading and answer before the whole head is written.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    }

    #[tokio::test]
    async fn large_header_under_the_limit_is_proxied() {
        let (app, _) = spawn_app().await;
        let proxy = spawn_proxy(app).await;
        let big = "a".repeat(MAX_HEADER_BYTES / 2);
        let (status, _, body) = get(&client(), format!("http://{}/", proxy.addr), &[("x-big", &big)]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(&big));
    }

    #[tokio::test]
    async fn malformed_request_gets_400() {
        let (app, _) = spawn_app().await;
        let proxy = spawn_proxy(app).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
        assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 400 "));
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_returns() {
        let (app, _) = spawn_app().await;
        let mut proxy = spawn_proxy(app).await;
        let (status, _, _) = get(&client(), format!("http://{}/", proxy.addr), &[]).await;
        assert_eq!(status, StatusCode::OK);
        proxy.stop.take().unwrap().send(()).unwrap();
        // The idle keep-alive connection is closed by the drain, so serve returns.
        tokio::time::timeout(Duration::from_secs(5), &mut proxy.done)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(proxy.addr).await.is_err());
    }

    #[test]
    fn connect_timeout_maps_to_503_and_refusal_to_502() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let timed_out = Wrapper(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"));
        assert_eq!(upstream_error_status(&timed_out), StatusCode::SERVICE_UNAVAILABLE);
        let refused = Wrapper(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(upstream_error_status(&refused), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private, te"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("secret"));
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["te", "x-end-to-end"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(new_request_id(), new_request_id());
    }
}
