//! The CA's roots (see `crate::ca`) and the certificate each sidecar was last issued.

use super::db::{now_ms, Store, StoreError};

/// A trusted root with its key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CaRoot {
    pub generation: i64,
    pub cert_pem: String,
    pub key_pem: String,
    pub created_at_ms: i64,
    /// When it began to sign; `None`: trusted, not signing yet.
    pub activated_at_ms: Option<i64>,
}

/// Why a rotation step cannot be taken now.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no root is waiting to be activated: add one first (ca add-root)")]
    NothingToActivate,
    #[error("root {0} is not a trusted root")]
    NoSuchRoot(i64),
    #[error("root {0} signs; activate a newer root first")]
    Signing(i64),
    #[error(
        "root {generation} may still have signed certificates in use: its successor was activated \
         {since_s} s ago and certificates live {ttl_s} s (retire it later, or pass --force)"
    )]
    StillInUse { generation: i64, since_s: i64, ttl_s: i64 },
}

impl Store {
    /// Stores `cert_pem`/`key_pem` as the first root unless one exists, then returns
    /// every trusted root, oldest first. Replicas starting at once each offer their own
    /// root; the primary key lets exactly one in and all of them read back that one.
    pub async fn ensure_ca_root(&self, cert_pem: &str, key_pem: &str) -> Result<Vec<CaRoot>, StoreError> {
        sqlx::query(
            "INSERT INTO ca_roots (generation, cert_pem, key_pem, created_at_ms, activated_at_ms)
             VALUES (1, $1, $2, $3, $3) ON CONFLICT DO NOTHING",
        )
        .bind(cert_pem)
        .bind(key_pem)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.ca_roots().await
    }

    /// Every root not retired, oldest first: the trust bundle. The newest activated
    /// one signs.
    pub async fn ca_roots(&self) -> Result<Vec<CaRoot>, StoreError> {
        Ok(sqlx::query_as::<_, CaRoot>(
            "SELECT generation, cert_pem, key_pem, created_at_ms, activated_at_ms FROM ca_roots
             WHERE retired_at_ms IS NULL ORDER BY generation",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Adds a root that is trusted at once and signs only once activated; returns
    /// its generation. Generations only grow, so a retired number is never reused.
    pub async fn add_ca_root(&self, cert_pem: &str, key_pem: &str) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (next,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(generation), 0) + 1 FROM ca_roots")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO ca_roots (generation, cert_pem, key_pem, created_at_ms) VALUES ($1, $2, $3, $4)")
            .bind(next)
            .bind(cert_pem)
            .bind(key_pem)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(next)
    }

    /// Makes the newest trusted root that does not sign yet the signer; returns it.
    pub async fn activate_ca_root(&self) -> Result<i64, RotationError> {
        let waiting = self
            .ca_roots()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.activated_at_ms.is_none())
            .ok_or(RotationError::NothingToActivate)?;
        sqlx::query("UPDATE ca_roots SET activated_at_ms = $2 WHERE generation = $1 AND activated_at_ms IS NULL")
            .bind(waiting.generation)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
        Ok(waiting.generation)
    }

    /// Drops root `generation` from the trust bundle. Refused for the signer, and,
    /// unless `force`, while certificates it signed may still be in use: until a
    /// newer root has been signing for longer than `cert_ttl_ms`.
    pub async fn retire_ca_root(&self, generation: i64, cert_ttl_ms: i64, force: bool) -> Result<(), RotationError> {
        let roots = self.ca_roots().await?;
        let root = roots
            .iter()
            .find(|r| r.generation == generation)
            .ok_or(RotationError::NoSuchRoot(generation))?;
        let successor = roots
            .iter()
            .filter(|r| r.generation > root.generation)
            .filter_map(|r| r.activated_at_ms)
            .min();
        let Some(since) = successor else {
            return Err(RotationError::Signing(generation));
        };
        let since_ms = now_ms() - since;
        if !force && since_ms <= cert_ttl_ms {
            return Err(RotationError::StillInUse {
                generation,
                since_s: since_ms / 1000,
                ttl_s: cert_ttl_ms / 1000,
            });
        }
        sqlx::query("UPDATE ca_roots SET retired_at_ms = $2 WHERE generation = $1")
            .bind(generation)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::super::tests::{store_test, TestStore};
    use super::*;

    store_test!(
        a_root_is_added_trusted_then_activated_then_its_predecessor_retired,
        |s| {
            s.ensure_ca_root("ROOT-1", "KEY-1").await.unwrap();
            assert!(matches!(
                s.activate_ca_root().await,
                Err(RotationError::NothingToActivate)
            ));
            assert_eq!(s.add_ca_root("ROOT-2", "KEY-2").await.unwrap(), 2);
            let roots = s.ca_roots().await.unwrap();
            let states: Vec<(i64, bool)> = roots
                .iter()
                .map(|r| (r.generation, r.activated_at_ms.is_some()))
                .collect();
            assert_eq!(states, [(1, true), (2, false)], "trusted, not signing yet");
            // The only signer cannot go.
            assert!(matches!(
                s.retire_ca_root(1, 0, false).await,
                Err(RotationError::Signing(1))
            ));

            assert_eq!(s.activate_ca_root().await.unwrap(), 2);
            // Certificates of root 1 live an hour: too soon, unless forced.
            let hour = 3_600_000;
            assert!(matches!(
                s.retire_ca_root(1, hour, false).await,
                Err(RotationError::StillInUse { generation: 1, .. })
            ));
            assert!(matches!(
                s.retire_ca_root(2, 0, false).await,
                Err(RotationError::Signing(2))
            ));
            s.retire_ca_root(1, hour, true).await.unwrap();
            let left: Vec<i64> = s.ca_roots().await.unwrap().iter().map(|r| r.generation).collect();
            assert_eq!(left, [2]);
            assert!(matches!(
                s.retire_ca_root(1, 0, true).await,
                Err(RotationError::NoSuchRoot(1))
            ));
            // A retired number is never reused.
            assert_eq!(s.add_ca_root("ROOT-3", "KEY-3").await.unwrap(), 3);
        }
    );
}
