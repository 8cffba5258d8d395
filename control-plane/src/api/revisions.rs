//! `GET /revisions`, `GET /revisions/{n}` and `POST /revisions/{n}/revert`: the
//! history of every change and how far each has spread.

use super::error::{ApiError, ApiResult};
use super::extract::{Actor, Path, Query};
use super::format::{rfc3339, shown_document};
use super::state::AppState;
use crate::store::{RevisionRecord, RevisionSummary as Row, StoreError};
use axum::extract::State;
use axum::Json;
use outrider_api::{Problem, RevisionDetail, RevisionQuery, RevisionSummary};

fn summary(s: &Row) -> RevisionSummary {
    RevisionSummary {
        revision: s.revision,
        time: rfc3339(s.created_at_ms),
        actor: s.actor.clone(),
        kind: s.kind.clone(),
        service: s.service.clone(),
        name: (!s.name.is_empty()).then(|| s.name.clone()),
        operation: s.operation.clone(),
        reverts: s.reverts,
        propagation: None,
    }
}

fn detail(r: &RevisionRecord) -> RevisionDetail {
    let s = summary(&r.summary);
    RevisionDetail {
        revision: s.revision,
        time: s.time,
        actor: s.actor,
        kind: s.kind,
        service: s.service,
        name: s.name,
        operation: s.operation,
        reverts: s.reverts,
        before: r.before.as_ref().map(|d| shown_document(&r.summary.kind, d)),
        after: r.after.as_ref().map(|d| shown_document(&r.summary.kind, d)),
        propagation: None,
    }
}

#[utoipa::path(get, path = "/revisions", tag = "revisions", params(RevisionQuery),
    responses(
        (status = 200, description = "history, newest first, with propagation (applied, pending, lastAckSeconds)", body = Vec<RevisionSummary>),
        (status = 400, description = "malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<RevisionQuery>,
) -> ApiResult<Json<Vec<RevisionSummary>>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let revs = state.store.list_revisions(q.service.as_deref(), limit).await?;
    let mut out: Vec<RevisionSummary> = revs.iter().map(summary).collect();
    if let (Some(newest), Some(oldest)) = (revs.first(), revs.last()) {
        let prop = state.store.propagation_range(oldest.revision, newest.revision).await?;
        for v in &mut out {
            v.propagation = Some(crate::propagation::view(prop.get(&v.revision)));
        }
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/revisions/{n}", tag = "revisions",
    params(("n" = u64, Path, description = "revision number")),
    responses(
        (status = 200, description = "one change with its document before and after, and its propagation", body = RevisionDetail),
        (status = 400, description = "not a revision number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such revision", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(State(state): State<AppState>, Path(n): Path<u64>) -> ApiResult<Json<RevisionDetail>> {
    let r = state
        .store
        .get_revision(n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no revision {n}")))?;
    let mut v = detail(&r);
    v.propagation = Some(crate::propagation::view(Some(&state.store.propagation(n).await?)));
    Ok(Json(v))
}

#[utoipa::path(post, path = "/revisions/{n}/revert", tag = "revisions",
    params(("n" = u64, Path, description = "revision number")),
    responses(
        (status = 200, description = "the new revision restoring the state before n", body = RevisionDetail),
        (status = 400, description = "not a revision number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such revision", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a canary rollout drives the routing weights the revert would change", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn revert(
    State(state): State<AppState>,
    Path(n): Path<u64>,
    Actor(actor): Actor,
) -> ApiResult<Json<RevisionDetail>> {
    // Reverting a routing change is a weight edit like any other: refused while a
    // canary rollout drives the service.
    if let Some(rec) = state.store.get_revision(n).await? {
        if rec.summary.kind == outrider_policy::PolicyKind::Routing.as_str() {
            let restored: Option<outrider_policy::RoutingPolicy> =
                rec.before.clone().and_then(|d| outrider_policy::from_value(d).ok());
            super::canary::refuse_while_driven(&state, &rec.summary.service, restored.as_ref()).await?;
        }
    }
    let r = match state.store.revert(n, &actor).await {
        Err(StoreError::NotFound) => return Err(ApiError::NotFound(format!("no revision {n}"))),
        r => r?,
    };
    state.after_write().await;
    Ok(Json(detail(&r)))
}
