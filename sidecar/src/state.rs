//! The sidecar's shared state: what it enforces now, swapped atomically as a whole.
//!
//! The request path reads [`SidecarState::applied`] with one lock-free load
//! (`arc_swap`); the agent replaces it when a snapshot is accepted.

use crate::logship::LogHub;
use crate::metrics::Metrics;
use crate::outbound::table::{Destinations, TableError};
use crate::ratelimit::RateLimiter;
use arc_swap::ArcSwapOption;
use outrider_policy::{LoggingPolicy, PolicyError, RateLimitPolicy};
use outrider_proto::v1::Snapshot;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Where the applied snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    ControlPlane,
    /// Loaded from the state directory at start, while the control plane was away.
    Persisted,
}

/// One accepted snapshot, validated and compiled.
pub struct Applied {
    pub revision: u64,
    pub nonce: String,
    pub source: Source,
    pub service_share: f64,
    pub healthy_instances: u32,
    pub rate_limit: Option<RateLimitPolicy>,
    pub logging: Option<LoggingPolicy>,
    pub configs: Vec<ConfigSummary>,
    pub limiter: RateLimiter,
    /// Outbound routing: every service's endpoints and RoutingPolicy.
    pub destinations: Arc<Destinations>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSummary {
    pub name: String,
    pub content_type: String,
    pub revision: u64,
    pub size: usize,
    /// The document itself, for the config-document writer and `/config/{name}`;
    /// not part of `/config_dump`.
    #[serde(skip)]
    pub content: bytes::Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("rate-limit policy: {0}")]
    RateLimit(PolicyError),
    #[error("logging policy: {0}")]
    Logging(PolicyError),
    #[error("destinations: {0}")]
    Destinations(#[from] TableError),
    #[error("service share {0} is not in (0, 1]")]
    Share(f64),
}

/// Shared by the inbound proxy, the admin server and the agent.
pub struct SidecarState {
    pub applied: ArcSwapOption<Applied>,
    pub metrics: Metrics,
    /// Access-log channel and log-shipping figures (`logship`).
    pub logs: LogHub,
    connected: AtomicBool,
    /// Bumped after every swap, so that background owners (config documents, log
    /// shipping) react to a new snapshot without polling.
    changes: watch::Sender<u64>,
}

impl Default for SidecarState {
    fn default() -> Self {
        Self::new()
    }
}

impl SidecarState {
    pub fn new() -> Self {
        Self {
            applied: ArcSwapOption::empty(),
            metrics: Metrics::new(),
            logs: LogHub::new(),
            connected: AtomicBool::new(false),
            changes: watch::channel(0).0,
        }
    }

    /// Ready once a snapshot has been applied, from the control plane or from disk.
    pub fn is_ready(&self) -> bool {
        self.applied.load().is_some()
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.metrics.set_control_plane_connected(connected);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn applied_revision(&self) -> u64 {
        self.applied.load().as_ref().map_or(0, |a| a.revision)
    }

    /// Validates and compiles `snapshot`; on success swaps it in as a whole, so a
    /// request sees either the old policy or the new one, never a mix. On error
    /// nothing changes (the caller NACKs).
    pub fn apply(&self, snapshot: &Snapshot, source: Source) -> Result<(), ApplyError> {
        let applied = self.compile(snapshot, source)?;
        self.metrics.set_applied_revision(applied.revision);
        self.applied.store(Some(Arc::new(applied)));
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Notified after each applied snapshot; read `applied` for its contents.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn compile(&self, s: &Snapshot, source: Source) -> Result<Applied, ApplyError> {
        let share = if s.service_share == 0.0 { 1.0 } else { s.service_share };
        if !(share > 0.0 && share <= 1.0) {
            return Err(ApplyError::Share(s.service_share));
        }
        let rate_limit = non_empty(&s.rate_limit)
            .map(|j| outrider_policy::parse_document::<RateLimitPolicy>(j.as_bytes()))
            .transpose()
            .map_err(ApplyError::RateLimit)?;
        let logging = non_empty(&s.logging)
            .map(|j| outrider_policy::parse_document::<LoggingPolicy>(j.as_bytes()))
            .transpose()
            .map_err(ApplyError::Logging)?;
        let previous = self.applied.load_full();
        // Buckets carry over from the previous snapshot so that a re-split or an
        // unrelated change does not hand every client a fresh burst.
        let limiter = RateLimiter::compile(rate_limit.as_ref(), share, previous.as_ref().map(|p| &p.limiter));
        let destinations = Arc::new(Destinations::compile(
            s.destinations.as_ref(),
            previous.as_ref().map(|p| &*p.destinations),
        )?);
        let configs = s
            .configs
            .iter()
            .map(|c| ConfigSummary {
                name: c.name.clone(),
                content_type: c.content_type.clone(),
                revision: c.revision,
                size: c.content.len(),
                content: bytes::Bytes::copy_from_slice(&c.content),
            })
            .collect();
        Ok(Applied {
            revision: s.revision,
            nonce: s.nonce.clone(),
            source,
            service_share: share,
            healthy_instances: s.healthy_instances,
            rate_limit,
            logging,
            configs,
            limiter,
            destinations,
        })
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.trim().is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: &str = r#"{"rules":[{"name":"all","requestsPerSecond":5,"burst":5}]}"#;

    fn snapshot(revision: u64, rate_limit: &str) -> Snapshot {
        Snapshot {
            revision,
            nonce: format!("n{revision}"),
            service: "web".into(),
            rate_limit: rate_limit.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_that_fails_validation_leaves_the_applied_one_untouched() {
        let state = SidecarState::new();
        state.apply(&snapshot(3, LIMIT), Source::ControlPlane).unwrap();
        let before = state.applied.load_full().unwrap();
        let mut changes = state.subscribe();
        changes.borrow_and_update();

        // The rate-limit half is bad; the share is fine: nothing of it may show.
        let bad = snapshot(4, r#"{"rules":[{"name":"all","requestsPerSecond":-1}]}"#);
        let err = state.apply(&bad, Source::ControlPlane).unwrap_err();
        assert!(matches!(err, ApplyError::RateLimit(_)), "{err}");
        assert!(err.to_string().contains("rules[0].requestsPerSecond"), "{err}");

        let after = state.applied.load_full().unwrap();
        assert!(
            Arc::ptr_eq(&before, &after),
            "the same compiled snapshot stays in force"
        );
        assert_eq!(state.applied_revision(), 3);
        assert!(
            !changes.has_changed().unwrap(),
            "no change is announced for a refused snapshot"
        );
    }

    #[test]
    fn a_bad_share_or_logging_policy_is_refused_before_anything_is_swapped() {
        let state = SidecarState::new();
        let share = Snapshot {
            service_share: 1.5,
            ..snapshot(1, LIMIT)
        };
        assert!(matches!(
            state.apply(&share, Source::ControlPlane),
            Err(ApplyError::Share(_))
        ));
        let logging = Snapshot {
            logging: "{not json".into(),
            ..snapshot(1, "")
        };
        assert!(matches!(
            state.apply(&logging, Source::ControlPlane),
            Err(ApplyError::Logging(_))
        ));
        assert!(!state.is_ready(), "nothing was ever applied");
        assert_eq!(state.applied_revision(), 0);
    }

    #[test]
    fn an_accepted_snapshot_replaces_the_old_one_whole_and_is_announced() {
        let state = SidecarState::new();
        let mut changes = state.subscribe();
        state.apply(&snapshot(3, LIMIT), Source::Persisted).unwrap();
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();

        state.apply(&snapshot(5, ""), Source::ControlPlane).unwrap();
        let applied = state.applied.load_full().unwrap();
        assert_eq!((applied.revision, applied.nonce.as_str()), (5, "n5"));
        assert_eq!(applied.source, Source::ControlPlane);
        assert!(applied.rate_limit.is_none(), "an empty document removes the policy");
        assert_eq!(
            applied.service_share, 1.0,
            "share 0 on the wire means the whole service"
        );
        assert!(changes.has_changed().unwrap());
    }
}
