//! `GET /sidecars`, paged and filtered by the database, and the one place a sidecar
//! row becomes its API view (used by services, dry runs and the live fleet events too).

use super::error::{ApiError, ApiResult};
use super::extract::Query;
use super::format::rfc3339;
use super::state::AppState;
use crate::hub::Hub;
use crate::store::{now_ms, SidecarCursor, SidecarFilter, SidecarRow, SidecarStatus as RowStatus, StatusFilter};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use outrider_api::{
    DryRunReport, LastNack, Problem, Sidecar, SidecarHealth, SidecarQuery, SidecarStatus, API_PREFIX,
    DEFAULT_SIDECAR_PAGE, MAX_SIDECAR_PAGE,
};
use std::collections::HashMap;

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
        identity: s.identity,
        certificate_expiry: s.certificate_expiry_ms.map(rfc3339),
    }
}

/// Every sidecar (of `service`, if given), each with its service's target revision.
pub async fn sidecar_views(state: &AppState, service: Option<&str>) -> ApiResult<Vec<Sidecar>> {
    let rows = state.store.list_sidecars(service).await?;
    views_of(state, rows, now_ms()).await
}

/// Rows as the API shows them at `now`, each with its service's newest revision as the
/// target: one read of every service's revision, however many services the rows span.
async fn views_of(state: &AppState, rows: Vec<SidecarRow>, now: i64) -> ApiResult<Vec<Sidecar>> {
    let targets = state.store.service_revisions().await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let target = target_of(&targets, &r.service);
            sidecar_view(r, &state.hub, target, now)
        })
        .collect())
}

/// A service's target revision from [`crate::store::Store::service_revisions`]; a
/// service without history has none (0).
pub fn target_of(targets: &HashMap<String, u64>, service: &str) -> u64 {
    targets.get(service).copied().unwrap_or(0)
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

/// A page's end as the `after` of the next request: base64url of its JSON, so it is
/// URL-safe and clients treat it as opaque (the sort key may change).
fn encode_cursor(c: &SidecarCursor) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap_or_default())
}

fn decode_cursor(text: &str) -> ApiResult<SidecarCursor> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::BadRequest("malformed cursor in after: pass the one a rel=\"next\" link gave".into()))
}

fn row_status(s: SidecarStatus) -> RowStatus {
    match s {
        SidecarStatus::Healthy => RowStatus::Healthy,
        SidecarStatus::Unhealthy => RowStatus::Unhealthy,
        SidecarStatus::Disconnected => RowStatus::Disconnected,
    }
}

/// `Link: </api/v1/sidecars?…&after=…>; rel="next"`, with the request's own filters
/// and limit, so following it continues the same listing.
fn next_link(q: &SidecarQuery, next: &SidecarCursor) -> Option<HeaderValue> {
    let query = SidecarQuery {
        after: Some(encode_cursor(next)),
        ..q.clone()
    };
    let query = serde_urlencoded::to_string(&query).ok()?;
    HeaderValue::from_str(&format!("<{API_PREFIX}/sidecars?{query}>; rel=\"next\"")).ok()
}

#[utoipa::path(get, path = "/sidecars", tag = "sidecars", params(SidecarQuery),
    responses(
        (status = 200, description = "one page of instances in (service, version, pod, id) order, filtered by the server: status, applied and target revision, last NACK, last seen, health figures. Without `limit` a page holds 500. When more follow, `Link` names the next page.",
            body = Vec<Sidecar>,
            headers(("Link" = String, description = "`</api/v1/sidecars?…&after=CURSOR>; rel=\"next\"` while more sidecars follow; absent on the last page"))),
        (status = 400, description = "malformed query parameter (a status other than healthy, unhealthy or disconnected, a cursor no link gave), or a limit out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<SidecarQuery>,
) -> ApiResult<(HeaderMap, Json<Vec<Sidecar>>)> {
    let limit = q.limit.unwrap_or(DEFAULT_SIDECAR_PAGE);
    if !(1..=MAX_SIDECAR_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_SIDECAR_PAGE}"
        )));
    }
    let after = q.after.as_deref().map(decode_cursor).transpose()?;
    // One instant for the filter and the views, so a listed row shows the status it
    // was selected for.
    let now = now_ms();
    let t = state.hub.timing;
    let filter = SidecarFilter {
        service: q.service.clone(),
        status: q.status.map(|s| StatusFilter {
            status: row_status(s),
            now_ms: now,
            unhealthy_after_ms: t.unhealthy_after.as_millis() as i64,
            disconnected_after_ms: t.disconnected_after.as_millis() as i64,
        }),
        text: q.q.clone(),
    };
    let page = state.store.list_sidecars_page(&filter, limit, after.as_ref()).await?;
    let mut headers = HeaderMap::new();
    if let Some(link) = page.next.as_ref().and_then(|next| next_link(&q, next)) {
        headers.insert(header::LINK, link);
    }
    Ok((headers, Json(views_of(&state, page.rows, now).await?)))
}
