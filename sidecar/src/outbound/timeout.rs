//! The per-try timeout layer: an attempt gets the route's `perTryTimeout`, never more
//! than what is left of the route's `timeout`; when it runs out the attempt ends as
//! [`Outcome::Timeout`], which the caller gets as a 504 unless a retry answers.

use super::{Dispatch, Outcome};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

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
        let per_try = dispatch.per_try;
        TimeoutFuture {
            inner: tokio::time::timeout(per_try, self.inner.call(dispatch)),
        }
    }
}

pin_project! {
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
    }
}

impl<F, RB> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Outcome<RB>, Infallible>>,
{
    type Output = Result<Outcome<RB>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().inner.poll(cx)) {
            Ok(outcome) => outcome,
            Err(_elapsed) => Ok(Outcome::Timeout),
        })
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
    use std::time::Duration;
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
            .layer(BalanceLayer::new(Clock::new()))
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
}
