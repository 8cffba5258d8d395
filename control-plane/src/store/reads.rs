//! Fleet-wide reads behind the list routes and the live fleet view: one query for what
//! would otherwise be a query per service or a pass over every sidecar row, so their
//! cost does not grow with the number of services times the fleet.

use super::db::{Store, StoreError};
use super::sidecars::{DbRow, SidecarRow, COLUMNS};
use std::collections::HashMap;

/// Every service something names (a policy, a config document or a sidecar), the
/// same set as [`Store::list_services`].
const NAMED_SERVICES: &str =
    "SELECT service FROM policies UNION SELECT service FROM config_documents UNION SELECT service FROM sidecars";

/// One line of `GET /services` as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOverview {
    pub name: String,
    /// Its newest revision (0: none).
    pub revision: u64,
    /// The kinds of policy it has, in kind order, as stored (`logging`, `rate-limit`, …).
    pub policy_kinds: Vec<String>,
    pub configs: u64,
}

/// Sidecars of one subset of a service by the status [`SidecarRow::status`] derives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubsetCounts {
    pub service: String,
    pub version: String,
    pub healthy: u64,
    pub unhealthy: u64,
    pub disconnected: u64,
}

/// The liveness windows a status is derived with, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct StatusClock {
    pub now_ms: i64,
    pub unhealthy_after_ms: i64,
    pub disconnected_after_ms: i64,
}

impl Store {
    /// The newest revision of every named service (0 for one without history): the
    /// target revision of each sidecar row, read once for a whole listing. Each MAX is
    /// an index lookup (`revisions (service, revision)`), so this costs one probe per
    /// service, not a pass over the history.
    pub async fn service_revisions(&self) -> Result<HashMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT s.service, COALESCE((SELECT MAX(r.revision) FROM revisions r WHERE r.service = s.service), 0)
             FROM ({NAMED_SERVICES}) s"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s, r)| (s, r as u64)).collect())
    }

    /// Every named service with its revision, policy kinds and config count, in name
    /// order: two queries whatever the number of services.
    pub async fn service_overviews(&self) -> Result<Vec<ServiceOverview>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
            "SELECT s.service,
                    COALESCE((SELECT MAX(r.revision) FROM revisions r WHERE r.service = s.service), 0),
                    (SELECT COUNT(*) FROM config_documents c WHERE c.service = s.service)
             FROM ({NAMED_SERVICES}) s ORDER BY s.service"
        ))
        .fetch_all(&self.pool)
        .await?;
        let kinds: Vec<(String, String)> = sqlx::query_as("SELECT service, kind FROM policies ORDER BY service, kind")
            .fetch_all(&self.pool)
            .await?;
        let mut by_service: HashMap<String, Vec<String>> = HashMap::new();
        for (service, kind) in kinds {
            by_service.entry(service).or_default().push(kind);
        }
        Ok(rows
            .into_iter()
            .map(|(name, revision, configs)| ServiceOverview {
                policy_kinds: by_service.remove(&name).unwrap_or_default(),
                revision: revision as u64,
                configs: configs as u64,
                name,
            })
            .collect())
    }

    /// Sidecars per service and subset by status, counted by the database: the
    /// instance summaries of `GET /services` without reading the fleet's rows. The
    /// conditions are those of [`SidecarRow::status`] (and of the listing's status
    /// filter); a test holds the three to the same answer on every row.
    pub async fn subset_counts(&self, clock: StatusClock) -> Result<Vec<SubsetCounts>, StoreError> {
        // `health` is compact JSON (`serde_json::to_string`), so an app reported
        // unhealthy reads `"appHealthy":false`.
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT service, version,
                    SUM(CASE WHEN connected = 0 OR last_seen_ms < $1 THEN 1 ELSE 0 END),
                    SUM(CASE WHEN connected = 1 AND last_seen_ms >= $1 AND last_seen_ms >= $2
                              AND COALESCE(health, '') NOT LIKE '%\"appHealthy\":false%' THEN 1 ELSE 0 END),
                    COUNT(*)
             FROM sidecars GROUP BY service, version ORDER BY service, version",
        )
        .bind(clock.now_ms - clock.disconnected_after_ms)
        .bind(clock.now_ms - clock.unhealthy_after_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(service, version, disconnected, healthy, total)| SubsetCounts {
                service,
                version,
                healthy: healthy as u64,
                unhealthy: (total - healthy - disconnected) as u64,
                disconnected: disconnected as u64,
            })
            .collect())
    }

    /// The sidecars whose latest health report carries figures about `service` (its
    /// callers), found by the database instead of by parsing every report. `service`
    /// must be a valid service name (lowercase letters, digits, `-`), which needs no
    /// escaping in JSON or LIKE.
    pub async fn sidecars_reporting_on(&self, service: &str) -> Result<Vec<SidecarRow>, StoreError> {
        Ok(sqlx::query_as::<_, DbRow>(&format!(
            "SELECT {COLUMNS} FROM sidecars WHERE health LIKE $1 ORDER BY service, version, pod"
        ))
        .bind(format!("%\"service\":\"{service}\"%"))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(SidecarRow::from)
        .collect())
    }
}
