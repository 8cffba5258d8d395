//! `GET /services` and `GET /services/{service}`: what the mesh knows of each
//! service, gathered from its policies, config documents, sidecars and callers.

use super::configs::config_meta;
use super::error::{ApiError, ApiResult};
use super::extract::{check_service, Path};
use super::format::policy_record;
use super::sidecars::sidecar_views;
use super::state::AppState;
use crate::store::{now_ms, StatusClock, SubsetCounts};
use axum::extract::State;
use axum::Json;
use outrider_api::{
    InstanceSummary, PolicyRecord, Problem, ServiceDetail, ServiceSummary, Sidecar, SidecarStatus, SubsetTraffic,
};
use std::collections::HashMap;

/// Counts `n` instances of `version` with `status` into `sum`.
fn count(sum: &mut InstanceSummary, version: &str, status: SidecarStatus, n: u64) {
    sum.total += n;
    let subset = sum.subsets.entry(version.to_owned()).or_default();
    subset.total += n;
    match status {
        SidecarStatus::Healthy => {
            sum.healthy += n;
            subset.healthy += n;
        }
        SidecarStatus::Unhealthy => sum.unhealthy += n,
        SidecarStatus::Disconnected => sum.disconnected += n,
    }
}

fn instance_summary<'a>(sidecars: impl Iterator<Item = &'a Sidecar>) -> InstanceSummary {
    let mut sum = InstanceSummary::default();
    for s in sidecars {
        count(&mut sum, &s.version, s.status, 1);
    }
    sum
}

/// Every service's instance summary from the database's counts (no sidecar rows read).
fn summaries_of(counts: Vec<SubsetCounts>) -> HashMap<String, InstanceSummary> {
    let mut out: HashMap<String, InstanceSummary> = HashMap::new();
    for c in counts {
        let sum = out.entry(c.service).or_default();
        count(sum, &c.version, SidecarStatus::Healthy, c.healthy);
        count(sum, &c.version, SidecarStatus::Unhealthy, c.unhealthy);
        count(sum, &c.version, SidecarStatus::Disconnected, c.disconnected);
    }
    out
}

#[utoipa::path(get, path = "/services", tag = "services",
    responses(
        (status = 200, description = "services with instance counts per subset and health summary", body = Vec<ServiceSummary>),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<ServiceSummary>>> {
    // Three queries however many services and sidecars there are.
    let overviews = state.store.service_overviews().await?;
    let t = state.hub.timing;
    let clock = StatusClock {
        now_ms: now_ms(),
        unhealthy_after_ms: t.unhealthy_after.as_millis() as i64,
        disconnected_after_ms: t.disconnected_after.as_millis() as i64,
    };
    let mut instances = summaries_of(state.store.subset_counts(clock).await?);
    Ok(Json(
        overviews
            .into_iter()
            .map(|o| ServiceSummary {
                revision: o.revision,
                policies: o.policy_kinds,
                configs: o.configs,
                instances: instances.remove(&o.name).unwrap_or_default(),
                name: o.name,
            })
            .collect(),
    ))
}

/// Per-subset traffic figures of `service`, as its connected callers reported them:
/// only the rows of its callers are read, not the fleet.
async fn service_traffic(state: &AppState, service: &str) -> ApiResult<Vec<SubsetTraffic>> {
    let rows = state.store.sidecars_reporting_on(service).await?;
    let now = now_ms();
    let t = state.hub.timing;
    Ok(crate::traffic::aggregate(service, &rows, |r| {
        r.status(
            now,
            t.unhealthy_after.as_millis() as i64,
            t.disconnected_after.as_millis() as i64,
        ) != crate::store::SidecarStatus::Disconnected
    }))
}

#[utoipa::path(get, path = "/services/{service}", tag = "services",
    params(("service" = String, Path, description = "service name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "its policies, config documents, instances and traffic", body = ServiceDetail),
        (status = 404, description = "unknown service", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not a valid service name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "the token's role does not allow this", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn get(State(state): State<AppState>, Path(service): Path<String>) -> ApiResult<Json<ServiceDetail>> {
    check_service(&service)?;
    if !state.store.service_exists(&service).await? {
        return Err(ApiError::NotFound(format!("unknown service {service:?}")));
    }
    let policies: std::collections::BTreeMap<String, PolicyRecord> = state
        .store
        .list_policies(&service)
        .await?
        .iter()
        .map(|p| (p.kind.as_str().to_owned(), policy_record(p)))
        .collect();
    let configs = state
        .store
        .list_configs(&service)
        .await?
        .iter()
        .map(config_meta)
        .collect();
    let sidecars = sidecar_views(&state, Some(&service)).await?;
    let mtls = policies
        .get("authorization")
        .and_then(|p| p.document["mtls"].as_str())
        .unwrap_or("permissive")
        .to_owned();
    let plaintext_requests = sidecars
        .iter()
        .filter_map(|s| s.health.as_ref())
        .map(|h| h.plaintext_requests)
        .sum();
    Ok(Json(ServiceDetail {
        mtls,
        plaintext_requests,
        revision: state.store.service_revision(&service).await?,
        policies,
        configs,
        instances: instance_summary(sidecars.iter()),
        sidecars,
        traffic: service_traffic(&state, &service).await?,
        name: service,
    }))
}
