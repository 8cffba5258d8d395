//! The control plane's HTTP and gRPC ports against browsers and abusive clients, on
//! the real binary over real sockets: cross-site writes, form bodies, config
//! documents that would run as pages, half-sent request heads, a bare HTTP/2
//! preface, preconditions, the bearer scheme and a client that keeps guessing.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for the server to close a connection: far past the 1 s
/// timeouts these control planes run with, so a slow machine never fails it.
const GENEROUS: Duration = Duration::from_secs(60);

async fn start(extra: &[(&str, &str)]) -> (tempfile::TempDir, ControlPlane) {
    let dir = tempfile::tempdir().unwrap();
    let env = extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let cp = ControlPlane::start_with(&dir.path().join("cp"), None, env).await;
    (dir, cp)
}

/// Reads until the server closes the connection; `true` when it did (EOF or reset)
/// within [`GENEROUS`].
async fn closed_by_server(mut stream: TcpStream) -> bool {
    let read_to_end = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(GENEROUS, read_to_end).await.is_ok()
}

#[tokio::test]
async fn a_cross_origin_token_or_canary_write_is_403_and_stores_nothing() {
    let (_dir, cp) = start(&[]).await;
    for (path, body) in [
        ("/tokens", json!({"name": "mallory", "role": "admin"})),
        (
            "/services/web/canary",
            json!({"subset": "v2", "steps": [10, 100], "interval": "1s"}),
        ),
    ] {
        let r = client()
            .post(cp.api(path))
            .header("origin", "http://evil.example")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{path}");
    }
    assert_eq!(cp.get_json("/tokens").await, json!([]), "no token created");
    assert_eq!(cp.get_json("/revisions").await, json!([]), "nothing stored");
    // The control plane's own origin writes as before.
    let r = client()
        .post(cp.api("/tokens"))
        .header("origin", cp.base())
        .header("content-type", "application/json")
        .body(json!({"name": "ops", "role": "admin"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn a_form_body_is_415_and_a_rebound_host_is_403() {
    let (_dir, cp) = start(&[]).await;
    let r = client()
        .put(cp.api("/services/web/policies/rate-limit"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("rules=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = client()
        .put(cp.api("/services/web/config/app.txt"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body("--x--")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "a form type is refused on config documents too");
    let r = client()
        .get(cp.api("/services"))
        .header("host", format!("rebound.evil.example:{}", cp.http_port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(cp.get_json("/revisions").await, json!([]), "nothing stored");
}

#[tokio::test]
async fn an_html_config_document_is_served_with_nosniff_and_a_sandbox() {
    let (_dir, cp) = start(&[]).await;
    let uri = cp.api("/services/web/config/page.html");
    let r = client()
        .put(&uri)
        .header("content-type", "text/html")
        .body("<script>fetch('/api/v1/tokens')</script>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(&uri).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-security-policy"], "sandbox");
    assert_eq!(h["content-disposition"], "attachment");
}

#[tokio::test]
async fn connections_that_send_half_a_request_head_are_all_closed_by_the_server() {
    let (_dir, cp) = start(&[("OUTRIDER_HTTP_HEADER_TIMEOUT", "1s")]).await;
    let addr = format!("127.0.0.1:{}", cp.http_port);
    let mut streams = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /api/v1/services HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        streams.push(s);
    }
    // One that sends nothing at all, and one idle after a whole request.
    streams.push(TcpStream::connect(&addr).await.unwrap());
    let mut kept_alive = TcpStream::connect(&addr).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    streams.push(kept_alive);
    let total = streams.len();
    let waits = streams.into_iter().map(|s| tokio::spawn(closed_by_server(s)));
    let mut closed = 0;
    for w in waits {
        closed += usize::from(w.await.unwrap());
    }
    assert_eq!(closed, total, "every slow or idle connection is closed by the server");
    // And the port still serves.
    let r = client().get(cp.api("/services")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_grpc_connection_that_sends_only_the_preface_or_nothing_is_closed() {
    let (_dir, cp) = start(&[("OUTRIDER_GRPC_HANDSHAKE_TIMEOUT", "1s")]).await;
    let addr = format!("127.0.0.1:{}", cp.grpc_port);
    let mut preface_only = TcpStream::connect(&addr).await.unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let silent = TcpStream::connect(&addr).await.unwrap();
    assert!(closed_by_server(preface_only).await, "preface only");
    assert!(closed_by_server(silent).await, "nothing at all");
}

#[tokio::test]
async fn if_match_takes_a_list_and_if_none_match_star_creates_only() {
    let (_dir, cp) = start(&[]).await;
    let uri = cp.api("/services/web/policies/rate-limit");
    let doc = json!({"rules": [{"name": "all", "requestsPerSecond": 5}]}).to_string();
    let put = |header: &'static str, value: String| {
        client()
            .put(&uri)
            .header("content-type", "application/json")
            .header(header, value)
            .body(doc.clone())
            .send()
    };
    let r = put("if-none-match", "*".into()).await.unwrap();
    assert_eq!(r.status(), 200, "create-only on a new document");
    let rev = r.json::<Value>().await.unwrap()["revision"].as_u64().unwrap();
    assert_eq!(put("if-none-match", "*".into()).await.unwrap().status(), 412);
    let r = put("if-match", format!("\"{}\", \"{rev}\"", rev + 7)).await.unwrap();
    assert_eq!(r.status(), 200, "one tag of the list matches");
    let rev = r.json::<Value>().await.unwrap()["revision"].as_u64().unwrap();
    let r = put("if-match", format!("\"{}\", \"{}\"", rev + 1, rev + 2))
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
}

#[tokio::test]
async fn a_lower_case_bearer_works_and_repeated_bad_tokens_get_429_while_a_good_one_still_works() {
    let (_dir, cp) = start(&[("OUTRIDER_API_TOKEN", "boot-secret")]).await;
    let get = |auth: &'static str| client().get(cp.api("/services")).header("authorization", auth).send();
    assert_eq!(get("bearer boot-secret").await.unwrap().status(), 200);
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(get("Bearer guess").await.unwrap().status().as_u16());
    }
    assert!(statuses.starts_with(&[401]), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let r = get("Bearer guess").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        get("Bearer boot-secret").await.unwrap().status(),
        200,
        "a good token is never throttled"
    );
    let metrics = get_text(&format!("{}/metrics", cp.base())).await;
    assert!(
        metrics.contains("outrider_control_plane_api_auth_throttled_total"),
        "{metrics}"
    );
}
