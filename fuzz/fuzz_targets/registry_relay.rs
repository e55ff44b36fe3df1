//! Datagrams and stream bytes into the registry's TURN relay, from a few
//! UDP sources and TCP streams.
#![no_main]

use chatixia_fuzz::{drain, messages, now, registry};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let mut r = registry();
    let sources: [SocketAddr; 3] = [
        "198.51.100.1:40000".parse().unwrap(),
        "198.51.100.2:40001".parse().unwrap(),
        "[2001:db8::1]:5000".parse().unwrap(),
    ];
    r.handle_relay_stream_opened(10, "198.51.100.3:50000".parse().unwrap());
    for (i, m) in messages(data).enumerate() {
        let t = now(Duration::from_millis(50 * i as u64));
        let Some((&head, rest)) = m.split_first() else { continue };
        match head % 5 {
            0..=2 => r.handle_relay_datagram(sources[usize::from(head % 3)], rest, t),
            3 => r.handle_relay_stream_data(10, rest, t),
            _ => {
                r.handle_relay_stream_closed(10);
                r.handle_relay_stream_opened(10, "198.51.100.3:50001".parse().unwrap());
            }
        }
        if head & 0x80 != 0 {
            r.handle_tick(t);
        }
        drain(&mut r);
    }
});
