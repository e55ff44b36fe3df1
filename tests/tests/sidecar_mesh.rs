//! Real sidecars on loopback, with the real registry, forming a mesh and
//! carrying agents' messages (docs/PROTOCOL.md §5, §6.1).

use chatixia_e2e::sidecar::{Agent, Sidecar, mesh_message};
use chatixia_e2e::{Registry, Scratch};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A message that serializes to exactly `len` bytes as the sidecar sends it.
fn message_of_len(len: usize) -> Value {
    let empty = mesh_message("big", "", json!("")).to_string().len();
    mesh_message("big", "", json!("x".repeat(len - empty)))
}

#[test]
fn two_sidecars_connect_and_carry_messages_exactly() {
    let dir = Scratch::new("sc-pair");
    let reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let mut a = alpha.agent();
    alpha.proc.wait_for_line("connected to the registry as alpha");
    let t0 = Instant::now();
    let bravo = Sidecar::start(&reg, dir.path(), "key-bravo", "bravo");
    let mut b = bravo.agent();
    a.wait_peer_event("peer_connected", "bravo");
    eprintln!("second sidecar start -> peer_connected at the first: {:?}", t0.elapsed());
    b.wait_peer_event("peer_connected", "alpha");

    assert_eq!(a.list_peers(), ["bravo"]);
    assert_eq!(b.list_peers(), ["alpha"]);
    let status = a.status();
    assert_eq!(status["peer_id"], "alpha");
    assert_eq!(status["registry"], "connected");
    assert_eq!(status["peers"], json!(["bravo"]));

    // Defaults are filled and unknown keys dropped: all five keys arrive.
    a.send("bravo", json!({"type": "task_request", "request_id": "r-1", "payload": {"n": [1, 2]}, "extra": 1}));
    assert_eq!(
        b.next_message(),
        json!({"from_peer": "alpha", "message": mesh_message("task_request", "r-1", json!({"n": [1, 2]}))})
    );
    let reply = json!({"type": "task_result", "request_id": "r-1", "source_agent": "b-agent",
                       "target_agent": "a-agent", "payload": "done"});
    b.send("alpha", reply.clone());
    assert_eq!(a.next_message(), json!({"from_peer": "bravo", "message": reply}));

    // The largest message arrives intact, one byte more is refused.
    let big = message_of_len(65_000);
    a.send("bravo", big.clone());
    assert_eq!(b.next_message(), json!({"from_peer": "alpha", "message": big}));
    let too_big = message_of_len(65_001);
    a.send("bravo", too_big.clone());
    let e = a.next_error();
    assert_eq!((&e["code"], &e["command"], &e["target_peer"]), (&json!("too_large"), &json!("send"), &json!("bravo")));
    a.command("broadcast", json!({"message": too_big}));
    assert_eq!(a.next_error()["code"], "too_large");

    // Sending to someone who is not there.
    a.send("nobody", mesh_message("x", "", Value::Null));
    let e = a.next_error();
    assert_eq!((&e["code"], &e["target_peer"]), (&json!("unknown_peer"), &json!("nobody")));

    // A mesh ping is answered by the remote sidecar itself.
    a.send("bravo", mesh_message("ping", "p-9", json!({"t": 1})));
    let pong = a.next_message();
    assert_eq!((&pong["from_peer"], &pong["message"]["type"]), (&json!("bravo"), &json!("pong")));
    assert_eq!(pong["message"]["request_id"], "p-9");

    // Nothing else reached bravo's agent: no ping, no refused message.
    b.send("alpha", mesh_message("marker", "", Value::Null));
    assert_eq!(a.next_message()["message"]["type"], "marker");
    a.send("bravo", mesh_message("marker", "", Value::Null));
    assert_eq!(b.next()["payload"]["message"]["type"], "marker");

    // Round trips A -> B -> A through the real processes.
    let mut rtts = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        a.send("bravo", mesh_message("ping", &i.to_string(), Value::Null));
        assert_eq!(a.next_message()["message"]["request_id"], i.to_string());
        rtts.push(t.elapsed());
    }
    rtts.sort();
    eprintln!("IPC->DataChannel->IPC ping round trip: median {:?}, max {:?}", rtts[25], rtts[49]);
}

#[test]
fn three_sidecars_form_a_full_mesh_and_broadcast_reaches_each_once() {
    let dir = Scratch::new("sc-three");
    let reg = Registry::start_default(dir.path());
    let names = [("key-alpha", "alpha"), ("key-bravo", "bravo"), ("key-charlie", "charlie")];
    let sidecars: Vec<Sidecar> = names.iter().map(|(k, p)| Sidecar::start(&reg, dir.path(), k, p)).collect();
    let mut agents: Vec<Agent> = sidecars.iter().map(Sidecar::agent).collect();
    for (i, (_, me)) in names.iter().enumerate() {
        let others: Vec<&str> = names.iter().map(|(_, p)| *p).filter(|p| p != me).collect();
        agents[i].wait_connected(&others);
        assert_eq!(agents[i].list_peers(), others, "{me}");
    }

    agents[1].command("broadcast", json!({"message": {"type": "hello", "request_id": "b-1"}}));
    for i in [0, 2] {
        assert_eq!(
            agents[i].next_message(),
            json!({"from_peer": "bravo", "message": mesh_message("hello", "b-1", Value::Null)})
        );
    }
    // Exactly once: the next thing each sees is a fresh marker, not a copy.
    agents[1].command("broadcast", json!({"message": {"type": "marker"}}));
    for i in [0, 2] {
        assert_eq!(agents[i].next()["payload"]["message"]["type"], "marker");
    }
    // And the broadcaster hears nothing of its own.
    agents[0].send("bravo", mesh_message("direct", "", Value::Null));
    assert_eq!(agents[1].next()["payload"]["message"]["type"], "direct");
}

#[test]
fn malformed_agent_input_gets_errors_and_the_connection_stays() {
    let dir = Scratch::new("sc-junk");
    let reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let mut a = alpha.agent();

    for junk in
        [&b"this is not json\n"[..], b"{\"type\":\"fly\"}\n", b"{\"type\":\"send\",\"payload\":{}}\n", b"\xff\xfe\n"]
    {
        a.send_raw(junk);
        let e = a.next_error();
        assert_eq!(e["code"], "invalid_command", "{junk:?} -> {e}");
    }
    let e = {
        a.send_raw(b"{\"type\":\"fly\"}\n");
        a.next_error()
    };
    assert_eq!(e["command"], "fly");

    // A line over 1 MiB is skipped with `too_large`; the next line works.
    let mut long = b"{\"type\":\"send\",\"payload\":\"".to_vec();
    long.extend(std::iter::repeat_n(b'y', 1 << 20));
    long.extend(b"\"}\n");
    a.send_raw(&long);
    assert_eq!(a.next_error()["code"], "too_large");
    // Blank lines are ignored, not errors.
    a.send_raw(b"\n\r\n");
    assert_eq!(a.list_peers(), Vec::<String>::new());
    // The peer_id is known once the token exchange is done (slow under qemu).
    alpha.proc.wait_for_line("connected to the registry as alpha");
    assert_eq!(a.status()["peer_id"], "alpha");
}

#[test]
fn agents_come_and_go_and_still_get_every_event() {
    let dir = Scratch::new("sc-agents");
    let reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let bravo = Sidecar::start(&reg, dir.path(), "key-bravo", "bravo");
    let mut b = bravo.agent();

    // No agent attached to alpha while the link opens and a message
    // arrives: both wait for the next agent.
    b.wait_peer_event("peer_connected", "alpha");
    b.send("alpha", mesh_message("while-away", "", Value::Null));
    alpha.proc.wait_for_line("data channel to bravo is open");
    let mut a1 = alpha.agent();
    a1.wait_peer_event("peer_connected", "bravo");
    assert_eq!(a1.next_message()["message"]["type"], "while-away");

    // Two agents at once: each gets every event.
    let a2 = alpha.agent();
    b.send("alpha", mesh_message("to-both", "", Value::Null));
    assert_eq!(a1.next_message()["message"]["type"], "to-both");
    assert_eq!(a2.next_message()["message"]["type"], "to-both");
    // A reply goes to the agent that asked.
    assert_eq!(a1.list_peers(), ["bravo"]);
    assert!(a2.next_within(Duration::from_millis(200)).is_none(), "peer_list leaked to the other agent");

    // Agents leave and come back any number of times.
    drop(a1);
    drop(a2);
    for round in 0..3 {
        let mut a = alpha.agent();
        b.send("alpha", mesh_message("again", &round.to_string(), Value::Null));
        assert_eq!(a.next_message()["message"]["request_id"], round.to_string());
        a.send("bravo", mesh_message("back", &round.to_string(), Value::Null));
        assert_eq!(b.next_message()["message"]["request_id"], round.to_string());
    }
}

#[test]
fn sigterm_says_goodbye_and_removes_the_socket() {
    let dir = Scratch::new("sc-term");
    let reg = Registry::start_default(dir.path());
    let mut alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let bravo = Sidecar::start(&reg, dir.path(), "key-bravo", "bravo");
    let b = bravo.agent();
    b.wait_peer_event("peer_connected", "alpha");
    assert!(alpha.socket.exists());
    let t0 = Instant::now();
    alpha.proc.signal("TERM");
    assert_eq!(alpha.proc.wait_exit(), Some(0));
    let took = t0.elapsed();
    eprintln!("SIGTERM -> exit in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(!alpha.socket.exists(), "socket file left behind");
    b.wait_for_within(Duration::from_secs(2), "peer_disconnected alpha", |v| {
        v["type"] == "peer_disconnected" && v["payload"]["peer_id"] == "alpha"
    });
    // A second sidecar on a stale socket path is fine; on a live one it is not.
    let _again = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
}

#[test]
fn a_refused_credential_is_reported_clearly_and_the_ipc_socket_still_works() {
    let dir = Scratch::new("sc-401");
    let reg = Registry::start_default(dir.path());
    let wrong = Sidecar::start(&reg, dir.path(), "key-wrong", "nobody");
    wrong.proc.wait_for_line("refused our credential (401");
    let mut agent = wrong.agent();
    let status = agent.status();
    assert_ne!(status["registry"], "connected", "{status}");
    assert_eq!(agent.list_peers(), Vec::<String>::new());
}

#[test]
fn a_signaling_url_with_a_query_string_works() {
    let dir = Scratch::new("sc-query");
    let reg = Registry::start_default(dir.path());
    let url = format!("ws://127.0.0.1:{}/ws?client=test", reg.port);
    let alpha = Sidecar::start_with(reg.port, dir.path(), "key-alpha", "alpha", &[("SIGNALING_URL", &url)]);
    let bravo = Sidecar::start_with(reg.port, dir.path(), "key-bravo", "bravo", &[("SIGNALING_URL", &url)]);
    alpha.proc.wait_for_line("connected to the registry as alpha");
    bravo.agent().wait_peer_event("peer_connected", "alpha");
}

/// Agents attached at once are bounded (`IPC_MAX_AGENTS`): one more gets an
/// `error` `too_many_agents` and is closed, the attached ones are not
/// disturbed, and a place freed by a leaving agent can be taken again.
#[test]
fn agents_beyond_the_limit_are_refused_and_others_keep_working() {
    use std::io::Read;
    let dir = Scratch::new("sc-max-agents");
    let reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start_with(reg.port, dir.path(), "key-alpha", "alpha", &[("IPC_MAX_AGENTS", "2")]);
    let first = Agent::attach(&alpha.socket);
    let mut second = Agent::attach(&alpha.socket);
    for _ in 0..3 {
        let mut extra = std::os::unix::net::UnixStream::connect(&alpha.socket).expect("connect");
        extra.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut text = String::new();
        // Read to the end: the sidecar closes the refused connection.
        extra.read_to_string(&mut text).expect("refusal and close");
        let refusal: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!((&refusal["type"], &refusal["payload"]["code"]), (&json!("error"), &json!("too_many_agents")));
    }
    alpha.proc.wait_for_line("IPC connection refused: too many agents attached (1 refused so far)");
    alpha.proc.wait_for_line("connected to the registry as alpha");
    assert_eq!(second.status()["peer_id"], "alpha");
    drop(first);
    alpha.proc.wait_for_line("agent 1 detached");
    let mut third = Agent::attach(&alpha.socket);
    assert_eq!(third.list_peers(), Vec::<String>::new());
}
