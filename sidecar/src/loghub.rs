//! The hand-off between the request path and log shipping: the bounded queue of access
//! records and the shipping figures, shared by the proxies, the agent and the shipper.
//!
//! A leaf on purpose: it imports neither the sidecar's state nor `logship`, so the state
//! can hold a [`LogHub`] while `logship` reads the state, without the two importing each
//! other. `logship` re-exports everything here under its own paths.

use http::Method;
use outrider_runtime::prom::{Kind, Writer};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Room for access records between the proxy and the shipper. At ~300 bytes a
/// record this bounds the queue at a few MiB.
pub const ACCESS_QUEUE: usize = 8192;

/// One request, as the shipper receives it.
#[derive(Debug, Clone, Default)]
pub struct AccessRecord {
    pub unix_ms: u64,
    pub method: Method,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub duration_us: u64,
    /// The response's `Content-Length`, when it has one.
    pub bytes: Option<u64>,
    pub upstream: Option<Arc<str>>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub direction: &'static str,
    /// The AuthorizationPolicy's decision, when the service has one.
    pub authz: Option<crate::authz::AuthzDecision>,
}

/// Shared between the proxy (sender side) and the shipper (receiver side).
pub struct LogHub {
    access_tx: mpsc::Sender<AccessRecord>,
    access_rx: Mutex<Option<mpsc::Receiver<AccessRecord>>>,
    /// Shared with the shipping thread, which updates them.
    pub figures: Arc<Figures>,
}

impl Default for LogHub {
    fn default() -> Self {
        Self::new()
    }
}

impl LogHub {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(ACCESS_QUEUE);
        Self {
            access_tx: tx,
            access_rx: Mutex::new(Some(rx)),
            figures: Arc::default(),
        }
    }

    /// Hands a finished record to the shipper without waiting.
    pub fn push_access(&self, record: AccessRecord) {
        match self.access_tx.try_send(record) {
            Ok(()) => {}
            Err(_) => {
                self.figures.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The receiving end; the one shipper takes it once.
    pub fn take_access_receiver(&self) -> Option<mpsc::Receiver<AccessRecord>> {
        self.access_rx.lock().ok()?.take()
    }
}

/// Shipping figures for `/metrics` and the health report.
#[derive(Debug, Default)]
pub struct Figures {
    /// Lines read from app log files.
    pub lines_read: AtomicU64,
    /// Access records accepted from the proxy.
    pub access_records: AtomicU64,
    /// Records the sink accepted.
    pub shipped: AtomicU64,
    /// Records dropped: access queue full, a record the sink refused alone (413, 400,
    /// 422 after splitting), an Elasticsearch item refused for good, or a batch refused
    /// for good (another 4xx).
    pub dropped: AtomicU64,
    /// Bytes waiting for the sink: in the on-disk spool plus the batch in hand.
    pub buffered_bytes: AtomicU64,
    /// Failed deliveries (each is retried unless it was refused for good).
    pub sink_errors: AtomicU64,
}

/// A copy of [`Figures`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FigureValues {
    pub lines_read: u64,
    pub access_records: u64,
    pub shipped: u64,
    pub dropped: u64,
    pub buffered_bytes: u64,
    pub sink_errors: u64,
}

impl Figures {
    pub fn values(&self) -> FigureValues {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FigureValues {
            lines_read: r(&self.lines_read),
            access_records: r(&self.access_records),
            shipped: r(&self.shipped),
            dropped: r(&self.dropped),
            buffered_bytes: r(&self.buffered_bytes),
            sink_errors: r(&self.sink_errors),
        }
    }

    /// Prometheus text, appended to the sidecar's `/metrics`.
    pub fn render(&self) -> String {
        let v = self.values();
        let mut out = String::with_capacity(1024);
        Writer::new(&mut out)
            .single(
                "outrider_sidecar_log_lines_read_total",
                Kind::Counter,
                "Lines read from the app's log files.",
                v.lines_read,
            )
            .single(
                "outrider_sidecar_access_records_total",
                Kind::Counter,
                "Access records taken from the proxy for shipping.",
                v.access_records,
            )
            .single(
                "outrider_sidecar_log_records_shipped_total",
                Kind::Counter,
                "Log records the sink accepted.",
                v.shipped,
            )
            .single(
                "outrider_sidecar_log_records_dropped_total",
                Kind::Counter,
                "Log records dropped (access queue full, or refused by the sink for good, alone or as a batch).",
                v.dropped,
            )
            .single(
                "outrider_sidecar_log_buffered_bytes",
                Kind::Gauge,
                "Bytes waiting for the sink (on-disk spool and the batch in hand).",
                v.buffered_bytes,
            )
            .single(
                "outrider_sidecar_log_sink_errors_total",
                Kind::Counter,
                "Failed deliveries to the sink.",
                v.sink_errors,
            );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_access_queue_drops_and_counts() {
        let hub = LogHub::new();
        for _ in 0..ACCESS_QUEUE + 3 {
            hub.push_access(AccessRecord::default());
        }
        assert_eq!(hub.figures.values().dropped, 3);
    }

    #[test]
    fn figures_render_as_prometheus_text() {
        let hub = LogHub::new();
        hub.figures.shipped.store(12, Ordering::Relaxed);
        let text = hub.figures.render();
        assert!(text.contains(
            "# HELP outrider_sidecar_log_records_shipped_total Log records the sink accepted.\n\
             # TYPE outrider_sidecar_log_records_shipped_total counter\n\
             outrider_sidecar_log_records_shipped_total 12\n"
        ));
        assert!(text.contains("# TYPE outrider_sidecar_log_buffered_bytes gauge\n"));
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 6);
    }
}
