//! The store's handle, its error type and the write transaction every change goes
//! through (revision row, notification, commit). The aggregates build on it.

use crate::vault::SecretsKey;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Serializes writers on PostgreSQL so that revisions commit in the order they were
/// taken: a reader catching up with `revision > n` then never skips a slower commit.
pub(super) const WRITE_LOCK_KEY: i64 = 0x6f75_7472_6964;

/// The LISTEN/NOTIFY channel carrying `revision:<n>` and `members:<service>`.
pub const CHANGES_CHANNEL: &str = "outrider_changes";

/// `kind` of config-document changes in the history.
pub const CONFIG_KIND: &str = "config";

/// `kind` of secret changes in the history.
pub const SECRET_KIND: &str = "secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Any other database failure; [`StoreError::is_unavailable`] tells an unreachable
    /// or overloaded database (worth retrying) from a failed statement.
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// A write collided with a unique key someone else holds.
    #[error("conflicting write: {0}")]
    Conflict(sqlx::Error),
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
    /// The write would take a service past a limit on all its documents together
    /// (see `outrider_policy::limits`); nothing was written.
    #[error("{0}")]
    TooLarge(String),
    /// A secret was to be written or read, and no secrets key is configured.
    #[error("no secrets key is configured (OUTRIDER_SECRETS_KEY_FILE): secrets cannot be written or delivered")]
    SecretsKeyMissing,
    /// A stored secret does not open with the configured key: it was sealed with
    /// another one (`sealed_with` is that key's id), or its row was altered.
    #[error(
        "secret {name:?} of service {service:?} cannot be decrypted with the configured secrets key (id {configured}); it was sealed with key id {sealed_with}"
    )]
    SecretUnreadable {
        service: String,
        name: String,
        sealed_with: String,
        configured: String,
    },
    /// A CA root's key is sealed and does not open: no secrets key, or another one.
    #[error("{0}")]
    RootKeyUnreadable(String),
    /// The operation is not possible for this change (a revert of a secret, whose
    /// value the history does not keep).
    #[error("{0}")]
    Refused(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let unique = matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation());
        if unique {
            StoreError::Conflict(e)
        } else {
            StoreError::Db(e)
        }
    }
}

impl StoreError {
    /// True when the database could not be reached or did not answer in time (pool
    /// timeout, I/O, a closed connection or pool, a server shutting down or refusing
    /// connections, a busy SQLite file, a lock timeout): the request may succeed later,
    /// so the API answers 503. Everything else is a failure of the statement itself.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) => sqlx_unavailable(e),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => sqlx_unavailable(e),
            _ => false,
        }
    }
}

pub(super) fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        // The conversation with the server broke (a closed or reset connection shows
        // up as I/O or protocol errors): a fresh connection may well work.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => {
            if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                pg_unavailable(pg.code())
            } else if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // BUSY (5) and LOCKED (6), possibly extended (the low byte is the code).
                d.code()
                    .and_then(|c| c.parse::<i64>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6))
            } else {
                false
            }
        }
        _ => false,
    }
}

/// SQLSTATEs that mean "not now" rather than "not this": connection exceptions (08),
/// insufficient resources (53), operator intervention (57: shutdown, cancelled on
/// timeout) and transactions rolled back by contention (40001, 40P01, 55P03).
pub(super) fn pg_unavailable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || matches!(code, "40001" | "40P01" | "55P03")
}

/// The database handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(super) pool: AnyPool,
    pub(super) backend: Backend,
    pub(super) url: String,
    /// Seals and opens secrets (see `secrets`); none: secrets cannot be written.
    pub(super) secrets_key: Option<Arc<SecretsKey>>,
}

/// What a write expects to find (from `If-Match` / `If-None-Match`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Precondition {
    #[default]
    None,
    /// The document must exist (`If-Match: *`).
    Exists,
    /// The document must not exist yet (`If-None-Match: *`: create only).
    Absent,
    /// The document's current revision must be one of these (`If-Match: "3", "4"`);
    /// an empty list matches nothing.
    AnyOf(Vec<u64>),
}

impl Precondition {
    /// One expected revision (`If-Match: "3"`).
    pub fn revision(r: u64) -> Self {
        Precondition::AnyOf(vec![r])
    }

    /// Refuses the write unless the document's `current` revision is what was expected.
    pub fn check(&self, current: Option<u64>) -> Result<(), StoreError> {
        let ok = match self {
            Precondition::None => true,
            Precondition::Exists => current.is_some(),
            Precondition::Absent => current.is_none(),
            Precondition::AnyOf(revisions) => current.is_some_and(|c| revisions.contains(&c)),
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::PreconditionFailed { current })
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A write in progress: one transaction, holding the writer lock on PostgreSQL.
pub(super) type WriteTx = sqlx::Transaction<'static, sqlx::Any>;

/// Who makes a write, what they expect to find, and which revision it reverts (so
/// the history line says so from the start).
#[derive(Debug, Clone)]
pub(super) struct Writer<'a> {
    pub(super) actor: &'a str,
    pub(super) expect: Precondition,
    pub(super) reverts: Option<u64>,
}

impl<'a> Writer<'a> {
    pub(super) fn new(actor: &'a str, expect: Precondition) -> Self {
        Self {
            actor,
            expect,
            reverts: None,
        }
    }
}

/// The history line a write adds; [`Store::insert_revision`] gives it its revision.
pub(super) struct Change<'a> {
    pub(super) by: Writer<'a>,
    pub(super) now: i64,
    pub(super) kind: &'a str,
    pub(super) service: &'a str,
    /// Config document name, "" for policies.
    pub(super) name: &'a str,
    pub(super) operation: &'a str,
    pub(super) before: Option<&'a str>,
    pub(super) after: Option<&'a str>,
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
                    secrets_key: None,
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
                    secrets_key: None,
                })
            }
        }
    }

    /// The same store, sealing and opening secrets with `key`.
    pub fn with_secrets_key(mut self, key: Option<SecretsKey>) -> Self {
        self.secrets_key = key.map(Arc::new);
        self
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

    /// Starts a write: every change of a document, its revision row included, happens
    /// between this and [`Store::commit_revision`].
    pub(super) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Takes the next global revision for `change`, inside the write's transaction.
    pub(super) async fn insert_revision(tx: &mut WriteTx, change: &Change<'_>) -> Result<u64, StoreError> {
        let rev: i64 = sqlx::query_scalar(
            "INSERT INTO revisions (created_at_ms, actor, kind, service, name, operation, before_doc, after_doc,
                 reverts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING revision",
        )
        .bind(change.now)
        .bind(change.by.actor)
        .bind(change.kind)
        .bind(change.service)
        .bind(change.name)
        .bind(change.operation)
        .bind(change.before)
        .bind(change.after)
        .bind(change.by.reverts.map(|r| r as i64))
        .fetch_one(&mut **tx)
        .await?;
        Ok(rev as u64)
    }

    /// Commits a write that took `revision`, telling the other replicas (PostgreSQL).
    pub(super) async fn commit_revision(&self, mut tx: WriteTx, revision: u64) -> Result<(), StoreError> {
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
}

/// Parses a stored JSON document; a row that is not JSON is corrupt, not a bad request.
pub(super) fn parse_json(s: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}
