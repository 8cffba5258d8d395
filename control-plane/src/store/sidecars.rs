//! Sidecar instances: registration by a control stream, liveness, health, ACK/NACK,
//! disconnect, and the reads behind membership, `GET /sidecars` and the live fleet view.

use super::{now_ms, Backend, Store, StoreError, CHANGES_CHANNEL};
use serde::Serialize;
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
    pub connected: bool,
    pub connected_at_ms: i64,
    pub last_seen_ms: i64,
    pub applied_revision: u64,
    pub last_nack: Option<String>,
    pub last_nack_revision: Option<u64>,
    pub health: Option<serde_json::Value>,
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

/// A `sidecars` row as both backends decode it (ports and flags are BIGINT).
#[derive(sqlx::FromRow)]
struct DbRow {
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
    connected: i64,
    connected_at_ms: i64,
    last_seen_ms: i64,
    applied_revision: i64,
    last_nack: Option<String>,
    last_nack_revision: Option<i64>,
    health: Option<String>,
}

const COLUMNS: &str = "id, service, version, namespace, pod, address, inbound_port, outbound_port, admin_port,
    build_version, replica, connected, connected_at_ms, last_seen_ms, applied_revision, last_nack,
    last_nack_revision, health";

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
            connected: r.connected != 0,
            connected_at_ms: r.connected_at_ms,
            last_seen_ms: r.last_seen_ms,
            applied_revision: r.applied_revision as u64,
            last_nack: r.last_nack,
            last_nack_revision: r.last_nack_revision.map(|v| v as u64),
            // Health is a report the sidecar sent, shown as is: one that does not parse
            // is left out rather than failing the whole listing.
            health: r.health.and_then(|h| serde_json::from_str(&h).ok()),
        }
    }
}

impl Store {
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

    /// Tells the other replicas (PostgreSQL) that `service`'s membership changed.
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
}
