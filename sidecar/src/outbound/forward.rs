//! The innermost outbound layer: sends an attempt to the endpoint in its URI over a
//! pooled connection (HTTP/2 when the caller spoke it) and says how it ended (a
//! failure of the caller's own body is told apart from the instance's); an upgrade's
//! `101` splices the caller's connection to the instance's.

use super::connect::MeshConnector;
use super::{Dispatch, Outcome, UpstreamBody};
use crate::proxy::body::Progress;
use crate::proxy::{client, upgrade};
use crate::state::SidecarState;
use http::{StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::{Client, ResponseFuture};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::Service;

/// The pools of connections to other instances' inbound ports. Cloning shares them.
#[derive(Clone)]
pub struct Forward {
    clients: Arc<Clients>,
}

struct Clients {
    http1: Client<MeshConnector, UpstreamBody>,
    http2: Client<MeshConnector, UpstreamBody>,
}

impl Forward {
    /// Pools that dial with this sidecar's workload certificate from `state`.
    pub fn new(state: &Arc<SidecarState>) -> Self {
        Forward {
            clients: Arc::new(Clients {
                http1: client::pooled_via(MeshConnector::new(Arc::clone(state), false), false),
                http2: client::pooled_via(MeshConnector::new(Arc::clone(state), true), true),
            }),
        }
    }
}

impl Service<Dispatch> for Forward {
    type Response = Outcome;
    type Error = Infallible;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pools open connections on demand; there is nothing to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dispatch: Dispatch) -> Self::Future {
        let client = if dispatch.req.version() == Version::HTTP_2 {
            &self.clients.http2
        } else {
            &self.clients.http1
        };
        ForwardFuture {
            inner: client.request(dispatch.req),
            on_client: dispatch.on_client,
            progress: dispatch.progress,
        }
    }
}

pin_project! {
    pub struct ForwardFuture {
        #[pin]
        inner: ResponseFuture,
        on_client: Option<OnUpgrade>,
        progress: Arc<Progress>,
    }
}

impl Future for ForwardFuture {
    type Output = Result<Outcome<Incoming>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            // The body failed on the caller's side first: whatever the connection
            // reports next is the consequence, not the instance's doing.
            Err(e) if this.progress.client_failed() => Outcome::ClientFault(e),
            Err(e) if e.is_connect() => Outcome::ConnectFailure(e),
            Err(e) => Outcome::Reset(e),
            Ok(r) if r.status().is_server_error() => Outcome::ServerError(r),
            Ok(mut r) => {
                if let Some(on_client) = this.on_client.take() {
                    if r.status() == StatusCode::SWITCHING_PROTOCOLS {
                        upgrade::splice(on_client, hyper::upgrade::on(&mut r));
                    }
                }
                Outcome::Answered(r)
            }
        }))
    }
}
