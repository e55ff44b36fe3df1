//! How many offers the mesh answers per peer. Each answer costs a str0m
//! link and several signaling frames (answer, candidates), so a peer that
//! floods offers would otherwise make us spend the registry's frame limit
//! on our side too, and a legitimate newcomer would wait behind it.

use chatixia_settings::window::Window;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Offers answered per peer within [`WINDOW`]. A peer that restarts
/// offers once; glare and a few quick restarts stay well inside.
const OFFERS: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);
/// Peers tracked at once; the oldest windows are forgotten first.
const PEERS: usize = 1024;

#[derive(Debug, Default)]
pub struct OfferLimit {
    /// Per peer, the offers of its current window.
    windows: BTreeMap<String, Window>,
}

impl OfferLimit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether an offer from `peer` at `now` may be answered (and counts it).
    pub fn allow(&mut self, peer: &str, now: Instant) -> bool {
        if !self.windows.contains_key(peer) && self.windows.len() >= PEERS {
            let current = |w: &Window| w.start().is_some_and(|s| now.saturating_duration_since(s) < WINDOW);
            self.windows.retain(|_, w| current(w));
            if self.windows.len() >= PEERS
                && let Some(oldest) = self.windows.iter().min_by_key(|(_, w)| w.start()).map(|(p, _)| p.clone())
            {
                self.windows.remove(&oldest);
            }
        }
        self.windows.entry(peer.to_owned()).or_default().take(OFFERS, WINDOW, now).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_offers_per_peer_per_ten_seconds() {
        let start = crate::core::sim::start();
        let mut limit = OfferLimit::new();
        let answered = (0..100).filter(|i| limit.allow("mallory", start + Duration::from_millis(*i))).count();
        assert_eq!(answered, 5);
        // Others are not affected, and the flooder gets its share back later.
        assert!(limit.allow("alice", start + Duration::from_millis(100)));
        assert!(limit.allow("mallory", start + WINDOW));
    }

    #[test]
    fn tracked_peers_are_bounded() {
        let start = crate::core::sim::start();
        let mut limit = OfferLimit::new();
        for i in 0..3 * PEERS {
            assert!(limit.allow(&format!("p{i}"), start + Duration::from_millis(i as u64)));
        }
        assert!(limit.windows.len() <= PEERS);
    }
}
