//! `/services/{service}/policies/{kind}`: a stored policy document, the answer to a
//! deletion, and the dry-run report every write can give instead of writing.
//!
//! The document itself is the policy model's (`outrider-policy`); here it is a JSON
//! object, so the boundary does not depend on every policy field.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The `{kind}` of `/services/{service}/policies/{kind}`, so that the OpenAPI
/// document lists every kind a client may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKindName {
    Routing,
    RateLimit,
    Logging,
    Authorization,
}

/// A stored policy (`GET`, and the answer to a `PUT`, with an `ETag`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRecord {
    pub service: String,
    /// `routing`, `rate-limit`, `logging` or `authorization`.
    pub kind: String,
    pub revision: u64,
    /// RFC 3339.
    pub updated_at: String,
    /// The document in its canonical form (defaults filled in).
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
}

/// The answer to `DELETE …/policies/{kind}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDeleted {
    pub service: String,
    pub kind: String,
    /// The revision of the deletion.
    pub revision: u64,
    /// Always `true`.
    pub deleted: bool,
}

/// What a `DELETE …/policies/{kind}` answers: the deletion, or the dry-run report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PolicyDeleteResponse {
    Deleted(PolicyDeleted),
    DryRun(DryRunReport),
}

/// The answer to a write with `?dryRun=true`: nothing was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunReport {
    /// Always `true`.
    pub dry_run: bool,
    /// Always `true`: an invalid document is a 422 instead.
    pub valid: bool,
    /// Whether the write would change what is stored.
    pub changed: bool,
    /// Ids of the connected sidecars that would receive a new snapshot.
    pub sidecars: Vec<String>,
    /// A policy: the canonical document; a config document: its `name` and `size`;
    /// `null` for a `DELETE` (nothing is left).
    #[schema(value_type = Object, nullable)]
    pub document: serde_json::Value,
}

/// Query parameters of every write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Validate (If-Match included) and report the sidecars that would change; store nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a `PUT …/policies/{kind}` answers: the stored policy, or the dry-run report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PolicyPutResponse {
    Stored(PolicyRecord),
    DryRun(DryRunReport),
}
