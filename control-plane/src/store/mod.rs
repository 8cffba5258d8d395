//! The policy store: PostgreSQL in production, an embedded SQLite file otherwise.
//!
//! One set of queries serves both backends through `sqlx::Any` (numbered `$n`
//! parameters work on both, all integers are BIGINT, times are epoch milliseconds), and
//! one test suite proves the behaviours on each. Every write takes the next global
//! revision and records the change in `revisions` inside the same transaction.

mod canary;
mod fleet;
mod propagation;
mod routing;
mod tokens;
mod types;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dashboard;

pub use canary::RolloutRow;
pub use propagation::Propagation;
pub use tokens::{Role, TokenInfo};
pub use types::*;

use outrider_policy::PolicyKind;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Serializes writers on PostgreSQL so that revisions commit in the order they were
/// taken: a reader catching up with `revision > n` then never skips a slower commit.
const WRITE_LOCK_KEY: i64 = 0x6f75_7472_6964;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    /// `If-Match` named a revision that is no longer current.
    #[error("precondition failed: current revision is {current:?}")]
    PreconditionFailed { current: Option<u64> },
    #[error("stored document is corrupt: {0}")]
    Corrupt(String),
}

/// The database handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

/// What a write expects to find (from `If-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    #[default]
    None,
    /// The document must exist (`If-Match: *`).
    Exists,
    /// The document's current revision must be this one.
    Revision(u64),
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Opens the store selected by `database_url` (a `postgres://` URL), or the
    /// embedded SQLite file `<data_dir>/outrider.db` when there is none, and runs that
    /// backend's migrations.
    pub async fn open(database_url: Option<&str>, data_dir: &Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        match database_url.filter(|u| !u.is_empty()) {
            Some(url) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await?;
                PG_MIGRATIONS.run(&pool).await?;
                Ok(Self {
                    pool,
                    backend: Backend::Postgres,
                    url: url.to_owned(),
                })
            }
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                let file = data_dir.join("outrider.db");
                let url = format!("sqlite://{}?mode=rwc", file.display());
                // One connection: SQLite has one writer anyway, and a single connection
                // rules out SQLITE_BUSY between our own transactions.
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                            sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                            sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?;
                SQLITE_MIGRATIONS.run(&pool).await?;
                Ok(Self {
                    pool,
                    backend: Backend::Sqlite,
                    url,
                })
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection URL (PostgreSQL: used to LISTEN for other replicas' changes).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Commits a write that took `revision`, telling the other replicas (PostgreSQL).
    async fn commit_revision(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        revision: u64,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            // Delivered at commit, so listeners never see a change before it is visible.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(format!("revision:{revision}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- policies ------------------------------------------------------------------

    pub async fn get_policy(&self, service: &str, kind: PolicyKind) -> Result<Option<StoredPolicy>, StoreError> {
        let row = sqlx::query(
            "SELECT service, kind, document, revision, updated_at_ms FROM policies WHERE service = $1 AND kind = $2",
        )
        .bind(service)
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| policy_from_row(&r)).transpose()
    }

    pub async fn list_policies(&self, service: &str) -> Result<Vec<StoredPolicy>, StoreError> {
        let rows = sqlx::query(
            "SELECT service, kind, document, revision, updated_at_ms FROM policies WHERE service = $1 ORDER BY kind",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_from_row).collect()
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
        let current = sqlx::query("SELECT document, revision FROM policies WHERE service = $1 AND kind = $2")
            .bind(service)
            .bind(kind.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let (before, current_rev) = match &current {
            Some(r) => (
                Some(r.try_get::<String, _>("document")?),
                Some(r.try_get::<i64, _>("revision")? as u64),
            ),
            None => (None, None),
        };
        check(expect, current_rev)?;
        let after = document.to_string();
        let now = now_ms();
        let revision = insert_revision(
            &mut tx,
            now,
            actor,
            kind.as_str(),
            service,
            "",
            "put",
            before.as_deref(),
            Some(&after),
            None,
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
        .execute(&mut *tx)
        .await?;
        self.commit_revision(tx, revision).await?;
        Ok(StoredPolicy {
            service: service.to_owned(),
            kind,
            document: document.clone(),
            revision,
            updated_at_ms: now,
        })
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
        let current = sqlx::query("SELECT document, revision FROM policies WHERE service = $1 AND kind = $2")
            .bind(service)
            .bind(kind.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let before: String = current.try_get("document")?;
        check(expect, Some(current.try_get::<i64, _>("revision")? as u64))?;
        let revision = insert_revision(
            &mut tx,
            now_ms(),
            actor,
            kind.as_str(),
            service,
            "",
            "delete",
            Some(&before),
            None,
            None,
        )
        .await?;
        sqlx::query("DELETE FROM policies WHERE service = $1 AND kind = $2")
            .bind(service)
            .bind(kind.as_str())
            .execute(&mut *tx)
            .await?;
        self.commit_revision(tx, revision).await?;
        Ok(revision)
    }

    // ---- config documents ------------------------------------------------------------

    pub async fn get_config(&self, service: &str, name: &str) -> Result<Option<StoredConfig>, StoreError> {
        let row = sqlx::query(
            "SELECT service, name, content_type, content, revision, updated_at_ms
             FROM config_documents WHERE service = $1 AND name = $2",
        )
        .bind(service)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| config_from_row(&r)).transpose()
    }

    pub async fn list_configs(&self, service: &str) -> Result<Vec<StoredConfig>, StoreError> {
        let rows = sqlx::query(
            "SELECT service, name, content_type, content, revision, updated_at_ms
             FROM config_documents WHERE service = $1 ORDER BY name",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(config_from_row).collect()
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
        let current = sqlx::query(
            "SELECT content_type, content, revision FROM config_documents WHERE service = $1 AND name = $2",
        )
        .bind(service)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let (before, current_rev) = match &current {
            Some(r) => (
                Some(config_history_doc(
                    &r.try_get::<String, _>("content_type")?,
                    &r.try_get::<Vec<u8>, _>("content")?,
                )),
                Some(r.try_get::<i64, _>("revision")? as u64),
            ),
            None => (None, None),
        };
        check(expect, current_rev)?;
        let after = config_history_doc(content_type, content);
        let now = now_ms();
        let revision = insert_revision(
            &mut tx,
            now,
            actor,
            CONFIG_KIND,
            service,
            name,
            "put",
            before.as_deref(),
            Some(&after),
            None,
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
        .bind(content_type)
        .bind(content.to_vec())
        .bind(revision as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.commit_revision(tx, revision).await?;
        Ok(StoredConfig {
            service: service.to_owned(),
            name: name.to_owned(),
            content_type: content_type.to_owned(),
            content: content.to_vec(),
            revision,
            updated_at_ms: now,
        })
    }

    pub async fn delete_config(
        &self,
        service: &str,
        name: &str,
        expect: Precondition,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let current = sqlx::query(
            "SELECT content_type, content, revision FROM config_documents WHERE service = $1 AND name = $2",
        )
        .bind(service)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        check(expect, Some(current.try_get::<i64, _>("revision")? as u64))?;
        let before = config_history_doc(
            &current.try_get::<String, _>("content_type")?,
            &current.try_get::<Vec<u8>, _>("content")?,
        );
        let revision = insert_revision(
            &mut tx,
            now_ms(),
            actor,
            CONFIG_KIND,
            service,
            name,
            "delete",
            Some(&before),
            None,
            None,
        )
        .await?;
        sqlx::query("DELETE FROM config_documents WHERE service = $1 AND name = $2")
            .bind(service)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.commit_revision(tx, revision).await?;
        Ok(revision)
    }

    // ---- revisions -------------------------------------------------------------------

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
        let rows =
            sqlx::query("SELECT service, MAX(revision) AS rev FROM revisions WHERE revision > $1 GROUP BY service")
                .bind(after as i64)
                .fetch_all(&self.pool)
                .await?;
        let mut newest = after;
        let mut services = Vec::with_capacity(rows.len());
        for r in rows {
            newest = newest.max(r.try_get::<i64, _>("rev")? as u64);
            services.push(r.try_get("service")?);
        }
        Ok((services, newest))
    }

    pub async fn list_revisions(&self, service: Option<&str>, limit: u32) -> Result<Vec<RevisionSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, created_at_ms, actor, kind, service, name, operation, reverts FROM revisions
             WHERE ($1 = '' OR service = $1) ORDER BY revision DESC LIMIT $2",
        )
        .bind(service.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(summary_from_row).collect()
    }

    pub async fn get_revision(&self, revision: u64) -> Result<Option<RevisionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT revision, created_at_ms, actor, kind, service, name, operation, reverts, before_doc, after_doc
             FROM revisions WHERE revision = $1",
        )
        .bind(revision as i64)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(RevisionRecord {
            summary: summary_from_row(&r)?,
            before: parse_opt_json(r.try_get("before_doc")?)?,
            after: parse_opt_json(r.try_get("after_doc")?)?,
        }))
    }

    /// Restores what revision `n` changed to its state before `n`, as a new revision.
    pub async fn revert(&self, n: u64, actor: &str) -> Result<RevisionRecord, StoreError> {
        let rec = self.get_revision(n).await?.ok_or(StoreError::NotFound)?;
        let s = &rec.summary;
        let new_rev = if s.kind == CONFIG_KIND {
            match &rec.before {
                Some(doc) => {
                    let (ct, content) = config_from_history_doc(doc)?;
                    self.put_config_reverting(&s.service, &s.name, &ct, &content, actor, n)
                        .await?
                }
                None => {
                    self.delete_reverting(&s.service, CONFIG_KIND, &s.name, actor, n)
                        .await?
                }
            }
        } else {
            let kind: PolicyKind = s
                .kind
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("kind {}", s.kind)))?;
            match &rec.before {
                Some(doc) => self.put_policy_reverting(&s.service, kind, doc, actor, n).await?,
                None => self.delete_reverting(&s.service, kind.as_str(), "", actor, n).await?,
            }
        };
        self.get_revision(new_rev).await?.ok_or(StoreError::NotFound)
    }

    async fn put_policy_reverting(
        &self,
        service: &str,
        kind: PolicyKind,
        doc: &serde_json::Value,
        actor: &str,
        reverts: u64,
    ) -> Result<u64, StoreError> {
        let stored = self.put_policy(service, kind, doc, Precondition::None, actor).await?;
        self.mark_revert(stored.revision, reverts).await?;
        Ok(stored.revision)
    }

    async fn put_config_reverting(
        &self,
        service: &str,
        name: &str,
        content_type: &str,
        content: &[u8],
        actor: &str,
        reverts: u64,
    ) -> Result<u64, StoreError> {
        let stored = self
            .put_config(service, name, content_type, content, Precondition::None, actor)
            .await?;
        self.mark_revert(stored.revision, reverts).await?;
        Ok(stored.revision)
    }

    async fn delete_reverting(
        &self,
        service: &str,
        kind: &str,
        name: &str,
        actor: &str,
        reverts: u64,
    ) -> Result<u64, StoreError> {
        let result = if kind == CONFIG_KIND {
            self.delete_config(service, name, Precondition::None, actor).await
        } else {
            let k: PolicyKind = kind.parse().map_err(|_| StoreError::Corrupt(format!("kind {kind}")))?;
            self.delete_policy(service, k, Precondition::None, actor).await
        };
        let rev = result?;
        self.mark_revert(rev, reverts).await?;
        Ok(rev)
    }

    async fn mark_revert(&self, revision: u64, reverts: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE revisions SET reverts = $1 WHERE revision = $2")
            .bind(reverts as i64)
            .bind(revision as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- services --------------------------------------------------------------------

    /// Every service the store knows of: with a policy, a config document, a sidecar or
    /// a history.
    pub async fn list_services(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT service FROM policies UNION SELECT service FROM config_documents
             UNION SELECT service FROM sidecars ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    pub async fn service_exists(&self, service: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM policies WHERE service = $1)
                  + (SELECT COUNT(*) FROM config_documents WHERE service = $1)
                  + (SELECT COUNT(*) FROM sidecars WHERE service = $1)
                  + (SELECT COUNT(*) FROM revisions WHERE service = $1)",
        )
        .bind(service)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    // ---- sidecars --------------------------------------------------------------------

    /// Registers (or re-registers) a sidecar as connected through `session`.
    pub async fn register_sidecar(&self, s: &SidecarRegistration) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO sidecars (id, service, version, namespace, pod, address, inbound_port, outbound_port,
                 admin_port, build_version, session, replica, connected, connected_at_ms, last_seen_ms,
                 applied_revision)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13, $14)
             ON CONFLICT (id) DO UPDATE SET service = excluded.service, version = excluded.version,
                 namespace = excluded.namespace, pod = excluded.pod, address = excluded.address,
                 inbound_port = excluded.inbound_port, outbound_port = excluded.outbound_port,
                 admin_port = excluded.admin_port, build_version = excluded.build_version,
                 session = excluded.session, replica = excluded.replica, connected = 1,
                 connected_at_ms = excluded.connected_at_ms, last_seen_ms = excluded.last_seen_ms,
                 applied_revision = excluded.applied_revision",
        )
        .bind(&s.id)
        .bind(&s.service)
        .bind(&s.version)
        .bind(&s.namespace)
        .bind(&s.pod)
        .bind(&s.address)
        .bind(i64::from(s.inbound_port))
        .bind(i64::from(s.outbound_port))
        .bind(i64::from(s.admin_port))
        .bind(&s.build_version)
        .bind(&s.session)
        .bind(&s.replica)
        .bind(now)
        .bind(s.held_revision as i64)
        .execute(&self.pool)
        .await?;
        self.notify_members(&s.service).await
    }

    async fn notify_members(&self, service: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(format!("members:{service}"))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Records a health report (and liveness) from the sidecar's current session.
    pub async fn record_health(&self, id: &str, session: &str, health: &serde_json::Value) -> Result<(), StoreError> {
        sqlx::query("UPDATE sidecars SET last_seen_ms = $1, health = $2 WHERE id = $3 AND session = $4")
            .bind(now_ms())
            .bind(health.to_string())
            .bind(id)
            .bind(session)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn record_ack(&self, id: &str, session: &str, revision: u64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sidecars SET applied_revision = $1, last_nack = NULL, last_nack_revision = NULL,
                 last_seen_ms = $2 WHERE id = $3 AND session = $4",
        )
        .bind(revision as i64)
        .bind(now_ms())
        .bind(id)
        .bind(session)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn record_nack(&self, id: &str, session: &str, revision: u64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sidecars SET last_nack = $1, last_nack_revision = $2, last_seen_ms = $3
             WHERE id = $4 AND session = $5",
        )
        .bind(error)
        .bind(revision as i64)
        .bind(now_ms())
        .bind(id)
        .bind(session)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the sidecar disconnected, unless it has already reconnected elsewhere
    /// (a newer session owns the row).
    pub async fn disconnect_sidecar(&self, id: &str, session: &str, service: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sidecars SET connected = 0, last_seen_ms = $1 WHERE id = $2 AND session = $3")
            .bind(now_ms())
            .bind(id)
            .bind(session)
            .execute(&self.pool)
            .await?;
        self.notify_members(service).await
    }

    pub async fn list_sidecars(&self, service: Option<&str>) -> Result<Vec<SidecarRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, service, version, namespace, pod, address, inbound_port, outbound_port, admin_port,
                 build_version, replica, connected, connected_at_ms, last_seen_ms, applied_revision, last_nack,
                 last_nack_revision, health
             FROM sidecars WHERE ($1 = '' OR service = $1) ORDER BY service, version, pod",
        )
        .bind(service.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sidecar_from_row).collect()
    }

    /// Healthy (connected and recently seen) instances per service.
    pub async fn healthy_counts(&self, seen_after_ms: i64) -> Result<HashMap<String, u32>, StoreError> {
        let rows = sqlx::query(
            "SELECT service, COUNT(*) AS n FROM sidecars WHERE connected = 1 AND last_seen_ms >= $1 GROUP BY service",
        )
        .bind(seen_after_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("service")?, r.try_get::<i64, _>("n")? as u32)))
            .collect()
    }

    /// Forgets sidecars disconnected for longer than `older_than` (pods that are gone).
    pub async fn prune_sidecars(&self, before_ms: i64) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM sidecars WHERE connected = 0 AND last_seen_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}

/// The LISTEN/NOTIFY channel carrying `revision:<n>` and `members:<service>`.
pub const CHANGES_CHANNEL: &str = "outrider_changes";

/// `kind` of config-document changes in the history.
pub const CONFIG_KIND: &str = "config";

fn check(expect: Precondition, current: Option<u64>) -> Result<(), StoreError> {
    let ok = match expect {
        Precondition::None => true,
        Precondition::Exists => current.is_some(),
        Precondition::Revision(r) => current == Some(r),
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::PreconditionFailed { current })
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_revision(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    now: i64,
    actor: &str,
    kind: &str,
    service: &str,
    name: &str,
    operation: &str,
    before: Option<&str>,
    after: Option<&str>,
    reverts: Option<u64>,
) -> Result<u64, StoreError> {
    let rev: i64 = sqlx::query_scalar(
        "INSERT INTO revisions (created_at_ms, actor, kind, service, name, operation, before_doc, after_doc, reverts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING revision",
    )
    .bind(now)
    .bind(actor)
    .bind(kind)
    .bind(service)
    .bind(name)
    .bind(operation)
    .bind(before)
    .bind(after)
    .bind(reverts.map(|r| r as i64))
    .fetch_one(&mut **tx)
    .await?;
    Ok(rev as u64)
}

fn policy_from_row(r: &AnyRow) -> Result<StoredPolicy, StoreError> {
    let kind: String = r.try_get("kind")?;
    let doc: String = r.try_get("document")?;
    Ok(StoredPolicy {
        service: r.try_get("service")?,
        kind: kind
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("unknown kind {kind}")))?,
        document: serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        revision: r.try_get::<i64, _>("revision")? as u64,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

fn config_from_row(r: &AnyRow) -> Result<StoredConfig, StoreError> {
    Ok(StoredConfig {
        service: r.try_get("service")?,
        name: r.try_get("name")?,
        content_type: r.try_get("content_type")?,
        content: r.try_get("content")?,
        revision: r.try_get::<i64, _>("revision")? as u64,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

fn summary_from_row(r: &AnyRow) -> Result<RevisionSummary, StoreError> {
    Ok(RevisionSummary {
        revision: r.try_get::<i64, _>("revision")? as u64,
        created_at_ms: r.try_get("created_at_ms")?,
        actor: r.try_get("actor")?,
        kind: r.try_get("kind")?,
        service: r.try_get("service")?,
        name: r.try_get("name")?,
        operation: r.try_get("operation")?,
        reverts: r.try_get::<Option<i64>, _>("reverts")?.map(|v| v as u64),
    })
}

fn sidecar_from_row(r: &AnyRow) -> Result<SidecarRow, StoreError> {
    let health: Option<String> = r.try_get("health")?;
    Ok(SidecarRow {
        id: r.try_get("id")?,
        service: r.try_get("service")?,
        version: r.try_get("version")?,
        namespace: r.try_get("namespace")?,
        pod: r.try_get("pod")?,
        address: r.try_get("address")?,
        inbound_port: r.try_get::<i64, _>("inbound_port")? as u32,
        outbound_port: r.try_get::<i64, _>("outbound_port")? as u32,
        admin_port: r.try_get::<i64, _>("admin_port")? as u32,
        build_version: r.try_get("build_version")?,
        replica: r.try_get("replica")?,
        connected: r.try_get::<i64, _>("connected")? != 0,
        connected_at_ms: r.try_get("connected_at_ms")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
        applied_revision: r.try_get::<i64, _>("applied_revision")? as u64,
        last_nack: r.try_get("last_nack")?,
        last_nack_revision: r.try_get::<Option<i64>, _>("last_nack_revision")?.map(|v| v as u64),
        health: health.and_then(|h| serde_json::from_str(&h).ok()),
    })
}

fn parse_opt_json(s: Option<String>) -> Result<Option<serde_json::Value>, StoreError> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}
