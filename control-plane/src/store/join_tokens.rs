//! Join tokens: each lets a sidecar register as one service. Name, service and the
//! SHA-256 of the secret (never the secret itself), shared by every replica.

use super::db::{now_ms, Store, StoreError};

/// A join token as listed (without its hash).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JoinTokenInfo {
    pub name: String,
    pub service: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

const COLUMNS: &str = "name, service, created_at_ms, revoked_at_ms";

impl Store {
    /// Stores a new join token; `AlreadyExists` if the name is taken (revoked names
    /// stay taken).
    pub async fn create_join_token(
        &self,
        name: &str,
        service: &str,
        token_hash: &str,
    ) -> Result<JoinTokenInfo, StoreError> {
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO join_tokens (name, service, token_hash, created_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(service)
        .bind(token_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(JoinTokenInfo {
            name: name.to_owned(),
            service: service.to_owned(),
            created_at_ms: now,
            revoked_at_ms: None,
        })
    }

    /// The service a live join token with this hash may register as.
    pub async fn join_token_service(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT service FROM join_tokens WHERE token_hash = $1 AND revoked_at_ms IS NULL")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Whether any live join token exists: then every registration needs a token.
    pub async fn has_join_tokens(&self) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM join_tokens WHERE revoked_at_ms IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Every join token, revoked ones included, by service and name.
    pub async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>, StoreError> {
        Ok(
            sqlx::query_as::<_, JoinTokenInfo>(&format!("SELECT {COLUMNS} FROM join_tokens ORDER BY service, name"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Revokes the join token at once on every replica (new registrations; streams
    /// already open stay); `NotFound` if there is no live token of that name.
    pub async fn revoke_join_token(&self, name: &str) -> Result<(), StoreError> {
        self.revoke_in("join_tokens", name).await
    }
}
