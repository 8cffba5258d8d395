//! The inbound metrics layer: counts every answered request by status class and
//! latency, and the proxy's own 429s and app failures, whichever layer produced them;
//! and the requests that came in plaintext (no mTLS), before any layer refuses them.

use crate::proxy::identity::PeerIdentity;
use crate::proxy::respond::local_reason;
use crate::proxy::{Call, Local};
use crate::state::SidecarState;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct MetricsLayer {
    state: Arc<SidecarState>,
}

impl MetricsLayer {
    pub fn new(state: Arc<SidecarState>) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics {
            state: Arc::clone(&self.state),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Metrics<S> {
    state: Arc<SidecarState>,
    inner: S,
}

impl<S, B, RB> Service<Call<B>> for Metrics<S>
where
    S: Service<Call<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<B>) -> Self::Future {
        let started = call.started;
        if PeerIdentity::of(&call.req).is_none() {
            self.state.metrics.count_plaintext();
        }
        MetricsFuture {
            inner: self.inner.call(call),
            state: Some(Arc::clone(&self.state)),
            started,
        }
    }
}

pin_project! {
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        state: Option<Arc<SidecarState>>,
        started: Instant,
    }
}

impl<F, RB, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Some(state), Ok(response)) = (this.state.take(), &result) {
            let metrics = &state.metrics;
            match local_reason(response) {
                Some(Local::RateLimited) => metrics.record_rate_limited(),
                Some(Local::UpstreamFailed) => metrics.record_upstream_error(),
                Some(Local::Refused | Local::ClientFault) | None => {}
            }
            // The latency is to the response head: the body streams on afterwards.
            metrics.record_request(response.status().as_u16(), this.started.elapsed());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::respond::local;
    use crate::proxy::ProxyBody;
    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::{Either, Empty, Full};
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    fn call() -> Call<Empty<Bytes>> {
        Call::new(Request::new(Empty::new()), ([127, 0, 0, 1], 9).into())
    }

    #[tokio::test]
    async fn local_429s_and_app_failures_are_counted_with_every_request() {
        let state = Arc::new(SidecarState::new());
        let answer = |status: StatusCode, why: Option<Local>| {
            let state = Arc::clone(&state);
            let inner = service_fn(move |_: Call<Empty<Bytes>>| async move {
                Ok::<Response<ProxyBody>, Infallible>(match why {
                    Some(why) => local(status, "", why),
                    None => {
                        let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
                        *r.status_mut() = status;
                        r
                    }
                })
            });
            MetricsLayer::new(state).layer(inner)
        };
        answer(StatusCode::TOO_MANY_REQUESTS, Some(Local::RateLimited))
            .oneshot(call())
            .await
            .unwrap();
        // The app's own 429 is a request, not a rate-limit decision of the proxy.
        answer(StatusCode::TOO_MANY_REQUESTS, None)
            .oneshot(call())
            .await
            .unwrap();
        answer(StatusCode::BAD_GATEWAY, Some(Local::UpstreamFailed))
            .oneshot(call())
            .await
            .unwrap();
        answer(StatusCode::OK, None).oneshot(call()).await.unwrap();
        assert_eq!(state.metrics.requests_total(), 4);
        assert_eq!(state.metrics.rate_limited_total(), 1);
        assert_eq!(state.metrics.upstream_errors_total(), 1);
    }
}
