//! Every pair of NAT kinds connects (docs/PROTOCOL.md §5.4): sidecars in the
//! NAT lab (tests/src/netlab.rs), each behind a router of one kind: none
//! (public address), port-restricted cone, symmetric, and UDP blocked
//! entirely (only TCP gets out). The registry and coturn stand on the lab's
//! internet; the sidecars carry no TURN settings and take the TURN servers
//! (UDP, TCP and TLS, REST credentials) from the registry's `/api/config`.
//!
//! Each of the 10 unordered pairs of kinds forms a link, carries messages
//! both ways, and takes the path the NATs allow: direct UDP between the two
//! routers where hole punching works, the relay otherwise. The path is read
//! twice: from the sidecars' own `status`, and from the routers' kernel
//! counters, which do not depend on anything the sidecars say.

use std::time::{Duration, Instant};

use chatixia_e2e::netlab::{Coturn, Lab, NatKind, OUTSIDE_IPS, Site, TurnTls};
use chatixia_e2e::sidecar::{Sidecar, mesh_message};
use chatixia_e2e::{Registry, Scratch, tls_proxy};
use serde_json::{Value, json};

const SECRET: &str = "lab-rest-secret";

/// How fast a pair must link; generous under emulation.
fn link_limit() -> Duration {
    if std::env::var_os("CHATIXIA_BIN_RUNNER").is_some() { Duration::from_secs(30) } else { Duration::from_secs(5) }
}

/// How long a link's path may take to settle on the best pair after it
/// opened.
fn settle_limit() -> Duration {
    if std::env::var_os("CHATIXIA_BIN_RUNNER").is_some() { Duration::from_secs(15) } else { Duration::from_secs(3) }
}

struct World {
    lab: Lab,
    registry: Registry,
    dir: Scratch,
    /// Two sites of each kind, so that a kind can meet itself.
    sites: Vec<(NatKind, [Site; 2])>,
}

fn kinds() -> [NatKind; 4] {
    // The UDP-blocked site may send UDP only to an outside host that is
    // never used: nothing of ours gets out over UDP.
    [NatKind::Public, NatKind::Cone, NatKind::Symmetric, NatKind::UdpBlocked { allow: OUTSIDE_IPS[2] }]
}

fn name(kind: NatKind) -> &'static str {
    match kind {
        NatKind::Public => "public",
        NatKind::Cone => "cone",
        NatKind::Symmetric => "symmetric",
        NatKind::UdpBlocked { .. } => "udp-blocked",
        NatKind::OnlyTcpTo { .. } => "tcp-to-registry-only",
    }
}

fn world(tag: &str) -> Option<World> {
    let lab = Lab::new(tag)?;
    let sites: Vec<(NatKind, [Site; 2])> = kinds().into_iter().map(|k| (k, [lab.site(k), lab.site(k)])).collect();
    let coturn = Coturn { secret: Some(SECRET.into()), tls: Some(TurnTls::lab_fixture()), ..Coturn::default() };
    let turn = lab.start_coturn(coturn);
    let dir = Scratch::new(&format!("nat-{tag}"));
    std::fs::write(dir.path().join("api_keys.json"), keys(10)).unwrap();
    let urls = [turn.turn_url("udp"), turn.turn_url("tcp"), turn.turns_url().expect("TLS")].join(",");
    let registry = lab.start_registry_with(dir.path(), &[], &[("TURN_URL", &urls), ("TURN_SECRET", SECRET)]);
    Some(World { lab, registry, dir, sites })
}

fn keys(pairs: usize) -> String {
    let entries: Vec<String> =
        (0..pairs * 2).map(|i| format!("\"key-p{i}\":{{\"peer_id\":\"p{i}\",\"role\":\"agent\"}}")).collect();
    format!("{{\"keys\":{{{}}}}}", entries.join(","))
}

/// What one pair showed.
struct Outcome {
    pair: String,
    took: Duration,
    paths: [Value; 2],
    /// The `path` of the pair's edge in the registry's topology.
    topology: Value,
    direct: u64,
    relayed: u64,
}

fn start(w: &World, site: &Site, peer: &str) -> Sidecar {
    let ca = tls_proxy::ca_file();
    let env = [("REGISTRY_CA_FILE", ca.to_str().unwrap()), ("RUST_LOG", "info,chatixia_sidecar::core::turn=debug")];
    site.start_sidecar(&w.registry, w.dir.path(), &format!("key-{peer}"), peer, &env)
}

/// Links a sidecar on `a` with one on `b` and checks what went between them.
fn run_pair(w: &World, n: usize, a: &Site, b: &Site, label: String, expect_direct: bool) -> Outcome {
    let (pa, pb) = (format!("p{}", 2 * n), format!("p{}", 2 * n + 1));
    let (before_a, before_b) = (a.counters(), b.counters());
    let direct_before = w.lab.direct_udp(a, b).packets;
    let first = start(w, a, &pa);
    let mut agent_a = first.agent();
    let started = Instant::now();
    let second = start(w, b, &pb);
    let mut agent_b = second.agent();
    agent_a.wait_for_within(link_limit(), "peer_connected", |e| {
        e["type"] == "peer_connected" && e["payload"]["peer_id"] == pb.as_str()
    });
    let took = started.elapsed();
    agent_b.wait_connected(&[&pa]);
    agent_a.send(&pb, mesh_message("hello", "r1", json!({"from": pa})));
    agent_b.send(&pa, mesh_message("hello", "r2", json!({"from": pb})));
    assert_eq!(agent_b.next_message()["message"]["payload"]["from"], pa.as_str(), "{label}");
    assert_eq!(agent_a.next_message()["message"]["payload"]["from"], pb.as_str(), "{label}");
    // ICE keeps checking after the link opens and moves to a better pair
    // when one succeeds: a relayed pair that won the race (it can, under
    // emulation) gives way to the direct one. The sidecars see the move with
    // the next data (or their next stats, within 30 s): nudge with a message
    // while waiting, bounded.
    let settle_until = Instant::now() + settle_limit();
    let paths = loop {
        let paths = [agent_a.status()["paths"][&pb].clone(), agent_b.status()["paths"][&pa].clone()];
        if relayed_path(&paths) != expect_direct || Instant::now() > settle_until {
            break paths;
        }
        agent_a.send(&pb, mesh_message("nudge", "", json!(null)));
        agent_b.send(&pa, mesh_message("nudge", "", json!(null)));
        std::thread::sleep(Duration::from_millis(100));
    };
    // The registry learns the path from mesh_status, sent when it changes.
    let expect_edge = if expect_direct { "direct" } else { "relay" };
    let mut topology = Value::Null;
    while Instant::now() <= settle_until + Duration::from_secs(1) {
        let topo = w.lab.in_internet(|| w.registry.get("/api/hub/network/topology")).json();
        let edge =
            topo["mesh_edges"].as_array().and_then(|e| e.iter().find(|e| e["from_peer"] == pa.as_str()).cloned());
        topology = edge.map_or(Value::Null, |e| e["path"].clone());
        if topology == expect_edge {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let direct = w.lab.direct_udp(a, b).packets - direct_before;
    let (after_a, after_b) = (a.counters(), b.counters());
    let relayed =
        (after_a.out.turn.packets + after_a.out.relay.packets + after_b.out.turn.packets + after_b.out.relay.packets)
            - (before_a.out.turn.packets
                + before_a.out.relay.packets
                + before_b.out.turn.packets
                + before_b.out.relay.packets);
    drop((first, second));
    Outcome { pair: label, took, paths, topology, direct, relayed }
}

fn relayed_path(paths: &[Value; 2]) -> bool {
    paths.iter().any(|p| p["local"] == "relay" || p["remote"] == "relay")
}

/// Whether the two NATs let UDP hole punching work.
fn direct_possible(a: NatKind, b: NatKind) -> bool {
    use NatKind::*;
    match (a, b) {
        (UdpBlocked { .. } | OnlyTcpTo { .. }, _) | (_, UdpBlocked { .. } | OnlyTcpTo { .. }) => false,
        (Public, _) | (_, Public) => true,
        (Cone, Cone) => true,
        _ => false,
    }
}

#[test]
fn every_pair_of_nat_kinds_links_directly_where_it_can_and_through_the_relay_otherwise() {
    let Some(w) = world("matrix") else { return };
    let mut outcomes = Vec::new();
    let mut n = 0;
    for i in 0..w.sites.len() {
        for j in i..w.sites.len() {
            let (ka, sites_a) = &w.sites[i];
            let (kb, sites_b) = &w.sites[j];
            let label = format!("{} ↔ {}", name(*ka), name(*kb));
            let expect_direct = direct_possible(*ka, *kb);
            let outcome = run_pair(&w, n, &sites_a[0], &sites_b[1], label, expect_direct);
            n += 1;
            eprintln!(
                "{:<28} linked in {:>7.1} ms, path {} / {}, direct UDP packets {}, to TURN {}",
                outcome.pair,
                outcome.took.as_secs_f64() * 1000.0,
                outcome.paths[0],
                outcome.paths[1],
                outcome.direct,
                outcome.relayed
            );
            assert!(outcome.took <= link_limit(), "{}: {:?}", outcome.pair, outcome.took);
            let expect_edge = if expect_direct { "direct" } else { "relay" };
            assert_eq!(outcome.topology, expect_edge, "{}: the registry's topology", outcome.pair);
            if expect_direct {
                assert!(
                    !relayed_path(&outcome.paths),
                    "{}: relayed though direct works: {:?}",
                    outcome.pair,
                    outcome.paths
                );
                assert!(outcome.direct > 0, "{}: no UDP went directly between the routers", outcome.pair);
            } else {
                assert!(relayed_path(&outcome.paths), "{}: not relayed: {:?}", outcome.pair, outcome.paths);
                assert!(outcome.relayed > 0, "{}: nothing went to the TURN server", outcome.pair);
            }
            outcomes.push(outcome);
        }
    }
    assert_eq!(outcomes.len(), 10);
}

/// Sends numbered `tag` messages from `from` to `to_peer` every 100 ms
/// until the first one arrives at `to`, at most for `limit`; then waits for
/// every one sent. Returns how long the first took, and the numbers that
/// arrived, in arrival order.
fn until_delivered(
    from: &mut chatixia_e2e::sidecar::Agent,
    to_peer: &str,
    to: &chatixia_e2e::sidecar::Agent,
    tag: &str,
    limit: Duration,
) -> (Option<Duration>, usize, Vec<u64>) {
    let started = Instant::now();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut first = None;
    while first.is_none() && started.elapsed() < limit {
        from.send(to_peer, mesh_message(tag, "", json!(sent)));
        sent += 1;
        while let Some(m) = to.next_within(Duration::from_millis(100)) {
            if m["type"] == "message" && m["payload"]["message"]["type"] == tag {
                got.push(m["payload"]["message"]["payload"].as_u64().unwrap());
                first.get_or_insert(started.elapsed());
            }
        }
    }
    while got.len() < sent {
        match to.next_within(Duration::from_secs(5)) {
            Some(m) if m["type"] == "message" && m["payload"]["message"]["type"] == tag => {
                got.push(m["payload"]["message"]["payload"].as_u64().unwrap())
            }
            Some(_) => {}
            None => break,
        }
    }
    (first, sent, got)
}

#[test]
fn a_nat_that_changes_its_mapping_mid_conversation_gets_the_link_back_within_15_s() {
    let Some(w) = world("rebind") else { return };
    let (cone, public) = (&w.sites[1].1[0], &w.sites[0].1[1]);
    let a = start(&w, cone, "p0");
    let mut agent_a = a.agent();
    let b = start(&w, public, "p1");
    let mut agent_b = b.agent();
    agent_a.wait_connected(&["p1"]);
    agent_b.wait_connected(&["p0"]);
    assert!(until_delivered(&mut agent_a, "p1", &agent_b, "before", Duration::from_secs(2)).0.is_some());
    let ports = cone.rebind();
    let rebound = Instant::now();
    // 15 s on real hardware. Under qemu-user everything runs several times
    // slower and the slow path (the public side hears the cone side's new
    // mapping but ICE keeps its old pair; the cone side's WebSocket died
    // with its NAT table, so the fresh offer waits for it) can take longer.
    let limit = if std::env::var_os("CHATIXIA_BIN_RUNNER").is_some() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(15)
    };
    let (a_to_b, sent_ab, got_ab) = until_delivered(&mut agent_a, "p1", &agent_b, "after-a", limit);
    let (b_to_a, sent_ba, got_ba) = until_delivered(&mut agent_b, "p0", &agent_a, "after-b", limit);
    let back = rebound.elapsed();
    eprintln!(
        "cone router moved to ports {ports:?}; first message through: a→b after {a_to_b:?}, b→a after {b_to_a:?}; \
         a→b {}/{sent_ab} arrived, b→a {}/{sent_ba}",
        got_ab.len(),
        got_ba.len()
    );
    let (a_to_b, b_to_a) = (a_to_b.expect("a→b never came back"), b_to_a.expect("b→a never came back"));
    assert!(a_to_b <= limit && b_to_a <= limit, "{a_to_b:?} {b_to_a:?} ({back:?} in all)");
    // Nothing sent meanwhile was lost, duplicated or reordered.
    assert_eq!(got_ab, (0..sent_ab as u64).collect::<Vec<_>>());
    assert_eq!(got_ba, (0..sent_ba as u64).collect::<Vec<_>>());
    // Either ICE moved both ends to the new mapping (what usually happens,
    // in under a second), or the public side, hearing the cone side from
    // its new mapping while its own data still went to the old one, gave the
    // link up and offered a fresh one: both count, as long as nothing sent
    // meanwhile was lost.
    let reformed = [&a, &b].iter().any(|s| s.proc.log().contains("offering a fresh link"));
    eprintln!("the link {}", if reformed { "was offered afresh" } else { "survived (ICE moved)" });
}
