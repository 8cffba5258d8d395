//! Config documents: named files (any bytes, with a content type) per service, and
//! how they appear in the history (text stays readable, other bytes are base64).

use super::db::{Change, Precondition, Store, StoreError, WriteTx, Writer, CONFIG_KIND};
use base64::Engine;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredConfig {
    pub service: String,
    pub name: String,
    pub content_type: String,
    pub content: Vec<u8>,
    pub revision: u64,
    pub updated_at_ms: i64,
}

/// A `config_documents` row as both backends decode it.
#[derive(sqlx::FromRow)]
struct DbRow {
    service: String,
    name: String,
    content_type: String,
    content: Vec<u8>,
    revision: i64,
    updated_at_ms: i64,
}

const COLUMNS: &str = "service, name, content_type, content, revision, updated_at_ms";

impl From<DbRow> for StoredConfig {
    fn from(r: DbRow) -> Self {
        StoredConfig {
            service: r.service,
            name: r.name,
            content_type: r.content_type,
            content: r.content,
            revision: r.revision as u64,
            updated_at_ms: r.updated_at_ms,
        }
    }
}

/// A config document's content as a write or revert gives it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Content<'a> {
    pub content_type: &'a str,
    pub bytes: &'a [u8],
}

impl Store {
    pub async fn get_config(&self, service: &str, name: &str) -> Result<Option<StoredConfig>, StoreError> {
        Ok(sqlx::query_as::<_, DbRow>(&format!(
            "SELECT {COLUMNS} FROM config_documents WHERE service = $1 AND name = $2"
        ))
        .bind(service)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(StoredConfig::from))
    }

    pub async fn list_configs(&self, service: &str) -> Result<Vec<StoredConfig>, StoreError> {
        Ok(sqlx::query_as::<_, DbRow>(&format!(
            "SELECT {COLUMNS} FROM config_documents WHERE service = $1 ORDER BY name"
        ))
        .bind(service)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(StoredConfig::from)
        .collect())
    }

    pub async fn put_config(
        &self,
        service: &str,
        name: &str,
        content_type: &str,
        content: &[u8],
        expect: Precondition,
        actor: &str,
    ) -> Result<StoredConfig, StoreError> {
        let mut tx = self.begin_write().await?;
        let content = Content {
            content_type,
            bytes: content,
        };
        let stored = put_in(&mut tx, service, name, content, Writer::new(actor, expect)).await?;
        self.commit_revision(tx, stored.revision).await?;
        Ok(stored)
    }

    /// What [`Store::put_config`] would refuse for size, without writing (dry runs).
    pub async fn check_config_room(&self, service: &str, name: &str, size: usize) -> Result<(), StoreError> {
        within_service_budget(&self.pool, service, name, size).await
    }

    pub async fn delete_config(
        &self,
        service: &str,
        name: &str,
        expect: Precondition,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let revision = delete_in(&mut tx, service, name, Writer::new(actor, expect)).await?;
        self.commit_revision(tx, revision).await?;
        Ok(revision)
    }
}

/// The stored row, read inside a write so the precondition sees what it replaces.
async fn current(tx: &mut WriteTx, service: &str, name: &str) -> Result<Option<DbRow>, StoreError> {
    Ok(sqlx::query_as::<_, DbRow>(&format!(
        "SELECT {COLUMNS} FROM config_documents WHERE service = $1 AND name = $2"
    ))
    .bind(service)
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Puts the document inside `tx`.
pub(super) async fn put_in(
    tx: &mut WriteTx,
    service: &str,
    name: &str,
    content: Content<'_>,
    by: Writer<'_>,
) -> Result<StoredConfig, StoreError> {
    let before = current(tx, service, name).await?;
    by.expect.check(before.as_ref().map(|r| r.revision as u64))?;
    within_service_budget(&mut **tx, service, name, content.bytes.len()).await?;
    let before = before.map(|r| history_doc(&r.content_type, &r.content));
    let after = history_doc(content.content_type, content.bytes);
    let now = super::db::now_ms();
    let revision = Store::insert_revision(
        tx,
        &Change {
            by,
            now,
            kind: CONFIG_KIND,
            service,
            name,
            operation: "put",
            before: before.as_deref(),
            after: Some(&after),
        },
    )
    .await?;
    sqlx::query(
        "INSERT INTO config_documents (service, name, content_type, content, revision, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (service, name) DO UPDATE SET content_type = excluded.content_type,
             content = excluded.content, revision = excluded.revision, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(service)
    .bind(name)
    .bind(content.content_type)
    .bind(content.bytes.to_vec())
    .bind(revision as i64)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(StoredConfig {
        service: service.to_owned(),
        name: name.to_owned(),
        content_type: content.content_type.to_owned(),
        content: content.bytes.to_vec(),
        revision,
        updated_at_ms: now,
    })
}

/// Refuses a write that would take the service's config documents past their
/// combined size or count, so that its snapshot always fits one control-stream
/// message. Read inside the write: writers are serialized, so two writes cannot both
/// pass on the same room.
async fn within_service_budget<'e, E>(db: E, service: &str, name: &str, size: usize) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    use outrider_policy::limits::{SERVICE_CONFIG_MAX_BYTES, SERVICE_CONFIG_MAX_DOCUMENTS};
    let (others, bytes): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(content)), 0) FROM config_documents WHERE service = $1 AND name <> $2",
    )
    .bind(service)
    .bind(name)
    .fetch_one(db)
    .await?;
    let (others, bytes) = (others.max(0) as usize, bytes.max(0) as usize);
    if others >= SERVICE_CONFIG_MAX_DOCUMENTS {
        return Err(StoreError::TooLarge(format!(
            "service {service:?} already has {others} other config documents; a service may have at most {SERVICE_CONFIG_MAX_DOCUMENTS}"
        )));
    }
    if bytes + size > SERVICE_CONFIG_MAX_BYTES {
        return Err(StoreError::TooLarge(format!(
            "service {service:?}'s config documents would take {} bytes together; the limit is {SERVICE_CONFIG_MAX_BYTES}",
            bytes + size
        )));
    }
    Ok(())
}

/// Deletes the document inside `tx` (`NotFound` when there is none); returns the revision.
pub(super) async fn delete_in(tx: &mut WriteTx, service: &str, name: &str, by: Writer<'_>) -> Result<u64, StoreError> {
    let before = current(tx, service, name).await?.ok_or(StoreError::NotFound)?;
    by.expect.check(Some(before.revision as u64))?;
    let before = history_doc(&before.content_type, &before.content);
    let revision = Store::insert_revision(
        tx,
        &Change {
            by,
            now: super::db::now_ms(),
            kind: CONFIG_KIND,
            service,
            name,
            operation: "delete",
            before: Some(&before),
            after: None,
        },
    )
    .await?;
    sqlx::query("DELETE FROM config_documents WHERE service = $1 AND name = $2")
        .bind(service)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(revision)
}

/// How a config document appears in the history: text stays readable, anything else
/// is base64.
fn history_doc(content_type: &str, content: &[u8]) -> String {
    let v = match std::str::from_utf8(content) {
        Ok(text) => serde_json::json!({"contentType": content_type, "text": text}),
        Err(_) => serde_json::json!({
            "contentType": content_type,
            "base64": base64::engine::general_purpose::STANDARD.encode(content),
        }),
    };
    v.to_string()
}

/// The content type and bytes a history document records.
pub(super) fn from_history_doc(doc: &serde_json::Value) -> Result<(String, Vec<u8>), StoreError> {
    let ct = doc
        .get("contentType")
        .and_then(|v| v.as_str())
        .unwrap_or("application/octet-stream");
    if let Some(t) = doc.get("text").and_then(|v| v.as_str()) {
        return Ok((ct.to_owned(), t.as_bytes().to_vec()));
    }
    let b = doc
        .get("base64")
        .and_then(|v| v.as_str())
        .ok_or_else(|| StoreError::Corrupt("config history without content".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((ct.to_owned(), bytes))
}
