//! A cap on what other crates may log. str0m, its ICE and DTLS parts and
//! the TURN crates warn about every odd packet they parse, so a stranger
//! sending junk could fill the journal of a device nobody watches. Lines
//! from dependencies go out at most [`LINES`] per [`WINDOW`] per crate; a
//! note then says how many were held back. Our own code limits its
//! network-triggered warnings itself, so its lines always pass.

use crate::window::Window;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const LINES: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Crates tracked; more are not limited (there are far fewer).
const CRATES: usize = 64;

/// Per crate, the lines of its current window.
#[derive(Default)]
pub struct Budgets {
    crates: HashMap<String, Window>,
}

impl Budgets {
    /// `Some(held_back)` when a line of `target` may go out at `now`, with
    /// how many were held back since the last one; `None` to hold it back.
    pub fn allow(&mut self, target: &str, now: Instant) -> Option<u64> {
        if target.starts_with("chatixia") {
            return Some(0);
        }
        let krate = target.split("::").next().unwrap_or(target);
        if !self.crates.contains_key(krate) && self.crates.len() >= CRATES {
            return Some(0);
        }
        self.crates.entry(krate.to_owned()).or_default().take(LINES, WINDOW, now)
    }
}

/// env_logger behind [`Budgets`].
pub struct Limited {
    inner: env_logger::Logger,
    budgets: Mutex<Budgets>,
}

impl Limited {
    pub fn install(inner: env_logger::Logger) {
        let max = inner.filter();
        if log::set_boxed_logger(Box::new(Limited { inner, budgets: Mutex::default() })).is_ok() {
            log::set_max_level(max);
        }
    }
}

impl log::Log for Limited {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        let allowed = self.budgets.lock().map_or(Some(0), |mut b| b.allow(record.target(), Instant::now()));
        match allowed {
            None => {}
            Some(0) => self.inner.log(record),
            Some(held) => {
                let note = format_args!("({held} more lines of {} held back in the last minute)", record.target());
                self.inner
                    .log(&log::Record::builder().args(note).level(record.level()).target(record.target()).build());
                self.inner.log(record);
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_limited_per_crate_and_our_lines_never() {
        let t0 = Instant::now();
        let mut b = Budgets::default();
        let passed = (0..1_000).filter(|_| b.allow("is::stun", t0).is_some()).count();
        assert_eq!(passed, LINES as usize);
        // Another module of the same crate shares its budget; another crate
        // has its own; ours always pass.
        assert_eq!(b.allow("is::agent", t0), None);
        assert_eq!(b.allow("str0m::dtls", t0), Some(0));
        assert!((0..1_000).all(|_| b.allow("chatixia_sidecar::core::mesh", t0) == Some(0)));
        // The next window says how many were held back.
        assert_eq!(b.allow("is::stun", t0 + WINDOW), Some(1_000 - LINES as u64 + 1));
        assert_eq!(b.allow("is::stun", t0 + WINDOW), Some(0));
    }
}
