//! Garbage, truncation and mutation, by datagram and by stream: the relay
//! never panics (not even inside its guard), never grows past its bounds,
//! and answers nobody but the sender.

use super::*;

/// splitmix64: deterministic, and enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A world with a UDP and a stream client that allocated, permitted,
/// bound channels and exchanged data; its wire log is the corpus.
fn busy_world() -> (World, Vec<Vec<u8>>) {
    let mut w = World::new(config(), &["alpha", "bravo"]);
    let a = w.add_peer("alpha", Way::Udp);
    let b = w.add_peer("bravo", Way::Stream(0));
    let (ra, rb) = (w.peers[a].relayed().unwrap(), w.peers[b].relayed().unwrap());
    w.permit(a, RELAY_IP);
    w.permit(b, RELAY_IP);
    w.send(a, rb, b"before channels");
    w.send(b, ra, b"before channels too");
    w.bind(a, rb);
    w.bind(b, ra);
    w.send(a, rb, b"over a channel");
    w.send(b, ra, b"over a channel too!");
    w.advance(Duration::from_secs(400));
    let mut corpus = w.wire_log.clone();
    corpus.push(vec![]);
    corpus.push(vec![0; 20]);
    (w, corpus)
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut m = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(3) {
        match rng.below(8) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            2 => m.truncate(rng.below(m.len() + 1)),
            3 => m.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            // The length field, where STUN and ChannelData keep it.
            4 if m.len() >= 4 => {
                let len = (rng.next() as u16).to_be_bytes();
                m[2..4].copy_from_slice(&len);
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(other.len() + 1);
                m.extend_from_slice(&other[..cut]);
            }
            6 => m = (0..rng.below(100)).map(|_| rng.next() as u8).collect(),
            _ => {
                let i = rng.below(m.len() + 1);
                m.insert(i, rng.next() as u8);
            }
        }
    }
    m
}

#[test]
fn mutated_datagrams_never_panic_and_are_answered_to_the_sender_only() {
    let (mut w, corpus) = busy_world();
    let before = w.relay.stats();
    let mut rng = Rng(1);
    for round in 0..6000 {
        let from = udp(200 + (round % 16) as u8, 7000);
        let bytes = mutate(&mut rng, &corpus);
        w.relay.handle_datagram(from, &bytes, w.now, w.unix, &w.authz);
        while let Some(output) = w.relay.poll_output() {
            match output {
                RelayOutput::Datagram { to, .. } if to == from => {}
                other => panic!("round {round}: {other:?} for a datagram from {from}"),
            }
        }
        if round % 500 == 0 {
            w.now += Duration::from_secs(7);
            w.unix += 7;
        }
    }
    let after = w.relay.stats();
    assert_eq!(after.refusals.get(refusal::INTERNAL), None, "a parsing crate panicked: {after:?}");
    assert_eq!((after.allocations, after.packets_relayed), (before.allocations, before.packets_relayed));
    assert!(after.refusals[refusal::MALFORMED] > 1000, "{after:?}");
}

#[test]
fn mutated_datagrams_from_clients_with_allocations_never_panic() {
    let (mut w, corpus) = busy_world();
    let a = w.peers[0].local;
    let mut rng = Rng(2);
    for _ in 0..4000 {
        let bytes = mutate(&mut rng, &corpus);
        w.relay.handle_datagram(a, &bytes, w.now, w.unix, &w.authz);
        while let Some(output) = w.relay.poll_output() {
            match output {
                RelayOutput::Datagram { to, .. } => assert_eq!(to, a, "only alpha has a UDP allocation"),
                // Data alpha relayed to bravo, through bravo's stream.
                RelayOutput::Stream { conn, .. } => assert_eq!(Way::Stream(conn), w.peers[1].way),
                RelayOutput::CloseStream { conn } => panic!("closed {conn} for alpha's datagrams"),
            }
        }
    }
    assert_eq!(w.relay.stats().refusals.get(refusal::INTERNAL), None);
}

#[test]
fn mutated_streams_in_any_chunks_never_panic_and_stay_bounded() {
    let (mut w, corpus) = busy_world();
    let mut rng = Rng(3);
    let mut closed = 0;
    for round in 0..3000u64 {
        let conn = 10_000 + round % 64;
        // A few frames, some intact, some not, cut anywhere.
        let mut stream = Vec::new();
        for _ in 0..=rng.below(4) {
            if rng.below(3) == 0 {
                stream.extend(&corpus[rng.below(corpus.len())]);
            } else {
                stream.extend(mutate(&mut rng, &corpus));
            }
        }
        let mut at = 0;
        while at < stream.len() {
            let n = (1 + rng.below(40)).min(stream.len() - at);
            w.relay.handle_stream_data(conn, &stream[at..at + n], w.now, w.unix, &w.authz);
            at += n;
        }
        while let Some(output) = w.relay.poll_output() {
            match output {
                RelayOutput::Stream { conn: to, .. } if to == conn => {}
                RelayOutput::CloseStream { conn: to } if to == conn => closed += 1,
                other => panic!("round {round}: {other:?} for bytes on stream {conn}"),
            }
        }
        let stats = w.relay.stats();
        assert!(stats.streams <= 64 + 1, "{stats:?}");
        if round % 7 == 0 {
            w.relay.handle_stream_closed(conn);
        }
    }
    for stream in w.relay.streams.values() {
        assert!(stream.buffer.pending.len() < framing::MAX_FRAME);
    }
    assert!(closed > 500, "{closed}");
    assert_eq!(w.relay.stats().refusals.get(refusal::INTERNAL), None);
    // Bravo's stream was never touched: still allocated.
    assert_eq!(w.relay.stats().allocations, 2);
}

#[test]
fn a_stream_that_sends_garbage_is_closed_and_forgotten() {
    let (mut w, _) = busy_world();
    let Way::Stream(conn) = w.peers[1].way else { unreachable!() };
    w.relay.handle_stream_data(conn, &[0xff, 0xff, 0xff, 0xff], w.now, w.unix, &w.authz);
    assert_eq!(w.relay.poll_output(), Some(RelayOutput::CloseStream { conn }));
    assert_eq!(w.relay.stats().allocations, 1, "its allocation went with it");
    assert_eq!(w.refusals(refusal::BAD_STREAM), 1);
}

#[test]
fn too_many_streams_are_refused() {
    let mut w = World::new(RelayConfig { max_streams: 2, ..config() }, &[]);
    let binding = RawClient::new(udp(1, 1), "u", "p").request(stun_types::message::BINDING, &[]);
    for conn in 0..3 {
        w.relay.handle_stream_data(conn, &binding, w.now, w.unix, &w.authz);
    }
    let outputs: Vec<RelayOutput> = std::iter::from_fn(|| w.relay.poll_output()).collect();
    assert!(matches!(
        outputs[..],
        [
            RelayOutput::Stream { conn: 0, .. },
            RelayOutput::Stream { conn: 1, .. },
            RelayOutput::CloseStream { conn: 2 }
        ]
    ));
    w.relay.handle_stream_closed(0);
    w.relay.handle_stream_data(2, &binding, w.now, w.unix, &w.authz);
    assert!(matches!(w.relay.poll_output(), Some(RelayOutput::Stream { conn: 2, .. })));
    assert_eq!(w.refusals(refusal::TOO_MANY_STREAMS), 1);
}

#[test]
fn padded_and_unpadded_channel_data_from_a_stream_with_any_chunking() {
    let (mut w, _) = busy_world();
    let (a, b) = (0, 1);
    let Way::Stream(conn) = w.peers[b].way else { unreachable!() };
    let ra = w.peers[a].relayed().unwrap();
    let rb = w.peers[b].relayed().unwrap();
    let binding = RawClient::new(udp(1, 1), "u", "p").request(stun_types::message::BINDING, &[]);
    // bravo's ChannelData to alpha, as its client writes it (unpadded).
    let t = w.client_time();
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for n in 0..12usize {
        let data = vec![n as u8; n];
        let built = w.peers[b].client.send_to(TransportType::Udp, ra, data.clone(), t).unwrap().unwrap().build();
        assert_eq!(built.data[0] & 0xc0, 0x40, "a channel is bound: ChannelData");
        let mut frame = built.data.clone();
        if n % 2 == 0 {
            frame.resize(frame.len().next_multiple_of(4), 0);
        }
        stream.extend(frame);
        stream.extend(&binding);
        expected.push((rb, data));
    }
    let mut rng = Rng(4);
    for _ in 0..20 {
        w.peers[a].received.clear();
        let mut at = 0;
        while at < stream.len() {
            let n = (1 + rng.below(9)).min(stream.len() - at);
            w.relay.handle_stream_data(conn, &stream[at..at + n], w.now, w.unix, &w.authz);
            at += n;
        }
        let mut bindings = 0;
        while let Some(output) = w.relay.poll_output() {
            match output {
                RelayOutput::Stream { conn: to, .. } if to == conn => bindings += 1,
                other => w.deliver_to(other),
            }
        }
        assert_eq!(bindings, 12);
        assert_eq!(w.peers[a].received, expected);
    }
    assert!(w.closed.is_empty());
}
