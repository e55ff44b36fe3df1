//! A fixed-window count: at most `limit` events per `window`, then none
//! until the window ends, the refused ones counted. The caller gives the
//! time, so cores can use it. Both daemons' log budgets and the sidecar's
//! offer limit are made of it.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct Window {
    start: Option<Instant>,
    used: u32,
    refused: u64,
}

impl Window {
    /// `Some(refused)` when one more event fits at `now`, with how many
    /// were refused since the last one that fitted; `None` when it does not.
    pub fn take(&mut self, limit: u32, window: Duration, now: Instant) -> Option<u64> {
        if self.start.is_none_or(|start| now.saturating_duration_since(start) >= window) {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used >= limit {
            self.refused += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.refused))
    }

    /// When the current window began (`None` before the first event).
    pub fn start(&self) -> Option<Instant> {
        self.start
    }
}

// The tests need a real clock: an Instant can only be had from it.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn limit_per_window_then_the_refused_count() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut win = Window::default();
        assert_eq!(win.start(), None);
        assert_eq!((0..8).filter(|_| win.take(5, w, t0).is_some()).count(), 5);
        assert_eq!(win.take(5, w, t0 + Duration::from_secs(9)), None);
        assert_eq!(win.take(5, w, t0 + w), Some(4));
        assert_eq!(win.start(), Some(t0 + w));
        assert_eq!(win.take(5, w, t0 + w), Some(0));
    }
}
