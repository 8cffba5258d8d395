//! The CA's roots (see `crate::ca`) and the certificate each sidecar was last issued.
//!
//! A root's private key is sealed with the secrets key when one is configured (always on
//! the embedded store), as secrets are: a copy of the database alone does not let anyone
//! mint mesh identities. Without a key (PostgreSQL with no `OUTRIDER_SECRETS_KEY_FILE`)
//! it is stored as PEM, and sealed in place the first time a key is there.

use base64::Engine as _;

use super::db::{now_ms, Store, StoreError};
use crate::vault::SecretsKey;

/// How a sealed root key starts in `ca_roots.key_pem`: then the sealing key's id, `:`,
/// and base64 of what [`crate::vault::SecretsKey::seal`] made.
const SEALED: &str = "outrider-sealed-v1:";
/// The sealed value is bound to its root: a key moved to another row does not open.
const SEAL_SCOPE: &str = "ca-root";

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
    /// `key_pem` as it is stored for root `generation`: sealed if there is a key.
    fn seal_root_key(&self, generation: i64, key_pem: &str) -> Result<String, StoreError> {
        let Some(key) = &self.secrets_key else {
            return Ok(key_pem.to_owned());
        };
        let sealed = key
            .seal(SEAL_SCOPE, &generation.to_string(), key_pem.as_bytes())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(sealed);
        Ok(format!("{SEALED}{}:{b64}", key.id()))
    }

    /// The PEM of what [`Store::seal_root_key`] stored.
    fn open_root_key(&self, generation: i64, stored: &str) -> Result<String, StoreError> {
        open_root_key(self.secrets_key.as_deref(), generation, stored)
    }

    /// Seals, in place, every root key still stored as PEM, if there is a secrets key
    /// (a store that had none before, or older than sealing); how many.
    pub async fn seal_ca_root_keys(&self) -> Result<usize, StoreError> {
        if self.secrets_key.is_none() {
            return Ok(0);
        }
        self.rewrite_root_keys(|_, stored| (!stored.starts_with(SEALED)).then(|| Ok(stored.to_owned())))
            .await
    }

    /// Re-seals with the configured secrets key every root key sealed with `old` (after
    /// a change of secrets key); how many. Needs a configured key.
    pub async fn reseal_ca_root_keys(&self, old: &SecretsKey) -> Result<usize, StoreError> {
        self.secrets_key.as_ref().ok_or(StoreError::SecretsKeyMissing)?;
        let prefix = format!("{SEALED}{}:", old.id());
        self.rewrite_root_keys(|generation, stored| {
            stored
                .starts_with(&prefix)
                .then(|| open_root_key(Some(old), generation, stored))
        })
        .await
    }

    /// Seals again, with the configured key, the PEM `pem_of` gives for a row (`None`:
    /// the row stays); how many rows changed. Each row is rewritten only if it still
    /// holds what was read, so replicas doing this at once agree.
    async fn rewrite_root_keys(
        &self,
        pem_of: impl Fn(i64, &str) -> Option<Result<String, StoreError>>,
    ) -> Result<usize, StoreError> {
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT generation, key_pem FROM ca_roots")
            .fetch_all(&self.pool)
            .await?;
        let mut n = 0;
        for (generation, stored) in rows {
            let Some(pem) = pem_of(generation, &stored).transpose()? else {
                continue;
            };
            sqlx::query("UPDATE ca_roots SET key_pem = $1 WHERE generation = $2 AND key_pem = $3")
                .bind(self.seal_root_key(generation, &pem)?)
                .bind(generation)
                .bind(&stored)
                .execute(&self.pool)
                .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Stores `cert_pem`/`key_pem` as the first root unless one exists, then returns
    /// every trusted root, oldest first. Replicas starting at once each offer their own
    /// root; the primary key lets exactly one in and all of them read back that one.
    pub async fn ensure_ca_root(&self, cert_pem: &str, key_pem: &str) -> Result<Vec<CaRoot>, StoreError> {
        sqlx::query(
            "INSERT INTO ca_roots (generation, cert_pem, key_pem, created_at_ms, activated_at_ms)
             VALUES (1, $1, $2, $3, $3) ON CONFLICT DO NOTHING",
        )
        .bind(cert_pem)
        .bind(self.seal_root_key(1, key_pem)?)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.ca_roots().await
    }

    /// Every root not retired, oldest first: the trust bundle. The newest activated
    /// one signs.
    pub async fn ca_roots(&self) -> Result<Vec<CaRoot>, StoreError> {
        sqlx::query_as::<_, CaRoot>(
            "SELECT generation, cert_pem, key_pem, created_at_ms, activated_at_ms FROM ca_roots
             WHERE retired_at_ms IS NULL ORDER BY generation",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|mut r| {
            r.key_pem = self.open_root_key(r.generation, &r.key_pem)?;
            Ok(r)
        })
        .collect()
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
            .bind(self.seal_root_key(next, key_pem)?)
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

/// The PEM of a stored root key: as is if it is PEM, else opened with `key`.
fn open_root_key(key: Option<&SecretsKey>, generation: i64, stored: &str) -> Result<String, StoreError> {
    let Some(rest) = stored.strip_prefix(SEALED) else {
        return Ok(stored.to_owned());
    };
    let (sealed_with, b64) = rest.split_once(':').unwrap_or((rest, ""));
    let unreadable = |configured: &str| {
        StoreError::RootKeyUnreadable(format!(
            "the key of CA root {generation} is sealed with secrets key id {sealed_with}, and {configured}"
        ))
    };
    let key = key.ok_or_else(|| unreadable("no secrets key is configured (OUTRIDER_SECRETS_KEY_FILE)"))?;
    let wrong = || unreadable(&format!("it does not open with the configured one (id {})", key.id()));
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| wrong())?;
    let pem = key
        .open(SEAL_SCOPE, &generation.to_string(), &sealed)
        .map_err(|_| wrong())?;
    String::from_utf8(pem).map_err(|_| wrong())
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

    fn keyed(s: &Store, byte: u8) -> Store {
        s.clone()
            .with_secrets_key(Some(crate::vault::SecretsKey::from_bytes(&[byte; 32])))
    }

    async fn stored_keys(s: &Store) -> Vec<String> {
        sqlx::query_as::<_, (String,)>("SELECT key_pem FROM ca_roots ORDER BY generation")
            .fetch_all(&s.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(k,)| k)
            .collect()
    }

    store_test!(
        root_keys_are_stored_sealed_with_the_secrets_key_and_read_back_as_pem,
        |s| {
            // Written before there was a key: PEM, sealed in place once one is there.
            s.ensure_ca_root("ROOT-1", "KEY-ONE").await.unwrap();
            assert_eq!(stored_keys(s).await, ["KEY-ONE"]);
            let k = keyed(s, 1);
            assert_eq!(k.seal_ca_root_keys().await.unwrap(), 1);
            assert_eq!(k.seal_ca_root_keys().await.unwrap(), 0, "sealed once");
            k.add_ca_root("ROOT-2", "KEY-TWO").await.unwrap();
            let stored = stored_keys(s).await;
            assert!(
                stored.iter().all(|k| k.starts_with(SEALED) && !k.contains("KEY-")),
                "{stored:?}"
            );
            let keys: Vec<String> = k.ca_roots().await.unwrap().into_iter().map(|r| r.key_pem).collect();
            assert_eq!(keys, ["KEY-ONE", "KEY-TWO"]);

            // Without the key, or with another, no root reads: never a wrong key.
            for other in [s.clone(), keyed(s, 2)] {
                let err = other.ca_roots().await.unwrap_err().to_string();
                assert!(
                    err.contains("CA root 1")
                        && err.contains(&crate::vault::SecretsKey::from_bytes(&[1; 32]).id().to_string()),
                    "{err}"
                );
            }
            // A sealed key moved to another root's row does not open there.
            sqlx::query("UPDATE ca_roots SET key_pem = (SELECT key_pem FROM ca_roots WHERE generation = 1) WHERE generation = 2")
                .execute(&s.pool)
                .await
                .unwrap();
            let err = k.ca_roots().await.unwrap_err().to_string();
            assert!(err.contains("CA root 2"), "{err}");
        }
    );

    store_test!(
        after_a_change_of_secrets_key_the_root_keys_are_resealed_from_the_old_one,
        |s| {
            let (old, new) = (keyed(s, 1), keyed(s, 2));
            old.ensure_ca_root("ROOT-1", "KEY-ONE").await.unwrap();
            old.add_ca_root("ROOT-2", "KEY-TWO").await.unwrap();
            assert!(new.ca_roots().await.is_err(), "sealed with the old key");
            let from = crate::vault::SecretsKey::from_bytes(&[1; 32]);
            assert_eq!(new.reseal_ca_root_keys(&from).await.unwrap(), 2);
            let keys: Vec<String> = new.ca_roots().await.unwrap().into_iter().map(|r| r.key_pem).collect();
            assert_eq!(keys, ["KEY-ONE", "KEY-TWO"]);
            assert!(old.ca_roots().await.is_err(), "no longer the old key's");
            assert_eq!(new.reseal_ca_root_keys(&from).await.unwrap(), 0);
        }
    );
}
