//! One peer flooding an agent that reads slowly must not cost that agent
//! the other peers' messages or its connection (docs/PROTOCOL.md §6.5): the
//! sidecar holds the flooding peer back instead.

use chatixia_e2e::sidecar::{Sidecar, mesh_message};
use chatixia_e2e::{Registry, Scratch};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Bytes per second the slow agent reads: well below what a DataChannel
/// carries, under qemu too.
const READ_RATE: f64 = 1_000_000.0;
const CALM_MESSAGES: u64 = 200;

#[test]
fn a_flooding_peer_is_held_back_and_a_slow_agent_still_gets_everyone_elses_messages() {
    let dir = Scratch::new("sc-fair");
    let reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let bravo = Sidecar::start(&reg, dir.path(), "key-bravo", "bravo");
    let charlie = Sidecar::start(&reg, dir.path(), "key-charlie", "charlie");
    let mut flooder = alpha.agent();
    let mut calm = charlie.agent();
    // bravo's agent: a plain socket read at READ_RATE.
    let mut slow = UnixStream::connect(&bravo.socket).expect("connect");
    slow.write_all(b"{\"type\":\"status\"}\n").unwrap();
    let mut slow = BufReader::new(slow);
    flooder.wait_connected(&["bravo", "charlie"]);
    calm.wait_connected(&["alpha", "bravo"]);

    // alpha sends as fast as its sidecar takes them (bounded in count), so
    // it keeps sending while bravo's agent falls behind.
    let flood = std::thread::spawn(move || {
        let big = "x".repeat(16 * 1024);
        for i in 0..3_000 {
            flooder.send("bravo", mesh_message("flood", &format!("f{i}"), json!(big)));
        }
        flooder
    });
    let calm_sender = std::thread::spawn(move || {
        for i in 0..CALM_MESSAGES {
            calm.send("bravo", mesh_message("calm", &i.to_string(), json!(i)));
            std::thread::sleep(Duration::from_millis(20));
        }
        calm
    });

    let start = Instant::now();
    let mut read_bytes = 0usize;
    let mut calm_seen = Vec::new();
    let mut floods = 0u64;
    let mut line = String::new();
    while calm_seen.len() < CALM_MESSAGES as usize {
        assert!(start.elapsed() < Duration::from_secs(120), "only {} calm messages in 120 s", calm_seen.len());
        line.clear();
        let n = slow.read_line(&mut line).expect("read");
        assert!(n > 0, "bravo's agent was disconnected after {} calm and {floods} flood messages", calm_seen.len());
        read_bytes += n;
        let v: Value = serde_json::from_str(&line).expect("JSON event");
        if v["type"] == "message" {
            match v["payload"]["message"]["type"].as_str() {
                Some("calm") => calm_seen.push(v["payload"]["message"]["payload"].as_u64().unwrap()),
                Some("flood") => floods += 1,
                _ => {}
            }
        }
        // Pace to READ_RATE: this is the agent being slow, not a wait.
        let due = Duration::from_secs_f64(read_bytes as f64 / READ_RATE);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    assert_eq!(calm_seen, (0..CALM_MESSAGES).collect::<Vec<_>>(), "charlie's messages, all and in order");
    assert!(floods > 0);
    bravo.proc.wait_for_line("holding back alpha");
    let _calm = calm_sender.join().expect("calm sender");
    let _flooder = flood.join().expect("flooder");
    assert!(!bravo.proc.log().contains("is not reading its events"), "bravo's agent was cut off");
    eprintln!("{} calm messages in {:?} while {floods} flood messages were read", calm_seen.len(), start.elapsed());
}
