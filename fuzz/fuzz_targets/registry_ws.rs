//! Signaling frames into the registry (text and binary, from two clients),
//! as the WebSocket shell hands them over.
#![no_main]

use chatixia_fuzz::{drain, messages, now, registry};
use chatixia_registry::core::token::Identity;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let mut r = registry();
    let t0 = now(Duration::ZERO);
    r.handle_ws_open(1, &Identity { peer_id: "alpha".into(), role: "agent".into() }, t0);
    r.handle_ws_open(2, &Identity { peer_id: "bravo".into(), role: "agent".into() }, t0);
    drain(&mut r);
    for (i, m) in messages(data).enumerate() {
        let t = now(Duration::from_millis(10 * i as u64));
        let Some((&head, rest)) = m.split_first() else { continue };
        let conn = 1 + u64::from(head & 1);
        if head & 2 == 0 {
            r.handle_ws_text(conn, &String::from_utf8_lossy(rest), t);
        } else {
            r.handle_ws_binary(conn, rest, t);
        }
        if head & 4 != 0 {
            r.handle_tick(t);
        }
        drain(&mut r);
    }
});
