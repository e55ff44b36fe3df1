//! `GET /metrics` in the Prometheus text format (docs/PROTOCOL.md, Metrics).

use crate::core::now::Now;
use crate::core::pairing::Status;
use crate::core::state::RegistryState;
use std::fmt::Write as _;

const GAUGE: &str = "gauge";
const COUNTER: &str = "counter";

pub(super) fn render(state: &RegistryState, now: Now) -> String {
    let (hub, counters, pairing) = (&state.hub, &state.counters, &state.pairing);
    let mut m = Exposition::default();
    m.value("chatixia_ws_connections", "Open signaling WebSockets.", GAUGE, hub.connection_count() as u64);
    m.value("chatixia_relayed_frames_total", "Signaling frames relayed.", COUNTER, hub.stats.relayed);
    m.value("chatixia_tokens_issued_total", "JWTs issued.", COUNTER, counters.tokens_issued);
    m.value("chatixia_tokens_refused_total", "Token requests refused.", COUNTER, counters.tokens_refused);
    m.value(
        "chatixia_tokens_rate_limited_total",
        "Token requests refused by the rate limit.",
        COUNTER,
        counters.tokens_rate_limited,
    );
    m.value("chatixia_ws_refused_total", "WebSocket upgrades refused.", COUNTER, counters.ws_refused);
    m.value("chatixia_agents", "Agents in the registry.", GAUGE, state.agents.len() as u64);
    m.value("chatixia_api_keys", "Keys loaded from the keys file.", GAUGE, state.keys.len() as u64);
    let drops = hub.stats.drops.iter().map(|(reason, count)| (*reason, *count));
    m.labelled("chatixia_dropped_frames_total", "Frames dropped, by reason.", COUNTER, "reason", drops);
    let entries = Status::ALL.map(|s| (s.as_str(), pairing.count(s) as u64));
    m.labelled("chatixia_pairing_entries", "Pairing entries, by status.", GAUGE, "status", entries);
    m.value(
        "chatixia_pairing_codes_live",
        "Pairing codes that can still be redeemed.",
        GAUGE,
        pairing.live_codes(now.wall) as u64,
    );
    m.value("chatixia_pairings_total", "Codes redeemed.", COUNTER, counters.pairings);
    m.value(
        "chatixia_pairings_refused_total",
        "Pairing attempts with an invalid or expired code.",
        COUNTER,
        counters.pairings_refused,
    );
    m.value(
        "chatixia_pairings_rate_limited_total",
        "Pairing attempts refused by the rate limits.",
        COUNTER,
        counters.pairings_rate_limited,
    );
    if let Some((relay, _)) = &state.relay {
        let s = relay.stats();
        m.value("chatixia_relay_allocations", "TURN allocations on the relay.", GAUGE, s.allocations as u64);
        m.value("chatixia_relay_allocations_total", "TURN allocations made.", COUNTER, s.allocations_made);
        m.value("chatixia_relay_streams", "TCP and WebSocket streams speaking TURN.", GAUGE, s.streams as u64);
        m.value("chatixia_relay_bytes_total", "Bytes relayed between allocations.", COUNTER, s.bytes_relayed);
        m.value("chatixia_relay_packets_total", "Packets relayed between allocations.", COUNTER, s.packets_relayed);
        let refusals = s.refusals.iter().map(|(reason, count)| (*reason, *count));
        m.labelled(
            "chatixia_relay_refused_total",
            "Relay requests and data refused, by reason.",
            COUNTER,
            "reason",
            refusals,
        );
    }
    m.text
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn value(&mut self, name: &str, help: &str, kind: &str, value: u64) {
        self.header(name, help, kind);
        let _ = writeln!(self.text, "{name} {value}");
    }

    /// One sample per label value.
    fn labelled<'a>(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.header(name, help, kind);
        for (value, count) in samples {
            let _ = writeln!(self.text, "{name}{{{label}=\"{value}\"}} {count}");
        }
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
}
