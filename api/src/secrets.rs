//! `/services/{service}/secrets`: what the API says about a secret. The value goes in
//! as a raw request body and never comes back out.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stored secret's metadata: everything but the value (the answer to a `PUT`, with
/// an `ETag`; each entry of the list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretMeta {
    pub service: String,
    pub name: String,
    /// The value's length in bytes.
    pub size: u64,
    pub revision: u64,
    /// RFC 3339.
    pub updated_at: String,
}

/// The answer to `DELETE …/secrets/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretDeleted {
    pub service: String,
    pub name: String,
    /// The revision of the deletion.
    pub revision: u64,
    /// Always `true`.
    pub deleted: bool,
}

/// What a `PUT …/secrets/{name}` answers: the stored metadata, or the dry-run report
/// (whose `document` is the name and size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SecretPutResponse {
    Stored(SecretMeta),
    DryRun(crate::DryRunReport),
}

/// What a `DELETE …/secrets/{name}` answers: the deletion, or the dry-run report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SecretDeleteResponse {
    Deleted(SecretDeleted),
    DryRun(crate::DryRunReport),
}
