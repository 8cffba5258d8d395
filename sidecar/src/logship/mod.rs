//! Log shipping (`LoggingPolicy`, see `docs/reference.md`): access logs from the proxy
//! and the app's own log files, parsed, enriched with the instance's identity, batched
//! and shipped to one sink — at least once, on a thread of its own.
//!
//! Sources → batch → deliver, one owner ([`Shipper`], `shipper`) on its own OS thread
//! and runtime, so that a burst of log work never takes a turn of the proxy's runtime:
//! - `access`: the proxy builds a small record after the response head and `try_send`s
//!   it on a bounded channel; when the channel is full the record is dropped and
//!   counted, so the request path never waits for shipping.
//! - `tail`: files matching `appLogs[].path` globs, tracked by (device, inode), with
//!   rename and copytruncate rotation; parsed by `parse`.
//! - `pipeline`: batches by size and interval; each batch carries the file positions
//!   it covers. `spool`: when the sink fails, batches go to a bounded on-disk spool
//!   (FIFO) and are retried with backoff; when the spool is full the reader stops
//!   (backpressure), it never grows memory. Positions are written to
//!   `OUTRIDER_STATE_DIR` only after the sink accepted the batch that covers them.
//! - `sink`: stdout, file, HTTP (`ndjson`, `elasticsearch-bulk`, `loki`), gzip.
//!
//! Nothing here reads the sidecar's state type except `access`'s two adapters for the
//! proxies; the shipper takes its policy through a [`PolicyFeed`].

pub mod access;
pub mod parse;
pub mod pipeline;
pub mod shipper;
pub mod sink;
pub mod spool;
pub mod tail;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

pub use shipper::{PolicyFeed, Shipper, ShipperError, ShipperThread, SHUTDOWN_BUDGET};

/// Room for access records between the proxy and the shipper. At ~300 bytes a
/// record this bounds the queue at a few MiB.
pub const ACCESS_QUEUE: usize = 8192;

/// Who this instance is; every shipped record carries these fields.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub service: String,
    pub version: String,
    pub namespace: String,
    pub pod: String,
}

/// Shared between the proxy (sender side) and the shipper (receiver side).
pub struct LogHub {
    access_tx: mpsc::Sender<access::AccessRecord>,
    access_rx: Mutex<Option<mpsc::Receiver<access::AccessRecord>>>,
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
    pub fn push_access(&self, record: access::AccessRecord) {
        match self.access_tx.try_send(record) {
            Ok(()) => {}
            Err(_) => {
                self.figures.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The receiving end; the one shipper takes it once.
    pub fn take_access_receiver(&self) -> Option<mpsc::Receiver<access::AccessRecord>> {
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
    /// Records dropped: access queue full, or a batch the sink refused for good (4xx).
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
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        };
        metric(
            "outrider_sidecar_log_lines_read_total",
            "counter",
            "Lines read from the app's log files.",
            v.lines_read,
        );
        metric(
            "outrider_sidecar_access_records_total",
            "counter",
            "Access records taken from the proxy for shipping.",
            v.access_records,
        );
        metric(
            "outrider_sidecar_log_records_shipped_total",
            "counter",
            "Log records the sink accepted.",
            v.shipped,
        );
        metric(
            "outrider_sidecar_log_records_dropped_total",
            "counter",
            "Log records dropped (access queue full, or refused by the sink for good).",
            v.dropped,
        );
        metric(
            "outrider_sidecar_log_buffered_bytes",
            "gauge",
            "Bytes waiting for the sink (on-disk spool and the batch in hand).",
            v.buffered_bytes,
        );
        metric(
            "outrider_sidecar_log_sink_errors_total",
            "counter",
            "Failed deliveries to the sink.",
            v.sink_errors,
        );
        out
    }
}

/// RFC 3339 UTC with milliseconds, from a Unix time in milliseconds; no calendar
/// crate needed for the one format the records use.
pub fn rfc3339_millis(unix_ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_ms / 1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z", unix_ms % 1000)
}

/// `10/Oct/2000:13:55:36 +0000`, the common log format's time.
pub fn clf_time(unix_ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s) = civil(unix_ms / 1000);
    format!(
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[(mo - 1) as usize]
    )
}

/// Days-from-civil inverse (Howard Hinnant's algorithm), for years 1970..9999.
fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as u64, m as u64, d as u64, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_in_utc() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(971_186_136_123), "2000-10-10T13:55:36.123Z");
        assert_eq!(clf_time(971_186_136_000), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(rfc3339_millis(1_709_210_096_000), "2024-02-29T12:34:56.000Z");
    }

    #[test]
    fn a_full_access_queue_drops_and_counts() {
        let hub = LogHub::new();
        for _ in 0..ACCESS_QUEUE + 3 {
            hub.push_access(access::AccessRecord::default());
        }
        assert_eq!(hub.figures.values().dropped, 3);
    }
}
