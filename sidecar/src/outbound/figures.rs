//! The figures layer: turns how a routed request ended into the caller's answer
//! (the instance's response, or a 502/503/504 of the proxy's own) and records it in
//! the per-subset figures of the instance that answered last.

use super::table::Destination;
use super::{Outcome, Refused, Routed, Tried};
use crate::proxy::respond::local;
use crate::proxy::{headers, upgrade, ErrorChain, Local, ProxyBody};
use http::header;
use http::{Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};
use tracing::debug;

#[derive(Clone, Copy, Default)]
pub struct FiguresLayer;

impl<S> Layer<S> for FiguresLayer {
    type Service = Figures<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Figures { inner }
    }
}

#[derive(Clone)]
pub struct Figures<S> {
    inner: S,
}

impl<S, B> Service<Routed<B>> for Figures<S>
where
    S: Service<Routed<B>, Response = Tried<Incoming>, Error = Refused>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = FiguresFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner layers are always ready; a refusal is per request, not here.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, routed: Routed<B>) -> Self::Future {
        FiguresFuture {
            dest: Arc::clone(&routed.dest),
            started: routed.call.started,
            inner: self.inner.call(routed),
        }
    }
}

pin_project! {
    pub struct FiguresFuture<F> {
        #[pin]
        inner: F,
        dest: Arc<Destination>,
        started: Instant,
    }
}

impl<F> Future for FiguresFuture<F>
where
    F: Future<Output = Result<Tried<Incoming>, Refused>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match ready!(this.inner.poll(cx)) {
            Ok(Tried { outcome, endpoint }) => {
                let response = respond(this.dest, outcome, &endpoint.pod);
                endpoint
                    .stats
                    .record(response.status().is_server_error(), this.started.elapsed());
                response
            }
            // Nothing was sent: these are not figures of any subset.
            Err(Refused::NoInstance) => local(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no healthy instance of {}\n", this.dest.name),
                Local::Refused,
            ),
            Err(Refused::UnreadableBody(e)) => local(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}\n"),
                Local::Refused,
            ),
        };
        Poll::Ready(Ok(response))
    }
}

fn respond(dest: &Destination, outcome: Outcome<Incoming>, pod: &str) -> Response<ProxyBody> {
    match outcome {
        Outcome::Answered(response) | Outcome::ServerError(response) => {
            // A `101` keeps the two hop-by-hop headers that say what was switched to.
            let agreed = (response.status() == StatusCode::SWITCHING_PROTOCOLS)
                .then(|| response.headers().get(header::UPGRADE).cloned())
                .flatten();
            let (mut parts, body) = response.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            upgrade::restore_upgrade_headers(&mut parts.headers, agreed);
            Response::from_parts(parts, Either::Left(body))
        }
        // The retry layer turns this into a refusal before it gets here.
        Outcome::ClientFault(e) => local(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {e}\n"),
            Local::ClientFault,
        ),
        Outcome::Timeout => local(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{} (pod {pod}) did not answer in time\n", dest.name),
            Local::UpstreamFailed,
        ),
        Outcome::ConnectFailure(e) => {
            debug!(error = %ErrorChain(&e), "connect failed");
            local(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no instance of {} accepted the connection\n", dest.name),
                Local::UpstreamFailed,
            )
        }
        Outcome::Reset(e) => {
            debug!(error = %ErrorChain(&e), "upstream failed");
            local(
                StatusCode::BAD_GATEWAY,
                format!("{} (pod {pod}) closed the connection: {e}\n", dest.name),
                Local::UpstreamFailed,
            )
        }
    }
}
