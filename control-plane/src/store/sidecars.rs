//! Sidecar instances: registration by a control stream, liveness, health, ACK/NACK,
//! disconnect, and the reads behind membership, `GET /sidecars` and the live fleet view.

use super::db::{now_ms, Backend, Store, StoreError, CHANGES_CHANNEL};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What a sidecar's `Hello` registers.
#[derive(Debug, Clone)]
pub struct SidecarRegistration {
    pub id: String,
    pub service: String,
    pub version: String,
    pub namespace: String,
    pub pod: String,
    pub address: String,
    pub inbound_port: u32,
    pub outbound_port: u32,
    pub admin_port: u32,
    pub build_version: String,
    /// Identifies this stream, so a late close of an old stream cannot mark a
    /// reconnected sidecar disconnected.
    pub session: String,
    /// The control-plane replica holding the stream.
    pub replica: String,
    pub held_revision: u64,
    /// The sidecar process (`Hello.instance`; empty from older sidecars).
    pub instance: String,
}

#[derive(Debug, Clone)]
pub struct SidecarRow {
    pub id: String,
    pub service: String,
    pub version: String,
    pub namespace: String,
    pub pod: String,
    pub address: String,
    pub inbound_port: u32,
    pub outbound_port: u32,
    pub admin_port: u32,
    pub build_version: String,
    pub replica: String,
    /// The stream that owns the row (see [`SidecarRegistration::session`]).
    pub session: String,
    pub connected: bool,
    pub connected_at_ms: i64,
    pub last_seen_ms: i64,
    pub applied_revision: u64,
    pub last_nack: Option<String>,
    pub last_nack_revision: Option<u64>,
    pub health: Option<serde_json::Value>,
    /// The SPIFFE ID last issued to it (`None` before its first certificate).
    pub identity: Option<String>,
    pub certificate_expiry_ms: Option<i64>,
}

/// Sidecar status, derived from the row at read time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarStatus {
    Healthy,
    Unhealthy,
    Disconnected,
}

impl SidecarRow {
    /// Healthy while reports arrive; unhealthy once they stop for `unhealthy_after_ms`;
    /// disconnected when the stream closed or nothing came for `disconnected_after_ms`
    /// (its control-plane replica died with it, say).
    pub fn status(&self, now_ms: i64, unhealthy_after_ms: i64, disconnected_after_ms: i64) -> SidecarStatus {
        let silent = now_ms - self.last_seen_ms;
        if !self.connected || silent > disconnected_after_ms {
            SidecarStatus::Disconnected
        } else if silent > unhealthy_after_ms
            || self
                .health
                .as_ref()
                .and_then(|h| h.get("appHealthy"))
                .and_then(|v| v.as_bool())
                == Some(false)
        {
            SidecarStatus::Unhealthy
        } else {
            SidecarStatus::Healthy
        }
    }
}

/// Which sidecars [`Store::list_sidecars_page`] lists; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct SidecarFilter {
    pub service: Option<String>,
    pub status: Option<StatusFilter>,
    /// A case-insensitive (ASCII) substring of the id, service, version, pod or address.
    pub text: Option<String>,
}

/// Sidecars whose [`SidecarRow::status`] at `now_ms` with these windows is `status`,
/// decided by the database from the same times.
#[derive(Debug, Clone, Copy)]
pub struct StatusFilter {
    pub status: SidecarStatus,
    pub now_ms: i64,
    pub unhealthy_after_ms: i64,
    pub disconnected_after_ms: i64,
}

/// Where a page ended: the sort key (service, version, pod, id) of its last row, so
/// the next page starts after it even if that row has been pruned meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarCursor {
    pub service: String,
    pub version: String,
    pub pod: String,
    pub id: String,
}

/// One page of sidecars, and where the next one starts (`None`: this was the last).
#[derive(Debug, Clone)]
pub struct SidecarPage {
    pub rows: Vec<SidecarRow>,
    pub next: Option<SidecarCursor>,
}

impl SidecarRow {
    pub fn cursor(&self) -> SidecarCursor {
        SidecarCursor {
            service: self.service.clone(),
            version: self.version.clone(),
            pod: self.pod.clone(),
            id: self.id.clone(),
        }
    }
}

/// `%text%` for LIKE … ESCAPE '\', with the text's own wildcards taken literally.
fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The SQL twin of [`SidecarRow::status`], over the cut-offs `$9` (disconnected
/// before) and `$10` (unhealthy before). `health` is stored as compact JSON
/// (`serde_json::to_string`), so an app reported unhealthy reads `"appHealthy":false`.
fn status_condition(status: SidecarStatus) -> &'static str {
    match status {
        SidecarStatus::Disconnected => "(connected = 0 OR last_seen_ms < $9)",
        SidecarStatus::Unhealthy => {
            "(connected = 1 AND last_seen_ms >= $9
              AND (last_seen_ms < $10 OR COALESCE(health, '') LIKE '%\"appHealthy\":false%'))"
        }
        SidecarStatus::Healthy => {
            "(connected = 1 AND last_seen_ms >= $9 AND last_seen_ms >= $10
              AND COALESCE(health, '') NOT LIKE '%\"appHealthy\":false%')"
        }
    }
}

/// A `sidecars` row as both backends decode it (ports and flags are BIGINT).
#[derive(sqlx::FromRow)]
pub(super) struct DbRow {
    id: String,
    service: String,
    version: String,
    namespace: String,
    pod: String,
    address: String,
    inbound_port: i64,
    outbound_port: i64,
    admin_port: i64,
    build_version: String,
    replica: String,
    session: String,
    connected: i64,
    connected_at_ms: i64,
    last_seen_ms: i64,
    applied_revision: i64,
    last_nack: Option<String>,
    last_nack_revision: Option<i64>,
    health: Option<String>,
    identity: Option<String>,
    certificate_expiry_ms: Option<i64>,
}

pub(super) const COLUMNS: &str =
    "id, service, version, namespace, pod, address, inbound_port, outbound_port, admin_port,
    build_version, replica, session, connected, connected_at_ms, last_seen_ms, applied_revision, last_nack,
    last_nack_revision, health, identity, certificate_expiry_ms";

impl From<DbRow> for SidecarRow {
    fn from(r: DbRow) -> Self {
        SidecarRow {
            id: r.id,
            service: r.service,
            version: r.version,
            namespace: r.namespace,
            pod: r.pod,
            address: r.address,
            inbound_port: r.inbound_port as u32,
            outbound_port: r.outbound_port as u32,
            admin_port: r.admin_port as u32,
            build_version: r.build_version,
            replica: r.replica,
            session: r.session,
            connected: r.connected != 0,
            connected_at_ms: r.connected_at_ms,
            last_seen_ms: r.last_seen_ms,
            applied_revision: r.applied_revision as u64,
            last_nack: r.last_nack,
            last_nack_revision: r.last_nack_revision.map(|v| v as u64),
            // Health is a report the sidecar sent, shown as is: one that does not parse
            // is left out rather than failing the whole listing.
            health: r.health.and_then(|h| serde_json::from_str(&h).ok()),
            identity: r.identity,
            certificate_expiry_ms: r.certificate_expiry_ms,
        }
    }
}

/// A registration is one statement and one commit, without a notification: the mesh
/// tells the other replicas once per debounce for all the joins to a service (a
/// NOTIFY per commit serializes the commits of a whole fleet's registration burst).
const REGISTER: &str =
    "INSERT INTO sidecars (id, service, version, namespace, pod, address, inbound_port, outbound_port,
                     admin_port, build_version, session, replica, connected, connected_at_ms, last_seen_ms,
                     applied_revision, instance)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13, $14, $16)
                 ON CONFLICT (id) DO UPDATE SET service = excluded.service, version = excluded.version,
                     namespace = excluded.namespace, pod = excluded.pod, address = excluded.address,
                     inbound_port = excluded.inbound_port, outbound_port = excluded.outbound_port,
                     admin_port = excluded.admin_port, build_version = excluded.build_version,
                     session = excluded.session, replica = excluded.replica, connected = 1,
                     connected_at_ms = excluded.connected_at_ms, last_seen_ms = excluded.last_seen_ms,
                     applied_revision = excluded.applied_revision, health = NULL,
                     instance = excluded.instance
                 WHERE sidecars.connected = 0 OR sidecars.last_seen_ms < $15
                     OR (excluded.instance <> '' AND sidecars.instance = excluded.instance)";

/// Rows per statement of a batched write, well under both backends' parameter limits.
const BATCH_ROWS: usize = 500;

/// `UPDATE sidecars SET {set} FROM (VALUES ($1, …), …) {from} WHERE {matches}` for
/// `rows` rows of `cols` parameters.
fn batch_update(set: &str, from: &str, matches: &str, rows: usize, cols: usize) -> String {
    use std::fmt::Write;
    let mut values = String::with_capacity(rows * cols * 5);
    for row in 0..rows {
        values.push_str(if row == 0 { "(" } else { ",(" });
        for col in 0..cols {
            let sep = if col == 0 { "" } else { ", " };
            let _ = write!(values, "{sep}${}", row * cols + col + 1);
        }
        values.push(')');
    }
    format!("UPDATE sidecars SET {set} FROM (VALUES {values}) {from} WHERE {matches}")
}

impl Store {
    /// Registers (or re-registers) a sidecar as connected through `session`.
    pub async fn register_sidecar(&self, s: &SidecarRegistration) -> Result<(), StoreError> {
        self.register_sidecar_unless_live(s, i64::MAX).await
    }

    /// Registers a sidecar unless a live stream of another process holds its id: a
    /// row that is connected, was seen at or after `live_since_ms` and names another
    /// instance is left alone and the newcomer gets [`StoreError::AlreadyExists`], so
    /// a second registration of a pod never displaces the instance that serves it.
    pub async fn register_sidecar_unless_live(
        &self,
        s: &SidecarRegistration,
        live_since_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let done = sqlx::query(REGISTER)
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
            .bind(live_since_ms)
            .bind(&s.instance)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    /// Tells the other replicas (PostgreSQL) that `service`'s membership changed.
    pub async fn notify_members(&self, service: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(format!("members:{service}"))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Records a health report (and liveness) from the sidecar's current session at
    /// once, and tells the other replicas: for a report that changes the instance's
    /// health. Ordinary reports go through [`Store::record_health_batch`].
    pub async fn record_health(&self, id: &str, session: &str, health: &str, service: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sidecars SET last_seen_ms = $1, health = $2 WHERE id = $3 AND session = $4")
            .bind(now_ms())
            .bind(health)
            .bind(id)
            .bind(session)
            .execute(&self.pool)
            .await?;
        self.notify_members(service).await
    }

    /// Writes a batch of coalesced health reports: `(id, session, last_seen_ms,
    /// health JSON)`, each applied only if that session still owns the row. One
    /// statement per few hundred rows, in one transaction.
    pub async fn record_health_batch(&self, batch: &[(String, String, i64, String)]) -> Result<(), StoreError> {
        // SQLite names the columns of a VALUES list column1…; PostgreSQL takes an alias list.
        let (set, from, matches) = match self.backend {
            Backend::Postgres => (
                "last_seen_ms = v.seen, health = v.health",
                "AS v(id, session, seen, health)",
                "sidecars.id = v.id AND sidecars.session = v.session",
            ),
            Backend::Sqlite => (
                "last_seen_ms = v.column3, health = v.column4",
                "AS v",
                "sidecars.id = v.column1 AND sidecars.session = v.column2",
            ),
        };
        let mut tx = self.pool.begin().await?;
        for chunk in batch.chunks(BATCH_ROWS) {
            let sql = batch_update(set, from, matches, chunk.len(), 4);
            let mut q = sqlx::query(&sql);
            for (id, session, seen, health) in chunk {
                q = q.bind(id).bind(session).bind(*seen).bind(health);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes a batch of coalesced ACKs: `(id, session, revision)`; each moves the
    /// row's `applied_revision` forward (never back) and clears its last NACK.
    pub async fn record_ack_batch(&self, batch: &[(String, String, u64)]) -> Result<(), StoreError> {
        let (set, from, matches) = match self.backend {
            Backend::Postgres => (
                "applied_revision = v.rev, last_nack = NULL, last_nack_revision = NULL",
                "AS v(id, session, rev)",
                "sidecars.id = v.id AND sidecars.session = v.session AND sidecars.applied_revision <= v.rev",
            ),
            Backend::Sqlite => (
                "applied_revision = v.column3, last_nack = NULL, last_nack_revision = NULL",
                "AS v",
                "sidecars.id = v.column1 AND sidecars.session = v.column2 AND sidecars.applied_revision <= v.column3",
            ),
        };
        let mut tx = self.pool.begin().await?;
        for chunk in batch.chunks(BATCH_ROWS) {
            let sql = batch_update(set, from, matches, chunk.len(), 3);
            let mut q = sqlx::query(&sql);
            for (id, session, revision) in chunk {
                q = q.bind(id).bind(session).bind(*revision as i64);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Services with a connected instance whose last report is in `(from_ms, to_ms]`:
    /// those that fell silent in that window (an indexed range, not a table scan).
    pub async fn services_silent_between(&self, from_ms: i64, to_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT service FROM sidecars WHERE last_seen_ms > $1 AND last_seen_ms <= $2 AND connected = 1",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
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

    /// Clears the sidecar's last NACK if it is still one that starts with `prefix` (a
    /// later NACK of something else stays).
    pub async fn clear_nack(&self, id: &str, session: &str, prefix: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sidecars SET last_nack = NULL, last_nack_revision = NULL, last_seen_ms = $1
             WHERE id = $2 AND session = $3 AND substr(last_nack, 1, length($4)) = $4",
        )
        .bind(now_ms())
        .bind(id)
        .bind(session)
        .bind(prefix)
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
        Ok(sqlx::query_as::<_, DbRow>(&format!(
            "SELECT {COLUMNS} FROM sidecars WHERE ($1 = '' OR service = $1) ORDER BY service, version, pod"
        ))
        .bind(service.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(SidecarRow::from)
        .collect())
    }

    /// Sidecars whose row changed (report, ACK, NACK, connect, disconnect) at or after
    /// `since_ms`: every replica's streams write `last_seen_ms`, so this sees them all
    /// (the dashboard's live fleet view).
    pub async fn sidecars_seen_since(&self, since_ms: i64) -> Result<Vec<SidecarRow>, StoreError> {
        Ok(sqlx::query_as::<_, DbRow>(&format!(
            "SELECT {COLUMNS} FROM sidecars WHERE last_seen_ms >= $1 ORDER BY service, version, pod"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(SidecarRow::from)
        .collect())
    }

    /// Healthy (connected and recently seen) instances per service.
    pub async fn healthy_counts(&self, seen_after_ms: i64) -> Result<HashMap<String, u32>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT service, COUNT(*) AS n FROM sidecars WHERE connected = 1 AND last_seen_ms >= $1 GROUP BY service",
        )
        .bind(seen_after_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(service, n)| (service, n as u32)).collect())
    }

    /// Forgets sidecars disconnected since before `before_ms` (pods that are gone).
    pub async fn prune_sidecars(&self, before_ms: i64) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM sidecars WHERE connected = 0 AND last_seen_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Up to `limit` sidecars matching `filter`, ordered by service, version, pod and
    /// id, starting after `after`: filtered and paged by the database, so a large fleet
    /// is never read whole.
    pub async fn list_sidecars_page(
        &self,
        filter: &SidecarFilter,
        limit: u32,
        after: Option<&SidecarCursor>,
    ) -> Result<SidecarPage, StoreError> {
        let text = filter.text.as_deref().filter(|t| !t.is_empty()).map(like_pattern);
        let status = filter.status.map_or("1 = 1", |f| status_condition(f.status));
        let sql = format!(
            "SELECT {COLUMNS} FROM sidecars
             WHERE ($1 = '' OR service = $1)
               AND ($2 = '' OR LOWER(id) LIKE $2 ESCAPE '\\' OR LOWER(service) LIKE $2 ESCAPE '\\'
                    OR LOWER(version) LIKE $2 ESCAPE '\\' OR LOWER(pod) LIKE $2 ESCAPE '\\'
                    OR LOWER(address) LIKE $2 ESCAPE '\\')
               AND ($3 = 0 OR (service, version, pod, id) > ($4, $5, $6, $7))
               AND {status}
             ORDER BY service, version, pod, id LIMIT $8"
        );
        let empty = SidecarCursor {
            service: String::new(),
            version: String::new(),
            pod: String::new(),
            id: String::new(),
        };
        let cursor = after.unwrap_or(&empty);
        let mut q = sqlx::query_as::<_, DbRow>(&sql)
            .bind(filter.service.as_deref().unwrap_or(""))
            .bind(text.as_deref().unwrap_or(""))
            .bind(i64::from(after.is_some()))
            .bind(&cursor.service)
            .bind(&cursor.version)
            .bind(&cursor.pod)
            .bind(&cursor.id)
            // One more than asked for says whether another page follows.
            .bind(i64::from(limit) + 1);
        if let Some(f) = filter.status {
            q = q
                .bind(f.now_ms - f.disconnected_after_ms)
                .bind(f.now_ms - f.unhealthy_after_ms);
        }
        let mut rows: Vec<SidecarRow> = q
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(SidecarRow::from)
            .collect();
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more {
            rows.last().map(SidecarRow::cursor)
        } else {
            None
        };
        Ok(SidecarPage { rows, next })
    }
}
