//! UDP datagrams into the sidecar's node core from anywhere: a STUN server
//! it asked, strangers, and the peer of a link being set up (STUN checks,
//! DTLS, TURN from a relay).
#![no_main]

use chatixia_fuzz::messages;
use chatixia_sidecar::core::node::{LookupId, Node, NodeConfig, SignalingEvent};
use chatixia_sidecar::core::stun::GathererConfig;
use chatixia_sidecar::core::urls::StunServer;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let t0 = chatixia_fuzz::start();
    let local: SocketAddr = "192.0.2.10:40000".parse().unwrap();
    let stun: SocketAddr = "198.51.100.7:3478".parse().unwrap();
    let config = NodeConfig {
        mesh: chatixia_fuzz::mesh_config(),
        stun: GathererConfig::default(),
        stun_servers: vec![StunServer { host: "198.51.100.7".into(), port: 3478 }],
        host_candidates: vec![local],
    };
    let mut node = Node::new(config, t0);
    node.handle_lookup(LookupId::StunServers, vec![Ok(vec![stun])], t0);
    node.handle_signaling(SignalingEvent::Connected { peer_id: "alpha".into() }, t0);
    // bravo is listed, so alpha offers it a link: datagrams from bravo's
    // address reach that link.
    let list = r#"{"type":"peer_list","peer_id":"registry","payload":{"peers":["alpha","bravo"]}}"#;
    node.handle_signaling(SignalingEvent::Frame(list.into()), t0);
    let sources: [SocketAddr; 3] = [stun, "198.51.100.9:5000".parse().unwrap(), "203.0.113.5:41000".parse().unwrap()];
    for (i, m) in messages(data).enumerate() {
        let t = t0 + Duration::from_millis(5 * i as u64);
        let Some((&head, rest)) = m.split_first() else { continue };
        node.handle_datagram(t, sources[usize::from(head % 3)], local, rest);
        if head & 0x80 != 0 {
            node.handle_timeout(t);
        }
        let mut left = 100_000;
        while node.poll_output().is_some() {
            left -= 1;
            assert!(left > 0, "the node produced output without end");
        }
    }
});
