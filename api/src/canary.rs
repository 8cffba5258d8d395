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
    /// The canary's weight at each step, 0 to 100 (`[10, 50, 100]`).
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
}

/// The error rate a rollout tolerates when the request names none: 1%.
pub fn default_max_error_rate() -> f64 {
    0.01
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
}
