//! `outrider-echo`: a tiny, fast HTTP/1.1 + h2c app that tests, demos and benchmarks put
//! behind a sidecar. Every answer says who answered and what was asked.
//!
//! Behaviour (all paths):
//! - `GET /healthz` → `200 ok` (never subject to `--fail-rate`).
//! - `/status/NNN` → answers with status NNN.
//! - `?delay_ms=N` → waits N ms before answering (timeouts, retries).
//! - `?headers=1` → the JSON body also lists the request headers (repeated fields
//!   joined by `, `).
//! - `?trailers=1` → the body ends with gRPC-style trailers `grpc-status: 0` and
//!   `x-echo-name`, announced in `Trailer` (HTTP/2 carries them; HTTP/1.1 only to a
//!   client that sent `TE: trailers`).
//! - A request body's trailers are listed in the JSON as `trailers`; the JSON also
//!   names the request's `authority` (its URI's, as HTTP/2 carries it) and `host`.
//! - Request headers shape the answer, for protocol tests: `x-echo-header-bytes: N`
//!   adds a response header `x-echo-big` of N bytes, `x-echo-header-count: N` adds N
//!   small response headers, `x-echo-trailer-bytes: N` a trailer `x-echo-big` of N
//!   bytes (with `?trailers=1`).
//! - `content-type: application/grpc*` → a gRPC answer: the JSON (with the request
//!   headers) as one message, then trailers `grpc-status` (`x-echo-grpc-status`,
//!   default 0) and, with `x-echo-grpc-message-bytes: N`, a `grpc-message` of N bytes.
//! - anything else → `200` with `{"name","method","path","query","version","requestId","bodyBytes"}`;
//!   the request body is streamed and only counted. The `x-request-id` header is echoed back
//!   and `x-echo-name` names the instance.
//! - `--fail-rate F` answers `500` to that fraction of those requests; with
//!   `--fail-after N` only after the first N of them (a release that breaks later).
//!
//! - `--tcp-listen ADDR` also serves raw TCP there: every byte is sent back (not
//!   HTTP: what a database or other opaque protocol looks like to a proxy); with
//!   `--tcp-greeting TEXT` it first sends TEXT and a newline, as server-first
//!   protocols (MySQL, SMTP) do.
//!
//! On start it prints `listening on ADDR` (useful with port 0); SIGTERM/SIGINT stop
//! accepting, let in-flight requests finish (up to 5 s) and exit 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(name = "outrider-echo", about = "HTTP/1.1 + h2c echo app for tests and benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ECHO_ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Label returned in every answer, so callers can tell instances apart.
    #[arg(long, env = "ECHO_NAME", default_value = "echo")]
    name: String,
    /// Fraction (0.0–1.0) of requests answered with 500.
    #[arg(long, env = "ECHO_FAIL_RATE", default_value_t = 0.0)]
    fail_rate: f64,
    /// `spread`: exactly that fraction, evenly spaced (deterministic, good for assertions);
    /// `random`: each request fails independently with that probability.
    #[arg(long, env = "ECHO_FAIL_MODE", value_enum, default_value_t = FailMode::Spread)]
    fail_mode: FailMode,
    /// Answer the first N requests normally before `--fail-rate` applies.
    #[arg(long, env = "ECHO_FAIL_AFTER", default_value_t = 0)]
    fail_after: u64,
    /// Also serve raw TCP echo on this address.
    #[arg(long, env = "ECHO_TCP_LISTEN")]
    tcp_listen: Option<SocketAddr>,
    /// What the raw TCP echo says first, before the client sends anything.
    #[arg(long, env = "ECHO_TCP_GREETING")]
    tcp_greeting: Option<String>,
    /// Tokio worker threads (default: the CPUs this process may run on).
    #[arg(long, env = "ECHO_THREADS")]
    threads: Option<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FailMode {
    Spread,
    Random,
}

struct App {
    name: String,
    name_header: HeaderValue,
    fail_rate: f64,
    fail_mode: FailMode,
    fail_after: u64,
    counter: AtomicU64,
}

impl App {
    fn should_fail(&self) -> bool {
        if self.fail_rate <= 0.0 {
            return false;
        }
        let Some(n) = self
            .counter
            .fetch_add(1, Ordering::Relaxed)
            .checked_sub(self.fail_after)
        else {
            return false;
        };
        match self.fail_mode {
            // Request n fails when the running quota floor(n·rate) steps up.
            FailMode::Spread => ((n + 1) as f64 * self.fail_rate).floor() > (n as f64 * self.fail_rate).floor(),
            FailMode::Random => {
                // splitmix64 of the counter mixed with a per-process seed: cheap, no deps.
                let mut z = n.wrapping_add(seed()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 11) as f64 / (1u64 << 53) as f64) < self.fail_rate
            }
        }
    }
}

fn seed() -> u64 {
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fail_rate),
        "--fail-rate must be between 0.0 and 1.0, got {}",
        args.fail_rate
    );
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rt.worker_threads(n);
    }
    rt.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    let app = Arc::new(App {
        name_header: HeaderValue::from_str(&args.name)
            .map_err(|_| anyhow::anyhow!("--name must be a valid header value"))?,
        name: args.name,
        fail_rate: args.fail_rate,
        fail_mode: args.fail_mode,
        fail_after: args.fail_after,
        counter: AtomicU64::new(0),
    });
    println!("listening on {local}");
    if let Some(addr) = args.tcp_listen {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        println!("tcp echo listening on {}", tcp.local_addr()?);
        tokio::spawn(tcp_echo(tcp, args.tcp_greeting.clone()));
    }

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Generous, so that the proxy's limits are what protocol tests meet.
    builder.http2().max_header_list_size(1 << 20);
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        eprintln!("accept error: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let conn = builder.serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| handle(app.clone(), req)),
                );
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    println!("shutting down");
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("connections still open after 5s; exiting anyway");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// A plain body, or one followed by trailers. The latter is a stream of frames of
/// unknown length, so that HTTP/1.1 sends it chunked (trailers need that).
type EchoBody =
    Either<Full<Bytes>, StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>>;

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");

    if path == "/healthz" {
        return Ok(text(StatusCode::OK, "ok\n"));
    }

    // Stream the body, counting bytes, so large uploads cost no memory.
    let mut body_bytes: u64 = 0;
    let mut request_trailers = serde_json::Map::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_bytes += d.len() as u64;
                }
                if let Some(t) = f.trailers_ref() {
                    request_trailers.extend(t.iter().map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                        )
                    }));
                }
            }
            Err(e) => return Ok(text(StatusCode::BAD_REQUEST, &format!("body error: {e}\n"))),
        }
    }

    if let Some(ms) = query_param(query, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let status = if let Some(code) = path.strip_prefix("/status/") {
        match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
            Some(s) => s,
            None => return Ok(text(StatusCode::BAD_REQUEST, "bad status code\n")),
        }
    } else if app.should_fail() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };

    let request_id = parts.headers.get("x-request-id").cloned();
    let mut doc = serde_json::json!({
        "name": app.name,
        "method": parts.method.as_str(),
        "path": path,
        "query": query,
        "version": format!("{:?}", parts.version),
        "requestId": request_id.as_ref().and_then(|v| v.to_str().ok()),
        "bodyBytes": body_bytes,
        "status": status.as_u16(),
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "host": parts.headers.get("host").and_then(|v| v.to_str().ok()),
        "trailers": request_trailers,
    });
    let asked = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
    };
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc || query_param(query, "headers").is_some_and(|v| v == "1" || v == "true") {
        // A field sent more than once is listed once, its values joined by ", ", so
        // that tests see how many lines arrived.
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .keys()
            .map(|k| {
                let values: Vec<String> = parts
                    .headers
                    .get_all(k)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                (k.as_str().to_owned(), values.join(", ").into())
            })
            .collect();
        doc["headers"] = headers.into();
    }
    let mut body = serde_json::to_vec(&doc).expect("json");
    body.push(b'\n');
    if grpc {
        // One length-prefixed, uncompressed gRPC message.
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(&body);
        body = framed;
    }

    let body = Bytes::from(body);
    let with_trailers = grpc || query_param(query, "trailers").is_some_and(|v| v == "1" || v == "true");
    let body = if with_trailers {
        let mut trailers = HeaderMap::new();
        let code = asked("x-echo-grpc-status").unwrap_or(0);
        trailers.insert("grpc-status", HeaderValue::from(code));
        if let Some(n) = asked("x-echo-grpc-message-bytes") {
            trailers.insert("grpc-message", filler(n));
        }
        if let Some(n) = asked("x-echo-trailer-bytes") {
            trailers.insert("x-echo-big", filler(n));
        }
        trailers.insert("x-echo-name", app.name_header.clone());
        Either::Right(StreamBody::new(tokio_stream::iter(vec![
            Ok(Frame::data(body)),
            Ok(Frame::trailers(trailers)),
        ])))
    } else {
        Either::Left(Full::new(body))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if grpc {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    } else {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if with_trailers {
        // HTTP/1.1 sends only the trailers announced here.
        h.insert(
            "trailer",
            HeaderValue::from_static("grpc-status, grpc-message, x-echo-big, x-echo-name"),
        );
    }
    if let Some(n) = asked("x-echo-header-bytes") {
        h.insert("x-echo-big", filler(n));
    }
    if let Some(n) = asked("x-echo-header-count") {
        for i in 0..n.min(10_000) {
            if let Ok(name) = hyper::header::HeaderName::from_bytes(format!("x-echo-{i}").as_bytes()) {
                h.insert(name, HeaderValue::from_static("1"));
            }
        }
    }
    h.insert("x-echo-name", app.name_header.clone());
    if let Some(id) = request_id {
        h.insert("x-request-id", id);
    }
    Ok(resp)
}

/// Raw TCP echo: the greeting (if any), then every byte back until the client closes.
async fn tcp_echo(listener: TcpListener, greeting: Option<String>) {
    use tokio::io::AsyncWriteExt;
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let greeting = greeting.clone();
        tokio::spawn(async move {
            if let Some(g) = greeting {
                if stream.write_all(format!("{g}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}

/// A header value of `n` bytes (at most 1 MiB).
fn filler(n: usize) -> HeaderValue {
    HeaderValue::from_bytes(&vec![b'x'; n.min(1 << 20)]).unwrap_or(HeaderValue::from_static("x"))
}

fn text(status: StatusCode, s: &str) -> Response<EchoBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::copy_from_slice(s.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}
