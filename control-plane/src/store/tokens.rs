//! API tokens: name, role and the SHA-256 of the secret (never the secret itself).

use super::db::{now_ms, Store, StoreError};
use serde::Serialize;

/// What a token may do. Ordered: each role can do everything the previous one can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Also changes policies and config documents, and reverts revisions.
    Editor,
    /// Also manages tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: expected viewer, editor or admin")),
        }
    }
}

/// A token as listed (without its hash).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    #[serde(skip)]
    pub created_at_ms: i64,
    #[serde(skip)]
    pub revoked_at_ms: Option<i64>,
}

/// An `api_tokens` row (without the hash) as both backends decode it.
#[derive(sqlx::FromRow)]
struct DbRow {
    name: String,
    role: String,
    created_at_ms: i64,
    revoked_at_ms: Option<i64>,
}

impl TryFrom<DbRow> for TokenInfo {
    type Error = StoreError;
    fn try_from(r: DbRow) -> Result<Self, StoreError> {
        Ok(TokenInfo {
            role: r.role.parse().map_err(StoreError::Corrupt)?,
            name: r.name,
            created_at_ms: r.created_at_ms,
            revoked_at_ms: r.revoked_at_ms,
        })
    }
}

impl Store {
    /// Stores a new token under `name`; `AlreadyExists` if the name is taken (revoked
    /// names stay taken, so history actors stay unambiguous).
    pub async fn create_token(&self, name: &str, role: Role, token_hash: &str) -> Result<TokenInfo, StoreError> {
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO api_tokens (name, role, token_hash, created_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(token_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(TokenInfo {
            name: name.to_owned(),
            role,
            created_at_ms: now,
            revoked_at_ms: None,
        })
    }

    /// The live (not revoked) token with this hash.
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenInfo>, StoreError> {
        sqlx::query_as::<_, DbRow>(
            "SELECT name, role, created_at_ms, revoked_at_ms FROM api_tokens
             WHERE token_hash = $1 AND revoked_at_ms IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?
        .map(TokenInfo::try_from)
        .transpose()
    }

    /// Whether any live token exists: then every request must present one.
    pub async fn has_tokens(&self) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE revoked_at_ms IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Every token, revoked ones included, by name.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        sqlx::query_as::<_, DbRow>("SELECT name, role, created_at_ms, revoked_at_ms FROM api_tokens ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(TokenInfo::try_from)
            .collect()
    }

    /// Revokes the token unless it is the last live admin token: `Ok(false)` then,
    /// and nothing changes. Checked and written under the writer lock, so two
    /// admins revoking each other at once cannot both succeed. `NotFound` if there
    /// is no live token of that name.
    pub async fn revoke_token_keeping_an_admin(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_tokens WHERE role = $1 AND revoked_at_ms IS NULL AND name <> $2",
        )
        .bind(Role::Admin.as_str())
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE name = $1 AND revoked_at_ms IS NULL")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        if live == 0 {
            return Err(StoreError::NotFound);
        }
        if others == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE api_tokens SET revoked_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL")
            .bind(now_ms())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Revokes the token; `NotFound` if there is no live token of that name.
    pub async fn revoke_token(&self, name: &str) -> Result<(), StoreError> {
        self.revoke_in("api_tokens", name).await
    }

    /// Stamps the live row `name` of a token table (`api_tokens`, `join_tokens`) revoked.
    pub(super) async fn revoke_in(&self, table: &'static str, name: &str) -> Result<(), StoreError> {
        let sql = format!("UPDATE {table} SET revoked_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL");
        let r = sqlx::query(&sql).bind(now_ms()).bind(name).execute(&self.pool).await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
