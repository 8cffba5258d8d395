//! `POST GET DELETE /services/{service}/canary`: starting, reading and aborting an
//! automated rollout; `crate::canary` drives it once it is stored.

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, Path};
use super::state::AppState;
use crate::canary::{routing_policy, validate, write_policy};
use crate::store::{RolloutRow, StoreError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use outrider_api::{FieldError, Problem, RolloutRequest, RolloutState, RolloutStatus};
use outrider_policy::canary;

/// A stored rollout as the API shows it.
fn rollout_status(r: &RolloutRow) -> ApiResult<RolloutStatus> {
    // The spec was stored from a RolloutRequest; failing to read it back is our fault.
    let spec: RolloutRequest = serde_json::from_value(r.spec.clone()).map_err(ApiError::internal)?;
    let state: RolloutState = r.state.parse().map_err(ApiError::internal)?;
    let weight = if r.step_started_ms == 0 && state == RolloutState::Running {
        0
    } else {
        spec.steps.get(r.step as usize).copied().unwrap_or(0)
    };
    Ok(RolloutStatus {
        service: r.service.clone(),
        subset: spec.subset,
        stable: spec.stable,
        steps: spec.steps,
        interval: spec.interval.to_string(),
        max_error_rate: spec.max_error_rate,
        max_p99: spec.max_p99.map(|d| d.to_string()),
        state,
        step: r.step,
        weight,
        reason: r.reason.clone(),
        started_at_ms: r.started_ms,
        updated_at_ms: r.updated_ms,
        driver: r.lease_owner.clone(),
    })
}

/// A service name that cannot be one has no rollout.
fn check_service(service: &str) -> ApiResult<()> {
    outrider_policy::validate_service_name(service).map_err(ApiError::NotFound)
}

#[utoipa::path(post, path = "/services/{service}/canary", tag = "canary",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    request_body(content = RolloutRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "the rollout started; the control plane drives it", body = RolloutStatus),
        (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not a valid service name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a rollout is already running", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid rollout; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn start(
    State(state): State<AppState>,
    Path(service): Path<String>,
    JsonBody(mut spec): JsonBody<RolloutRequest>,
) -> ApiResult<(StatusCode, Json<RolloutStatus>)> {
    check_service(&service)?;
    let errors = validate(&spec);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors.into_iter().map(FieldError::from).collect()));
    }
    if spec.stable.is_none() {
        let current = routing_policy(&state.store, &service).await?;
        let stable = current
            .as_ref()
            .and_then(canary::weights)
            .map(|w| w.stable.0)
            .filter(|s| *s != spec.subset)
            .unwrap_or_else(|| "v1".into());
        spec.stable = Some(stable);
    }
    let doc = serde_json::to_value(&spec).map_err(ApiError::internal)?;
    match state.store.start_rollout(&service, &doc).await? {
        Some(r) => {
            tracing::info!(service, subset = %spec.subset, "canary rollout started");
            Ok((StatusCode::CREATED, Json(rollout_status(&r)?)))
        }
        None => Err(ApiError::Conflict(format!(
            "a canary rollout of {service} is already running; abort it first"
        ))),
    }
}

#[utoipa::path(get, path = "/services/{service}/canary", tag = "canary",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "the latest rollout, whatever its state: step, weight, reason", body = RolloutStatus),
        (status = 404, description = "no rollout for this service", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(State(state): State<AppState>, Path(service): Path<String>) -> ApiResult<Json<RolloutStatus>> {
    check_service(&service)?;
    match state.store.get_rollout(&service).await? {
        Some(r) => Ok(Json(rollout_status(&r)?)),
        None => Err(ApiError::NotFound(format!("no canary rollout for {service}"))),
    }
}

#[utoipa::path(delete, path = "/services/{service}/canary", tag = "canary",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "aborted; 100% to the stable subset", body = RolloutStatus),
        (status = 404, description = "no running rollout", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn abort(State(state): State<AppState>, Path(service): Path<String>) -> ApiResult<Json<RolloutStatus>> {
    check_service(&service)?;
    if !state.store.abort_rollout(&service, "aborted through the API").await? {
        return Err(ApiError::NotFound(format!("no running canary rollout for {service}")));
    }
    let r = state.store.get_rollout(&service).await?.ok_or(StoreError::NotFound)?;
    let stable = r.spec["stable"].as_str().map(str::to_owned);
    let current = routing_policy(&state.store, &service).await?;
    if let Ok(p) = canary::abort(current.as_ref(), stable.as_deref()) {
        write_policy(&state.hub, &service, &p).await?;
    }
    Ok(Json(rollout_status(&r)?))
}
