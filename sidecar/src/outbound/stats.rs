//! Per destination subset traffic figures (reported to the control plane): what this sidecar saw
//! of each `service`/`subset` it called. Recorded on the request path with relaxed
//! atomics; read by the health reporter, which alone keeps the window state.

use crate::metrics::{quantile, LATENCY_BUCKETS_SECONDS};
use outrider_proto::v1::DestinationFigures;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: usize = LATENCY_BUCKETS_SECONDS.len() + 1;

pub struct SubsetStats {
    pub service: Box<str>,
    pub subset: Box<str>,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    /// Histogram counts at the previous report, so percentiles cover one interval.
    last_report: Mutex<[u64; BUCKETS]>,
}

impl SubsetStats {
    pub fn new(service: &str, subset: &str) -> Self {
        Self {
            service: service.into(),
            subset: subset.into(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Default::default(),
            last_report: Mutex::new([0; BUCKETS]),
        }
    }

    /// One request as the caller saw it (after retries): `failed` for 5xx, timeouts
    /// and connection failures.
    pub fn record(&self, failed: bool, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS - 1);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Totals since start and percentiles since the previous call.
    pub fn figures(&self) -> DestinationFigures {
        let now: [u64; BUCKETS] = std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed));
        let window = {
            let mut last = self.last_report.lock().unwrap_or_else(|e| e.into_inner());
            let w: [u64; BUCKETS] = std::array::from_fn(|i| now[i].saturating_sub(last[i]));
            *last = now;
            w
        };
        DestinationFigures {
            service: self.service.to_string(),
            subset: self.subset.to_string(),
            requests_total: self.requests_total(),
            errors_total: self.errors_total(),
            p50_ms: quantile(&window, 0.50) * 1e3,
            p99_ms: quantile(&window, 0.99) * 1e3,
            window_requests: window.iter().sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_totals_and_window_percentiles() {
        let s = SubsetStats::new("web", "v2");
        for _ in 0..99 {
            s.record(false, Duration::from_micros(700));
        }
        s.record(true, Duration::from_millis(300));
        let f = s.figures();
        assert_eq!((f.requests_total, f.errors_total, f.window_requests), (100, 1, 100));
        assert!(f.p50_ms > 0.5 && f.p50_ms <= 1.0, "{f:?}");
        assert!(f.p99_ms <= 1.0, "99 of 100 are fast: {f:?}");
        // The next window is empty; totals stay.
        let f = s.figures();
        assert_eq!((f.requests_total, f.window_requests, f.p99_ms), (100, 0, 0.0));
    }
}
