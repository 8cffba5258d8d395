//! `/services/{service}/config/{name}`: what the API says about a config document
//! (the document itself travels as the raw body, in its own content type).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stored config document's metadata (the answer to a `PUT`, with an `ETag`; and
/// each entry of `configs` in `GET /services/{service}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMeta {
    pub service: String,
    pub name: String,
    /// The content type it was written with, served back on `GET`.
    pub content_type: String,
    /// In bytes.
    pub size: u64,
    pub revision: u64,
    /// RFC 3339.
    pub updated_at: String,
}

/// The `document` of a config document's dry-run report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSize {
    pub name: String,
    /// In bytes.
    pub size: u64,
}

/// The answer to `DELETE …/config/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDeleted {
    pub service: String,
    pub name: String,
    /// The revision of the deletion.
    pub revision: u64,
    /// Always `true`.
    pub deleted: bool,
}

/// What a `DELETE …/config/{name}` answers: the deletion, or the dry-run report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ConfigDeleteResponse {
    Deleted(ConfigDeleted),
    DryRun(crate::DryRunReport),
}

/// What a `PUT …/config/{name}` answers: the stored metadata, or the dry-run report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ConfigPutResponse {
    Stored(ConfigMeta),
    DryRun(crate::policies::DryRunReport),
}
