//! `GET /events`: the server-sent events a dashboard or CLI follows: `change` events
//! carry a [`ChangeEvent`]; a `resync` event (data `{}`) says the client fell behind
//! and should re-read what it shows.

use crate::sidecars::Sidecar;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The SSE event name of a [`ChangeEvent`].
pub const CHANGE_EVENT: &str = "change";
/// The SSE event name that asks the client to re-read everything.
pub const RESYNC_EVENT: &str = "resync";

/// The data of a `change` event, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ChangeEvent {
    /// A new snapshot for the service (policy, config or membership change).
    Snapshot { service: String, revision: u64 },
    /// The set of healthy instances of a service changed.
    Membership { service: String, healthy: u32 },
    /// Sidecar rows (as in `GET /sidecars`) that changed in the last second.
    Sidecars { sidecars: Vec<Sidecar> },
}
