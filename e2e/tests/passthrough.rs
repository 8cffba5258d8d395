//! What must survive two sidecars (app → caller's outbound → callee's inbound → app)
//! untouched: a WebSocket upgrade, and a gRPC-style HTTP/2 exchange whose status
//! travels in trailers, to an app that speaks h2c (`OUTRIDER_APP_PROTOCOL=h2c`).

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrider_testkit::{echo_with, free_port, wait_until, Proc};
use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Waits until `caller` routes to at least one instance of `service`. Each try calls
/// the name first: a call made before the sidecar has connected is answered at once
/// and asks for nothing, so one call alone can leave the name unknown.
async fn wait_routable(caller: &Sidecar, service: &str) {
    let r = wait_until(SOON, || async {
        let _ = client()
            .get(format!("http://127.0.0.1:{}/", caller.outbound_port))
            .header("host", service)
            .send()
            .await;
        let dump = caller.config_dump().await;
        dump["destinations"]["services"].as_array().is_some_and(|services| {
            services
                .iter()
                .any(|d| d["service"] == service && d["endpoints"].as_array().is_some_and(|e| !e.is_empty()))
        })
    })
    .await;
    if let Err(e) = r {
        panic!("caller never saw an endpoint of {service}: {e}");
    }
}

/// The caller `client` (an echo app behind its sidecar) and its sidecar.
async fn caller(cp: &ControlPlane, dir: &Path) -> (Proc, Sidecar) {
    let port = free_port();
    let app = echo_with(port, "client-1", &[]);
    let sidecar = Sidecar::start(&cp.grpc(), "client", "client-1", port, &dir.join("client-1")).await;
    (app, sidecar)
}

/// An HTTP/1.1 app in this test process: `/ws` accepts `Upgrade: websocket` and then
/// echoes every byte it receives; anything else gets `200`.
async fn spawn_websocket_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    if req.uri().path() != "/ws" || !req.headers().contains_key("upgrade") {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))));
                    }
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(upgraded) = on_upgrade.await {
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                    Ok(Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .body(Full::new(Bytes::new()))
                        .unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(SOON, stream.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert_eq!(n, 1, "connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn websocket_echo_works_through_two_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let web_port = spawn_websocket_echo().await;
    let _web = Sidecar::start(&cp.grpc(), "web", "web-1", web_port, &dir.path().join("web-1")).await;
    let (_app, client) = caller(&cp, dir.path()).await;
    wait_routable(&client, "web").await;

    let mut stream = TcpStream::connect(("127.0.0.1", client.outbound_port)).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: web\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");

    // Masked WebSocket text frames ("hello", then "world"): the tunnel is opaque, so
    // the echo returns them byte for byte, in both directions, more than once.
    for word in [b"hello", b"world"] {
        let mask = [7u8, 1, 9, 3];
        let mut frame = vec![0x81, 0x80 | word.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(word.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        stream.write_all(&frame).await.unwrap();
        let mut echoed = vec![0u8; frame.len()];
        tokio::time::timeout(SOON, stream.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(echoed, frame);
    }
}

#[tokio::test]
async fn grpc_style_trailers_reach_the_caller_through_two_sidecars_to_an_h2c_app() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let web_port = free_port();
    let _web_app = echo_with(web_port, "web-1", &[]);
    let _web = Sidecar::start_with(
        &cp.grpc(),
        "web",
        "web-1",
        "v1",
        web_port,
        &dir.path().join("web-1"),
        &[("OUTRIDER_APP_PROTOCOL", "h2c")],
    )
    .await;
    let (_app, client) = caller(&cp, dir.path()).await;
    wait_routable(&client, "web").await;

    // A gRPC client speaks HTTP/2 with prior knowledge to its sidecar, naming the
    // service in :authority.
    let stream = TcpStream::connect(("127.0.0.1", client.outbound_port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let request = Request::post("http://web/outrider.Echo/Call?trailers=1")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
            .unwrap();
        let response = tokio::time::timeout(SOON, sender.send_request(request))
            .await
            .expect("answer in time")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-echo-name"], "web-1");
        let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
            .await
            .expect("body in time")
            .unwrap();
        let trailers = body.trailers().cloned().expect("trailers reach the caller");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-echo-name"], "web-1");
        // One gRPC message: a 5-byte prefix (compression flag, length), then the JSON.
        let message = body.to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&message[5..]).unwrap();
        // The app was reached over HTTP/2 (OUTRIDER_APP_PROTOCOL=h2c), with the whole body.
        assert_eq!(doc["version"], "HTTP/2.0", "{doc}");
        assert_eq!(doc["path"], "/outrider.Echo/Call", "{doc}");
        assert_eq!(doc["bodyBytes"], 10, "{doc}");
    }
}
