//! A span per request (`inbound`/`outbound`, method, path), a child of the
//! listener's span (the sidecar's service and pod); layers below may fill in the
//! destination `service` and the `pod` that answered.

use super::Call;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tracing::instrument::Instrumented;
use tracing::Instrument;

#[derive(Clone, Copy)]
pub struct TraceLayer {
    direction: &'static str,
}

impl TraceLayer {
    pub fn new(direction: &'static str) -> Self {
        Self { direction }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            direction: self.direction,
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    direction: &'static str,
    inner: S,
}

impl<S, B> Service<Call<B>> for Trace<S>
where
    S: Service<Call<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<B>) -> Self::Future {
        // At debug level: disabled (the default), this is one cached interest check.
        let span = tracing::debug_span!(
            "request",
            direction = self.direction,
            method = %call.req.method(),
            path = call.req.uri().path(),
            service = tracing::field::Empty,
            pod = tracing::field::Empty,
        );
        let _entered = span.enter();
        let future = self.inner.call(call);
        drop(_entered);
        future.instrument(span)
    }
}
