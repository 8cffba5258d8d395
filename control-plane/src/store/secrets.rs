//! Secrets: per-service values kept sealed (see `crate::vault`) and read back only
//! to build snapshots. Every write goes through the revision path, so the history
//! records who changed which secret and when, but its documents hold the name and
//! size only: never the value, nor a hash of it (a hash of a short password is as
//! good as the password).

use super::db::{Change, Precondition, Store, StoreError, WriteTx, Writer, SECRET_KIND};

/// What anyone may know about a stored secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub service: String,
    pub name: String,
    /// The value's length in bytes.
    pub size: u64,
    pub revision: u64,
    pub updated_at_ms: i64,
}

/// A secret with its value, for the snapshot of the service that owns it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue {
    pub name: String,
    pub value: Vec<u8>,
    pub revision: u64,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("size", &self.value.len())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct MetaRow {
    service: String,
    name: String,
    size: i64,
    revision: i64,
    updated_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    name: String,
    sealed: Vec<u8>,
    key_id: String,
    revision: i64,
}

const META_COLUMNS: &str = "service, name, size, revision, updated_at_ms";

impl From<MetaRow> for SecretMeta {
    fn from(r: MetaRow) -> Self {
        SecretMeta {
            service: r.service,
            name: r.name,
            size: r.size.max(0) as u64,
            revision: r.revision as u64,
            updated_at_ms: r.updated_at_ms,
        }
    }
}

impl Store {
    /// Whether secrets can be written and delivered (a key is configured).
    pub fn has_secrets_key(&self) -> bool {
        self.secrets_key.is_some()
    }

    pub async fn get_secret(&self, service: &str, name: &str) -> Result<Option<SecretMeta>, StoreError> {
        Ok(sqlx::query_as::<_, MetaRow>(&format!(
            "SELECT {META_COLUMNS} FROM secrets WHERE service = $1 AND name = $2"
        ))
        .bind(service)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(SecretMeta::from))
    }

    pub async fn list_secrets(&self, service: &str) -> Result<Vec<SecretMeta>, StoreError> {
        Ok(sqlx::query_as::<_, MetaRow>(&format!(
            "SELECT {META_COLUMNS} FROM secrets WHERE service = $1 ORDER BY name"
        ))
        .bind(service)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(SecretMeta::from)
        .collect())
    }

    /// Seals and stores `value` (a new revision; the history holds name and size).
    /// Refused with [`StoreError::SecretsKeyMissing`] when no key is configured.
    pub async fn put_secret(
        &self,
        service: &str,
        name: &str,
        value: &[u8],
        expect: Precondition,
        actor: &str,
    ) -> Result<SecretMeta, StoreError> {
        let key = self.secrets_key.as_ref().ok_or(StoreError::SecretsKeyMissing)?;
        let sealed = key
            .seal(service, name, value)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let before = current(&mut tx, service, name).await?;
        expect.check(before.as_ref().map(|r| r.revision as u64))?;
        within_service_budget(&mut tx, service, name).await?;
        let now = super::db::now_ms();
        let before = before.map(|r| history_doc(&r.name, r.size));
        let after = history_doc(name, value.len() as i64);
        let revision = Store::insert_revision(
            &mut tx,
            &Change {
                by: Writer::new(actor, expect),
                now,
                kind: SECRET_KIND,
                service,
                name,
                operation: "put",
                before: before.as_deref(),
                after: Some(&after),
            },
        )
        .await?;
        sqlx::query(
            "INSERT INTO secrets (service, name, sealed, key_id, size, revision, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (service, name) DO UPDATE SET sealed = excluded.sealed, key_id = excluded.key_id,
                 size = excluded.size, revision = excluded.revision, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(service)
        .bind(name)
        .bind(sealed)
        .bind(key.id())
        .bind(value.len() as i64)
        .bind(revision as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.commit_revision(tx, revision).await?;
        Ok(SecretMeta {
            service: service.to_owned(),
            name: name.to_owned(),
            size: value.len() as u64,
            revision,
            updated_at_ms: now,
        })
    }

    /// What [`Store::put_secret`] would refuse for the service's count, without writing.
    pub async fn check_secret_room(&self, service: &str, name: &str) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        within_service_budget(&mut conn, service, name).await
    }

    /// Deletes a secret (no key needed: nothing is opened); returns the revision.
    pub async fn delete_secret(
        &self,
        service: &str,
        name: &str,
        expect: Precondition,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let before = current(&mut tx, service, name).await?.ok_or(StoreError::NotFound)?;
        expect.check(Some(before.revision as u64))?;
        let before = history_doc(&before.name, before.size);
        let revision = Store::insert_revision(
            &mut tx,
            &Change {
                by: Writer::new(actor, expect),
                now: super::db::now_ms(),
                kind: SECRET_KIND,
                service,
                name,
                operation: "delete",
                before: Some(&before),
                after: None,
            },
        )
        .await?;
        sqlx::query("DELETE FROM secrets WHERE service = $1 AND name = $2")
            .bind(service)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.commit_revision(tx, revision).await?;
        Ok(revision)
    }

    /// Every secret of `service` with its value, for its snapshot. All or nothing: a
    /// value that does not open (no key, another key, an altered row) fails the read
    /// with [`StoreError::SecretsKeyMissing`] or [`StoreError::SecretUnreadable`],
    /// never a wrong value.
    pub async fn secret_values(&self, service: &str) -> Result<Vec<SecretValue>, StoreError> {
        let rows = sqlx::query_as::<_, SealedRow>(
            "SELECT name, sealed, key_id, revision FROM secrets WHERE service = $1 ORDER BY name",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.secrets_key.as_ref().ok_or(StoreError::SecretsKeyMissing)?;
        rows.into_iter()
            .map(|r| {
                let unreadable = || StoreError::SecretUnreadable {
                    service: service.to_owned(),
                    name: r.name.clone(),
                    sealed_with: r.key_id.clone(),
                    configured: key.id().to_owned(),
                };
                if r.key_id != key.id() {
                    return Err(unreadable());
                }
                let value = key.open(service, &r.name, &r.sealed).map_err(|_| unreadable())?;
                Ok(SecretValue {
                    name: r.name,
                    value,
                    revision: r.revision as u64,
                })
            })
            .collect()
    }

    /// How many stored secrets were sealed with a key other than the configured one
    /// (all of them when none is configured), for the start-up check.
    pub async fn secrets_sealed_with_other_keys(&self) -> Result<u64, StoreError> {
        let id = self.secrets_key.as_ref().map_or("", |k| k.id());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM secrets WHERE key_id <> $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }
}

#[derive(sqlx::FromRow)]
struct CurrentRow {
    name: String,
    size: i64,
    revision: i64,
}

/// The stored row, read inside a write so the precondition sees what it replaces.
async fn current(tx: &mut WriteTx, service: &str, name: &str) -> Result<Option<CurrentRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, CurrentRow>("SELECT name, size, revision FROM secrets WHERE service = $1 AND name = $2")
            .bind(service)
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// Refuses a new secret past the service's count, so its snapshot stays within
/// `outrider_policy::limits::SNAPSHOT_MAX_BYTES` (each value is bounded by the API).
async fn within_service_budget(conn: &mut sqlx::AnyConnection, service: &str, name: &str) -> Result<(), StoreError> {
    use outrider_policy::limits::SERVICE_SECRETS_MAX;
    let others: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM secrets WHERE service = $1 AND name <> $2")
        .bind(service)
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    if others.max(0) as usize >= SERVICE_SECRETS_MAX {
        return Err(StoreError::TooLarge(format!(
            "service {service:?} already has {others} other secrets; a service may have at most {SERVICE_SECRETS_MAX}"
        )));
    }
    Ok(())
}

/// How a secret appears in the history: its name and size, nothing derived from
/// the value.
fn history_doc(name: &str, size: i64) -> String {
    serde_json::json!({"name": name, "size": size}).to_string()
}
