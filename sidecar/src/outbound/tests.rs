//! The outbound proxy against real upstream servers on real sockets.

use super::*;
use crate::state::Source;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::Full;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use outrider_proto::v1::{DestinationService, DestinationTable, Endpoint, Snapshot};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream instance: answers with its name in `x-name` and the request body;
/// fails (`500`) every request when `fail` is set; `Upgrade` requests get `101` and
/// an echoing byte stream.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn upstream(name: &'static str, fail: bool) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if req.headers().contains_key(header::UPGRADE) {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = on.await {
                                    let mut io = TokioIo::new(up);
                                    let mut buf = [0u8; 64];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            let r = Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            return Ok::<_, Infallible>(r);
                        }
                        let host = req.headers().get("host").map(|h| h.to_str().unwrap().to_owned());
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let status = if fail { 500 } else { 200 };
                        let r = Response::builder()
                            .status(status)
                            .header("x-name", name)
                            .header("x-host", host.unwrap_or_default())
                            .body(Full::new(body))
                            .unwrap();
                        Ok(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, hits }
}

/// An h2c upstream that answers every request with a body and a `grpc-status` trailer.
async fn grpc_like_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async move {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"msg"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = StreamBody::new(futures::stream::iter(frames));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn endpoint(addr: SocketAddr, subset: &str) -> Endpoint {
    Endpoint {
        address: addr.ip().to_string(),
        port: u32::from(addr.port()),
        subset: subset.into(),
        pod: format!("pod-{}", addr.port()),
        ..Default::default()
    }
}

fn apply(state: &SidecarState, endpoints: Vec<Endpoint>, routing: &str) {
    let snapshot = Snapshot {
        revision: 1,
        nonce: "n".into(),
        service: "client".into(),
        service_share: 1.0,
        ..Default::default()
    };
    state.apply(&snapshot, Source::ControlPlane).unwrap();
    state
        .load_destinations(&DestinationTable {
            services: vec![DestinationService {
                service: "web".into(),
                endpoints,
                routing: routing.into(),
                routing_revision: 1,
            }],
            routing_revision: 1,
        })
        .unwrap();
}

async fn spawn_proxy(state: Arc<SidecarState>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Arc::new(OutboundProxy::new(state));
    tokio::spawn(serve(listener, proxy, std::future::pending()));
    addr
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET through the proxy with `Host: host`; (status, x-name, body).
async fn get(
    c: &TestClient,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut req = Request::get(format!("http://{proxy}{path}")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = c.request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let status = r.status().as_u16();
    let name = header_of(&r, "x-name");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, name, String::from_utf8_lossy(&body).into_owned())
}

/// A response header's value, or "" without it.
fn header_of<B>(r: &Response<B>, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn setup(routing: &str) -> (Arc<SidecarState>, SocketAddr, Upstream, Upstream) {
    let v1 = upstream("v1", false).await;
    let v2 = upstream("v2", false).await;
    let state = Arc::new(SidecarState::new());
    apply(&state, vec![endpoint(v1.addr, "v1"), endpoint(v2.addr, "v2")], routing);
    let proxy = spawn_proxy(state.clone()).await;
    (state, proxy, v1, v2)
}

#[tokio::test]
async fn unknown_service_is_503_with_a_clear_body_at_once() {
    let (_, proxy, _, _) = setup("").await;
    let started = Instant::now();
    let (status, _, body) = get(&client(), proxy, "nope", "/", &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("unknown service \"nope\""), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn without_a_policy_traffic_spreads_over_every_instance() {
    let (state, proxy, v1, v2) = setup("").await;
    let c = client();
    for _ in 0..40 {
        let (status, _, _) = get(&c, proxy, "web", "/", &[]).await;
        assert_eq!(status, 200);
    }
    let (a, b) = (v1.hits.load(Ordering::SeqCst), v2.hits.load(Ordering::SeqCst));
    assert_eq!(a + b, 40);
    assert!(a >= 5 && b >= 5, "both instances get traffic: {a}/{b}");
    let figures = state.applied.load().as_ref().unwrap().destinations.figures();
    let total: u64 = figures.iter().map(|f| f.requests_total).sum();
    assert_eq!(total, 40, "{figures:?}");
}

#[tokio::test]
async fn weights_split_traffic_and_a_header_route_pins_a_subset() {
    let policy = r#"{"routes":[
        {"name":"beta","match":{"headers":{"x-canary":"always"}},"backends":[{"subset":"v2","weight":100}]},
        {"name":"default","match":{"pathPrefix":"/"},"backends":[{"subset":"v1","weight":80},{"subset":"v2","weight":20}]}]}"#;
    let (_, proxy, _, _) = setup(policy).await;
    let c = client();
    let mut v2 = 0;
    for _ in 0..400 {
        let (status, name, _) = get(&c, proxy, "web", "/", &[]).await;
        assert_eq!(status, 200);
        v2 += usize::from(name == "v2");
    }
    // 20% of 400 is 80; ±5 standard deviations of a binomial is ±40.
    assert!((40..=120).contains(&v2), "v2 got {v2} of 400");
    for _ in 0..20 {
        let (_, name, _) = get(&c, proxy, "web", "/", &[("x-canary", "always")]).await;
        assert_eq!(name, "v2");
    }
}

#[tokio::test]
async fn absolute_form_requests_route_like_http_proxy() {
    let (_, proxy, _, _) = setup("").await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET http://web.default.svc/hello HTTP/1.1\r\nhost: web.default.svc\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-host: web.default.svc"), "the app keeps its Host: {out}");
}

#[tokio::test]
async fn retries_on_5xx_hide_a_failing_instance() {
    let bad = upstream("bad", true).await;
    let good = upstream("good", false).await;
    let state = Arc::new(SidecarState::new());
    let policy = r#"{"routes":[{"name":"d","backends":[{"subset":"v1","weight":100}],
        "retries":{"attempts":2,"perTryTimeout":"1s","on":["5xx","connect-failure"]}}]}"#;
    apply(
        &state,
        vec![endpoint(bad.addr, "v1"), endpoint(good.addr, "v1")],
        policy,
    );
    let proxy = spawn_proxy(state).await;
    let c = client();
    for _ in 0..50 {
        let (status, name, _) = get(&c, proxy, "web", "/", &[]).await;
        assert_eq!((status, name.as_str()), (200, "good"));
    }
    // Consecutive failures ejected the bad instance: it saw far fewer than 50.
    assert!(
        bad.hits.load(Ordering::SeqCst) < 25,
        "{}",
        bad.hits.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_dead_instance_costs_no_errors_thanks_to_the_connect_failure_retry() {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let good = upstream("good", false).await;
    let state = Arc::new(SidecarState::new());
    apply(&state, vec![endpoint(dead, "v1"), endpoint(good.addr, "v1")], "");
    let proxy = spawn_proxy(state).await;
    let c = client();
    for _ in 0..30 {
        let (status, _, body) = get(&c, proxy, "web", "/", &[]).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn a_route_timeout_answers_504_instead_of_hanging() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let state = Arc::new(SidecarState::new());
    apply(
        &state,
        vec![endpoint(addr, "v1")],
        r#"{"routes":[{"name":"d","backends":[{"subset":"v1","weight":100}],"timeout":"300ms"}]}"#,
    );
    let proxy = spawn_proxy(state).await;
    let (status, _, body) = get(&client(), proxy, "web", "/", &[]).await;
    assert_eq!(status, 504, "{body}");
}

#[tokio::test]
async fn post_bodies_reach_the_instance_and_are_replayed_on_retry() {
    let bad = upstream("bad", true).await;
    let good = upstream("good", false).await;
    let state = Arc::new(SidecarState::new());
    let policy = r#"{"routes":[{"name":"d","backends":[{"subset":"v1","weight":100}],
        "retries":{"attempts":3,"on":["5xx"]}}]}"#;
    apply(
        &state,
        vec![endpoint(bad.addr, "v1"), endpoint(good.addr, "v1")],
        policy,
    );
    let proxy = spawn_proxy(state).await;
    let c = client();
    for i in 0..10 {
        let payload = format!("payload-{i}");
        let req = Request::post(format!("http://{proxy}/up"))
            .header("host", "web")
            .body(Full::new(Bytes::from(payload.clone())))
            .unwrap();
        let r = c.request(req).await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, payload.as_bytes());
    }
}

#[tokio::test]
async fn h2c_requests_pass_with_trailers() {
    let addr = grpc_like_upstream().await;
    let state = Arc::new(SidecarState::new());
    apply(&state, vec![endpoint(addr, "v1")], "");
    let proxy = spawn_proxy(state).await;
    // A gRPC client connects to the outbound port and names the service in :authority.
    let io = TokioIo::new(TcpStream::connect(proxy).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = sender
        .send_request(
            Request::post("http://web/pkg.Svc/Call")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), Version::HTTP_2);
    let collected = r.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let (_, proxy, _, _) = setup("").await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: web\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping");
}

/// The proxy's answer to `host` from a proxy with `policy`: (status, content type,
/// body), and whether the upstream `web` saw anything.
async fn explicit(policy: passthrough::OutboundPolicy, host: &str) -> (u16, String, String, usize) {
    let web = upstream("v1", false).await;
    let state = Arc::new(SidecarState::new());
    apply(&state, vec![endpoint(web.addr, "v1")], "");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Arc::new(OutboundProxy::new(state).with_policy(policy));
    tokio::spawn(serve(listener, proxy, std::future::pending()));
    let host = host
        .replace("{web}", &web.addr.to_string())
        .replace("{proxy}", &addr.to_string());
    let r = client()
        .request(
            Request::get(format!("http://{addr}/"))
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = r.status().as_u16();
    let kind = header_of(&r, "content-type");
    let body = String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes()).into_owned();
    (status, kind, body, web.hits.load(Ordering::SeqCst))
}

#[tokio::test]
async fn registry_only_refuses_an_unknown_host_with_a_502_problem_naming_it() {
    let (status, kind, body, hits) = explicit(passthrough::OutboundPolicy::RegistryOnly, "api.example.test").await;
    assert_eq!((status, kind.as_str(), hits), (502, "application/problem+json", 0));
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["host"], "api.example.test", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("registry-only"),
        "{problem}"
    );
    // A mesh service is still reachable, by name and by its endpoint's address.
    let (status, _, _, hits) = explicit(passthrough::OutboundPolicy::RegistryOnly, "web").await;
    assert_eq!((status, hits), (200, 1));
    let (status, _, _, hits) = explicit(passthrough::OutboundPolicy::RegistryOnly, "{web}").await;
    assert_eq!((status, hits), (200, 1));
}

#[tokio::test]
async fn explicit_forwarding_never_reaches_loopback_metadata_or_the_proxy_itself() {
    for host in [
        // Loopback on a port no endpoint has: not the mesh's, and never forwarded.
        "127.0.0.1:1",
        "localhost:1",
        "[::1]:1",
        "0.0.0.0:1",
        "169.254.169.254",
        "{proxy}",
    ] {
        let (status, kind, body, hits) = explicit(passthrough::OutboundPolicy::AllowAny, host).await;
        assert_eq!(
            (status, kind.as_str(), hits),
            (403, "application/problem+json", 0),
            "{host}: {body}"
        );
    }
}

#[tokio::test]
async fn a_redirected_request_for_no_mesh_service_goes_to_its_original_destination() {
    // What the accept loop does for a redirected connection, by hand: the request
    // carries its original destination.
    let outside = upstream("outside", false).await;
    let web = upstream("v1", false).await;
    let state = Arc::new(SidecarState::new());
    apply(&state, vec![endpoint(web.addr, "v1")], "");
    let logging = Snapshot {
        revision: 2,
        nonce: "n2".into(),
        service: "client".into(),
        service_share: 1.0,
        logging: r#"{"accessLog":{"enabled":true},"sink":{"type":"stdout"}}"#.into(),
        ..Default::default()
    };
    state.apply(&logging, Source::ControlPlane).unwrap();
    let mut records = state.logs.take_access_receiver().unwrap();
    for (policy, want) in [
        (passthrough::OutboundPolicy::AllowAny, 200),
        (passthrough::OutboundPolicy::RegistryOnly, 502),
    ] {
        let proxy = OutboundProxy::new(Arc::clone(&state)).with_policy(policy);
        let mut req = Request::get("/x")
            .header("host", "api.example.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut().insert(crate::proxy::OriginalDst(outside.addr));
        let (status, name) = call_stack(&proxy, req).await;
        assert_eq!(status, want, "{policy:?}");
        if want == 200 {
            assert_eq!(name, "outside");
        }
        // An original destination at a mesh instance is a call to its service.
        let mut req = Request::get("/x")
            .header("host", "api.example.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut().insert(crate::proxy::OriginalDst(web.addr));
        assert_eq!(call_stack(&proxy, req).await, (200, "v1".to_owned()), "{policy:?}");
    }
    assert_eq!(outside.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        state
            .metrics
            .passthrough
            .passed_total(crate::metrics::PassthroughKind::Http),
        1
    );
    // Pass-through requests are logged like routed ones, the refused one too, each
    // with the host it was for as its upstream.
    let mut seen = Vec::new();
    while let Ok(r) = records.try_recv() {
        seen.push((r.status, r.upstream.map(|u| u.to_string())));
    }
    let host = Some("api.example.test".to_owned());
    assert!(seen.contains(&(200, host.clone())), "{seen:?}");
    assert!(seen.contains(&(502, host)), "{seen:?}");
}

/// Sends `req` down the proxy's stack as the accept loop would; (status, x-name).
async fn call_stack(proxy: &OutboundProxy, req: Request<Empty<Bytes>>) -> (u16, String) {
    let (parts, _) = req.into_parts();
    // The stack takes hyper's body type: send the request over a real connection to
    // a one-shot server running the stack, carrying the extension across.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stack = proxy.stack();
    let original = parts.extensions.get::<crate::proxy::OriginalDst>().copied();
    tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        let service = service_fn(move |mut req: Request<Incoming>| {
            if let Some(o) = original {
                req.extensions_mut().insert(o);
            }
            let mut stack = stack.clone();
            async move { tower::Service::call(&mut stack, crate::proxy::Call::new(req, peer)).await }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let mut req = Request::builder()
        .method(parts.method)
        .uri(format!("http://{addr}{}", parts.uri.path()));
    for (k, v) in &parts.headers {
        req = req.header(k, v);
    }
    let r = client()
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let name = r
        .headers()
        .get("x-name")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), name)
}
