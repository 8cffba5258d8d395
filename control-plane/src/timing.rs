//! Liveness timing: how often sidecars report and how long a silence makes one
//! unhealthy or disconnected. Shared by the stream, the hub, discovery and the API.

use std::time::Duration;

/// Liveness timing shared by the stream, the API and the membership check.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often sidecars send a health report.
    pub report_interval: Duration,
    /// Silence after which a sidecar counts as unhealthy (and leaves the split).
    pub unhealthy_after: Duration,
    /// Silence after which a sidecar counts as disconnected.
    pub disconnected_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            report_interval: Duration::from_secs(1),
            unhealthy_after: Duration::from_secs(5),
            disconnected_after: Duration::from_secs(30),
        }
    }
}
