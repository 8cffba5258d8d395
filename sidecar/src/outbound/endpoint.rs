//! One endpoint's live state, shared by the destination table (which carries it
//! across snapshots by address) and the balance layer (which reads and feeds it):
//! requests in flight, a decaying failure score and passive-ejection bookkeeping.
//! A leaf, so that the table and the layer that reads the sidecar state do not
//! import each other.

use super::stats::SubsetStats;
use http::uri::Authority;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Consecutive failures (5xx, connection failures, timeouts) that eject an endpoint.
pub const EJECT_AFTER_FAILURES: u32 = 5;
/// First ejection time; doubles with each ejection in a row, up to [`MAX_EJECTION_MS`].
pub const BASE_EJECTION_MS: u64 = 2_000;
pub const MAX_EJECTION_MS: u64 = 30_000;
/// The failure score (an EWMA of failures, 0–1000) halves every this many ms without
/// news, so an avoided instance is tried again once it has had time to recover.
const SCORE_HALF_LIFE_MS: u64 = 5_000;
/// Below this the score counts as zero: a recovered instance rejoins the rotation.
const SCORE_FLOOR: u32 = 50;

pub struct EndpointState {
    /// `address:port` of the instance's inbound proxy.
    pub authority: Authority,
    pub subset: Box<str>,
    pub pod: Box<str>,
    /// The SPIFFE ID the instance's sidecar holds a certificate for: dialled with
    /// mTLS and made to prove it. `None`: plaintext.
    pub identity: Option<Arc<str>>,
    pub stats: Arc<SubsetStats>,
    outstanding: AtomicU32,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    failure_score: AtomicU32,
    score_at_ms: AtomicU64,
}

impl EndpointState {
    pub fn new(authority: Authority, subset: &str, pod: &str, stats: Arc<SubsetStats>) -> Self {
        Self {
            authority,
            subset: subset.into(),
            pod: pod.into(),
            identity: None,
            stats,
            outstanding: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            failure_score: AtomicU32::new(0),
            score_at_ms: AtomicU64::new(0),
        }
    }

    /// The same, dialled with mTLS as `identity` (empty: plaintext).
    pub fn with_identity(mut self, identity: &str) -> Self {
        self.identity = (!identity.is_empty()).then(|| identity.into());
        self
    }

    /// The failure score decayed to `now_ms` (0: healthy, 1000: failing everything).
    pub fn failure_score(&self, now_ms: u64) -> u32 {
        let score = self.failure_score.load(Ordering::Relaxed);
        let age = now_ms.saturating_sub(self.score_at_ms.load(Ordering::Relaxed));
        let decayed = (f64::from(score) * 0.5f64.powf(age as f64 / SCORE_HALF_LIFE_MS as f64)) as u32;
        if decayed < SCORE_FLOOR {
            0
        } else {
            decayed
        }
    }

    /// EWMA with α = 0.1; racy updates lose at most one sample.
    fn update_score(&self, failed: bool, now_ms: u64) {
        let old = self.failure_score(now_ms);
        let new = old - old / 10 + if failed { 100 } else { 0 };
        self.failure_score.store(new.min(1000), Ordering::Relaxed);
        self.score_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// What power of two choices compares: load, inflated by recent failures.
    pub(super) fn cost(&self, now_ms: u64) -> u64 {
        u64::from(self.outstanding() + 1) * u64::from(1000 + 9 * self.failure_score(now_ms))
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Counts one request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    pub fn record_success(&self, now_ms: u64) {
        if self.failure_score.load(Ordering::Relaxed) != 0 {
            self.update_score(false, now_ms);
        }
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Returns true when this failure ejected the endpoint.
    pub fn record_failure(&self, now_ms: u64) -> bool {
        self.update_score(true, now_ms);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < EJECT_AFTER_FAILURES || self.is_ejected(now_ms) {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let times = self.ejections.fetch_add(1, Ordering::Relaxed).min(8);
        let ms = (BASE_EJECTION_MS << times).min(MAX_EJECTION_MS);
        self.ejected_until_ms.store(now_ms + ms, Ordering::Relaxed);
        true
    }
}

pub struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}
