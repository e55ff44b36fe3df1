//! When to try the registry again: exponential backoff with full jitter
//! (docs/PROTOCOL.md "Signaling client"), so a restarted registry is not
//! hit by every sidecar at the same instant.

use std::time::Duration;

/// First and largest delay between connection attempts.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Each delay is uniform in `[0, min(max, min·2^n)]`; the caller draws the
/// random number.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, attempt: 0 }
    }

    /// The next delay; `random` is uniform in [0, 1).
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let ceiling = self.min.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(random.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter_and_resets() {
        let mut b = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let ceilings: Vec<Duration> = (0..9).map(|_| b.next_delay(1.0)).collect();
        let ms: Vec<u128> = ceilings.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        assert_eq!(b.next_delay(0.5), Duration::from_secs(15));
        b.reset();
        assert_eq!(b.next_delay(0.5), Duration::from_millis(250));
        for _ in 0..100 {
            b.next_delay(1.0);
        }
        assert_eq!(b.next_delay(1.0), BACKOFF_MAX);
    }
}
