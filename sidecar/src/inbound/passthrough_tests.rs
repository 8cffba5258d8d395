//! The inbound proxy passes through what a plain request/response exchange does not
//! carry: HTTP/1.1 upgrades (WebSocket) and HTTP/2 trailers to an h2c app (gRPC).

use super::*;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 app that accepts `Upgrade: websocket` on `/ws` and then echoes every
/// byte; any other request gets `200 plain`.
async fn spawn_upgrade_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    if req.uri().path() != "/ws" || !req.headers().contains_key(header::UPGRADE) {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"plain"))));
                    }
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let upgraded = on_upgrade.await.unwrap();
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                    let response = Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header(header::CONNECTION, "upgrade")
                        .header(header::UPGRADE, "websocket")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    Ok(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// An app that speaks only HTTP/2 (prior knowledge) and ends every answer with
/// gRPC-style trailers.
async fn spawn_h2c_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let body = Full::new(Bytes::from(format!("{:?} {}", req.version(), req.uri().path())))
                        .with_trailers(async move { Some(Ok(trailers)) });
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn spawn_proxy(app: SocketAddr, protocol: AppProtocol) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Arc::new(InboundProxy::with_app_protocol(
        app,
        Arc::new(SidecarState::new()),
        protocol,
    ));
    tokio::spawn(serve(listener, proxy, std::future::pending()));
    addr
}

/// Reads an HTTP/1.1 response head (up to the blank line) from `stream`.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert_eq!(n, 1, "connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

const HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nhost: app\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
    sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn websocket_upgrade_is_spliced_through_to_the_app() {
    for protocol in [AppProtocol::Http1, AppProtocol::H2c] {
        let proxy = spawn_proxy(spawn_upgrade_app().await, protocol).await;
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream.write_all(HANDSHAKE.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101 "), "{protocol:?}: {head}");
        assert!(head.contains("upgrade: websocket\r\n"), "{head}");
        assert!(head.contains("connection: upgrade\r\n"), "{head}");
        // A masked WebSocket text frame "hello"; the tunnel is opaque, so it comes back as sent.
        let frame = [0x81, 0x85, 1, 2, 3, 4, b'h' ^ 1, b'e' ^ 2, b'l' ^ 3, b'l' ^ 4, b'o' ^ 1];
        for _ in 0..2 {
            stream.write_all(&frame).await.unwrap();
            let mut echoed = [0u8; 11];
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
                .await
                .expect("echo in time")
                .unwrap();
            assert_eq!(echoed, frame);
        }
    }
}

#[tokio::test]
async fn upgrade_the_app_declines_is_an_ordinary_response() {
    let proxy = spawn_proxy(spawn_upgrade_app().await, AppProtocol::Http1).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = HANDSHAKE.replace("GET /ws ", "GET /other ");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert!(!head.contains("upgrade:"), "{head}");
}

#[tokio::test]
async fn h2c_app_gets_http2_and_its_trailers_reach_the_caller() {
    let proxy = spawn_proxy(spawn_h2c_app().await, AppProtocol::H2c).await;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let request = Request::post(format!("http://{proxy}/pkg.Service/Method"))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().and_then(|t| t.get("grpc-status")).unwrap(), "0");
    assert_eq!(body.to_bytes(), "HTTP/2.0 /pkg.Service/Method");

    // An HTTP/1.1 caller of an h2c app still reaches it (over HTTP/2).
    let http1: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = http1
        .request(
            Request::get(format!("http://{proxy}/plain"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "HTTP/2.0 /plain");
}
