//! Real TURN clients (turn-client-proto) through the relay.

use super::*;

/// Two peers allocated with minted credentials, each permitting the
/// relay's address (where the other's relayed address is).
fn pair(first: Way, second: Way) -> (World, usize, usize, SocketAddr, SocketAddr) {
    let mut w = World::new(config(), &["alpha", "bravo"]);
    let a = w.add_peer("alpha", first);
    let b = w.add_peer("bravo", second);
    let (ra, rb) = (w.peers[a].relayed().expect("alpha allocated"), w.peers[b].relayed().expect("bravo allocated"));
    assert_eq!((ra.ip(), rb.ip()), (RELAY_IP, RELAY_IP));
    assert_ne!(ra, rb);
    w.permit(a, rb.ip());
    w.permit(b, ra.ip());
    (w, a, b, ra, rb)
}

fn last(w: &World, i: usize) -> (SocketAddr, Vec<u8>) {
    w.peers[i].received.last().cloned().expect("something arrived")
}

#[test]
fn udp_and_stream_clients_exchange_data_both_ways_with_send_and_channels() {
    let (mut w, a, b, ra, rb) = pair(Way::Udp, Way::Stream(0));
    assert_eq!(w.relay.stats().allocations, 2);

    // Send indications both ways, Data indications out.
    w.send(a, rb, b"hello bravo");
    assert_eq!(last(&w, b), (ra, b"hello bravo".to_vec()));
    w.send(b, ra, b"hello alpha");
    assert_eq!(last(&w, a), (rb, b"hello alpha".to_vec()));

    // Channels both ways: ChannelData in and out (padded on bravo's stream).
    w.bind(a, rb);
    w.bind(b, ra);
    let channel_binds = w.peers.iter().flat_map(|p| &p.events).filter(|e| matches!(e, TurnEvent::ChannelCreated(..)));
    assert_eq!(channel_binds.count(), 2);
    for n in 0..8usize {
        let to_b = vec![n as u8; n];
        w.send(a, rb, &to_b);
        assert_eq!(last(&w, b), (ra, to_b));
        let to_a = vec![0x80 | n as u8; 2 * n + 1];
        w.send(b, ra, &to_a);
        assert_eq!(last(&w, a), (rb, to_a));
    }
    let raw = &w.peers[b].raw_stream;
    assert_eq!(raw.len() % 4, 0, "ChannelData on a stream is padded to 4 bytes");

    // Refreshes of allocations, permissions and channels keep it all alive.
    w.advance(Duration::from_secs(25 * 60));
    assert_eq!(w.relay.stats().allocations, 2, "{:?}", w.relay.stats());
    w.send(a, rb, b"still here");
    assert_eq!(last(&w, b), (ra, b"still here".to_vec()));
    w.send(b, ra, b"me too");
    assert_eq!(last(&w, a), (rb, b"me too".to_vec()));

    // Deleting frees the allocation and its port.
    let t = w.client_time();
    w.peers[a].client.delete(t).unwrap();
    w.settle();
    assert_eq!(w.relay.stats().allocations, 1);
    let received = w.peers[a].received.len();
    w.send(b, ra, b"gone?");
    assert_eq!(w.peers[a].received.len(), received, "nothing reaches a deleted allocation");
    assert!(w.refusals(refusal::NO_PEER) >= 1);

    let stats = w.relay.stats();
    assert!(stats.bytes_relayed > 100 && stats.packets_relayed >= 20, "{stats:?}");
    assert_eq!(w.refusals(refusal::INTERNAL), 0);
}

#[test]
fn two_udp_clients_with_channels() {
    let (mut w, a, b, ra, rb) = pair(Way::Udp, Way::Udp);
    w.bind(a, rb);
    w.bind(b, ra);
    for i in 0..100u32 {
        w.send(a, rb, &i.to_be_bytes());
        w.send(b, ra, &(!i).to_be_bytes());
    }
    assert_eq!(w.peers[b].received.len(), 100);
    assert_eq!(w.peers[a].received.len(), 100);
    assert!(w.peers[b].received.iter().enumerate().all(|(i, (from, d))| *from == ra && d == &(i as u32).to_be_bytes()));
    assert_eq!(w.relay.stats().packets_relayed, 200);
}

#[test]
fn stream_bytes_in_any_chunking_and_unpadded_channel_data_from_the_client() {
    for chunking in [vec![1], vec![3, 1, 2], vec![7, 13, 5], vec![19, 64, 1, 1]] {
        let mut w = World::new(config(), &["alpha", "bravo"]);
        let a = w.add_peer("alpha", Way::Udp);
        let (user, pass) = w.relay.credentials("bravo", w.unix);
        let conn = 77;
        let local = udp(50, 5000);
        let config = TurnConfig::new(TurnCredentials::new(&user, &pass));
        // Chunking is set before it allocates: every byte it sends is cut.
        w.relay.handle_stream_opened(conn, local);
        w.peers.push(Peer {
            client: AnyClient::Tcp(TurnClientTcp::allocate(local, SERVER, config)),
            local,
            way: Way::Stream(conn),
            received: Vec::new(),
            events: Vec::new(),
            chunking: chunking.clone(),
            raw_stream: Vec::new(),
            framer: framing::StreamBuffer::default(),
            chunk_at: 0,
        });
        let b = w.peers.len() - 1;
        w.settle();
        let (ra, rb) = (w.peers[a].relayed().unwrap(), w.peers[b].relayed().expect("allocated over a chopped stream"));
        w.permit(a, RELAY_IP);
        w.permit(b, RELAY_IP);
        // turn-client-proto sends ChannelData unpadded on streams.
        w.bind(b, ra);
        for n in 0..9usize {
            let data = vec![n as u8 + 1; n];
            w.send(b, ra, &data);
            assert_eq!(last(&w, a), (rb, data), "chunking {chunking:?}");
        }
        assert!(w.closed.is_empty());
        assert_eq!(w.refusals(refusal::BAD_STREAM), 0);
    }
}

#[test]
fn a_stale_nonce_gets_438_and_the_client_carries_on() {
    let (mut w, a, b, ra, rb) = pair(Way::Udp, Way::Udp);
    // The clients refresh their permissions every few minutes with the
    // nonce they were given; past 10 minutes it is stale.
    w.advance(Duration::from_secs(15 * 60));
    assert!(w.refusals(refusal::STALE_NONCE) >= 1, "{:?}", w.relay.stats());
    assert_eq!(w.relay.stats().allocations, 2);
    w.send(a, rb, b"after 438");
    assert_eq!(last(&w, b), (ra, b"after 438".to_vec()));
}

#[test]
fn closing_a_stream_removes_its_allocation() {
    let (mut w, a, b, _, rb) = pair(Way::Udp, Way::Stream(0));
    let Way::Stream(conn) = w.peers[b].way else { unreachable!() };
    w.relay.handle_stream_closed(conn);
    assert_eq!(w.relay.stats().allocations, 1);
    w.send(a, rb, b"anyone?");
    assert!(w.peers[b].received.is_empty());
    assert_eq!(w.refusals(refusal::NO_PEER), 1);
}
