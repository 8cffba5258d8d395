//! Exponential backoff with *full jitter* for every retry loop (control stream
//! reconnects, log delivery): attempt `n` waits a uniform random time in `[0, min(cap, base·2ⁿ)]`.
//!
//! Full jitter (as in the AWS Architecture Blog's "Exponential Backoff and Jitter")
//! spreads a fleet that lost its control plane over the whole window, so reconnects do
//! not arrive in waves; "equal jitter" (half fixed, half random) keeps half of every
//! delay in lockstep and is deliberately not offered.

use rand::Rng;
use std::time::Duration;

/// `base` is the ceiling of the first attempt (attempt 0), doubled per attempt up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The longest wait of attempt `attempt`: `min(cap, base·2^attempt)`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random wait for attempt `attempt` (0-based), uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// As [`Backoff::delay`], drawing from `rng` (tests pass a seeded one).
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        // Nanoseconds fit in u64 for any ceiling below 584 years.
        let max = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const B: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

    #[test]
    fn ceiling_doubles_per_attempt_and_stops_at_the_cap() {
        assert_eq!(B.ceiling(0), Duration::from_millis(100));
        assert_eq!(B.ceiling(1), Duration::from_millis(200));
        assert_eq!(B.ceiling(5), Duration::from_millis(3200));
        assert_eq!(B.ceiling(6), Duration::from_secs(5));
        // Shifts past the integer width must not wrap around to a short wait.
        for attempt in [31, 32, 33, 64, u32::MAX] {
            assert_eq!(B.ceiling(attempt), Duration::from_secs(5), "attempt {attempt}");
        }
    }

    #[test]
    fn every_delay_lies_between_zero_and_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..70 {
            for _ in 0..50 {
                let d = B.delay_with(attempt, &mut rng);
                assert!(d <= B.ceiling(attempt), "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn delays_use_the_whole_window_not_only_its_upper_half() {
        // Equal jitter would never go below half the ceiling; full jitter does, often.
        let mut rng = StdRng::seed_from_u64(11);
        let ceiling = B.ceiling(10);
        let draws: Vec<Duration> = (0..200).map(|_| B.delay_with(10, &mut rng)).collect();
        let low = draws.iter().filter(|d| **d < ceiling / 2).count();
        assert!(low > 50 && low < 150, "{low} of 200 below half the ceiling");
        assert!(draws.iter().any(|d| *d < ceiling / 10), "some waits are short");
    }

    #[test]
    fn a_zero_base_never_waits() {
        let b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(b.delay(20), Duration::ZERO);
    }
}
