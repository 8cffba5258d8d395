//! The history: one row per change with actor and documents before and after, the
//! reads that follow it (catch-up, per-service revision) and revert, which writes the
//! inverse of a change as a new revision in one transaction.

use super::db::{parse_json, Precondition, Store, StoreError, WriteTx, Writer, CONFIG_KIND, SECRET_KIND};
use super::{configs, policies};
use outrider_policy::PolicyKind;
use serde::Serialize;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSummary {
    pub revision: u64,
    #[serde(skip)]
    pub created_at_ms: i64,
    pub actor: String,
    pub kind: String,
    pub service: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub operation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverts: Option<u64>,
}

/// One change with the document before and after it (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRecord {
    pub summary: RevisionSummary,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A `revisions` row without its documents, as both backends decode it.
#[derive(sqlx::FromRow)]
struct SummaryRow {
    revision: i64,
    created_at_ms: i64,
    actor: String,
    kind: String,
    service: String,
    name: String,
    operation: String,
    reverts: Option<i64>,
}

/// A whole `revisions` row.
#[derive(sqlx::FromRow)]
struct RecordRow {
    #[sqlx(flatten)]
    summary: SummaryRow,
    before_doc: Option<String>,
    after_doc: Option<String>,
}

const SUMMARY_COLUMNS: &str = "revision, created_at_ms, actor, kind, service, name, operation, reverts";

impl From<SummaryRow> for RevisionSummary {
    fn from(r: SummaryRow) -> Self {
        RevisionSummary {
            revision: r.revision as u64,
            created_at_ms: r.created_at_ms,
            actor: r.actor,
            kind: r.kind,
            service: r.service,
            name: r.name,
            operation: r.operation,
            reverts: r.reverts.map(|v| v as u64),
        }
    }
}

impl TryFrom<RecordRow> for RevisionRecord {
    type Error = StoreError;
    fn try_from(r: RecordRow) -> Result<Self, StoreError> {
        Ok(RevisionRecord {
            before: r.before_doc.as_deref().map(parse_json).transpose()?,
            after: r.after_doc.as_deref().map(parse_json).transpose()?,
            summary: r.summary.into(),
        })
    }
}

fn record_query() -> String {
    format!("SELECT {SUMMARY_COLUMNS}, before_doc, after_doc FROM revisions WHERE revision = $1")
}

impl Store {
    /// The newest revision in the store (0 when there is none).
    pub async fn latest_revision(&self) -> Result<u64, StoreError> {
        let r: Option<i64> = sqlx::query_scalar("SELECT MAX(revision) FROM revisions")
            .fetch_one(&self.pool)
            .await?;
        Ok(r.unwrap_or(0) as u64)
    }

    /// The newest revision that touched `service` (0 when none): the revision of the
    /// service's snapshot. Monotonic even when documents are deleted.
    pub async fn service_revision(&self, service: &str) -> Result<u64, StoreError> {
        let r: Option<i64> = sqlx::query_scalar("SELECT MAX(revision) FROM revisions WHERE service = $1")
            .bind(service)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.unwrap_or(0) as u64)
    }

    /// Services changed after `after`, with the newest revision seen: the catch-up read
    /// that makes a missed notification harmless.
    pub async fn changes_since(&self, after: u64) -> Result<(Vec<String>, u64), StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT service, MAX(revision) AS rev FROM revisions WHERE revision > $1 GROUP BY service")
                .bind(after as i64)
                .fetch_all(&self.pool)
                .await?;
        let newest = rows.iter().map(|(_, rev)| *rev as u64).fold(after, u64::max);
        Ok((rows.into_iter().map(|(service, _)| service).collect(), newest))
    }

    pub async fn list_revisions(&self, service: Option<&str>, limit: u32) -> Result<Vec<RevisionSummary>, StoreError> {
        Ok(sqlx::query_as::<_, SummaryRow>(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM revisions
             WHERE ($1 = '' OR service = $1) ORDER BY revision DESC LIMIT $2"
        ))
        .bind(service.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(RevisionSummary::from)
        .collect())
    }

    pub async fn get_revision(&self, revision: u64) -> Result<Option<RevisionRecord>, StoreError> {
        sqlx::query_as::<_, RecordRow>(&record_query())
            .bind(revision as i64)
            .fetch_optional(&self.pool)
            .await?
            .map(RevisionRecord::try_from)
            .transpose()
    }

    /// Restores what revision `n` changed to its state before `n`, as a new revision
    /// (a secret's change is refused: its value is not in the history),
    /// whose history line carries `reverts = n`: all in one transaction, so a revert is
    /// either wholly recorded or not at all.
    pub async fn revert(&self, n: u64, actor: &str) -> Result<RevisionRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let rec = record_in(&mut tx, n).await?.ok_or(StoreError::NotFound)?;
        let s = &rec.summary;
        if s.kind == SECRET_KIND {
            // The history holds a secret's name and size, never its value: there is
            // nothing to restore it from.
            return Err(StoreError::Refused(format!(
                "revision {n} changed secret {:?} of service {:?}; the history does not keep secret values, so it cannot be reverted: set the secret again",
                s.name, s.service
            )));
        }
        let by = Writer {
            actor,
            expect: Precondition::None,
            reverts: Some(n),
        };
        let revision = if s.kind == CONFIG_KIND {
            match &rec.before {
                Some(doc) => {
                    let (content_type, bytes) = configs::from_history_doc(doc)?;
                    let content = configs::Content {
                        content_type: &content_type,
                        bytes: &bytes,
                    };
                    configs::put_in(&mut tx, &s.service, &s.name, content, by)
                        .await?
                        .revision
                }
                None => configs::delete_in(&mut tx, &s.service, &s.name, by).await?,
            }
        } else {
            let kind: PolicyKind = s
                .kind
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("kind {}", s.kind)))?;
            match &rec.before {
                Some(doc) => policies::put_in(&mut tx, &s.service, kind, doc, by).await?.revision,
                None => policies::delete_in(&mut tx, &s.service, kind, by).await?,
            }
        };
        // Read back before the commit: once committed, nothing can fail the revert.
        let written = record_in(&mut tx, revision).await?.ok_or(StoreError::NotFound)?;
        self.commit_revision(tx, revision).await?;
        Ok(written)
    }
}

/// Revision `n` as the write transaction sees it.
async fn record_in(tx: &mut WriteTx, n: u64) -> Result<Option<RevisionRecord>, StoreError> {
    sqlx::query_as::<_, RecordRow>(&record_query())
        .bind(n as i64)
        .fetch_optional(&mut **tx)
        .await?
        .map(RevisionRecord::try_from)
        .transpose()
}
