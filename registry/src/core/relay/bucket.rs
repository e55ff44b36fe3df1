//! Byte budgets: a token bucket counted in bytes, with the registry's
//! [`Rate`] (bytes per second, burst in bytes). [`TokenBucket`] of
//! `core::ratelimit` takes one token per event; relayed traffic is charged
//! by its size, so the bucket here takes `n` at once.
//!
//! [`TokenBucket`]: crate::core::ratelimit::TokenBucket

use crate::core::ratelimit::Rate;
use std::time::Instant;

#[derive(Debug, Clone)]
pub(super) struct ByteBucket {
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    /// Starts full: a new allocation may send its burst at once.
    pub fn new(rate: Rate, now: Instant) -> Self {
        ByteBucket { tokens: rate.burst, last: now }
    }

    /// Whether `n` bytes fit into both budgets now; if they do, both pay.
    /// Neither pays when either is short, so a refused datagram costs
    /// nothing.
    pub fn take_both(a: (&mut ByteBucket, Rate), b: (&mut ByteBucket, Rate), n: usize, now: Instant) -> bool {
        let need = n as f64;
        let fits_a = a.0.refill(a.1, now) >= need;
        let fits_b = b.0.refill(b.1, now) >= need;
        if !(fits_a && fits_b) {
            return false;
        }
        a.0.pay(a.1, need);
        b.0.pay(b.1, need);
        true
    }

    /// Brings the bucket up to `now`; returns what it holds (infinite when
    /// the rate is unlimited).
    fn refill(&mut self, rate: Rate, now: Instant) -> f64 {
        if rate.unlimited() {
            return f64::INFINITY;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.tokens
    }

    fn pay(&mut self, rate: Rate, n: f64) {
        if !rate.unlimited() {
            self.tokens -= n;
        }
    }
}

// The tests need a real clock: an Instant can only be had from it.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn both_budgets_must_fit_and_a_refusal_costs_nothing() {
        let t0 = Instant::now();
        let small = Rate::new(1000.0, 2000.0);
        let big = Rate::new(10_000.0, 10_000.0);
        let (mut a, mut b) = (ByteBucket::new(small, t0), ByteBucket::new(big, t0));
        assert!(ByteBucket::take_both((&mut a, small), (&mut b, big), 1500, t0));
        assert!(!ByteBucket::take_both((&mut a, small), (&mut b, big), 1500, t0), "a has 500 left");
        // b did not pay for the refusal: 8,500 left.
        let (mut c, _) = (ByteBucket::new(big, t0), ());
        assert!(ByteBucket::take_both((&mut c, big), (&mut b, big), 8500, t0));
        assert!(!ByteBucket::take_both((&mut c, big), (&mut b, big), 1, t0));
        // One second later a has refilled 1,000 bytes.
        let t1 = t0 + Duration::from_secs(1);
        assert!(ByteBucket::take_both((&mut a, small), (&mut b, big), 1500, t1));
    }

    #[test]
    fn unlimited_rate_never_refuses() {
        let t0 = Instant::now();
        let off = Rate::new(0.0, 0.0);
        let (mut a, mut b) = (ByteBucket::new(off, t0), ByteBucket::new(off, t0));
        assert!((0..100).all(|_| ByteBucket::take_both((&mut a, off), (&mut b, off), 1 << 20, t0)));
    }
}
