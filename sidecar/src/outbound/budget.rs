//! The retry budget: retries may add at most a fraction of the request rate (plus a
//! small floor for quiet services), so retries never multiply an outage.
//!
//! A token bucket in milli-tokens: each request deposits [`RETRY_RATIO`] of a token,
//! each retry costs one, and a slow time-based refill guarantees a floor of
//! [`MIN_RETRIES_PER_SEC`] without letting idle time bank an unbounded burst.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Retries are bounded by 20% of requests (Linkerd's and Finagle's default)…
pub const RETRY_RATIO: f64 = 0.2;
/// …plus this many per second whatever the traffic, so a low-rate caller can retry.
pub const MIN_RETRIES_PER_SEC: i64 = 10;
const MILLI: i64 = 1000;
/// Most retries that can be banked (ratio deposits); the floor banks at most one second.
const MAX_BALANCE: i64 = 100 * MILLI;

pub struct RetryBudget {
    balance: AtomicI64,
    last_refill_ms: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            balance: AtomicI64::new(MIN_RETRIES_PER_SEC * MILLI),
            last_refill_ms: AtomicU64::new(0),
        }
    }
}

impl RetryBudget {
    /// Every original request earns a fraction of a retry.
    pub fn deposit(&self) {
        let v = self
            .balance
            .fetch_add((RETRY_RATIO * MILLI as f64) as i64, Ordering::Relaxed);
        if v > MAX_BALANCE {
            // Racy clamp; a slight overshoot is harmless.
            self.balance.store(MAX_BALANCE, Ordering::Relaxed);
        }
    }

    /// Takes one retry's worth if the budget has it; `now_ms` is any monotonic clock.
    pub fn try_withdraw(&self, now_ms: u64) -> bool {
        self.refill_floor(now_ms);
        let mut cur = self.balance.load(Ordering::Relaxed);
        loop {
            if cur < MILLI {
                return false;
            }
            match self
                .balance
                .compare_exchange_weak(cur, cur - MILLI, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    fn refill_floor(&self, now_ms: u64) {
        let last = self.last_refill_ms.load(Ordering::Relaxed);
        let elapsed = now_ms.saturating_sub(last);
        if elapsed < 100
            || self
                .last_refill_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let add = (elapsed as i64).min(1000) * MIN_RETRIES_PER_SEC;
        let floor_cap = MIN_RETRIES_PER_SEC * MILLI;
        // The floor only tops up to one second's worth; deposits can go higher.
        let _ = self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            (b < floor_cap).then(|| (b + add).min(floor_cap))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_a_fifth_of_requests_plus_the_floor() {
        let b = RetryBudget::default();
        let mut granted = 0;
        // 1000 requests within one instant, each wanting a retry (a total outage).
        for _ in 0..1000 {
            b.deposit();
            if b.try_withdraw(0) {
                granted += 1;
            }
        }
        assert!((200..=210).contains(&granted), "granted {granted}");
    }

    #[test]
    fn the_floor_refills_with_time_but_does_not_bank_idle_hours() {
        let b = RetryBudget::default();
        while b.try_withdraw(0) {}
        assert!(!b.try_withdraw(50), "no refill within 100 ms");
        let mut granted = 0;
        while b.try_withdraw(3_600_000) {
            granted += 1;
        }
        assert_eq!(granted, MIN_RETRIES_PER_SEC);
    }
}
