//! HTTP protocol and header correctness of both proxies, with the clients that found
//! the bugs: curl (HTTP/1.1 and h2c with prior knowledge), Python's grpcio and httpx
//! (HTTP/2), and raw sockets for malformed HTTP/1.1. The path is always app →
//! caller's outbound → callee's inbound → `outrider-echo`.
//!
//! The Python clients live in a virtualenv that `.ci/run` makes
//! (`OUTRIDER_TEST_PYTHON`, else `target/pyclients/bin/python`); without it these
//! tests skip, except under CI, where they fail.

mod common;
use common::*;
use outrider_testkit::{echo_with, free_port, wait_until, Proc};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A caller and the service `web` (one `outrider-echo`, HTTP/1.1 or h2c to its
/// sidecar), both behind real sidecars.
struct Mesh {
    _cp: ControlPlane,
    _procs: Vec<Proc>,
    web: Sidecar,
    caller: Sidecar,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(app_protocol: &str) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(&dir.path().join("cp")).await;
        let web_port = free_port();
        let web_app = echo_with(web_port, "web-1", &[]);
        let web = Sidecar::start_with(
            &cp.grpc(),
            "web",
            "web-1",
            "v1",
            web_port,
            &dir.path().join("web-1"),
            &[("OUTRIDER_APP_PROTOCOL", app_protocol)],
        )
        .await;
        let caller_port = free_port();
        let caller_app = echo_with(caller_port, "client-1", &[]);
        let caller = Sidecar::start(
            &cp.grpc(),
            "client",
            "client-1",
            caller_port,
            &dir.path().join("client-1"),
        )
        .await;
        let mesh = Mesh {
            _cp: cp,
            _procs: vec![web_app, caller_app],
            web,
            caller,
            _dir: dir,
        };
        mesh.wait_routable().await;
        mesh
    }

    /// Waits until the caller routes `web` to its instance.
    async fn wait_routable(&self) {
        let url = format!("http://127.0.0.1:{}/", self.caller.outbound_port);
        let r = wait_until(SOON, || async {
            client()
                .get(&url)
                .header("host", "web")
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        if let Err(e) = r {
            self.caller.proc.print_log_tail(40);
            panic!("caller never reached web: {e}");
        }
    }

    fn outbound(&self) -> String {
        format!("127.0.0.1:{}", self.caller.outbound_port)
    }

    fn inbound(&self) -> String {
        format!("127.0.0.1:{}", self.web.inbound_port)
    }
}

/// What curl (or a raw socket) received: status, lowercased head, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Every value of header `name` in the head, in order.
    fn header(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}:");
        self.head
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_owned())
            .collect()
    }
}

/// Runs curl with `args` (silent, head included) and splits its answer.
fn curl(args: &[&str]) -> Answer {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    split(&String::from_utf8_lossy(&out.stdout))
}

fn split(raw: &str) -> Answer {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// Sends `request` as is on a new connection and reads until the proxy closes it.
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(SOON, stream.read_to_end(&mut out))
        .await
        .expect("the proxy answers and closes in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `script` with `args`; it prints one JSON document.
fn run_python(python: &Path, script: &str, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("python printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// One unary gRPC call with grpcio: target, authority, method, metadata (JSON).
/// Prints the status code name, details, and the answer (the echo's JSON).
const GRPC_CALL: &str = r#"
import json, sys, grpc
target, authority, method, metadata = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
options = [("grpc.default_authority", authority), ("grpc.max_metadata_size", 1 << 20)]
with grpc.insecure_channel(target, options=options) as channel:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        answer = call(b"hello", metadata=list(metadata.items()), timeout=10)
        print(json.dumps({"code": "OK", "answer": json.loads(answer)}))
    except grpc.RpcError as e:
        print(json.dumps({"code": e.code().name, "details": e.details()}))
"#;

/// One GET over HTTP/2 with prior knowledge with httpx: url, headers as a JSON list
/// of pairs (a `host` pair becomes :authority). Prints status, headers and body.
const HTTPX_GET: &str = r#"
import json, sys, httpx
url, headers = sys.argv[1], [tuple(h) for h in json.loads(sys.argv[2])]
with httpx.Client(http1=False, http2=True, timeout=10) as client:
    r = client.get(url, headers=headers)
    print(json.dumps({"version": r.http_version, "status": r.status_code,
                      "headers": dict(r.headers), "body": r.text}))
"#;

#[tokio::test]
async fn http2_headers_and_trailers_over_16_kib_pass_both_proxies() {
    let mesh = Mesh::start("h2c").await;
    // curl over h2c: a 17 KB request header reaches the app, a 17 KB response header
    // comes back.
    let big = format!("x-big-request: {}", "r".repeat(17_000));
    let answer = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "host: web",
        "-H",
        &big,
        "-H",
        "x-echo-header-bytes: 17000",
        &format!("http://{}/big?headers=1", mesh.outbound()),
    ]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-echo-big")[0].len(), 17_000);
    let doc = answer.json();
    assert_eq!(doc["version"], "HTTP/2.0", "{doc}");
    assert_eq!(doc["headers"]["x-big-request"].as_str().unwrap().len(), 17_000);

    // grpcio: an error whose grpc-message is 20 KB stays a gRPC error, not a reset.
    let Some(python) = test_python() else { return };
    let outcome = run_python(
        &python,
        GRPC_CALL,
        &[
            &mesh.outbound(),
            "web",
            "/outrider.Echo/Fail",
            r#"{"x-echo-grpc-status": "13", "x-echo-grpc-message-bytes": "20000"}"#,
        ],
    );
    assert_eq!(outcome["code"], "INTERNAL", "{outcome}");
    assert_eq!(outcome["details"].as_str().unwrap().len(), 20_000);
}

#[tokio::test]
async fn oversized_or_too_many_response_headers_get_a_clear_502() {
    let mesh = Mesh::start("http1").await;
    let too_many = curl(&[
        "-H",
        "host: web",
        "-H",
        "x-echo-header-count: 150",
        &format!("http://{}/many", mesh.outbound()),
    ]);
    assert_eq!(too_many.status, 502, "{}", too_many.body);
    assert!(too_many.body.contains("too many or too large"), "{}", too_many.body);
    let too_large = curl(&[
        "-H",
        "host: web",
        "-H",
        "x-echo-header-bytes: 70000",
        &format!("http://{}/large", mesh.outbound()),
    ]);
    assert_eq!(too_large.status, 502, "{}", too_large.body);
    assert!(too_large.body.contains("too many or too large"), "{}", too_large.body);
}

#[tokio::test]
async fn http2_and_grpc_callers_keep_the_name_they_called() {
    let Some(python) = test_python() else { return };
    let mesh = Mesh::start("http1").await;
    // httpx over h2c: :authority `web` reaches an HTTP/1.1 app as `Host: web`, and
    // cookies split over several HTTP/2 fields arrive as one line.
    let answer = run_python(
        &python,
        HTTPX_GET,
        &[
            &format!("http://{}/who?headers=1", mesh.outbound()),
            r#"[["host", "web"], ["cookie", "a=1"], ["cookie", "b=2"]]"#,
        ],
    );
    assert_eq!(answer["version"], "HTTP/2", "{answer}");
    assert_eq!(answer["status"], 200, "{answer}");
    let doc: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(doc["host"], "web", "{doc}");
    assert_eq!(doc["headers"]["cookie"], "a=1; b=2", "{doc}");

    // grpcio with authority `web.default.svc` through to an h2c app.
    let h2c = Mesh::start("h2c").await;
    let outcome = run_python(
        &python,
        GRPC_CALL,
        &[&h2c.outbound(), "web.default.svc", "/outrider.Echo/Who", "{}"],
    );
    assert_eq!(outcome["code"], "OK", "{outcome}");
    assert_eq!(outcome["answer"]["authority"], "web.default.svc", "{outcome}");
    assert_eq!(outcome["answer"]["version"], "HTTP/2.0", "{outcome}");
}

#[tokio::test]
async fn http11_trailers_pass_both_ways() {
    let mesh = Mesh::start("http1").await;
    let answer = raw(
        &mesh.outbound(),
        b"POST /upload?trailers=1 HTTP/1.1\r\nhost: web\r\nte: trailers\r\nconnection: close\r\n\
          transfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
          5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n",
    )
    .await;
    let lower = answer.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{answer}");
    // The app saw the request's trailer.
    assert!(answer.contains(r#""trailers":{"x-checksum":"abc123"}"#), "{answer}");
    // And the app's trailers came back after the last chunk.
    let (_, tail) = lower
        .rsplit_once("\r\n0\r\n")
        .unwrap_or_else(|| panic!("not chunked: {answer}"));
    assert!(tail.contains("grpc-status: 0\r\n"), "{answer}");
    assert!(tail.contains("x-echo-name: web-1\r\n"), "{answer}");
}

#[tokio::test]
async fn connect_is_answered_locally_and_h2c_upgrades_never_reach_the_app() {
    let mesh = Mesh::start("http1").await;
    for proxy in [mesh.outbound(), mesh.inbound()] {
        let answer = raw(
            &proxy,
            b"CONNECT web:80 HTTP/1.1\r\nhost: web:80\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{proxy}: {answer}");
        assert!(answer.contains("call the service by name"), "{proxy}: {answer}");
    }
    // curl --http2 on plain HTTP asks to upgrade to h2c: the request is answered
    // over HTTP/1.1 and the app never hears of the upgrade.
    let answer = curl(&[
        "--http2",
        "-H",
        "host: web",
        &format!("http://{}/smuggle?headers=1", mesh.outbound()),
    ]);
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(answer.head.starts_with("http/1.1 200"), "{}", answer.head);
    let doc = answer.json();
    assert!(doc["headers"].get("upgrade").is_none(), "{doc}");
    assert!(doc["headers"].get("http2-settings").is_none(), "{doc}");
}

#[tokio::test]
async fn service_names_match_in_any_case_and_never_by_first_label() {
    let mesh = Mesh::start("http1").await;
    let url = format!("http://{}/", mesh.outbound());
    for host in ["WEB", "Web:8080", "web.default", "web.default.svc.cluster.local"] {
        let answer = curl(&["-H", &format!("host: {host}"), &url]);
        assert_eq!(answer.status, 200, "{host}: {}", answer.body);
        assert_eq!(answer.json()["name"], "web-1", "{host}");
    }
    for host in ["web.stripe.com", "web.other.svc.cluster.local"] {
        let answer = curl(&["-H", &format!("host: {host}"), &url]);
        assert_eq!(answer.status, 503, "{host}: {}", answer.body);
        assert!(answer.body.contains("unknown service"), "{host}: {}", answer.body);
    }
}

#[tokio::test]
async fn local_answers_reach_grpc_callers_in_grpc_form() {
    let Some(python) = test_python() else { return };
    let mesh = Mesh::start("h2c").await;
    let outcome = run_python(
        &python,
        GRPC_CALL,
        &[&mesh.outbound(), "nope", "/outrider.Echo/Who", "{}"],
    );
    assert_eq!(outcome["code"], "UNAVAILABLE", "{outcome}");
    assert!(
        outcome["details"].as_str().unwrap().contains("unknown service"),
        "{outcome}"
    );
}

#[tokio::test]
async fn malformed_http11_requests_are_refused_and_the_absolute_form_names_the_target() {
    let mesh = Mesh::start("http1").await;
    for proxy in [mesh.outbound(), mesh.inbound()] {
        let none = raw(&proxy, b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
        assert!(none.starts_with("HTTP/1.1 400"), "{proxy}: {none}");
        let two = raw(
            &proxy,
            b"GET / HTTP/1.1\r\nhost: web\r\nhost: evil\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(two.starts_with("HTTP/1.1 400"), "{proxy}: {two}");
    }
    let answer = split(
        &raw(
            &mesh.outbound(),
            b"GET http://web/x?headers=1 HTTP/1.1\r\nhost: other\r\nconnection: close\r\n\r\n",
        )
        .await,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let doc = answer.json();
    assert_eq!(doc["host"], "web", "{doc}");
    // Both proxies said they passed the request on, and the answer back.
    assert_eq!(doc["headers"]["via"], "1.1 outrider, 1.1 outrider", "{doc}");
    assert_eq!(answer.header("via").join(", "), "1.1 outrider, 1.1 outrider");
}
