//! Everything the relay refuses, with the code the RFC asks for, and the
//! counter it moves.

use super::*;
use crate::core::ratelimit::Rate;
use turn_types::attribute::{ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};

fn udp_transport() -> RequestedTransport {
    RequestedTransport::new(RequestedTransport::UDP)
}

/// A raw client of `peer_id` with an allocation; its relayed address.
fn allocated(w: &mut World, from: SocketAddr, peer_id: &str) -> (RawClient, SocketAddr) {
    let mut c = RawClient::minted(w, from, peer_id);
    let answer = c.call(w, ALLOCATE, &[&udp_transport()]);
    assert!(answer.is_success(), "{answer:?}");
    assert!(answer.signed);
    let relayed = answer.attribute::<XorRelayedAddress>().unwrap().addr(answer.transaction());
    (c, relayed)
}

fn send_indication(to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mtype = MessageType::from_class_method(MessageClass::Indication, SEND);
    let tid = 0x1234.into();
    let mut msg = Message::builder(mtype, tid, MessageWriteVec::new());
    msg.add_attribute(&XorPeerAddress::new(to, tid)).unwrap();
    msg.add_attribute(&Data::new(data)).unwrap();
    msg.finish()
}

fn permit(w: &mut World, c: &mut RawClient, ip: IpAddr) -> Answer {
    c.call(w, CREATE_PERMISSION, &[&XorPeerAddress::new(SocketAddr::new(ip, 1), 0.into())])
}

#[test]
fn the_first_allocate_is_challenged_then_succeeds_with_the_right_attributes() {
    let mut w = World::new(config(), &["alpha"]);
    let mut c = RawClient::minted(&w, udp(1, 1000), "alpha");
    let bytes = c.request(ALLOCATE, &[&udp_transport()]);
    let challenge = Answer::parse(&w.raw(c.from, &bytes)[0]);
    assert_eq!((challenge.code, challenge.signed), (Some(401), false));
    assert_eq!(challenge.attribute::<Realm>().unwrap().realm(), REALM);
    c.nonce = challenge.nonce.clone();
    let bytes = c.request(ALLOCATE, &[&udp_transport(), &Lifetime::new(99_999)]);
    let ok = Answer::parse(&w.raw(c.from, &bytes)[0]);
    assert!(ok.is_success() && ok.signed);
    let tid = ok.transaction();
    assert_eq!(ok.attribute::<Lifetime>().unwrap().seconds(), 3600, "clamped to the maximum");
    let mapped = ok.attribute::<stun_types::attribute::XorMappedAddress>().unwrap().addr(tid);
    assert_eq!(mapped, c.from);
    let relayed = ok.attribute::<XorRelayedAddress>().unwrap().addr(tid);
    assert_eq!(relayed.ip(), RELAY_IP);
    assert!((50_000..=50_099).contains(&relayed.port()));
    // The response verifies with the client's key and carries FINGERPRINT.
    let msg = Message::from_bytes(&ok.bytes).unwrap();
    let creds = LongTermKeyCredentials::new(c.user.clone(), c.pass.clone(), REALM.into());
    msg.validate_integrity(&creds.into()).unwrap();
    assert!(msg.has_attribute(stun_types::attribute::Fingerprint::TYPE));
    // A retransmission of that Allocate gets the same success, not 437.
    let again = Answer::parse(&w.raw(c.from, &bytes)[0]);
    assert!(again.is_success());
    assert_eq!(again.attribute::<XorRelayedAddress>().unwrap().addr(tid), relayed);
    // A short lifetime is raised to the default.
    let mut d = RawClient::minted(&w, udp(2, 1000), "alpha");
    let answer = d.call(&mut w, ALLOCATE, &[&udp_transport(), &Lifetime::new(5)]);
    assert_eq!(answer.attribute::<Lifetime>().unwrap().seconds(), 600);
    assert_eq!(w.refusals(refusal::CHALLENGED), 2);
}

#[test]
fn binding_requests_are_answered_with_the_mapped_address() {
    let mut w = World::new(config(), &[]);
    let mut c = RawClient::new(udp(3, 3333), "u", "p");
    let bytes = c.request(stun_types::message::BINDING, &[]);
    let answer = Answer::parse(&w.raw(c.from, &bytes)[0]);
    assert!(answer.is_success());
    let mapped = answer.attribute::<stun_types::attribute::XorMappedAddress>().unwrap().addr(answer.transaction());
    assert_eq!(mapped, c.from);
    // Over a stream: the remote given when it opened, else a placeholder.
    for (conn, remote, expected) in [(5, Some(udp(4, 4444)), udp(4, 4444)), (6, None, "0.0.0.0:0".parse().unwrap())] {
        if let Some(remote) = remote {
            w.relay.handle_stream_opened(conn, remote);
        }
        w.relay.handle_stream_data(conn, &bytes, w.now, w.unix, &w.authz);
        let Some(RelayOutput::Stream { conn: to, bytes: answer }) = w.relay.poll_output() else { panic!() };
        assert_eq!(to, conn);
        let answer = Answer::parse(&answer);
        assert_eq!(
            answer.attribute::<stun_types::attribute::XorMappedAddress>().unwrap().addr(answer.transaction()),
            expected
        );
    }
}

#[test]
fn wrong_password_expired_or_malformed_username_get_401_and_the_client_gives_up() {
    let mut w = World::new(config(), &["alpha"]);
    let (user, _) = w.relay.credentials("alpha", w.unix);
    let wrong = w.add_peer_with(&user, "not-the-password", Way::Udp);
    let expired_user = format!("{}:alpha", w.unix - 1);
    let expired_pass = auth::password(SECRET, &expired_user);
    let expired = w.add_peer_with(&expired_user, &expired_pass, Way::Udp);
    let malformed = w.add_peer_with("alpha", &auth::password(SECRET, "alpha"), Way::Udp);
    // turn-client-proto ignores the unsigned 401 that carries the nonce it
    // used (it cannot be authenticated) and retransmits until it gives up.
    w.advance(Duration::from_secs(60));
    for i in [wrong, expired, malformed] {
        assert!(w.peers[i].relayed().is_none(), "peer {i}: {:?}", w.peers[i].events);
    }
    assert!(w.refusals(refusal::BAD_CREDENTIALS) >= 3);
    assert_eq!(w.relay.stats().allocations, 0);
    // By hand: the 401 carries the client's own nonce, so it does not retry.
    let mut c = RawClient::new(udp(9, 9), &user, "wrong");
    let answer = c.call(&mut w, ALLOCATE, &[&udp_transport()]);
    assert_eq!((answer.code, answer.nonce.as_deref()), (Some(401), c.nonce.as_deref()));
}

#[test]
fn a_peer_the_registry_does_not_authorize_gets_403() {
    let mut w = World::new(config(), &["alpha"]);
    let stranger = w.add_peer("mallory", Way::Udp);
    assert!(w.peers[stranger].failed());
    let mut c = RawClient::minted(&w, udp(1, 1), "mallory");
    let answer = c.call(&mut w, ALLOCATE, &[&udp_transport()]);
    assert_eq!((answer.code, answer.reason.as_str(), answer.signed), (Some(403), "peer not authorized", true));
    assert_eq!(w.refusals(refusal::UNAUTHORIZED), 2);
}

#[test]
fn one_allocation_per_client_and_requests_need_one() {
    let mut w = World::new(config(), &["alpha"]);
    let (mut c, _) = allocated(&mut w, udp(1, 1), "alpha");
    let answer = c.call(&mut w, ALLOCATE, &[&udp_transport()]);
    assert_eq!((answer.code, answer.signed), (Some(437), true));
    let mut other = RawClient::minted(&w, udp(2, 2), "alpha");
    for method in [REFRESH, CREATE_PERMISSION, CHANNEL_BIND] {
        let answer = other.call(&mut w, method, &[]);
        assert_eq!(answer.code, Some(437), "{method}");
    }
    // Another username on an existing allocation: 441.
    let (user, pass) = w.relay.credentials("alpha", w.unix + 5);
    let mut thief = RawClient::new(c.from, &user, &pass);
    assert_eq!(thief.call(&mut w, REFRESH, &[]).code, Some(441));
    assert_eq!(w.refusals(refusal::ALLOCATION_MISMATCH), 4);
    assert_eq!(w.refusals(refusal::WRONG_CREDENTIALS), 1);
}

#[test]
fn transport_family_and_unknown_attributes_are_checked() {
    let mut w = World::new(config(), &["alpha"]);
    let mut c = RawClient::minted(&w, udp(1, 1), "alpha");
    assert_eq!(c.call(&mut w, ALLOCATE, &[]).code, Some(400));
    let tcp = RequestedTransport::new(RequestedTransport::TCP);
    assert_eq!(c.call(&mut w, ALLOCATE, &[&tcp]).code, Some(442));
    let v6 = turn_types::attribute::RequestedAddressFamily::new(stun_types::AddressFamily::IPV6);
    assert_eq!(c.call(&mut w, ALLOCATE, &[&udp_transport(), &v6]).code, Some(440));
    let unknown = stun_types::attribute::RawAttribute::new(0x7fff.into(), &[1, 2, 3, 4]);
    let answer = c.call(&mut w, ALLOCATE, &[&udp_transport(), &unknown]);
    assert_eq!(answer.code, Some(420));
    let listed = answer.attribute::<stun_types::attribute::UnknownAttributes>().unwrap();
    assert!(listed.has_attribute(0x7fff.into()));
    let reserve = turn_types::attribute::EvenPort::new(true);
    assert_eq!(c.call(&mut w, ALLOCATE, &[&udp_transport(), &reserve]).code, Some(508));
    // Dual allocation: IPv4 granted, IPv6 refused inside the success.
    let dual = turn_types::attribute::AdditionalAddressFamily::new(stun_types::AddressFamily::IPV6);
    let answer = c.call(&mut w, ALLOCATE, &[&udp_transport(), &dual]);
    assert!(answer.is_success());
    let refused = answer.attribute::<turn_types::attribute::AddressErrorCode>().unwrap();
    assert_eq!((refused.family(), refused.error().code()), (stun_types::AddressFamily::IPV6, 440));
    // An unknown method: 400.
    let bytes = c.request(Method::new(0x0fe), &[]);
    assert_eq!(Answer::parse(&w.raw(c.from, &bytes)[0]).code, Some(400));
    // Even ports when asked.
    let mut e = RawClient::minted(&w, udp(2, 2), "alpha");
    let answer = e.call(&mut w, ALLOCATE, &[&udp_transport(), &turn_types::attribute::EvenPort::new(false)]);
    assert_eq!(answer.attribute::<XorRelayedAddress>().unwrap().addr(answer.transaction()).port() % 2, 0);
}

#[test]
fn quotas_per_peer_in_total_and_of_ports() {
    let mut w = World::new(RelayConfig { max_allocations_per_peer: 2, max_allocations: 3, ..config() }, &["a", "b"]);
    allocated(&mut w, udp(1, 1), "a");
    allocated(&mut w, udp(1, 2), "a");
    let mut third = RawClient::minted(&w, udp(1, 3), "a");
    assert_eq!(third.call(&mut w, ALLOCATE, &[&udp_transport()]).code, Some(486));
    allocated(&mut w, udp(2, 1), "b");
    let mut full = RawClient::minted(&w, udp(2, 2), "b");
    assert_eq!(full.call(&mut w, ALLOCATE, &[&udp_transport()]).code, Some(508));
    assert_eq!(w.refusals(refusal::QUOTA), 2);

    let mut w = World::new(RelayConfig { ports: (60_000, 60_001), ..config() }, &["a", "b"]);
    allocated(&mut w, udp(1, 1), "a");
    allocated(&mut w, udp(2, 1), "b");
    let mut no_port = RawClient::minted(&w, udp(2, 2), "b");
    let answer = no_port.call(&mut w, ALLOCATE, &[&udp_transport()]);
    assert_eq!((answer.code, answer.reason.as_str()), (Some(508), "no relayed port free"));
}

#[test]
fn only_the_relays_own_address_can_be_permitted_or_bound() {
    let mut w = World::new(config(), &["a"]);
    let (mut c, _) = allocated(&mut w, udp(1, 1), "a");
    for outside in ["192.0.2.99", "203.0.113.2", "127.0.0.1", "0.0.0.0"] {
        let answer = permit(&mut w, &mut c, outside.parse().unwrap());
        assert_eq!((answer.code, answer.signed), (Some(403), true), "{outside}");
    }
    let v6 = permit(&mut w, &mut c, "2001:db8::1".parse().unwrap());
    assert_eq!(v6.code, Some(443));
    // Several addresses in one request: one outside refuses it all.
    let both = c.call(
        &mut w,
        CREATE_PERMISSION,
        &[&XorPeerAddress::new(SocketAddr::new(RELAY_IP, 1), 0.into()), &XorPeerAddress::new(udp(9, 9), 0.into())],
    );
    assert_eq!(both.code, Some(403));
    let channel = ChannelNumber::new(0x4000);
    let answer = c.call(&mut w, CHANNEL_BIND, &[&channel, &XorPeerAddress::new(udp(9, 9), 0.into())]);
    assert_eq!(answer.code, Some(403));
    assert_eq!(w.refusals(refusal::PEER_NOT_ALLOWED), 6);
    assert!(permit(&mut w, &mut c, RELAY_IP).is_success());
    // Data for an outside address is dropped even with a permission.
    assert!(w.raw(c.from, &send_indication(udp(9, 9), b"out")).is_empty());
    assert_eq!(w.refusals(refusal::PEER_NOT_ALLOWED), 7);
}

#[test]
fn channel_bind_rules() {
    let mut w = World::new(config(), &["a"]);
    let (mut c, _) = allocated(&mut w, udp(1, 1), "a");
    let peer = |port| XorPeerAddress::new(SocketAddr::new(RELAY_IP, port), 0.into());
    for bad in [0x3fff, 0x5000, 0xffff] {
        assert_eq!(c.call(&mut w, CHANNEL_BIND, &[&ChannelNumber::new(bad), &peer(1)]).code, Some(400), "{bad:#x}");
    }
    assert_eq!(c.call(&mut w, CHANNEL_BIND, &[&ChannelNumber::new(0x4000)]).code, Some(400));
    assert!(c.call(&mut w, CHANNEL_BIND, &[&ChannelNumber::new(0x4000), &peer(1)]).is_success());
    assert!(c.call(&mut w, CHANNEL_BIND, &[&ChannelNumber::new(0x4000), &peer(1)]).is_success(), "refresh");
    assert_eq!(c.call(&mut w, CHANNEL_BIND, &[&ChannelNumber::new(0x4000), &peer(2)]).code, Some(400));
    assert_eq!(c.call(&mut w, CHANNEL_BIND, &[&ChannelNumber::new(0x4001), &peer(1)]).code, Some(400));
    for i in 1..64 {
        assert!(c.call(&mut w, CHANNEL_BIND, &[&ChannelNumber::new(0x4000 + i), &peer(100 + i)]).is_success());
    }
    assert_eq!(c.call(&mut w, CHANNEL_BIND, &[&ChannelNumber::new(0x4fff), &peer(9)]).code, Some(508));
    // Channels expire after 10 minutes, and the numbers are free again.
    w.advance(Duration::from_secs(601));
    let mut c2 = RawClient::minted(&w, c.from, "a");
    c2.nonce = None;
    // The allocation itself expired too (600 s); a new one binds afresh.
    assert_eq!(c2.call(&mut w, CHANNEL_BIND, &[&ChannelNumber::new(0x4fff), &peer(9)]).code, Some(437));
    assert_eq!(w.relay.stats().allocations, 0);
    assert_eq!(w.relay.poll_timeout(), None);
}

#[test]
fn data_reaches_only_live_allocations_that_permit_the_sender() {
    let mut w = World::new(config(), &["a", "b"]);
    let (mut a, ra) = allocated(&mut w, udp(1, 1), "a");
    let (mut b, rb) = allocated(&mut w, udp(2, 2), "b");
    // Nobody has a permission yet.
    assert!(w.raw(a.from, &send_indication(rb, b"x")).is_empty());
    assert_eq!(w.refusals(refusal::NO_PERMISSION), 1);
    assert!(permit(&mut w, &mut a, RELAY_IP).is_success());
    // b has not permitted the relay's address: still nothing.
    assert!(w.raw(a.from, &send_indication(rb, b"x")).is_empty());
    assert_eq!(w.refusals(refusal::NO_PERMISSION), 2);
    assert!(permit(&mut w, &mut b, RELAY_IP).is_success());
    // A port of the relay that is no allocation, and a's own address.
    for nobody in [SocketAddr::new(RELAY_IP, 50_099), SocketAddr::new(RELAY_IP, 3478), ra] {
        assert!(w.raw(a.from, &send_indication(nobody, b"x")).is_empty(), "{nobody}");
    }
    assert_eq!(w.refusals(refusal::NO_PEER), 3);
    // Now it flows, as a Data indication from a's relayed address.
    w.relay.handle_datagram(a.from, &send_indication(rb, b"hi b"), w.now, w.unix, &w.authz);
    let Some(RelayOutput::Datagram { to, bytes }) = w.relay.poll_output() else { panic!("nothing relayed") };
    assert_eq!(to, b.from);
    let msg = Message::from_bytes(&bytes).unwrap();
    assert!(msg.has_class(MessageClass::Indication) && msg.has_method(turn_types::message::DATA));
    assert_eq!(msg.attribute::<XorPeerAddress>().unwrap().addr(msg.transaction_id()), ra);
    assert_eq!(msg.attribute::<Data>().unwrap().data(), b"hi b");
    assert_eq!(w.relay.poll_output(), None);
    // From a client without an allocation: dropped.
    assert!(w.raw(udp(3, 3), &send_indication(rb, b"x")).is_empty());
    assert_eq!(w.refusals(refusal::NO_ALLOCATION), 1);
    // ChannelData on a channel never bound: dropped.
    let mut cd = vec![0; 8];
    turn_types::channel::ChannelData::new(0x4000, b"abcd").write_into_unchecked(&mut cd);
    assert!(w.raw(a.from, &cd).is_empty());
    assert_eq!(w.refusals(refusal::NO_CHANNEL), 1);
    // Permissions expire after 5 minutes unless refreshed.
    w.advance(Duration::from_secs(301));
    assert!(w.raw(a.from, &send_indication(rb, b"late")).is_empty());
    assert_eq!(w.refusals(refusal::NO_PERMISSION), 3);
    let _ = b;
}

#[test]
fn refresh_extends_and_lifetime_zero_deletes() {
    let mut w = World::new(config(), &["a"]);
    let (mut c, relayed) = allocated(&mut w, udp(1, 1), "a");
    w.advance(Duration::from_secs(500));
    assert_eq!(c.call(&mut w, REFRESH, &[&Lifetime::new(1200)]).attribute::<Lifetime>().unwrap().seconds(), 1200);
    w.advance(Duration::from_secs(1100));
    assert_eq!(w.relay.stats().allocations, 1, "extended past the first 600 s");
    let answer = c.call(&mut w, REFRESH, &[&Lifetime::new(0)]);
    assert_eq!(answer.attribute::<Lifetime>().unwrap().seconds(), 0);
    assert_eq!(w.relay.stats().allocations, 0);
    // Its port can be had again (after the others in the range).
    let (_, again) = allocated(&mut w, udp(1, 1), "a");
    assert_ne!(again, relayed);
}

#[test]
fn revoked_peers_lose_their_allocations_at_once() {
    let mut w = World::new(config(), &["a", "b"]);
    let (mut a, ra) = allocated(&mut w, udp(1, 1), "a");
    let (mut b, rb) = allocated(&mut w, udp(2, 2), "b");
    let (_, rb2) = allocated(&mut w, udp(2, 3), "b");
    for c in [&mut a, &mut b] {
        assert!(permit(&mut w, c, RELAY_IP).is_success());
    }
    assert_eq!(w.raw(a.from, &send_indication(rb, b"1")).len(), 0);
    assert_eq!(w.relay.stats().packets_relayed, 1);

    w.relay.revoke("b");
    assert_eq!(w.relay.stats().allocations, 1);
    for gone in [rb, rb2] {
        assert!(w.raw(a.from, &send_indication(gone, b"2")).is_empty());
    }
    assert!(w.raw(b.from, &send_indication(ra, b"3")).is_empty());
    assert_eq!(w.relay.stats().packets_relayed, 1);
    assert_eq!(b.call(&mut w, REFRESH, &[]).code, Some(437));

    // The registry stops authorizing a: its allocation goes too, and its
    // requests get 403.
    w.authz.remove("a");
    w.relay.handle_authorization_changed(&w.authz);
    assert_eq!(w.relay.stats().allocations, 0);
    assert_eq!(a.call(&mut w, REFRESH, &[]).code, Some(403));
    // A peer losing authorization between calls is caught at its next
    // request even before the registry says so.
    w.authz.remove("b");
    assert_eq!(b.call(&mut w, ALLOCATE, &[&udp_transport()]).code, Some(403));
}

#[test]
fn a_flood_is_capped_while_another_pair_keeps_flowing() {
    let rate = Rate::new(10_000.0, 20_000.0);
    let config = RelayConfig { allocation_rate: rate, total_rate: Rate::new(100_000.0, 100_000.0), ..config() };
    let mut w = World::new(config, &["a", "b", "c", "d"]);
    let mut clients = Vec::new();
    for (i, peer) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let (mut c, relayed) = allocated(&mut w, udp(i as u8 + 1, 1), peer);
        assert!(permit(&mut w, &mut c, RELAY_IP).is_success());
        clients.push((c, relayed));
    }
    let (rb, rd) = (clients[1].1, clients[3].1);
    let chunk = vec![0u8; 1000];
    let (mut flood_through, mut calm_through) = (0, 0);
    // 5 seconds: a sends 100 kB/s to b, c sends 5 kB/s to d.
    for tick in 0..500 {
        w.now += Duration::from_millis(10);
        for _ in 0..1 {
            w.relay.handle_datagram(clients[0].0.from, &send_indication(rb, &chunk), w.now, w.unix, &w.authz);
        }
        if tick % 20 == 0 {
            w.relay.handle_datagram(clients[2].0.from, &send_indication(rd, &chunk[..100]), w.now, w.unix, &w.authz);
        }
        while let Some(output) = w.relay.poll_output() {
            match output {
                RelayOutput::Datagram { to, .. } if to == clients[1].0.from => flood_through += 1000,
                RelayOutput::Datagram { to, .. } if to == clients[3].0.from => calm_through += 100,
                other => panic!("{other:?}"),
            }
        }
    }
    // Burst 20 kB plus 10 kB/s for 5 s.
    assert!((65_000..=71_000).contains(&flood_through), "{flood_through}");
    assert_eq!(calm_through, 25 * 100);
    assert!(w.refusals(refusal::RATE_LIMITED) >= 400);
}

#[test]
fn the_total_budget_caps_all_allocations_together() {
    let config = RelayConfig { total_rate: Rate::new(1000.0, 1000.0), ..config() };
    let mut w = World::new(config, &["a", "b"]);
    let (mut a, _) = allocated(&mut w, udp(1, 1), "a");
    let (mut b, rb) = allocated(&mut w, udp(2, 2), "b");
    for c in [&mut a, &mut b] {
        assert!(permit(&mut w, c, RELAY_IP).is_success());
    }
    for _ in 0..20 {
        w.raw(a.from, &send_indication(rb, &[0; 100]));
    }
    assert_eq!(w.relay.stats().bytes_relayed, 1000);
}

#[test]
fn stale_and_foreign_nonces_get_438_with_a_fresh_one() {
    let mut w = World::new(config(), &["a"]);
    let (mut c, _) = allocated(&mut w, udp(1, 1), "a");
    let old = c.nonce.clone().unwrap();
    w.unix += 601;
    let bytes = c.request(REFRESH, &[]);
    let stale = Answer::parse(&w.raw(c.from, &bytes)[0]);
    assert_eq!((stale.code, stale.signed), (Some(438), false));
    assert_ne!(stale.nonce.as_deref(), Some(old.as_str()));
    assert_eq!(stale.attribute::<Realm>().unwrap().realm(), REALM);
    c.nonce = stale.nonce;
    assert!(c.call(&mut w, REFRESH, &[]).is_success());
    // Another client's nonce is no good here.
    let mut other = RawClient::minted(&w, udp(2, 2), "a");
    other.nonce = c.nonce.clone();
    let bytes = other.request(ALLOCATE, &[&udp_transport()]);
    assert_eq!(Answer::parse(&w.raw(other.from, &bytes)[0]).code, Some(438));
    assert_eq!(w.refusals(refusal::STALE_NONCE), 2);
}

#[test]
fn an_expired_allocation_is_gone_even_before_handle_timeout() {
    let mut w = World::new(config(), &["a"]);
    let (mut c, _) = allocated(&mut w, udp(1, 1), "a");
    // Time passes without handle_timeout being called.
    w.now += Duration::from_secs(601);
    assert_eq!(c.call(&mut w, REFRESH, &[]).code, Some(437));
    assert_eq!(w.relay.stats().allocations, 0);
    assert!(c.call(&mut w, ALLOCATE, &[&udp_transport()]).is_success());
}

#[test]
fn timeouts_expire_allocations_and_poll_timeout_says_when() {
    let mut w = World::new(config(), &["a"]);
    assert_eq!(w.relay.poll_timeout(), None);
    let (mut c, _) = allocated(&mut w, udp(1, 1), "a");
    assert_eq!(w.relay.poll_timeout(), Some(w.now + Duration::from_secs(600)));
    assert!(permit(&mut w, &mut c, RELAY_IP).is_success());
    assert_eq!(w.relay.poll_timeout(), Some(w.now + Duration::from_secs(300)));
    w.advance(Duration::from_secs(300));
    assert_eq!(w.relay.poll_timeout(), Some(w.t0 + Duration::from_secs(600)));
    w.advance(Duration::from_secs(300));
    assert_eq!((w.relay.stats().allocations, w.relay.poll_timeout()), (0, None));
}
