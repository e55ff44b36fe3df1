//! Relayed candidates from TURN servers (RFC 8656; docs/PROTOCOL.md §5.4),
//! sans-IO: one allocation per configured server, each driven by
//! turn-client-proto's state machine (Allocate with long-term credentials
//! and its 401/438 dance, permissions, channels, refreshes before expiry,
//! Refresh with lifetime 0 on exit).
//!
//! The node core ([`super::node`]) gets the servers' names looked up and
//! hands the addresses to [`Relays::set_servers`]. A UDP server is reached
//! over the sidecar's one UDP socket: [`Relays::handle_datagram`] takes what
//! comes from it. A TCP or TLS (`turns:`) server is reached over a stream
//! the shell opens on request ([`RelayOutput::StreamOpen`]; TLS with the
//! same trust roots as the registry) and feeds back in plain bytes. Either
//! way the relayed leg, from the server to the peers, is UDP.
//!
//! What the links send from a relayed address comes through
//! [`Relays::send`] and leaves wrapped for the server; what peers send to
//! it comes out as [`RelayOutput::PeerData`] for the links. Before a link
//! checks a remote candidate, the server must permit its address
//! ([`Relays::permit`]).

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use turn_client_proto::api::{TurnClientApi, TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::types::TransportType;
use turn_client_proto::tcp::TurnClientTcp;
use turn_client_proto::types::TurnCredentials;
use turn_client_proto::udp::TurnClientUdp;

use super::urls::{TurnTransport, TurnUrl, parse_turn_url};

turn_client_proto::impl_client!(Client, (Udp, TurnClientUdp), (Tcp, TurnClientTcp));

type TurnInstant = turn_client_proto::stun::Instant;

/// Identifies one stream to a TCP or TLS TURN server.
pub type StreamId = u64;

/// A failed allocation is tried again after this, doubling per failure up
/// to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Remote addresses remembered to permit on allocations made later; the
/// oldest go first.
const MAX_WANTED_PERMISSIONS: usize = 256;
/// Peers with a bound channel per allocation (4 bytes of overhead per
/// datagram instead of 36).
const MAX_CHANNELS: usize = 64;
/// Servers used at once; more are ignored.
pub const MAX_SERVERS: usize = 8;
/// How long a relayed address reached over a stream (TCP, TLS, or the
/// registry's relay over the WebSocket) waits for UDP allocations still
/// being made. Links rank relayed candidates in the order they get them,
/// and UDP carries nearly twice the throughput at half the added latency;
/// a network without UDP pays this once.
const STREAM_HOLD: Duration = Duration::from_millis(500);

/// A TURN server with the credentials to use it.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    pub url: TurnUrl,
    pub username: String,
    pub password: String,
    /// For the registry's own relay: the run of it that gave the
    /// credentials. A new run has none of the old run's allocations.
    pub instance: Option<String>,
}

impl TurnServer {
    pub fn new(url: TurnUrl, username: &str, password: &str) -> TurnServer {
        TurnServer { url, username: username.to_owned(), password: password.to_owned(), instance: None }
    }
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TurnServer({} as {:?})", self.url, self.username)
    }
}

/// What the relays ask of the node. Drain until `None`.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayOutput {
    /// Send a datagram to a UDP TURN server on the UDP socket.
    Transmit {
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// Open a stream to a TCP TURN server, with TLS checked against
    /// `tls_name` when it is set.
    StreamOpen {
        stream: StreamId,
        server: SocketAddr,
        tls_name: Option<String>,
    },
    /// Send bytes to the registry's relay as a binary frame of the
    /// signaling WebSocket.
    SignalingSend {
        contents: Vec<u8>,
    },
    /// Write to a stream; the shell keeps the order and queues what comes
    /// before the stream is connected.
    StreamSend {
        stream: StreamId,
        contents: Vec<u8>,
    },
    StreamClose {
        stream: StreamId,
    },
    /// A relayed address to offer to links, allocated on `server`.
    Candidate {
        relayed: SocketAddr,
        server: SocketAddr,
        transport: TurnTransport,
    },
    /// A relayed address that is gone.
    CandidateGone {
        relayed: SocketAddr,
    },
    /// A datagram a peer sent to our relayed address.
    PeerData {
        relayed: SocketAddr,
        peer: SocketAddr,
        contents: Vec<u8>,
    },
}

struct Relay {
    server: TurnServer,
    addr: SocketAddr,
    client: Option<Client>,
    stream: Option<StreamId>,
    relayed: Option<SocketAddr>,
    /// Peers with a channel bound or being bound.
    channels: Vec<SocketAddr>,
    /// Addresses asked to be permitted (the client refreshes them itself;
    /// asking twice is an error).
    permitted: Vec<IpAddr>,
    /// When to poll the client next.
    wake: Option<Instant>,
    /// When to try again after a failure.
    retry_at: Option<Instant>,
    failures: u32,
    /// A relayed address not yet given to the links, and until when it
    /// waits (see [`STREAM_HOLD`]).
    held_until: Option<Instant>,
}

impl Relay {
    fn transport(&self) -> TurnTransport {
        self.server.url.transport
    }
}

/// Every allocation of this sidecar.
pub struct Relays {
    /// The zero of turn-client-proto's clock.
    epoch: Instant,
    /// Host candidates of the UDP socket: the local end of UDP allocations.
    local_udp: Vec<SocketAddr>,
    relays: Vec<Relay>,
    wanted: VecDeque<IpAddr>,
    next_stream: StreamId,
    outputs: VecDeque<RelayOutput>,
    shutting_down: bool,
    /// The signaling WebSocket is up: allocations over it can be made.
    signaling_up: bool,
}

impl Relays {
    pub fn new(local_udp: Vec<SocketAddr>, now: Instant) -> Relays {
        Relays {
            epoch: now,
            local_udp,
            relays: Vec::new(),
            wanted: VecDeque::new(),
            next_stream: 1,
            outputs: VecDeque::new(),
            shutting_down: false,
            signaling_up: false,
        }
    }

    /// The signaling WebSocket came up or went down. An allocation over it
    /// is made when it comes up, and is gone with it (the registry's relay
    /// forgets it with the connection).
    pub fn set_signaling_up(&mut self, up: bool, now: Instant) {
        self.signaling_up = up;
        for i in 0..self.relays.len() {
            if self.relays[i].transport() != TurnTransport::Signaling {
                continue;
            }
            if up {
                if self.relays[i].client.is_none() {
                    self.relays[i].failures = 0;
                    self.relays[i].retry_at = Some(now);
                }
            } else if self.relays[i].client.is_some() {
                self.fail(i, now, "the signaling WebSocket closed");
            }
        }
        self.handle_timeout(now);
    }

    /// Bytes from the registry's relay, in binary frames of the signaling
    /// WebSocket.
    pub fn handle_signaling_data(&mut self, bytes: &[u8], now: Instant) {
        let Some(i) = self.relays.iter().position(|r| r.transport() == TurnTransport::Signaling && r.client.is_some())
        else {
            return;
        };
        self.stream_data(i, bytes, now);
    }

    /// The servers to allocate on, with their addresses. Allocations on
    /// servers no longer listed are deleted; a server listed again with new
    /// credentials keeps its allocation, which uses them when it is made
    /// again.
    pub fn set_servers(&mut self, servers: Vec<(TurnServer, SocketAddr)>, now: Instant) {
        let mut keep = vec![false; self.relays.len()];
        for (server, addr) in servers.into_iter().take(MAX_SERVERS) {
            let same = |r: &Relay| r.server.url == server.url && r.addr == addr;
            match self.relays.iter().position(same) {
                Some(i) => {
                    keep[i] = true;
                    let restarted = server.instance.is_some() && server.instance != self.relays[i].server.instance;
                    self.relays[i].server = server;
                    if restarted && self.relays[i].client.is_some() {
                        log::info!(
                            "TURN {}: the registry's relay restarted; allocating again",
                            self.relays[i].server.url
                        );
                        self.end(i, now);
                        self.relays[i].failures = 0;
                        self.relays[i].retry_at = Some(now);
                    }
                }
                None => {
                    keep.push(true);
                    self.relays.push(Relay {
                        server,
                        addr,
                        client: None,
                        stream: None,
                        relayed: None,
                        channels: Vec::new(),
                        permitted: Vec::new(),
                        wake: None,
                        retry_at: Some(now),
                        failures: 0,
                        held_until: None,
                    });
                }
            }
        }
        for i in (0..self.relays.len()).rev() {
            if !keep[i] {
                self.end(i, now);
                self.relays.remove(i);
            }
        }
        self.handle_timeout(now);
    }

    /// Relayed addresses in use.
    pub fn relayed(&self) -> impl Iterator<Item = (SocketAddr, TurnTransport)> + '_ {
        self.relays.iter().filter_map(|r| r.relayed.map(|a| (a, r.transport())))
    }

    /// Whether `addr` is one of our relayed addresses.
    pub fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.relays.iter().any(|r| r.relayed == Some(addr))
    }

    /// Takes a datagram from the UDP socket if it comes from one of our UDP
    /// TURN servers; returns `false` for anything else.
    pub fn handle_datagram(&mut self, source: SocketAddr, bytes: &[u8], now: Instant) -> bool {
        let Some(i) = self
            .relays
            .iter()
            .position(|r| r.addr == source && r.transport() == TurnTransport::Udp && r.client.is_some())
        else {
            return false;
        };
        let t = self.turn_time(now);
        let taken = self.guarded(i, now, |relay, outputs| {
            let client = relay.client.as_mut()?;
            let local = client.local_addr();
            let relayed = relay.relayed;
            Some(match client.recv(Transmit::new(bytes, TransportType::Udp, source, local), t) {
                TurnRecvRet::Handled | TurnRecvRet::PeerIcmp { .. } => true,
                TurnRecvRet::Ignored(_) => false,
                TurnRecvRet::PeerData(data) => {
                    if let Some(relayed) = relayed {
                        let contents = data.data().to_vec();
                        outputs.push_back(RelayOutput::PeerData { relayed, peer: data.peer, contents });
                    }
                    true
                }
            })
        });
        self.drive(i, now);
        taken.unwrap_or(false)
    }

    /// Bytes from the stream to a TCP or TLS server (any chunking).
    pub fn handle_stream_data(&mut self, stream: StreamId, bytes: &[u8], now: Instant) {
        let Some(i) = self.by_stream(stream) else { return };
        if bytes.is_empty() {
            return self.handle_stream_closed(stream, now);
        }
        self.stream_data(i, bytes, now);
    }

    fn stream_data(&mut self, i: usize, bytes: &[u8], now: Instant) {
        let t = self.turn_time(now);
        self.guarded(i, now, |relay, outputs| {
            let client = relay.client.as_mut()?;
            let (local, server) = (client.local_addr(), client.remote_addr());
            let mut data = Vec::new();
            if let TurnRecvRet::PeerData(d) = client.recv(Transmit::new(bytes, TransportType::Tcp, server, local), t) {
                data.push((d.peer, d.data().to_vec()));
            }
            // A chunk may hold several messages.
            while let Some(d) = client.poll_recv(t) {
                data.push((d.peer, d.data().to_vec()));
            }
            // Peer data only comes once there is an allocation.
            if let Some(relayed) = relay.relayed {
                for (peer, contents) in data {
                    outputs.push_back(RelayOutput::PeerData { relayed, peer, contents });
                }
            }
            Some(())
        });
        self.drive(i, now);
    }

    /// The stream to a TCP or TLS server closed or could not be opened.
    pub fn handle_stream_closed(&mut self, stream: StreamId, now: Instant) {
        if let Some(i) = self.by_stream(stream) {
            self.relays[i].stream = None;
            self.fail(i, now, "the connection to the server closed");
        }
    }

    /// Sends what a link sends from relayed address `source`; `false` when
    /// `source` is not one of ours.
    pub fn send(&mut self, source: SocketAddr, destination: SocketAddr, contents: &[u8], now: Instant) -> bool {
        let Some(i) = self.relays.iter().position(|r| r.relayed == Some(source)) else { return false };
        let t = self.turn_time(now);
        let udp = self.relays[i].transport() == TurnTransport::Udp;
        self.guarded(i, now, |relay, outputs| {
            let way = (relay.transport(), relay.stream);
            let client = relay.client.as_mut()?;
            if !client.have_permission(TransportType::Udp, destination.ip()) {
                // ICE retransmits its checks; by then the permission is there.
                if !relay.permitted.contains(&destination.ip()) && relay.permitted.len() < MAX_WANTED_PERMISSIONS {
                    relay.permitted.push(destination.ip());
                    let _ = client.create_permission(TransportType::Udp, destination.ip(), t);
                }
                return Some(());
            }
            // Channels are bound on UDP only: turn-client-proto does not pad
            // ChannelData to 4 bytes on streams, which a server reading the
            // stream would need.
            if udp && !relay.channels.contains(&destination) && relay.channels.len() < MAX_CHANNELS {
                relay.channels.push(destination);
                let _ = client.bind_channel(TransportType::Udp, destination, t);
            }
            match client.send_to(TransportType::Udp, destination, contents, t) {
                Ok(Some(build)) => {
                    let transmit = build.build();
                    outputs.push_back(write_for(way, transmit.to, transmit.data));
                }
                Ok(None) => {}
                Err(e) => log::trace!("TURN {}: cannot relay to {destination}: {e}", relay.server.url),
            }
            Some(())
        });
        self.drive(i, now);
        true
    }

    /// Asks every allocation to let `ip` reach it, now and when it is made
    /// again. A peer can only reach our relayed address from a permitted
    /// address, so every remote candidate's address is permitted.
    pub fn permit(&mut self, ip: IpAddr, now: Instant) {
        let ip = ip.to_canonical();
        if !self.wanted.contains(&ip) {
            if self.wanted.len() == MAX_WANTED_PERMISSIONS {
                self.wanted.pop_front();
            }
            self.wanted.push_back(ip);
        }
        for i in 0..self.relays.len() {
            self.create_permission(i, ip, now);
        }
    }

    /// Services every due retry and client, and lets held addresses go.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.release_held(now);
        for i in 0..self.relays.len() {
            if self.relays[i].retry_at.is_some_and(|at| at <= now) && !self.shutting_down {
                self.relays[i].retry_at = None;
                self.start(i, now);
            } else if self.relays[i].wake.is_some_and(|at| at <= now) {
                self.drive(i, now);
            }
        }
    }

    /// When [`Relays::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relays.iter().flat_map(|r| [r.wake, r.retry_at, r.held_until]).flatten().min()
    }

    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.outputs.pop_front()
    }

    /// Deletes every allocation (Refresh with lifetime 0) and makes no new
    /// ones.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        for i in 0..self.relays.len() {
            self.end(i, now);
        }
    }

    fn start(&mut self, i: usize, now: Instant) {
        let relay = &mut self.relays[i];
        let addr = relay.addr;
        let mut config = TurnConfig::new(TurnCredentials::new(&relay.server.username, &relay.server.password));
        config.set_allocation_transport(TransportType::Udp);
        let client = match relay.transport() {
            TurnTransport::Udp => {
                // The socket is bound to every address; the client only
                // needs a local address of the server's family to match.
                let Some(local) = self.local_udp.iter().find(|l| l.is_ipv6() == addr.is_ipv6()).copied() else {
                    log::info!("TURN {}: no local address of its family; not used", relay.server.url);
                    return;
                };
                catch_unwind(AssertUnwindSafe(|| Client::Udp(TurnClientUdp::allocate(local, addr, config))))
            }
            TurnTransport::Signaling => {
                if !self.signaling_up {
                    // Made when the WebSocket comes up (set_signaling_up).
                    return;
                }
                // Any address does for both ends: the registry knows the
                // connection, and nothing is sent by address.
                let local = SocketAddr::new(unspecified(addr.ip()), 0);
                catch_unwind(AssertUnwindSafe(|| Client::Tcp(TurnClientTcp::allocate(local, addr, config))))
            }
            TurnTransport::Tcp | TurnTransport::Tls => {
                let stream = self.next_stream;
                self.next_stream += 1;
                relay.stream = Some(stream);
                let tls_name = (relay.transport() == TurnTransport::Tls).then(|| relay.server.url.host.clone());
                self.outputs.push_back(RelayOutput::StreamOpen { stream, server: addr, tls_name });
                // The stream's local address is not known here and does not
                // matter: only the server sees it.
                let local = SocketAddr::new(unspecified(addr.ip()), 0);
                catch_unwind(AssertUnwindSafe(|| Client::Tcp(TurnClientTcp::allocate(local, addr, config))))
            }
        };
        match client {
            Ok(client) => {
                log::debug!("TURN {}: allocating at {addr}", relay.server.url);
                relay.client = Some(client);
                self.drive(i, now);
            }
            Err(_) => self.fail(i, now, "the TURN client panicked"),
        }
    }

    /// Polls a client until it has nothing more to say.
    fn drive(&mut self, i: usize, now: Instant) {
        let t = self.turn_time(now);
        let epoch = self.epoch;
        let mut events = Vec::new();
        let polled = self.guarded(i, now, |relay, outputs| {
            let way = (relay.transport(), relay.stream);
            let client = relay.client.as_mut()?;
            let mut closed = false;
            for _ in 0..1024 {
                let mut progressed = false;
                while let Some(transmit) = client.poll_transmit(t) {
                    progressed = true;
                    let contents = transmit.data.to_vec();
                    outputs.push_back(write_for(way, transmit.to, contents));
                }
                while let Some(event) = client.poll_event() {
                    progressed = true;
                    events.push(event);
                }
                match client.poll(t) {
                    TurnPollRet::WaitUntil(at) => {
                        relay.wake = Some(epoch + Duration::from_nanos(u64::try_from(at.as_nanos()).unwrap_or(0)));
                    }
                    TurnPollRet::Closed => closed = true,
                    TurnPollRet::AllocateTcpSocket { .. } | TurnPollRet::TcpClose { .. } => {}
                }
                if !progressed || closed {
                    break;
                }
            }
            Some(closed)
        });
        for event in events {
            self.on_event(i, event, now);
        }
        if polled == Some(true) && !self.shutting_down {
            self.fail(i, now, "the allocation ended");
        }
    }

    fn on_event(&mut self, i: usize, event: TurnEvent, now: Instant) {
        let url = self.relays[i].server.url.clone();
        match event {
            TurnEvent::AllocationCreated(_, relayed) => {
                let relay = &mut self.relays[i];
                log::info!("TURN {url}: relayed address {relayed}");
                relay.relayed = Some(relayed);
                relay.failures = 0;
                let (server, transport) = (relay.addr, relay.transport());
                if transport != TurnTransport::Udp && self.udp_allocating() {
                    self.relays[i].held_until = Some(now + STREAM_HOLD);
                } else {
                    self.outputs.push_back(RelayOutput::Candidate { relayed, server, transport });
                }
                if transport == TurnTransport::Udp {
                    self.release_held(now);
                }
                let wanted: Vec<IpAddr> = self.wanted.iter().copied().collect();
                for ip in wanted {
                    self.create_permission(i, ip, now);
                }
            }
            TurnEvent::AllocationCreateFailed(family) => {
                if self.relays[i].relayed.is_none() {
                    self.fail(i, now, &format!("the server refused the allocation ({family:?})"));
                }
            }
            TurnEvent::PermissionCreateFailed(_, ip) => log::debug!("TURN {url}: no permission for {ip}"),
            TurnEvent::ChannelCreateFailed(_, peer) => log::debug!("TURN {url}: no channel for {peer}"),
            other => log::trace!("TURN {url}: {other:?}"),
        }
    }

    /// Whether an allocation over UDP is being made at this moment.
    fn udp_allocating(&self) -> bool {
        self.relays.iter().any(|r| r.transport() == TurnTransport::Udp && r.client.is_some() && r.relayed.is_none())
    }

    /// Gives the links every held address whose wait is over: its time
    /// ran out, or the UDP allocation it waited for was made or failed.
    fn release_held(&mut self, now: Instant) {
        for i in 0..self.relays.len() {
            let Some(until) = self.relays[i].held_until else { continue };
            if until <= now || !self.udp_allocating() {
                let relay = &mut self.relays[i];
                relay.held_until = None;
                if let Some(relayed) = relay.relayed {
                    let (server, transport) = (relay.addr, relay.transport());
                    self.outputs.push_back(RelayOutput::Candidate { relayed, server, transport });
                }
            }
        }
    }

    fn create_permission(&mut self, i: usize, ip: IpAddr, now: Instant) {
        let t = self.turn_time(now);
        let family_ok = self.relays[i].relayed.is_some_and(|r| r.is_ipv6() == ip.is_ipv6());
        if !family_ok {
            return;
        }
        self.guarded(i, now, |relay, _| {
            let client = relay.client.as_mut()?;
            if !relay.permitted.contains(&ip) && relay.permitted.len() < MAX_WANTED_PERMISSIONS {
                relay.permitted.push(ip);
                let _ = client.create_permission(TransportType::Udp, ip, t);
            }
            Some(())
        });
        self.drive(i, now);
    }

    /// The allocation failed: its candidate is gone, and it is tried again
    /// after a backoff.
    fn fail(&mut self, i: usize, now: Instant, why: &str) {
        let relay = &mut self.relays[i];
        if relay.failures == 0 {
            log::warn!("TURN {}: {why}; trying again", relay.server.url);
        } else {
            log::debug!("TURN {}: {why} (failure {})", relay.server.url, relay.failures + 1);
        }
        relay.failures = relay.failures.saturating_add(1);
        let delay = RETRY_MIN.saturating_mul(1 << relay.failures.min(10)).min(RETRY_MAX);
        self.end(i, now);
        if !self.shutting_down {
            self.relays[i].retry_at = Some(now + delay);
        }
        self.release_held(now);
    }

    /// Lets go of a client: deletes its allocation when it has one.
    fn end(&mut self, i: usize, now: Instant) {
        let t = self.turn_time(now);
        let relay = &mut self.relays[i];
        let way = (relay.transport(), relay.stream);
        // A held address was never given to the links.
        if let Some(relayed) = relay.relayed.take()
            && relay.held_until.take().is_none()
        {
            self.outputs.push_back(RelayOutput::CandidateGone { relayed });
        }
        if let Some(mut client) = relay.client.take() {
            let deleted = catch_unwind(AssertUnwindSafe(|| {
                let mut out = Vec::new();
                if client.delete(t).is_ok() {
                    while let Some(transmit) = client.poll_transmit(t) {
                        out.push((transmit.to, transmit.data.to_vec()));
                    }
                }
                out
            }));
            for (destination, contents) in deleted.unwrap_or_default() {
                self.outputs.push_back(write_for(way, destination, contents));
            }
        }
        if let Some(stream) = relay.stream.take() {
            self.outputs.push_back(RelayOutput::StreamClose { stream });
        }
        relay.channels.clear();
        relay.permitted.clear();
        relay.wake = None;
    }

    /// Runs `f` on relay `i`; a panic inside turn-client-proto fails that
    /// relay only.
    fn guarded<R>(
        &mut self,
        i: usize,
        now: Instant,
        f: impl FnOnce(&mut Relay, &mut VecDeque<RelayOutput>) -> Option<R>,
    ) -> Option<R> {
        let (relays, outputs) = (&mut self.relays, &mut self.outputs);
        match catch_unwind(AssertUnwindSafe(|| f(&mut relays[i], outputs))) {
            Ok(r) => r,
            Err(_) => {
                self.relays[i].client = None;
                self.fail(i, now, "the TURN client panicked");
                None
            }
        }
    }

    fn by_stream(&self, stream: StreamId) -> Option<usize> {
        self.relays.iter().position(|r| r.stream == Some(stream))
    }

    fn turn_time(&self, now: Instant) -> TurnInstant {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        TurnInstant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }
}

/// coturn's REST credentials ("TURN REST API"): the username is
/// `<expiry in unix seconds>:<name>`, the password base64(HMAC-SHA1(secret,
/// username)); the server recomputes the password from the same secret.
pub fn rest_credentials(secret: &str, expiry_unix: u64, name: &str) -> (String, String) {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let username = format!("{expiry_unix}:{name}");
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return (username, String::new()),
    };
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// The TURN servers of a registry's `GET /api/config` answer
/// (`{"iceServers":[{"urls": "turn:…" or […], "username", "credential"}]}`),
/// and the earliest expiry (unix seconds) among REST usernames. Entries
/// without credentials or with unusable URLs are skipped.
pub fn servers_from_ice_config(text: &str) -> Result<(Vec<TurnServer>, Option<u64>), String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(rename = "iceServers", default)]
        ice_servers: Vec<Entry>,
        /// The registry's own relay over the signaling WebSocket (ours).
        #[serde(rename = "relayWebSocket", default)]
        relay_websocket: Option<Credentials>,
    }
    #[derive(serde::Deserialize)]
    struct Credentials {
        username: String,
        credential: String,
        #[serde(default)]
        instance: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        urls: Urls,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        credential: Option<String>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
        #[default]
        None,
    }
    let config: Config = serde_json::from_str(text).map_err(|e| format!("not an ICE configuration: {e}"))?;
    // The registry's relay over TCP adds nothing once the same relay is
    // reached over the signaling WebSocket: both are TCP, and the WebSocket
    // goes wherever the registry's port does. One allocation fewer.
    let websocket_user = config.relay_websocket.as_ref().map(|c| c.username.clone());
    let websocket_instance = config.relay_websocket.as_ref().and_then(|c| c.instance.clone());
    let mut servers = Vec::new();
    let mut expiry: Option<u64> = None;
    for entry in config.ice_servers {
        let urls = match entry.urls {
            Urls::One(u) => vec![u],
            Urls::Many(list) => list,
            Urls::None => Vec::new(),
        };
        let (Some(username), Some(password)) = (entry.username, entry.credential) else { continue };
        for url in urls.iter().filter(|u| u.to_ascii_lowercase().starts_with("turn")) {
            match parse_turn_url(url) {
                Ok(url) if url.transport == TurnTransport::Tcp && websocket_user.as_ref() == Some(&username) => {
                    log::debug!("ICE configuration: {url} is reached over the signaling WebSocket instead");
                }
                Ok(url) => {
                    let mut server = TurnServer::new(url, &username, &password);
                    if websocket_user.as_ref() == Some(&username) {
                        server.instance = websocket_instance.clone();
                    }
                    if !servers.contains(&server) && servers.len() < MAX_SERVERS {
                        servers.push(server);
                    }
                }
                Err(e) => log::debug!("ICE configuration: skipping {url:?}: {e}"),
            }
        }
        if let Some(at) = username.split(':').next().and_then(|t| t.parse::<u64>().ok()) {
            expiry = Some(expiry.map_or(at, |e| e.min(at)));
        }
    }
    if let Some(c) = config.relay_websocket
        && servers.len() < MAX_SERVERS
    {
        if let Some(at) = c.username.split(':').next().and_then(|t| t.parse::<u64>().ok()) {
            expiry = Some(expiry.map_or(at, |e| e.min(at)));
        }
        let mut server = TurnServer::new(TurnUrl::signaling(), &c.username, &c.credential);
        server.instance = c.instance;
        servers.push(server);
    }
    Ok((servers, expiry))
}

/// How bytes for a relay's server leave: on the UDP socket, its stream, or
/// the signaling WebSocket.
fn write_for(way: (TurnTransport, Option<StreamId>), destination: SocketAddr, contents: Vec<u8>) -> RelayOutput {
    match way {
        (TurnTransport::Signaling, _) => RelayOutput::SignalingSend { contents },
        (_, Some(stream)) => RelayOutput::StreamSend { stream, contents },
        (_, None) => RelayOutput::Transmit { destination, contents },
    }
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

// An Instant can only be had from the clock.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_are_coturns() {
        // The registry's test vector: HMAC-SHA1("s3cret", "87400:mesh"),
        // computed independently with Python's hmac module.
        let (user, password) = rest_credentials("s3cret", 87_400, "mesh");
        assert_eq!(user, "87400:mesh");
        assert_eq!(password, "Z1pc+7Tkq6nfQA+ASqRaqc1D9gM=");
    }

    #[test]
    fn a_new_run_of_the_registrys_relay_is_allocated_on_again() {
        let t0 = Instant::now();
        let mut relays = Relays::new(vec!["192.0.2.10:5000".parse().unwrap()], t0);
        let url = parse_turn_url("turn:192.0.2.1:3478").unwrap();
        let server = |instance: &str| TurnServer {
            instance: Some(instance.to_owned()),
            ..TurnServer::new(url.clone(), "u", "p")
        };
        let addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let allocates = |relays: &mut Relays| {
            std::iter::from_fn(|| relays.poll_output())
                .filter(|o| matches!(o, RelayOutput::Transmit { destination, .. } if *destination == addr))
                .count()
        };
        relays.set_servers(vec![(server("run-1"), addr)], t0);
        assert_eq!(allocates(&mut relays), 1);
        // The same run, fresh credentials: the allocation stays.
        relays.set_servers(vec![(server("run-1"), addr)], t0);
        assert_eq!(allocates(&mut relays), 0);
        // A new run knows nothing of it: allocate again at once.
        relays.set_servers(vec![(server("run-2"), addr)], t0);
        assert!(allocates(&mut relays) >= 1);
    }

    #[test]
    fn ice_configurations_of_the_registry_and_others() {
        let text = r#"{"iceServers":[
            {"urls":["stun:stun.l.google.com:19302"]},
            {"urls":["turn:203.0.113.1:3478","turns:relay.example:5349"],"username":"1800000000:mesh","credential":"c1"},
            {"urls":"turn:[2001:db8::1]?transport=tcp","username":"1700000000:x","credential":"c2"},
            {"urls":"turn:no-credentials.example"},
            {"urls":["turn:bad:port:x"],"username":"u","credential":"p"}
        ]}"#;
        let (servers, expiry) = servers_from_ice_config(text).unwrap();
        let urls: Vec<String> = servers.iter().map(|s| s.url.to_string()).collect();
        assert_eq!(
            urls,
            ["turn:203.0.113.1:3478", "turns:relay.example:5349", "turn:[2001:db8::1]:3478?transport=tcp"]
        );
        assert_eq!((servers[0].username.as_str(), servers[0].password.as_str()), ("1800000000:mesh", "c1"));
        assert_eq!(expiry, Some(1_700_000_000));
        assert_eq!(servers_from_ice_config(r#"{"iceServers":[]}"#).unwrap(), (Vec::new(), None));

        // The registry's relay: UDP, and the WebSocket in place of TCP.
        let registry = r#"{"iceServers":[
            {"urls":["turn:gw:3478?transport=udp","turn:gw:3478?transport=tcp"],"username":"1900000000:a","credential":"r"},
            {"urls":"turn:other:3478?transport=tcp","username":"1900000000:b","credential":"o"}],
            "relayWebSocket":{"username":"1900000000:a","credential":"r"}}"#;
        let (servers, _) = servers_from_ice_config(registry).unwrap();
        let urls: Vec<String> = servers.iter().map(|s| s.url.to_string()).collect();
        assert_eq!(
            urls,
            ["turn:gw:3478", "turn:other:3478?transport=tcp", "the registry's relay over the signaling WebSocket"]
        );
        assert!(servers_from_ice_config("nonsense").is_err());
    }
}
