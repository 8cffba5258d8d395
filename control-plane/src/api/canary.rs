//! `/services/{service}/canary`: automated rollouts (`POST` starts one, `GET` reads
//! the latest, `DELETE` aborts) and manual canary edits (`PUT …/canary/weight`,
//! `POST …/canary/promote`); `crate::canary` drives a rollout once it is stored.
//!
//! Every write here refuses, creating nothing, an unknown service (404) and a subset
//! that would take traffic without a healthy instance (409). While a rollout is
//! active it alone moves the service's weights: manual edits, and RoutingPolicy
//! writes that change the managed route's weights, get 409 (`refuse_while_driven`).

use super::error::{ApiError, ApiResult};
use super::extract::{Actor, JsonBody, Path};
use super::format::policy_record;
use super::state::AppState;
use crate::canary::{routing_policy, stable_of, time_left_ms, validate, write_policy, StepWindow};
use crate::store::{now_ms, RolloutRow, StatusClock, StoreError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use outrider_api::{
    CanaryWeightRequest, FieldError, PolicyRecord, Problem, RolloutRequest, RolloutState, RolloutStatus,
};
use outrider_policy::canary::{self, CanaryError};
use outrider_policy::RoutingPolicy;

/// A stored rollout as the API shows it.
fn rollout_status(r: &RolloutRow) -> ApiResult<RolloutStatus> {
    // The spec was stored from a RolloutRequest; failing to read it back is our fault.
    let spec: RolloutRequest = serde_json::from_value(r.spec.clone()).map_err(ApiError::internal)?;
    let state: RolloutState = r.state.parse().map_err(ApiError::internal)?;
    let weight = if r.step_started_ms == 0 && state.is_active() {
        0
    } else {
        spec.steps.get(r.step as usize).copied().unwrap_or(0)
    };
    let window: StepWindow = serde_json::from_value(r.window.clone()).unwrap_or_default();
    let stable = stable_of(&spec);
    Ok(RolloutStatus {
        service: r.service.clone(),
        figures: window.figures(&spec.subset, &stable),
        time_left_ms: time_left_ms(&spec, state, r.step_started_ms, now_ms()),
        subset: spec.subset,
        stable: spec.stable,
        steps: spec.steps,
        interval: spec.interval.to_string(),
        max_error_rate: spec.max_error_rate,
        max_p99: spec.max_p99.map(|d| d.to_string()),
        min_requests: spec.min_requests,
        max_hold_intervals: spec.max_hold_intervals,
        max_success_rate_drop: spec.max_success_rate_drop,
        max_latency_ratio: spec.max_latency_ratio,
        active: state.is_active(),
        state,
        step: r.step,
        weight,
        reason: r.reason.clone(),
        started_at_ms: r.started_ms,
        updated_at_ms: r.updated_ms,
        step_started_at_ms: r.step_started_ms,
        driver: r.lease_owner.clone(),
        actor: r.actor.clone(),
    })
}

/// A service name that cannot be one has no rollout.
fn check_service(service: &str) -> ApiResult<()> {
    outrider_policy::validate_service_name(service).map_err(ApiError::NotFound)
}

/// 404 unless something names the service: a canary write never creates one.
async fn known_service(state: &AppState, service: &str) -> ApiResult<()> {
    check_service(service)?;
    if state.store.service_exists(service).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("unknown service {service:?}")))
    }
}

/// 409 unless `subset` of `service` has a healthy instance to take traffic.
async fn healthy_subset(state: &AppState, service: &str, subset: &str) -> ApiResult<()> {
    let t = state.hub.timing;
    let clock = StatusClock {
        now_ms: now_ms(),
        unhealthy_after_ms: t.unhealthy_after.as_millis() as i64,
        disconnected_after_ms: t.disconnected_after.as_millis() as i64,
    };
    let healthy: u64 = state
        .store
        .subset_counts(clock)
        .await?
        .iter()
        .filter(|c| c.service == service && c.version == subset)
        .map(|c| c.healthy)
        .sum();
    if healthy > 0 {
        Ok(())
    } else {
        Err(ApiError::Conflict(format!(
            "subset {subset:?} of {service} has no healthy instance; traffic sent to it would fail"
        )))
    }
}

/// The one line every refusal during a rollout gives.
fn driven_by(r: &RolloutRow) -> String {
    let spec: Option<RolloutRequest> = serde_json::from_value(r.spec.clone()).ok();
    let (subset, step) = spec.as_ref().map_or_else(
        || ("?".to_owned(), String::new()),
        |s| {
            let weight = s.steps.get(r.step as usize).copied().unwrap_or(0);
            (
                s.subset.clone(),
                format!(", step {}/{} at {weight}%", r.step + 1, s.steps.len()),
            )
        },
    );
    format!(
        "the weights of {} are driven by a canary rollout of {subset} ({}{step}, started by {}); \
         abort it first (outriderctl canary abort {})",
        r.service, r.state, r.actor, r.service
    )
}

/// 409 when an active rollout drives `service` and `next` would move the managed
/// route's weights (or remove the policy, `None`). Edits that leave the weights as
/// they are (a timeout, a header route) pass.
pub async fn refuse_while_driven(state: &AppState, service: &str, next: Option<&RoutingPolicy>) -> ApiResult<()> {
    let Some(r) = state.store.active_rollout(service).await? else {
        return Ok(());
    };
    let current = routing_policy(&state.store, service).await?;
    let weights = |p: Option<&RoutingPolicy>| p.and_then(canary::weights);
    if next.is_some() && weights(current.as_ref()) == weights(next) {
        return Ok(());
    }
    Err(ApiError::Conflict(driven_by(&r)))
}

async fn refuse_any_while_driven(state: &AppState, service: &str) -> ApiResult<()> {
    match state.store.active_rollout(service).await? {
        Some(r) => Err(ApiError::Conflict(driven_by(&r))),
        None => Ok(()),
    }
}

fn canary_error(e: CanaryError) -> ApiError {
    let field = match &e {
        CanaryError::Weight(_) => "weight",
        CanaryError::SameSubset(_) => "stable",
        CanaryError::Subset(_) => "subset",
        CanaryError::NoCanary | CanaryError::Invalid(_) => "",
    };
    if field.is_empty() {
        ApiError::Conflict(e.to_string())
    } else {
        ApiError::Invalid(vec![FieldError {
            field: field.into(),
            message: e.to_string(),
        }])
    }
}

#[utoipa::path(post, path = "/services/{service}/canary", tag = "canary",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    request_body(content = RolloutRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "the rollout started; the control plane drives it", body = RolloutStatus),
        (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown service", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a rollout is already active, or the subset has no healthy instance", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid rollout; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn start(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Actor(actor): Actor,
    JsonBody(mut spec): JsonBody<RolloutRequest>,
) -> ApiResult<(StatusCode, Json<RolloutStatus>)> {
    check_service(&service)?;
    let errors = validate(&spec);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors.into_iter().map(FieldError::from).collect()));
    }
    known_service(&state, &service).await?;
    healthy_subset(&state, &service, &spec.subset).await?;
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
    match state.store.start_rollout(&service, &doc, &actor).await? {
        Some(r) => {
            tracing::info!(service, subset = %spec.subset, %actor, "canary rollout started");
            Ok((StatusCode::CREATED, Json(rollout_status(&r)?)))
        }
        None => Err(ApiError::Conflict(format!(
            "a canary rollout of {service} is already active; abort it first"
        ))),
    }
}

#[utoipa::path(get, path = "/services/{service}/canary", tag = "canary",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "the latest rollout, whatever its state: step, weight, reason, figures of the step", body = RolloutStatus),
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
        (status = 404, description = "no active rollout", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn abort(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Actor(actor): Actor,
) -> ApiResult<Json<RolloutStatus>> {
    check_service(&service)?;
    if !state
        .store
        .abort_rollout(&service, &format!("aborted by {actor}"))
        .await?
    {
        return Err(ApiError::NotFound(format!("no active canary rollout for {service}")));
    }
    let r = state.store.get_rollout(&service).await?.ok_or(StoreError::NotFound)?;
    let stable = r.spec["stable"].as_str().map(str::to_owned);
    let current = routing_policy(&state.store, &service).await?;
    if let Ok(p) = canary::abort(current.as_ref(), stable.as_deref()) {
        write_policy(&state.hub, &service, &p, &actor).await?;
    }
    Ok(Json(rollout_status(&r)?))
}

#[utoipa::path(put, path = "/services/{service}/canary/weight", tag = "canary",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    request_body(content = CanaryWeightRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "the RoutingPolicy as stored with the new weights", body = PolicyRecord),
        (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown service", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "an automated rollout drives the weights, or the subset has no healthy instance", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "bad weight or subset; `errors` names the field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn set_weight(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Actor(actor): Actor,
    JsonBody(req): JsonBody<CanaryWeightRequest>,
) -> ApiResult<Json<PolicyRecord>> {
    check_service(&service)?;
    let current = routing_policy(&state.store, &service).await?;
    let next =
        canary::set_weight(current.as_ref(), &req.subset, req.weight, req.stable.as_deref()).map_err(canary_error)?;
    known_service(&state, &service).await?;
    refuse_any_while_driven(&state, &service).await?;
    // Every subset the new split gives traffic to must be able to answer.
    if let Some(w) = canary::weights(&next) {
        for (subset, weight) in std::iter::once(&w.stable).chain(w.canary.as_ref()) {
            if *weight > 0 {
                healthy_subset(&state, &service, subset).await?;
            }
        }
    }
    let stored = write_policy(&state.hub, &service, &next, &actor).await?;
    Ok(Json(policy_record(&stored)))
}

#[utoipa::path(post, path = "/services/{service}/canary/promote", tag = "canary",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "the canary is the stable subset with 100%: the RoutingPolicy as stored", body = PolicyRecord),
        (status = 404, description = "unknown service", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "an automated rollout drives the weights, there is no canary, or it has no healthy instance", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn promote(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Actor(actor): Actor,
) -> ApiResult<Json<PolicyRecord>> {
    known_service(&state, &service).await?;
    refuse_any_while_driven(&state, &service).await?;
    let current = routing_policy(&state.store, &service).await?;
    let next = canary::promote(current.as_ref()).map_err(canary_error)?;
    if let Some(w) = canary::weights(&next) {
        healthy_subset(&state, &service, &w.stable.0).await?;
    }
    let stored = write_policy(&state.hub, &service, &next, &actor).await?;
    Ok(Json(policy_record(&stored)))
}
