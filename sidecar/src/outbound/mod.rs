//! The outbound proxy (`127.0.0.1:15001`, see `docs/reference.md`): this app → other
//! services, routed by the destination table the control plane streams.
//!
//! The app sends `Host: web` (or, as with `HTTP_PROXY`, an absolute-form
//! `http://web/...`). The request path is [`OutboundProxy::stack`], read top to bottom:
//! resolve the service and pick a route (RoutingPolicy: ordered matches, weighted
//! subsets) → record per-subset figures → retry within the route's policy and the
//! retry budget → pick an endpoint (power of two choices, outlier ejection) → route
//! and per-try timeouts (from the request sent in full to the response head) →
//! forward to that instance's inbound port over a pooled connection (HTTP/1.1, or
//! HTTP/2 for h2c callers such as gRPC).
//!
//! Connections redirected to the port by the Pod's iptables rules are read by
//! [`transparent`] (original destination, HTTP or not); traffic for no mesh service
//! goes to [`passthrough`] under `OUTRIDER_OUTBOUND_POLICY`.

pub mod balance;
pub mod budget;
mod connect;
mod endpoint;
pub mod figures;
pub mod forward;
pub mod passthrough;
pub mod retry;
pub mod route;
pub mod stats;
pub mod table;
pub mod timeout;
pub mod transparent;

use crate::proxy::access_log::{AccessLogLayer, Upstream};
use crate::proxy::body::{Progress, Watched};
use crate::proxy::conform::ConformLayer;
use crate::proxy::respond::GrpcFormLayer;
use crate::proxy::snapshot::LoadSnapshotLayer;
use crate::proxy::trace::TraceLayer;
use crate::proxy::{Call, ProxyBody};
use crate::state::SidecarState;
use balance::BalanceLayer;
use bytes::Bytes;
use endpoint::EndpointState;
use figures::FiguresLayer;
use forward::Forward;
use http::uri::PathAndQuery;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use passthrough::{OutboundPolicy, Passthrough};
use retry::RetryLayer;
use route::RouteLayer;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use table::{Destination, Endpoints, Retry};
use timeout::{AttemptTimer, TimeoutLayer};
use tower::{Service, ServiceBuilder};

/// Bodies up to this size are buffered so that a failed attempt can be replayed;
/// larger or streaming bodies get one attempt.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// A route without `timeout` still never hangs the caller once its request is sent
/// (Envoy's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// What an attempt sends: the caller's streamed body, or a buffered one to replay,
/// watched so that the timers start once it is sent and a client's failure is known.
pub type UpstreamBody<B = Incoming> = Watched<Either<B, Full<Bytes>>>;

/// Milliseconds since the proxy started: the time base of ejections and budgets.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Clock(Instant::now())
    }

    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A request the route layer has resolved: its destination, the endpoints it may go
/// to, its retry policy and its route timeout.
pub struct Routed<B = Incoming> {
    pub call: Call<B>,
    pub dest: Arc<Destination>,
    pub endpoints: Endpoints,
    pub retry: Retry,
    /// The route's `timeout`; it starts once the request has been sent in full, and a
    /// shorter `grpc-timeout` caps it (the retry layer reads that header).
    pub timeout: Duration,
}

/// One attempt at a routed request, before an endpoint is picked: the request
/// without an authority, and its path for the URI the balancer completes.
pub struct Attempt<B = Incoming> {
    pub req: Request<UpstreamBody<B>>,
    pub path: PathAndQuery,
    pub endpoints: Endpoints,
    /// The endpoint the previous attempt failed on, avoided when there is a choice.
    pub avoid: Option<Arc<EndpointState>>,
    pub timer: AttemptTimer,
    /// How the sending of `req`'s body goes.
    pub progress: Arc<Progress>,
    /// The caller's side of an upgrade, spliced once the instance answers `101`.
    pub on_client: Option<OnUpgrade>,
}

/// An attempt sent to one endpoint.
pub struct Dispatch<B = Incoming> {
    pub req: Request<UpstreamBody<B>>,
    pub timer: AttemptTimer,
    pub progress: Arc<Progress>,
    pub on_client: Option<OnUpgrade>,
}

/// How one attempt ended.
pub enum Outcome<RB = Incoming> {
    Answered(Response<RB>),
    ServerError(Response<RB>),
    Timeout,
    ConnectFailure(hyper_util::client::legacy::Error),
    Reset(hyper_util::client::legacy::Error),
    /// The caller's own body failed (it aborted, or sent a malformed chunk): no
    /// fault of the instance, so neither a success nor a failure of it, never retried.
    ClientFault(hyper_util::client::legacy::Error),
}

impl<RB> Outcome<RB> {
    fn retriable(&self, r: &Retry) -> bool {
        match self {
            Outcome::Answered(_) | Outcome::ClientFault(_) => false,
            // A per-try timeout is a gateway error, as in Envoy's `5xx`.
            Outcome::ServerError(_) | Outcome::Timeout => r.on_5xx,
            Outcome::ConnectFailure(_) => r.on_connect_failure,
            Outcome::Reset(_) => r.on_reset,
        }
    }
}

/// The last attempt of a request and the endpoint it went to.
pub struct Tried<RB = Incoming> {
    pub outcome: Outcome<RB>,
    pub endpoint: Arc<EndpointState>,
}

/// Why a routed request was not sent anywhere.
#[derive(Debug)]
pub enum Refused {
    /// Every endpoint of the chosen set is gone.
    NoInstance,
    /// The caller's body failed (aborted, malformed), while being buffered for replay
    /// or streamed to an instance: the caller gets `400` and no instance is blamed.
    UnreadableBody(String),
}

pub struct OutboundProxy {
    state: Arc<SidecarState>,
    /// This sidecar's namespace: what a qualified name (`web.<ns>.svc`) must name.
    namespace: Arc<str>,
    forward: Forward,
    passthrough: Arc<Passthrough>,
    clock: Clock,
}

impl OutboundProxy {
    /// An outbound proxy in namespace `default`.
    pub fn new(state: Arc<SidecarState>) -> Self {
        Self::in_namespace(state, "default")
    }

    pub fn in_namespace(state: Arc<SidecarState>, namespace: &str) -> Self {
        Self {
            forward: Forward::new(&state),
            passthrough: Arc::new(Passthrough::new(Arc::clone(&state), OutboundPolicy::default())),
            state,
            namespace: namespace.into(),
            clock: Clock::new(),
        }
    }

    /// With `policy` for traffic to no mesh service (`OUTRIDER_OUTBOUND_POLICY`).
    pub fn with_policy(mut self, policy: OutboundPolicy) -> Self {
        self.passthrough = Arc::new(Passthrough::new(Arc::clone(&self.state), policy));
        self
    }

    /// The request path, outermost first. Every request gets an answer: local errors
    /// come back up through the same layers as the instances' answers.
    pub fn stack(
        &self,
    ) -> impl Service<Call, Response = Response<ProxyBody>, Error = Infallible, Future: Send> + Clone + Send + Sync + 'static
    {
        ServiceBuilder::new()
            // gRPC callers get the proxy's own answers as grpc-status; the layers
            // below still see (and log) the HTTP status.
            .layer(GrpcFormLayer)
            // One load of the applied snapshot serves every layer below.
            .layer(LoadSnapshotLayer::new(Arc::clone(&self.state)))
            .layer(TraceLayer::new("outbound"))
            .layer(AccessLogLayer::new(
                Arc::clone(&self.state),
                "outbound",
                Upstream::TargetHost,
            ))
            // CONNECT, Host rules, h2c upgrades, Via.
            .layer(ConformLayer)
            .layer(RouteLayer::new(
                Arc::clone(&self.state),
                self.namespace.clone(),
                Arc::clone(&self.passthrough),
            ))
            .layer(FiguresLayer)
            .layer(RetryLayer::new(self.clock))
            .layer(BalanceLayer::new(self.clock, Arc::clone(&self.state)))
            .layer(TimeoutLayer)
            .service(self.forward.clone())
    }
}

/// Serves the outbound proxy until `shutdown` resolves, then drains like the inbound.
/// Redirected connections are told apart from explicit ones on accept.
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<OutboundProxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        proxy.passthrough.serving_on(addr);
    }
    let accept = transparent::Transparent::new(Arc::clone(&proxy.passthrough));
    crate::proxy::serve(listener, proxy.stack(), "outbound", accept, shutdown).await
}

#[cfg(test)]
mod tests;

/// Hand-built destinations for the tests of single layers.
#[cfg(test)]
pub(crate) mod testing {
    use super::stats::SubsetStats;
    use super::table::Destination;
    use super::timeout::AttemptTimer;
    use super::{Attempt, EndpointState, Routed, DEFAULT_TIMEOUT};
    use crate::proxy::body::Watched;
    use crate::proxy::Call;
    use http::uri::PathAndQuery;
    use http::Request;
    use hyper::body::Body;
    use std::sync::Arc;
    use std::time::Duration;

    /// A destination `web` with `n` endpoints in subset `v1`, all in `all`.
    pub fn destination(n: u16) -> Arc<Destination> {
        let stats = Arc::new(SubsetStats::new("web", "v1"));
        let all: Vec<Arc<EndpointState>> = (0..n)
            .map(|i| {
                let authority = format!("127.0.0.1:{}", 10_000 + i).parse().unwrap();
                Arc::new(EndpointState::new(
                    authority,
                    "v1",
                    &format!("web-{i}"),
                    Arc::clone(&stats),
                ))
            })
            .collect();
        Arc::new(Destination {
            name: "web".into(),
            routes: Vec::new(),
            all: all.clone().into(),
            subsets: [("v1".into(), all.into())].into_iter().collect(),
            budget: Default::default(),
            policy: None,
            last_used: Default::default(),
            namespaces: Default::default(),
        })
    }

    pub fn routed<B>(dest: &Arc<Destination>, retry: super::Retry, body: B) -> Routed<B> {
        Routed {
            call: Call::new(
                Request::get("http://web/x").body(body).unwrap(),
                ([127, 0, 0, 1], 9).into(),
            ),
            dest: Arc::clone(dest),
            endpoints: Arc::clone(&dest.all),
            retry,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn attempt<B: Body<Data = bytes::Bytes, Error = std::convert::Infallible>>(
        dest: &Destination,
        body: B,
        per_try: Duration,
    ) -> Attempt<B> {
        let (body, progress) = Watched::new(http_body_util::Either::Left(body));
        Attempt {
            req: Request::new(body),
            path: PathAndQuery::from_static("/x"),
            endpoints: Arc::clone(&dest.all),
            avoid: None,
            timer: AttemptTimer::first(Some(per_try), DEFAULT_TIMEOUT),
            progress,
            on_client: None,
        }
    }
}
