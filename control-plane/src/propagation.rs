//! Propagation visibility: how many sidecars applied each revision and how long the
//! last one took (write → ACK). ACK times go to the store, so every replica answers
//! alike; each replica also observes the delays of its own streams in
//! `outrider_control_plane_propagation_seconds`.

use crate::hub::Hub;

/// Records an ACK's propagation before the ACK itself moves `applied_revision`.
pub async fn on_ack(hub: &Hub, id: &str, session: &str, revision: u64) {
    match hub.store().record_propagation(id, session, revision).await {
        Ok(delays) => {
            for ms in delays {
                hub.metrics.propagation_seconds.observe(ms as f64 / 1000.0);
            }
        }
        // Only the figure suffers; the ACK itself is still recorded.
        Err(e) => tracing::warn!(error = %e, "could not record propagation"),
    }
}

/// The API's view: `{"applied", "pending", "lastAckSeconds"}` (zeros when no sidecar
/// was connected to the service at the time).
pub fn json(p: Option<&crate::store::Propagation>) -> serde_json::Value {
    match p {
        Some(p) => serde_json::to_value(p).unwrap_or_default(),
        None => serde_json::json!({"applied": 0, "pending": 0, "lastAckSeconds": null}),
    }
}
