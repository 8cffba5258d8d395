//! `GET /sidecars`, and the one place a sidecar row becomes its API view (used by
//! services, dry runs and the live fleet events too).

use super::error::{ApiError, ApiResult};
use super::extract::Query;
use super::format::rfc3339;
use super::state::AppState;
use crate::hub::Hub;
use crate::store::{now_ms, SidecarFilter, SidecarRow, SidecarStatus as RowStatus};
use axum::extract::State;
use axum::Json;
use outrider_api::{DryRunReport, LastNack, Problem, Sidecar, SidecarHealth, SidecarQuery, SidecarStatus};
use std::collections::HashMap;

/// The largest `limit` of `GET /sidecars`.
const MAX_LIMIT: u32 = 10_000;

fn status(s: RowStatus) -> SidecarStatus {
    match s {
        RowStatus::Healthy => SidecarStatus::Healthy,
        RowStatus::Unhealthy => SidecarStatus::Unhealthy,
        RowStatus::Disconnected => SidecarStatus::Disconnected,
    }
}

/// A row as the API shows it; `target` is its service's current revision.
pub fn sidecar_view(s: SidecarRow, hub: &Hub, target: u64, now: i64) -> Sidecar {
    let t = hub.timing;
    let st = s.status(
        now,
        t.unhealthy_after.as_millis() as i64,
        t.disconnected_after.as_millis() as i64,
    );
    Sidecar {
        in_sync: s.applied_revision >= target && s.last_nack.is_none(),
        last_nack: s.last_nack.map(|error| LastNack {
            revision: s.last_nack_revision,
            error,
        }),
        id: s.id,
        service: s.service,
        version: s.version,
        namespace: s.namespace,
        pod: s.pod,
        address: s.address,
        inbound_port: s.inbound_port,
        admin_port: s.admin_port,
        status: status(st),
        applied_revision: s.applied_revision,
        target_revision: target,
        last_seen: rfc3339(s.last_seen_ms),
        connected_at: rfc3339(s.connected_at_ms),
        replica: s.replica,
        build_version: s.build_version,
        // Reports are written by this control plane's own sessions, so they read; a
        // row that does not is shown without figures rather than failing the list.
        health: s.health.and_then(|h| serde_json::from_value::<SidecarHealth>(h).ok()),
    }
}

/// Every sidecar (of `service`, if given), each with its service's target revision.
pub async fn sidecar_views(state: &AppState, service: Option<&str>) -> ApiResult<Vec<Sidecar>> {
    let rows = state.store.list_sidecars(service).await?;
    views_of(state, rows).await
}

/// Rows as the API shows them, each with its service's newest revision as the target.
async fn views_of(state: &AppState, rows: Vec<SidecarRow>) -> ApiResult<Vec<Sidecar>> {
    let mut targets: HashMap<String, u64> = HashMap::new();
    for r in &rows {
        if !targets.contains_key(&r.service) {
            targets.insert(r.service.clone(), state.store.service_revision(&r.service).await?);
        }
    }
    let now = now_ms();
    Ok(rows
        .into_iter()
        .map(|r| {
            let target = targets.get(&r.service).copied().unwrap_or(0);
            sidecar_view(r, &state.hub, target, now)
        })
        .collect())
}

/// The answer to a `?dryRun=true` write: whether it changes anything, the connected
/// sidecars that would receive a new snapshot (one service's, or every sidecar
/// (`scope: None`) for a RoutingPolicy, which callers enforce), and the document.
pub async fn dry_run_report(
    state: &AppState,
    scope: Option<&str>,
    changed: bool,
    document: serde_json::Value,
) -> ApiResult<DryRunReport> {
    let sidecars = if changed {
        sidecar_views(state, scope)
            .await?
            .into_iter()
            .filter(|s| s.status != SidecarStatus::Disconnected)
            .map(|s| s.id)
            .collect()
    } else {
        Vec::new()
    };
    Ok(DryRunReport {
        dry_run: true,
        valid: true,
        changed,
        sidecars,
        document,
    })
}

#[utoipa::path(get, path = "/sidecars", tag = "sidecars", params(SidecarQuery),
    responses(
        (status = 200, description = "every instance: status, applied and target revision, last NACK, last seen, health figures", body = Vec<Sidecar>),
        (status = 400, description = "malformed query parameter, or a limit out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(state): State<AppState>, Query(q): Query<SidecarQuery>) -> ApiResult<Json<Vec<Sidecar>>> {
    if let Some(limit) = q.limit {
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_LIMIT}")));
        }
    }
    let rows = match q.limit {
        // The database stops at the limit: no reading every row to keep a few.
        Some(limit) => {
            let filter = SidecarFilter {
                service: q.service.clone(),
                ..SidecarFilter::default()
            };
            state.store.list_sidecars_page(&filter, limit, None).await?.rows
        }
        None => state.store.list_sidecars(q.service.as_deref()).await?,
    };
    Ok(Json(views_of(&state, rows).await?))
}
