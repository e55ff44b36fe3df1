//! The simulation harness of the core's tests (compiled for tests only):
//! virtual time, a datagram network with delay, loss, blocked pairs,
//! bursty delivery and NATs, a STUN server, and a registry that answers
//! `register`, relays frames and announces `peer_left`. Link, mesh and node
//! tests all run on it, so a behaviour is simulated one way everywhere.
//!
//! Everything is deterministic: time only moves when the harness advances
//! it to the next due datagram, frame or deadline, and loss draws from a
//! seeded generator.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chatixia_protocol::ipc::{Command, ErrorEvent, Event};
use chatixia_protocol::mesh::MeshMessage;
use chatixia_protocol::signaling::{
    Envelope, IceCandidatePayload, MeshStatusPayload, PeerLeftPayload, PeerListPayload, types,
};
use serde_json::Value;

use super::ipc::AgentId;

/// The origin of virtual time: the one real clock reading of the core's
/// tests. Any instant would do; `Instant` has no other constructor.
#[allow(clippy::disallowed_methods)]
pub fn start() -> Instant {
    Instant::now()
}

/// Shows the cores' log lines when `RUST_LOG` asks for them
/// (`RUST_LOG=debug cargo test … -- --nocapture`).
#[allow(clippy::disallowed_methods)]
pub fn init_logging() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = env_logger::Builder::new().parse_filters(&filter).is_test(true).try_init();
    }
}

/// Uniform in [0, 1) from a xorshift64* state; plenty for simulated loss.
fn next_random(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let x = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// One datagram on its way.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub at: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub contents: Vec<u8>,
}

/// How a simulated NAT maps and filters, as Linux does it (see the NAT lab
/// in `tests/` for the real thing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping that keeps the port, filtering by
    /// remote address and port ("port-restricted cone", plain SNAT).
    Cone,
    /// A new external port per destination ("symmetric").
    Symmetric,
}

struct Nat {
    public: IpAddr,
    kind: NatKind,
    /// (inside address, destination for symmetric mappings) → external port.
    mappings: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// External port → inside address.
    inside: HashMap<u16, SocketAddr>,
    /// (external port, remote) pairs that may send in.
    allowed: HashSet<(u16, SocketAddr)>,
    next_port: u16,
}

/// A network of datagrams with a fixed one-way delay.
pub struct Network {
    pub delay: Duration,
    /// Chance that a datagram is lost, 0 to 1.
    pub loss: f64,
    queue: VecDeque<Datagram>,
    /// Address pairs (either direction) whose datagrams are lost.
    blocked: HashSet<(IpAddr, IpAddr)>,
    /// NATs by the private address of the one host behind each.
    nats: HashMap<IpAddr, Nat>,
    rng: u64,
    pub lost: u64,
}

impl Network {
    pub fn new(delay: Duration) -> Network {
        Network {
            delay,
            loss: 0.0,
            queue: VecDeque::new(),
            blocked: HashSet::new(),
            nats: HashMap::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            lost: 0,
        }
    }

    /// Puts the host at `private` behind a NAT whose outside address is
    /// `public`.
    pub fn add_nat(&mut self, private: IpAddr, public: IpAddr, kind: NatKind) {
        let nat = Nat {
            public,
            kind,
            mappings: HashMap::new(),
            inside: HashMap::new(),
            allowed: HashSet::new(),
            next_port: 40_000,
        };
        self.nats.insert(private, nat);
    }

    /// The NAT in front of `private` forgets every mapping and numbers new
    /// ones from another range, as a router does when it reboots or its
    /// conntrack table is flushed: packets to the old mappings are dropped.
    pub fn rebind(&mut self, private: IpAddr) {
        if let Some(nat) = self.nats.get_mut(&private) {
            nat.mappings.clear();
            nat.inside.clear();
            nat.allowed.clear();
            nat.next_port = nat.next_port.wrapping_add(1000).max(20_000);
        }
    }

    pub fn block(&mut self, a: IpAddr, b: IpAddr) {
        self.blocked.insert((a, b));
    }

    pub fn unblock_all(&mut self) {
        self.blocked.clear();
    }

    fn is_blocked(&self, a: IpAddr, b: IpAddr) -> bool {
        self.blocked.contains(&(a, b)) || self.blocked.contains(&(b, a))
    }

    /// Sends a datagram; it arrives `delay` later unless lost. A sender
    /// behind a NAT is translated on the way out.
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, contents: Vec<u8>) {
        if self.loss > 0.0 && next_random(&mut self.rng) < self.loss {
            self.lost += 1;
            return;
        }
        let from = match self.nats.get_mut(&from.ip()) {
            Some(nat) => {
                let key = (from, (nat.kind == NatKind::Symmetric).then_some(to));
                let port = match nat.mappings.get(&key) {
                    Some(p) => *p,
                    None => {
                        let port = match nat.kind {
                            NatKind::Cone if !nat.inside.contains_key(&from.port()) => from.port(),
                            _ => {
                                nat.next_port += 1;
                                nat.next_port
                            }
                        };
                        nat.mappings.insert(key, port);
                        nat.inside.insert(port, from);
                        port
                    }
                };
                nat.allowed.insert((port, to));
                SocketAddr::new(nat.public, port)
            }
            None => from,
        };
        self.queue.push_back(Datagram { at: now + self.delay, from, to, contents });
    }

    /// When the next datagram is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.queue.front().map(|d| d.at)
    }

    /// The next datagram due by `now` that is delivered (translated to the
    /// inside address when it enters a NAT that lets it in).
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        while self.queue.front().is_some_and(|d| d.at <= now) {
            let mut d = self.queue.pop_front()?;
            if self.is_blocked(d.from.ip(), d.to.ip()) {
                continue;
            }
            // A private address behind a NAT is not routed from outside.
            if self.nats.contains_key(&d.to.ip()) {
                continue;
            }
            if let Some(nat) = self.nats.values().find(|n| n.public == d.to.ip()) {
                let port = d.to.port();
                match nat.inside.get(&port) {
                    Some(inside) if nat.allowed.contains(&(port, d.from)) => d.to = *inside,
                    _ => continue,
                }
            }
            return Some(d);
        }
        None
    }
}

/// What a simulated sidecar (a mesh core or a whole node core) produces.
#[derive(Debug)]
pub enum SimOutput {
    Transmit { destination: SocketAddr, contents: Vec<u8> },
    Signal(Envelope),
    Event { to: Option<AgentId>, event: Event },
}

/// A core the [`World`] can drive as a sidecar.
pub trait SimSidecar {
    fn handle_datagram(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: &[u8]);
    fn handle_frame(&mut self, text: &str, now: Instant);
    fn handle_registry_connected(&mut self, peer_id: &str, now: Instant);
    fn handle_registry_down(&mut self, now: Instant);
    fn handle_command(&mut self, agent: AgentId, cmd: Command, now: Instant);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Instant;
    fn poll_sim_output(&mut self) -> Option<SimOutput>;
}

/// One-way delay of simulated datagrams and of the simulated registry.
pub const NET_DELAY: Duration = Duration::from_micros(500);
pub const SIG_DELAY: Duration = Duration::from_millis(1);
/// The agent whose commands the world sends.
pub const AGENT: AgentId = 7;

/// The address of node `i` after `generation` restarts: a new port per
/// process, the same IP.
pub fn node_addr(i: usize, generation: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 10 + i as u8], 5000 + generation))
}

/// A STUN server on the simulated network: answers every Binding request
/// with the address it came from.
pub const STUN_SERVER: &str = "203.0.113.3:3478";
/// A TURN server on the simulated network (turn-server-proto, UDP), once
/// [`World::start_turn`] ran; its relayed addresses are on the same IP.
pub const TURN_SERVER: &str = "203.0.113.5:3478";
pub const TURN_USER: &str = "sim";
pub const TURN_PASSWORD: &str = "sim-password";
const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

pub struct Node<S> {
    pub id: String,
    pub core: S,
    pub addr: SocketAddr,
    /// The process runs (a killed one is neither driven nor reachable).
    pub up: bool,
    /// Its signaling WebSocket is open.
    pub ws: bool,
    pub events: Vec<(Option<AgentId>, Event)>,
    pub generation: u16,
}

struct Frame {
    at: Instant,
    to: String,
    text: String,
}

/// Makes the core of node `index` at `addr` after `generation` restarts.
pub type Factory<S> = Box<dyn Fn(usize, u16, SocketAddr, Instant) -> S>;

/// Sidecars wired in memory: the [`Network`], a STUN server, and a registry
/// that answers `register`, relays, and announces `peer_left`.
pub struct World<S> {
    pub nodes: Vec<Node<S>>,
    pub start: Instant,
    pub now: Instant,
    pub net: Network,
    frames: VecDeque<Frame>,
    registry_up: bool,
    /// Every relayed offer, as (from, to).
    pub offers: Vec<(String, String)>,
    /// Every `mesh_status` received, as (from, peers).
    pub statuses: Vec<(String, Vec<String>)>,
    /// Every `mesh_status` payload received, as (from, payload).
    pub status_payloads: Vec<(String, Value)>,
    /// Registers of these peers go unanswered.
    pub swallow_register: HashSet<String>,
    /// Every relayed `ice_candidate`, as (from, to, candidate line).
    pub candidates: Vec<(String, String, String)>,
    /// Feed a node every datagram due at once before draining it, as the
    /// shell does with what its socket holds.
    pub burst_delivery: bool,
    /// Binding requests the STUN server answered.
    pub stun_requests: usize,
    turn: Option<SimTurn>,
    make: Factory<S>,
}

/// The simulated TURN server and the relayed ports it handed out.
struct SimTurn {
    server: turn_server_proto::server::TurnServer,
    next_port: u16,
    /// Datagrams it received, for tests that count relayed traffic.
    received: usize,
}

impl<S: SimSidecar> World<S> {
    pub fn new(ids: &[&str], make: Factory<S>) -> World<S> {
        init_logging();
        let start = start();
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let addr = node_addr(i, 0);
                Node {
                    id: id.to_string(),
                    core: make(i, 0, addr, start),
                    addr,
                    up: true,
                    ws: false,
                    events: Vec::new(),
                    generation: 0,
                }
            })
            .collect();
        World {
            nodes,
            start,
            now: start,
            net: Network::new(NET_DELAY),
            frames: VecDeque::new(),
            registry_up: true,
            offers: Vec::new(),
            statuses: Vec::new(),
            status_payloads: Vec::new(),
            swallow_register: HashSet::new(),
            candidates: Vec::new(),
            burst_delivery: false,
            stun_requests: 0,
            turn: None,
            make,
        }
    }

    pub fn idx(&self, id: &str) -> usize {
        self.nodes.iter().position(|n| n.id == id).expect("node")
    }

    pub fn core(&mut self, id: &str) -> &mut S {
        let i = self.idx(id);
        &mut self.nodes[i].core
    }

    /// Moves everything `id` produced onto the wire, the registry or its
    /// event log.
    pub fn drain(&mut self, id: &str) {
        let i = self.idx(id);
        while let Some(out) = self.nodes[i].core.poll_sim_output() {
            match out {
                SimOutput::Transmit { destination, contents } => {
                    let from = self.nodes[i].addr;
                    self.net.send(self.now, from, destination, contents);
                }
                SimOutput::Signal(env) => {
                    assert!(self.nodes[i].ws && self.registry_up, "{id} signaled without a registry: {env:?}");
                    assert_eq!(env.peer_id, id);
                    self.registry_receive(env);
                }
                SimOutput::Event { to, event } => self.nodes[i].events.push((to, event)),
            }
        }
    }

    fn registry_receive(&mut self, env: Envelope) {
        let at = self.now + SIG_DELAY;
        match env.kind.as_str() {
            types::REGISTER => {
                if self.swallow_register.contains(&env.peer_id) {
                    return;
                }
                let peers: Vec<String> =
                    self.nodes.iter().filter(|n| n.ws && n.id != env.peer_id).map(|n| n.id.clone()).collect();
                let text = Envelope::from_registry(types::PEER_LIST, PeerListPayload { peers }).to_json();
                self.frames.push_back(Frame { at, to: env.peer_id.clone(), text });
            }
            types::OFFER | types::ANSWER | types::ICE_CANDIDATE => {
                let target = env.target_id.clone().expect("relayed frames have a target");
                if env.kind == types::OFFER {
                    self.offers.push((env.peer_id.clone(), target.clone()));
                }
                if env.kind == types::ICE_CANDIDATE {
                    let c: IceCandidatePayload = serde_json::from_value(env.payload.clone()).unwrap();
                    self.candidates.push((env.peer_id.clone(), target.clone(), c.candidate));
                }
                if self.nodes.iter().any(|n| n.id == target && n.ws) {
                    self.frames.push_back(Frame { at, to: target, text: env.to_json() });
                }
            }
            types::MESH_STATUS => {
                let p: MeshStatusPayload = serde_json::from_value(env.payload.clone()).unwrap();
                self.statuses.push((env.peer_id.clone(), p.peers));
                self.status_payloads.push((env.peer_id, env.payload));
            }
            other => panic!("unexpected frame {other}"),
        }
    }

    /// The sidecar's WebSocket comes up.
    pub fn connect(&mut self, id: &str) {
        let i = self.idx(id);
        assert!(self.registry_up);
        self.nodes[i].ws = true;
        let now = self.now;
        self.nodes[i].core.handle_registry_connected(id, now);
        self.drain(id);
    }

    /// Its WebSocket goes away; the registry tells the others if `announce`.
    pub fn disconnect_ws(&mut self, id: &str, announce: bool) {
        let i = self.idx(id);
        self.nodes[i].ws = false;
        if self.nodes[i].up {
            let now = self.now;
            self.nodes[i].core.handle_registry_down(now);
            self.drain(id);
        }
        if announce {
            let text = Envelope::from_registry(types::PEER_LEFT, PeerLeftPayload { peer_id: id.to_owned() }).to_json();
            for n in self.nodes.iter().filter(|n| n.ws) {
                self.frames.push_back(Frame { at: self.now + SIG_DELAY, to: n.id.clone(), text: text.clone() });
            }
        }
    }

    /// kill -9: no goodbye on any link.
    pub fn kill(&mut self, id: &str, announce: bool) {
        let i = self.idx(id);
        self.nodes[i].up = false;
        self.disconnect_ws(id, announce);
    }

    /// A fresh process with the same identity and a new UDP port.
    pub fn restart(&mut self, id: &str) {
        let i = self.idx(id);
        let now = self.now;
        let n = &mut self.nodes[i];
        n.generation += 1;
        n.addr = node_addr(i, n.generation);
        n.core = (self.make)(i, n.generation, n.addr, now);
        n.up = true;
        n.events.clear();
        self.connect(id);
    }

    pub fn registry_down(&mut self) {
        self.registry_up = false;
        self.frames.clear();
        let ids: Vec<String> = self.nodes.iter().filter(|n| n.ws).map(|n| n.id.clone()).collect();
        for id in ids {
            self.disconnect_ws(&id, false);
        }
    }

    pub fn registry_back(&mut self, ids: &[&str]) {
        self.registry_up = true;
        for id in ids {
            self.connect(id);
        }
    }

    pub fn command(&mut self, id: &str, cmd: Command) {
        let now = self.now;
        self.core(id).handle_command(AGENT, cmd, now);
        self.drain(id);
    }

    pub fn send(&mut self, from: &str, to: &str, kind: &str, payload: Value) {
        let message = MeshMessage::new(kind, "", payload);
        self.command(from, Command::Send { target_peer: to.into(), message });
    }

    /// Whose address `addr` is (its current one).
    fn owner(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.up && n.addr == addr)
    }

    /// Datagrams between nodes `a` and `b` are lost from now on, those in
    /// flight included.
    pub fn block(&mut self, a: &str, b: &str) {
        let (a, b) = (self.nodes[self.idx(a)].addr.ip(), self.nodes[self.idx(b)].addr.ip());
        self.net.block(a, b);
    }

    /// The STUN server's answer to a datagram sent to it, if it is a
    /// Binding request: a success with the XOR-MAPPED-ADDRESS it came from.
    fn stun_answer(&mut self, d: &Datagram) {
        let request = &d.contents;
        let is_binding_request = request.len() >= 20 && request[..2] == [0, 1] && request[4..8] == STUN_COOKIE;
        if !is_binding_request {
            return;
        }
        self.stun_requests += 1;
        let SocketAddr::V4(mapped) = d.from else { panic!("the simulated network is IPv4") };
        let mut reply = vec![0x01, 0x01, 0, 12];
        reply.extend_from_slice(&request[4..20]);
        reply.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
        reply.extend_from_slice(&(mapped.port() ^ 0x2112).to_be_bytes());
        reply.extend_from_slice(&(u32::from(*mapped.ip()) ^ 0x2112_A442).to_be_bytes());
        let server: SocketAddr = STUN_SERVER.parse().unwrap();
        self.net.send(self.now, server, d.from, reply);
    }

    /// Starts the TURN server at [`TURN_SERVER`] with one user.
    pub fn start_turn(&mut self) {
        use turn_server_proto::api::TurnServerApi;
        use turn_server_proto::types::TransportType;
        let addr: SocketAddr = TURN_SERVER.parse().unwrap();
        let mut server = turn_server_proto::server::TurnServer::new(TransportType::Udp, addr, "sim".into());
        server.add_user(TURN_USER.into(), TURN_PASSWORD.into());
        self.turn = Some(SimTurn { server, next_port: 50_000, received: 0 });
    }

    /// Datagrams the TURN server received (requests and relayed data).
    pub fn turn_received(&self) -> usize {
        self.turn.as_ref().map_or(0, |t| t.received)
    }

    /// Feeds a datagram for the TURN server's IP to it and sends what it
    /// answers.
    fn turn_receive(&mut self, d: Datagram) {
        use turn_server_proto::api::{TurnServerApi, TurnServerPollRet};
        use turn_server_proto::stun::agent::Transmit;
        use turn_server_proto::types::TransportType;
        let now = self.now;
        let t = turn_server_proto::types::Instant::from_nanos((now - self.start).as_nanos() as i64);
        let Some(turn) = self.turn.as_mut() else { return };
        turn.received += 1;
        let mut out = Vec::new();
        if let Some(build) = turn.server.recv(Transmit::new(&d.contents[..], TransportType::Udp, d.from, d.to), t) {
            let transmit = build.build();
            out.push((transmit.from, transmit.to, transmit.data));
        }
        for _ in 0..64 {
            match turn.server.poll(t) {
                TurnServerPollRet::AllocateSocket {
                    transport,
                    listen_addr,
                    client_addr,
                    allocation_transport,
                    family,
                } => {
                    turn.next_port += 1;
                    let relayed = SocketAddr::new(listen_addr.ip(), turn.next_port);
                    turn.server.allocated_socket(
                        transport,
                        listen_addr,
                        client_addr,
                        allocation_transport,
                        family,
                        Ok(relayed),
                        t,
                    );
                }
                _ => break,
            }
        }
        while let Some(transmit) = turn.server.poll_transmit(t) {
            out.push((transmit.from, transmit.to, transmit.data));
        }
        for (from, to, data) in out {
            self.net.send(now, from, to, data);
        }
    }

    /// Runs the next due thing, never past `until`.
    pub fn step(&mut self, until: Instant) {
        let mut next = until;
        for n in self.nodes.iter().filter(|n| n.up) {
            next = next.min(n.core.poll_timeout());
        }
        if let Some(at) = self.net.next_at() {
            next = next.min(at);
        }
        if let Some(f) = self.frames.front() {
            next = next.min(f.at);
        }
        self.now = self.now.max(next);
        let now = self.now;
        let stun: SocketAddr = STUN_SERVER.parse().unwrap();
        let mut fed = Vec::new();
        while let Some(d) = self.net.pop_due(now) {
            if d.to == stun {
                self.stun_answer(&d);
                continue;
            }
            if self.turn.is_some() && d.to.ip() == TURN_SERVER.parse::<SocketAddr>().unwrap().ip() {
                self.turn_receive(d);
                continue;
            }
            let Some(i) = self.owner(d.to) else { continue };
            self.nodes[i].core.handle_datagram(now, d.from, d.to, &d.contents);
            if self.burst_delivery {
                fed.push(i);
            } else {
                let id = self.nodes[i].id.clone();
                self.drain(&id);
            }
        }
        fed.sort_unstable();
        fed.dedup();
        for i in fed {
            let id = self.nodes[i].id.clone();
            self.drain(&id);
        }
        while self.frames.front().is_some_and(|f| f.at <= now) {
            let f = self.frames.pop_front().unwrap();
            let i = self.idx(&f.to);
            if !self.nodes[i].up || !self.nodes[i].ws {
                continue;
            }
            self.nodes[i].core.handle_frame(&f.text, now);
            self.drain(&f.to);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].up && self.nodes[i].core.poll_timeout() <= now {
                self.nodes[i].core.handle_timeout(now);
                let id = self.nodes[i].id.clone();
                self.drain(&id);
            }
        }
    }

    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&World<S>) -> bool) -> bool {
        let end = self.now + limit;
        for _ in 0..5_000_000 {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            self.step(end);
        }
        panic!("simulation does not advance");
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    pub fn events(&self, id: &str) -> &[(Option<AgentId>, Event)] {
        &self.nodes[self.idx(id)].events
    }

    /// The `peer_connected`/`peer_disconnected` sequence `id` reported
    /// about `peer`: `true` for connected.
    pub fn link_events(&self, id: &str, peer: &str) -> Vec<bool> {
        self.events(id)
            .iter()
            .filter_map(|(to, e)| match e {
                Event::PeerConnected { peer_id } if peer_id == peer => Some((to, true)),
                Event::PeerDisconnected { peer_id } if peer_id == peer => Some((to, false)),
                _ => None,
            })
            .map(|(to, up)| {
                assert_eq!(*to, None, "link events go to every agent");
                up
            })
            .collect()
    }

    pub fn connected(&self, id: &str, peer: &str) -> bool {
        self.link_events(id, peer).last() == Some(&true)
    }

    pub fn messages(&self, id: &str) -> Vec<(String, MeshMessage)> {
        self.events(id)
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Message { from_peer, message } => Some((from_peer.clone(), message.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn errors(&self, id: &str) -> Vec<ErrorEvent> {
        self.events(id)
            .iter()
            .filter_map(|(to, e)| match e {
                Event::Error(err) => {
                    assert_eq!(*to, Some(AGENT), "errors answer the agent that sent the command");
                    Some(err.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// The last reply to a command of `id`'s agent.
    pub fn last_reply(&self, id: &str) -> Event {
        self.events(id).iter().rev().find(|(to, _)| *to == Some(AGENT)).expect("a reply").1.clone()
    }

    pub fn full_mesh(&self, ids: &[&str]) -> bool {
        ids.iter().all(|a| ids.iter().all(|b| a == b || self.connected(a, b)))
    }

    /// Every peer's connect/disconnect history alternates, starting with a
    /// connect: `peer_disconnected` exactly once per link that opened.
    pub fn assert_alternating(&self) {
        for n in &self.nodes {
            for m in &self.nodes {
                let seq = self.link_events(&n.id, &m.id);
                for (i, up) in seq.iter().enumerate() {
                    assert_eq!(*up, i % 2 == 0, "{} about {}: {seq:?}", n.id, m.id);
                }
            }
        }
    }

    /// The candidate lines of type `typ` (`host`, `srflx`, …) `from`
    /// trickled to `to`.
    pub fn candidates_sent(&self, from: &str, to: &str, typ: &str) -> Vec<String> {
        let needle = format!("typ {typ}");
        self.candidates
            .iter()
            .filter(|(f, t, c)| f == from && t == to && c.contains(&needle))
            .map(|(_, _, c)| c.clone())
            .collect()
    }
}
