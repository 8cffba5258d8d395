//! Reads behind the dashboard's live fleet view.

use super::{sidecar_from_row, SidecarRow, Store, StoreError};

impl Store {
    /// Sidecars whose row changed (report, ACK, NACK, connect, disconnect) at or after
    /// `since_ms`: every replica's streams write `last_seen_ms`, so this sees them all.
    pub async fn sidecars_seen_since(&self, since_ms: i64) -> Result<Vec<SidecarRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, service, version, namespace, pod, address, inbound_port, outbound_port, admin_port,
                 build_version, replica, connected, connected_at_ms, last_seen_ms, applied_revision, last_nack,
                 last_nack_revision, health
             FROM sidecars WHERE last_seen_ms >= $1 ORDER BY service, version, pod",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sidecar_from_row).collect()
    }
}
