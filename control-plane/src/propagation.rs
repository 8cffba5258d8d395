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

/// The API's view of a revision's spread (zeros when no sidecar was connected to the
/// service at the time).
pub fn view(p: Option<&crate::store::Propagation>) -> outrider_api::Propagation {
    p.map_or_else(outrider_api::Propagation::default, |p| outrider_api::Propagation {
        applied: p.applied,
        pending: p.pending,
        last_ack_seconds: p.last_ack_seconds,
    })
}
