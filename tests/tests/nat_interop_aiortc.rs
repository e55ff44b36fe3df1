//! Interop across NATs (docs/PROTOCOL.md §5.4): an aiortc peer behind one
//! symmetric NAT and our sidecar behind another, in the NAT lab
//! (tests/src/netlab.rs). Two symmetric NATs cannot be hole-punched, so the
//! link must go through coturn; both sides take the TURN server and its
//! REST credentials from the registry's `/api/config`. Both ways of
//! offering; and once more with no coturn at all, through the registry's
//! own relay, which `/api/config` offers to aiortc like any TURN server.

use chatixia_e2e::aiortc::{PyPeer, aiortc_python, exchange};
use chatixia_e2e::netlab::{Coturn, Lab, NatKind, Site};
use chatixia_e2e::sidecar::Sidecar;
use chatixia_e2e::{Registry, Scratch};
use std::path::Path;
use std::time::Instant;

const SECRET: &str = "lab-rest-secret";

struct World {
    lab: Lab,
    registry: Registry,
    dir: Scratch,
    ours: Site,
    theirs: Site,
}

fn world(tag: &str) -> Option<World> {
    let lab = Lab::new(tag)?;
    let (ours, theirs) = (lab.site(NatKind::Symmetric), lab.site(NatKind::Symmetric));
    let turn = lab.start_coturn(Coturn { secret: Some(SECRET.into()), ..Coturn::default() });
    let dir = Scratch::new(&format!("nat-{tag}"));
    let registry =
        lab.start_registry_with(dir.path(), &[], &[("TURN_URL", &turn.turn_url("udp")), ("TURN_SECRET", SECRET)]);
    Some(World { lab, registry, dir, ours, theirs })
}

/// No coturn, no TURN setting: the registry's relay on its default port.
fn world_with_registry_relay(tag: &str) -> Option<World> {
    let lab = Lab::new(tag)?;
    let (ours, theirs) = (lab.site(NatKind::Symmetric), lab.site(NatKind::Symmetric));
    let dir = Scratch::new(&format!("nat-{tag}"));
    let registry = lab.start_registry_with(dir.path(), &[], &[("RELAY_PORT", "3478")]);
    Some(World { lab, registry, dir, ours, theirs })
}

fn aiortc(w: &World, python: &Path, args: &[&str]) -> PyPeer {
    let registry = format!("http://{}:{}", chatixia_e2e::netlab::SERVER_IP, w.registry.port);
    let host = w.theirs.host_ip.to_string();
    let mut all = vec!["--host", &host, "--ice-config"];
    all.extend_from_slice(args);
    PyPeer::spawn(w.theirs.command(python), &registry, &all)
}

fn sidecar(w: &World) -> Sidecar {
    w.ours.start_sidecar(&w.registry, w.dir.path(), "key-alpha", "alpha", &[])
}

/// The link went through the relay: our status says so, and the routers saw
/// no direct UDP between the sites.
fn assert_relayed(w: &World, a: &mut chatixia_e2e::sidecar::Agent) {
    let path = a.status()["paths"]["bravo"].clone();
    assert!(path["local"] == "relay" || path["remote"] == "relay", "{path}");
    let direct = w.lab.direct_udp(&w.ours, &w.theirs);
    let (ours, theirs) = (w.ours.counters(), w.theirs.counters());
    eprintln!("path {path}; direct UDP {direct:?}; ours {ours:?}; theirs {theirs:?}");
    assert!(ours.out.relay.packets + ours.out.turn.packets > 0);
    assert!(theirs.out.relay.packets + theirs.out.turn.packets > 0);
}

#[test]
fn aiortc_behind_a_symmetric_nat_offers_through_turn() {
    let Some(python) = aiortc_python() else { return };
    let Some(w) = world("aiortc-offer") else { return };
    let alpha = sidecar(&w);
    let mut a = alpha.agent();
    alpha.proc.wait_for_line("connected to the registry as alpha");
    let t0 = Instant::now();
    let mut py = aiortc(&w, &python, &["--role", "offer", "--target", "alpha"]);
    py.wait_for_line("offer sent");
    a.wait_peer_event("peer_connected", "bravo");
    eprintln!("aiortc offers across two symmetric NATs: start -> peer_connected {:?}", t0.elapsed());
    assert_relayed(&w, &mut a);
    exchange(&mut a, &mut py);
}

#[test]
fn our_sidecar_behind_a_symmetric_nat_offers_through_turn() {
    let Some(python) = aiortc_python() else { return };
    let Some(w) = world("aiortc-answer") else { return };
    let mut py = aiortc(&w, &python, &["--role", "answer"]);
    py.wait_for_line("registered");
    let t0 = Instant::now();
    let alpha = sidecar(&w);
    let mut a = alpha.agent();
    assert_eq!(py.wait_for_line("offer from"), "offer from alpha");
    a.wait_peer_event("peer_connected", "bravo");
    eprintln!("our sidecar offers across two symmetric NATs: start -> peer_connected {:?}", t0.elapsed());
    assert_relayed(&w, &mut a);
    exchange(&mut a, &mut py);
}

#[test]
fn aiortc_links_with_our_sidecar_through_the_registrys_own_relay() {
    let Some(python) = aiortc_python() else { return };
    let Some(w) = world_with_registry_relay("aiortc-relay") else { return };
    let alpha = sidecar(&w);
    let mut a = alpha.agent();
    alpha.proc.wait_for_line("connected to the registry as alpha");
    let t0 = Instant::now();
    let mut py = aiortc(&w, &python, &["--role", "offer", "--target", "alpha"]);
    py.wait_for_line("offer sent");
    a.wait_peer_event("peer_connected", "bravo");
    let path = a.status()["paths"]["bravo"].clone();
    eprintln!("aiortc through the registry's relay: start -> peer_connected {:?}; path {path}", t0.elapsed());
    assert!(path["local"] == "relay" || path["remote"] == "relay", "{path}");
    assert_eq!(w.lab.direct_udp(&w.ours, &w.theirs).packets, 0);
    exchange(&mut a, &mut py);
    let metrics = w.lab.in_internet(|| w.registry.get("/metrics")).body;
    let relayed = chatixia_e2e::metric(&metrics, "chatixia_relay_bytes_total").unwrap_or(0.0);
    assert!(relayed > 0.0, "{metrics}");
}
