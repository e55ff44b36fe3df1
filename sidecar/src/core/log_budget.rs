//! A budget for warnings that input from the network can trigger: a peer
//! or a registry sending junk must not fill the journal of a device nobody
//! watches. A few lines per window go out; the rest are counted and the
//! count rides along on the next line that does.

use chatixia_settings::window::Window;
use std::time::{Duration, Instant};

/// Lines per window, then silence until the window ends.
const LINES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct LogBudget {
    lines: Window,
}

impl LogBudget {
    pub fn new() -> Self {
        Self::default()
    }

    /// `Some(note)` when a line may be written at `now`; `note` is empty or
    /// says how many were held back since the last one.
    pub fn allow(&mut self, now: Instant) -> Option<String> {
        let note = match self.lines.take(LINES, WINDOW, now)? {
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
