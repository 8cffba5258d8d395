//! Live fleet updates for `/api/v1/events`: once a second, while anyone listens, the
//! rows of sidecars that changed are sent as one `sidecars` event, so a dashboard
//! patches those rows instead of re-reading the fleet. The read goes to the store, so
//! sidecars streaming to other replicas are included.
//!
//! At fleet size nearly every row changes every second (each health report moves its
//! figures), which would make every event carry the whole fleet. So a row goes out at
//! once only when what a dashboard shows of its state changed (status, applied or
//! target revision, NACK, a new connection or replica); a row whose figures alone
//! moved goes out at most every [`FIGURES_PERIOD`]. The whole tick is two queries
//! (the rows seen since the last tick, every service's revision), never one per row
//! or per service.

use crate::api::sidecars::{sidecar_view, target_of};
use crate::api::state::AppState;
use crate::hub::{Event, Timing};
use crate::store::{now_ms, SidecarRow, SidecarStatus, StoreError};
use outrider_runtime::shutdown::CancellationToken;
use std::collections::HashMap;
use std::time::Duration;

/// How often changed rows are gathered; sidecars report once a second.
pub const PERIOD: Duration = Duration::from_secs(1);

/// How often a row whose only change is its health figures is sent again.
pub const FIGURES_PERIOD: Duration = Duration::from_secs(5);

pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since = now_ms();
    let mut sent = SentRows::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        if state.hub.event_listeners() == 0 {
            since = now;
            // A listener that comes later reads the rows it shows first; what was
            // sent to earlier ones is no baseline for it.
            sent = SentRows::default();
            continue;
        }
        // Overlap one period: a row stamped just before `since` may commit after the
        // previous read. A row read twice is sent once (`SentRows`).
        match changed_rows(&state, &mut sent, since - PERIOD.as_millis() as i64).await {
            Ok(rows) if !rows.is_empty() => state.hub.publish(Event::Sidecars { sidecars: rows }),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading changed sidecars failed"),
        }
        since = now;
    }
}

async fn changed_rows(
    state: &AppState,
    sent: &mut SentRows,
    since_ms: i64,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let rows = state.store.sidecars_seen_since(since_ms).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let targets = state.store.service_revisions().await?;
    let now = now_ms();
    Ok(sent
        .select(rows, &targets, state.hub.timing, now)
        .into_iter()
        .map(|(r, target)| serde_json::to_value(sidecar_view(r, &state.hub, target, now)).unwrap_or_default())
        .collect())
}

/// What a dashboard shows of a row apart from its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    status: SidecarStatus,
    applied_revision: u64,
    target_revision: u64,
    last_nack: Option<(Option<u64>, String)>,
    connected_at_ms: i64,
    replica: String,
}

struct Sent {
    shown: Shown,
    at_ms: i64,
}

/// The last row sent for each sidecar, while someone listens: one small entry per
/// sidecar, dropped when the last listener goes.
#[derive(Default)]
struct SentRows(HashMap<String, Sent>);

impl SentRows {
    /// Which of `rows` to send at `now_ms`, each with its target revision: those whose
    /// shown state changed since they were last sent, and those whose figures were
    /// last sent [`FIGURES_PERIOD`] ago or more.
    fn select(
        &mut self,
        rows: Vec<SidecarRow>,
        targets: &HashMap<String, u64>,
        timing: Timing,
        now_ms: i64,
    ) -> Vec<(SidecarRow, u64)> {
        let figures_period = FIGURES_PERIOD.as_millis() as i64;
        let mut out = Vec::new();
        for r in rows {
            let target = target_of(targets, &r.service);
            let shown = Shown {
                status: r.status(
                    now_ms,
                    timing.unhealthy_after.as_millis() as i64,
                    timing.disconnected_after.as_millis() as i64,
                ),
                applied_revision: r.applied_revision,
                target_revision: target,
                last_nack: r.last_nack.clone().map(|e| (r.last_nack_revision, e)),
                connected_at_ms: r.connected_at_ms,
                replica: r.replica.clone(),
            };
            let due = match self.0.get(&r.id) {
                None => true,
                Some(last) => last.shown != shown || now_ms - last.at_ms >= figures_period,
            };
            if due {
                self.0.insert(r.id.clone(), Sent { shown, at_ms: now_ms });
                out.push((r, target));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{reg, TestStore};
    use serde_json::json;

    fn ids(sent: &[(SidecarRow, u64)]) -> Vec<&str> {
        sent.iter().map(|(r, _)| r.id.as_str()).collect()
    }

    #[tokio::test]
    async fn a_row_whose_figures_alone_changed_waits_for_the_figures_period_and_a_state_change_does_not() {
        let t = TestStore::sqlite().await;
        let s = &t.store;
        for id in ["a", "b"] {
            s.register_sidecar(&reg(id, "web", id)).await.unwrap();
        }
        // Windows long enough that no row turns unhealthy while the test's clock runs.
        let timing = Timing {
            unhealthy_after: Duration::from_secs(600),
            disconnected_after: Duration::from_secs(1200),
            ..Timing::default()
        };
        let targets = HashMap::from([("web".to_owned(), 0)]);
        let period = FIGURES_PERIOD.as_millis() as i64;
        let mut sent = SentRows::default();
        let rows = || async { s.list_sidecars(None).await.unwrap() };
        let t0 = now_ms();
        assert_eq!(
            ids(&sent.select(rows().await, &targets, timing, t0)),
            ["a", "b"],
            "new rows go out"
        );
        s.record_health(
            "a",
            "a",
            &json!({"appHealthy": true, "requestsTotal": 5}).to_string(),
            "web",
        )
        .await
        .unwrap();
        assert!(
            sent.select(rows().await, &targets, timing, t0 + 1_000).is_empty(),
            "new figures only, too soon"
        );
        // b ACKs a revision, a reports its app unhealthy: both go out at once.
        s.record_ack("b", "b", 4).await.unwrap();
        s.record_health("a", "a", &json!({"appHealthy": false}).to_string(), "web")
            .await
            .unwrap();
        assert_eq!(
            ids(&sent.select(rows().await, &targets, timing, t0 + 2_000)),
            ["a", "b"]
        );
        s.record_health(
            "b",
            "b",
            &json!({"appHealthy": true, "requestsTotal": 9}).to_string(),
            "web",
        )
        .await
        .unwrap();
        assert!(sent.select(rows().await, &targets, timing, t0 + 3_000).is_empty());
        assert_eq!(
            ids(&sent.select(rows().await, &targets, timing, t0 + 2_000 + period)),
            ["a", "b"],
            "figures go out once the period has passed"
        );
        // A new target revision changes what every row of the service shows.
        let newer = HashMap::from([("web".to_owned(), 5)]);
        let out = sent.select(rows().await, &newer, timing, t0 + 2_001 + period);
        assert_eq!(ids(&out), ["a", "b"]);
        assert_eq!(out[0].1, 5);
        t.cleanup().await;
    }
}
