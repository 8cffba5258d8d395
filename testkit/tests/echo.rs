//! The echo app over real sockets, started through the testkit helpers it is meant for.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrider_testkit::{echo, echo_with, free_port, wait_for_http_ok, Proc};
use serde_json::Value;

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[tokio::test]
async fn echo_answers_with_its_name_and_the_request() {
    let port = free_port();
    let _app = echo_with(port, "blue", &[]);
    wait_for_http_ok(&url(port, "/healthz"), Duration::from_secs(5))
        .await
        .unwrap();

    let resp = reqwest::Client::new()
        .get(url(port, "/api/items?x=1"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-name"], "blue");
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["name"], "blue");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/api/items");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["requestId"], "req-42");
    assert_eq!(body["version"], "HTTP/1.1");
}

#[tokio::test]
async fn echo_counts_streamed_request_body() {
    let port = free_port();
    let _app = echo(port);
    let body = vec![b'a'; 3 * 1024 * 1024 + 7];
    let resp = reqwest::Client::new()
        .post(url(port, "/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["bodyBytes"], 3 * 1024 * 1024 + 7);
    assert_eq!(doc["method"], "POST");
}

#[tokio::test]
async fn echo_fail_rate_spread_fails_exact_fraction() {
    let port = free_port();
    let _app = echo_with(port, "canary", &["--fail-rate", "0.2"]);
    let client = reqwest::Client::new();
    let mut failures = 0;
    for _ in 0..100 {
        let s = client.get(url(port, "/")).send().await.unwrap().status();
        if s == 500 {
            failures += 1;
        } else {
            assert_eq!(s, 200);
        }
    }
    assert_eq!(failures, 20);
    // Health checks are never failed on purpose.
    for _ in 0..10 {
        let s = client.get(url(port, "/healthz")).send().await.unwrap().status();
        assert_eq!(s, 200);
    }
}

#[tokio::test]
async fn echo_fail_after_answers_the_first_requests_then_fails_at_the_rate() {
    let port = free_port();
    let _app = echo_with(port, "breaks", &["--fail-rate", "1.0", "--fail-after", "5"]);
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(client.get(url(port, "/")).send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 500, 500, 500]);
}

#[tokio::test]
async fn echo_status_path_and_delay() {
    let port = free_port();
    let _app = echo(port);
    let client = reqwest::Client::new();
    let resp = client.get(url(port, "/status/503")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let start = std::time::Instant::now();
    let resp = client.get(url(port, "/?delay_ms=150")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn echo_speaks_h2c_with_prior_knowledge() {
    let port = free_port();
    let _app = echo(port);
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(url(port, "/grpc-ish"))
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["version"], "HTTP/2.0");
    assert_eq!(doc["bodyBytes"], 5);
}

#[tokio::test]
async fn echo_exits_cleanly_on_sigterm() {
    let port = free_port();
    let mut app: Proc = echo(port);
    let status = app.terminate_within(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}\n{}", app.log());
    assert!(app.log().contains("shutting down"));
}
