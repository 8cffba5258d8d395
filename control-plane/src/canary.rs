//! Automated canary rollouts: the task that drives them (the REST routes are in
//! `api::canary`).
//!
//! The rollout lives in the store (`canary_rollouts`), so it survives the CLI exiting
//! and a control-plane restart; a lease row makes exactly one replica drive each
//! rollout. Each step sets the canary's weight in the service's RoutingPolicy (the
//! same edit as `outriderctl canary set`), then judges the canary subset's figures
//! from the callers' health reports over the step: a crossed threshold rolls back
//! to 100% stable at once, with the reason; otherwise the next step follows after
//! the interval, and a final step of 100 promotes the canary.

use crate::hub::Hub;
use crate::store::{now_ms, Precondition, RolloutRow, Store, StoreError};
use outrider_api::RolloutRequest as RolloutSpec;
use outrider_policy::canary;
use outrider_policy::{FieldError, PolicyKind, RoutingPolicy};
use outrider_runtime::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How often the driver looks at running rollouts.
const TICK: Duration = Duration::from_millis(250);
/// A driver that stops renewing loses its rollout to another replica after this.
const LEASE_MS: i64 = 3_000;
/// Thresholds are judged only on at least this many canary requests in a step, so
/// one unlucky request does not roll back a release.
const MIN_REQUESTS: u64 = 10;
const ACTOR: &str = "canary-controller";

/// The semantic checks of a rollout request, one error per bad field.
pub fn validate(spec: &RolloutSpec) -> Vec<FieldError> {
    let mut e = Vec::new();
    if spec.subset.trim().is_empty() {
        e.push(FieldError::new("subset", "must not be empty"));
    }
    if spec.stable.as_deref() == Some(spec.subset.as_str()) {
        e.push(FieldError::new("stable", "must differ from subset"));
    }
    if spec.steps.is_empty() {
        e.push(FieldError::new("steps", "needs at least one weight"));
    }
    for (i, w) in spec.steps.iter().enumerate() {
        if *w > 100 {
            e.push(FieldError::new(format!("steps[{i}]"), "must be between 0 and 100"));
        }
    }
    if spec.interval.0.is_zero() {
        e.push(FieldError::new("interval", "must be greater than 0"));
    }
    if !(0.0..=1.0).contains(&spec.max_error_rate) {
        e.push(FieldError::new("maxErrorRate", "must be between 0 and 1"));
    }
    e
}

/// The service's RoutingPolicy, if it has a readable one.
pub async fn routing_policy(store: &Store, service: &str) -> Result<Option<RoutingPolicy>, StoreError> {
    Ok(store
        .get_policy(service, PolicyKind::Routing)
        .await?
        .and_then(|p| outrider_policy::from_value(p.document).ok()))
}

/// Writes the RoutingPolicy as the canary controller and pushes it at once.
pub async fn write_policy(hub: &Hub, service: &str, p: &RoutingPolicy) -> Result<u64, StoreError> {
    let doc = serde_json::to_value(p).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let rev = hub
        .store()
        .put_policy(service, PolicyKind::Routing, &doc, Precondition::None, ACTOR)
        .await?;
    // The local fast path, as after an API write.
    if let Err(e) = hub.catch_up().await {
        warn!(error = %e, "catch-up after a canary step failed; the periodic sweep will retry");
    }
    Ok(rev.revision)
}

/// Drives every running rollout this replica holds the lease of, until `shutdown`.
pub async fn run_driver(hub: Arc<Hub>, shutdown: CancellationToken) {
    {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !hub.is_loaded() {
                continue;
            }
            if let Err(e) = drive_all(&hub).await {
                warn!(error = %e, "canary driver pass failed");
            }
        }
    }
}

async fn drive_all(hub: &Hub) -> Result<(), StoreError> {
    for r in hub.store().running_rollouts().await? {
        if hub.store().claim_rollout(&r.service, &hub.replica, LEASE_MS).await? {
            drive(hub, r).await?;
        }
    }
    Ok(())
}

/// The canary subset's totals and the worst recent p99 its callers saw.
async fn canary_figures(hub: &Hub, service: &str, subset: &str) -> Result<(u64, u64, f64, u64), StoreError> {
    let rows = hub.store().list_sidecars(None).await?;
    let now = now_ms();
    let t = hub.timing;
    let fresh = |r: &crate::store::SidecarRow| now - r.last_seen_ms <= 2 * t.report_interval.as_millis() as i64 + 500;
    let traffic = crate::traffic::aggregate(service, &rows, fresh);
    Ok(traffic
        .into_iter()
        .find(|s| s.subset == subset)
        .map_or((0, 0, 0.0, 0), |s| (s.requests, s.errors, s.p99_ms, s.window_requests)))
}

/// One look at one rollout: start its first step, judge the current one, step on.
async fn drive(hub: &Hub, mut r: RolloutRow) -> Result<(), StoreError> {
    let Ok(spec) = serde_json::from_value::<RolloutSpec>(r.spec.clone()) else {
        r.state = "aborted".into();
        r.reason = "the stored rollout is unreadable".into();
        hub.store().save_rollout(&r, &hub.replica).await?;
        return Ok(());
    };
    let stable = spec.stable.clone().unwrap_or_else(|| "v1".into());
    let now = now_ms();
    let (requests, errors, p99, window) = canary_figures(hub, &r.service, &spec.subset).await?;

    if r.step_started_ms == 0 {
        return begin_step(hub, r, &spec, &stable, 0, requests, errors).await;
    }
    let step_requests = requests.saturating_sub(r.baseline_requests);
    let step_errors = errors.saturating_sub(r.baseline_errors);
    let weight = spec.steps.get(r.step as usize).copied().unwrap_or(0);
    let error_rate = if step_requests == 0 {
        0.0
    } else {
        step_errors as f64 / step_requests as f64
    };
    let mut failure = None;
    if step_requests >= MIN_REQUESTS && error_rate > spec.max_error_rate {
        failure = Some(format!(
            "error rate {:.1}% of {} over {}% exceeds {:.1}%",
            error_rate * 100.0,
            spec.subset,
            weight,
            spec.max_error_rate * 100.0
        ));
    } else if let Some(max) = spec.max_p99 {
        let max_ms = max.0.as_secs_f64() * 1e3;
        if window >= MIN_REQUESTS && p99 > max_ms {
            failure = Some(format!(
                "p99 latency {p99:.0}ms of {} at {weight}% exceeds {max_ms:.0}ms",
                spec.subset
            ));
        }
    }
    if let Some(reason) = failure {
        let current = routing_policy(hub.store(), &r.service).await?;
        if let Ok(p) = canary::abort(current.as_ref(), Some(&stable)) {
            write_policy(hub, &r.service, &p).await?;
        }
        warn!(service = %r.service, %reason, "canary rolled back");
        r.state = "rolled-back".into();
        r.reason = reason;
        hub.store().save_rollout(&r, &hub.replica).await?;
        return Ok(());
    }
    // Advance only after a full interval with traffic to judge.
    if now - r.step_started_ms < spec.interval.0.as_millis() as i64 || step_requests == 0 {
        return Ok(());
    }
    let next = r.step as usize + 1;
    if next < spec.steps.len() {
        return begin_step(hub, r, &spec, &stable, next, requests, errors).await;
    }
    if weight == 100 {
        let current = routing_policy(hub.store(), &r.service).await?;
        if let Ok(p) = canary::promote(current.as_ref()) {
            write_policy(hub, &r.service, &p).await?;
        }
    }
    info!(service = %r.service, subset = %spec.subset, "canary rollout succeeded");
    r.state = "succeeded".into();
    r.reason = format!("{} took {weight}% of the traffic within the thresholds", spec.subset);
    hub.store().save_rollout(&r, &hub.replica).await?;
    Ok(())
}

async fn begin_step(
    hub: &Hub,
    mut r: RolloutRow,
    spec: &RolloutSpec,
    stable: &str,
    step: usize,
    requests: u64,
    errors: u64,
) -> Result<(), StoreError> {
    let weight = spec.steps[step];
    let current = routing_policy(hub.store(), &r.service).await?;
    match canary::set_weight(current.as_ref(), &spec.subset, weight, Some(stable)) {
        Ok(p) => {
            // Record the step first: if the lease was lost, another replica drives.
            r.step = step as u64;
            r.step_started_ms = now_ms();
            r.baseline_requests = requests;
            r.baseline_errors = errors;
            r.reason = String::new();
            if hub.store().save_rollout(&r, &hub.replica).await? {
                write_policy(hub, &r.service, &p).await?;
                info!(service = %r.service, subset = %spec.subset, weight, "canary step");
            }
        }
        Err(e) => {
            r.state = "aborted".into();
            r.reason = e.to_string();
            hub.store().save_rollout(&r, &hub.replica).await?;
        }
    }
    Ok(())
}
