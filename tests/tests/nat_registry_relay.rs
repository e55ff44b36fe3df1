//! The registry's own relay carries links nothing else can (docs/PROTOCOL.md
//! §3.10), in the NAT lab (tests/src/netlab.rs) with no coturn and no TURN
//! setting on any sidecar: they take the relay from `/api/config`.
//!
//! - Sites that reach nothing but the registry's HTTP port link through
//!   TURN in binary frames of their signaling WebSockets.
//! - Sites behind symmetric NATs link through the relay's UDP port.
//! - What crosses the lab's internet is watched frame by frame: a marker
//!   the agents send each other never appears in it (DTLS ends at the
//!   sidecars), though the same marker sent in the clear is seen.
//! - A revoked peer's relaying stops at once; a flooding peer is held to
//!   its bandwidth while another pair's messages keep flowing; after a
//!   registry restart the sidecars allocate again and the links come back.

use chatixia_e2e::netlab::{Lab, NatKind, SERVER_IP, Site, Sniffer};
use chatixia_e2e::sidecar::{Agent, Sidecar, mesh_message};
use chatixia_e2e::tls_proxy::{TlsProxy, ca_file};
use chatixia_e2e::{Registry, Scratch, metric};
use serde_json::{Value, json};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// Agents' messages carry it; the relay must never see it.
const MARKER: &str = "chatixia-marker-7f3a9c1e-plaintext-must-not-cross";

/// How fast a pair must link; generous under emulation.
fn link_limit() -> Duration {
    if std::env::var_os("CHATIXIA_BIN_RUNNER").is_some() { Duration::from_secs(60) } else { Duration::from_secs(10) }
}

struct World {
    lab: Lab,
    registry: Registry,
    dir: Scratch,
}

fn keys(peers: usize) -> String {
    let entries: Vec<String> =
        (0..peers).map(|i| format!("\"key-p{i}\":{{\"peer_id\":\"p{i}\",\"role\":\"agent\"}}")).collect();
    format!("{{\"keys\":{{{}}}}}", entries.join(","))
}

/// A lab with the registry (relay on its default port) on the internet.
fn world(tag: &str, env: &[(&str, &str)]) -> Option<World> {
    let lab = Lab::new(tag)?;
    let dir = Scratch::new(&format!("relay-{tag}"));
    std::fs::write(dir.path().join("api_keys.json"), keys(6)).unwrap();
    let mut all = vec![("RELAY_PORT", "3478")];
    all.extend_from_slice(env);
    let registry = lab.start_registry_with(dir.path(), &[], &all);
    Some(World { lab, registry, dir })
}

impl World {
    fn sidecar(&self, site: &Site, n: usize) -> Sidecar {
        site.start_sidecar(&self.registry, self.dir.path(), &format!("key-p{n}"), &format!("p{n}"), &[])
    }

    fn metrics(&self) -> String {
        self.lab.in_internet(|| self.registry.get("/metrics")).body
    }

    fn relay_metric(&self, sample: &str) -> f64 {
        metric(&self.metrics(), sample).unwrap_or(0.0)
    }

    /// A site that reaches nothing but the registry's HTTP port.
    fn https_only_site(&self) -> Site {
        self.lab.site(NatKind::OnlyTcpTo { allow: SocketAddrV4::new(SERVER_IP, self.registry.port) })
    }
}

/// Links `a` (peer `pa`) and `b` (peer `pb`); returns how long it took.
fn link(a: &Agent, pa: &str, b: &Agent, pb: &str) -> Duration {
    let started = Instant::now();
    a.wait_for_within(link_limit(), "peer_connected", |e| {
        e["type"] == "peer_connected" && e["payload"]["peer_id"] == pb
    });
    b.wait_for_within(link_limit(), "peer_connected", |e| {
        e["type"] == "peer_connected" && e["payload"]["peer_id"] == pa
    });
    started.elapsed()
}

/// Sends the marker both ways and checks it arrived.
fn exchange_marker(a: &mut Agent, pa: &str, b: &mut Agent, pb: &str) {
    a.send(pb, mesh_message("secret", "m1", json!({"text": MARKER, "from": pa})));
    b.send(pa, mesh_message("secret", "m2", json!({"text": MARKER, "from": pb})));
    assert_eq!(b.next_message()["message"]["payload"]["text"], MARKER);
    assert_eq!(a.next_message()["message"]["payload"]["text"], MARKER);
}

/// The marker never crossed the lab's internet, though plenty did, and the
/// sniffer would have seen it in the clear: `control` put it there once.
fn assert_only_ciphertext(sniffer: &Sniffer, control: impl FnOnce()) {
    let before = sniffer.sniffed();
    assert_eq!(before.hits[0], 0, "the marker crossed the internet in the clear: {before:?}");
    assert!(before.frames > 20 && before.bytes > 10_000, "too little was seen to prove anything: {before:?}");
    assert_eq!(before.dropped, 0, "the sniffer missed frames: {before:?}");
    control();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sniffer.sniffed().hits[0] == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = sniffer.sniffed();
    assert!(after.hits[0] > 0, "the sniffer did not see the marker sent in the clear: {after:?}");
    eprintln!("sniffed {} frames, {} bytes, none with the marker until the control", before.frames, before.bytes);
}

fn path_to(agent: &mut Agent, peer: &str) -> Value {
    agent.status()["paths"][peer].clone()
}

#[test]
fn sites_that_reach_only_the_registrys_port_link_through_the_websocket() {
    let Some(w) = world("ws-only", &[]) else { return };
    let (sa, sb) = (w.https_only_site(), w.https_only_site());
    let control_site = w.lab.site(NatKind::Public);
    let sniffer = w.lab.sniff(&[MARKER.as_bytes()]);
    let p0 = w.sidecar(&sa, 0);
    let p1 = w.sidecar(&sb, 1);
    let (mut a, mut b) = (p0.agent(), p1.agent());
    let took = link(&a, "p0", &b, "p1");
    exchange_marker(&mut a, "p0", &mut b, "p1");
    let (path_a, path_b) = (path_to(&mut a, "p1"), path_to(&mut b, "p0"));
    let (ca, cb) = (sa.counters(), sb.counters());
    eprintln!("linked through the WebSocket relay in {took:?}; paths {path_a} / {path_b}; p0's router {ca}");
    for path in [&path_a, &path_b] {
        assert_eq!((&path["local"], &path["local_transport"]), (&json!("relay"), &json!("websocket")), "{path}");
    }
    // UDP was tried and died at the routers; nothing went directly.
    assert!(ca.dropped_udp.packets > 0 && cb.dropped_udp.packets > 0, "{ca} / {cb}");
    assert_eq!(w.lab.direct_udp(&sa, &sb).packets, 0);
    assert!(w.relay_metric("chatixia_relay_bytes_total") > 0.0);

    // Signaling keeps flowing beside the relayed bytes: a third sidecar
    // joins and links with both over the same WebSockets.
    let p2 = w.sidecar(&control_site, 2);
    let c = p2.agent();
    link(&a, "p0", &c, "p2");
    link(&b, "p1", &c, "p2");

    let mut probe = control_site.probe(40_000);
    assert_only_ciphertext(&sniffer, || probe.send(SocketAddrV4::new(SERVER_IP, 9), MARKER));
}

#[test]
fn behind_a_tls_proxy_on_443_wss_alone_is_enough() {
    let Some(w) = world("wss-only", &[]) else { return };
    let upstream = SocketAddrV4::new(SERVER_IP, w.registry.port).into();
    let bind = SocketAddrV4::new(SERVER_IP, 443).into();
    let _proxy = TlsProxy::start_with(bind, upstream, "lab-server", w.lab.internet_entry());
    let allow = SocketAddrV4::new(SERVER_IP, 443);
    let (sa, sb) = (w.lab.site(NatKind::OnlyTcpTo { allow }), w.lab.site(NatKind::OnlyTcpTo { allow }));
    let ca = ca_file();
    let env = [
        ("TOKEN_URL", "https://203.0.113.1/api/token"),
        ("SIGNALING_URL", "wss://203.0.113.1/ws"),
        ("REGISTRY_CA_FILE", ca.to_str().unwrap()),
    ];
    let p0 = sa.start_sidecar(&w.registry, w.dir.path(), "key-p0", "p0", &env);
    let p1 = sb.start_sidecar(&w.registry, w.dir.path(), "key-p1", "p1", &env);
    let (mut a, mut b) = (p0.agent(), p1.agent());
    let took = link(&a, "p0", &b, "p1");
    exchange_marker(&mut a, "p0", &mut b, "p1");
    let path = path_to(&mut a, "p1");
    eprintln!("linked through wss:// on 443 alone in {took:?}; path {path}");
    assert_eq!((&path["local"], &path["local_transport"]), (&json!("relay"), &json!("websocket")), "{path}");
    assert_eq!(w.lab.direct_udp(&sa, &sb).packets, 0);
}

#[test]
fn symmetric_nats_link_through_the_embedded_relay_with_no_turn_setting() {
    let Some(w) = world("symmetric", &[]) else { return };
    let (sa, sb) = (w.lab.site(NatKind::Symmetric), w.lab.site(NatKind::Symmetric));
    let control_site = w.lab.site(NatKind::Public);
    let sniffer = w.lab.sniff(&[MARKER.as_bytes()]);
    let p0 = w.sidecar(&sa, 0);
    let p1 = w.sidecar(&sb, 1);
    let (mut a, mut b) = (p0.agent(), p1.agent());
    let took = link(&a, "p0", &b, "p1");
    exchange_marker(&mut a, "p0", &mut b, "p1");
    let (path_a, path_b) = (path_to(&mut a, "p1"), path_to(&mut b, "p0"));
    eprintln!("linked through the embedded relay in {took:?}; paths {path_a} / {path_b}");
    // Both ends relayed over UDP: the WebSocket allocation ranks below it.
    for path in [&path_a, &path_b] {
        assert_eq!((&path["local"], &path["local_transport"]), (&json!("relay"), &json!("udp")), "{path}");
    }
    assert_eq!(w.lab.direct_udp(&sa, &sb).packets, 0, "symmetric NATs cannot be hole-punched");
    let relayed = w.relay_metric("chatixia_relay_bytes_total");
    assert!(relayed > 0.0);
    // The registry's topology shows the link as relayed.
    let topology = w.lab.in_internet(|| w.registry.get("/api/hub/network/topology")).json();
    let edges = topology["mesh_edges"].as_array().cloned().unwrap_or_default();
    assert!(edges.iter().any(|e| e["path"] == "relay"), "{topology}");

    let mut probe = control_site.probe(40_000);
    assert_only_ciphertext(&sniffer, || probe.send(SocketAddrV4::new(SERVER_IP, 9), MARKER));
}

#[test]
fn a_revoked_peers_relaying_stops_at_once() {
    let Some(w) = world("revoke", &[]) else { return };
    let (sa, sb) = (w.lab.site(NatKind::Symmetric), w.lab.site(NatKind::Symmetric));
    let p0 = w.sidecar(&sa, 0);
    let p1 = w.sidecar(&sb, 1);
    let (mut a, mut b) = (p0.agent(), p1.agent());
    link(&a, "p0", &b, "p1");
    exchange_marker(&mut a, "p0", &mut b, "p1");
    let allocations = w.relay_metric("chatixia_relay_allocations");
    assert!(allocations >= 2.0, "{allocations}");

    // p1's key goes: its sockets close and its allocations are deleted in
    // the same step, before the reload is acknowledged.
    let without_p1 = keys(6).replace(r#""key-p1":{"peer_id":"p1","role":"agent"},"#, "");
    w.registry.reload_keys(&without_p1);
    let after = w.metrics();
    let left = metric(&after, "chatixia_relay_allocations").unwrap_or(0.0);
    eprintln!("allocations {allocations} before the revocation, {left} right after");
    assert!(left < allocations && left <= allocations / 2.0, "p1's allocations are still there: {after}");

    // From now on nothing more is relayed to or from p1: p0's messages die
    // at the relay, and the relayed byte count stands still.
    let relayed = metric(&after, "chatixia_relay_bytes_total").unwrap_or(0.0);
    a.send("p1", mesh_message("after", "m3", json!({"text": "too late"})));
    assert!(
        b.next_within(Duration::from_secs(2)).is_none_or(|e| e["type"] != "message"),
        "a message reached the revoked peer"
    );
    let later = w.relay_metric("chatixia_relay_bytes_total");
    assert_eq!(later, relayed, "bytes were relayed after the revocation");
    a.wait_peer_event("peer_disconnected", "p1");
}

#[test]
fn a_flooding_peer_is_held_to_its_bandwidth_while_another_pair_keeps_talking() {
    // 200 kB/s per allocation: a flood shows quickly.
    let Some(w) = world("flood", &[("RELAY_BANDWIDTH", "200000")]) else { return };
    let sites: Vec<Site> = (0..4).map(|_| w.lab.site(NatKind::Symmetric)).collect();
    let sidecars: Vec<Sidecar> = sites.iter().enumerate().map(|(n, s)| w.sidecar(s, n)).collect();
    let mut agents: Vec<Agent> = sidecars.iter().map(Sidecar::agent).collect();
    link(&agents[0], "p0", &agents[1], "p1");
    link(&agents[2], "p2", &agents[3], "p3");

    // p0 floods p1 with 16 KiB messages for 4 s (at most 2,000); p2 sends
    // p3 a small numbered message every 100 ms meanwhile, and p3's agent
    // notes how late each one arrives.
    let started = Instant::now();
    let calm_receiver = agents.pop().expect("p3");
    let calm = std::thread::spawn(move || {
        let mut delays = Vec::new();
        while started.elapsed() < Duration::from_secs(10) && delays.len() < 40 {
            let Some(e) = calm_receiver.next_within(Duration::from_millis(200)) else { continue };
            if e["type"] == "message" {
                let payload = &e["payload"]["message"]["payload"];
                let sent_at = Duration::from_millis(payload["at_ms"].as_u64().unwrap_or(0));
                delays.push((payload["n"].as_u64().unwrap_or(u64::MAX), started.elapsed().saturating_sub(sent_at)));
            }
        }
        delays
    });
    let chunk = "x".repeat(16 * 1024);
    let (mut flood_sent, mut calm_sent) = (0u64, 0u64);
    let mut next_calm = started;
    while started.elapsed() < Duration::from_secs(4) && flood_sent < 2_000 {
        agents[0].send("p1", mesh_message("flood", "", json!(chunk)));
        flood_sent += 1;
        if Instant::now() >= next_calm && calm_sent < 40 {
            let at_ms = started.elapsed().as_millis() as u64;
            agents[2].send("p3", mesh_message("calm", "", json!({"n": calm_sent, "at_ms": at_ms})));
            calm_sent += 1;
            next_calm += Duration::from_millis(100);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let flood_window = started.elapsed();

    // Every calm message arrived, in order, none much later than sent.
    let delays = calm.join().expect("the calm receiver");
    let numbers: Vec<u64> = delays.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (0..calm_sent).collect::<Vec<_>>());
    let worst = delays.iter().map(|(_, d)| *d).max().unwrap_or_default();
    // What of the flood got through in its window.
    let mut flooded = 0u64;
    while let Some(e) = agents[1].next_within(Duration::from_millis(500)) {
        if e["type"] == "message" {
            flooded += 1;
        }
    }
    let refused = w.relay_metric("chatixia_relay_refused_total{reason=\"rate_limited\"}");
    let flood_bytes = flooded * 16 * 1024;
    eprintln!(
        "flood: {flood_sent} × 16 KiB offered in {flood_window:?}, {flooded} delivered ({:.0} kB/s), {refused} datagrams \
         refused for rate; calm: {calm_sent} delivered, worst delay {worst:?}",
        flood_bytes as f64 / 1000.0 / (flood_window.as_secs_f64() + 0.5)
    );
    assert!(refused > 0.0, "the relay never held the flood back");
    // 200 kB/s with a 400 kB burst, over the window and the drain after it.
    let allowed = 400_000.0 + 200_000.0 * (flood_window.as_secs_f64() + 1.5);
    assert!((flood_bytes as f64) < allowed * 1.1, "{flood_bytes} bytes of flood got through");
    assert!(worst < Duration::from_secs(2), "the calm pair suffered: worst delay {worst:?}");
}

#[test]
fn after_a_registry_restart_the_sidecars_allocate_again_and_the_link_comes_back() {
    let Some(mut w) = world("restart", &[]) else { return };
    let (sa, sb) = (w.lab.site(NatKind::Symmetric), w.lab.site(NatKind::Symmetric));
    let p0 = w.sidecar(&sa, 0);
    let p1 = w.sidecar(&sb, 1);
    let (mut a, mut b) = (p0.agent(), p1.agent());
    link(&a, "p0", &b, "p1");
    exchange_marker(&mut a, "p0", &mut b, "p1");

    w.registry.restart();
    let restarted = Instant::now();
    // The relay of the new run knows none of the old allocations; the
    // sidecars see its new instance in /api/config and allocate again.
    p0.proc.wait_for_line("the registry's relay restarted; allocating again");
    // Until the link is back, messages wait in the outbox or fail; send
    // until one gets through.
    let limit = Duration::from_secs(45);
    let mut back = None;
    let mut n = 0;
    while back.is_none() && restarted.elapsed() < limit {
        a.send("p1", mesh_message("again", "", json!(n)));
        n += 1;
        while let Some(e) = b.next_within(Duration::from_millis(250)) {
            if e["type"] == "message" && e["payload"]["message"]["type"] == "again" {
                back = Some(restarted.elapsed());
            }
        }
    }
    let back = back.expect("the link never came back");
    let path = path_to(&mut a, "p1");
    eprintln!("after the restart, the first message got through in {back:?}; path {path}");
    assert!(path["local"] == "relay" || path["remote"] == "relay", "{path}");
    assert!(w.relay_metric("chatixia_relay_allocations") >= 2.0);
}
