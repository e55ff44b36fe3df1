//! SDP offers and answers and trickled candidate strings from a peer.
#![no_main]

use chatixia_fuzz::messages;
use chatixia_protocol::signaling::IceCandidatePayload;
use chatixia_sidecar::core::peer::{LinkConfig, PeerLink};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static CONFIG: OnceLock<LinkConfig> = OnceLock::new();
    let config = CONFIG.get_or_init(chatixia_fuzz::link_config);
    let now = chatixia_fuzz::start();
    let host = ["192.0.2.10:40000".parse().unwrap()];
    let Some((&head, rest)) = data.split_first() else { return };
    let mut parts = messages(rest);
    let sdp = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let mut link = if head & 1 == 0 {
        match PeerLink::new_answerer(&sdp, &host, config, now) {
            Ok((link, _answer)) => link,
            Err(_) => return,
        }
    } else {
        let Ok((mut link, _offer)) = PeerLink::new_offerer(&host, config, now) else { return };
        let _ = link.accept_answer(&sdp, now);
        link
    };
    for c in parts {
        let candidate = String::from_utf8_lossy(c).into_owned();
        link.add_remote_candidate(&IceCandidatePayload {
            candidate,
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        });
    }
    link.handle_timeout(now);
    let mut left = 100_000;
    while !matches!(link.poll_output(), chatixia_sidecar::core::peer::LinkOutput::Timeout(_)) {
        left -= 1;
        assert!(left > 0, "the link produced output without end");
    }
});
