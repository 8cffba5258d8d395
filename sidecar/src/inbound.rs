//! The inbound proxy (`0.0.0.0:15006`, see `docs/reference.md`): traffic from the world
//! to this instance's app, authorized by the service's `AuthorizationPolicy` and
//! rate-limited by its `RateLimitPolicy`.
//!
//! One port speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c); the app is reached
//! over pooled connections on localhost, HTTP/1.1 or h2c (`OUTRIDER_APP_PROTOCOL`).
//! Bodies and trailers stream both ways; HTTP/1.1 upgrades (WebSocket) are spliced
//! through. The request path is [`InboundProxy::stack`], read top to bottom.

pub mod accept;
pub mod authz;
mod forward;
pub mod metrics;
mod opaque;
pub mod rate_limit;

use crate::config::AppProtocol;
use crate::proxy::access_log::{AccessLogLayer, Upstream};
use crate::proxy::conform::ConformLayer;
use crate::proxy::respond::GrpcFormLayer;
use crate::proxy::snapshot::LoadSnapshotLayer;
use crate::proxy::trace::TraceLayer;
use crate::proxy::{Call, ProxyBody};
use crate::state::SidecarState;
use authz::AuthzLayer;
use forward::ToApp;
use http::Response;
use metrics::MetricsLayer;
use rate_limit::RateLimitLayer;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceBuilder};

/// How long the inbound proxy waits on either side of a request
/// (`OUTRIDER_INBOUND_TIMEOUT`, `OUTRIDER_INBOUND_BODY_TIMEOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For the app's response head, from the request having been sent in full.
    pub response: Duration,
    /// For the next bytes of a request body (the first included).
    pub body_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            response: Duration::from_secs(60),
            body_idle: Duration::from_secs(60),
        }
    }
}

/// The inbound proxy for one app: the shared state and the app it forwards to.
pub struct InboundProxy {
    state: Arc<SidecarState>,
    app: ToApp,
    /// The app's address as access records name it.
    upstream: Arc<str>,
}

impl InboundProxy {
    /// A proxy to an app that speaks HTTP/1.1.
    pub fn new(app_addr: SocketAddr, state: Arc<SidecarState>) -> Self {
        Self::with_app_protocol(app_addr, state, AppProtocol::Http1)
    }

    pub fn with_app_protocol(app_addr: SocketAddr, state: Arc<SidecarState>, protocol: AppProtocol) -> Self {
        Self::with_settings(app_addr, state, protocol, Timeouts::default())
    }

    pub fn with_settings(
        app_addr: SocketAddr,
        state: Arc<SidecarState>,
        protocol: AppProtocol,
        timeouts: Timeouts,
    ) -> Self {
        InboundProxy {
            state,
            app: ToApp::new(app_addr, protocol, timeouts),
            upstream: Arc::from(app_addr.to_string()),
        }
    }

    /// The request path, outermost first. Every layer sees every request and every
    /// answer, including the 429s and 502s produced below it.
    pub fn stack(
        &self,
    ) -> impl Service<Call, Response = Response<ProxyBody>, Error = Infallible, Future: Send> + Clone + Send + Sync + 'static
    {
        ServiceBuilder::new()
            // gRPC callers get the proxy's own answers as grpc-status; the layers
            // below still see (and count) the HTTP status.
            .layer(GrpcFormLayer)
            // One load of the applied snapshot serves every layer below.
            .layer(LoadSnapshotLayer::new(Arc::clone(&self.state)))
            .layer(TraceLayer::new("inbound"))
            .layer(MetricsLayer::new(Arc::clone(&self.state)))
            .layer(AccessLogLayer::new(
                Arc::clone(&self.state),
                "inbound",
                Upstream::Fixed(Arc::clone(&self.upstream)),
            ))
            // CONNECT, Host rules, h2c upgrades, Via.
            .layer(ConformLayer)
            // Who may call: before rate limiting, so a denied caller spends no tokens.
            .layer(AuthzLayer)
            .layer(RateLimitLayer)
            .service(self.app.clone())
    }
}

/// Serves the inbound proxy on `listener` until `shutdown` resolves; then stops
/// accepting, lets in-flight requests finish (up to [`crate::proxy::DRAIN_TIMEOUT`])
/// and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<InboundProxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let accept = accept::MeshAccept::new(Arc::clone(&proxy.state));
    crate::proxy::serve(listener, proxy.stack(), "inbound", accept, shutdown).await
}

#[cfg(test)]
mod passthrough_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{CONNECT_TIMEOUT, MAX_HEADER_BYTES};
    use crate::state::Source;
    use bytes::Bytes;
    use forward::upstream_error_status;
    use http::header::HeaderMap;
    use http::{Request, Response, StatusCode, Version};
    use http_body_util::Full;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use outrider_proto::v1::Snapshot;
    use std::convert::Infallible;
    use std::error::Error as StdError;
    use std::time::{Duration, Instant};
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
}
