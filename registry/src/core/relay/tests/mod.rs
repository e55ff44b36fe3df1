//! Tests of the relay in simulated time: real TURN clients
//! (turn-client-proto) and hand-made messages (stun-types) against one
//! [`Relay`], with every output checked to go to a client that sent to it.

mod abuse;
mod interop;
mod refusals;

use super::*;
use std::cell::RefCell;
use std::collections::HashSet;
use stun_types::attribute::{ErrorCode, MessageIntegrity, Nonce, Realm, Username};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType, MessageWriteVec, Method,
};
use stun_types::prelude::*;
use turn_client_proto::api::{TurnClientApi, TurnConfig, TurnEvent, TurnRecvRet};
use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::types::TransportType;
use turn_client_proto::tcp::TurnClientTcp;
use turn_client_proto::types::TurnCredentials;
use turn_client_proto::udp::TurnClientUdp;

turn_client_proto::impl_client!(pub(super) AnyClient, (Udp, TurnClientUdp), (Tcp, TurnClientTcp));

pub(super) const RELAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
/// Where clients reach the relay (RELAY_PORT).
pub(super) const SERVER: SocketAddr = SocketAddr::new(RELAY_IP, 3478);
pub(super) const UNIX0: u64 = 1_800_000_000;
pub(super) const REALM: &str = "mesh.test";
pub(super) const SECRET: &[u8] = b"relay-test-secret";

/// The registry's authorization, changeable during a test.
pub(super) struct Allow(RefCell<HashSet<String>>);

impl Allow {
    pub fn of(peers: &[&str]) -> Self {
        Allow(RefCell::new(peers.iter().map(|p| p.to_string()).collect()))
    }
    pub fn remove(&self, peer: &str) {
        self.0.borrow_mut().remove(peer);
    }
}

impl Authorize for Allow {
    fn is_authorized(&self, peer_id: &str) -> bool {
        self.0.borrow().contains(peer_id)
    }
}

pub(super) fn config() -> RelayConfig {
    RelayConfig { ports: (50_000, 50_099), ..RelayConfig::new(REALM, SECRET, RELAY_IP) }
}

/// How a peer reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    Udp,
    Stream(u64),
}

/// One TURN client and what it got.
pub(super) struct Peer {
    pub client: AnyClient,
    pub local: SocketAddr,
    pub way: Way,
    /// Data relayed to it: (from, bytes).
    pub received: Vec<(SocketAddr, Vec<u8>)>,
    pub events: Vec<TurnEvent>,
    /// Sizes its stream bytes are cut into on the way to the relay (cycled).
    pub chunking: Vec<usize>,
    /// Every stream byte the relay wrote to it, as written.
    pub raw_stream: Vec<u8>,
    /// The relay's stream bytes, cut into frames on the way to the client.
    framer: framing::StreamBuffer,
    chunk_at: usize,
}

impl Peer {
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.events.iter().find_map(|e| match e {
            TurnEvent::AllocationCreated(_, addr) => Some(*addr),
            _ => None,
        })
    }
    pub fn failed(&self) -> bool {
        self.events.iter().any(|e| matches!(e, TurnEvent::AllocationCreateFailed(_)))
    }
}

/// A relay, its clients and the clock.
pub(super) struct World {
    pub relay: Relay,
    pub authz: Allow,
    pub t0: Instant,
    pub now: Instant,
    pub unix: u64,
    pub peers: Vec<Peer>,
    /// Streams the relay asked to close.
    pub closed: Vec<u64>,
    /// Outputs for hand-made clients other than the one calling.
    pub elsewhere: Vec<RelayOutput>,
    /// Every message a client sent and every one the relay sent back, as
    /// a corpus for mutation.
    pub wire_log: Vec<Vec<u8>>,
    next_conn: u64,
}

impl World {
    pub fn new(config: RelayConfig, allowed: &[&str]) -> Self {
        let t0 = Instant::now();
        World {
            relay: Relay::new(config, t0),
            authz: Allow::of(allowed),
            t0,
            now: t0,
            unix: UNIX0,
            peers: Vec::new(),
            closed: Vec::new(),
            elsewhere: Vec::new(),
            wire_log: Vec::new(),
            next_conn: 1,
        }
    }

    fn client_time(&self) -> turn_client_proto::stun::Instant {
        turn_client_proto::stun::Instant::from_nanos((self.now - self.t0).as_nanos() as i64)
    }

    /// A peer with credentials the relay minted for `peer_id`.
    pub fn add_peer(&mut self, peer_id: &str, way: Way) -> usize {
        let (user, pass) = self.relay.credentials(peer_id, self.unix);
        self.add_peer_with(&user, &pass, way)
    }

    pub fn add_peer_with(&mut self, user: &str, pass: &str, way: Way) -> usize {
        let n = self.peers.len() as u8;
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + n)), 40_000 + u16::from(n));
        let config = TurnConfig::new(TurnCredentials::new(user, pass));
        let (client, way) = match way {
            Way::Udp => (AnyClient::Udp(TurnClientUdp::allocate(local, SERVER, config)), Way::Udp),
            Way::Stream(_) => {
                let conn = self.next_conn;
                self.next_conn += 1;
                self.relay.handle_stream_opened(conn, local);
                (AnyClient::Tcp(TurnClientTcp::allocate(local, SERVER, config)), Way::Stream(conn))
            }
        };
        self.peers.push(Peer {
            client,
            local,
            way,
            received: Vec::new(),
            events: Vec::new(),
            chunking: vec![usize::MAX],
            raw_stream: Vec::new(),
            framer: framing::StreamBuffer::default(),
            chunk_at: 0,
        });
        self.settle();
        self.peers.len() - 1
    }

    /// Moves everything until nobody has anything more to say.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
            let t = self.client_time();
            let mut moved = false;
            for i in 0..self.peers.len() {
                let _ = self.peers[i].client.poll(t);
                while let Some(transmit) = self.peers[i].client.poll_transmit(t) {
                    moved = true;
                    assert_eq!(transmit.to, SERVER, "clients only talk to the relay");
                    let bytes = transmit.data.to_vec();
                    self.deliver_from(i, &bytes);
                    self.wire_log.push(bytes);
                }
                while let Some(event) = self.peers[i].client.poll_event() {
                    self.peers[i].events.push(event);
                }
            }
            while let Some(output) = self.relay.poll_output() {
                moved = true;
                if let RelayOutput::Datagram { bytes, .. } | RelayOutput::Stream { bytes, .. } = &output {
                    self.wire_log.push(bytes.clone());
                }
                self.deliver_to(output);
            }
            if !moved {
                return;
            }
        }
        panic!("the relay and its clients never settle");
    }

    /// Bytes peer `i` sends to the relay, cut as its chunking says.
    pub fn deliver_from(&mut self, i: usize, bytes: &[u8]) {
        let (now, unix) = (self.now, self.unix);
        match self.peers[i].way {
            Way::Udp => self.relay.handle_datagram(self.peers[i].local, bytes, now, unix, &self.authz),
            Way::Stream(conn) => {
                let mut at = 0;
                while at < bytes.len() {
                    let peer = &mut self.peers[i];
                    let n = peer.chunking[peer.chunk_at % peer.chunking.len()].clamp(1, bytes.len() - at);
                    peer.chunk_at += 1;
                    self.relay.handle_stream_data(conn, &bytes[at..at + n], now, unix, &self.authz);
                    at += n;
                }
            }
        }
    }

    fn deliver_to(&mut self, output: RelayOutput) {
        let t = self.client_time();
        match output {
            RelayOutput::Datagram { to, bytes } => {
                let i = self
                    .peers
                    .iter()
                    .position(|p| p.way == Way::Udp && p.local == to)
                    .unwrap_or_else(|| panic!("the relay sent a datagram to {to}, which never sent to it"));
                let peer = &mut self.peers[i];
                let transmit = Transmit::new(bytes.as_slice(), TransportType::Udp, SERVER, peer.local);
                if let TurnRecvRet::PeerData(data) = peer.client.recv(transmit, t) {
                    peer.received.push((data.peer, data.data().to_vec()));
                }
            }
            RelayOutput::Stream { conn, bytes } => {
                let i = self
                    .peers
                    .iter()
                    .position(|p| p.way == Way::Stream(conn))
                    .unwrap_or_else(|| panic!("the relay wrote to stream {conn}, which is nobody's"));
                let peer = &mut self.peers[i];
                peer.raw_stream.extend_from_slice(&bytes);
                // turn-client-proto 0.7.3 does not skip the padding RFC 8656
                // §12.5 puts after ChannelData on streams: the client gets
                // whole frames, cut by the relay's own framing.
                let mut frames = Vec::new();
                framing::feed(&mut peer.framer, &bytes, |_, f| frames.push(f.to_vec())).unwrap_or_else(|()| {
                    panic!("the relay writes well-framed streams: {bytes:02x?} after {:02x?}", peer.framer)
                });
                for frame in frames {
                    let transmit = Transmit::new(frame.as_slice(), TransportType::Tcp, SERVER, peer.local);
                    if let TurnRecvRet::PeerData(data) = peer.client.recv(transmit, t) {
                        peer.received.push((data.peer, data.data().to_vec()));
                    }
                    while let Some(data) = peer.client.poll_recv(t) {
                        peer.received.push((data.peer, data.data().to_vec()));
                    }
                }
            }
            RelayOutput::CloseStream { conn } => self.closed.push(conn),
        }
    }

    /// Lets half a second pass in small steps: turn-client-proto sends at
    /// most one request per 50 ms.
    pub fn settle(&mut self) {
        self.advance_by(Duration::from_millis(500), Duration::from_millis(50));
    }

    /// Lets `d` pass in steps of at most a second, with timers firing.
    pub fn advance(&mut self, d: Duration) {
        self.advance_by(d, Duration::from_secs(1));
    }

    fn advance_by(&mut self, d: Duration, max_step: Duration) {
        self.pump();
        let end = self.now + d;
        while self.now < end {
            let step = max_step.min(end - self.now);
            self.now += step;
            self.unix = UNIX0 + (self.now - self.t0).as_secs();
            if self.relay.poll_timeout().is_some_and(|at| at <= self.now) {
                self.relay.handle_timeout(self.now);
            }
            let t = self.client_time();
            for peer in &mut self.peers {
                let _ = peer.client.poll(t);
            }
            self.pump();
        }
    }

    pub fn permit(&mut self, i: usize, ip: IpAddr) {
        let t = self.client_time();
        self.peers[i].client.create_permission(TransportType::Udp, ip, t).unwrap();
        self.settle();
    }

    pub fn bind(&mut self, i: usize, peer: SocketAddr) {
        let t = self.client_time();
        self.peers[i].client.bind_channel(TransportType::Udp, peer, t).unwrap();
        self.settle();
    }

    /// Peer `i` sends `data` to `to` through its allocation.
    pub fn send(&mut self, i: usize, to: SocketAddr, data: &[u8]) {
        let t = self.client_time();
        let built = self.peers[i].client.send_to(TransportType::Udp, to, data.to_vec(), t).unwrap();
        if let Some(built) = built {
            let transmit = built.build();
            self.deliver_from(i, &transmit.data);
            self.wire_log.push(transmit.data);
        }
        self.pump();
    }

    pub fn refusals(&self, reason: &str) -> u64 {
        self.relay.stats().refusals.get(reason).copied().unwrap_or(0)
    }

    /// Calls the relay directly with hand-made bytes from `from`; returns
    /// what it answered there, asserting nothing went anywhere else.
    pub fn raw(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.relay.handle_datagram(from, bytes, self.now, self.unix, &self.authz);
        let mut answers = Vec::new();
        while let Some(output) = self.relay.poll_output() {
            match output {
                RelayOutput::Datagram { to, bytes } if to == from => answers.push(bytes),
                RelayOutput::Datagram { to, .. } if !self.peers.iter().any(|p| p.way == Way::Udp && p.local == to) => {
                    self.elsewhere.push(output)
                }
                other => self.deliver_to(other),
            }
        }
        self.pump();
        answers
    }
}

/// A client made by hand: any request, any credentials.
pub(super) struct RawClient {
    pub from: SocketAddr,
    pub user: String,
    pub pass: String,
    pub nonce: Option<String>,
    next_tid: u128,
}

impl RawClient {
    pub fn new(from: SocketAddr, user: &str, pass: &str) -> Self {
        RawClient { from, user: user.into(), pass: pass.into(), nonce: None, next_tid: 1 }
    }

    pub fn minted(world: &World, from: SocketAddr, peer_id: &str) -> Self {
        let (user, pass) = world.relay.credentials(peer_id, world.unix);
        RawClient::new(from, &user, &pass)
    }

    /// A request with `attrs`, signed when a nonce is known.
    pub fn request(&mut self, method: Method, attrs: &[&dyn AttributeWrite]) -> Vec<u8> {
        self.next_tid += 1;
        let mtype = MessageType::from_class_method(MessageClass::Request, method);
        let mut msg = Message::builder(mtype, self.next_tid.into(), MessageWriteVec::new());
        for attr in attrs {
            msg.add_attribute(*attr).unwrap();
        }
        if let Some(nonce) = &self.nonce {
            msg.add_attribute(&Username::new(&self.user).unwrap()).unwrap();
            msg.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
            msg.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
            let creds = LongTermKeyCredentials::new(self.user.clone(), self.pass.clone(), REALM.into());
            msg.add_message_integrity(&creds.into(), IntegrityAlgorithm::Sha1).unwrap();
        }
        msg.add_fingerprint().unwrap();
        msg.finish()
    }

    /// Sends a request, doing the 401/438 dance once; the final answer.
    pub fn call(&mut self, world: &mut World, method: Method, attrs: &[&dyn AttributeWrite]) -> Answer {
        for _ in 0..3 {
            let bytes = self.request(method, attrs);
            let answers = world.raw(self.from, &bytes);
            assert_eq!(answers.len(), 1, "one answer per request");
            let answer = Answer::parse(&answers[0]);
            if matches!(answer.code, Some(401) | Some(438)) && answer.nonce.as_deref() != self.nonce.as_deref() {
                self.nonce = answer.nonce.clone();
                continue;
            }
            return answer;
        }
        panic!("no end to the challenges");
    }
}

/// A response, as far as the tests look at it.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    pub bytes: Vec<u8>,
    pub class: MessageClass,
    pub code: Option<u16>,
    pub reason: String,
    pub nonce: Option<String>,
    pub signed: bool,
}

impl Answer {
    pub fn parse(bytes: &[u8]) -> Answer {
        let msg = Message::from_bytes(bytes).expect("the relay writes valid STUN");
        let error = msg.attribute::<ErrorCode>().ok();
        Answer {
            bytes: bytes.to_vec(),
            class: msg.class(),
            code: error.as_ref().map(|e| e.code()),
            reason: error.map(|e| e.reason().to_owned()).unwrap_or_default(),
            nonce: msg.attribute::<Nonce>().ok().map(|n| n.nonce().to_owned()),
            signed: msg.has_attribute(MessageIntegrity::TYPE),
        }
    }

    pub fn is_success(&self) -> bool {
        self.class == MessageClass::Success
    }

    pub fn attribute<A: for<'a> AttributeFromRaw<'a> + AttributeStaticType>(&self) -> Option<A> {
        let msg = Message::from_bytes(&self.bytes).ok()?;
        msg.attribute::<A>().ok()
    }

    pub fn transaction(&self) -> stun_types::message::TransactionId {
        Message::from_bytes(&self.bytes).unwrap().transaction_id()
    }
}

pub(super) fn udp(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), port)
}
