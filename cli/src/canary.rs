//! `outriderctl canary`: canary releases as edits of the service's RoutingPolicy
//! (`set`, `promote`, `abort`), their figures (`status`), and automated rollouts that
//! the control plane drives (`run`), so they survive this CLI exiting.

use crate::args::{CanaryCommand, Run};
use crate::client::Client;
use crate::error::CliError;
use crate::format::Output;
use crate::output::{self, value_or_line, Table};
use outrider_api::{
    CanaryWeightRequest, PolicyRecord, RolloutRequest, RolloutState, RolloutStatus, ServiceDetail, SubsetTraffic,
    WindowFigures,
};
use outrider_policy::canary::{self, CanaryError, CanaryWeights};
use outrider_policy::{PolicyKind, RoutingPolicy};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The stored RoutingPolicy read through the policy model.
fn routing(record: &PolicyRecord, service: &str) -> Result<RoutingPolicy, CliError> {
    outrider_policy::from_value(record.document.clone())
        .map_err(|e| CliError::Invalid(format!("the stored routing policy of {service} is invalid: {e}")))
}

/// The current RoutingPolicy, `None` when the service has none.
async fn current(client: &Client, service: &str) -> Result<Option<RoutingPolicy>, CliError> {
    match client.find_policy(service, PolicyKind::Routing).await? {
        Some(record) => routing(&record, service).map(Some),
        None => Ok(None),
    }
}

async fn write(client: &Client, service: &str, p: &RoutingPolicy) -> Result<PolicyRecord, CliError> {
    let doc = serde_json::to_value(p).map_err(|e| CliError::Invalid(e.to_string()))?;
    client.put_policy(service, PolicyKind::Routing, doc).await
}

fn stored_weights(record: &PolicyRecord, service: &str) -> String {
    routing(record, service).map_or_else(|e| e.to_string(), |p| weights_line(&p))
}

fn canary_err(e: CanaryError) -> CliError {
    CliError::Invalid(e.to_string())
}

fn weights_line(p: &RoutingPolicy) -> String {
    match canary::weights(p) {
        Some(w) => match w.canary {
            Some((c, cw)) => format!("{} {}%, {} {}%", w.stable.0, w.stable.1, c, cw),
            None => format!("{} {}%", w.stable.0, w.stable.1),
        },
        None => "no catch-all route".into(),
    }
}

pub async fn run(client: &Client, format: Output, cmd: CanaryCommand) -> Result<(), CliError> {
    match cmd {
        CanaryCommand::Set {
            service,
            subset,
            weight,
            stable,
        } => {
            check(&service)?;
            // Checked before anything is sent: a bad weight changes nothing.
            if weight > 100 {
                return Err(canary_err(CanaryError::Weight(weight)));
            }
            // The control plane refuses an unknown service, a subset without a healthy
            // instance and an edit while a rollout drives the weights.
            let request = CanaryWeightRequest { subset, weight, stable };
            let stored = client.set_canary_weight(&service, &request).await?;
            let line = format!(
                "{service}: {} (revision {})\n",
                stored_weights(&stored, &service),
                stored.revision
            );
            value_or_line(format, &stored, &line)
        }
        CanaryCommand::Promote { service } => {
            check(&service)?;
            let stored = client.promote_canary(&service).await?;
            let line = format!(
                "{service}: promoted, {} (revision {})\n",
                stored_weights(&stored, &service),
                stored.revision
            );
            value_or_line(format, &stored, &line)
        }
        CanaryCommand::Abort { service, stable } => {
            check(&service)?;
            // Stop an automated rollout first so it cannot step the weight up again;
            // none running is fine.
            client.abort_rollout(&service).await?;
            let p = current(client, &service).await?;
            let next = canary::abort(p.as_ref(), stable.as_deref()).map_err(canary_err)?;
            let stored = write(client, &service, &next).await?;
            let line = format!(
                "{service}: aborted, {} (revision {})\n",
                weights_line(&next),
                stored.revision
            );
            value_or_line(format, &stored, &line)
        }
        CanaryCommand::Status { service } => status(client, format, &service).await,
        CanaryCommand::Run(r) => run_rollout(client, format, r).await,
    }
}

fn check(service: &str) -> Result<(), CliError> {
    outrider_policy::validate_service_name(service).map_err(CliError::Invalid)
}

/// `canary status -o json|yaml`.
#[derive(Debug, Serialize)]
struct StatusReport<'a> {
    service: &'a str,
    /// Subset → percent of the managed route; `null` without one.
    weights: Option<BTreeMap<String, u32>>,
    stable: Option<String>,
    traffic: &'a [SubsetTraffic],
    rollout: Option<&'a RolloutStatus>,
}

async fn status(client: &Client, format: Output, service: &str) -> Result<(), CliError> {
    check(service)?;
    let svc = client.service(service).await?;
    // A routing document this CLI cannot read shows as no policy rather than failing
    // the figures.
    let policy = svc
        .policies
        .get(PolicyKind::Routing.as_str())
        .and_then(|r| routing(r, service).ok());
    let rollout = client.rollout(service).await?;
    let weights = policy.as_ref().and_then(canary::weights);
    let report = StatusReport {
        service,
        weights: weights.as_ref().map(|w| {
            let mut m = BTreeMap::from([w.stable.clone()]);
            m.extend(w.canary.clone());
            m
        }),
        stable: weights.as_ref().map(|w| w.stable.0.clone()),
        traffic: &svc.traffic,
        rollout: rollout.as_ref(),
    };
    if let Some(s) = output::structured(format, &report)? {
        return output::write_stdout(&s);
    }
    output::write_stdout(&status_text(service, policy.as_ref(), &svc, rollout.as_ref()))
}

/// `canary status` for people: the current weights; while a rollout drives them,
/// the rollout and each subset's figures over its current step; otherwise the
/// callers' totals, and the last rollout marked as ended.
fn status_text(
    service: &str,
    policy: Option<&RoutingPolicy>,
    svc: &ServiceDetail,
    rollout: Option<&RolloutStatus>,
) -> String {
    let mut out = match policy {
        Some(p) => format!("{service}: {}\n", weights_line(p)),
        None => format!("{service}: no routing policy (traffic spreads over all healthy instances)\n"),
    };
    let weights: Option<CanaryWeights> = policy.and_then(canary::weights);
    let weight_of = |s: &str| -> String {
        weights
            .as_ref()
            .and_then(|w| {
                std::iter::once(&w.stable)
                    .chain(w.canary.as_ref())
                    .find(|(n, _)| n == s)
                    .map(|(_, x)| format!("{x}%"))
            })
            .unwrap_or_else(|| "-".into())
    };
    if let Some(r) = rollout.filter(|r| r.active) {
        out.push_str(&rollout_line(r));
        out.push_str("over the current step:\n");
        let mut t = Table::new(&["SUBSET", "ROLE", "WEIGHT", "REQUESTS", "SUCCESS", "P99"]);
        for (role, f) in [("canary", &r.figures.canary), ("stable", &r.figures.stable)] {
            t.row(vec![
                f.subset.clone(),
                role.into(),
                weight_of(&f.subset),
                f.requests.to_string(),
                format!("{:.2}%", f.success_rate * 100.0),
                format!("{:.1}ms", f.p99_ms),
            ]);
        }
        out.push_str(&t.render());
        return out;
    }
    let mut t = Table::new(&["SUBSET", "WEIGHT", "REQUESTS", "SUCCESS", "P50", "P99"]);
    for f in &svc.traffic {
        t.row(vec![
            f.subset.clone(),
            weight_of(&f.subset),
            f.requests.to_string(),
            format!("{:.2}%", f.success_rate * 100.0),
            format!("{:.1}ms", f.p50_ms),
            format!("{:.1}ms", f.p99_ms),
        ]);
    }
    if t.is_empty() {
        out.push_str("no traffic figures yet\n");
    } else {
        out.push_str("since each caller started (latency: their last report):\n");
        out.push_str(&t.render());
    }
    if let Some(r) = rollout {
        out.push_str("last rollout, ended: ");
        out.push_str(&rollout_line(r));
    }
    out
}

fn figures_text(f: &WindowFigures) -> String {
    format!(
        "{} {} requests, {:.2}% success, p99 {:.1}ms",
        f.subset,
        f.requests,
        f.success_rate * 100.0,
        f.p99_ms
    )
}

/// One line for a rollout: state, step and weight; while it is active, the time left
/// in the step (whole seconds, rounded up) and both subsets' figures over the step;
/// the reason when there is one.
fn rollout_line(r: &RolloutStatus) -> String {
    let reason = Some(r.reason.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    let head = format!(
        "rollout of {} by {}: {} at step {}/{} ({}% to {})",
        r.subset,
        if r.actor.is_empty() { "?" } else { &r.actor },
        r.state,
        r.step + 1,
        r.steps.len(),
        r.weight,
        r.subset,
    );
    match r.time_left_ms.filter(|_| r.active) {
        Some(ms) => format!(
            "{head}, {}s left{reason}; {}; {}\n",
            ms.div_ceil(1000),
            figures_text(&r.figures.canary),
            figures_text(&r.figures.stable)
        ),
        None => format!("{head}{reason}\n"),
    }
}

/// The rollout as the control plane takes it; durations are read here so a typo
/// fails before anything is sent.
fn rollout_request(r: &Run) -> Result<RolloutRequest, CliError> {
    if let Some(bad) = r.steps.iter().find(|w| **w > 100) {
        return Err(canary_err(CanaryError::Weight(*bad)));
    }
    let duration = |flag: &str, s: &str| {
        s.parse::<outrider_policy::Duration>()
            .map_err(|e| CliError::Invalid(format!("invalid --{flag}: {e}")))
    };
    Ok(RolloutRequest {
        subset: r.subset.clone(),
        stable: r.stable.clone(),
        steps: r.steps.clone(),
        interval: duration("interval", &r.interval)?,
        max_error_rate: r.max_error_rate,
        max_p99: r.max_p99.as_deref().map(|p| duration("max-p99", p)).transpose()?,
        min_requests: r.min_requests,
        max_hold_intervals: r.max_hold_intervals,
        max_success_rate_drop: r.max_success_rate_drop,
        max_latency_ratio: r.max_latency_ratio,
    })
}

async fn run_rollout(client: &Client, format: Output, r: Run) -> Result<(), CliError> {
    check(&r.service)?;
    let request = rollout_request(&r)?;
    let mut v = client.start_rollout(&r.service, &request).await?;
    if r.detach {
        return value_or_line(format, &v, &rollout_line(&v));
    }
    let mut last = String::new();
    loop {
        let line = rollout_line(&v);
        if line != last && format == Output::Table {
            output::write_stdout(&line)?;
            last = line;
        }
        match v.state {
            // Holding waits for traffic; the control plane keeps driving it.
            RolloutState::Running | RolloutState::Holding => {}
            RolloutState::Succeeded => return done_structured(format, &v),
            RolloutState::RolledBack | RolloutState::Aborted => {
                let _ = done_structured(format, &v);
                let reason = Some(v.reason.as_str()).filter(|s| !s.is_empty());
                return Err(CliError::Invalid(format!(
                    "rollout of {} {}: {}",
                    r.subset,
                    v.state,
                    reason.unwrap_or("no reason given")
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        v = client
            .rollout(&r.service)
            .await?
            .ok_or_else(|| CliError::Invalid(format!("the rollout of {} disappeared", r.subset)))?;
    }
}

fn done_structured(format: Output, v: &RolloutStatus) -> Result<(), CliError> {
    match output::structured(format, v)? {
        Some(s) => output::write_stdout(&s),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_api::InstanceSummary;
    use serde_json::json;

    fn rollout(state: RolloutState, reason: &str) -> RolloutStatus {
        RolloutStatus {
            service: "web".into(),
            subset: "v2".into(),
            stable: Some("v1".into()),
            steps: vec![5, 25, 50, 100],
            interval: "30s".into(),
            max_error_rate: 0.01,
            max_p99: None,
            state,
            step: 1,
            weight: 25,
            reason: reason.into(),
            started_at_ms: 1,
            updated_at_ms: 2,
            driver: "cp-1".into(),
            actor: "alice".into(),
            active: state.is_active(),
            min_requests: 20,
            max_hold_intervals: 3,
            max_success_rate_drop: 0.05,
            max_latency_ratio: None,
            step_started_at_ms: 1,
            time_left_ms: state.is_active().then_some(12_000),
            figures: Default::default(),
        }
    }

    fn routing_policy(v1: u32, v2: u32) -> RoutingPolicy {
        outrider_policy::from_value(json!({"routes": [{"name": "default",
            "backends": [{"subset": "v1", "weight": v1}, {"subset": "v2", "weight": v2}]}]}))
        .unwrap()
    }

    fn step_figures() -> outrider_api::StepFigures {
        outrider_api::StepFigures {
            canary: WindowFigures {
                subset: "v2".into(),
                requests: 12,
                errors: 12,
                success_rate: 0.0,
                p99_ms: 3.0,
            },
            stable: WindowFigures {
                subset: "v1".into(),
                requests: 40,
                errors: 0,
                success_rate: 1.0,
                p99_ms: 1.0,
            },
        }
    }

    #[test]
    fn a_running_rollout_line_gives_the_time_left_and_the_steps_figures() {
        let mut r = rollout(RolloutState::Running, "");
        r.figures = step_figures();
        r.time_left_ms = Some(2_001);
        assert_eq!(
            rollout_line(&r),
            "rollout of v2 by alice: running at step 2/4 (25% to v2), 3s left; \
             v2 12 requests, 0.00% success, p99 3.0ms; v1 40 requests, 100.00% success, p99 1.0ms\n"
        );
        let mut held = rollout(
            RolloutState::Holding,
            "waiting for traffic: 6 of the 20 requests needed",
        );
        held.time_left_ms = Some(0);
        assert!(
            rollout_line(&held).starts_with(
                "rollout of v2 by alice: holding at step 2/4 (25% to v2), 0s left: waiting for traffic: 6 of the 20"
            ),
            "{}",
            rollout_line(&held)
        );
        assert_eq!(
            rollout_line(&rollout(RolloutState::RolledBack, "error rate 0.2 over 0.01")),
            "rollout of v2 by alice: rolled-back at step 2/4 (25% to v2): error rate 0.2 over 0.01\n"
        );
    }

    fn service(traffic: Vec<SubsetTraffic>) -> ServiceDetail {
        ServiceDetail {
            name: "web".into(),
            revision: 3,
            policies: BTreeMap::new(),
            configs: vec![],
            instances: InstanceSummary::default(),
            sidecars: vec![],
            traffic,
            mtls: "permissive".into(),
            plaintext_requests: 0,
        }
    }

    #[test]
    fn status_during_a_rollout_shows_each_subsets_figures_over_the_current_step() {
        // Lifetime totals say 97.5%; the step says 0%: the step is what is shown.
        let svc = service(vec![SubsetTraffic {
            subset: "v2".into(),
            requests: 400,
            errors: 10,
            success_rate: 0.975,
            ..Default::default()
        }]);
        let mut r = rollout(RolloutState::Running, "");
        r.figures = step_figures();
        let text = status_text("web", Some(&routing_policy(75, 25)), &svc, Some(&r));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "web: v1 75%, v2 25%");
        assert!(
            lines[1].starts_with("rollout of v2 by alice: running at step 2/4"),
            "{text}"
        );
        assert_eq!(lines[2], "over the current step:");
        assert_eq!(lines[3], "SUBSET   ROLE     WEIGHT   REQUESTS   SUCCESS   P99");
        assert_eq!(lines[4], "v2       canary   25%      12         0.00%     3.0ms");
        assert_eq!(lines[5], "v1       stable   75%      40         100.00%   1.0ms");
        assert!(!text.contains("97.50%"), "{text}");
    }

    #[test]
    fn status_after_a_rollout_shows_the_current_weights_and_the_rollout_as_ended() {
        let svc = service(vec![SubsetTraffic {
            subset: "v1".into(),
            requests: 40,
            errors: 1,
            success_rate: 0.975,
            p50_ms: 1.25,
            p99_ms: 9.0,
            window_requests: 10,
        }]);
        let r = rollout(RolloutState::RolledBack, "step 2/4 (25%): error rate 100.0%");
        let p: RoutingPolicy = outrider_policy::from_value(
            json!({"routes": [{"name": "default", "backends": [{"subset": "v1", "weight": 100}]}]}),
        )
        .unwrap();
        let text = status_text("web", Some(&p), &svc, Some(&r));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "web: v1 100%");
        assert_eq!(lines[1], "since each caller started (latency: their last report):");
        assert_eq!(lines[2], "SUBSET   WEIGHT   REQUESTS   SUCCESS   P50     P99");
        assert_eq!(lines[3], "v1       100%     40         97.50%    1.2ms   9.0ms");
        assert_eq!(
            lines[4],
            "last rollout, ended: rollout of v2 by alice: rolled-back at step 2/4 (25% to v2): step 2/4 (25%): error rate 100.0%"
        );

        let text = status_text("web", None, &service(vec![]), None);
        assert_eq!(
            text,
            "web: no routing policy (traffic spreads over all healthy instances)\nno traffic figures yet\n"
        );
    }

    fn run_args(interval: &str, steps: Vec<u32>) -> Run {
        Run {
            service: "web".into(),
            subset: "v2".into(),
            stable: None,
            steps,
            interval: interval.into(),
            max_error_rate: 0.01,
            max_p99: Some("250ms".into()),
            min_requests: 20,
            max_hold_intervals: 3,
            max_success_rate_drop: 0.05,
            max_latency_ratio: None,
            detach: false,
        }
    }

    #[test]
    fn a_rollout_request_carries_the_flags_as_the_api_expects() {
        let req = rollout_request(&run_args("30s", vec![5, 100])).unwrap();
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"subset": "v2", "steps": [5, 100], "interval": "30s", "maxErrorRate": 0.01, "maxP99": "250ms",
                "minRequests": 20, "maxHoldIntervals": 3, "maxSuccessRateDrop": 0.05})
        );
    }

    #[test]
    fn bad_rollout_flags_fail_before_anything_is_sent() {
        let e = rollout_request(&run_args("soon", vec![5])).unwrap_err().to_string();
        assert!(e.starts_with("invalid --interval: invalid duration \"soon\""), "{e}");
        let e = rollout_request(&run_args("30s", vec![5, 150])).unwrap_err().to_string();
        assert!(e.contains("150"), "{e}");
    }
}
