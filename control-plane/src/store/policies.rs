//! Policy documents (routing, rate-limit, logging, authorization), one per service and kind, stored
//! as JSON: reads, and the writes that take a revision for every put or delete.

use super::db::{parse_json, Change, Precondition, Store, StoreError, WriteTx, Writer};
use outrider_policy::PolicyKind;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    pub service: String,
    pub kind: PolicyKind,
    pub document: serde_json::Value,
    pub revision: u64,
    pub updated_at_ms: i64,
}

/// A `policies` row as both backends decode it.
#[derive(sqlx::FromRow)]
struct DbRow {
    service: String,
    kind: String,
    document: String,
    revision: i64,
    updated_at_ms: i64,
}

const COLUMNS: &str = "service, kind, document, revision, updated_at_ms";

impl TryFrom<DbRow> for StoredPolicy {
    type Error = StoreError;
    fn try_from(r: DbRow) -> Result<Self, StoreError> {
        Ok(StoredPolicy {
            kind: r
                .kind
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("unknown kind {}", r.kind)))?,
            document: parse_json(&r.document)?,
            service: r.service,
            revision: r.revision as u64,
            updated_at_ms: r.updated_at_ms,
        })
    }
}

impl Store {
    pub async fn get_policy(&self, service: &str, kind: PolicyKind) -> Result<Option<StoredPolicy>, StoreError> {
        sqlx::query_as::<_, DbRow>(&format!(
            "SELECT {COLUMNS} FROM policies WHERE service = $1 AND kind = $2"
        ))
        .bind(service)
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(StoredPolicy::try_from)
        .transpose()
    }

    pub async fn list_policies(&self, service: &str) -> Result<Vec<StoredPolicy>, StoreError> {
        sqlx::query_as::<_, DbRow>(&format!(
            "SELECT {COLUMNS} FROM policies WHERE service = $1 ORDER BY kind"
        ))
        .bind(service)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(StoredPolicy::try_from)
        .collect()
    }

    /// Stores `document` (already validated) as the service's policy of `kind`.
    pub async fn put_policy(
        &self,
        service: &str,
        kind: PolicyKind,
        document: &serde_json::Value,
        expect: Precondition,
        actor: &str,
    ) -> Result<StoredPolicy, StoreError> {
        let mut tx = self.begin_write().await?;
        let stored = put_in(&mut tx, service, kind, document, Writer::new(actor, expect)).await?;
        self.commit_revision(tx, stored.revision).await?;
        Ok(stored)
    }

    /// Deletes the policy; returns the revision of the deletion.
    pub async fn delete_policy(
        &self,
        service: &str,
        kind: PolicyKind,
        expect: Precondition,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let revision = delete_in(&mut tx, service, kind, Writer::new(actor, expect)).await?;
        self.commit_revision(tx, revision).await?;
        Ok(revision)
    }
}

/// The stored raw row, read inside a write so the precondition sees what it replaces.
async fn current(tx: &mut WriteTx, service: &str, kind: PolicyKind) -> Result<Option<DbRow>, StoreError> {
    Ok(sqlx::query_as::<_, DbRow>(&format!(
        "SELECT {COLUMNS} FROM policies WHERE service = $1 AND kind = $2"
    ))
    .bind(service)
    .bind(kind.as_str())
    .fetch_optional(&mut **tx)
    .await?)
}

/// Puts the policy inside `tx`.
pub(super) async fn put_in(
    tx: &mut WriteTx,
    service: &str,
    kind: PolicyKind,
    document: &serde_json::Value,
    by: Writer<'_>,
) -> Result<StoredPolicy, StoreError> {
    let before = current(tx, service, kind).await?;
    by.expect.check(before.as_ref().map(|r| r.revision as u64))?;
    let after = document.to_string();
    let now = super::db::now_ms();
    let revision = Store::insert_revision(
        tx,
        &Change {
            now,
            by,
            kind: kind.as_str(),
            service,
            name: "",
            operation: "put",
            before: before.as_ref().map(|r| r.document.as_str()),
            after: Some(&after),
        },
    )
    .await?;
    sqlx::query(
        "INSERT INTO policies (service, kind, document, revision, updated_at_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (service, kind) DO UPDATE SET document = excluded.document,
             revision = excluded.revision, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(service)
    .bind(kind.as_str())
    .bind(&after)
    .bind(revision as i64)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(StoredPolicy {
        service: service.to_owned(),
        kind,
        document: document.clone(),
        revision,
        updated_at_ms: now,
    })
}

/// Deletes the policy inside `tx` (`NotFound` when there is none); returns the revision.
pub(super) async fn delete_in(
    tx: &mut WriteTx,
    service: &str,
    kind: PolicyKind,
    by: Writer<'_>,
) -> Result<u64, StoreError> {
    let before = current(tx, service, kind).await?.ok_or(StoreError::NotFound)?;
    by.expect.check(Some(before.revision as u64))?;
    let revision = Store::insert_revision(
        tx,
        &Change {
            now: super::db::now_ms(),
            by,
            kind: kind.as_str(),
            service,
            name: "",
            operation: "delete",
            before: Some(&before.document),
            after: None,
        },
    )
    .await?;
    sqlx::query("DELETE FROM policies WHERE service = $1 AND kind = $2")
        .bind(service)
        .bind(kind.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(revision)
}
