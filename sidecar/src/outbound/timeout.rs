//! The timeout layer: an attempt waits for its response head at most the route's
//! `timeout` and the retry policy's `perTryTimeout`, both counted from the moment the
//! attempt's request has been sent in full (so an upload takes as long as it takes,
//! and a streaming request waits for its first answer as long as it streams); a route
//! timer already started by an earlier attempt keeps running. When it runs out the
//! attempt ends as [`Outcome::Timeout`], which the caller gets as a 504 unless a
//! retry answers.

use super::{Dispatch, Outcome};
use crate::proxy::body::Progress;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;
use tower::{Layer, Service};

/// When an attempt stops waiting for its response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptTimer {
    /// Counted from this attempt's request having been sent in full.
    pub after_sent: Option<Duration>,
    /// The route's deadline, once its timer has started (on an earlier attempt).
    pub until: Option<Instant>,
}

impl AttemptTimer {
    /// The first attempt: the route timer starts with it.
    pub fn first(per_try: Option<Duration>, route: Duration) -> Self {
        AttemptTimer {
            after_sent: Some(per_try.map_or(route, |p| p.min(route))),
            until: None,
        }
    }

    /// The deadline, given when the attempt's request was sent (if it was).
    pub fn deadline(&self, sent: Option<Instant>) -> Option<Instant> {
        let after_sent = sent.zip(self.after_sent).map(|(s, d)| s + d);
        match (after_sent, self.until) {
            (Some(a), Some(u)) => Some(a.min(u)),
            (a, u) => a.or(u),
        }
    }
}

/// A request's `grpc-timeout` (`1*8 digits` and a unit: `H`, `M`, `S`, `m`, `u`, `n`);
/// `None` when absent or malformed, as the gRPC spec has a server ignore it.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 ASCII digits: always a valid u64.
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[derive(Clone, Copy, Default)]
pub struct TimeoutLayer;

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout { inner }
    }
}

#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
}

/// Far enough to never fire; the real deadline replaces it once it is known.
const UNARMED: Duration = Duration::from_secs(365 * 24 * 3600);

impl<S, B, RB> Service<Dispatch<B>> for Timeout<S>
where
    S: Service<Dispatch<B>, Response = Outcome<RB>, Error = Infallible>,
{
    type Response = Outcome<RB>;
    type Error = Infallible;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dispatch: Dispatch<B>) -> Self::Future {
        let timer = dispatch.timer;
        let progress = Arc::clone(&dispatch.progress);
        TimeoutFuture {
            inner: self.inner.call(dispatch),
            // Not registered with the timer wheel until it is first polled.
            sleep: tokio::time::sleep(UNARMED),
            timer,
            progress,
        }
    }
}

pin_project! {
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        timer: AttemptTimer,
        progress: Arc<Progress>,
    }
}

impl<F, RB> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Outcome<RB>, Infallible>>,
{
    type Output = Result<Outcome<RB>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(outcome) = this.inner.poll(cx) {
            return Poll::Ready(outcome);
        }
        // Registered before reading, so the body's "sent" wakes this task even when it
        // lands between the read and the return.
        this.progress.register(cx.waker());
        let Some(deadline) = this.timer.deadline(this.progress.sent_at()) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if this.sleep.deadline() != deadline {
            this.sleep.as_mut().reset(deadline);
        }
        ready!(this.sleep.poll(cx));
        Poll::Ready(Ok(Outcome::Timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::super::figures::FiguresLayer;
    use super::super::retry::RetryLayer;
    use super::super::table::Retry;
    use super::super::testing::{destination, routed};
    use super::super::{balance::BalanceLayer, Clock};
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::Empty;
    use hyper::body::Incoming;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn an_instance_that_never_answers_gets_the_caller_a_504() {
        let dest = destination(1);
        // Accepted, never answered: the attempt only ends by the timeout.
        let silent =
            service_fn(|_: Dispatch<Empty<Bytes>>| std::future::pending::<Result<Outcome<Incoming>, Infallible>>());
        let stack = ServiceBuilder::new()
            .layer(FiguresLayer)
            .layer(RetryLayer::new(Clock::new()))
            .layer(BalanceLayer::new(
                Clock::new(),
                Arc::new(crate::state::SidecarState::new()),
            ))
            .layer(TimeoutLayer)
            .service(silent);
        let policy = Retry {
            attempts: 0,
            per_try_timeout: Some(Duration::from_millis(20)),
            ..Retry::DEFAULT
        };
        let response = stack.oneshot(routed(&dest, policy, Empty::new())).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        // The figures of the subset count the timeout as a failed request.
        assert_eq!(dest.all[0].stats.requests_total(), 1);
        assert_eq!(dest.all[0].stats.errors_total(), 1);
    }

    #[test]
    fn grpc_timeouts_are_read_per_the_grpc_spec_and_bad_ones_ignored() {
        let parse = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S", " 5S", "5 S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn an_attempt_timer_starts_when_its_request_is_sent_unless_the_route_timer_runs() {
        let now = Instant::now();
        let first = AttemptTimer::first(Some(Duration::from_secs(1)), Duration::from_secs(5));
        assert_eq!(first.deadline(None), None, "nothing runs while the body is sent");
        assert_eq!(first.deadline(Some(now)), Some(now + Duration::from_secs(1)));
        let no_per_try = AttemptTimer::first(None, Duration::from_secs(5));
        assert_eq!(no_per_try.deadline(Some(now)), Some(now + Duration::from_secs(5)));
        // A retry: the route's deadline binds even before its body is sent.
        let retry = AttemptTimer {
            after_sent: Some(Duration::from_secs(1)),
            until: Some(now + Duration::from_millis(300)),
        };
        assert_eq!(retry.deadline(None), Some(now + Duration::from_millis(300)));
        assert_eq!(retry.deadline(Some(now)), Some(now + Duration::from_millis(300)));
    }
}
