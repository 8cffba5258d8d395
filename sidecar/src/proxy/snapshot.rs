//! The first layer of both proxies: loads the applied snapshot once per request into
//! [`Call::applied`], so every layer below enforces the same one.

use super::Call;
use crate::state::SidecarState;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct LoadSnapshotLayer {
    state: Arc<SidecarState>,
}

impl LoadSnapshotLayer {
    pub fn new(state: Arc<SidecarState>) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for LoadSnapshotLayer {
    type Service = LoadSnapshot<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadSnapshot {
            state: Arc::clone(&self.state),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct LoadSnapshot<S> {
    state: Arc<SidecarState>,
    inner: S,
}

impl<S, B> Service<Call<B>> for LoadSnapshot<S>
where
    S: Service<Call<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call<B>) -> Self::Future {
        // One lock-free load; the `Arc` keeps this snapshot alive for the request
        // even if the agent swaps in a new one meanwhile.
        call.applied = self.state.applied.load_full();
        self.inner.call(call)
    }
}
