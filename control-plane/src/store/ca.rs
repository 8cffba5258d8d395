//! The CA's roots (see `crate::ca`) and the certificate each sidecar was last issued.

use super::db::{now_ms, Store, StoreError};

/// A trusted root with its key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CaRoot {
    pub generation: i64,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Store {
    /// Stores `cert_pem`/`key_pem` as the first root unless one exists, then returns
    /// every trusted root, oldest first. Replicas starting at once each offer their own
    /// root; the primary key lets exactly one in and all of them read back that one.
    pub async fn ensure_ca_root(&self, cert_pem: &str, key_pem: &str) -> Result<Vec<CaRoot>, StoreError> {
        sqlx::query(
            "INSERT INTO ca_roots (generation, cert_pem, key_pem, created_at_ms) VALUES (1, $1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(cert_pem)
        .bind(key_pem)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.ca_roots().await
    }

    /// Every root not retired, oldest first: the trust bundle. The last one signs.
    pub async fn ca_roots(&self) -> Result<Vec<CaRoot>, StoreError> {
        Ok(sqlx::query_as::<_, CaRoot>(
            "SELECT generation, cert_pem, key_pem FROM ca_roots WHERE retired_at_ms IS NULL ORDER BY generation",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records the identity just issued to the sidecar `id` (the stream `session`
    /// owns the row) and its certificate's expiry.
    pub async fn record_certificate(
        &self,
        id: &str,
        session: &str,
        identity: &str,
        expiry_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE sidecars SET identity = $3, certificate_expiry_ms = $4 WHERE id = $1 AND session = $2")
            .bind(id)
            .bind(session)
            .bind(identity)
            .bind(expiry_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
