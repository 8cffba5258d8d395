//! The access-log layer: begins a record before the request goes down the stack
//! (when the logging policy asks for it) and finishes it from whatever response comes
//! back up — the upstream's, an upgrade's `101` or a local error alike.

use super::respond::local_reason;
use super::{headers, Call};
use crate::logship::access::Pending;
use crate::state::SidecarState;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

/// What a record's `upstream` field names.
#[derive(Clone)]
pub enum Upstream {
    /// A fixed upstream (the app's address), named only when the request reached it.
    Fixed(Arc<str>),
    /// The host the request is for (the outbound proxy's destination).
    TargetHost,
}

#[derive(Clone)]
pub struct AccessLogLayer {
    state: Arc<SidecarState>,
    direction: &'static str,
    upstream: Upstream,
}

impl AccessLogLayer {
    /// Records for requests in `direction` (`inbound`, `outbound`).
    pub fn new(state: Arc<SidecarState>, direction: &'static str, upstream: Upstream) -> Self {
        Self {
            state,
            direction,
            upstream,
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    layer: AccessLogLayer,
    inner: S,
}

impl<S, B, RB> Service<Call<B>> for AccessLog<S>
where
    S: Service<Call<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call<B>) -> Self::Future {
        // `None` (no allocation) unless the policy asks for access logs.
        let pending = Pending::begin_direction(
            call.applied.as_deref(),
            &mut call.req,
            call.peer.ip(),
            headers::new_request_id,
            self.layer.direction,
        );
        let record = pending.map(|pending| {
            let upstream = match &self.layer.upstream {
                Upstream::Fixed(name) => Some(Arc::clone(name)),
                Upstream::TargetHost => headers::target_host(&call.req).map(Arc::<str>::from),
            };
            Record {
                pending,
                upstream,
                state: Arc::clone(&self.layer.state),
                started: call.started,
                only_if_reached: matches!(self.layer.upstream, Upstream::Fixed(_)),
            }
        });
        AccessLogFuture {
            inner: self.inner.call(call),
            record,
        }
    }
}

struct Record {
    pending: Pending,
    upstream: Option<Arc<str>>,
    state: Arc<SidecarState>,
    started: Instant,
    only_if_reached: bool,
}

pin_project! {
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, RB, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Some(record), Ok(response)) = (this.record.take(), &result) {
            let reached = local_reason(response).is_none_or(|l| l.reached_upstream());
            let upstream = record.upstream.as_ref().filter(|_| reached || !record.only_if_reached);
            let decision = response.extensions().get::<crate::authz::AuthzDecision>();
            record.pending.with_authz(decision).finish(
                &record.state,
                response.status().as_u16(),
                response.headers(),
                upstream,
                record.started,
            );
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::respond::local;
    use crate::proxy::{Local, ProxyBody};
    use crate::state::Source;
    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::{Either, Empty, Full};
    use outrider_proto::v1::Snapshot;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    fn logging_state() -> Arc<SidecarState> {
        let state = SidecarState::new();
        let snapshot = Snapshot {
            revision: 1,
            service: "web".into(),
            service_share: 1.0,
            logging: r#"{"accessLog":{"enabled":true},"sink":{"type":"stdout"}}"#.into(),
            ..Default::default()
        };
        state.apply(&snapshot, Source::ControlPlane).unwrap();
        Arc::new(state)
    }

    #[tokio::test]
    async fn every_exit_is_recorded_including_upgrades_and_local_errors() {
        let state = logging_state();
        let mut records = state.logs.take_access_receiver().unwrap();
        let layer = AccessLogLayer::new(
            Arc::clone(&state),
            "inbound",
            Upstream::Fixed(Arc::from("127.0.0.1:8080")),
        );
        // The inner service answers by path: what the app, an upgrade or the layers
        // below the access log would have produced.
        let stack = layer.layer(service_fn(|call: Call<Empty<Bytes>>| async move {
            let response = match call.req.uri().path() {
                "/ws" => {
                    let mut r: Response<ProxyBody> = Response::new(Either::Right(Full::new(Bytes::new())));
                    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    r
                }
                "/limited" => local(StatusCode::TOO_MANY_REQUESTS, "", Local::RateLimited),
                _ => local(StatusCode::BAD_GATEWAY, "", Local::UpstreamFailed),
            };
            Ok::<_, Infallible>(response)
        }));
        for path in ["/ws", "/limited", "/down"] {
            let mut call = Call::new(
                Request::get(path).body(Empty::new()).unwrap(),
                ([127, 0, 0, 1], 9).into(),
            );
            call.applied = state.applied.load_full();
            stack.clone().oneshot(call).await.unwrap();
        }
        let mut seen = Vec::new();
        while let Ok(r) = records.try_recv() {
            seen.push((r.path, r.status, r.upstream.map(|u| u.to_string())));
        }
        let app = Some("127.0.0.1:8080".to_owned());
        assert_eq!(
            seen,
            [
                ("/ws".to_owned(), 101, app.clone()),
                // The rate limiter answered: the app never saw the request.
                ("/limited".to_owned(), 429, None),
                ("/down".to_owned(), 502, app),
            ]
        );
    }
}
