//! Sidecars surviving the loss of a peer, of the registry, and of their own
//! process (docs/PROTOCOL.md §5.5, §6.2).

use chatixia_e2e::sidecar::{Agent, Sidecar, mesh_message};
use chatixia_e2e::{Registry, Scratch};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Sends `kind` from `from` to `to_peer` and waits for it at `to`.
fn carries(from: &mut Agent, to: &Agent, to_peer: &str, kind: &str) {
    from.send(to_peer, mesh_message(kind, "", Value::Null));
    let m = to.next_message();
    assert_eq!(m["message"]["type"], kind, "{m}");
}

#[test]
fn a_killed_sidecar_is_noticed_and_rejoins_after_restart() {
    let dir = Scratch::new("sc-kill");
    let reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let mut bravo = Sidecar::start(&reg, dir.path(), "key-bravo", "bravo");
    let charlie = Sidecar::start(&reg, dir.path(), "key-charlie", "charlie");
    let mut a = alpha.agent();
    let c = charlie.agent();
    a.wait_connected(&["bravo", "charlie"]);
    c.wait_connected(&["alpha", "bravo"]);

    let t0 = Instant::now();
    bravo.kill();
    for agent in [&a, &c] {
        agent.wait_for_within(Duration::from_secs(15), "peer_disconnected bravo", |v| {
            v["type"] == "peer_disconnected" && v["payload"]["peer_id"] == "bravo"
        });
    }
    eprintln!("kill -9 -> peer_disconnected on both others: {:?}", t0.elapsed());
    assert_eq!(a.list_peers(), ["charlie"]);

    bravo.restart();
    let mut b = bravo.agent();
    a.wait_peer_event("peer_connected", "bravo");
    c.wait_peer_event("peer_connected", "bravo");
    b.wait_connected(&["alpha", "charlie"]);
    carries(&mut a, &b, "bravo", "a-to-b");
    carries(&mut b, &a, "alpha", "b-to-a");
    assert_eq!(a.list_peers(), ["bravo", "charlie"]);
}

#[test]
fn channels_outlive_the_registry_and_newcomers_join_once_it_is_back() {
    let dir = Scratch::new("sc-regdown");
    let mut reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    // bravo must be the newcomer (the offerer): the last assertions count offers.
    alpha.proc.wait_for_line("connected to the registry as alpha");
    let bravo = Sidecar::start(&reg, dir.path(), "key-bravo", "bravo");
    let mut a = alpha.agent();
    let mut b = bravo.agent();
    a.wait_peer_event("peer_connected", "bravo");
    b.wait_peer_event("peer_connected", "alpha");

    // kill -9 of the registry; restart() brings it back on the same port.
    let _ = reg.proc.child.kill();
    let _ = reg.proc.child.wait();
    alpha.proc.wait_for_line("signaling connection lost");
    bravo.proc.wait_for_line("signaling connection lost");
    let status = a.status();
    assert_ne!(status["registry"], "connected", "{status}");
    for i in 0..5 {
        carries(&mut a, &b, "bravo", &format!("during-outage-a{i}"));
        carries(&mut b, &a, "alpha", &format!("during-outage-b{i}"));
    }
    assert_eq!(a.list_peers(), ["bravo"]);

    reg.restart();
    alpha.proc.wait_for_line("connected to the registry as alpha");
    bravo.proc.wait_for_line("connected to the registry as bravo");
    let charlie = Sidecar::start(&reg, dir.path(), "key-charlie", "charlie");
    let c = charlie.agent();
    c.wait_connected(&["alpha", "bravo"]);
    a.wait_peer_event("peer_connected", "charlie");
    b.wait_peer_event("peer_connected", "charlie");
    carries(&mut a, &c, "charlie", "a-to-c");
    carries(&mut b, &a, "alpha", "still-there");
    // The old link was never dropped or re-made.
    assert!(!alpha.proc.log().contains("data channel to bravo closed"), "{}", alpha.proc.log());
    assert_eq!(alpha.proc.log().matches("offered to bravo").count(), 0);
    assert_eq!(bravo.proc.log().matches("offered to alpha").count(), 1);
}

#[test]
fn a_frozen_peer_is_declared_dead_within_15_s_and_the_link_comes_back() {
    let dir = Scratch::new("sc-stop");
    let reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let bravo = Sidecar::start(&reg, dir.path(), "key-bravo", "bravo");
    let mut a = alpha.agent();
    let mut b = bravo.agent();
    a.wait_peer_event("peer_connected", "bravo");
    b.wait_peer_event("peer_connected", "alpha");

    // SIGSTOP keeps bravo's sockets open, so the registry sees nothing; only
    // the link itself can tell that bravo is gone.
    let t0 = Instant::now();
    bravo.proc.signal("STOP");
    a.wait_for_within(Duration::from_secs(16), "peer_disconnected bravo", |v| {
        v["type"] == "peer_disconnected" && v["payload"]["peer_id"] == "bravo"
    });
    let took = t0.elapsed();
    eprintln!("frozen peer -> peer_disconnected after {took:?}");
    assert!(took <= Duration::from_secs(15), "{took:?}");

    bravo.proc.signal("CONT");
    a.wait_peer_event("peer_connected", "bravo");
    b.wait_peer_event("peer_disconnected", "alpha");
    b.wait_peer_event("peer_connected", "alpha");
    carries(&mut a, &b, "bravo", "after-thaw-a");
    carries(&mut b, &a, "alpha", "after-thaw-b");
    assert_eq!(a.list_peers(), ["bravo"]);
    assert_eq!(b.list_peers(), ["alpha"]);
}

#[test]
fn systemd_hears_ready_status_and_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let dir = Scratch::new("sc-notify");
    let reg = Registry::start_default(dir.path());
    let notify = dir.path().join("notify.sock");
    let server = UnixDatagram::bind(&notify).unwrap();
    server.set_read_timeout(Some(chatixia_e2e::TIMEOUT)).unwrap();
    let notify_str = notify.to_str().unwrap();
    let alpha = Sidecar::start_with(
        reg.port,
        dir.path(),
        "key-alpha",
        "alpha",
        &[("NOTIFY_SOCKET", notify_str), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    let wanted = |seen: &[String]| {
        seen.iter().any(|m| m == "READY=1")
            && seen.iter().any(|m| m == "STATUS=registry connected, 0 peers")
            && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2
    };
    while !wanted(&seen) {
        let n = server.recv(&mut buf).unwrap_or_else(|e| panic!("{e}; got {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // READY comes first: the IPC socket is bound before the registry is contacted.
    assert_eq!(seen[0], "READY=1", "{seen:?}");
    drop(alpha);
}
