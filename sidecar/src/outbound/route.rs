//! The route layer: resolves the service a request names (Host or absolute-form)
//! in the destination table, picks its route and the endpoint set by the route's
//! weights, and sets the request's retry policy and timeout.
//!
//! A name this sidecar does not hold yet is discovered on demand: the request asks
//! the agent to watch it and waits (at most [`DISCOVERY_WAIT`]) for the control
//! plane's answer, so the first call to a service succeeds like every later one.
//!
//! On a redirected connection a host that names no service still reaches one when
//! the connection's original destination is a mesh instance's address. A request
//! for no mesh service at all goes to [`Passthrough`] (`OUTRIDER_OUTBOUND_POLICY`).

use super::passthrough::Passthrough;
use super::table::{CompiledRoute, Destination, Endpoints, Retry};
use super::{Routed, DEFAULT_TIMEOUT};
use crate::proxy::headers::target_host;
use crate::proxy::respond::local;
use crate::proxy::{upgrade, Call, Local, OriginalDst, ProxyBody};
use crate::state::SidecarState;
use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::Body;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// How long a first call to a name waits for the control plane's answer.
pub const DISCOVERY_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct RouteLayer {
    state: Arc<SidecarState>,
    namespace: Arc<str>,
    passthrough: Arc<Passthrough>,
}

impl RouteLayer {
    /// Routes for a sidecar in `namespace` (what an unqualified name means); requests
    /// for no mesh service go to `passthrough`.
    pub fn new(state: Arc<SidecarState>, namespace: Arc<str>, passthrough: Arc<Passthrough>) -> Self {
        Self {
            state,
            namespace,
            passthrough,
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Route {
            inner,
            state: Arc::clone(&self.state),
            namespace: Arc::clone(&self.namespace),
            passthrough: Arc::clone(&self.passthrough),
        }
    }
}

#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    state: Arc<SidecarState>,
    namespace: Arc<str>,
    passthrough: Arc<Passthrough>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Call<B>> for Route<S>
where
    S: Service<Routed<B>, Response = Response<ProxyBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = RouteFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<B>) -> Self::Future {
        match route(call, &self.namespace) {
            Routing::Routed(routed) => RouteFuture::Routed {
                inner: self.inner.call(routed),
            },
            Routing::Refused(status, body) => RouteFuture::Local {
                response: Some(local(status, body, Local::Refused)),
            },
            Routing::Unknown(call, name) if self.state.is_connected() => RouteFuture::Discover {
                inner: Box::pin(discover(
                    Arc::clone(&self.state),
                    Arc::clone(&self.namespace),
                    Arc::clone(&self.passthrough),
                    self.inner.clone(),
                    call,
                    name,
                )),
            },
            Routing::Unknown(call, _) | Routing::NotMesh(call) => {
                let passing = self.passthrough.http(call);
                RouteFuture::Discover {
                    inner: Box::pin(async move { Ok(passing.await) }),
                }
            }
        }
    }
}

enum Routing<B> {
    Routed(Routed<B>),
    /// The status and body of the proxy's refusal.
    Refused(StatusCode, Bytes),
    /// A service name this sidecar holds nothing for yet.
    Unknown(Call<B>, String),
    /// For no mesh service: the pass-through's.
    NotMesh(Call<B>),
}

/// Asks for `name`, waits for the answer, then routes the request as any other.
async fn discover<S, B>(
    state: Arc<SidecarState>,
    namespace: Arc<str>,
    passthrough: Arc<Passthrough>,
    inner: S,
    mut call: Call<B>,
    name: String,
) -> Result<Response<ProxyBody>, S::Error>
where
    S: Service<Routed<B>, Response = Response<ProxyBody>>,
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    state.discovery.ask(&name);
    let mut changes = state.subscribe_destinations();
    let held = |state: &SidecarState| {
        state
            .applied
            .load()
            .as_ref()
            .is_some_and(|a| a.destinations.holds(&name))
    };
    let _ = tokio::time::timeout(DISCOVERY_WAIT, async {
        while !held(&state) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    call.applied = state.applied.load_full();
    match route(call, &namespace) {
        Routing::Routed(routed) => inner.oneshot(routed).await,
        Routing::Refused(status, body) => Ok(local(status, body, Local::Refused)),
        Routing::Unknown(call, _) | Routing::NotMesh(call) => Ok(passthrough.http(call).await),
    }
}

fn route<B>(call: Call<B>, namespace: &str) -> Routing<B> {
    let original = call.req.extensions().get::<OriginalDst>().map(|d| d.0);
    let host = target_host(&call.req);
    if host.is_none() && original.is_none() {
        return Routing::Refused(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"the outbound proxy routes by Host: send `Host: <service>` or an absolute-form URI\n"),
        );
    }
    let held = call.applied.as_ref().map(|a| &a.destinations);
    let found = held.and_then(|h| {
        host.and_then(|host| h.resolve(host, namespace))
            // A redirected connection to a mesh instance's address is a call to its
            // service, whatever the Host says.
            .or_else(|| original.and_then(|dst| h.at_address(dst.ip(), Some(dst.port()))))
    });
    let Some(dest) = found else {
        let name = host.and_then(super::table::lookup_name);
        let answered = name.as_ref().and_then(|n| held.and_then(|h| h.held(n)));
        if let Some(d) = answered {
            // A name the mesh does not know stays held while the app keeps asking.
            d.touch();
        }
        return match name {
            Some(name) if answered.is_none() => {
                let name = name.to_string();
                Routing::Unknown(call, name)
            }
            _ => Routing::NotMesh(call),
        };
    };
    let dest = Arc::clone(dest);
    dest.touch();
    tracing::Span::current().record("service", &*dest.name);
    let route = dest.route(call.req.uri().path(), call.req.headers());
    let (retry, timeout) = if upgrade::is_upgrade(&call.req) {
        // An upgrade is one attempt: its body is the tunnel, never replayable.
        (
            Retry {
                attempts: 0,
                per_try_timeout: None,
                ..Retry::DEFAULT
            },
            DEFAULT_TIMEOUT,
        )
    } else {
        (
            route.and_then(|r| r.retry).unwrap_or(Retry::DEFAULT),
            route.and_then(|r| r.timeout).unwrap_or(DEFAULT_TIMEOUT),
        )
    };
    let endpoints = match choose_endpoints(&dest, route) {
        Ok(e) => e,
        Err(why) => return Routing::Refused(StatusCode::SERVICE_UNAVAILABLE, Bytes::from(why)),
    };
    Routing::Routed(Routed {
        call,
        dest,
        endpoints,
        retry,
        timeout,
    })
}

/// The endpoints a request may go to: the route's weighted subset (falling back to
/// the route's other subsets when that one has no healthy instance), or every
/// healthy instance without a policy or when no route matches.
fn choose_endpoints(dest: &Destination, route: Option<&CompiledRoute>) -> Result<Endpoints, String> {
    let Some(route) = route else {
        return if dest.all.is_empty() {
            Err(format!("no healthy instance of {}\n", dest.name))
        } else {
            Ok(Arc::clone(&dest.all))
        };
    };
    let roll = rand::random_range(0..route.total_weight().max(1));
    let chosen = route.subset_for(roll);
    let has = |s: &str| dest.subsets.get(s).filter(|v| !v.is_empty());
    if let Some(eps) = chosen.and_then(has) {
        return Ok(Arc::clone(eps));
    }
    route.subsets().find_map(has).map(Arc::clone).ok_or_else(|| {
        format!(
            "no healthy instance of {} in subsets {:?} (route {:?})\n",
            dest.name,
            route.subsets().collect::<Vec<_>>(),
            &*route.name
        )
    })
}

pin_project! {
    #[project = Projected]
    pub enum RouteFuture<F, E> {
        Local { response: Option<Response<ProxyBody>> },
        Routed { #[pin] inner: F },
        // Only a first call to a name takes this boxed path.
        Discover { inner: BoxFuture<Result<Response<ProxyBody>, E>> },
    }
}

impl<F, E> Future for RouteFuture<F, E>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Local { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: a caller bug, answered without panicking.
                None => Poll::Pending,
            },
            Projected::Routed { inner } => inner.poll(cx),
            Projected::Discover { inner } => inner.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::table::tests::table;
    use crate::state::{SidecarState, Source};
    use http::Request;
    use http_body_util::{Either, Empty, Full};
    use outrider_proto::v1::Snapshot;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tower::{service_fn, ServiceExt};

    /// Routes `req` with the test table applied; the inner service answers 200 and
    /// remembers which subset each request was routed to.
    async fn route_one(req: Request<Empty<Bytes>>, routing: &str) -> (StatusCode, Vec<Box<str>>) {
        let state = Arc::new(SidecarState::new());
        let snapshot = Snapshot {
            revision: 1,
            nonce: "n".into(),
            service: "client".into(),
            service_share: 1.0,
            ..Default::default()
        };
        state.apply(&snapshot, Source::ControlPlane).unwrap();
        state.load_destinations(&table(routing)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let inner = {
            let seen = Arc::clone(&seen);
            service_fn(move |r: Routed<Empty<Bytes>>| {
                seen.lock().unwrap().push(r.endpoints[0].subset.clone());
                async { Ok::<_, Infallible>(Response::new(Either::Right(Full::new(Bytes::new())))) }
            })
        };
        let mut call = Call::new(req, ([127, 0, 0, 1], 9).into());
        call.applied = state.applied.load_full();
        let passthrough = Arc::new(Passthrough::new(
            Arc::clone(&state),
            crate::outbound::passthrough::OutboundPolicy::RegistryOnly,
        ));
        let response = RouteLayer::new(Arc::clone(&state), "default".into(), passthrough)
            .layer(inner)
            .oneshot(call)
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        (response.status(), seen)
    }

    #[tokio::test]
    async fn a_header_route_pins_its_subset_and_unknown_hosts_are_answered_here() {
        let routing = r#"{"routes":[
            {"name":"beta","match":{"headers":{"x-canary":"always"}},"backends":[{"subset":"v2","weight":100}]}]}"#;
        let pinned = Request::get("/").header("host", "web").header("x-canary", "always");
        let (status, seen) = route_one(pinned.body(Empty::new()).unwrap(), routing).await;
        assert_eq!((status, seen), (StatusCode::OK, vec!["v2".into()]));

        // Not connected, so not looked up: registry-only refuses it at once.
        let unknown = Request::get("/").header("host", "nope").body(Empty::new()).unwrap();
        let (status, seen) = route_one(unknown, routing).await;
        assert_eq!((status, seen.len()), (StatusCode::BAD_GATEWAY, 0));

        let (status, _) = route_one(Request::get("/").body(Empty::new()).unwrap(), routing).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
