//! Wall-clock time as the wire and the logs carry it: Unix milliseconds.
//!
//! For measuring intervals use `tokio::time::Instant` instead; this clock can jump.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the system clock is set before 1970, so a
/// broken clock yields an obviously wrong time rather than a panic.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// `t` as Unix milliseconds (0 before the epoch, saturating far in the future).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_before_the_epoch_are_zero_and_after_it_are_millis() {
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        // Any plausible clock is past 2020-01-01.
        assert!(now_ms() > 1_577_836_800_000);
    }
}
