//! The sidecar's core, seen from the shell: one object that owns the mesh
//! of links, the STUN gatherer and the TURN allocations, demultiplexes what
//! arrives on the UDP socket and the TURN streams between them, and tells
//! the shell what to send and whom to tell.
//!
//! The shell feeds it datagrams, stream bytes, agent commands, signaling
//! events, TURN servers, the results of name lookups and time (`handle_*`);
//! after every call it drains
//! [`Node::poll_output`] and sleeps until [`Node::poll_timeout`]. Nothing in
//! here reads a clock, touches a socket or starts a thread
//! (docs/ARCHITECTURE.md).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatixia_protocol::ipc::{Command, Event};

use super::ipc::AgentId;
use super::mesh::{Mesh, MeshConfig, MeshOutput, RegistryState};
use super::peer::DtlsIdentity;
use super::stun::{self, Gatherer, GathererConfig, StunOutput};
use super::turn::{self, RelayOutput, Relays, StreamId, TurnServer};
use super::urls::StunServer;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub mesh: MeshConfig,
    pub stun: GathererConfig,
    /// Asked for server-reflexive candidates; empty disables STUN.
    pub stun_servers: Vec<StunServer>,
    /// Local addresses, with the UDP socket's port, offered as host
    /// candidates.
    pub host_candidates: Vec<SocketAddr>,
}

/// What the signaling client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalingEvent {
    /// Getting a token or opening the WebSocket.
    Connecting,
    /// The WebSocket is up; we are `peer_id`.
    Connected { peer_id: String },
    /// A text frame from the registry.
    Frame(String),
    /// The WebSocket is gone; a reconnect follows after a backoff.
    Down,
    /// The registry's ICE configuration (`GET /api/config`), fetched at
    /// wall-clock time `unix_now`, or why it could not be had.
    IceConfig { result: Result<String, String>, unix_now: u64 },
    /// A binary frame from the registry: TURN from its relay.
    Binary(Vec<u8>),
}

/// Which name lookup an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupId {
    StunServers,
    TurnServers,
}

/// TURN credentials are renewed this long before they expire (or at half
/// their life, if that is shorter).
const RENEW_BEFORE: Duration = Duration::from_secs(3600);
/// An ICE configuration that could not be had is asked for again after this.
const RENEW_RETRY: Duration = Duration::from_secs(60);

/// What the core asks of its shell. Drain until `None`.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeOutput {
    /// Send a datagram on the UDP socket.
    Transmit {
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// Send a text frame to the registry. Only produced while connected.
    Signal(String),
    /// Send a binary frame to the registry (TURN to its relay).
    SignalBinary(Vec<u8>),
    /// Deliver an event to one agent (`Some`: the reply to its command) or
    /// to all of them (`None`).
    Event {
        to: Option<AgentId>,
        event: Event,
    },
    /// Look these names up (`host`, `port`) and answer with
    /// [`Node::handle_lookup`], one result per name, in order.
    Lookup {
        id: LookupId,
        names: Vec<(String, u16)>,
    },
    /// Open a TCP stream to a TURN server (TLS checked against `tls_name`
    /// when set) and feed what it reads to [`Node::handle_stream_data`];
    /// [`Node::handle_stream_closed`] when it closes or cannot be opened.
    StreamOpen {
        stream: StreamId,
        server: SocketAddr,
        tls_name: Option<String>,
    },
    /// Write to a stream, in order, queued until it is connected.
    StreamSend {
        stream: StreamId,
        contents: Vec<u8>,
    },
    StreamClose {
        stream: StreamId,
    },
    /// The TURN credentials run out soon: make new ones (`TURN_SECRET`) or
    /// fetch the registry's ICE configuration again, and hand them in.
    RenewTurnCredentials,
}

/// Where server-reflexive candidates come from.
struct Stun {
    gatherer: Gatherer,
    servers: Vec<StunServer>,
    /// A lookup of the servers' names is out.
    looking_up: bool,
    /// The last lookup failed (said once at info, then at debug).
    lookup_failed: bool,
}

/// The TURN servers handed in, waiting for their names to be looked up.
struct TurnSetup {
    servers: Vec<TurnServer>,
    looking_up: bool,
    renew_at: Option<Instant>,
}

pub struct Node {
    mesh: Mesh,
    stun: Option<Stun>,
    relays: Relays,
    turn: TurnSetup,
    outputs: VecDeque<NodeOutput>,
    last_now: Instant,
}

impl Node {
    /// A node that has not reached the registry yet. Its first STUN round
    /// starts at once; links do not wait for it.
    pub fn new(config: NodeConfig, now: Instant) -> Node {
        let mut mesh = Mesh::new(config.mesh, now);
        let hosts = config.host_candidates;
        if hosts.is_empty() {
            log::warn!("no usable local address for host candidates; links depend on peer-reflexive ones");
        }
        let stun = match (config.stun_servers.is_empty(), hosts.is_empty()) {
            (true, _) => None,
            (false, true) => {
                log::info!("no host candidate to be the base of a server-reflexive one; not asking STUN servers");
                None
            }
            (false, false) => Some(Stun {
                gatherer: Gatherer::new(config.stun, hosts.clone()),
                servers: config.stun_servers,
                looking_up: false,
                lookup_failed: false,
            }),
        };
        let relays = Relays::new(hosts.clone(), now);
        mesh.set_local_candidates(hosts);
        let turn = TurnSetup { servers: Vec::new(), looking_up: false, renew_at: None };
        let mut node = Node { mesh, stun, relays, turn, outputs: VecDeque::new(), last_now: now };
        node.start_stun_round(now);
        node
    }

    /// The DTLS certificate links made from now on present.
    pub fn set_dtls_identity(&mut self, identity: DtlsIdentity) {
        self.mesh.set_dtls_identity(identity);
    }

    /// One datagram from the UDP socket: an answer of a STUN server, or
    /// traffic of a link.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) {
        self.touch(now);
        if self.relays.handle_datagram(source, bytes, now) {
            return;
        }
        if let Some(stun) = &mut self.stun
            && stun.gatherer.handle_datagram(source, destination, bytes)
        {
            return;
        }
        self.mesh.handle_datagram(now, source, destination, bytes);
    }

    /// The agents fell behind on `peer`'s messages, or caught up (from
    /// [`crate::core::ipc::AgentHub::poll_throttle`]).
    pub fn handle_peer_throttle(&mut self, peer: &str, on: bool, now: Instant) {
        self.touch(now);
        self.mesh.handle_peer_throttle(peer, on);
    }

    /// Bytes read from a TURN stream.
    pub fn handle_stream_data(&mut self, stream: StreamId, bytes: &[u8], now: Instant) {
        self.touch(now);
        self.relays.handle_stream_data(stream, bytes, now);
    }

    /// A TURN stream closed, or could not be opened.
    pub fn handle_stream_closed(&mut self, stream: StreamId, now: Instant) {
        self.touch(now);
        self.relays.handle_stream_closed(stream, now);
    }

    /// The TURN servers to allocate on, with credentials valid for
    /// `valid_for` (`None`: for good). They replace any given before.
    pub fn handle_turn_servers(&mut self, servers: Vec<TurnServer>, valid_for: Option<Duration>, now: Instant) {
        self.touch(now);
        self.turn.renew_at = valid_for.map(|d| now + d.saturating_sub(RENEW_BEFORE.min(d / 2)));
        self.turn.servers = servers;
        self.start_turn_lookup(now);
    }

    /// The registry's ICE configuration (`GET /api/config`) at wall-clock
    /// time `unix_now`: its TURN servers are used; an unusable answer is
    /// asked for again later.
    pub fn handle_ice_config(&mut self, text: &str, unix_now: u64, now: Instant) {
        self.touch(now);
        match turn::servers_from_ice_config(text) {
            Ok((servers, expiry)) => {
                if servers.is_empty() {
                    log::info!("the registry offers no TURN server: links use direct paths only");
                } else {
                    log::info!(
                        "TURN servers from the registry: {}",
                        servers.iter().map(|s| s.url.to_string()).collect::<Vec<_>>().join(", ")
                    );
                }
                let valid_for = expiry.map(|at| Duration::from_secs(at.saturating_sub(unix_now)));
                self.handle_turn_servers(servers, valid_for, now);
            }
            Err(e) => {
                log::warn!("the registry's ICE configuration is unusable ({e}); asking again in a minute");
                self.turn.renew_at = Some(now + RENEW_RETRY);
            }
        }
    }

    /// The registry's ICE configuration could not be fetched; asked again
    /// later.
    pub fn handle_ice_config_failed(&mut self, now: Instant) {
        self.touch(now);
        self.turn.renew_at = Some(now + RENEW_RETRY);
    }

    /// One command of agent `from`.
    pub fn handle_command(&mut self, from: AgentId, cmd: Command, now: Instant) {
        self.touch(now);
        self.mesh.handle_command(from, cmd, now);
    }

    /// What the signaling client reports.
    pub fn handle_signaling(&mut self, event: SignalingEvent, now: Instant) {
        self.touch(now);
        match event {
            SignalingEvent::Connecting => self.mesh.handle_registry_connecting(),
            SignalingEvent::Connected { peer_id } => {
                self.mesh.handle_registry_connected(&peer_id, now);
                self.relays.set_signaling_up(true, now);
            }
            SignalingEvent::Frame(text) => self.mesh.handle_signal(&text, now),
            SignalingEvent::Down => {
                self.mesh.handle_registry_down();
                self.relays.set_signaling_up(false, now);
            }
            SignalingEvent::Binary(bytes) => self.relays.handle_signaling_data(&bytes, now),
            SignalingEvent::IceConfig { result: Ok(text), unix_now } => self.handle_ice_config(&text, unix_now, now),
            SignalingEvent::IceConfig { result: Err(e), .. } => {
                log::warn!("cannot fetch the registry's ICE configuration: {e}; asking again in a minute");
                self.handle_ice_config_failed(now);
            }
        }
    }

    /// The answer to a [`NodeOutput::Lookup`]: for each name, its
    /// addresses or why there are none.
    pub fn handle_lookup(&mut self, id: LookupId, results: Vec<Result<Vec<SocketAddr>, String>>, now: Instant) {
        self.touch(now);
        match id {
            LookupId::StunServers => {
                let Some(stun) = &mut self.stun else { return };
                stun.looking_up = false;
                let addrs = stun::pick_addresses(&stun.servers, &results);
                stun.begin_round(addrs, now);
            }
            LookupId::TurnServers => {
                self.turn.looking_up = false;
                self.use_turn_addresses(&results, now);
            }
        }
    }

    /// Services everything due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        if self.mesh.poll_timeout() <= now {
            self.mesh.handle_timeout(now);
        }
        if let Some(stun) = &mut self.stun
            && stun.gatherer.poll_timeout().is_some_and(|t| t <= now)
        {
            stun.gatherer.handle_timeout(now);
        }
        if self.relays.poll_timeout().is_some_and(|t| t <= now) {
            self.relays.handle_timeout(now);
        }
        if self.turn.renew_at.is_some_and(|t| t <= now) {
            self.turn.renew_at = None;
            self.outputs.push_back(NodeOutput::RenewTurnCredentials);
        }
    }

    /// When [`Node::handle_timeout`] is due next (earlier is harmless).
    pub fn poll_timeout(&self) -> Instant {
        let others = [
            self.stun.as_ref().and_then(|s| s.gatherer.poll_timeout()),
            self.relays.poll_timeout(),
            self.turn.renew_at,
        ];
        others.into_iter().flatten().fold(self.mesh.poll_timeout(), Instant::min)
    }

    /// Next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        loop {
            if let Some(out) = self.outputs.pop_front() {
                return Some(out);
            }
            if let Some(out) = self.stun.as_mut().and_then(|s| s.gatherer.poll_output()) {
                self.on_stun_output(out);
                continue;
            }
            if let Some(out) = self.relays.poll_output() {
                self.on_relay_output(out);
                continue;
            }
            match self.mesh.poll_output()? {
                MeshOutput::Transmit { source, destination, contents } => {
                    if !self.relays.send(source, destination, &contents, self.last_now) {
                        return Some(NodeOutput::Transmit { destination, contents });
                    }
                }
                MeshOutput::Signal(env) => return Some(NodeOutput::Signal(env.to_json())),
                MeshOutput::Event { to, event } => return Some(NodeOutput::Event { to, event }),
                MeshOutput::RemoteAddress(addr) => self.relays.permit(addr.ip(), self.last_now),
            }
        }
    }

    /// Closes every link gracefully and stops making new ones. Keep
    /// servicing until [`Node::is_idle`].
    pub fn shutdown(&mut self, now: Instant) {
        self.touch(now);
        self.stun = None;
        self.turn.renew_at = None;
        self.mesh.shutdown(now);
        self.relays.shutdown(now);
    }

    /// No link needs servicing any more.
    pub fn is_idle(&self) -> bool {
        self.mesh.is_idle()
    }

    pub fn registry_state(&self) -> RegistryState {
        self.mesh.registry_state()
    }

    /// Peers with an open DataChannel.
    pub fn open_peer_count(&self) -> usize {
        self.mesh.open_peer_count()
    }

    fn on_stun_output(&mut self, out: StunOutput) {
        match out {
            StunOutput::Transmit { destination, contents } => {
                self.outputs.push_back(NodeOutput::Transmit { destination, contents });
            }
            StunOutput::Candidate { addr, base } => self.mesh.add_srflx_candidate(addr, base, self.last_now),
            StunOutput::Resolve => self.start_stun_round(self.last_now),
        }
    }

    fn on_relay_output(&mut self, out: RelayOutput) {
        let now = self.last_now;
        match out {
            RelayOutput::Transmit { destination, contents } => {
                self.outputs.push_back(NodeOutput::Transmit { destination, contents })
            }
            RelayOutput::StreamOpen { stream, server, tls_name } => {
                self.outputs.push_back(NodeOutput::StreamOpen { stream, server, tls_name })
            }
            RelayOutput::StreamSend { stream, contents } => {
                self.outputs.push_back(NodeOutput::StreamSend { stream, contents })
            }
            RelayOutput::StreamClose { stream } => self.outputs.push_back(NodeOutput::StreamClose { stream }),
            RelayOutput::SignalingSend { contents } => self.outputs.push_back(NodeOutput::SignalBinary(contents)),
            RelayOutput::Candidate { relayed, transport, .. } => {
                self.mesh.add_relay_candidate(relayed, relayed, transport, now)
            }
            RelayOutput::CandidateGone { relayed } => self.mesh.remove_relay_candidate(relayed),
            RelayOutput::PeerData { relayed, peer, contents } => {
                self.mesh.handle_datagram(now, peer, relayed, &contents)
            }
        }
    }

    /// Asks for the TURN servers' names to be looked up; servers given as
    /// addresses are used at once.
    fn start_turn_lookup(&mut self, now: Instant) {
        if self.turn.servers.iter().all(|s| s.url.literal().is_some()) {
            self.use_turn_addresses(&[], now);
        } else if !self.turn.looking_up {
            self.turn.looking_up = true;
            let names = self.turn.servers.iter().map(|s| (s.url.host.clone(), s.url.port)).collect();
            self.outputs.push_back(NodeOutput::Lookup { id: LookupId::TurnServers, names });
        }
    }

    /// Hands the servers with an address (one per server, of a family we
    /// have a host candidate of) to the relays.
    fn use_turn_addresses(&mut self, looked_up: &[Result<Vec<SocketAddr>, String>], now: Instant) {
        let mut servers = Vec::new();
        for (i, server) in self.turn.servers.iter().enumerate() {
            let addrs: Vec<SocketAddr> = match (server.url.literal(), looked_up.get(i)) {
                (Some(addr), _) => vec![addr],
                (None, Some(Ok(addrs))) => addrs.iter().copied().map(super::canonical).collect(),
                (None, Some(Err(e))) => {
                    log::warn!("cannot look up TURN server {}: {e}", server.url);
                    continue;
                }
                (None, None) => continue,
            };
            match addrs.first() {
                Some(addr) => servers.push((server.clone(), *addr)),
                None => log::warn!("TURN server {} has no address", server.url),
            }
        }
        self.relays.set_servers(servers, now);
    }

    /// Starts a round of STUN requests: at once when every server is an
    /// address, after a lookup of their names otherwise.
    fn start_stun_round(&mut self, now: Instant) {
        let Some(stun) = &mut self.stun else { return };
        if stun.looking_up {
            return;
        }
        if stun.servers.iter().all(|s| s.literal().is_some()) {
            let addrs = stun::pick_addresses(&stun.servers, &[]);
            stun.begin_round(addrs, now);
            return;
        }
        stun.looking_up = true;
        let names = stun.servers.iter().map(|s| (s.host.clone(), s.port)).collect();
        self.outputs.push_back(NodeOutput::Lookup { id: LookupId::StunServers, names });
    }

    fn touch(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
    }
}

impl Stun {
    fn begin_round(&mut self, addrs: Result<Vec<SocketAddr>, String>, now: Instant) {
        let addrs = match addrs {
            Ok(addrs) => {
                if self.lookup_failed {
                    log::info!("STUN servers resolve again");
                }
                self.lookup_failed = false;
                addrs
            }
            Err(e) => {
                // Offline or no DNS: host candidates still work; the next
                // round tries again without filling the log.
                if self.lookup_failed {
                    log::debug!("cannot look up the STUN servers: {e}");
                } else {
                    log::info!("cannot look up the STUN servers (retrying every few minutes): {e}");
                }
                self.lookup_failed = true;
                Vec::new()
            }
        };
        log::debug!("asking STUN servers at {addrs:?}");
        self.gatherer.set_servers(&addrs, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sim::{self, NatKind, STUN_SERVER, SimOutput, SimSidecar};
    use chatixia_protocol::signaling::Envelope;
    use serde_json::Value;
    use std::net::IpAddr;
    use std::time::Duration;

    impl SimSidecar for Node {
        fn handle_datagram(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) {
            Node::handle_datagram(self, now, source, destination, bytes);
        }
        fn handle_frame(&mut self, text: &str, now: Instant) {
            self.handle_signaling(SignalingEvent::Frame(text.to_owned()), now);
        }
        fn handle_registry_connected(&mut self, peer_id: &str, now: Instant) {
            self.handle_signaling(SignalingEvent::Connected { peer_id: peer_id.to_owned() }, now);
        }
        fn handle_registry_down(&mut self, now: Instant) {
            self.handle_signaling(SignalingEvent::Down, now);
        }
        fn handle_command(&mut self, agent: AgentId, cmd: Command, now: Instant) {
            Node::handle_command(self, agent, cmd, now);
        }
        fn handle_timeout(&mut self, now: Instant) {
            Node::handle_timeout(self, now);
        }
        fn poll_timeout(&self) -> Instant {
            Node::poll_timeout(self)
        }
        fn poll_sim_output(&mut self) -> Option<SimOutput> {
            self.poll_output().map(|out| match out {
                NodeOutput::Transmit { destination, contents } => SimOutput::Transmit { destination, contents },
                NodeOutput::Signal(text) => SimOutput::Signal(serde_json::from_str::<Envelope>(&text).unwrap()),
                NodeOutput::Event { to, event } => SimOutput::Event { to, event },
                NodeOutput::Lookup { .. } => panic!("the simulated servers are addresses: nothing to look up"),
                NodeOutput::StreamOpen { .. } | NodeOutput::StreamSend { .. } | NodeOutput::StreamClose { .. } => {
                    panic!("the simulated TURN server is reached over UDP")
                }
                NodeOutput::RenewTurnCredentials => panic!("the simulated TURN credentials do not expire"),
                NodeOutput::SignalBinary(_) => panic!("the simulated registry has no relay"),
            })
        }
    }

    type World = sim::World<Node>;

    /// Nodes whose one host candidate is their simulated address, asking
    /// the simulated STUN server when `stun` is set.
    fn world(ids: &[&str], stun: bool) -> World {
        world_with(ids, stun, false, false)
    }

    /// Like [`world`], with the simulated TURN server when `turn` is set,
    /// used for every candidate when `relay_only` is.
    fn world_with(ids: &[&str], stun: bool, turn: bool, relay_only: bool) -> World {
        let mut w = World::new(
            ids,
            Box::new(move |i, generation, addr, now| {
                let seed = i as u64 + 1 + 100 * u64::from(generation);
                let config = NodeConfig {
                    mesh: MeshConfig { seed, relay_only, ..MeshConfig::default() },
                    stun: GathererConfig::default(),
                    stun_servers: if stun {
                        crate::core::urls::parse_stun_urls(&format!("stun:{STUN_SERVER}"))
                    } else {
                        Vec::new()
                    },
                    host_candidates: vec![addr],
                };
                let mut node = Node::new(config, now);
                if turn {
                    let url = crate::core::urls::parse_turn_url(&format!("turn:{}", sim::TURN_SERVER)).unwrap();
                    let server = TurnServer::new(url, sim::TURN_USER, sim::TURN_PASSWORD);
                    node.handle_turn_servers(vec![server], None, now);
                }
                node
            }),
        );
        if turn {
            w.start_turn();
        }
        w
    }

    /// The path `id` reports for its link to `peer`, from IPC `status`.
    fn path(w: &mut World, id: &str, peer: &str) -> Option<chatixia_protocol::mesh::PathReport> {
        w.command(id, Command::Status);
        let chatixia_protocol::ipc::Event::Status(status) = w.last_reply(id) else { panic!("no status") };
        status.paths.get(peer).cloned()
    }

    /// Puts every node behind a NAT of `kind` with a public address of its
    /// own.
    fn behind_nats(w: &mut World, kind: NatKind) {
        for (i, n) in w.nodes.iter().enumerate() {
            let public = IpAddr::from([198, 51, 100, 10 + i as u8]);
            w.net.add_nat(n.addr.ip(), public, kind);
        }
    }

    #[test]
    fn stun_discovery_and_link_setup_work_together_across_two_nats() {
        let ids = ["alpha", "bravo"];
        let mut w = world(&ids, true);
        behind_nats(&mut w, NatKind::Cone);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(20), |w| w.full_mesh(&ids)), "no link across the NATs");
        let took = w.now - w.start;
        eprintln!("linked across two port-restricted cone NATs after {took:?} (simulated)");
        // Both sides check at once, so the first attempt punches through.
        assert!(took < Duration::from_millis(500), "{took:?}");
        assert_eq!(w.offers.len(), 1, "{:?}", w.offers);
        assert!(w.stun_requests >= 2, "both asked the STUN server");
        // Each side learned its public address and told the other.
        let srflx = w.candidates_sent("bravo", "alpha", "srflx");
        assert!(srflx.iter().any(|c| c.contains("198.51.100.11")), "{srflx:?}");
        assert!(!w.candidates_sent("alpha", "bravo", "srflx").is_empty());
        w.send("alpha", "bravo", "hello", Value::Null);
        w.send("bravo", "alpha", "hi", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| {
            w.messages("alpha").len() == 1 && w.messages("bravo").len() == 1
        }));
        w.assert_alternating();
    }

    #[test]
    fn symmetric_nats_connect_through_the_turn_relay() {
        let ids = ["alpha", "bravo"];
        let mut w = world_with(&ids, true, true, false);
        behind_nats(&mut w, NatKind::Symmetric);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(10), |w| w.full_mesh(&ids)), "no link through the relay");
        let took = w.now - w.start;
        eprintln!("linked across two symmetric NATs through TURN after {took:?} (simulated)");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(!w.candidates_sent("alpha", "bravo", "relay").is_empty());
        assert!(w.turn_received() > 0);
        let (a, b) = (path(&mut w, "alpha", "bravo").unwrap(), path(&mut w, "bravo", "alpha").unwrap());
        assert!(a.local == "relay" || a.remote == "relay", "{a:?}");
        assert!(b.local == "relay" || b.remote == "relay", "{b:?}");
        assert_eq!(a.local_transport, "udp");
        // The registry hears about the relayed path too.
        let reported = w.status_payloads.iter().rev().find(|(from, _)| from == "alpha").unwrap();
        assert_eq!(reported.1["paths"]["bravo"]["local"], a.local.as_str());
        let relayed_before = w.turn_received();
        w.send("alpha", "bravo", "through", Value::Null);
        w.send("bravo", "alpha", "the relay", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| {
            w.messages("alpha").len() == 1 && w.messages("bravo").len() == 1
        }));
        assert!(w.turn_received() > relayed_before, "the messages went through the relay");
        w.assert_alternating();
    }

    #[test]
    fn a_nat_that_forgets_its_mappings_gets_both_directions_back() {
        let ids = ["alpha", "bravo"];
        let mut w = world(&ids, true);
        // alpha behind a cone NAT, bravo public.
        let alpha_ip = w.nodes[0].addr.ip();
        w.net.add_nat(alpha_ip, IpAddr::from([198, 51, 100, 10]), NatKind::Cone);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&ids)));
        w.run_for(Duration::from_secs(2));
        w.net.rebind(alpha_ip);
        let rebound = w.now;
        let mut sent = 0;
        let back = |w: &World, n: usize| w.messages("bravo").len() >= n.max(1) && w.messages("alpha").len() >= n.max(1);
        while !back(&w, sent) && w.now - rebound < Duration::from_secs(15) {
            w.send("alpha", "bravo", "after", Value::Null);
            w.send("bravo", "alpha", "after", Value::Null);
            sent += 1;
            w.run_for(Duration::from_millis(100));
        }
        let took = w.now - rebound;
        eprintln!("both directions back {took:?} after the NAT forgot its mappings (simulated)");
        assert!(took < Duration::from_secs(15), "{took:?}");
        // Whatever was sent meanwhile arrives: nothing is lost.
        let all = |w: &World| w.messages("bravo").len() == sent && w.messages("alpha").len() == sent;
        assert!(w.run_until(Duration::from_secs(5), all), "{sent} sent each way");
    }

    #[test]
    fn cone_nats_stay_direct_when_a_relay_is_offered() {
        let ids = ["alpha", "bravo"];
        let mut w = world_with(&ids, true, true, false);
        behind_nats(&mut w, NatKind::Cone);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&ids)));
        // ICE prefers the direct pairs once both are checked.
        w.run_for(Duration::from_secs(2));
        let a = path(&mut w, "alpha", "bravo").unwrap();
        assert_eq!((a.local.as_str(), a.remote.as_str()), ("host", "srflx"), "{a:?}");
    }

    #[test]
    fn relay_only_links_use_relayed_candidates_only() {
        let ids = ["alpha", "bravo"];
        let mut w = world_with(&ids, true, true, true);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(10), |w| w.full_mesh(&ids)));
        for (from, to, candidate) in &w.candidates {
            assert!(candidate.contains("typ relay"), "{from} sent {to} a non-relayed candidate: {candidate}");
        }
        let a = path(&mut w, "alpha", "bravo").unwrap();
        assert_eq!((a.local.as_str(), a.remote.as_str()), ("relay", "relay"), "{a:?}");
        w.send("alpha", "bravo", "relayed", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| w.messages("bravo").len() == 1));
    }

    #[test]
    fn without_stun_the_same_nats_keep_the_peers_apart() {
        let ids = ["alpha", "bravo"];
        let mut w = world(&ids, false);
        behind_nats(&mut w, NatKind::Cone);
        w.connect("alpha");
        w.connect("bravo");
        assert!(!w.run_until(Duration::from_secs(10), |w| w.connected("alpha", "bravo")));
        assert_eq!(w.stun_requests, 0);
        // Without NATs the host candidates alone are enough.
        let mut w = world(&ids, false);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(1), |w| w.full_mesh(&ids)));
    }

    #[test]
    fn stun_answers_are_not_fed_to_the_links_and_junk_is_harmless() {
        let ids = ["alpha", "bravo"];
        let mut w = world(&ids, true);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&ids)));
        let stun: SocketAddr = STUN_SERVER.parse().unwrap();
        let now = w.now;
        let alpha = w.nodes[0].addr;
        for junk in [&[][..], &[0x01, 0x01, 0, 0][..], &[0xff; 64][..]] {
            w.core("alpha").handle_datagram(now, stun, alpha, junk);
            w.drain("alpha");
        }
        w.send("alpha", "bravo", "still", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| w.messages("bravo").len() == 1));
    }

    #[test]
    fn names_are_looked_up_by_the_shell_and_a_failed_lookup_costs_nothing() {
        let now = sim::start();
        let config = NodeConfig {
            mesh: MeshConfig::default(),
            stun: GathererConfig::default(),
            stun_servers: crate::core::urls::parse_stun_urls("stun:stun.example.org:3478"),
            host_candidates: vec!["192.0.2.1:5000".parse().unwrap()],
        };
        let mut node = Node::new(config, now);
        let Some(NodeOutput::Lookup { id, names }) = node.poll_output() else { panic!("no lookup asked") };
        assert_eq!(names, [("stun.example.org".to_owned(), 3478)]);
        assert_eq!(node.poll_output(), None, "one lookup at a time");
        node.handle_lookup(id, vec![Err("offline".into())], now);
        assert_eq!(node.poll_output(), None, "nothing to ask");
        node.handle_lookup(id, vec![Ok(vec!["203.0.113.3:3478".parse().unwrap()])], now);
        let Some(NodeOutput::Transmit { destination, .. }) = node.poll_output() else { panic!("no request") };
        assert_eq!(destination, "203.0.113.3:3478".parse().unwrap());
    }
}
