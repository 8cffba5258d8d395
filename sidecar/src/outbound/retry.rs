//! The retry layer: prepares a routed request for the instances (no hop-by-hop
//! headers, origin-form path, a buffered body when it is small enough to replay) and
//! sends attempts until one succeeds, the route's policy says stop, the route timeout
//! (started when the first attempt's request was sent in full; capped by a shorter
//! `grpc-timeout`) runs out, or the destination's retry budget is spent. A request
//! whose body the caller broke is refused as the caller's fault, never retried.

use super::timeout::{grpc_timeout, AttemptTimer};
use super::{Attempt, Clock, Outcome, Refused, Routed, Tried, UpstreamBody, MAX_REPLAY_BODY};
use crate::proxy::body::Watched;
use crate::proxy::{headers, root_cause, upgrade, Call};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};
use tracing::debug;

#[derive(Clone, Copy)]
pub struct RetryLayer {
    clock: Clock,
}

impl RetryLayer {
    pub fn new(clock: Clock) -> Self {
        Self { clock }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            clock: self.clock,
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Retry<S> {
    clock: Clock,
    inner: S,
}

impl<S, B, RB> Service<Routed<B>> for Retry<S>
where
    S: Service<Attempt<B>, Response = Tried<RB>, Error = Refused> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    RB: Send + 'static,
{
    type Response = Tried<RB>;
    type Error = Refused;
    // One allocation per request: the loop awaits the body and each attempt.
    type Future = Pin<Box<dyn Future<Output = Result<Tried<RB>, Refused>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: Routed<B>) -> Self::Future {
        // The ready clone answers this call; the fresh one is polled before each
        // later attempt (tower's contract: call only after poll_ready).
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(attempts(inner, self.clock, routed))
    }
}

async fn attempts<S, B, RB>(mut inner: S, clock: Clock, routed: Routed<B>) -> Result<Tried<RB>, Refused>
where
    S: Service<Attempt<B>, Response = Tried<RB>, Error = Refused>,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    let Routed {
        call: Call { mut req, .. },
        dest,
        endpoints,
        retry,
        timeout,
    } = routed;
    let mut on_client = upgrade::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let http2 = req.version() == Version::HTTP_2;
    let (mut parts, body) = req.into_parts();
    let asked = on_client
        .as_ref()
        .and_then(|_| parts.headers.get(header::UPGRADE).cloned());
    headers::remove_hop_by_hop(&mut parts.headers);
    // Keep exactly the hop-by-hop headers an upgrade needs.
    upgrade::restore_upgrade_headers(&mut parts.headers, asked);
    // HTTP/2 too: the instance's :authority is its address, so `Host` carries the
    // name the caller used (set by `proxy::conform`).
    if !parts.headers.contains_key(header::HOST) {
        // Absolute-form without Host (HTTP/1.0 clients): the app still sees its name.
        if let Ok(v) = HeaderValue::from_str(&dest.name) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let timeout = grpc_timeout(&parts.headers).map_or(timeout, |g| g.min(timeout));
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or(PathAndQuery::from_static("/"));

    // A replayable body makes retries possible; everything else gets one attempt.
    let mut streamed = None;
    let replay = if on_client.is_some() {
        streamed = Some(body);
        None
    } else if body.is_end_stream() {
        Some(Bytes::new())
    } else if body.size_hint().upper().is_some_and(|n| n <= MAX_REPLAY_BODY) {
        match body.collect().await {
            Ok(b) => Some(b.to_bytes()),
            Err(e) => return Err(Refused::UnreadableBody(e.to_string())),
        }
    } else {
        streamed = Some(body);
        None
    };

    if on_client.is_none() {
        dest.budget.deposit();
    }
    let mut avoid = None;
    let mut attempt = 0u32;
    // Set once an attempt's request has been sent in full: later attempts share it.
    let mut deadline: Option<Instant> = None;
    loop {
        let body = match (&replay, streamed.take()) {
            (Some(b), _) => Either::Right(Full::new(b.clone())),
            (None, Some(s)) => Either::Left(s),
            // Unreachable: a streamed body is never retried.
            (None, None) => Either::Right(Full::new(Bytes::new())),
        };
        let (body, progress) = Watched::new(body);
        let timer = match deadline {
            None => AttemptTimer::first(retry.per_try_timeout, timeout),
            Some(until) => AttemptTimer {
                after_sent: retry.per_try_timeout,
                until: Some(until),
            },
        };
        poll_fn(|cx| inner.poll_ready(cx)).await?;
        let tried = inner
            .call(Attempt {
                req: request(&parts.method, &parts.headers, http2, body),
                path: path.clone(),
                endpoints: endpoints.clone(),
                avoid: avoid.take(),
                timer,
                progress: Arc::clone(&progress),
                on_client: on_client.take(),
            })
            .await?;
        if let Outcome::ClientFault(e) = &tried.outcome {
            return Err(Refused::UnreadableBody(root_cause(e)));
        }
        if deadline.is_none() {
            deadline = progress.sent_at().map(|sent| sent + timeout);
        }
        let can_retry = tried.outcome.retriable(&retry)
            && attempt < retry.attempts
            && replay.is_some()
            && deadline.is_none_or(|d| Instant::now() < d)
            && dest.budget.try_withdraw(clock.now_ms());
        if !can_retry {
            return Ok(tried);
        }
        debug!(service = %dest.name, pod = %tried.endpoint.pod, attempt, "retrying");
        attempt += 1;
        avoid = Some(tried.endpoint);
    }
}

/// An attempt's request; the balancer sets its URI once it has picked an endpoint.
fn request<B>(method: &Method, headers: &HeaderMap, http2: bool, body: UpstreamBody<B>) -> Request<UpstreamBody<B>> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.version_mut() = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers.clone();
    req
}

#[cfg(test)]
mod tests {
    use super::super::budget::MIN_RETRIES_PER_SEC;
    use super::super::table::Retry as Policy;
    use super::super::testing::{destination, routed};
    use super::super::Outcome;
    use super::*;
    use http_body_util::Empty;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::{service_fn, ServiceExt};

    /// An inner stack whose every attempt times out, counting attempts.
    fn always_timing_out(
        dest: &Arc<super::super::table::Destination>,
        calls: &Arc<AtomicUsize>,
    ) -> impl Service<Attempt<Empty<Bytes>>, Response = Tried<()>, Error = Refused, Future: Send> + Clone + Send + 'static
    {
        let endpoint = Arc::clone(&dest.all[0]);
        let calls = Arc::clone(calls);
        service_fn(move |_: Attempt<Empty<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let endpoint = Arc::clone(&endpoint);
            async move {
                Ok::<_, Refused>(Tried {
                    outcome: Outcome::Timeout,
                    endpoint,
                })
            }
        })
    }

    const ON_5XX: Policy = Policy {
        attempts: 1000,
        per_try_timeout: None,
        on_5xx: true,
        on_connect_failure: false,
        on_reset: false,
    };

    #[tokio::test]
    async fn retries_stop_when_the_budget_is_spent_not_at_the_policys_attempts() {
        let dest = destination(2);
        let calls = Arc::new(AtomicUsize::new(0));
        let retry = RetryLayer::new(Clock::new()).layer(always_timing_out(&dest, &calls));
        let tried = retry.oneshot(routed(&dest, ON_5XX, Empty::new())).await.unwrap();
        assert!(matches!(tried.outcome, Outcome::Timeout));
        // A fresh budget holds one second of the floor plus this request's deposit;
        // a very slow run may see the floor refill a little.
        let calls = calls.load(Ordering::SeqCst) as i64;
        assert!(
            (1 + MIN_RETRIES_PER_SEC..=1 + 2 * MIN_RETRIES_PER_SEC).contains(&calls),
            "{calls} attempts"
        );
    }

    #[tokio::test]
    async fn a_request_the_policy_does_not_retry_gets_one_attempt() {
        let dest = destination(2);
        let calls = Arc::new(AtomicUsize::new(0));
        let retry = RetryLayer::new(Clock::new()).layer(always_timing_out(&dest, &calls));
        let policy = Policy {
            on_5xx: false,
            ..ON_5XX
        };
        retry.oneshot(routed(&dest, policy, Empty::new())).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
