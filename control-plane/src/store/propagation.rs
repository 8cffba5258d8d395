//! Propagation of revisions: when each sidecar connected at write time first applied
//! each revision of its service, so any replica can say how many applied it and how
//! long the last one took.

use super::db::{now_ms, Store, StoreError};
use serde::Serialize;

/// How far one revision has spread.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Propagation {
    /// Sidecars that applied it (that revision or a later one of the service).
    pub applied: u64,
    /// Sidecars connected when it was written, still connected, that have not yet.
    pub pending: u64,
    /// Write → last ACK so far, in seconds (`None` before the first ACK).
    pub last_ack_seconds: Option<f64>,
}

impl Store {
    /// Records that sidecar `id` (stream `session`) applied `revision`: every revision
    /// of its service it had not applied yet, written while it was connected, is now
    /// applied. Returns the write → ACK delay of each newly applied revision, in ms.
    /// Must run before [`Store::record_ack`] moves `applied_revision` forward.
    pub async fn record_propagation(&self, id: &str, session: &str, revision: u64) -> Result<Vec<i64>, StoreError> {
        let now = now_ms();
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT r.revision, r.created_at_ms FROM revisions r JOIN sidecars s ON s.service = r.service
             WHERE s.id = $1 AND s.session = $2 AND r.revision > s.applied_revision AND r.revision <= $3
               AND r.created_at_ms >= s.connected_at_ms",
        )
        .bind(id)
        .bind(session)
        .bind(revision as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut delays = Vec::with_capacity(rows.len());
        for (rev, created) in rows {
            let inserted = sqlx::query(
                "INSERT INTO revision_acks (revision, sidecar_id, acked_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(rev)
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                delays.push((now - created).max(0));
            }
        }
        Ok(delays)
    }

    /// Propagation of every revision in `from..=to` (absent: not a revision, or no
    /// sidecar involved at all).
    pub async fn propagation_range(
        &self,
        from: u64,
        to: u64,
    ) -> Result<std::collections::HashMap<u64, Propagation>, StoreError> {
        let mut out = std::collections::HashMap::new();
        let acked: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT a.revision, COUNT(*) AS n, MAX(a.acked_at_ms) - MIN(r.created_at_ms) AS took
             FROM revision_acks a JOIN revisions r ON r.revision = a.revision
             WHERE a.revision BETWEEN $1 AND $2 GROUP BY a.revision",
        )
        .bind(from as i64)
        .bind(to as i64)
        .fetch_all(&self.pool)
        .await?;
        for (revision, n, took) in acked {
            out.insert(
                revision as u64,
                Propagation {
                    applied: n as u64,
                    pending: 0,
                    last_ack_seconds: Some(took.max(0) as f64 / 1000.0),
                },
            );
        }
        // An ACK's row in revision_acks is written at once, its `applied_revision` with
        // the next batch: either one says the sidecar has it.
        let pending: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT r.revision, COUNT(*) AS n FROM revisions r JOIN sidecars s ON s.service = r.service
             WHERE r.revision BETWEEN $1 AND $2 AND s.connected = 1 AND s.connected_at_ms <= r.created_at_ms
               AND s.applied_revision < r.revision
               AND NOT EXISTS (SELECT 1 FROM revision_acks a WHERE a.revision = r.revision AND a.sidecar_id = s.id)
             GROUP BY r.revision",
        )
        .bind(from as i64)
        .bind(to as i64)
        .fetch_all(&self.pool)
        .await?;
        for (revision, n) in pending {
            let e = out.entry(revision as u64).or_insert(Propagation {
                applied: 0,
                pending: 0,
                last_ack_seconds: None,
            });
            e.pending = n as u64;
        }
        Ok(out)
    }

    /// Propagation of one revision (zeros when no sidecar was involved).
    pub async fn propagation(&self, revision: u64) -> Result<Propagation, StoreError> {
        Ok(self
            .propagation_range(revision, revision)
            .await?
            .remove(&revision)
            .unwrap_or(Propagation {
                applied: 0,
                pending: 0,
                last_ack_seconds: None,
            }))
    }
}
