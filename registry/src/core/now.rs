//! The time as the shell read it for one event.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Both clocks, read once by the shell per event: the monotonic one for
/// intervals (rate limits, idle timeouts), the wall clock for what is shown
/// or stored (token times, task and pairing timestamps).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    /// A wall clock before 1970 reads as 0 rather than failing.
    pub fn unix_secs(&self) -> u64 {
        self.wall.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    pub fn unix_ms(&self) -> u64 {
        self.wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}
