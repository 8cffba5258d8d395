//! Log shipping (`LoggingPolicy`, see `docs/reference.md`): access logs from the proxy
//! and the app's own log files, parsed, enriched with the instance's identity, batched
//! and shipped to one sink — at least once, on a thread of its own.
//!
//! Sources → batch → deliver, one owner ([`Shipper`], `shipper`) on its own OS thread
//! and runtime, so that a burst of log work never takes a turn of the proxy's runtime:
//! - `access`: the proxy builds a small record after the response head and `try_send`s
//!   it on a bounded channel; when the channel is full the record is dropped and
//!   counted, so the request path never waits for shipping.
//! - `confine`: what the sidecar's settings let a policy read and write
//!   (`OUTRIDER_LOG_PATHS`, `OUTRIDER_SINK_DIR`, `OUTRIDER_SINK_HOSTS`), checked before a
//!   policy is applied and again whenever a file is opened.
//! - `tail`: files matching `appLogs[].path` globs (and the allowed globs, on their
//!   canonical paths), tracked by (device, inode), with rename and copytruncate
//!   rotation; parsed by `parse`.
//! - `pipeline`: batches by records, bytes and interval; each batch carries the file positions
//!   it covers. `spool`: when the sink fails, batches go to a bounded on-disk spool
//!   (FIFO) and are retried with backoff; when the spool is full the reader stops
//!   (backpressure), it never grows memory. Positions are written to
//!   `OUTRIDER_STATE_DIR` only after the sink accepted the batch that covers them.
//! - `sink`: stdout, file, HTTP (`ndjson`, `elasticsearch-bulk`, `loki`), gzip.
//!
//! Nothing here reads the sidecar's state type except `access`'s two adapters for the
//! proxies; the shipper takes its policy through a [`PolicyFeed`].

pub mod access;
pub mod confine;
pub mod parse;
pub mod pipeline;
pub mod shipper;
pub mod sink;
pub mod spool;
pub mod tail;

// The hand-off types live in a leaf module so that the state can hold the hub
// without importing this module (which imports the state).
pub use crate::loghub::{FigureValues, Figures, LogHub, ACCESS_QUEUE};
pub use confine::{Confinement, ConfinementError};
pub use shipper::{PolicyFeed, Shipper, ShipperError, ShipperThread, SHUTDOWN_BUDGET};

/// Who this instance is; every shipped record carries these fields.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub service: String,
    pub version: String,
    pub namespace: String,
    pub pod: String,
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
}
