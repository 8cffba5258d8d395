//! The HTTP front of both proxies on any bytes a client can send: hyper's server
//! with the sidecar's own settings (`proxy::server_builder`) over an in-memory
//! stream, in front of the real `InboundProxy::stack()` or `OutboundProxy::stack()`
//! (conformance, rate limit, routing, retries, the gRPC form of local answers).
//! Upstream is a small in-process app on loopback, so requests that pass go all the
//! way through and back. Nothing may panic and every connection must end.
//!
//! Input: the first byte's low bit picks the proxy (0 inbound, 1 outbound); the rest
//! is what the client writes before it half-closes.
#![no_main]

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use libfuzzer_sys::fuzz_target;
use outrider_proto::v1::{DestinationService, DestinationTable, Endpoint, Snapshot};
use outrider_sidecar::inbound::InboundProxy;
use outrider_sidecar::outbound::passthrough::OutboundPolicy;
use outrider_sidecar::outbound::OutboundProxy;
use outrider_sidecar::proxy::{server_builder, Call};
use outrider_sidecar::state::{SidecarState, Source};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Service, ServiceExt};

/// Generous: every exchange here is in memory or on loopback and takes
/// milliseconds; a connection still open after this is a hang worth reporting.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(20);

const RATE_LIMIT: &str = r#"{"rules":[
  {"name":"per-client","match":{"pathPrefix":"/limited"},"key":"header:x-client","requestsPerSecond":1,"burst":2},
  {"name":"all","requestsPerSecond":1000000,"burst":1000000}]}"#;

const ROUTING: &str = r#"{"routes":[
  {"name":"canary","match":{"pathPrefix":"/","headers":{"x-canary":"always"}},"backends":[{"subset":"v2","weight":100}]},
  {"name":"default","backends":[{"subset":"v1","weight":90},{"subset":"v2","weight":10}],
   "timeout":"5s","retries":{"attempts":1,"perTryTimeout":"2s","on":["5xx","connect-failure"]}}]}"#;

struct World {
    rt: tokio::runtime::Runtime,
    inbound: InboundProxy,
    outbound: OutboundProxy,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app = rt.block_on(app());
        let state = Arc::new(SidecarState::new());
        state
            .apply(
                &Snapshot {
                    revision: 1,
                    service: "fuzz".into(),
                    rate_limit: RATE_LIMIT.into(),
                    ..Default::default()
                },
                Source::Persisted,
            )
            .unwrap();
        let endpoint = |subset: &str| Endpoint {
            address: app.ip().to_string(),
            port: u32::from(app.port()),
            subset: subset.into(),
            pod: format!("web-{subset}"),
            ..Default::default()
        };
        state
            .load_destinations(&DestinationTable {
                services: vec![DestinationService {
                    service: "web".into(),
                    endpoints: vec![endpoint("v1"), endpoint("v2")],
                    routing: ROUTING.into(),
                    routing_revision: 1,
                }],
                routing_revision: 1,
            })
            .unwrap();
        // registry-only: a fuzzed Host for no mesh service is refused here instead of
        // being resolved and dialled (no network beyond the in-process upstream).
        let (inbound, outbound) = rt.block_on(async {
            (
                InboundProxy::new(app, Arc::clone(&state)),
                OutboundProxy::new(state).with_policy(OutboundPolicy::RegistryOnly),
            )
        });
        World { rt, inbound, outbound }
    })
}

/// The upstream: HTTP/1.1 and h2c, answers 200 with the request body once it has
/// read all of it (or 400 if the body broke).
async fn app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service_fn(|req: Request<Incoming>| async move {
                let status = match req.into_body().collect().await {
                    Ok(body) => return Ok::<_, Infallible>(Response::new(Full::new(body.to_bytes()))),
                    Err(_) => 400,
                };
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok(response)
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Serves one connection carrying `input` through `stack`, as the accept loop does.
async fn exchange<S>(stack: S, input: &[u8])
where
    S: Service<Call, Response = Response<outrider_sidecar::proxy::ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let peer: SocketAddr = "10.1.2.3:40000".parse().unwrap();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let service = service_fn(move |req: Request<Incoming>| {
        let stack = stack.clone();
        async move { stack.oneshot(Call::new(req, peer)).await }
    });
    let connection = tokio::spawn(async move {
        let _ = server_builder()
            .serve_connection_with_upgrades(TokioIo::new(server), service)
            .await;
    });
    // Write and read at once: a server that answers before reading everything must
    // not leave the client stuck on a full pipe.
    let (mut reader, mut writer) = tokio::io::split(&mut client);
    let write = async {
        let _ = writer.write_all(input).await;
        let _ = writer.shutdown().await;
    };
    let read = async {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink).await;
    };
    let finished = tokio::time::timeout(CONNECTION_DEADLINE, async {
        tokio::join!(write, read);
        let _ = connection.await;
    })
    .await;
    assert!(
        finished.is_ok(),
        "the connection was still open after {CONNECTION_DEADLINE:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let w = world();
    if selector & 1 == 0 {
        w.rt.block_on(exchange(w.inbound.stack(), input));
    } else {
        w.rt.block_on(exchange(w.outbound.stack(), input));
    }
});
