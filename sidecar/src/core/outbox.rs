//! Messages for a peer whose link is not open right now — not formed yet,
//! or re-forming after a break — kept for a while and sent, in order, once
//! it is (docs/PROTOCOL.md §5.6). What expires or does not fit is handed
//! back to be reported to the agent that sent it; nothing is dropped
//! silently.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Who sent a message: the agent to tell if it cannot be delivered (`0`
/// for the sidecar's own messages, which nobody is told about).
pub type Origin = u64;

/// Charged per message on top of its length, so that a flood of empty
/// messages is bounded too.
const ENTRY_OVERHEAD: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Bytes kept for one peer.
    pub bytes: usize,
    /// How long a message may wait.
    pub ttl: Duration,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits { bytes: 1 << 20, ttl: Duration::from_secs(30) }
    }
}

struct Entry {
    origin: Origin,
    text: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps a new message, unless it does not fit (then it is handed back).
    pub fn push(&mut self, origin: Origin, text: String, now: Instant, limits: OutboxLimits) -> Result<(), String> {
        let cost = text.len() + ENTRY_OVERHEAD;
        if self.bytes + cost > limits.bytes {
            return Err(text);
        }
        self.bytes += cost;
        self.entries.push_back(Entry { origin, text, expires: now + limits.ttl });
        Ok(())
    }

    /// Puts back, ahead of everything kept, what a link that ended had
    /// taken but not delivered, oldest first. They were already accepted,
    /// so they are kept even beyond the byte limit (a link holds a bounded
    /// amount), with a fresh time to live.
    pub fn requeue(&mut self, undelivered: Vec<(Origin, String)>, now: Instant, limits: OutboxLimits) {
        for (origin, text) in undelivered.into_iter().rev() {
            self.bytes += text.len() + ENTRY_OVERHEAD;
            self.entries.push_front(Entry { origin, text, expires: now + limits.ttl });
        }
    }

    /// The oldest message, to send it.
    pub fn front(&self) -> Option<(Origin, &str)> {
        self.entries.front().map(|e| (e.origin, e.text.as_str()))
    }

    pub fn pop(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.text.len() + ENTRY_OVERHEAD;
        }
    }

    /// Removes and returns what has waited too long.
    pub fn expire(&mut self, now: Instant) -> Vec<(Origin, String)> {
        let mut gone = Vec::new();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            if e.expires <= now {
                self.bytes -= e.text.len() + ENTRY_OVERHEAD;
                gone.push((e.origin, e.text));
            } else {
                kept.push_back(e);
            }
        }
        self.entries = kept;
        gone
    }

    /// When the next message expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.expires).min()
    }

    /// Empties it, returning everything it held.
    pub fn take_all(&mut self) -> Vec<(Origin, String)> {
        self.bytes = 0;
        self.entries.drain(..).map(|e| (e.origin, e.text)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sim;

    fn limits(bytes: usize) -> OutboxLimits {
        OutboxLimits { bytes, ttl: Duration::from_secs(30) }
    }

    #[test]
    fn keeps_order_bounds_bytes_and_expires() {
        let now = sim::start();
        let mut o = Outbox::default();
        o.push(1, "a".repeat(10), now, limits(100)).unwrap();
        o.push(2, "b".repeat(10), now + Duration::from_secs(10), limits(100)).unwrap();
        assert_eq!(o.bytes(), 2 * (10 + ENTRY_OVERHEAD));
        assert_eq!(o.push(3, "c".repeat(40), now, limits(100)), Err("c".repeat(40)), "does not fit");
        assert_eq!(o.front(), Some((1, "aaaaaaaaaa")));
        assert_eq!(o.next_expiry(), Some(now + Duration::from_secs(30)));
        assert_eq!(o.expire(now + Duration::from_secs(35)), [(1, "a".repeat(10))]);
        assert_eq!(o.front(), Some((2, "bbbbbbbbbb")));
        o.pop();
        assert!(o.is_empty());
        assert_eq!(o.bytes(), 0);
    }

    #[test]
    fn undelivered_messages_go_back_ahead_of_newer_ones() {
        let now = sim::start();
        let mut o = Outbox::default();
        o.push(1, "new".into(), now, limits(100)).unwrap();
        o.requeue(vec![(1, "old1".into()), (2, "old2".into())], now, limits(100));
        let order: Vec<String> = o.take_all().into_iter().map(|(_, t)| t).collect();
        assert_eq!(order, ["old1", "old2", "new"]);
        assert_eq!(o.bytes(), 0);
    }
}
