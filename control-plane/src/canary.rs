//! Automated canary rollouts: the task that drives them (the REST routes are in
//! `api::canary`).
//!
//! The rollout lives in the store (`canary_rollouts`), so it survives the CLI exiting
//! and a control-plane restart; a lease row makes exactly one replica drive each
//! rollout. Each step sets the canary's weight in the service's RoutingPolicy (the
//! same edit as `outriderctl canary set`), then judges the canary's figures over that
//! step alone (`StepWindow`: the growth of each caller's counters since the step
//! began, never the callers' lifetime totals), against absolute thresholds and
//! against the stable subset over the same step. A crossed threshold rolls back to
//! 100% stable at once, with the reason. A step advances only after its interval and
//! only on at least `minRequests` canary requests; short of them it is `holding`,
//! and after `maxHoldIntervals` more intervals it rolls back for lack of traffic. A
//! final step of 100 promotes the canary.

use crate::hub::Hub;
use crate::store::{now_ms, Precondition, RolloutRow, Store, StoreError};
use crate::traffic::CallerFigures;
use outrider_api::RolloutRequest as RolloutSpec;
use outrider_api::{RolloutState, StepFigures, WindowFigures};
use outrider_policy::canary;
use outrider_policy::{FieldError, PolicyKind, RoutingPolicy};
use outrider_runtime::shutdown::CancellationToken;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How often the driver looks at running rollouts.
const TICK: Duration = Duration::from_millis(250);
/// A driver that stops renewing loses its rollout to another replica after this.
const LEASE_MS: i64 = 3_000;
/// A subset's p99 over fewer requests than this (all callers' last reports together)
/// says too little to count toward the step's worst.
const MIN_LATENCY_WINDOW: u64 = 5;
/// The most intervals a step may hold for traffic.
const MAX_HOLD_INTERVALS: u32 = 100;
/// The actor of the revisions a rollout writes.
pub const ACTOR: &str = "canary-controller";

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
        // A step of 0 could never see canary traffic, so it could only hold and fail.
        if *w == 0 || *w > 100 {
            e.push(FieldError::new(format!("steps[{i}]"), "must be between 1 and 100"));
        }
    }
    if spec.interval.0.is_zero() {
        e.push(FieldError::new("interval", "must be greater than 0"));
    }
    if !(0.0..=1.0).contains(&spec.max_error_rate) {
        e.push(FieldError::new("maxErrorRate", "must be between 0 and 1"));
    }
    if spec.min_requests == 0 {
        e.push(FieldError::new("minRequests", "must be at least 1"));
    }
    if spec.max_hold_intervals > MAX_HOLD_INTERVALS {
        e.push(FieldError::new(
            "maxHoldIntervals",
            format!("must be at most {MAX_HOLD_INTERVALS}"),
        ));
    }
    if !(0.0..=1.0).contains(&spec.max_success_rate_drop) {
        e.push(FieldError::new("maxSuccessRateDrop", "must be between 0 and 1"));
    }
    if let Some(r) = spec.max_latency_ratio {
        if !(r.is_finite() && r >= 1.0) {
            e.push(FieldError::new("maxLatencyRatio", "must be a number of at least 1"));
        }
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

/// Writes the RoutingPolicy as `actor` and pushes it at once.
pub async fn write_policy(
    hub: &Hub,
    service: &str,
    p: &RoutingPolicy,
    actor: &str,
) -> Result<crate::store::StoredPolicy, StoreError> {
    let doc = serde_json::to_value(p).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let stored = hub
        .store()
        .put_policy(service, PolicyKind::Routing, &doc, Precondition::None, actor)
        .await?;
    // The local fast path, as after an API write.
    if let Err(e) = hub.catch_up().await {
        warn!(error = %e, "catch-up after a canary write failed; the periodic sweep will retry");
    }
    Ok(stored)
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

/// One subset's figures over a step, summed over callers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    /// The worst p99 callers reported during the step.
    pub p99_ms: f64,
}

impl Tally {
    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors.min(self.requests) as f64 / self.requests as f64
        }
    }

    fn success_rate(&self) -> f64 {
        1.0 - self.error_rate()
    }

    fn view(&self, subset: &str) -> WindowFigures {
        WindowFigures {
            subset: subset.to_owned(),
            requests: self.requests,
            errors: self.errors,
            success_rate: self.success_rate(),
            p99_ms: self.p99_ms,
        }
    }
}

/// The driver's view of one step, kept in the rollout row so that a replica taking
/// over judges the same window: per caller and subset the `[requests, errors]` it
/// reported last, and what the step added for the canary and the stable subset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepWindow {
    #[serde(default)]
    pub callers: BTreeMap<String, BTreeMap<String, [u64; 2]>>,
    #[serde(default)]
    pub canary: Tally,
    #[serde(default)]
    pub stable: Tally,
}

impl StepWindow {
    /// A window starting now: every caller's current counters are its base, so
    /// nothing served before the step counts toward it.
    pub fn begin(figures: &[CallerFigures], canary: &str, stable: &str) -> Self {
        let mut w = StepWindow::default();
        for f in figures.iter().filter(|f| f.subset == canary || f.subset == stable) {
            w.callers
                .entry(f.caller.clone())
                .or_default()
                .insert(f.subset.clone(), [f.requests, f.errors]);
        }
        w
    }

    /// Folds the callers' latest counters in; true when anything changed.
    ///
    /// Counters are cumulative per caller, so a step gains what they grew since the
    /// last look. A counter that went down belongs to a restarted caller and counts
    /// from zero. A caller first seen during the step counts whole when its stream
    /// began after the step did (all it served is the step's), otherwise from now.
    /// Latency counts only reports made after `latency_since_ms`, so that a report
    /// covering the previous step's traffic is not blamed on this one.
    pub fn observe(
        &mut self,
        figures: &[CallerFigures],
        canary: &str,
        stable: &str,
        step_started_ms: i64,
        latency_since_ms: i64,
    ) -> bool {
        let mut changed = false;
        // Per subset: requests in the callers' last windows and their worst p99.
        let mut latency = [(0u64, 0.0f64); 2];
        for f in figures {
            let which = if f.subset == canary {
                0
            } else if f.subset == stable {
                1
            } else {
                continue;
            };
            let seen = self.callers.entry(f.caller.clone()).or_default();
            let now = [f.requests, f.errors];
            let (requests, errors) = match seen.get(&f.subset).copied() {
                Some([r, e]) if f.requests >= r && f.errors >= e => (f.requests - r, f.errors - e),
                Some(_) => (f.requests, f.errors),
                None if f.connected_at_ms >= step_started_ms => (f.requests, f.errors),
                None => (0, 0),
            };
            if seen.insert(f.subset.clone(), now) != Some(now) {
                changed = true;
            }
            let tally = if which == 0 { &mut self.canary } else { &mut self.stable };
            tally.requests += requests;
            tally.errors += errors;
            if f.reported_ms >= latency_since_ms && f.window_requests > 0 {
                latency[which].0 += f.window_requests;
                latency[which].1 = latency[which].1.max(f.p99_ms);
            }
        }
        for (tally, (n, p99)) in [&mut self.canary, &mut self.stable].into_iter().zip(latency) {
            if n >= MIN_LATENCY_WINDOW && p99 > tally.p99_ms {
                tally.p99_ms = p99;
                changed = true;
            }
        }
        changed
    }

    pub fn figures(&self, canary: &str, stable: &str) -> StepFigures {
        StepFigures {
            canary: self.canary.view(canary),
            stable: self.stable.view(stable),
        }
    }
}

/// What a look at a step decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within the thresholds so far; the interval has not ended.
    Wait,
    /// The interval ended short of `minRequests`: wait for traffic (the reason).
    Hold(String),
    /// The interval ended with enough requests, all within the thresholds.
    Advance,
    /// Roll back, for this reason.
    Fail(String),
}

/// Milliseconds after a step began when it gives up waiting for traffic.
pub fn hold_deadline_ms(spec: &RolloutSpec) -> i64 {
    interval_ms(spec).saturating_mul(1 + i64::from(spec.max_hold_intervals))
}

fn interval_ms(spec: &RolloutSpec) -> i64 {
    i64::try_from(spec.interval.0.as_millis()).unwrap_or(i64::MAX)
}

/// Judges a step `elapsed_ms` after it began. Thresholds are judged as soon as the
/// canary has `minRequests` in the step (a failing canary rolls back before its
/// interval ends); the comparison with the stable subset also needs `minRequests`
/// stable requests in the step, so a 100% step is judged on absolute thresholds only.
pub fn judge(spec: &RolloutSpec, stable: &str, w: &StepWindow, elapsed_ms: i64) -> Verdict {
    let (c, s) = (&w.canary, &w.stable);
    let min = spec.min_requests.max(1);
    let canary = &spec.subset;
    if c.requests >= min {
        let rate = c.error_rate();
        if rate > spec.max_error_rate + 1e-9 {
            return Verdict::Fail(format!(
                "error rate {:.1}% of {canary} over {} requests exceeds {:.1}%",
                rate * 100.0,
                c.requests,
                spec.max_error_rate * 100.0
            ));
        }
        if let Some(max) = spec.max_p99 {
            let max_ms = max.0.as_secs_f64() * 1e3;
            if c.p99_ms > max_ms {
                return Verdict::Fail(format!(
                    "p99 latency {:.0}ms of {canary} exceeds {max_ms:.0}ms",
                    c.p99_ms
                ));
            }
        }
        if s.requests >= min {
            let drop = s.success_rate() - c.success_rate();
            if drop > spec.max_success_rate_drop + 1e-9 {
                return Verdict::Fail(format!(
                    "success rate {:.1}% of {canary} is {:.1} points below {stable}'s {:.1}% (at most {:.1} allowed)",
                    c.success_rate() * 100.0,
                    drop * 100.0,
                    s.success_rate() * 100.0,
                    spec.max_success_rate_drop * 100.0
                ));
            }
            if let Some(ratio) = spec.max_latency_ratio {
                if s.p99_ms > 0.0 && c.p99_ms > ratio * s.p99_ms {
                    return Verdict::Fail(format!(
                        "p99 latency {:.1}ms of {canary} is over {ratio}x {stable}'s {:.1}ms",
                        c.p99_ms, s.p99_ms
                    ));
                }
            }
        }
    }
    if elapsed_ms < interval_ms(spec) {
        return Verdict::Wait;
    }
    if c.requests >= min {
        return Verdict::Advance;
    }
    if elapsed_ms >= hold_deadline_ms(spec) {
        return Verdict::Fail(format!(
            "not enough traffic to judge: {} of the {min} requests needed reached {canary} in {} intervals",
            c.requests,
            1 + spec.max_hold_intervals
        ));
    }
    Verdict::Hold(format!(
        "waiting for traffic: {} of the {min} requests needed",
        c.requests
    ))
}

/// The stable subset of a stored rollout.
pub fn stable_of(spec: &RolloutSpec) -> String {
    spec.stable.clone().unwrap_or_else(|| "v1".into())
}

/// Milliseconds left in the current step of an active rollout: until its interval
/// ends while running, until it gives up while holding.
pub fn time_left_ms(spec: &RolloutSpec, state: RolloutState, step_started_ms: i64, now_ms: i64) -> Option<u64> {
    if !state.is_active() {
        return None;
    }
    if step_started_ms == 0 {
        return Some(interval_ms(spec).max(0) as u64);
    }
    let end = match state {
        RolloutState::Holding => hold_deadline_ms(spec),
        _ => interval_ms(spec),
    };
    Some(step_started_ms.saturating_add(end).saturating_sub(now_ms).max(0) as u64)
}

/// One look at one rollout: start its first step, judge the current one, step on.
async fn drive(hub: &Hub, mut r: RolloutRow) -> Result<(), StoreError> {
    let Ok(spec) = serde_json::from_value::<RolloutSpec>(r.spec.clone()) else {
        r.state = "aborted".into();
        r.reason = "the stored rollout is unreadable".into();
        hub.store().save_rollout(&r, &hub.replica).await?;
        return Ok(());
    };
    let stable = stable_of(&spec);
    let rows = hub.store().sidecars_reporting_on(&r.service).await?;
    let figures = crate::traffic::per_caller(&r.service, &rows);
    if r.step_started_ms == 0 {
        return begin_step(hub, r, &spec, &stable, 0, &figures).await;
    }
    // An unreadable window (a row from before windows were kept) starts afresh.
    let mut window: StepWindow = serde_json::from_value(r.window.clone()).unwrap_or_default();
    let latency_since = r.step_started_ms + hub.timing.report_interval.as_millis() as i64;
    let changed = window.observe(&figures, &spec.subset, &stable, r.step_started_ms, latency_since);
    r.window = serde_json::to_value(&window).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let weight = spec.steps.get(r.step as usize).copied().unwrap_or(0);
    let label = format!("step {}/{} ({weight}%)", r.step + 1, spec.steps.len());
    match judge(&spec, &stable, &window, now_ms() - r.step_started_ms) {
        Verdict::Fail(reason) => {
            let current = routing_policy(hub.store(), &r.service).await?;
            if let Ok(p) = canary::abort(current.as_ref(), Some(&stable)) {
                write_policy(hub, &r.service, &p, ACTOR).await?;
            }
            let reason = format!("{label}: {reason}");
            warn!(service = %r.service, %reason, "canary rolled back");
            r.state = RolloutState::RolledBack.as_str().into();
            r.reason = reason;
            hub.store().save_rollout(&r, &hub.replica).await?;
        }
        Verdict::Wait => {
            if changed || r.state != RolloutState::Running.as_str() {
                r.state = RolloutState::Running.as_str().into();
                r.reason = String::new();
                hub.store().save_rollout(&r, &hub.replica).await?;
            }
        }
        Verdict::Hold(reason) => {
            if changed || r.state != RolloutState::Holding.as_str() {
                r.state = RolloutState::Holding.as_str().into();
                r.reason = reason;
                hub.store().save_rollout(&r, &hub.replica).await?;
            }
        }
        Verdict::Advance => {
            let next = r.step as usize + 1;
            if next < spec.steps.len() {
                return begin_step(hub, r, &spec, &stable, next, &figures).await;
            }
            if weight == 100 {
                let current = routing_policy(hub.store(), &r.service).await?;
                if let Ok(p) = canary::promote(current.as_ref()) {
                    write_policy(hub, &r.service, &p, ACTOR).await?;
                }
            }
            info!(service = %r.service, subset = %spec.subset, "canary rollout succeeded");
            r.state = RolloutState::Succeeded.as_str().into();
            r.reason = format!(
                "{} took {weight}% of the traffic within the thresholds ({} requests in the last step)",
                spec.subset, window.canary.requests
            );
            hub.store().save_rollout(&r, &hub.replica).await?;
        }
    }
    Ok(())
}

async fn begin_step(
    hub: &Hub,
    mut r: RolloutRow,
    spec: &RolloutSpec,
    stable: &str,
    step: usize,
    figures: &[CallerFigures],
) -> Result<(), StoreError> {
    let weight = spec.steps[step];
    let current = routing_policy(hub.store(), &r.service).await?;
    match canary::set_weight(current.as_ref(), &spec.subset, weight, Some(stable)) {
        Ok(p) => {
            // Record the step first: if the lease was lost, another replica drives.
            r.step = step as u64;
            r.step_started_ms = now_ms();
            r.window = serde_json::to_value(StepWindow::begin(figures, &spec.subset, stable))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            r.state = RolloutState::Running.as_str().into();
            r.reason = String::new();
            if hub.store().save_rollout(&r, &hub.replica).await? {
                write_policy(hub, &r.service, &p, ACTOR).await?;
                info!(service = %r.service, subset = %spec.subset, weight, "canary step");
            }
        }
        Err(e) => {
            r.state = RolloutState::Aborted.as_str().into();
            r.reason = e.to_string();
            hub.store().save_rollout(&r, &hub.replica).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min_requests: u64) -> RolloutSpec {
        serde_json::from_value(serde_json::json!({
            "subset": "v2", "stable": "v1", "steps": [50, 100], "interval": "1s",
            "maxErrorRate": 0.05, "minRequests": min_requests, "maxHoldIntervals": 2
        }))
        .unwrap()
    }

    fn fig(caller: &str, subset: &str, requests: u64, errors: u64) -> CallerFigures {
        CallerFigures {
            caller: caller.into(),
            connected_at_ms: 0,
            reported_ms: 10_000,
            subset: subset.into(),
            requests,
            errors,
            p99_ms: 1.0,
            window_requests: 10,
        }
    }

    fn window(canary: (u64, u64), stable: (u64, u64)) -> StepWindow {
        StepWindow {
            canary: Tally {
                requests: canary.0,
                errors: canary.1,
                p99_ms: 0.0,
            },
            stable: Tally {
                requests: stable.0,
                errors: stable.1,
                p99_ms: 0.0,
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_step_counts_only_what_callers_served_since_it_began() {
        // A long healthy history: 1900 good requests before the step.
        let before = [fig("a", "v2", 1900, 0), fig("a", "v1", 5000, 0)];
        let mut w = StepWindow::begin(&before, "v2", "v1");
        assert!(w.observe(&[fig("a", "v2", 2000, 100), fig("a", "v1", 5100, 0)], "v2", "v1", 1, 1));
        assert_eq!(
            (w.canary.requests, w.canary.errors),
            (100, 100),
            "lifetime: 95% success; step: 0%"
        );
        assert_eq!(w.stable.requests, 100);
        assert!(matches!(judge(&spec(10), "v1", &w, 0), Verdict::Fail(r) if r.contains("error rate 100.0%")));
    }

    #[test]
    fn a_caller_whose_counters_went_down_restarted_and_counts_from_zero() {
        let mut w = StepWindow::begin(&[fig("a", "v2", 500, 0)], "v2", "v1");
        w.observe(&[fig("a", "v2", 510, 0)], "v2", "v1", 1, 1);
        w.observe(&[fig("a", "v2", 4, 4)], "v2", "v1", 1, 1);
        assert_eq!((w.canary.requests, w.canary.errors), (14, 4));
        // Seen again without change: nothing added twice.
        assert!(!w.observe(&[fig("a", "v2", 4, 4)], "v2", "v1", 1, 1));
        assert_eq!(w.canary.requests, 14);
    }

    #[test]
    fn a_caller_new_to_the_step_counts_whole_only_if_it_connected_after_the_step_began() {
        let mut w = StepWindow::default();
        let mut late = fig("late", "v2", 30, 0);
        late.connected_at_ms = 5_000;
        let old = fig("old", "v2", 700, 0);
        w.observe(&[late, old], "v2", "v1", 4_000, 4_000);
        assert_eq!(w.canary.requests, 30);
    }

    #[test]
    fn a_step_with_too_few_requests_holds_then_fails_and_never_advances() {
        let s = spec(10);
        let few = window((6, 6), (6, 0));
        assert_eq!(judge(&s, "v1", &few, 500), Verdict::Wait);
        assert!(matches!(judge(&s, "v1", &few, 1_000), Verdict::Hold(r) if r.contains("6 of the 10")));
        assert!(matches!(judge(&s, "v1", &few, 2_999), Verdict::Hold(_)));
        assert!(
            matches!(judge(&s, "v1", &few, 3_000), Verdict::Fail(r) if r.contains("not enough traffic") && r.contains("3 intervals"))
        );
        assert_eq!(judge(&s, "v1", &window((10, 0), (10, 0)), 1_000), Verdict::Advance);
    }

    #[test]
    fn a_canary_worse_than_stable_by_more_than_the_margin_fails_within_absolute_thresholds() {
        let mut s = spec(10);
        s.max_error_rate = 0.5;
        s.max_success_rate_drop = 0.05;
        // 20% errors is within the absolute 50%, but 20 points below stable's 100%.
        let w = window((100, 20), (100, 0));
        assert!(matches!(judge(&s, "v1", &w, 0), Verdict::Fail(r) if r.contains("below v1's 100.0%")));
        // Without enough stable requests only absolute thresholds apply.
        assert_eq!(judge(&s, "v1", &window((100, 20), (3, 0)), 1_000), Verdict::Advance);
        // Latency against stable, when asked for.
        s.max_latency_ratio = Some(2.0);
        let mut slow = window((100, 0), (100, 0));
        slow.canary.p99_ms = 30.0;
        slow.stable.p99_ms = 10.0;
        assert!(matches!(judge(&s, "v1", &slow, 0), Verdict::Fail(r) if r.contains("over 2x v1's 10.0ms")));
    }

    #[test]
    fn time_left_runs_to_the_interval_then_to_the_hold_deadline() {
        let s = spec(10);
        assert_eq!(time_left_ms(&s, RolloutState::Running, 1_000, 1_400), Some(600));
        assert_eq!(time_left_ms(&s, RolloutState::Holding, 1_000, 2_500), Some(1_500));
        assert_eq!(time_left_ms(&s, RolloutState::RolledBack, 1_000, 2_500), None);
    }
}
