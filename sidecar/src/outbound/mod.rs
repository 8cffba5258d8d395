//! The outbound proxy (DESIGN §2, `127.0.0.1:15001`): this app → other services.
//!
//! The app sends `Host: web` (or, as with `HTTP_PROXY`, an absolute-form
//! `http://web/...`). A request reads top to bottom in [`OutboundProxy::handle`]:
//! resolve the service in the destination table the control plane streams → pick a
//! route (RoutingPolicy: ordered matches, weighted subsets) → pick an endpoint (power
//! of two choices, outlier ejection) → forward to that instance's inbound port over
//! a pooled connection (HTTP/1.1, or HTTP/2 for h2c callers such as gRPC) → retry
//! within the route's policy and the retry budget → record per-subset figures.

pub mod balance;
pub mod budget;
pub mod stats;
pub mod table;

use crate::inbound::upgrade;
use crate::inbound::{remove_hop_by_hop, text_response, ErrorChain, ProxyBody, CONNECT_TIMEOUT};
use crate::state::SidecarState;
use balance::EndpointState;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use table::{Destination, Retry};
use tracing::{debug, warn};

/// Bodies up to this size are buffered so that a failed attempt can be replayed;
/// larger or streaming bodies get one attempt.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// A route without `timeout` still never hangs the caller (Envoy's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type UpstreamBody = Either<Incoming, Full<Bytes>>;

pub struct OutboundProxy {
    state: Arc<SidecarState>,
    http1: Client<HttpConnector, UpstreamBody>,
    http2: Client<HttpConnector, UpstreamBody>,
    clock: Instant,
}

/// How one attempt ended.
enum Outcome {
    Answered(Response<Incoming>),
    ServerError(Response<Incoming>),
    Timeout,
    ConnectFailure(hyper_util::client::legacy::Error),
    Reset(hyper_util::client::legacy::Error),
}

impl Outcome {
    fn retriable(&self, r: &Retry) -> bool {
        match self {
            Outcome::Answered(_) => false,
            // A per-try timeout is a gateway error, as in Envoy's `5xx`.
            Outcome::ServerError(_) | Outcome::Timeout => r.on_5xx,
            Outcome::ConnectFailure(_) => r.on_connect_failure,
            Outcome::Reset(_) => r.on_reset,
        }
    }
}

impl OutboundProxy {
    pub fn new(state: Arc<SidecarState>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Self {
            state,
            http1,
            http2,
            clock: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Handles one request from the local app. Never fails: errors become responses.
    /// Writes an access record (`direction: outbound`) when the logging policy asks.
    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let access = crate::logship::access::Pending::begin_direction(
            self.state.applied.load().as_deref(),
            &mut req,
            std::net::IpAddr::from([127, 0, 0, 1]),
            crate::inbound::new_request_id,
            "outbound",
        );
        let host = access.as_ref().and_then(|_| target_host(&req).map(Arc::<str>::from));
        let response = self.route(req, started).await;
        if let Some(access) = access {
            access.finish(
                &self.state,
                response.status().as_u16(),
                response.headers(),
                host.as_ref(),
                started,
            );
        }
        response
    }

    async fn route(&self, mut req: Request<Incoming>, started: Instant) -> Response<ProxyBody> {
        let dest = {
            let Some(host) = target_host(&req) else {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    "the outbound proxy routes by Host: send `Host: <service>` or an absolute-form URI\n",
                );
            };
            let applied = self.state.applied.load();
            match applied.as_ref().and_then(|a| a.destinations.resolve(host)) {
                Some(d) => Arc::clone(d),
                None => {
                    return text_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("unknown service {host:?}: not in the mesh (no healthy instance has registered it)\n"),
                    )
                }
            }
        };
        let route = dest.route(req.uri().path(), req.headers());
        let retry = route.and_then(|r| r.retry).unwrap_or(Retry::DEFAULT);
        let timeout = route.and_then(|r| r.timeout).unwrap_or(DEFAULT_TIMEOUT);
        let endpoints = match choose_endpoints(&dest, route) {
            Ok(e) => e,
            Err(why) => return text_response(StatusCode::SERVICE_UNAVAILABLE, why),
        };

        if upgrade::is_upgrade(&req) {
            let on_client = hyper::upgrade::on(&mut req);
            return self.upgrade(req, on_client, &dest, endpoints, started).await;
        }

        let http2 = req.version() == Version::HTTP_2;
        let (mut parts, body) = req.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        if http2 {
            parts.headers.remove(header::HOST);
        } else if !parts.headers.contains_key(header::HOST) {
            // Absolute-form without Host (HTTP/1.0 clients): the app still sees its name.
            if let Ok(v) = HeaderValue::from_str(&dest.name) {
                parts.headers.insert(header::HOST, v);
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or(PathAndQuery::from_static("/"));

        // A replayable body makes retries possible; everything else gets one attempt.
        let mut streamed = None;
        let replay = if body.is_end_stream() {
            Some(Bytes::new())
        } else if body.size_hint().upper().is_some_and(|n| n <= MAX_REPLAY_BODY) {
            match body.collect().await {
                Ok(b) => Some(b.to_bytes()),
                Err(e) => {
                    return text_response(
                        StatusCode::BAD_REQUEST,
                        format!("could not read the request body: {e}\n"),
                    );
                }
            }
        } else {
            streamed = Some(body);
            None
        };

        dest.budget.deposit();
        let deadline = started + timeout;
        let mut tried: Option<Arc<EndpointState>> = None;
        let mut attempt = 0u32;
        let (outcome, ep) = loop {
            let now_ms = self.now_ms();
            let Some(ep) = balance::pick(endpoints, now_ms, tried.as_deref(), &mut rand::rng()).cloned() else {
                return text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no healthy instance of {}\n", dest.name),
                );
            };
            let body = match (&replay, streamed.take()) {
                (Some(b), _) => Either::Right(Full::new(b.clone())),
                (None, Some(s)) => Either::Left(s),
                // Unreachable: a streamed body is never retried.
                (None, None) => Either::Right(Full::new(Bytes::new())),
            };
            let upstream = build_request(&parts.method, &path, &parts.headers, &ep, http2, body);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let per_try = retry.per_try_timeout.map_or(remaining, |t| t.min(remaining));
            let client = if http2 { &self.http2 } else { &self.http1 };
            let outcome = {
                let _in_flight = ep.start();
                match tokio::time::timeout(per_try, client.request(upstream)).await {
                    Err(_) => Outcome::Timeout,
                    Ok(Err(e)) if e.is_connect() => Outcome::ConnectFailure(e),
                    Ok(Err(e)) => Outcome::Reset(e),
                    Ok(Ok(r)) if r.status().is_server_error() => Outcome::ServerError(r),
                    Ok(Ok(r)) => Outcome::Answered(r),
                }
            };
            match &outcome {
                Outcome::Answered(_) => ep.record_success(self.now_ms()),
                _ => {
                    if ep.record_failure(self.now_ms()) {
                        warn!(service = %dest.name, pod = %ep.pod, "ejecting an instance after consecutive failures");
                    }
                }
            }
            let can_retry = outcome.retriable(&retry)
                && attempt < retry.attempts
                && replay.is_some()
                && Instant::now() < deadline
                && dest.budget.try_withdraw(self.now_ms());
            if !can_retry {
                break (outcome, ep);
            }
            debug!(service = %dest.name, pod = %ep.pod, attempt, "retrying");
            attempt += 1;
            tried = Some(ep);
        };

        let response = match outcome {
            Outcome::Answered(r) | Outcome::ServerError(r) => {
                let (mut parts, body) = r.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Outcome::Timeout => text_response(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{} (pod {}) did not answer in time\n", dest.name, ep.pod),
            ),
            Outcome::ConnectFailure(e) => {
                debug!(error = %ErrorChain(&e), "connect failed");
                text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no instance of {} accepted the connection\n", dest.name),
                )
            }
            Outcome::Reset(e) => {
                debug!(error = %ErrorChain(&e), "upstream failed");
                text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("{} (pod {}) closed the connection: {e}\n", dest.name, ep.pod),
                )
            }
        };
        ep.stats.record(response.status().is_server_error(), started.elapsed());
        response
    }

    /// A WebSocket (or any HTTP/1.1 `Upgrade`): one attempt; on `101` the two
    /// upgraded connections are spliced together.
    async fn upgrade(
        &self,
        req: Request<Incoming>,
        on_client: hyper::upgrade::OnUpgrade,
        dest: &Destination,
        endpoints: &[Arc<EndpointState>],
        started: Instant,
    ) -> Response<ProxyBody> {
        let Some(ep) = balance::pick(endpoints, self.now_ms(), None, &mut rand::rng()).cloned() else {
            return text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no healthy instance of {}\n", dest.name),
            );
        };
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or(PathAndQuery::from_static("/"));
        let mut upstream = build_request(&parts.method, &path, &parts.headers, &ep, false, Either::Left(body));
        // Keep exactly the hop-by-hop headers an upgrade needs.
        remove_hop_by_hop(upstream.headers_mut());
        upgrade::restore_upgrade_headers(upstream.headers_mut(), parts.headers.get(header::UPGRADE).cloned());
        let mut response = match tokio::time::timeout(DEFAULT_TIMEOUT, self.http1.request(upstream)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                ep.stats.record(true, started.elapsed());
                return text_response(StatusCode::BAD_GATEWAY, format!("{}: {}\n", dest.name, ErrorChain(&e)));
            }
            Err(_) => {
                ep.stats.record(true, started.elapsed());
                return text_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("{} did not answer in time\n", dest.name),
                );
            }
        };
        ep.stats.record(response.status().is_server_error(), started.elapsed());
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            upgrade::splice(on_client, hyper::upgrade::on(&mut response));
        }
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, Either::Left(body))
    }
}

/// The service a request is for: the authority of an absolute-form (or HTTP/2)
/// URI, else the `Host` header.
fn target_host(req: &Request<Incoming>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str()).filter(|h| !h.is_empty());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::trim)
        .filter(|h| !h.is_empty())
}

/// The endpoints a request may go to: the route's weighted subset (falling back to
/// the route's other subsets when that one has no healthy instance), or every
/// healthy instance without a policy or when no route matches.
fn choose_endpoints<'d>(
    dest: &'d Destination,
    route: Option<&table::CompiledRoute>,
) -> Result<&'d [Arc<EndpointState>], String> {
    let Some(route) = route else {
        return if dest.all.is_empty() {
            Err(format!("no healthy instance of {}\n", dest.name))
        } else {
            Ok(&dest.all)
        };
    };
    let roll = rand::random_range(0..route.total_weight().max(1));
    let chosen = route.subset_for(roll);
    let has = |s: &str| dest.subsets.get(s).filter(|v| !v.is_empty());
    if let Some(eps) = chosen.and_then(has) {
        return Ok(eps);
    }
    route.subsets().find_map(has).map(Vec::as_slice).ok_or_else(|| {
        format!(
            "no healthy instance of {} in subsets {:?} (route {:?})\n",
            dest.name,
            route.subsets().collect::<Vec<_>>(),
            &*route.name
        )
    })
}

fn build_request(
    method: &Method,
    path: &PathAndQuery,
    headers: &HeaderMap,
    ep: &EndpointState,
    http2: bool,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(ep.authority.clone());
    uri.path_and_query = Some(path.clone());
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    // Unreachable fallback: scheme, authority and path are all set.
    *req.uri_mut() = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("http://127.0.0.1/"));
    *req.version_mut() = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers.clone();
    req
}

/// Serves the outbound proxy until `shutdown` resolves, then drains like the inbound.
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<OutboundProxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::inbound::serve_proxy(listener, proxy, "outbound", shutdown).await
}

impl crate::inbound::ProxyHandler for OutboundProxy {
    fn serve_request(
        &self,
        req: Request<Incoming>,
        _peer: std::net::SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        self.handle(req)
    }
}

#[cfg(test)]
mod tests;
