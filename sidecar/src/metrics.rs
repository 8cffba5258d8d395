//! The sidecar's own metrics: request counters and a latency histogram recorded on
//! the proxy's hot path, rendered as Prometheus text on the admin port.
//!
//! Everything is a plain atomic: recording a request is a handful of relaxed
//! `fetch_add`s with no lock and no label lookup, and `render` reads the atomics and
//! writes the exposition format by hand. The health report sent to the control plane
//! is derived from the same counters ([`Metrics::health_figures`]).

use crate::authz::AuthzCounters;
use outrider_runtime::prom::{Kind, Writer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (`+Inf` is implicit). Spaced for a
/// proxy in front of an app: sub-millisecond up to ten seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const BUCKETS: usize = LATENCY_BUCKETS_SECONDS.len() + 1;

/// The same bounds in nanoseconds, for an integer comparison on the hot path.
const BUCKET_BOUNDS_NS: [u64; LATENCY_BUCKETS_SECONDS.len()] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Response status classes counted by `outrider_sidecar_requests_total`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Figures for the periodic health report (`docs/reference.md`, Control stream).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HealthFigures {
    /// Requests answered since start.
    pub requests_total: u64,
    /// `5xx` answers since start, including the sidecar's own 502/503 for an
    /// unreachable app.
    pub errors_total: u64,
    /// Requests refused with 429 by the rate limiter since start.
    pub rate_limited_total: u64,
    /// Median latency over the requests since the previous call, in milliseconds
    /// (0 when there were none).
    pub p50_ms: f64,
    /// 99th percentile latency over the requests since the previous call.
    pub p99_ms: f64,
}

pub struct Metrics {
    /// By status class; index 0 is 1xx, 4 is 5xx.
    requests: [AtomicU64; 5],
    rate_limited: AtomicU64,
    /// Inbound requests whose caller proved no identity (plaintext).
    plaintext: AtomicU64,
    upstream_errors: AtomicU64,
    /// Outbound: instances ejected by outlier detection (any destination).
    ejections: AtomicU64,
    latency: Histogram,
    applied_revision: AtomicU64,
    control_plane_connected: AtomicBool,
    /// Histogram counts at the previous `health_figures` call, so that percentiles
    /// describe the last report interval rather than the whole uptime. Only the
    /// health reporter touches it, never the request path.
    last_report: Mutex<[u64; BUCKETS]>,
    /// `outrider_authz_denied_total`, one counter per rule (see `authz`).
    pub authz: AuthzCounters,
    /// Outbound traffic for no mesh service (`outbound::passthrough`).
    pub passthrough: PassthroughCounters,
}

/// What went outside the mesh: HTTP requests or opaque TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassthroughKind {
    Http,
    Tcp,
}

/// Why traffic for no mesh service did not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `OUTRIDER_OUTBOUND_POLICY=registry-only`.
    RegistryOnly,
    /// Explicit forwarding to loopback, an unspecified or metadata address, the
    /// listener itself, or a scheme other than http.
    ForbiddenAddress,
    /// The host named in an explicit request does not resolve.
    Unresolvable,
    /// The destination did not accept the connection or failed before answering.
    Unreachable,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::RegistryOnly,
        Refusal::ForbiddenAddress,
        Refusal::Unresolvable,
        Refusal::Unreachable,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::RegistryOnly => "registry-only",
            Refusal::ForbiddenAddress => "forbidden-address",
            Refusal::Unresolvable => "unresolvable",
            Refusal::Unreachable => "unreachable",
        }
    }
}

/// `outrider_outbound_passthrough_total{kind}` and
/// `outrider_outbound_passthrough_refused_total{kind, reason}`.
#[derive(Default)]
pub struct PassthroughCounters {
    /// By kind (HTTP, TCP).
    passed: [AtomicU64; 2],
    /// By kind, then reason ([`Refusal::ALL`] order).
    refused: [[AtomicU64; 4]; 2],
}

impl PassthroughCounters {
    pub fn passed(&self, kind: PassthroughKind) {
        self.passed[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, kind: PassthroughKind, why: Refusal) {
        self.refused[kind as usize][why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn passed_total(&self, kind: PassthroughKind) -> u64 {
        self.passed[kind as usize].load(Ordering::Relaxed)
    }

    pub fn refused_total(&self, kind: PassthroughKind, why: Refusal) -> u64 {
        self.refused[kind as usize][why as usize].load(Ordering::Relaxed)
    }

    fn render(&self, w: &mut Writer<'_>) {
        const KINDS: [(PassthroughKind, &str); 2] = [(PassthroughKind::Http, "http"), (PassthroughKind::Tcp, "tcp")];
        w.family(
            "outrider_outbound_passthrough_total",
            Kind::Counter,
            "Outbound requests (http) and connections (tcp) for no mesh service sent to their destination.",
        );
        for (kind, label) in KINDS {
            w.sample(
                "outrider_outbound_passthrough_total",
                &[("kind", label)],
                self.passed_total(kind),
            );
        }
        w.family(
            "outrider_outbound_passthrough_refused_total",
            Kind::Counter,
            "Outbound traffic for no mesh service that did not get through, by reason.",
        );
        for (kind, label) in KINDS {
            for why in Refusal::ALL {
                w.sample(
                    "outrider_outbound_passthrough_refused_total",
                    &[("kind", label), ("reason", why.label())],
                    self.refused_total(kind, why),
                );
            }
        }
    }
}

struct Histogram {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            requests: Default::default(),
            rate_limited: AtomicU64::new(0),
            plaintext: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            latency: Histogram {
                counts: Default::default(),
                sum_ns: AtomicU64::new(0),
            },
            applied_revision: AtomicU64::new(0),
            control_plane_connected: AtomicBool::new(false),
            last_report: Mutex::new([0; BUCKETS]),
            authz: AuthzCounters::default(),
            passthrough: PassthroughCounters::default(),
        }
    }

    /// Records one answered request: its status and the time from receiving it to
    /// sending the response head.
    pub fn record_request(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(BUCKETS - 1);
        self.latency.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A request refused by the rate limiter (also recorded as a 429 request).
    pub fn record_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The app could not be reached or failed mid-exchange (also recorded as a 5xx).
    pub fn record_upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The outbound proxy ejected an instance after consecutive failures.
    pub fn record_ejection(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn set_applied_revision(&self, revision: u64) {
        self.applied_revision.store(revision, Ordering::Relaxed);
    }

    pub fn set_control_plane_connected(&self, connected: bool) {
        self.control_plane_connected.store(connected, Ordering::Relaxed);
    }

    /// Counts an inbound request that came in plaintext.
    pub fn count_plaintext(&self) {
        self.plaintext.fetch_add(1, Ordering::Relaxed);
    }

    pub fn plaintext_total(&self) -> u64 {
        self.plaintext.load(Ordering::Relaxed)
    }

    pub fn requests_total(&self) -> u64 {
        self.requests.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn rate_limited_total(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    pub fn upstream_errors_total(&self) -> u64 {
        self.upstream_errors.load(Ordering::Relaxed)
    }

    /// Counters since start, percentiles since the previous call (the health
    /// reporter is meant to be the only caller; a second caller would split the
    /// windows between them).
    pub fn health_figures(&self) -> HealthFigures {
        let now = self.latency.snapshot();
        let window = {
            // A poisoned lock only means a reporter panicked mid-update of plain
            // integers; the data is still usable.
            let mut last = self.last_report.lock().unwrap_or_else(|e| e.into_inner());
            let mut window = [0u64; BUCKETS];
            for (w, (n, l)) in window.iter_mut().zip(now.iter().zip(last.iter())) {
                *w = n.saturating_sub(*l);
            }
            *last = now;
            window
        };
        HealthFigures {
            requests_total: self.requests_total(),
            errors_total: self.requests[4].load(Ordering::Relaxed),
            rate_limited_total: self.rate_limited_total(),
            p50_ms: quantile(&window, 0.50) * 1e3,
            p99_ms: quantile(&window, 0.99) * 1e3,
        }
    }

    /// The Prometheus text exposition format (version 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut w = Writer::new(&mut out);
        w.family(
            "outrider_sidecar_requests_total",
            Kind::Counter,
            "Requests answered by the inbound proxy, by status class.",
        );
        for (class, count) in CLASSES.iter().zip(&self.requests) {
            w.sample(
                "outrider_sidecar_requests_total",
                &[("class", class)],
                count.load(Ordering::Relaxed),
            );
        }
        w.single(
            "outrider_sidecar_rate_limited_total",
            Kind::Counter,
            "Requests refused with 429 by the rate limiter.",
            self.rate_limited_total(),
        );
        w.single(
            "outrider_sidecar_plaintext_requests_total",
            Kind::Counter,
            "Inbound requests whose caller proved no identity (not mTLS).",
            self.plaintext_total(),
        );
        w.single(
            "outrider_sidecar_upstream_errors_total",
            Kind::Counter,
            "Requests that failed because the app could not be reached.",
            self.upstream_errors_total(),
        );
        w.single(
            "outrider_sidecar_ejections_total",
            Kind::Counter,
            "Instances the outbound proxy ejected after consecutive failures.",
            self.ejections_total(),
        );

        w.family(
            "outrider_sidecar_request_duration_seconds",
            Kind::Histogram,
            "Time from receiving a request to sending the response head.",
        );
        let counts = self.latency.snapshot();
        let mut cumulative = 0u64;
        for (bound, count) in LATENCY_BUCKETS_SECONDS.iter().zip(&counts) {
            cumulative += count;
            w.sample(
                "outrider_sidecar_request_duration_seconds_bucket",
                &[("le", &bound.to_string())],
                cumulative,
            );
        }
        cumulative += counts[BUCKETS - 1];
        w.sample(
            "outrider_sidecar_request_duration_seconds_bucket",
            &[("le", "+Inf")],
            cumulative,
        );
        let sum = self.latency.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        w.sample("outrider_sidecar_request_duration_seconds_sum", &[], sum);
        w.sample("outrider_sidecar_request_duration_seconds_count", &[], cumulative);

        w.single(
            "outrider_sidecar_applied_revision",
            Kind::Gauge,
            "Revision of the policy snapshot being enforced (0: none).",
            self.applied_revision.load(Ordering::Relaxed),
        );
        w.single(
            "outrider_sidecar_control_plane_connected",
            Kind::Gauge,
            "1 while the control stream is up.",
            u8::from(self.control_plane_connected.load(Ordering::Relaxed)),
        );
        self.authz.render(&mut w);
        self.passthrough.render(&mut w);
        out
    }
}

impl Histogram {
    fn snapshot(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// Estimates quantile `q` in seconds from per-bucket counts, interpolating linearly
/// inside the bucket as Prometheus' `histogram_quantile` does. Observations in the
/// `+Inf` bucket are reported at the highest finite bound.
pub(crate) fn quantile(counts: &[u64; BUCKETS], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &count) in counts.iter().enumerate() {
        if count > 0 && (seen + count) as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS_SECONDS.get(i) else {
                return LATENCY_BUCKETS_SECONDS[LATENCY_BUCKETS_SECONDS.len() - 1];
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS_SECONDS[i - 1] };
            let within = ((rank - seen as f64) / count as f64).clamp(0.0, 1.0);
            return lower + (upper - lower) * within;
        }
        seen += count;
    }
    LATENCY_BUCKETS_SECONDS[LATENCY_BUCKETS_SECONDS.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks one line of the text format: a comment (`# HELP`/`# TYPE` with a valid
    /// metric name) or a sample `name{label="value",…} number`.
    fn assert_valid_line(line: &str) {
        fn valid_name(n: &str) -> bool {
            let mut chars = n.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, text) = (parts.next(), parts.next(), parts.next());
            assert!(matches!(kind, Some("HELP" | "TYPE")), "bad comment: {line}");
            assert!(name.is_some_and(valid_name), "bad name: {line}");
            if kind == Some("TYPE") {
                assert!(
                    matches!(text, Some("counter" | "gauge" | "histogram")),
                    "bad type: {line}"
                );
            }
            return;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "bad value: {line}");
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(
                        valid_name(k) && v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(
            valid_name(name) && (name.starts_with("outrider_sidecar_") || name.starts_with("outrider_outbound_")),
            "bad sample name: {line}"
        );
    }

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn render_is_valid_exposition_and_counts_move() {
        let m = Metrics::new();
        let before = m.render();
        before.lines().for_each(assert_valid_line);
        assert_eq!(sample(&before, "outrider_sidecar_requests_total{class=\"2xx\"}"), 0.0);

        m.record_request(200, Duration::from_millis(3));
        m.record_request(204, Duration::from_millis(30));
        m.record_request(429, Duration::from_micros(100));
        m.record_rate_limited();
        m.record_request(502, Duration::from_secs(20));
        m.record_upstream_error();
        m.set_applied_revision(42);
        m.set_control_plane_connected(true);
        m.passthrough.passed(PassthroughKind::Tcp);
        m.passthrough.refused(PassthroughKind::Http, Refusal::RegistryOnly);

        let text = m.render();
        assert_eq!(sample(&text, "outrider_outbound_passthrough_total{kind=\"tcp\"}"), 1.0);
        assert_eq!(sample(&text, "outrider_outbound_passthrough_total{kind=\"http\"}"), 0.0);
        assert_eq!(
            sample(
                &text,
                "outrider_outbound_passthrough_refused_total{kind=\"http\",reason=\"registry-only\"}"
            ),
            1.0
        );
        text.lines().for_each(assert_valid_line);
        assert_eq!(sample(&text, "outrider_sidecar_requests_total{class=\"2xx\"}"), 2.0);
        assert_eq!(sample(&text, "outrider_sidecar_requests_total{class=\"4xx\"}"), 1.0);
        assert_eq!(sample(&text, "outrider_sidecar_requests_total{class=\"5xx\"}"), 1.0);
        assert_eq!(sample(&text, "outrider_sidecar_rate_limited_total"), 1.0);
        assert_eq!(sample(&text, "outrider_sidecar_upstream_errors_total"), 1.0);
        assert_eq!(
            sample(&text, "outrider_sidecar_request_duration_seconds_bucket{le=\"0.005\"}"),
            2.0
        );
        assert_eq!(
            sample(&text, "outrider_sidecar_request_duration_seconds_bucket{le=\"10\"}"),
            3.0
        );
        assert_eq!(
            sample(&text, "outrider_sidecar_request_duration_seconds_bucket{le=\"+Inf\"}"),
            4.0
        );
        assert_eq!(sample(&text, "outrider_sidecar_request_duration_seconds_count"), 4.0);
        assert!((sample(&text, "outrider_sidecar_request_duration_seconds_sum") - 20.0331).abs() < 1e-9);
        assert_eq!(sample(&text, "outrider_sidecar_applied_revision"), 42.0);
        assert_eq!(sample(&text, "outrider_sidecar_control_plane_connected"), 1.0);
    }

    #[test]
    fn health_figures_count_errors_and_window_percentiles() {
        let m = Metrics::new();
        for _ in 0..98 {
            m.record_request(200, Duration::from_millis(2));
        }
        m.record_request(503, Duration::from_millis(400));
        m.record_request(429, Duration::from_millis(400));
        m.record_rate_limited();

        let h = m.health_figures();
        assert_eq!((h.requests_total, h.errors_total, h.rate_limited_total), (100, 1, 1));
        assert!(h.p50_ms > 1.0 && h.p50_ms <= 2.5, "p50 {}", h.p50_ms);
        assert!(h.p99_ms > 250.0 && h.p99_ms <= 500.0, "p99 {}", h.p99_ms);

        // The next window has no requests: totals stay, percentiles reset.
        let h = m.health_figures();
        assert_eq!(h.requests_total, 100);
        assert_eq!((h.p50_ms, h.p99_ms), (0.0, 0.0));
    }

    #[test]
    fn quantile_of_overflow_bucket_is_the_top_bound() {
        let mut counts = [0; BUCKETS];
        counts[BUCKETS - 1] = 3;
        assert_eq!(quantile(&counts, 0.5), 10.0);
    }
}
