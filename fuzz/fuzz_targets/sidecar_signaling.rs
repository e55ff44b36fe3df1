//! Signaling frames (text and the relay's binary frames) into the sidecar's
//! node core, as the registry client hands them over, and the registry's
//! ICE configuration.
#![no_main]

use chatixia_fuzz::messages;
use chatixia_sidecar::core::node::{Node, NodeConfig, SignalingEvent};
use chatixia_sidecar::core::stun::GathererConfig;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let t0 = chatixia_fuzz::start();
    let config = NodeConfig {
        mesh: chatixia_fuzz::mesh_config(),
        stun: GathererConfig::default(),
        stun_servers: Vec::new(),
        host_candidates: vec!["192.0.2.10:40000".parse().unwrap()],
    };
    let mut node = Node::new(config, t0);
    node.handle_signaling(SignalingEvent::Connected { peer_id: "alpha".into() }, t0);
    for (i, m) in messages(data).enumerate() {
        let t = t0 + Duration::from_millis(20 * i as u64);
        let Some((&head, rest)) = m.split_first() else { continue };
        let text = String::from_utf8_lossy(rest).into_owned();
        match head % 4 {
            0 | 1 => node.handle_signaling(SignalingEvent::Frame(text), t),
            2 => node.handle_signaling(SignalingEvent::Binary(rest.to_vec()), t),
            _ => node.handle_ice_config(&text, 1_700_000_000, t),
        }
        node.handle_timeout(t);
        let mut left = 100_000;
        while node.poll_output().is_some() {
            left -= 1;
            assert!(left > 0, "the node produced output without end");
        }
    }
});
