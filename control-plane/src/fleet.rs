//! Live fleet updates for `/api/v1/events`: once a second, while anyone listens, the
//! rows of sidecars that changed are sent as one `sidecars` event, so a dashboard
//! patches those rows instead of re-reading the fleet. The read goes to the store, so
//! sidecars streaming to other replicas are included.

use crate::api::sidecars::sidecar_view;
use crate::api::state::AppState;
use crate::hub::Event;
use crate::store::{now_ms, StoreError};
use outrider_runtime::shutdown::CancellationToken;
use std::collections::HashMap;
use std::time::Duration;

/// How often changed rows are gathered; sidecars report once a second.
pub const PERIOD: Duration = Duration::from_secs(1);

pub async fn run(state: AppState, shutdown: CancellationToken) {
    {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut since = now_ms();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = now_ms();
            if state.hub.event_listeners() == 0 {
                since = now;
                continue;
            }
            // Overlap one period: a row stamped just before `since` may commit after
            // the previous read. Patching a row twice is harmless.
            match changed_rows(&state, since - PERIOD.as_millis() as i64).await {
                Ok(rows) if !rows.is_empty() => state.hub.publish(Event::Sidecars { sidecars: rows }),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading changed sidecars failed"),
            }
            since = now;
        }
    }
}

async fn changed_rows(state: &AppState, since_ms: i64) -> Result<Vec<serde_json::Value>, StoreError> {
    let rows = state.store.sidecars_seen_since(since_ms).await?;
    let mut targets: HashMap<String, u64> = HashMap::new();
    let now = now_ms();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let target = match targets.get(&r.service) {
            Some(t) => *t,
            None => {
                let t = state.store.service_revision(&r.service).await?;
                targets.insert(r.service.clone(), t);
                t
            }
        };
        out.push(serde_json::to_value(sidecar_view(r, &state.hub, target, now)).unwrap_or_default());
    }
    Ok(out)
}
