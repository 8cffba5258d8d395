//! `/join-tokens`: per-service tokens that let a sidecar register as one service
//! (admins only); secrets appear once, in the answer that creates them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What `POST /join-tokens` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// The only service a sidecar presenting the token may register as.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub service: String,
    /// 1 to 64 letters, digits, `-`, `_`, `.`, `@`; default `<service>-<8 hex digits>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: Option<String>,
}

/// A join token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenInfo {
    pub name: String,
    pub service: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; `null` while it is live.
    pub revoked_at: Option<String>,
}

/// The answer to `POST /join-tokens` (201): the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedJoinToken {
    pub service: String,
    pub name: String,
    pub created_at: String,
    /// What the sidecar sends as `OUTRIDER_TOKEN`.
    pub token: String,
}

/// The answer to `DELETE /join-tokens/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenRevoked {
    pub name: String,
    /// Always `true`.
    pub revoked: bool,
}
