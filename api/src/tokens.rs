//! `/tokens`: the REST API's bearer tokens (admins only); secrets appear once, in
//! the answer that creates them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token may do; each role can do everything the previous one can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Also changes policies and config documents, and reverts revisions.
    Editor,
    /// Also manages tokens.
    Admin,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; `null` while it is live.
    pub revoked_at: Option<String>,
}

/// What `POST /tokens` takes. The role is a string here so that a bad one is a 422
/// naming `role`, like any other bad field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    /// 1 to 64 letters, digits, `-`, `_`, `.`, `@`; recorded as the actor of its changes.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    /// `viewer`, `editor` or `admin`.
    #[schema(example = "viewer", pattern = "^(viewer|editor|admin)$")]
    pub role: String,
}

/// The answer to `POST /tokens` (201): the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The bearer token itself.
    pub token: String,
}

/// The answer to `DELETE /tokens/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenRevoked {
    pub name: String,
    /// Always `true`.
    pub revoked: bool,
}
