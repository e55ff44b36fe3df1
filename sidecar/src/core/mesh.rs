//! The mesh core (docs/PROTOCOL.md §5, §6.1): every [`PeerLink`] of this sidecar, the
//! signaling that sets them up, and the agents' commands. Sans-IO like
//! [`PeerLink`]: the shell feeds signaling frames, datagrams, commands and
//! time in (`handle_*`), drains [`Mesh::poll_output`] after every call, and
//! wakes the core at [`Mesh::poll_timeout`].
//!
//! Connections are tracked per instance ([`ConnId`]). A peer has at most one
//! *current* connection; a replaced or closed one may keep draining its
//! goodbye for a while, but nothing it reports afterwards can touch the
//! peer's current connection (docs/PROTOCOL.md §5.5).

use crate::core::log_budget::LogBudget;
use crate::core::offer_limit::OfferLimit;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatixia_protocol::ipc::{Command, ErrorEvent, Event, StatusEvent, error_codes};
use chatixia_protocol::mesh::{MeshMessage, PathReport};
use chatixia_protocol::signaling::{
    Envelope, IceCandidatePayload, MeshStatusPayload, PeerLeftPayload, PeerListPayload, RegisterPayload, SdpPayload,
    types,
};
use serde_json::Value;

use chatixia_settings::text::clip;

use super::ipc::AgentId;
use super::outbox::{Origin, Outbox, OutboxLimits};
use super::peer::{DtlsIdentity, LinkConfig, LinkError, LinkOutput, PathKind, PeerLink, SendError};
use super::urls::TurnTransport;
/// Identifies one connection instance to a peer.
pub type ConnId = u64;

/// Version of the `register` payload (docs/PROTOCOL.md §4).
const REGISTER_VERSION: u32 = 1;
/// What this sidecar can do beyond the original, announced in `register`.
const FEATURES: &[&str] = &["mesh_status", "ping"];
/// How far ahead an idle core asks to be woken.
const IDLE_WAKEUP: Duration = Duration::from_secs(3600);
/// Inputs fed to one link before it must be polled; below the 30 records
/// the DTLS layer holds (see [`Mesh::defer_pump`]).
const MAX_UNPOLLED_INPUTS: usize = 8;
/// Bound on connections (current and draining) so a flood of offers cannot
/// exhaust memory; ~65 KB each (docs/ARCHITECTURE.md, str0m fact 2).
const MAX_CONNECTIONS: usize = 512;
/// Bound on peers remembered from a `peer_list`.
const MAX_LISTED: usize = 4096;
/// Server-reflexive candidates given to new links; the oldest goes first (a
/// NAT mapping that changed).
const MAX_SRFLX: usize = 4;
/// Relayed candidates given to new links (one per TURN server).
const MAX_RELAYED: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryState {
    /// No signaling connection and none being attempted right now.
    Down,
    /// Exchanging a token or opening the WebSocket.
    Connecting,
    /// The WebSocket is up; frames can be sent.
    Connected,
}

impl RegistryState {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryState::Down => "down",
            RegistryState::Connecting => "connecting",
            RegistryState::Connected => "connected",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub link: LinkConfig,
    /// `mesh_status` is re-sent this often even without a change.
    pub status_interval: Duration,
    /// First delay before re-offering to a peer after its link died; doubles
    /// per failure up to `reoffer_max`, reset when a link opens.
    pub reoffer_min: Duration,
    pub reoffer_max: Duration,
    /// Reported in the IPC `status` event.
    pub version: String,
    /// Seed of the jitter of re-offer delays; tests fix it for determinism.
    pub seed: u64,
    /// Links use relayed candidates only (`ICE_TRANSPORT_POLICY=relay`).
    pub relay_only: bool,
    /// What is kept for a listed peer whose link is not open
    /// (`OUTBOX_BYTES`, `OUTBOX_TTL`).
    pub outbox: OutboxLimits,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            link: LinkConfig::default(),
            status_interval: Duration::from_secs(30),
            reoffer_min: Duration::from_secs(1),
            reoffer_max: Duration::from_secs(30),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            seed: 0x9e37_79b9_7f4a_7c15,
            relay_only: false,
            outbox: OutboxLimits::default(),
        }
    }
}

/// What the core asks of its shell. Drain until `None`.
#[derive(Debug, Clone, PartialEq)]
pub enum MeshOutput {
    /// Send a datagram on the UDP socket.
    Transmit { source: SocketAddr, destination: SocketAddr, contents: Vec<u8> },
    /// Send a frame to the registry. Only produced while it is connected.
    Signal(Envelope),
    /// Deliver an event to one agent (`Some`: the reply to its command) or to
    /// all of them (`None`).
    Event { to: Option<AgentId>, event: Event },
    /// A link learned a remote address it may check or hear from; relays
    /// must permit it.
    RemoteAddress(SocketAddr),
}

/// A candidate of ours that is not a host address, trickled to links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trickled {
    /// A server-reflexive address and the host candidate it maps.
    Srflx { addr: SocketAddr, base: SocketAddr },
    /// A relayed address on a TURN server, the local address we reach it
    /// from, and how.
    Relay { relayed: SocketAddr, local: SocketAddr, transport: TurnTransport },
}

struct Conn {
    id: ConnId,
    peer: String,
    link: PeerLink,
    /// Our offer is out and no answer has been applied yet.
    awaiting_answer: bool,
    deadline: Instant,
    /// `peer_connected` was reported for this instance.
    opened: bool,
    /// `peer_disconnected` was reported, or never will be (closed before it
    /// opened, replaced). Guards the "exactly once".
    reported_end: bool,
    /// Inputs fed since the last poll (see [`Mesh::defer_pump`]).
    unpolled: usize,
    /// The path last logged: local kind, remote kind, local transport.
    path: Option<(String, String, String)>,
}

#[derive(Default)]
struct PeerState {
    current: Option<ConnId>,
    /// When to ask the registry for the list again to re-offer after a dead
    /// link (docs/PROTOCOL.md §5.5).
    recheck_at: Option<Instant>,
    /// Next re-offer delay before jitter.
    backoff: Option<Duration>,
    /// Messages waiting for the link to open.
    outbox: Outbox,
}

pub struct Mesh {
    config: MeshConfig,
    peer_id: Option<String>,
    registry: RegistryState,
    local_candidates: Vec<SocketAddr>,
    /// Server-reflexive and relayed candidates, for links still connecting
    /// and links made later.
    trickled: VecDeque<Trickled>,
    conns: Vec<Conn>,
    /// Some connection has `unpolled` set.
    unpolled: bool,
    peers: BTreeMap<String, PeerState>,
    /// The peers of the last `peer_list`.
    listed: BTreeSet<String>,
    /// `connect` commands waiting for the next `peer_list`.
    pending_connects: Vec<(AgentId, String)>,
    next_conn: ConnId,
    status_at: Instant,
    /// The open peers and their paths (without round trips) last reported,
    /// as one comparable text.
    last_status: Option<String>,
    outputs: VecDeque<MeshOutput>,
    rng: u64,
    last_now: Instant,
    /// Warnings that peers or the registry can trigger with bad input.
    noisy: LogBudget,
    /// Offers answered per peer.
    offers: OfferLimit,
    /// Peers whose messages the agents are behind on: their DTLS packets
    /// are dropped until the agents catch up (see `handle_peer_throttle`).
    throttled: BTreeSet<String>,
    shutting_down: bool,
}

impl Mesh {
    pub fn new(config: MeshConfig, now: Instant) -> Mesh {
        let rng = config.seed | 1;
        Mesh {
            status_at: now + config.status_interval,
            config,
            peer_id: None,
            registry: RegistryState::Down,
            local_candidates: Vec::new(),
            trickled: VecDeque::new(),
            conns: Vec::new(),
            peers: BTreeMap::new(),
            listed: BTreeSet::new(),
            pending_connects: Vec::new(),
            next_conn: 1,
            last_status: None,
            outputs: VecDeque::new(),
            rng,
            last_now: now,
            noisy: LogBudget::new(),
            offers: OfferLimit::new(),
            throttled: BTreeSet::new(),
            unpolled: false,
            shutting_down: false,
        }
    }

    /// Host candidates (local socket addresses) put into every SDP and
    /// trickled. Links made earlier keep theirs.
    pub fn set_local_candidates(&mut self, addrs: Vec<SocketAddr>) {
        self.local_candidates = addrs;
    }

    /// The DTLS certificate links made from now on present.
    pub fn set_dtls_identity(&mut self, identity: DtlsIdentity) {
        self.config.link.identity = Some(identity);
    }

    /// A server-reflexive candidate learned from a STUN server, `base` being
    /// the host candidate it maps. Links still connecting get it at once
    /// (trickled like host candidates, with the real mid); links made later
    /// get it right after their offer or answer. Open links need no more
    /// candidates. Host candidates never wait for this.
    pub fn add_srflx_candidate(&mut self, addr: SocketAddr, base: SocketAddr, now: Instant) {
        if self.local_candidates.contains(&addr) || self.config.relay_only {
            return;
        }
        self.add_trickled(Trickled::Srflx { addr, base }, MAX_SRFLX, now);
    }

    /// A relayed address allocated on a TURN server, reached from `local`;
    /// given to links like a server-reflexive candidate.
    pub fn add_relay_candidate(
        &mut self,
        relayed: SocketAddr,
        local: SocketAddr,
        transport: TurnTransport,
        now: Instant,
    ) {
        self.add_trickled(Trickled::Relay { relayed, local, transport }, MAX_RELAYED, now);
    }

    /// A relayed address that is gone: links stop using it.
    pub fn remove_relay_candidate(&mut self, relayed: SocketAddr) {
        self.trickled.retain(|t| !matches!(t, Trickled::Relay { relayed: r, .. } if *r == relayed));
        for c in &mut self.conns {
            c.link.remove_local_candidate(relayed, PathKind::Relay);
        }
        self.unpolled = true;
        for c in &mut self.conns {
            c.unpolled += 1;
        }
    }

    /// Remembers a candidate for later links (at most `cap` of its kind, the
    /// oldest going first) and trickles it to links still connecting.
    fn add_trickled(&mut self, cand: Trickled, cap: usize, now: Instant) {
        self.touch(now);
        if self.trickled.contains(&cand) {
            return;
        }
        let same_kind = |t: &Trickled| std::mem::discriminant(t) == std::mem::discriminant(&cand);
        if self.trickled.iter().filter(|t| same_kind(t)).count() >= cap
            && let Some(oldest) = self.trickled.iter().position(same_kind)
        {
            self.trickled.remove(oldest);
        }
        self.trickled.push_back(cand);
        for idx in 0..self.conns.len() {
            let c = &self.conns[idx];
            if self.is_current(c) && !c.opened && !c.reported_end && c.link.is_alive() {
                self.trickle(idx, cand);
                self.pump(idx, now);
            }
        }
    }

    /// Our peer_id, once the registry told us who we are.
    pub fn peer_id(&self) -> Option<&str> {
        self.peer_id.as_deref()
    }

    pub fn registry_state(&self) -> RegistryState {
        self.registry
    }

    /// Peers with an open DataChannel, sorted.
    pub fn open_peers(&self) -> Vec<String> {
        let mut peers: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, st)| st.current.and_then(|id| self.conn(id)).is_some_and(|c| c.opened && c.link.is_open()))
            .map(|(p, _)| p.clone())
            .collect();
        peers.sort();
        peers
    }

    /// How many peers [`Mesh::open_peers`] would list, without allocating.
    pub fn open_peer_count(&self) -> usize {
        self.peers
            .values()
            .filter(|st| st.current.and_then(|id| self.conn(id)).is_some_and(|c| c.opened && c.link.is_open()))
            .count()
    }

    /// Connections still being serviced, draining ones included.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<MeshOutput> {
        self.settle();
        self.outputs.pop_front()
    }

    /// When [`Mesh::handle_timeout`] is due next (earlier is harmless).
    pub fn poll_timeout(&self) -> Instant {
        if self.unpolled {
            return self.last_now;
        }
        let mut t = self.last_now + IDLE_WAKEUP;
        for c in &self.conns {
            t = t.min(c.deadline);
        }
        for st in self.peers.values() {
            if let Some(at) = st.recheck_at {
                t = t.min(at);
            }
            if let Some(at) = st.outbox.next_expiry() {
                t = t.min(at);
            }
        }
        if self.registry == RegistryState::Connected {
            t = t.min(self.status_at);
        }
        t
    }

    /// The signaling client is (re)trying to reach the registry.
    pub fn handle_registry_connecting(&mut self) {
        self.registry = RegistryState::Connecting;
    }

    /// The signaling connection is gone. Links are not touched: established
    /// DataChannels keep working without the registry (docs/PROTOCOL.md §5.5).
    pub fn handle_registry_down(&mut self) {
        if self.registry == RegistryState::Connected {
            log::info!("registry connection lost; {} open links keep running", self.open_peers().len());
        }
        self.registry = RegistryState::Down;
    }

    /// The signaling WebSocket is up and `peer_id` is our identity. Sends
    /// `register`; its `peer_list` answer makes us offer to every listed
    /// peer without a live link, so live links are never re-offered.
    pub fn handle_registry_connected(&mut self, peer_id: &str, now: Instant) {
        self.touch(now);
        if let Some(old) = self.peer_id.as_deref()
            && old != peer_id
        {
            log::warn!("our identity changed from {old:?} to {peer_id:?}; closing every link");
            let ids: Vec<ConnId> = self.conns.iter().map(|c| c.id).collect();
            for id in ids {
                self.retire(id, now);
            }
            self.peers.clear();
            self.listed.clear();
        }
        self.peer_id = Some(peer_id.to_owned());
        self.registry = RegistryState::Connected;
        for st in self.peers.values_mut() {
            st.recheck_at = None;
        }
        self.send_register();
        self.last_status = None;
        self.maybe_send_status(now);
    }

    /// One text frame from the registry.
    pub fn handle_signal(&mut self, text: &str, now: Instant) {
        self.touch(now);
        let env: Envelope = match serde_json::from_str(text) {
            Ok(env) => env,
            Err(e) => {
                if let Some(note) = self.noisy.allow(now) {
                    log::warn!("ignoring a signaling frame that is not an envelope: {e}{note}");
                }
                return;
            }
        };
        let Some(me) = self.peer_id.clone() else {
            log::debug!("ignoring {:?} frame before we know our identity", clip(&env.kind));
            return;
        };
        if let Some(target) = env.target_id.as_deref()
            && target != me
        {
            log::debug!("ignoring {:?} frame for {:?}", clip(&env.kind), clip(target));
            return;
        }
        match env.kind.as_str() {
            types::PEER_LIST => match serde_json::from_value::<PeerListPayload>(env.payload) {
                Ok(list) => self.on_peer_list(list.peers, now),
                Err(e) => log::warn!("ignoring malformed peer_list: {e}"),
            },
            types::PEER_LEFT => match serde_json::from_value::<PeerLeftPayload>(env.payload) {
                Ok(left) => self.on_peer_left(&left.peer_id, now),
                Err(e) => log::warn!("ignoring malformed peer_left: {e}"),
            },
            types::OFFER | types::ANSWER | types::ICE_CANDIDATE if env.peer_id == me => {
                log::debug!("ignoring {} frame from ourselves", env.kind);
            }
            types::OFFER => match serde_json::from_value::<SdpPayload>(env.payload) {
                Ok(p) => self.on_offer(&env.peer_id, &p.sdp, now),
                Err(e) => {
                    if let Some(note) = self.noisy.allow(now) {
                        log::warn!("ignoring malformed offer from {:?}: {e}{note}", clip(&env.peer_id));
                    }
                }
            },
            types::ANSWER => match serde_json::from_value::<SdpPayload>(env.payload) {
                Ok(p) => self.on_answer(&env.peer_id, &p.sdp, now),
                Err(e) => {
                    if let Some(note) = self.noisy.allow(now) {
                        log::warn!("ignoring malformed answer from {:?}: {e}{note}", clip(&env.peer_id));
                    }
                }
            },
            types::ICE_CANDIDATE => match serde_json::from_value::<IceCandidatePayload>(env.payload) {
                Ok(c) => self.on_candidate(&env.peer_id, &c, now),
                Err(e) => log::debug!("ignoring malformed ice_candidate from {:?}: {e}", clip(&env.peer_id)),
            },
            types::ERROR => {
                let code = env.payload.get("code").and_then(Value::as_str).unwrap_or("?");
                let msg = env.payload.get("message").and_then(Value::as_str).unwrap_or("");
                log::warn!("registry reports an error: {} {}", clip(code), clip(msg));
            }
            types::PONG | types::MESH_HEALTH => {}
            other => log::debug!("ignoring signaling frame of type {:?}", clip(other)),
        }
    }

    /// One datagram from the UDP socket. It goes to the link str0m itself
    /// claims it for, else to the one that knows the sender's address
    /// (docs/ARCHITECTURE.md, str0m fact 1); current links are asked before
    /// draining ones.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) {
        self.touch(now);
        let idx =
            self.conns.iter().position(|c| c.link.accepts_strict(now, source, destination, bytes)).or_else(|| {
                let known = |c: &Conn| c.link.is_alive() && c.link.knows_remote_address(source);
                self.conns
                    .iter()
                    .position(|c| known(c) && self.is_current(c))
                    .or_else(|| self.conns.iter().position(known))
            });
        match idx {
            // Records of the channel (DTLS: first byte 20-63) from a held
            // back peer go unread, as if lost: its SCTP retransmits later
            // and slows down. ICE checks still pass, so the link lives.
            Some(idx)
                if bytes.first().is_some_and(|b| (20..=63).contains(b))
                    && self.throttled.contains(&self.conns[idx].peer) => {}
            Some(idx) => {
                self.conns[idx].link.handle_receive(now, source, destination, bytes);
                self.defer_pump(idx);
            }
            None => log::trace!("dropping {} byte datagram from {source}: no link claims it", bytes.len()),
        }
    }

    /// The agents are behind on `peer`'s messages (`on`), or caught up:
    /// hold its DataChannel traffic back, or let it flow again.
    pub fn handle_peer_throttle(&mut self, peer: &str, on: bool) {
        let changed = if on {
            self.throttled.len() < MAX_LISTED && self.throttled.insert(peer.to_owned())
        } else {
            self.throttled.remove(peer)
        };
        if changed {
            if on {
                log::info!("holding back {peer}: the agents are behind on its messages");
            } else {
                log::info!("no longer holding back {peer}");
            }
        }
    }

    /// Services every due deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        for idx in 0..self.conns.len() {
            if self.conns[idx].deadline <= now {
                self.conns[idx].link.handle_timeout(now);
                self.pump(idx, now);
            }
        }
        self.reap(now);
        if self.shutting_down {
            return;
        }
        self.expire_outboxes(now);
        let mut recheck = false;
        for st in self.peers.values_mut() {
            if st.recheck_at.is_some_and(|at| at <= now) {
                st.recheck_at = None;
                recheck = true;
            }
        }
        if recheck && self.registry == RegistryState::Connected {
            // The answer tells whether the peer is still there; the
            // `peer_list` rule then offers.
            self.send_register();
        }
        if self.registry == RegistryState::Connected && self.status_at <= now {
            self.last_status = None;
            self.maybe_send_status(now);
        }
    }

    /// One command of agent `from` (docs/PROTOCOL.md §6).
    pub fn handle_command(&mut self, from: AgentId, cmd: Command, now: Instant) {
        self.touch(now);
        match cmd {
            Command::Send { target_peer, message } => self.cmd_send(from, &target_peer, &message, now),
            Command::Broadcast { message } => self.cmd_broadcast(from, &message, now),
            Command::ListPeers => {
                let peers = self.open_peers();
                self.reply(from, Event::PeerList { peers });
            }
            Command::Connect { target_peer_id } => self.cmd_connect(from, &target_peer_id, now),
            Command::Status => {
                let status = StatusEvent {
                    peer_id: self.peer_id.clone().unwrap_or_default(),
                    registry: self.registry.as_str().to_owned(),
                    peers: self.open_peers(),
                    version: self.config.version.clone(),
                    paths: self.paths(),
                };
                self.reply(from, Event::Status(status));
            }
        }
    }

    /// Closes every link gracefully (SCTP shutdown, DTLS close_notify) and
    /// stops making new ones. Keep servicing until [`Mesh::is_idle`].
    pub fn shutdown(&mut self, now: Instant) {
        self.touch(now);
        self.shutting_down = true;
        let ids: Vec<ConnId> = self.conns.iter().map(|c| c.id).collect();
        for id in ids {
            self.retire(id, now);
        }
        self.reap(now);
    }

    /// No connection needs servicing any more.
    pub fn is_idle(&self) -> bool {
        self.conns.is_empty()
    }

    // ----- signaling -----

    fn on_peer_list(&mut self, peers: Vec<String>, now: Instant) {
        let me = self.peer_id.clone().unwrap_or_default();
        self.listed = peers.into_iter().filter(|p| *p != me && !p.is_empty()).take(MAX_LISTED).collect();
        log::debug!("registry lists {} peers", self.listed.len());
        for st in self.peers.values_mut() {
            st.recheck_at = None;
        }
        // Forget what we know of peers that are neither listed nor linked;
        // what was kept for them cannot be delivered.
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(p, st)| st.current.is_none() && !self.listed.contains(*p))
            .map(|(p, _)| p.clone())
            .collect();
        for peer in gone {
            if let Some(mut st) = self.peers.remove(&peer) {
                self.undeliverable(&peer, st.outbox.take_all(), error_codes::UNKNOWN_PEER, "is no longer listed");
            }
        }
        if !self.shutting_down {
            let listed: Vec<String> = self.listed.iter().cloned().collect();
            for peer in listed {
                if !self.has_live_link(&peer) {
                    self.start_offer(&peer, now);
                }
            }
        }
        for (agent, peer) in std::mem::take(&mut self.pending_connects) {
            if !self.listed.contains(&peer) && !self.has_live_link(&peer) {
                self.reply_error(
                    agent,
                    error_codes::UNKNOWN_PEER,
                    format!("{peer} is not connected to the registry"),
                    "connect",
                    Some(&peer),
                    None,
                );
            }
        }
    }

    fn on_peer_left(&mut self, peer: &str, now: Instant) {
        self.listed.remove(peer);
        if let Some(st) = self.peers.get_mut(peer) {
            st.recheck_at = None;
        }
        if let Some(id) = self.current_of(peer) {
            log::info!("peer {peer} left the registry; closing its link");
            self.retire(id, now);
            self.reap(now);
        }
        if let Some(mut st) = self.peers.remove(peer) {
            self.undeliverable(peer, st.outbox.take_all(), error_codes::UNKNOWN_PEER, "left the mesh");
        }
        self.maybe_send_status(now);
    }

    fn on_offer(&mut self, peer: &str, sdp: &str, now: Instant) {
        if self.shutting_down {
            return;
        }
        if !self.offers.allow(peer, now) {
            if let Some(note) = self.noisy.allow(now) {
                log::warn!("ignoring an offer from {peer}: too many offers in a short time{note}");
            }
            return;
        }
        // The registry relays only between authorized, connected peers, so
        // an offer means the peer is there, even when it joined after our
        // last `peer_list` (joins are not pushed).
        if self.listed.len() < MAX_LISTED {
            self.listed.insert(peer.to_owned());
        }
        let me = self.peer_id.clone().unwrap_or_default();
        if let Some(id) = self.current_of(peer) {
            let awaiting = self.conn(id).is_some_and(|c| c.awaiting_answer);
            if awaiting && me.as_str() < peer {
                // Glare: our offer wins (docs/PROTOCOL.md §5.5); the peer answers it.
                log::debug!("glare with {peer}: keeping our offer");
                return;
            }
            if awaiting {
                log::debug!("glare with {peer}: dropping our offer and answering theirs");
            } else {
                log::info!("peer {peer} offered again (restarted?); replacing its link");
            }
            self.retire(id, now);
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!("refusing the offer of {peer}: {} connections already", self.conns.len());
            return;
        }
        let (link, answer) = match PeerLink::new_answerer(sdp, self.host_candidates(), &self.config.link, now) {
            Ok(pair) => pair,
            Err(e) => {
                if let Some(note) = self.noisy.allow(now) {
                    log::warn!("cannot answer the offer of {peer}: {e}{note}");
                }
                return;
            }
        };
        self.launch(peer, link, types::ANSWER, answer, now);
        log::info!("answered the offer of {peer}");
        self.reap(now);
    }

    fn on_answer(&mut self, peer: &str, sdp: &str, now: Instant) {
        let Some(idx) = self.current_of(peer).and_then(|id| self.index(id)) else {
            log::debug!("ignoring an answer from {peer}: no offer of ours is waiting");
            return;
        };
        if !self.conns[idx].awaiting_answer {
            log::debug!("ignoring a second answer from {peer}");
            return;
        }
        match self.conns[idx].link.accept_answer(sdp, now) {
            Ok(()) => self.conns[idx].awaiting_answer = false,
            Err(LinkError::InvalidSdp(e)) => {
                if let Some(note) = self.noisy.allow(now) {
                    log::warn!("ignoring an unusable answer from {peer}: {e}{note}");
                }
            }
            Err(e) => {
                self.conns[idx].awaiting_answer = false;
                log::warn!("answer from {peer} failed: {e}");
            }
        }
        self.pump(idx, now);
        self.reap(now);
    }

    fn on_candidate(&mut self, peer: &str, c: &IceCandidatePayload, now: Instant) {
        let Some(idx) = self.current_of(peer).and_then(|id| self.index(id)) else {
            log::debug!("ignoring a candidate from {peer}: no link");
            return;
        };
        self.conns[idx].link.add_remote_candidate(c);
        self.pump(idx, now);
    }

    fn start_offer(&mut self, peer: &str, now: Instant) {
        if self.registry != RegistryState::Connected || self.shutting_down {
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!("not offering to {peer}: {} connections already", self.conns.len());
            return;
        }
        let (link, offer) = match PeerLink::new_offerer(self.host_candidates(), &self.config.link, now) {
            Ok(pair) => pair,
            Err(e) => {
                log::warn!("cannot make an offer for {peer}: {e}");
                return;
            }
        };
        self.launch(peer, link, types::OFFER, offer, now);
        log::info!("offered to {peer}");
    }

    /// Takes a new link to `peer` into the mesh and sends its `kind` (offer
    /// or answer) with `sdp`, then the server-reflexive candidates known.
    fn launch(&mut self, peer: &str, mut link: PeerLink, kind: &str, sdp: String, now: Instant) {
        link.set_name(peer);
        let id = self.add_conn(peer, link, kind == types::OFFER, now);
        self.send_sdp(kind, peer, sdp, id);
        if let Some(idx) = self.index(id) {
            self.trickle_all(idx);
            self.pump(idx, now);
        }
    }

    /// Sends an offer or answer, then trickles the host candidates it
    /// carries, for stacks that only look at trickled ones.
    fn send_sdp(&mut self, kind: &str, peer: &str, sdp: String, id: ConnId) {
        let mid = self.conn(id).and_then(|c| c.link.mid());
        let candidates: Vec<String> = sdp
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("a="))
            .filter(|l| l.starts_with("candidate:"))
            .map(str::to_owned)
            .collect();
        self.signal(kind, Some(peer), serde_json::to_value(SdpPayload { sdp }).unwrap_or(Value::Null));
        for candidate in candidates {
            let payload = IceCandidatePayload { candidate, sdp_mid: mid.clone(), sdp_mline_index: Some(0) };
            self.signal(types::ICE_CANDIDATE, Some(peer), serde_json::to_value(payload).unwrap_or(Value::Null));
        }
    }

    /// The host candidates new links offer: none when only relayed ones may
    /// be used.
    fn host_candidates(&self) -> &[SocketAddr] {
        if self.config.relay_only { &[] } else { &self.local_candidates }
    }

    /// Gives a new link every known server-reflexive and relayed candidate,
    /// after its SDP went out (the remote must know the link before its
    /// candidates).
    fn trickle_all(&mut self, idx: usize) {
        let known: Vec<Trickled> = self.trickled.iter().copied().collect();
        for cand in known {
            self.trickle(idx, cand);
        }
    }

    /// Adds one candidate to a link and trickles it. str0m may refuse it
    /// (e.g. redundant with a candidate it has); that is fine.
    fn trickle(&mut self, idx: usize, cand: Trickled) {
        let peer = self.conns[idx].peer.clone();
        let link = &mut self.conns[idx].link;
        let (added, what) = match cand {
            Trickled::Srflx { addr, base } => (link.add_local_srflx_candidate(addr, base), addr),
            Trickled::Relay { relayed, local, .. } => (link.add_local_relayed_candidate(relayed, local), relayed),
        };
        match added {
            Some(payload) => {
                log::debug!("trickling candidate {what} to {peer}");
                self.signal(types::ICE_CANDIDATE, Some(&peer), serde_json::to_value(payload).unwrap_or(Value::Null));
            }
            None => log::debug!("candidate {what} not used for {peer}"),
        }
    }

    fn send_register(&mut self) {
        let payload =
            RegisterPayload { version: REGISTER_VERSION, features: FEATURES.iter().map(|f| f.to_string()).collect() };
        self.signal(types::REGISTER, None, serde_json::to_value(payload).unwrap_or(Value::Null));
    }

    /// Sends `mesh_status` when the open set or a path differs from the last
    /// one sent (round trips alone do not count).
    fn maybe_send_status(&mut self, now: Instant) {
        if self.registry != RegistryState::Connected {
            return;
        }
        let peers = self.open_peers();
        let paths = self.paths();
        let mut shape = peers.join(",");
        for (peer, r) in &paths {
            shape.push_str(&format!(";{peer}={}/{}>{}", r.local, r.local_transport, r.remote));
        }
        if self.last_status.as_ref() == Some(&shape) {
            return;
        }
        let payload = MeshStatusPayload { peers, paths };
        self.signal(types::MESH_STATUS, None, serde_json::to_value(payload).unwrap_or(Value::Null));
        self.last_status = Some(shape);
        self.status_at = now + self.config.status_interval;
    }

    /// The path of every open link.
    fn paths(&self) -> BTreeMap<String, PathReport> {
        let mut out = BTreeMap::new();
        for c in &self.conns {
            if self.is_current(c)
                && c.opened
                && c.link.is_open()
                && let Some(report) = self.path_report(c)
            {
                out.insert(c.peer.clone(), report);
            }
        }
        out
    }

    fn path_report(&self, c: &Conn) -> Option<PathReport> {
        let path = c.link.path()?;
        let relay = self.trickled.iter().find_map(|t| match t {
            Trickled::Relay { relayed, transport, .. } if *relayed == path.local => Some(*transport),
            _ => None,
        });
        let (local, local_transport) = match relay {
            Some(transport) => (PathKind::Relay, transport.as_str()),
            None => (PathKind::Host, "udp"),
        };
        Some(PathReport {
            local: local.as_str().to_owned(),
            remote: path.remote_kind.as_str().to_owned(),
            local_transport: local_transport.to_owned(),
            remote_transport: "udp".to_owned(),
            rtt_ms: path.rtt.map(|d| d.as_secs_f64() * 1000.0),
        })
    }

    /// Logs a link's path when its kind changes, and reports it.
    fn on_path(&mut self, idx: usize, now: Instant) {
        let Some(report) = self.path_report(&self.conns[idx]) else { return };
        let Some(path) = self.conns[idx].link.path() else { return };
        let kind = (report.local.clone(), report.remote.clone(), report.local_transport.clone());
        let conn = &mut self.conns[idx];
        if conn.path.as_ref() != Some(&kind) {
            conn.path = Some(kind);
            log::info!(
                "path to {}: {} {} -> {} {} ({})",
                conn.peer,
                report.local,
                path.local,
                report.remote,
                path.remote,
                report.local_transport
            );
            if conn.opened {
                self.maybe_send_status(now);
            }
        }
    }

    fn signal(&mut self, kind: &str, target: Option<&str>, payload: Value) {
        if self.registry != RegistryState::Connected {
            return;
        }
        let Some(me) = self.peer_id.as_deref() else { return };
        self.outputs.push_back(MeshOutput::Signal(Envelope::new(kind, me, target, payload)));
    }

    // ----- commands -----

    fn cmd_send(&mut self, from: AgentId, target: &str, message: &MeshMessage, now: Instant) {
        if let Err((code, msg)) = self.send_text(target, message.to_json(), from, now) {
            self.reply_error(from, code, msg, "send", Some(target), Some(&message.request_id));
        }
    }

    fn cmd_broadcast(&mut self, from: AgentId, message: &MeshMessage, now: Instant) {
        let text = message.to_json();
        let limit = self.config.link.max_message_bytes;
        if text.len() > limit {
            let msg = format!("message of {} bytes exceeds the limit of {limit} bytes", text.len());
            self.reply_error(from, error_codes::TOO_LARGE, msg, "broadcast", None, Some(&message.request_id));
            return;
        }
        for peer in self.open_peers() {
            if let Err((code, msg)) = self.send_text(&peer, text.clone(), from, now) {
                self.reply_error(from, code, msg, "broadcast", Some(&peer), Some(&message.request_id));
            }
        }
    }

    /// Sends on the open link to `target`, or keeps the message in its
    /// outbox while the peer is listed but has no open link (a link being
    /// made or re-formed); only a peer nobody lists is refused at once.
    fn send_text(
        &mut self,
        target: &str,
        text: String,
        origin: Origin,
        now: Instant,
    ) -> Result<(), (&'static str, String)> {
        let limit = self.config.link.max_message_bytes;
        if text.len() > limit {
            return Err((
                error_codes::TOO_LARGE,
                format!("message of {} bytes exceeds the limit of {limit} bytes", text.len()),
            ));
        }
        let open = self.current_of(target).and_then(|id| self.index(id)).filter(|&i| self.conns[i].link.is_open());
        let waiting = self.peers.get(target).is_some_and(|st| !st.outbox.is_empty());
        if let Some(idx) = open
            && !waiting
        {
            let result = self.conns[idx].link.send(&text, origin);
            self.defer_pump(idx);
            return result.map_err(|e| {
                let code = match e {
                    SendError::TooLarge { .. } => error_codes::TOO_LARGE,
                    SendError::Backpressure => error_codes::BACKPRESSURE,
                    SendError::NotOpen | SendError::Empty => error_codes::NOT_CONNECTED,
                };
                (code, format!("{target}: {e}"))
            });
        }
        if !self.listed.contains(target) && self.current_of(target).is_none() {
            return Err((error_codes::UNKNOWN_PEER, format!("no peer {target}")));
        }
        let limits = self.config.outbox;
        let st = self.peers.entry(target.to_owned()).or_default();
        if st.outbox.push(origin, text, now, limits).is_err() {
            let msg = format!("{target}: the link is not open and {} bytes already wait for it", st.outbox.bytes());
            return Err((error_codes::BACKPRESSURE, msg));
        }
        if let Some(idx) = open {
            self.flush_outbox(idx);
        }
        Ok(())
    }

    /// Moves what waits for a peer into its link, now open, in order, as
    /// far as the link takes it; the rest goes once it has room.
    fn flush_outbox(&mut self, idx: usize) {
        let peer = self.conns[idx].peer.clone();
        let mut too_large = Vec::new();
        {
            let Some(st) = self.peers.get_mut(&peer) else { return };
            let link = &mut self.conns[idx].link;
            while let Some((origin, text)) = st.outbox.front() {
                match link.send(text, origin) {
                    Ok(()) => st.outbox.pop(),
                    Err(SendError::TooLarge { .. }) => {
                        // The new link's peer takes less than the old one.
                        too_large.push((origin, text.to_owned()));
                        st.outbox.pop();
                    }
                    Err(_) => break,
                }
            }
        }
        self.undeliverable(&peer, too_large, error_codes::TOO_LARGE, "takes smaller messages now");
        self.defer_pump(idx);
    }

    /// Messages that waited for their peer too long.
    fn expire_outboxes(&mut self, now: Instant) {
        let due: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, st)| st.outbox.next_expiry().is_some_and(|at| at <= now))
            .map(|(p, _)| p.clone())
            .collect();
        for peer in due {
            let expired = self.peers.get_mut(&peer).map(|st| st.outbox.expire(now)).unwrap_or_default();
            let why = format!("had no open link for {:?}", self.config.outbox.ttl);
            self.undeliverable(&peer, expired, error_codes::EXPIRED, &why);
        }
    }

    /// What a link that ended had taken but not delivered: kept for the
    /// next link while the peer is listed, reported otherwise.
    fn requeue_undelivered(&mut self, idx: usize, now: Instant) {
        let undelivered = self.conns[idx].link.take_undelivered();
        if undelivered.is_empty() {
            return;
        }
        let peer = self.conns[idx].peer.clone();
        if self.listed.contains(&peer) && !self.shutting_down {
            log::debug!("keeping {} undelivered messages for {peer}'s next link", undelivered.len());
            let limits = self.config.outbox;
            self.peers.entry(peer).or_default().outbox.requeue(undelivered, now, limits);
        } else {
            self.undeliverable(&peer, undelivered, error_codes::UNKNOWN_PEER, "left before the message arrived");
        }
    }

    /// Tells each message's agent that it was not delivered.
    fn undeliverable(&mut self, peer: &str, messages: Vec<(Origin, String)>, code: &str, why: &str) {
        for (origin, text) in messages {
            if origin == 0 {
                continue;
            }
            let request_id = serde_json::from_str::<MeshMessage>(&text).map(|m| m.request_id).unwrap_or_default();
            let msg = format!("{peer} {why}; message not delivered");
            self.reply_error(origin, code, msg, "send", Some(peer), Some(&request_id));
        }
    }

    fn cmd_connect(&mut self, from: AgentId, target: &str, now: Instant) {
        if self.peer_id.as_deref() == Some(target) {
            self.reply_error(
                from,
                error_codes::UNKNOWN_PEER,
                "that is this sidecar".into(),
                "connect",
                Some(target),
                None,
            );
            return;
        }
        if self.has_live_link(target) {
            return;
        }
        if self.registry != RegistryState::Connected {
            let msg = "the registry is not reachable; offers cannot be sent".to_owned();
            self.reply_error(from, error_codes::NOT_CONNECTED, msg, "connect", Some(target), None);
            return;
        }
        if self.listed.contains(target) {
            self.start_offer(target, now);
        } else {
            // Joins are not pushed, so our list may be stale: ask again; the
            // `peer_list` rule offers if the peer is there.
            self.pending_connects.push((from, target.to_owned()));
            self.send_register();
        }
    }

    fn reply(&mut self, to: AgentId, event: Event) {
        self.outputs.push_back(MeshOutput::Event { to: Some(to), event });
    }

    fn reply_error(
        &mut self,
        to: AgentId,
        code: &str,
        message: String,
        command: &str,
        target: Option<&str>,
        request_id: Option<&str>,
    ) {
        let event = Event::Error(ErrorEvent {
            code: code.to_owned(),
            message: Some(message),
            command: Some(command.to_owned()),
            target_peer: target.map(str::to_owned),
            count: None,
            request_id: request_id.filter(|r| !r.is_empty()).map(str::to_owned),
        });
        self.reply(to, event);
    }

    fn broadcast(&mut self, event: Event) {
        self.outputs.push_back(MeshOutput::Event { to: None, event });
    }

    // ----- links -----

    fn add_conn(&mut self, peer: &str, link: PeerLink, offerer: bool, now: Instant) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.push(Conn {
            id,
            peer: peer.to_owned(),
            link,
            awaiting_answer: offerer,
            deadline: now,
            opened: false,
            reported_end: false,
            unpolled: 0,
            path: None,
        });
        self.peers.entry(peer.to_owned()).or_default().current = Some(id);
        id
    }

    /// Drains one link until it sleeps, acting on what it reports.
    fn pump(&mut self, idx: usize, now: Instant) {
        loop {
            match self.conns[idx].link.poll_output() {
                LinkOutput::Transmit { source, destination, contents } => {
                    self.outputs.push_back(MeshOutput::Transmit { source, destination, contents })
                }
                LinkOutput::Timeout(t) => {
                    self.conns[idx].deadline = t;
                    if self.conns[idx].opened
                        && self.peers.get(&self.conns[idx].peer).is_some_and(|st| !st.outbox.is_empty())
                    {
                        self.flush_outbox(idx);
                    }
                    return;
                }
                LinkOutput::Open => self.on_open(idx, now),
                LinkOutput::RemoteAddress(addr) => self.outputs.push_back(MeshOutput::RemoteAddress(addr)),
                LinkOutput::PathChanged => self.on_path(idx, now),
                LinkOutput::PeerMoved(addr) => self.on_peer_moved(idx, addr, now),
                LinkOutput::Message(text) => self.on_message(idx, &text),
                LinkOutput::Closed => self.on_closed(idx, now),
            }
        }
    }

    /// The peer's NAT moved it and our data no longer reaches it: a fresh
    /// link at once, from whichever side noticed (an offer replaces the
    /// peer's link too). What the old one had not delivered goes over the
    /// new one.
    fn on_peer_moved(&mut self, idx: usize, addr: SocketAddr, now: Instant) {
        if !self.is_current(&self.conns[idx]) || !self.conns[idx].opened {
            return;
        }
        let (id, peer) = (self.conns[idx].id, self.conns[idx].peer.clone());
        log::info!("{peer} moved to {addr} and our data no longer reaches it: offering a fresh link");
        self.retire(id, now);
        self.start_offer(&peer, now);
    }

    fn on_open(&mut self, idx: usize, now: Instant) {
        if !self.is_current(&self.conns[idx]) || self.conns[idx].opened {
            return;
        }
        let conn = &mut self.conns[idx];
        conn.opened = true;
        conn.awaiting_answer = false;
        let peer = conn.peer.clone();
        if let Some(st) = self.peers.get_mut(&peer) {
            st.backoff = None;
            st.recheck_at = None;
        }
        log::info!("data channel to {peer} is open");
        self.broadcast(Event::PeerConnected { peer_id: peer });
        self.flush_outbox(idx);
        self.maybe_send_status(now);
    }

    fn on_message(&mut self, idx: usize, text: &str) {
        let conn = &mut self.conns[idx];
        let message: MeshMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                if let Some(note) = self.noisy.allow(self.last_now) {
                    let (len, peer) = (text.len(), &conn.peer);
                    log::warn!("dropping a {len} byte message from {peer} that is not a mesh message: {e}{note}");
                }
                return;
            }
        };
        if message.kind == "ping" {
            let pong = MeshMessage {
                kind: "pong".into(),
                request_id: message.request_id,
                source_agent: message.target_agent,
                target_agent: message.source_agent,
                payload: message.payload,
            };
            if let Err(e) = conn.link.send(&pong.to_json(), 0) {
                log::debug!("cannot answer a ping of {}: {e}", conn.peer);
            }
            return;
        }
        let from_peer = conn.peer.clone();
        self.broadcast(Event::Message { from_peer, message });
    }

    fn on_closed(&mut self, idx: usize, now: Instant) {
        let current = self.is_current(&self.conns[idx]);
        let conn = &mut self.conns[idx];
        let peer = conn.peer.clone();
        let was_open = conn.opened && !conn.reported_end;
        conn.reported_end = true;
        self.requeue_undelivered(idx, now);
        if !current {
            return;
        }
        if let Some(st) = self.peers.get_mut(&peer) {
            st.current = None;
        }
        if was_open {
            log::info!("data channel to {peer} closed");
            self.broadcast(Event::PeerDisconnected { peer_id: peer.clone() });
        } else {
            log::info!("link to {peer} failed before it opened");
        }
        self.maybe_send_status(now);
        self.schedule_recheck(&peer, now);
    }

    /// After a dead link: the smaller peer_id re-offers after a backoff
    /// (docs/PROTOCOL.md §5.5). The larger one checks later too, in case the smaller
    /// never learns of the failure (e.g. our own offer was what got lost);
    /// by then the smaller one's offer normally made a live link, so the
    /// check offers nothing.
    fn schedule_recheck(&mut self, peer: &str, now: Instant) {
        if self.shutting_down {
            return;
        }
        let smaller = self.peer_id.as_deref().is_some_and(|me| me < peer);
        let (min, max) = (self.config.reoffer_min, self.config.reoffer_max);
        let jitter = self.next_random();
        let Some(st) = self.peers.get_mut(peer) else { return };
        let base = st.backoff.unwrap_or(min);
        st.backoff = Some((base * 2).min(max));
        // Half fixed, half random: spread without ever re-offering at once.
        let delay = base / 2 + base.mul_f64(jitter) / 2;
        let delay = if smaller { delay } else { delay * 2 + min };
        st.recheck_at = Some(now + delay);
        log::debug!("checking on {peer} again in {delay:?}");
    }

    /// Ends a connection for good: it stops being current, its
    /// `peer_disconnected` (if it had opened) is reported now, and nothing it
    /// reports later counts.
    fn retire(&mut self, id: ConnId, now: Instant) {
        let Some(idx) = self.index(id) else { return };
        let peer = self.conns[idx].peer.clone();
        if let Some(st) = self.peers.get_mut(&peer)
            && st.current == Some(id)
        {
            st.current = None;
        }
        let conn = &mut self.conns[idx];
        if conn.opened && !conn.reported_end {
            log::info!("data channel to {peer} closed");
            self.outputs.push_back(MeshOutput::Event { to: None, event: Event::PeerDisconnected { peer_id: peer } });
        }
        let conn = &mut self.conns[idx];
        conn.reported_end = true;
        conn.awaiting_answer = false;
        conn.link.close();
        self.requeue_undelivered(idx, now);
        self.pump(idx, now);
        self.maybe_send_status(now);
    }

    /// Polling a link walks its whole SCTP send queue (sctp-proto looks for
    /// chunks to retransmit on every poll), so a burst of datagrams or `send`
    /// commands is fed first and polled once, at the next
    /// [`Mesh::poll_output`]; polling after every SACK cost half of the
    /// sender's CPU under bulk traffic. But not too many: the DTLS layer
    /// (dimpl) keeps at most 30 unprocessed records and drops the rest,
    /// which stalls SCTP until its retransmission timer.
    fn defer_pump(&mut self, idx: usize) {
        let conn = &mut self.conns[idx];
        conn.unpolled += 1;
        if conn.unpolled >= MAX_UNPOLLED_INPUTS {
            conn.unpolled = 0;
            self.pump(idx, self.last_now);
        }
        // Reaping, and polling what is left, happen in `settle`.
        self.unpolled = true;
    }

    /// Polls the links that were fed input since their last poll.
    fn settle(&mut self) {
        if !self.unpolled {
            return;
        }
        self.unpolled = false;
        let now = self.last_now;
        for idx in 0..self.conns.len() {
            if std::mem::take(&mut self.conns[idx].unpolled) > 0 {
                self.pump(idx, now);
            }
        }
        self.reap(now);
    }

    /// Drops connections that finished draining. A current link that died
    /// without saying so still gets its end reported first.
    fn reap(&mut self, now: Instant) {
        for idx in 0..self.conns.len() {
            let c = &self.conns[idx];
            if !c.link.is_alive() && !c.reported_end && self.is_current(c) {
                self.on_closed(idx, now);
            }
        }
        self.conns.retain(|c| c.link.is_alive());
    }

    fn has_live_link(&self, peer: &str) -> bool {
        self.current_of(peer).and_then(|id| self.conn(id)).is_some_and(|c| c.link.is_alive() && !c.reported_end)
    }

    fn current_of(&self, peer: &str) -> Option<ConnId> {
        self.peers.get(peer).and_then(|st| st.current)
    }

    fn is_current(&self, c: &Conn) -> bool {
        self.current_of(&c.peer) == Some(c.id)
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.iter().find(|c| c.id == id)
    }

    fn index(&self, id: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| c.id == id)
    }

    fn touch(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
    }

    /// Uniform in [0, 1): xorshift64*, plenty for spreading retries.
    fn next_random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sim::{self, SimOutput, SimSidecar};
    use serde_json::json;

    type World = sim::World<Mesh>;

    impl SimSidecar for Mesh {
        fn handle_datagram(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) {
            Mesh::handle_datagram(self, now, source, destination, bytes);
        }
        fn handle_frame(&mut self, text: &str, now: Instant) {
            self.handle_signal(text, now);
        }
        fn handle_registry_connected(&mut self, peer_id: &str, now: Instant) {
            Mesh::handle_registry_connected(self, peer_id, now);
        }
        fn handle_registry_down(&mut self, _now: Instant) {
            Mesh::handle_registry_down(self);
        }
        fn handle_command(&mut self, agent: AgentId, cmd: Command, now: Instant) {
            Mesh::handle_command(self, agent, cmd, now);
        }
        fn handle_timeout(&mut self, now: Instant) {
            Mesh::handle_timeout(self, now);
        }
        fn poll_timeout(&self) -> Instant {
            Mesh::poll_timeout(self)
        }
        fn poll_sim_output(&mut self) -> Option<SimOutput> {
            loop {
                return Some(match self.poll_output()? {
                    MeshOutput::Transmit { source, destination, contents } => {
                        assert_eq!(source, self.local_candidates[0], "sent from a foreign address");
                        SimOutput::Transmit { destination, contents }
                    }
                    MeshOutput::Signal(env) => SimOutput::Signal(env),
                    MeshOutput::Event { to, event } => SimOutput::Event { to, event },
                    MeshOutput::RemoteAddress(_) => continue,
                });
            }
        }
    }

    /// Meshes whose one host candidate is their simulated address.
    fn world(ids: &[&str]) -> World {
        world_with(ids, MeshConfig::default())
    }

    /// Like [`world`] with `config` (its seed replaced per node).
    fn world_with(ids: &[&str], config: MeshConfig) -> World {
        World::new(
            ids,
            Box::new(move |i, generation, addr, now| {
                let seed = if generation == 0 { i as u64 + 1 } else { 99 + u64::from(generation) };
                let mut mesh = Mesh::new(MeshConfig { seed, ..config.clone() }, now);
                mesh.set_local_candidates(vec![addr]);
                mesh
            }),
        )
    }

    /// The kinds of the messages `id`'s agent received, in order.
    fn kinds(w: &World, id: &str) -> Vec<String> {
        w.messages(id).into_iter().map(|(_, m)| m.kind).collect()
    }

    fn send_request(w: &mut World, from: &str, to: &str, kind: &str, request_id: &str) {
        let message = MeshMessage::new(kind, request_id, Value::Null);
        w.command(from, Command::Send { target_peer: to.into(), message });
    }

    fn pair() -> World {
        let mut w = world(&["alpha", "bravo"]);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&["alpha", "bravo"])), "no link");
        w
    }

    /// A peer flooding offers gets five answers per ten seconds; each
    /// answer costs a link and several signaling frames, which would
    /// otherwise spend our own frame limit at the registry.
    #[test]
    fn a_flood_of_offers_from_one_peer_is_answered_only_a_few_times() {
        let now = sim::start();
        let mut mesh = Mesh::new(MeshConfig::default(), now);
        mesh.set_local_candidates(vec![sim::node_addr(0, 0)]);
        mesh.handle_registry_connected("alpha", now);
        let (_link, sdp) = PeerLink::new_offerer(&[sim::node_addr(1, 0)], &LinkConfig::default(), now).unwrap();
        let answers = |mesh: &mut Mesh| {
            let mut n = 0;
            while let Some(out) = mesh.poll_output() {
                if let MeshOutput::Signal(env) = out
                    && env.kind == types::ANSWER
                {
                    n += 1;
                }
            }
            n
        };
        for i in 0..200u64 {
            let frame = Envelope::new(types::OFFER, "mallory", Some("alpha"), json!({"sdp": sdp, "type": "offer"}));
            mesh.handle_signal(&serde_json::to_string(&frame).unwrap(), now + Duration::from_millis(i));
        }
        assert_eq!(answers(&mut mesh), 5);
        // Another peer is answered at once.
        let later = now + Duration::from_millis(300);
        let frame = Envelope::new(types::OFFER, "bravo", Some("alpha"), json!({"sdp": sdp, "type": "offer"}));
        mesh.handle_signal(&serde_json::to_string(&frame).unwrap(), later);
        assert_eq!(answers(&mut mesh), 1);
    }

    #[test]
    fn newcomer_offers_and_both_sides_connect() {
        let mut w = world(&["alpha", "bravo"]);
        w.connect("alpha");
        w.run_for(Duration::from_millis(10));
        let t0 = w.now;
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&["alpha", "bravo"])));
        eprintln!("newcomer to peer_connected: {:?} (simulated; world at {:?})", w.now - t0, w.now - w.start);
        assert!(w.now - t0 < Duration::from_millis(200), "{:?}", w.now - t0);
        assert_eq!(w.offers, [("bravo".to_owned(), "alpha".to_owned())], "only the newcomer offers");

        w.send("alpha", "bravo", "task_request", json!({"n": 1}));
        w.send("bravo", "alpha", "task_result", json!("ok"));
        assert!(w.run_until(Duration::from_secs(1), |w| {
            w.messages("bravo").len() == 1 && w.messages("alpha").len() == 1
        }));
        let (from, m) = &w.messages("bravo")[0];
        assert_eq!(from, "alpha");
        assert_eq!(
            serde_json::to_value(m).unwrap(),
            json!({"type":"task_request","request_id":"","source_agent":"","target_agent":"","payload":{"n":1}})
        );
        assert_eq!(w.messages("alpha")[0].0, "bravo");

        w.command("alpha", Command::ListPeers);
        assert_eq!(w.last_reply("alpha"), Event::PeerList { peers: vec!["bravo".into()] });
        w.command("bravo", Command::Status);
        let Event::Status(s) = w.last_reply("bravo") else { panic!("no status") };
        assert_eq!(
            (s.peer_id.as_str(), s.registry.as_str(), s.peers.as_slice()),
            ("bravo", "connected", &["alpha".to_owned()][..])
        );
        assert!(w.errors("alpha").is_empty() && w.errors("bravo").is_empty());
        w.assert_alternating();
    }

    #[test]
    fn three_peers_form_a_full_mesh_and_broadcast_reaches_each_once() {
        let ids = ["alpha", "bravo", "charlie"];
        let mut w = world(&ids);
        for id in ids {
            w.connect(id);
        }
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&ids)));
        w.command("bravo", Command::Broadcast { message: MeshMessage::new("hello", "r1", json!([1])) });
        assert!(w.run_until(Duration::from_secs(1), |w| {
            w.messages("alpha").len() == 1 && w.messages("charlie").len() == 1
        }));
        w.run_for(Duration::from_millis(100));
        assert!(w.messages("bravo").is_empty());
        for id in ["alpha", "charlie"] {
            let (from, m) = &w.messages(id)[0];
            assert_eq!((from.as_str(), m.kind.as_str(), m.request_id.as_str()), ("bravo", "hello", "r1"));
        }
        w.command("charlie", Command::ListPeers);
        assert_eq!(w.last_reply("charlie"), Event::PeerList { peers: vec!["alpha".into(), "bravo".into()] });
        w.assert_alternating();
    }

    #[test]
    fn srflx_learned_later_reaches_connecting_links_and_new_ones() {
        let ids = ["alpha", "bravo", "charlie"];
        let mut w = world(&ids);
        w.connect("alpha");
        w.run_for(Duration::from_millis(10));
        w.connect("bravo");
        // bravo's offer is out; the link exists and is still connecting.
        assert!(w.run_until(Duration::from_secs(1), |w| !w.offers.is_empty()));
        assert!(!w.connected("bravo", "alpha"));
        let host_b = w.nodes[1].addr;
        let srflx_b: SocketAddr = "203.0.113.20:41000".parse().unwrap();
        let now = w.now;
        // Our own host address is not a server-reflexive one.
        w.core("bravo").add_srflx_candidate(host_b, host_b, now);
        w.core("bravo").add_srflx_candidate(srflx_b, host_b, now);
        w.core("bravo").add_srflx_candidate(srflx_b, host_b, now);
        w.drain("bravo");
        let sent = w.candidates_sent("bravo", "alpha", "srflx");
        assert_eq!(sent.len(), 1, "{:?}", w.candidates);
        assert!(sent[0].contains("203.0.113.20 41000 typ srflx raddr"), "{}", sent[0]);
        // Unreachable (TEST-NET) srflx candidates do not get in the way.
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&["alpha", "bravo"])));

        // Open links need no more candidates.
        let later: SocketAddr = "203.0.113.20:41001".parse().unwrap();
        let now = w.now;
        w.core("bravo").add_srflx_candidate(later, host_b, now);
        w.drain("bravo");
        assert_eq!(w.candidates_sent("bravo", "alpha", "srflx").len(), 1);

        // A link made later (bravo answers charlie) gets both at once.
        w.connect("charlie");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&ids)));
        let to_charlie = w.candidates_sent("bravo", "charlie", "srflx");
        assert_eq!(to_charlie.len(), 2, "{to_charlie:?}");
        assert!(to_charlie.iter().any(|c| c.contains("41000")) && to_charlie.iter().any(|c| c.contains("41001")));
        assert!(w.candidates_sent("alpha", "charlie", "srflx").is_empty(), "alpha learned none");
        w.assert_alternating();
    }

    #[test]
    fn glare_ends_with_one_link_from_the_smaller_offer() {
        let mut w = world(&["alpha", "bravo"]);
        // Both are registered before either asks for the list, so each sees
        // the other and both offer.
        w.nodes[0].ws = true;
        w.nodes[1].ws = true;
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&["alpha", "bravo"])));
        assert_eq!(w.offers.len(), 2, "{:?}", w.offers);
        w.run_for(Duration::from_secs(20));
        assert_eq!(w.link_events("alpha", "bravo"), [true]);
        assert_eq!(w.link_events("bravo", "alpha"), [true]);
        assert_eq!(w.core("alpha").connection_count(), 1);
        assert_eq!(w.core("bravo").connection_count(), 1);
        w.send("bravo", "alpha", "x", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| w.messages("alpha").len() == 1));
    }

    #[test]
    fn restarted_peer_replaces_the_old_link_at_once() {
        let mut w = pair();
        // The registry swaps the WebSocket without a peer_left; the old
        // process vanished without a goodbye.
        w.kill("bravo", false);
        let t0 = w.now;
        w.restart("bravo");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&["alpha", "bravo"])
            && w.link_events("alpha", "bravo").len() == 3));
        eprintln!("restarted peer reconnected after {:?} (simulated)", w.now - t0);
        assert!(w.now - t0 < Duration::from_secs(1));
        assert_eq!(w.link_events("alpha", "bravo"), [true, false, true]);
        // The old link's own end (silence timeout) must not touch the new one.
        w.run_for(Duration::from_secs(40));
        assert_eq!(w.link_events("alpha", "bravo"), [true, false, true]);
        assert_eq!(w.link_events("bravo", "alpha"), [true]);
        assert_eq!(w.core("alpha").connection_count(), 1);
        w.send("alpha", "bravo", "a2b", Value::Null);
        w.send("bravo", "alpha", "b2a", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| {
            w.messages("alpha").len() == 1 && w.messages("bravo").len() == 1
        }));
    }

    #[test]
    fn peer_left_closes_the_link_once() {
        let ids = ["alpha", "bravo", "charlie"];
        let mut w = world(&ids);
        for id in ids {
            w.connect(id);
        }
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&ids)));
        let t0 = w.now;
        let offers = w.offers.len();
        w.kill("charlie", true);
        assert!(w.run_until(Duration::from_secs(1), |w| !w.connected("alpha", "charlie")
            && !w.connected("bravo", "charlie")));
        assert!(w.now - t0 < Duration::from_millis(50));
        w.run_for(Duration::from_secs(30));
        assert_eq!(w.link_events("alpha", "charlie"), [true, false]);
        assert_eq!(w.link_events("bravo", "charlie"), [true, false]);
        assert_eq!(w.offers.len(), offers, "a departed peer is not re-offered: {:?}", w.offers);
        w.send("alpha", "charlie", "x", Value::Null);
        assert_eq!(w.errors("alpha").last().unwrap().code, error_codes::UNKNOWN_PEER);
        assert!(w.connected("alpha", "bravo"));
    }

    #[test]
    fn dead_link_is_detected_and_the_smaller_peer_re_offers() {
        let mut w = pair();
        let offers_before = w.offers.len();
        w.block("alpha", "bravo");
        let t0 = w.now;
        assert!(w.run_until(Duration::from_secs(30), |w| {
            !w.connected("alpha", "bravo") && !w.connected("bravo", "alpha")
        }));
        eprintln!("dead link detected after {:?} (simulated)", w.now - t0);
        assert!(w.now - t0 <= Duration::from_secs(15));
        w.run_for(Duration::from_secs(5));
        w.net.unblock_all();
        assert!(w.run_until(Duration::from_secs(60), |w| w.full_mesh(&["alpha", "bravo"])));
        let reoffers = &w.offers[offers_before..];
        assert!(!reoffers.is_empty());
        assert_eq!(reoffers[0], ("alpha".to_owned(), "bravo".to_owned()), "the smaller id re-offers: {reoffers:?}");
        w.run_for(Duration::from_secs(30));
        assert_eq!(w.link_events("alpha", "bravo"), [true, false, true]);
        assert_eq!(w.link_events("bravo", "alpha"), [true, false, true]);
        w.send("bravo", "alpha", "back", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| w.messages("alpha").len() == 1));
    }

    #[test]
    fn registry_outage_leaves_links_alone_and_live_links_are_not_re_offered() {
        let mut w = world(&["alpha", "bravo", "charlie"]);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&["alpha", "bravo"])));
        w.registry_down();
        w.command("alpha", Command::Status);
        let Event::Status(s) = w.last_reply("alpha") else { panic!() };
        assert_eq!((s.registry.as_str(), s.peers.len()), ("down", 1));
        w.run_for(Duration::from_secs(60));
        w.send("alpha", "bravo", "during", Value::Null);
        w.send("bravo", "alpha", "during", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| {
            w.messages("alpha").len() == 1 && w.messages("bravo").len() == 1
        }));
        let offers = w.offers.len();
        w.registry_back(&["alpha", "bravo"]);
        w.run_for(Duration::from_secs(5));
        assert_eq!(w.offers.len(), offers, "live links were re-offered: {:?}", &w.offers[offers..]);
        w.connect("charlie");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&["alpha", "bravo", "charlie"])));
        assert_eq!(w.link_events("alpha", "bravo"), [true]);
        w.assert_alternating();
    }

    #[test]
    fn ping_is_answered_by_the_sidecar() {
        let mut w = pair();
        let ping = MeshMessage {
            kind: "ping".into(),
            request_id: "p-1".into(),
            source_agent: "agent-a".into(),
            target_agent: "agent-b".into(),
            payload: json!({"t": 5}).into(),
        };
        w.command("alpha", Command::Send { target_peer: "bravo".into(), message: ping });
        assert!(w.run_until(Duration::from_secs(1), |w| w.messages("alpha").len() == 1));
        let (from, pong) = &w.messages("alpha")[0];
        assert_eq!(from, "bravo");
        assert_eq!((pong.kind.as_str(), pong.request_id.as_str()), ("pong", "p-1"));
        assert_eq!((pong.source_agent.as_str(), pong.target_agent.as_str()), ("agent-b", "agent-a"));
        assert!(w.messages("bravo").is_empty(), "pings are not forwarded");
    }

    #[test]
    fn data_channel_text_that_is_not_a_mesh_message_is_dropped() {
        let mut w = pair();
        let now = w.now;
        let a = w.core("alpha");
        let idx = a.conns.iter().position(|c| c.peer == "bravo").unwrap();
        for junk in ["not json", "{\"payload\":1}", "[1,2]", "{\"type\":5}"] {
            a.conns[idx].link.send(junk, 0).unwrap();
        }
        a.pump(idx, now);
        w.drain("alpha");
        w.send("alpha", "bravo", "valid", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| !w.messages("bravo").is_empty()));
        w.run_for(Duration::from_millis(100));
        let got: Vec<String> = w.messages("bravo").into_iter().map(|(_, m)| m.kind).collect();
        assert_eq!(got, ["valid"]);
        assert!(w.connected("bravo", "alpha"));
    }

    #[test]
    fn commands_that_cannot_be_done_get_errors() {
        let mut w = pair();
        // Exactly at the limit: arrives intact.
        let overhead = MeshMessage::new("big", "", json!("")).to_json().len();
        let body = "x".repeat(65_000 - overhead);
        let big = MeshMessage::new("big", "", json!(body));
        assert_eq!(big.to_json().len(), 65_000);
        w.command("alpha", Command::Send { target_peer: "bravo".into(), message: big.clone() });
        assert!(w.errors("alpha").is_empty(), "{:?}", w.errors("alpha"));
        assert!(w.run_until(Duration::from_secs(2), |w| w.messages("bravo").len() == 1));
        assert_eq!(w.messages("bravo")[0].1, big);

        let too_big = MeshMessage::new("big", "", json!(format!("{body}y")));
        w.command("alpha", Command::Send { target_peer: "bravo".into(), message: too_big.clone() });
        let e = w.errors("alpha").pop().unwrap();
        assert_eq!(
            (e.code.as_str(), e.command.as_deref(), e.target_peer.as_deref()),
            (error_codes::TOO_LARGE, Some("send"), Some("bravo"))
        );
        w.command("alpha", Command::Broadcast { message: too_big });
        assert_eq!(w.errors("alpha").pop().unwrap().code, error_codes::TOO_LARGE);

        w.send("alpha", "nobody", "x", Value::Null);
        let e = w.errors("alpha").pop().unwrap();
        assert_eq!((e.code.as_str(), e.target_peer.as_deref()), (error_codes::UNKNOWN_PEER, Some("nobody")));

        w.command("alpha", Command::Connect { target_peer_id: "nobody".into() });
        w.run_for(Duration::from_millis(50));
        let e = w.errors("alpha").pop().unwrap();
        assert_eq!((e.code.as_str(), e.command.as_deref()), (error_codes::UNKNOWN_PEER, Some("connect")));
        // The channel survived all of it.
        w.send("alpha", "bravo", "after", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| w.messages("bravo").len() == 2));
        assert_eq!(w.errors("alpha").len(), 4);
    }

    #[test]
    fn a_flood_is_refused_with_backpressure_not_lost() {
        let mut w = pair();
        let chunk = "m".repeat(60_000);
        let mut accepted = 0;
        loop {
            w.send("alpha", "bravo", "bulk", json!(chunk));
            if let Some(e) = w.errors("alpha").pop() {
                assert_eq!((e.code.as_str(), e.target_peer.as_deref()), (error_codes::BACKPRESSURE, Some("bravo")));
                break;
            }
            accepted += 1;
            assert!(accepted < 1000, "no backpressure");
        }
        assert!(w.run_until(Duration::from_secs(10), |w| w.messages("bravo").len() == accepted));
        w.send("alpha", "bravo", "after", Value::Null);
        assert_eq!(w.errors("alpha").len(), 1);
    }

    #[test]
    fn bulk_traffic_fed_in_bursts_flows_without_stalls() {
        let mut w = pair();
        w.burst_delivery = true;
        // Each 16 KiB message is 15 datagrams, all due at the same instant:
        // bursts far over the 30 records the DTLS layer holds unpolled.
        let chunk = "b".repeat(16_000);
        let started = w.now;
        let mut accepted = 0;
        for _ in 0..100 {
            w.send("alpha", "bravo", "bulk", json!(chunk));
            if w.errors("alpha").is_empty() {
                accepted += 1;
            }
        }
        assert!(accepted >= 8, "only {accepted} accepted");
        // Dropped records would wait for SCTP's retransmission timer (1 s+).
        assert!(w.run_until(Duration::from_millis(300), |w| w.messages("bravo").len() == accepted));
        assert!(w.now - started < Duration::from_millis(300));
    }

    #[test]
    fn connect_asks_the_registry_for_a_peer_it_did_not_know() {
        let mut w = world(&["alpha", "bravo"]);
        w.connect("alpha");
        // bravo is up, but its own register goes unanswered, so it never
        // offers; alpha's list is stale.
        w.swallow_register.insert("bravo".into());
        w.connect("bravo");
        w.run_for(Duration::from_secs(1));
        assert!(w.offers.is_empty());
        w.send("alpha", "bravo", "x", Value::Null);
        assert_eq!(w.errors("alpha").pop().unwrap().code, error_codes::UNKNOWN_PEER);
        w.command("alpha", Command::Connect { target_peer_id: "bravo".into() });
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&["alpha", "bravo"])));
        assert_eq!(w.offers, [("alpha".to_owned(), "bravo".to_owned())]);
        // Already connected: nothing happens.
        w.command("alpha", Command::Connect { target_peer_id: "bravo".into() });
        w.run_for(Duration::from_secs(1));
        assert_eq!(w.offers.len(), 1);
        assert_eq!(w.errors("alpha").len(), 1);
    }

    #[test]
    fn mesh_status_follows_the_open_links() {
        let mut w = world(&["alpha", "bravo"]);
        w.connect("alpha");
        w.connect("bravo");
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&["alpha", "bravo"])));
        let of = |w: &World, id: &str| -> Vec<Vec<String>> {
            w.statuses.iter().filter(|(p, _)| p == id).map(|(_, s)| s.clone()).collect()
        };
        assert_eq!(of(&w, "alpha"), [vec![], vec!["bravo".to_owned()]]);
        let n = w.statuses.len();
        w.run_for(Duration::from_secs(61));
        assert_eq!(w.statuses.len(), n + 4, "every 30 s from each");
        w.kill("bravo", true);
        w.run_for(Duration::from_millis(100));
        assert_eq!(of(&w, "alpha").last().unwrap(), &Vec::<String>::new());
    }

    #[test]
    fn junk_signaling_is_ignored() {
        let mut w = pair();
        let now = w.now;
        let junk = [
            "",
            "nonsense",
            "[]",
            r#"{"type":"offer","peer_id":"mallory","target_id":"alpha","payload":{"sdp":"v=0"}}"#,
            r#"{"type":"offer","peer_id":"mallory","target_id":"alpha","payload":7}"#,
            r#"{"type":"answer","peer_id":"bravo","target_id":"alpha","payload":{"sdp":"garbage"}}"#,
            r#"{"type":"ice_candidate","peer_id":"bravo","target_id":"alpha","payload":{"candidate":"garbage"}}"#,
            r#"{"type":"peer_list","peer_id":"registry","payload":{"peers":"x"}}"#,
            r#"{"type":"error","peer_id":"registry","payload":{"code":"rate_limited","message":"slow down"}}"#,
            r#"{"type":"offer","peer_id":"bravo","target_id":"someone-else","payload":{"sdp":"v=0"}}"#,
            r#"{"type":"surprise","peer_id":"registry"}"#,
        ];
        for text in junk {
            w.core("alpha").handle_signal(text, now);
            w.drain("alpha");
        }
        w.run_for(Duration::from_secs(2));
        assert_eq!(w.link_events("alpha", "bravo"), [true]);
        w.send("alpha", "bravo", "fine", Value::Null);
        assert!(w.run_until(Duration::from_secs(1), |w| w.messages("bravo").len() == 1));
    }

    #[test]
    fn shutdown_says_goodbye_to_every_peer() {
        let ids = ["alpha", "bravo", "charlie"];
        let mut w = world(&ids);
        for id in ids {
            w.connect(id);
        }
        assert!(w.run_until(Duration::from_secs(5), |w| w.full_mesh(&ids)));
        let now = w.now;
        w.core("bravo").shutdown(now);
        w.drain("bravo");
        assert!(w.run_until(Duration::from_secs(1), |w| {
            !w.connected("alpha", "bravo") && !w.connected("charlie", "bravo")
        }));
        assert!(w.run_until(Duration::from_secs(6), |w| w.nodes[1].core.is_idle()));
        assert!(w.connected("alpha", "charlie"));
    }

    #[test]
    fn what_is_sent_while_the_link_re_forms_waits_and_arrives_once_in_order() {
        let mut w = pair();
        w.block("alpha", "bravo");
        // Taken by the link, never acknowledged: the network is gone.
        for kind in ["m1", "m2", "m3"] {
            w.send("alpha", "bravo", kind, Value::Null);
        }
        assert!(w.run_until(Duration::from_secs(20), |w| !w.connected("alpha", "bravo")));
        // The link is down, the peer still listed: kept, not refused.
        for kind in ["m4", "m5"] {
            w.send("alpha", "bravo", kind, Value::Null);
        }
        assert!(w.errors("alpha").is_empty(), "{:?}", w.errors("alpha"));
        w.net.unblock_all();
        assert!(w.run_until(Duration::from_secs(25), |w| w.messages("bravo").len() == 5));
        w.run_for(Duration::from_secs(1));
        assert_eq!(kinds(&w, "bravo"), ["m1", "m2", "m3", "m4", "m5"]);
        assert!(w.errors("alpha").is_empty(), "{:?}", w.errors("alpha"));
        assert_eq!(w.link_events("alpha", "bravo"), [true, false, true]);
    }

    #[test]
    fn a_message_that_waits_too_long_expires_with_its_request_id() {
        let config = MeshConfig {
            outbox: OutboxLimits { ttl: Duration::from_secs(5), ..OutboxLimits::default() },
            ..MeshConfig::default()
        };
        let mut w = world_with(&["alpha", "bravo"], config);
        w.block("alpha", "bravo");
        w.connect("alpha");
        w.connect("bravo");
        // Listed, but the link never forms.
        assert!(w.run_until(Duration::from_secs(1), |w| !w.offers.is_empty()));
        send_request(&mut w, "bravo", "alpha", "hello", "r-7");
        assert!(w.errors("bravo").is_empty());
        assert!(w.run_until(Duration::from_secs(10), |w| !w.errors("bravo").is_empty()));
        let e = w.errors("bravo").pop().unwrap();
        assert_eq!(
            (e.code.as_str(), e.request_id.as_deref(), e.target_peer.as_deref()),
            (error_codes::EXPIRED, Some("r-7"), Some("alpha"))
        );
        assert!(w.now - w.start >= Duration::from_secs(5));
        w.net.unblock_all();
        assert!(w.run_until(Duration::from_secs(40), |w| w.full_mesh(&["alpha", "bravo"])));
        w.run_for(Duration::from_secs(1));
        assert!(w.messages("alpha").is_empty(), "an expired message is not sent later");
    }

    #[test]
    fn a_full_outbox_refuses_with_backpressure_and_a_gone_peer_reports_what_waited() {
        let config =
            MeshConfig { outbox: OutboxLimits { bytes: 400, ..OutboxLimits::default() }, ..MeshConfig::default() };
        let mut w = world_with(&["alpha", "bravo", "charlie"], config);
        w.block("alpha", "bravo");
        for id in ["alpha", "bravo", "charlie"] {
            w.connect(id);
        }
        assert!(w.run_until(Duration::from_secs(5), |w| w.connected("alpha", "charlie")));
        let mut accepted = 0;
        for n in 0..20 {
            send_request(&mut w, "alpha", "bravo", "wait", &format!("w-{n}"));
            if let Some(e) = w.errors("alpha").pop() {
                assert_eq!((e.code.as_str(), e.request_id.as_deref()), (error_codes::BACKPRESSURE, Some("w-3")));
                break;
            }
            accepted += 1;
        }
        assert_eq!(accepted, 3, "three fit in 400 bytes");
        // bravo leaves: the registry says so, and what waited is reported.
        w.kill("bravo", true);
        assert!(w.run_until(Duration::from_secs(1), |w| w.errors("alpha").len() == 4));
        let gone: Vec<(String, Option<String>)> =
            w.errors("alpha")[1..].iter().map(|e| (e.code.clone(), e.request_id.clone())).collect();
        let want: Vec<(String, Option<String>)> =
            (0..3).map(|n| (error_codes::UNKNOWN_PEER.to_owned(), Some(format!("w-{n}")))).collect();
        assert_eq!(gone, want);
        // A peer nobody lists is refused at once.
        send_request(&mut w, "alpha", "bravo", "late", "l-1");
        assert_eq!(w.errors("alpha").pop().unwrap().code, error_codes::UNKNOWN_PEER);
    }
}
