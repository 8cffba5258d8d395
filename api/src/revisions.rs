//! `/revisions`: the history of every change, one revision at a time, and how far
//! each has spread through the fleet.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One line of the history (`GET /revisions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSummary {
    pub revision: u64,
    /// When it was written, RFC 3339.
    pub time: String,
    /// The token name that made the change (or `anonymous`, `canary-controller`).
    pub actor: String,
    /// What changed: a policy kind, or `config`.
    pub kind: String,
    pub service: String,
    /// A config document's name (absent for policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `put` or `delete` (a revert is either, with `reverts` set).
    pub operation: String,
    /// The revision a revert undid (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverts: Option<u64>,
    /// How far it has spread (absent only in the answer to a revert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Propagation>,
}

/// One change with its document before and after (`GET /revisions/{n}`, and the
/// answer to `POST /revisions/{n}/revert`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionDetail {
    pub revision: u64,
    /// RFC 3339.
    pub time: String,
    pub actor: String,
    pub kind: String,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverts: Option<u64>,
    /// The document before the change (`null`: it did not exist).
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    /// The document after the change (`null`: it was deleted).
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
    /// How far it has spread (absent in the answer to a revert, which is brand new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Propagation>,
}

/// How far one revision has spread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Propagation {
    /// Sidecars that applied it (that revision or a later one of the service).
    pub applied: u64,
    /// Sidecars connected when it was written, still connected, that have not yet.
    pub pending: u64,
    /// Write → last ACK so far, in seconds (`null` before the first ACK).
    pub last_ack_seconds: Option<f64>,
}

/// Query parameters of `GET /revisions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevisionQuery {
    /// Only this service's changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// At most this many, newest first (default 100; 1 to 1000, clamped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Any u32 is taken (and clamped), not only the int32 range a u32 is described with.
    #[param(value_type = Option<u64>, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
}
