//! Interop with an independent WebRTC stack (docs/PROTOCOL.md §4.6, §5.1): aiortc, driven by
//! tests/interop/aiortc_peer.py (see tests/src/aiortc.rs), joins our
//! registry as peer `bravo` and links with a real sidecar `alpha`, once as
//! the offerer and once as the answerer. Messages go both ways between
//! aiortc and alpha's agent, and the sidecar itself answers aiortc's mesh
//! `ping`.

use chatixia_e2e::aiortc::{PyPeer, aiortc_python, exchange};
use chatixia_e2e::sidecar::Sidecar;
use chatixia_e2e::{Registry, Scratch};
use std::process::Command;
use std::time::Instant;

#[test]
fn aiortc_offers_and_our_sidecar_answers() {
    let Some(python) = aiortc_python() else { return };
    let dir = Scratch::new("aiortc-offer");
    let reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let mut a = alpha.agent();
    alpha.proc.wait_for_line("connected to the registry as alpha");

    let t0 = Instant::now();
    let mut py = PyPeer::spawn(Command::new(&python), &reg.http(""), &["--role", "offer", "--target", "alpha"]);
    py.wait_for_line("offer sent");
    let offered = Instant::now();
    a.wait_peer_event("peer_connected", "bravo");
    let open = py.wait_for_line("open");
    eprintln!(
        "aiortc offers: offer -> peer_connected at our sidecar {:?}; aiortc {open} ms; start -> open {:?}",
        offered.elapsed(),
        t0.elapsed()
    );
    exchange(&mut a, &mut py);
}

#[test]
fn our_sidecar_offers_and_aiortc_answers() {
    let Some(python) = aiortc_python() else { return };
    let dir = Scratch::new("aiortc-answer");
    let reg = Registry::start_default(dir.path());
    let mut py = PyPeer::spawn(Command::new(&python), &reg.http(""), &["--role", "answer"]);
    py.wait_for_line("registered");

    // The newcomer offers to everyone in its peer_list: here, aiortc.
    let t0 = Instant::now();
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let mut a = alpha.agent();
    let offer = py.wait_for_line("offer from");
    assert_eq!(offer, "offer from alpha");
    a.wait_peer_event("peer_connected", "bravo");
    let open = py.wait_for_line("open");
    let channel = py.log().lines().find(|l| l.starts_with("channel ")).map(str::to_owned);
    eprintln!("our sidecar offers: sidecar start -> peer_connected {:?}; aiortc {open} ms; {channel:?}", t0.elapsed());
    assert!(channel.is_some_and(|c| c.contains("label=mesh ordered=True")), "log:\n{}", py.log());
    exchange(&mut a, &mut py);
}
