//! Data-path timeouts and fault attribution through the real binaries: the route
//! timer starts once the request has been sent (slow uploads complete, a late
//! response head gets 504, a shorter `grpc-timeout` wins), clients that break their
//! own requests get 400 and are blamed on no instance, and the inbound proxy times
//! out an app that never answers and a request body that stalls.

mod common;
use common::*;
use outrider_testkit::{bin_path, echo_with, free_port, wait_until, Proc};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An echo app and its sidecar: one instance of a service.
struct Instance {
    _app: Proc,
    sidecar: Sidecar,
}

async fn instance(cp: &ControlPlane, dir: &Path, service: &str, pod: &str, extra: &[(&str, &str)]) -> Instance {
    let port = free_port();
    let app = echo_with(port, pod, &[]);
    let mut env = vec![("OUTRIDER_DESTINATIONS", "web")];
    env.extend_from_slice(extra);
    let sidecar = Sidecar::start_with(&cp.grpc(), service, pod, "v1", port, &dir.join(pod), &env).await;
    Instance { _app: app, sidecar }
}

/// A control plane, `web` instances named `pods`, and a caller `client`.
struct Mesh {
    cp: ControlPlane,
    _dir: tempfile::TempDir,
    web: Vec<Instance>,
    client: Instance,
}

async fn mesh(pods: &[&str]) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let mut web = Vec::new();
    for pod in pods {
        web.push(instance(&cp, dir.path(), "web", pod, &[]).await);
    }
    let client = instance(&cp, dir.path(), "client", "client-1", &[]).await;
    let m = Mesh {
        cp,
        _dir: dir,
        web,
        client,
    };
    let n = pods.len();
    let seen = wait_until(SOON, || async { endpoints_of(&m.client.sidecar).await == n }).await;
    assert!(seen.is_ok(), "the caller never saw {n} endpoints of web");
    m
}

async fn endpoints_of(caller: &Sidecar) -> usize {
    let dump = caller.config_dump().await;
    dump["destinations"]["services"]
        .as_array()
        .and_then(|s| s.iter().find(|d| d["service"] == "web"))
        .and_then(|d| d["endpoints"].as_array().map(Vec::len))
        .unwrap_or(0)
}

async fn put_routing(m: &mut Mesh, doc: &str) {
    let (status, body) = m.cp.put_policy("web", "routing", doc).await;
    assert_eq!(status, 200, "{body}");
    m.client.sidecar.wait_revision(body["revision"].as_u64().unwrap()).await;
}

/// Sends `request` as raw bytes and returns what comes back until the proxy closes
/// the connection (or, for a keep-alive answer, until the first answer is complete
/// enough to read its status line).
async fn raw(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_answer(&mut stream).await
}

async fn read_answer(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// One sample of a sidecar's admin `/metrics`.
async fn metric(sidecar: &Sidecar, name: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", sidecar.admin()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `curl` uploading `bytes` zero bytes at `rate` through the caller's outbound port.
async fn curl_upload(outbound_port: u16, bytes: usize, rate: &str) -> (u16, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload");
    std::fs::write(&file, vec![0u8; bytes]).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "60", "-H", "Host: web", "-H", "Expect:"])
        .args(["--limit-rate", rate, "-w", "\n%{http_code}", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{outbound_port}/upload"))
        .output()
        .await
        .expect("curl is needed for the upload tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", ""));
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    (
        code.parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// GET `http://web{path}` through the caller's outbound port.
async fn call(m: &Mesh, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client()
        .get(format!("http://127.0.0.1:{}{path}", m.client.sidecar.outbound_port))
        .header("host", "web");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let name = r
        .headers()
        .get("x-echo-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, name)
}

#[tokio::test]
async fn an_upload_slower_than_the_route_timeout_reaches_the_app_whole() {
    let mut m = mesh(&["web-1"]).await;
    put_routing(
        &mut m,
        r#"{"routes":[{"name":"default","backends":[{"subset":"v1","weight":100}],"timeout":"1s"}]}"#,
    )
    .await;
    // 240 KB at 80 KB/s: about three seconds of upload against a one-second timeout.
    let (status, answer) = curl_upload(m.client.sidecar.outbound_port, 240_000, "80K").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["bodyBytes"], 240_000, "the app got every byte: {answer}");
}

#[tokio::test]
async fn a_grpc_client_stream_longer_than_its_grpc_timeout_is_answered_after_it_ends() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mut m = mesh(&["web-1"]).await;
    put_routing(
        &mut m,
        r#"{"routes":[{"name":"default","backends":[{"subset":"v1","weight":100}],"timeout":"300ms"}]}"#,
    )
    .await;
    // HTTP/2 with prior knowledge, as a gRPC client speaks to its sidecar.
    let stream = TcpStream::connect(("127.0.0.1", m.client.sidecar.outbound_port))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (frames, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request = hyper::Request::post("http://web/outrider.Echo/Upload")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "200m")
        .body(body)
        .unwrap();
    let answer = tokio::spawn(sender.send_request(request));
    // Ten messages 100 ms apart: the stream outlasts both the route timeout and
    // grpc-timeout, whose timers start only once it has ended.
    for _ in 0..10 {
        frames
            .send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(frames);
    let response = tokio::time::timeout(SOON, answer)
        .await
        .expect("answer in time")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    // The echo answers a gRPC caller with one gRPC message: a 5-byte frame head.
    assert!(body.len() > 5 && body[0] == 0, "not one gRPC message: {body:?}");
    let doc: Value = serde_json::from_slice(&body[5..]).unwrap();
    assert_eq!(doc["bodyBytes"], 100, "{doc}");
}

#[tokio::test]
async fn a_response_head_later_than_the_route_timeout_gets_504() {
    let mut m = mesh(&["web-1"]).await;
    put_routing(
        &mut m,
        r#"{"routes":[{"name":"default","backends":[{"subset":"v1","weight":100}],"timeout":"300ms"}]}"#,
    )
    .await;
    let (status, _) = call(&m, "/?delay_ms=5000", &[]).await;
    assert_eq!(status, 504);
    // A streamed body that is sent in full starts the timer too.
    let answer = raw(
        m.client.sidecar.outbound_port,
        b"POST /?delay_ms=5000 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 504, "{answer}");
    let (status, _) = call(&m, "/?delay_ms=10", &[]).await;
    assert_eq!(status, 200, "an answer in time passes");
}

#[tokio::test]
async fn a_grpc_timeout_shorter_than_the_route_timeout_wins() {
    let mut m = mesh(&["web-1"]).await;
    put_routing(
        &mut m,
        r#"{"routes":[{"name":"default","backends":[{"subset":"v1","weight":100}],"timeout":"20s"}]}"#,
    )
    .await;
    let (status, _) = call(&m, "/?delay_ms=5000", &[("grpc-timeout", "300m")]).await;
    assert_eq!(status, 504);
    // A malformed value is ignored, as the gRPC spec has a server do; so is a longer one.
    for value in ["3 S", "300", "1H"] {
        let (status, _) = call(&m, "/?delay_ms=400", &[("grpc-timeout", value)]).await;
        assert_eq!(status, 200, "grpc-timeout {value:?}");
    }
}

#[tokio::test]
async fn clients_that_abort_uploads_eject_no_instance_and_raise_no_error_figures() {
    let m = mesh(&["web-a", "web-b"]).await;
    let port = m.client.sidecar.outbound_port;
    // Four times the consecutive failures that eject an instance, were they counted.
    for _ in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&[0u8; 100_000]).await.unwrap();
        drop(stream);
    }
    // A malformed chunk is the client's fault too, answered 400 while it listens.
    let answer = raw(
        port,
        b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");

    let mut names = std::collections::HashSet::new();
    for _ in 0..40 {
        let (status, name) = call(&m, "/", &[]).await;
        assert_eq!(status, 200);
        names.insert(name);
    }
    assert_eq!(names.len(), 2, "both instances stay in rotation: {names:?}");

    // The figures canary analysis reads: the 40 answers, no error.
    let deadline = Instant::now() + SOON;
    let traffic = loop {
        let v = m.cp.get_json("/services/web").await;
        let t = v["traffic"].as_array().cloned().unwrap_or_default();
        let requests: u64 = t.iter().filter_map(|f| f["requests"].as_u64()).sum();
        if requests >= 40 {
            break t;
        }
        assert!(Instant::now() < deadline, "no traffic figures: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let errors: u64 = traffic.iter().filter_map(|f| f["errors"].as_u64()).sum();
    let requests: u64 = traffic.iter().filter_map(|f| f["requests"].as_u64()).sum();
    assert_eq!((requests, errors), (40, 0), "{traffic:?}");
    // Nor do the instances' own sidecars count the broken uploads as app failures.
    for web in &m.web {
        assert_eq!(
            metric(&web.sidecar, "outrider_sidecar_upstream_errors_total").await,
            0.0
        );
        assert_eq!(
            metric(&web.sidecar, "outrider_sidecar_requests_total{class=\"5xx\"}").await,
            0.0
        );
    }
    assert_eq!(metric(&m.client.sidecar, "outrider_sidecar_ejections_total").await, 0.0);
}

#[tokio::test]
async fn the_inbound_times_out_a_silent_app_and_a_stalled_body_and_blames_broken_bodies_on_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await;
    let web = instance(
        &cp,
        dir.path(),
        "web",
        "web-1",
        &[
            ("OUTRIDER_INBOUND_TIMEOUT", "300ms"),
            ("OUTRIDER_INBOUND_BODY_TIMEOUT", "300ms"),
        ],
    )
    .await;
    let port = web.sidecar.inbound_port;

    // An app that takes its time answering (a minute) gets the caller a 504 instead.
    let r = client()
        .get(format!("{}/?delay_ms=60000", web.sidecar.inbound()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.text().await.unwrap(), "app did not answer in time\n");

    // A body that stops coming is cut: 408, and not the app's failure.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(status_of(&answer), 408, "{answer}");

    // A malformed chunk: 400.
    let answer = raw(
        port,
        b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");

    // A body within the limits still gets through.
    let r = client()
        .post(format!("{}/upload", web.sidecar.inbound()))
        .body(vec![7u8; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["bodyBytes"], 200_000);

    // Only the silent app counts as an upstream failure.
    assert_eq!(
        metric(&web.sidecar, "outrider_sidecar_upstream_errors_total").await,
        1.0
    );
    let _ = &cp;
}

#[test]
fn the_sidecar_refuses_to_start_with_a_bad_inbound_timeout() {
    for (var, value, says) in [
        (
            "OUTRIDER_INBOUND_TIMEOUT",
            "0s",
            "OUTRIDER_INBOUND_TIMEOUT must be greater than 0",
        ),
        ("OUTRIDER_INBOUND_TIMEOUT", "2h", "at most 1h"),
        (
            "OUTRIDER_INBOUND_BODY_TIMEOUT",
            "0s",
            "OUTRIDER_INBOUND_BODY_TIMEOUT must be greater than 0",
        ),
        ("OUTRIDER_INBOUND_TIMEOUT", "soon", "invalid duration"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let addr = || format!("127.0.0.1:{}", free_port());
        let (inbound, outbound, admin) = (addr(), addr(), addr());
        let state = dir.path().display().to_string();
        let env = [
            ("OUTRIDER_SERVICE", "web"),
            ("OUTRIDER_APP_PORT", "8080"),
            ("OUTRIDER_INBOUND_ADDR", inbound.as_str()),
            ("OUTRIDER_OUTBOUND_ADDR", outbound.as_str()),
            ("OUTRIDER_ADMIN_ADDR", admin.as_str()),
            ("OUTRIDER_HEALTH_ADDR", "off"),
            ("OUTRIDER_STATE_DIR", state.as_str()),
            (var, value),
        ];
        // Killed when dropped: a sidecar that wrongly starts fails the test, never hangs it.
        let mut sidecar = Proc::spawn(bin_path("outrider-sidecar"), &[], &env);
        let exit = sidecar.wait_exit(SOON);
        let stderr = sidecar.log();
        assert!(exit.is_some_and(|e| !e.success()), "{var}={value} started: {stderr}");
        assert!(stderr.contains(says), "{var}={value}: {stderr}");
    }
}
