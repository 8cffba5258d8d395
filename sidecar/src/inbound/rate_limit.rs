//! The inbound rate-limit layer: checks the applied snapshot's limiter, answers 429
//! with `Retry-After` itself on a denial, and adds the `RateLimit` headers to the
//! app's answer otherwise.

use crate::proxy::identity::PeerIdentity;
use crate::proxy::respond::{local, AnswerOr, OnResponse};
use crate::proxy::{Call, Local, ProxyBody};
use crate::ratelimit::{Decision, RateLimitHeaders};
use http::{Response, StatusCode};
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tracing::debug;

#[derive(Clone, Copy, Default)]
pub struct RateLimitLayer;

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
}

impl<S, B> Service<Call<B>> for RateLimit<S>
where
    S: Service<Call<B>, Response = Response<ProxyBody>>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = AnswerOr<S::Future, RateLimitHeaders>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<B>) -> Self::Future {
        // Nothing applied yet (first start, control plane unreachable, no persisted
        // snapshot): there is no policy to enforce, so fail open.
        let limit = match &call.applied {
            None => None,
            Some(applied) => {
                let decision = applied.limiter.check_from(
                    call.req.uri().path(),
                    call.req.headers(),
                    call.peer.ip(),
                    PeerIdentity::of(&call.req).map(PeerIdentity::as_str),
                    call.started,
                );
                if let Decision::Deny {
                    quota,
                    retry_after_secs,
                } = decision
                {
                    debug!(rule = quota.rule.name(), retry_after_secs, "rate limited");
                    let mut response = local(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate limit exceeded\n",
                        Local::RateLimited,
                    );
                    decision.write_headers(response.headers_mut());
                    return AnswerOr::answered(response);
                }
                decision.headers()
            }
        };
        AnswerOr::Inner {
            inner: self.inner.call(call),
            after: limit,
        }
    }
}

impl OnResponse for RateLimitHeaders {
    fn on_response(self, response: &mut Response<ProxyBody>) {
        self.write_to(response.headers_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{SidecarState, Source};
    use bytes::Bytes;
    use http::Request;
    use http_body_util::{Either, Empty, Full};
    use outrider_proto::v1::Snapshot;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::{service_fn, ServiceExt};

    #[tokio::test]
    async fn a_denied_request_never_reaches_the_app_and_an_allowed_one_gets_headers() {
        let state = SidecarState::new();
        let snapshot = Snapshot {
            revision: 1,
            nonce: "n".into(),
            service: "web".into(),
            rate_limit: r#"{"rules":[{"name":"all","requestsPerSecond":0.01,"burst":1}]}"#.into(),
            service_share: 1.0,
            ..Default::default()
        };
        state.apply(&snapshot, Source::ControlPlane).unwrap();
        let reached = Arc::new(AtomicUsize::new(0));
        let app = {
            let reached = Arc::clone(&reached);
            service_fn(move |_: Call<Empty<Bytes>>| {
                reached.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(Either::Right(Full::new(Bytes::new())))) }
            })
        };
        let limited = RateLimitLayer.layer(app);
        let call = || {
            let mut call = Call::new(Request::new(Empty::new()), ([127, 0, 0, 1], 9).into());
            call.applied = state.applied.load_full();
            call
        };
        let allowed = limited.clone().oneshot(call()).await.unwrap();
        assert_eq!(allowed.status(), StatusCode::OK);
        assert!(allowed.headers().contains_key("ratelimit"), "{:?}", allowed.headers());
        let denied = limited.oneshot(call()).await.unwrap();
        assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(denied.headers().contains_key("retry-after"));
        assert_eq!(crate::proxy::respond::local_reason(&denied), Some(Local::RateLimited));
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }
}
