//! The control plane's own Prometheus metrics (`GET /metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub latest_revision: Gauge,
    pub connected_sidecars: Gauge,
    pub snapshots_built: Counter,
    pub snapshots_sent: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    pub policy_writes: Counter,
    /// Destination updates (whole or delta) sent to sidecars.
    pub destinations_sent: Counter,
    /// Encoded bytes of every snapshot and destination update sent.
    pub stream_bytes_sent: Counter,
    /// Destination names sidecars asked for (on demand or declared).
    pub watches: Counter,
    /// Health reports written to the store (batched or at once).
    pub health_rows_written: Counter,
    /// REST requests refused for a missing or wrong bearer token (401 or 429).
    pub api_auth_failures: Counter,
    /// Of those, the ones answered 429 because their client failed too often.
    pub api_auth_throttled: Counter,
    /// Write → ACK of each revision by each sidecar connected when it was written.
    pub propagation_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("outrider_control_plane");
        let m = Self {
            latest_revision: Gauge::default(),
            connected_sidecars: Gauge::default(),
            snapshots_built: Counter::default(),
            snapshots_sent: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            policy_writes: Counter::default(),
            destinations_sent: Counter::default(),
            stream_bytes_sent: Counter::default(),
            watches: Counter::default(),
            health_rows_written: Counter::default(),
            api_auth_failures: Counter::default(),
            api_auth_throttled: Counter::default(),
            propagation_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            registry: Registry::default(),
        };
        registry.register(
            "latest_revision",
            "Newest revision in the store seen by this replica",
            m.latest_revision.clone(),
        );
        registry.register(
            "connected_sidecars",
            "Sidecars with an open control stream to this replica",
            m.connected_sidecars.clone(),
        );
        registry.register(
            "snapshots_built",
            "Service snapshots built (once per service per change)",
            m.snapshots_built.clone(),
        );
        registry.register("snapshots_sent", "Snapshots sent to sidecars", m.snapshots_sent.clone());
        registry.register("acks", "Snapshots acknowledged by sidecars", m.acks.clone());
        registry.register("nacks", "Snapshots refused by sidecars", m.nacks.clone());
        registry.register(
            "api_auth_failures",
            "REST requests refused for a missing or wrong bearer token (401 or 429)",
            m.api_auth_failures.clone(),
        );
        registry.register(
            "api_auth_throttled",
            "REST requests answered 429 because their client address failed authentication too often",
            m.api_auth_throttled.clone(),
        );
        registry.register(
            "policy_writes",
            "Policy and config writes through this replica's API",
            m.policy_writes.clone(),
        );
        registry.register(
            "destinations_sent",
            "Destination updates (whole or delta) sent to the sidecars watching them",
            m.destinations_sent.clone(),
        );
        registry.register(
            "stream_bytes_sent",
            "Encoded bytes of the snapshots and destination updates sent to sidecars",
            m.stream_bytes_sent.clone(),
        );
        registry.register(
            "watches",
            "Destination services sidecars asked to receive",
            m.watches.clone(),
        );
        registry.register(
            "health_rows_written",
            "Health reports written to the store (coalesced into batches)",
            m.health_rows_written.clone(),
        );
        registry.register(
            "propagation_seconds",
            "Seconds from a revision's write to its ACK by each sidecar connected at the time",
            m.propagation_seconds.clone(),
        );
        Self { registry, ..m }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
