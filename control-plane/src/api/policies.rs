//! `GET PUT DELETE /services/{service}/policies/{kind}`: policy documents, validated
//! by `outrider-policy` before anything is stored (422 naming every bad field).

use super::error::{ApiError, ApiResult};
use super::extract::{check_service, Actor, Body, IfMatch, Path, Query};
use super::format::{etag, policy_record, shown_document, Written};
use super::sidecars::dry_run_report;
use super::state::AppState;
use crate::store::StoreError;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use outrider_api::{PolicyDeleteResponse, PolicyDeleted, PolicyPutResponse, PolicyRecord, Problem, WriteQuery};
use outrider_policy::{Policy, PolicyKind, RoutingPolicy};

fn parse_kind(kind: &str) -> ApiResult<PolicyKind> {
    Ok(kind.parse::<PolicyKind>()?)
}

#[utoipa::path(get, path = "/services/{service}/policies/{kind}", tag = "policies",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("kind" = inline(outrider_api::PolicyKindName), Path, description = "routing, rate-limit, logging or authorization")),
    responses(
        (status = 200, description = "the policy with its revision; ETag", body = PolicyRecord,
            headers(("ETag" = String, description = "the revision, quoted"))),
        (status = 404, description = "no such policy, or an unknown kind", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not a valid service name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    Path((service, kind)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    check_service(&service)?;
    let kind = parse_kind(&kind)?;
    let p = state
        .store
        .get_policy(&service, kind)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("service {service:?} has no {kind} policy")))?;
    Ok(([(header::ETAG, etag(p.revision))], Json(policy_record(&p))))
}

#[utoipa::path(put, path = "/services/{service}/policies/{kind}", tag = "policies",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("kind" = inline(outrider_api::PolicyKindName), Path, description = "routing, rate-limit, logging or authorization"),
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the document changed since")),
    request_body(content = Object, description = "the policy document (see docs/reference.md)", content_type = "application/json"),
    responses(
        (status = 200, description = "stored (with its revision and ETag), or the dry-run report", body = PolicyPutResponse),
        (status = 400, description = "malformed JSON or query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown kind", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a canary rollout drives the routing weights this write would change", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid document; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn put(
    State(state): State<AppState>,
    Path((service, kind)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    Actor(actor): Actor,
    IfMatch(precondition): IfMatch,
    Body(body): Body,
) -> ApiResult<Written<PolicyRecord>> {
    check_service(&service)?;
    let kind = parse_kind(&kind)?;
    let policy = Policy::parse(kind, &body)?;
    let mut document = policy.to_json();
    if kind == PolicyKind::Logging {
        // A sink URL read from this API comes masked; sent back as it was read, it
        // means "keep the stored credentials".
        if let Some(stored) = state.store.get_policy(&service, kind).await? {
            outrider_policy::restore_masked_credentials(&mut document, &stored.document);
        }
    }
    if kind == PolicyKind::Routing {
        let next: Option<RoutingPolicy> = outrider_policy::from_value(document.clone()).ok();
        super::canary::refuse_while_driven(&state, &service, next.as_ref()).await?;
    }
    if q.dry_run {
        let current = state.store.get_policy(&service, kind).await?;
        // A dry run answers what the write would: a stale If-Match is a 412 here too.
        precondition.check(current.as_ref().map(|c| c.revision))?;
        let changed = current.as_ref().map(|c| &c.document) != Some(&document);
        let scope = (kind != PolicyKind::Routing).then_some(service.as_str());
        let shown = shown_document(kind.as_str(), &document);
        return Ok(Written::DryRun(dry_run_report(&state, scope, changed, shown).await?));
    }
    let stored = state
        .store
        .put_policy(&service, kind, &document, precondition, &actor)
        .await?;
    state.after_write().await;
    Ok(Written::Stored {
        revision: stored.revision,
        body: policy_record(&stored),
    })
}

#[utoipa::path(delete, path = "/services/{service}/policies/{kind}", tag = "policies",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("kind" = inline(outrider_api::PolicyKindName), Path, description = "routing, rate-limit, logging or authorization"),
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "the ETag read; 412 if the document changed since")),
    responses(
        (status = 200, description = "deleted (the revision of the deletion), or the dry-run report", body = PolicyDeleteResponse),
        (status = 404, description = "no such policy, or an unknown kind", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a canary rollout drives the routing weights", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not a valid service name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    Path((service, kind)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    Actor(actor): Actor,
    IfMatch(precondition): IfMatch,
) -> ApiResult<Json<PolicyDeleteResponse>> {
    check_service(&service)?;
    let kind = parse_kind(&kind)?;
    if kind == PolicyKind::Routing {
        super::canary::refuse_while_driven(&state, &service, None).await?;
    }
    if q.dry_run {
        let Some(current) = state.store.get_policy(&service, kind).await? else {
            return Err(ApiError::NotFound(format!("service {service:?} has no {kind} policy")));
        };
        precondition.check(Some(current.revision))?;
        let scope = (kind != PolicyKind::Routing).then_some(service.as_str());
        return Ok(Json(PolicyDeleteResponse::DryRun(
            dry_run_report(&state, scope, true, serde_json::Value::Null).await?,
        )));
    }
    let revision = match state.store.delete_policy(&service, kind, precondition, &actor).await {
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!("service {service:?} has no {kind} policy")))
        }
        r => r?,
    };
    state.after_write().await;
    Ok(Json(PolicyDeleteResponse::Deleted(PolicyDeleted {
        service,
        kind: kind.as_str().to_owned(),
        revision,
        deleted: true,
    })))
}
