//! A budget for warnings that input from the network can trigger: a peer
//! or a registry sending junk must not fill the journal of a device nobody
//! watches. A few lines per window go out; the rest are counted and the
//! count rides along on the next line that does.

use std::time::{Duration, Instant};

/// Lines per window, then silence until the window ends.
const LINES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct LogBudget {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl LogBudget {
    pub fn new() -> Self {
        LogBudget { window_start: None, used: 0, suppressed: 0 }
    }

    /// `Some(note)` when a line may be written at `now`; `note` is empty or
    /// says how many were held back since the last one.
    pub fn allow(&mut self, now: Instant) -> Option<String> {
        if self.window_start.is_none_or(|start| now.saturating_duration_since(start) >= WINDOW) {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= LINES {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        let note = match std::mem::take(&mut self.suppressed) {
            0 => String::new(),
            n => format!(" ({n} similar lines suppressed before this one)"),
        };
        Some(note)
    }
}

/// A parser's error as one line: str0m's SDP errors span several lines and
/// name a memory address, which tells an operator nothing.
pub fn one_line(error: &str) -> String {
    let mut out = String::new();
    for part in error.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let part = match part.find(" at PointerOffset(") {
            Some(i) => &part[..i],
            None => part,
        };
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(part);
    }
    if out.len() > 300 {
        let mut cut = 300;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_lines_a_minute_then_a_count() {
        let start = crate::core::sim::start();
        let mut budget = LogBudget::new();
        let allowed = (0..1_000).filter(|i| budget.allow(start + Duration::from_millis(*i)).is_some()).count();
        assert_eq!(allowed, 10);
        assert_eq!(budget.allow(start + WINDOW).as_deref(), Some(" (990 similar lines suppressed before this one)"));
        assert_eq!(budget.allow(start + WINDOW).as_deref(), Some(""));
    }

    #[test]
    fn parse_errors_become_one_line_without_addresses() {
        let e = "SDP parse: Parse error at PointerOffset(0x560d4bf16ca0)\n    Unexpected `n`\n    Expected `v`\n    sdp line\n    \n";
        assert_eq!(one_line(e), "SDP parse: Parse error; Unexpected `n`; Expected `v`; sdp line");
        assert!(one_line(&"é".repeat(400)).len() <= 304);
    }
}
