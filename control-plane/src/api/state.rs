//! What every handler of the HTTP layer shares: the hub (snapshots, events, timing),
//! the store, the bootstrap API token, and the HTTP port's defences (the browser
//! guard's allowed origins and hosts, the failed-authentication throttle).

use super::guard::Guard;
use crate::auth::AuthThrottle;
use crate::hub::Hub;
use crate::store::Store;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub store: Store,
    /// `OUTRIDER_API_TOKEN`, the bootstrap admin token (see `auth`).
    pub api_token: Option<Arc<str>>,
    /// Which `Host` and `Origin` values the HTTP port answers (see `guard`).
    pub guard: Arc<Guard>,
    /// Failed authentications per client address (see `auth`).
    pub throttle: Arc<AuthThrottle>,
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
