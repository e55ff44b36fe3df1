//! Token buckets, alone and keyed by client: the limits on tokens, pairing
//! and signaling frames (docs/PROTOCOL.md, Limits and timeouts).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub const fn new(per_second: f64, burst: f64) -> Self {
        Rate { per_second, burst }
    }
    /// `n` events per `window`, all usable at once.
    pub fn per_window(n: u32, window: Duration) -> Self {
        Rate { per_second: n as f64 / window.as_secs_f64(), burst: n as f64 }
    }
    pub fn unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate, now: Instant) -> Self {
        TokenBucket { tokens: rate.burst, last: now }
    }

    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        if rate.unlimited() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn full_at(&self, rate: Rate, now: Instant) -> bool {
        self.tokens_at(rate, now) >= rate.burst
    }

    fn tokens_at(&self, rate: Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }
}

/// One bucket per key with a bounded table: when full, buckets that have
/// refilled completely are forgotten (they carry no state), and if none
/// has, the one closest to full makes room. Refusing the new key instead
/// would let whoever fills the table with addresses lock everyone else out;
/// what forgetting costs is a fresh burst for that address, and the global
/// limits behind these (code checks, frames) still hold.
pub struct KeyedLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        KeyedLimiter { rate, max_keys, buckets: HashMap::new() }
    }

    pub fn take(&mut self, key: &K, now: Instant) -> bool {
        if self.rate.unlimited() {
            return true;
        }
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            let rate = self.rate;
            self.buckets.retain(|_, b| !b.full_at(rate, now));
            if self.buckets.len() >= self.max_keys {
                let fullest = self
                    .buckets
                    .iter()
                    .max_by(|a, b| a.1.tokens_at(rate, now).total_cmp(&b.1.tokens_at(rate, now)))
                    .map(|(k, _)| k.clone());
                if let Some(k) = fullest {
                    self.buckets.remove(&k);
                }
            }
        }
        let rate = self.rate;
        self.buckets.entry(key.clone()).or_insert_with(|| TokenBucket::new(rate, now)).take(rate, now)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

// The tests need a real clock: an Instant can only be had from it.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let rate = Rate::new(10.0, 20.0);
        let mut b = TokenBucket::new(rate, t0);
        assert_eq!((0..25).filter(|_| b.take(rate, t0)).count(), 20);
        assert!(!b.take(rate, t0 + Duration::from_millis(50)));
        assert!(b.take(rate, t0 + Duration::from_millis(160)));
    }

    #[test]
    fn per_window_matches_pairing_limit() {
        let t0 = Instant::now();
        let rate = Rate::per_window(5, Duration::from_secs(60));
        let mut l = KeyedLimiter::new(rate, 100);
        assert_eq!((0..6).filter(|_| l.take(&"ip", t0)).count(), 5);
        assert!(!l.take(&"ip", t0 + Duration::from_secs(5)));
        assert!(l.take(&"other", t0));
        assert!(l.take(&"ip", t0 + Duration::from_secs(13)));
    }

    #[test]
    fn table_is_bounded_and_forgets_idle_keys() {
        let t0 = Instant::now();
        let rate = Rate::new(1.0, 2.0);
        let mut l = KeyedLimiter::new(rate, 2);
        assert!(l.take(&1, t0));
        assert!(l.take(&2, t0));
        assert!(l.take(&3, t0 + Duration::from_secs(5)));
        assert!(l.len() <= 2);
    }

    /// Whoever fills the table cannot lock out an address it has not
    /// seen: the key closest to a full bucket makes room, and the keys that
    /// used up their burst keep their state.
    #[test]
    fn a_full_table_makes_room_for_a_new_key() {
        let t0 = Instant::now();
        let rate = Rate::per_window(5, Duration::from_secs(60));
        let mut l = KeyedLimiter::new(rate, 3);
        for _ in 0..5 {
            assert!(l.take(&"spent", t0));
        }
        assert!(l.take(&"a", t0));
        assert!(l.take(&"b", t0));
        assert!(l.take(&"newcomer", t0), "a new address is not refused");
        assert_eq!(l.len(), 3);
        assert!(!l.take(&"spent", t0), "the address that used its burst still has none");
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let t0 = Instant::now();
        let rate = Rate::new(0.0, 0.0);
        let mut b = TokenBucket::new(rate, t0);
        assert!((0..1000).all(|_| b.take(rate, t0)));
    }
}
