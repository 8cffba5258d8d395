//! What every handler of the HTTP layer shares: the hub (snapshots, events, timing),
//! the store, and the bootstrap API token.

use crate::hub::Hub;
use crate::store::Store;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub store: Store,
    /// `OUTRIDER_API_TOKEN`, the bootstrap admin token (see `auth`).
    pub api_token: Option<Arc<str>>,
}

impl AppState {
    /// Pushes a committed change to this replica's sidecars at once; other replicas
    /// hear of it through the store (NOTIFY) or their periodic catch-up.
    pub async fn after_write(&self) {
        self.hub.metrics.policy_writes.inc();
        if let Err(e) = self.hub.catch_up().await {
            tracing::warn!(error = %e, "catch-up after a write failed; the periodic sweep will retry");
        }
    }
}
