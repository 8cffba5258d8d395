//! `/services/{service}/canary`: an automated rollout, as asked for and as it stands.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What `POST /services/{service}/canary` takes (and what the control plane keeps
/// of the rollout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutRequest {
    /// The subset being rolled out (`v2`).
    #[schema(pattern = "\\S")]
    pub subset: String,
    /// The subset that keeps the rest of the traffic; the current RoutingPolicy's
    /// stable subset (or `v1`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    /// The canary's weight at each step, 1 to 100 (`[10, 50, 100]`).
    #[schema(min_items = 1)]
    pub steps: Vec<u32>,
    /// How long each step lasts (`"30s"`).
    #[schema(value_type = String, example = "30s")]
    pub interval: outrider_policy::Duration,
    /// Highest error rate (0 to 1) of the canary over a step before it rolls back.
    #[serde(default = "default_max_error_rate")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub max_error_rate: f64,
    /// Highest p99 latency of the canary before it rolls back (`"250ms"`).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "maxP99")]
    #[schema(value_type = Option<String>, example = "250ms")]
    pub max_p99: Option<outrider_policy::Duration>,
    /// Requests the canary must have served within a step before the step is judged
    /// or advances; a step with fewer is `holding`.
    #[serde(default = "default_min_requests")]
    #[schema(minimum = 1)]
    pub min_requests: u64,
    /// Intervals a step may hold for traffic beyond its own before the rollout rolls
    /// back for lack of it.
    #[serde(default = "default_max_hold_intervals")]
    pub max_hold_intervals: u32,
    /// How far (0 to 1) the canary's success rate over a step may fall below the
    /// stable subset's over the same step.
    #[serde(default = "default_max_success_rate_drop")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub max_success_rate_drop: f64,
    /// How many times the stable subset's p99 latency over a step the canary's may
    /// be (`2.0`); not compared when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ratio: Option<f64>,
}

/// The error rate a rollout tolerates when the request names none: 1%.
pub fn default_max_error_rate() -> f64 {
    0.01
}

/// Canary requests a step needs when the request names no number: 20.
pub fn default_min_requests() -> u64 {
    20
}

/// Intervals a step may hold when the request names no number: 3.
pub fn default_max_hold_intervals() -> u32 {
    3
}

/// How far below stable's success rate the canary's may be by default: 5 points.
pub fn default_max_success_rate_drop() -> f64 {
    0.05
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Stepping; the control plane drives it.
    Running,
    /// Waiting for enough traffic to judge the step.
    Holding,
    /// The last step passed within the thresholds.
    Succeeded,
    /// A threshold was crossed: 100% back to the stable subset (`reason` says which).
    RolledBack,
    /// Stopped by an operator (or unreadable); 100% to the stable subset.
    Aborted,
}

impl RolloutState {
    /// Whether the control plane still drives the rollout (running or holding).
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Holding)
    }

    /// The name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Holding => "holding",
            RolloutState::Succeeded => "succeeded",
            RolloutState::RolledBack => "rolled-back",
            RolloutState::Aborted => "aborted",
        }
    }
}

impl std::str::FromStr for RolloutState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            RolloutState::Running,
            RolloutState::Holding,
            RolloutState::Succeeded,
            RolloutState::RolledBack,
            RolloutState::Aborted,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown rollout state {s:?}"))
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rollout as it stands (`GET`, and the answers to `POST` and `DELETE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub service: String,
    pub subset: String,
    /// `null` only for a rollout stored without one.
    pub stable: Option<String>,
    pub steps: Vec<u32>,
    /// As requested (`"30s"`).
    pub interval: String,
    pub max_error_rate: f64,
    /// As requested, `null` when not.
    #[serde(rename = "maxP99")]
    pub max_p99: Option<String>,
    pub state: RolloutState,
    /// Index into `steps` of the current (or last) step.
    pub step: u64,
    /// The canary's weight now (0 before the first step starts).
    pub weight: u32,
    /// Why it ended, when it ended other than by succeeding quietly.
    pub reason: String,
    /// Epoch milliseconds.
    pub started_at_ms: i64,
    /// Epoch milliseconds.
    pub updated_at_ms: i64,
    /// The control-plane replica driving it.
    pub driver: String,
    /// Who started it (the API token's name).
    pub actor: String,
    /// Whether the control plane still drives it (`running` or `holding`); while it
    /// does, manual weight edits of the service are refused with 409.
    pub active: bool,
    pub min_requests: u64,
    pub max_hold_intervals: u32,
    pub max_success_rate_drop: f64,
    pub max_latency_ratio: Option<f64>,
    /// Epoch milliseconds; 0 before the first step starts.
    pub step_started_at_ms: i64,
    /// While active: milliseconds until the step's interval ends (`running`) or
    /// until a `holding` step gives up; `null` once the rollout ended.
    pub time_left_ms: Option<u64>,
    /// The canary's and the stable subset's figures over the current (or last) step
    /// only: requests since the step began, not since the callers started.
    pub figures: StepFigures,
}

/// Both subsets of a rollout over one step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepFigures {
    pub canary: WindowFigures,
    pub stable: WindowFigures,
}

/// One subset over one step, summed over its callers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowFigures {
    pub subset: String,
    pub requests: u64,
    pub errors: u64,
    /// `1 - errors / requests` (1.0 without requests).
    pub success_rate: f64,
    /// The worst p99 latency callers reported during the step (0 without enough
    /// requests to tell).
    pub p99_ms: f64,
}

/// `PUT /services/{service}/canary/weight`: a manual canary weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryWeightRequest {
    /// The canary subset; it needs a healthy instance unless `weight` is 0.
    #[schema(pattern = "\\S")]
    pub subset: String,
    /// 0 to 100.
    #[schema(minimum = 0, maximum = 100)]
    pub weight: u32,
    /// The subset that keeps the rest: the current stable (or `v1`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
}
