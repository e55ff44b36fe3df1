//! The relay: a TURN server (a subset of RFC 8656) inside the registry that
//! relays **only between its own allocations**, never to or from any other
//! address. Sans-IO like the rest of the core: the registry's shell feeds it
//! what arrives on `RELAY_PORT` and carries out what it asks.
//!
//! # Driving it
//!
//! ```text
//! Relay::new(config, now)
//! credentials(peer_id, unix_now)        -> (username, password) to hand a peer
//! handle_datagram(from, bytes, now, unix_now, authz)     a UDP datagram
//! handle_stream_opened(conn, remote)                     optional: a TCP/WebSocket stream and its peer
//! handle_stream_data(conn, bytes, now, unix_now, authz)  stream bytes, any chunking
//! handle_stream_closed(conn)                             the stream is gone
//! handle_timeout(now) / poll_timeout()                   expiries
//! revoke(peer_id) / handle_authorization_changed(authz)  who may relay changed
//! poll_output() -> RelayOutput                           drain after every call
//! stats()
//! ```
//!
//! `now` is the monotonic clock (lifetimes, rates), `unix_now` the wall
//! clock in seconds (credential expiry, nonces); `authz` says whether a
//! peer may relay at this moment (the registry's: an API key's peer or an
//! approved device). Outputs are datagrams to a UDP client, bytes for a
//! stream, or a request to close a stream that sent garbage; nothing is
//! ever addressed to anything but a client that sent to the relay.
//!
//! # What it does
//!
//! - **Binding** requests get XOR-MAPPED-ADDRESS: the UDP source, or for a
//!   stream the remote given to [`Relay::handle_stream_opened`] (an
//!   unspecified address of the relay's family, port 0, when not given).
//! - **Allocate** (UDP relaying only, else 442) with coturn's REST
//!   credentials: username `<expiry>:<peer_id>`, password
//!   base64(HMAC-SHA1(secret, username)), checked through the long-term
//!   mechanism (401 with REALM and NONCE first; 438 with a fresh nonce once
//!   it is 10 minutes old; MESSAGE-INTEGRITY with SHA-1, the classic
//!   RFC 5389 key). An expired username or a wrong password gets 401, a
//!   peer `authz` refuses gets 403. One allocation per client (437; a
//!   retransmitted Allocate gets its success again). 486 past the per-peer
//!   quota, 508 past the total or when no port is free. Lifetimes are
//!   clamped to `[default_lifetime, max_lifetime]`.
//! - **Refresh** (LIFETIME 0 deletes), **CreatePermission**, **ChannelBind**
//!   (0x4000-0x4FFF; a permission is installed with it), **Send**
//!   indications and **ChannelData**, over UDP and streams (ChannelData is
//!   padded on streams, and accepted padded or not).
//! - **Only the relay's own address may be permitted** (any other → 403,
//!   counted `peer_not_allowed`). Data from allocation A to address X goes
//!   out only if A holds that permission, X is the relayed address of
//!   another live allocation B, and B permits the relay's address too. B's
//!   client gets it as ChannelData when B bound a channel to A's relayed
//!   address, else as a Data indication from A's relayed address.
//!   Everything else is dropped and counted.
//! - **Limits**: a byte budget per allocation (charged to the sender) and
//!   one over all allocations ([`RelayConfig::allocation_rate`],
//!   [`RelayConfig::total_rate`]); allocations per peer and in total;
//!   64 channels per allocation (and one permission: there is one address
//!   to permit); permissions last 300 s, channels 600 s; streams
//!   ([`RelayConfig::max_streams`]) with at most one unfinished frame each;
//!   requests up to 8 KiB; at most 16,384 outputs waiting.
//! - [`Relay::revoke`] and [`Relay::handle_authorization_changed`] remove
//!   allocations at once: their relayed addresses receive nothing more, and
//!   later requests from their clients get 403 (no longer authorized) or
//!   437 (no allocation); their data is dropped.
//!
//! Not done: TCP relaying (RFC 6062), RESERVATION-TOKEN and EVEN-PORT with
//! reservation (508), dual allocations (one address of the relay's family,
//! the other family refused in ADDRESS-ERROR-CODE), MESSAGE-INTEGRITY-SHA256
//! and USERHASH (RFC 8489's security feature is never offered), ICMP, the
//! 5-minute quarantine of an expired channel number.
//!
//! Relayed addresses are names, not sockets: nothing is bound on the port
//! range, and a host that is not a client of this relay cannot reach one.
//! So a link goes through here only when both of its ends allocate here.

mod allocation;
mod auth;
mod bucket;
mod forward;
mod framing;
mod ports;
mod requests;
mod wire;

// The tests need a real clock: an Instant can only be had from it.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests;

pub use crate::core::hub::Authorize;
use crate::core::ratelimit::Rate;
use allocation::Allocation;
use auth::Nonces;
use bucket::ByteBucket;
use framing::{FrameKind, StreamBuffer};
use ports::PortPool;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};
use wire::TransactionIds;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub realm: String,
    /// Key of the REST credentials the registry mints for each peer.
    pub secret: Vec<u8>,
    /// The address relayed addresses are given on (RELAY_ADDRESS).
    pub relay_ip: IpAddr,
    /// The range relayed ports are drawn from, both ends included. Nothing
    /// is bound on them; keep RELAY_PORT out of it all the same, so that no
    /// relayed address names the relay itself.
    pub ports: (u16, u16),
    pub max_allocations: usize,
    pub max_allocations_per_peer: usize,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// Relayed bytes per second per allocation (charged to the sender),
    /// with a burst; `per_second` 0 is unlimited.
    pub allocation_rate: Rate,
    /// Relayed bytes per second over all allocations.
    pub total_rate: Rate,
    /// How long minted credentials are good for.
    pub credential_lifetime: Duration,
    /// Streams tracked at once; a stream beyond is closed.
    pub max_streams: usize,
    /// Names this run of the relay (random at start): a sidecar that sees
    /// it change knows its allocations are gone and makes them again.
    pub instance: u64,
}

impl RelayConfig {
    /// The defaults: ports 49152-65535, 1,024 allocations (4 per peer),
    /// lifetimes 600 s (up to 3,600 s), 2 MB/s per allocation (burst 4 MB),
    /// 20 MB/s in total (burst 40 MB), credentials for a day, 1,024 streams.
    pub fn new(realm: &str, secret: &[u8], relay_ip: IpAddr) -> Self {
        RelayConfig {
            realm: realm.to_owned(),
            secret: secret.to_vec(),
            relay_ip,
            ports: (49_152, 65_535),
            max_allocations: 1024,
            max_allocations_per_peer: 4,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            allocation_rate: Rate::new(2_000_000.0, 4_000_000.0),
            total_rate: Rate::new(20_000_000.0, 40_000_000.0),
            credential_lifetime: Duration::from_secs(86_400),
            max_streams: 1024,
            instance: 0,
        }
    }
}

/// Who sent something: a UDP source address, or a TCP or WebSocket
/// connection the shell numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Client {
    Udp(SocketAddr),
    Stream(u64),
}

/// What the relay asks the shell to do. Drain until `None` after each call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutput {
    /// Send a datagram from the relay's UDP socket.
    Datagram { to: SocketAddr, bytes: Vec<u8> },
    /// Write to a stream (a WebSocket: one binary message).
    Stream { conn: u64, bytes: Vec<u8> },
    /// Close the stream: it sent what cannot be TURN. The relay has already
    /// forgotten it and its allocation.
    CloseStream { conn: u64 },
}

/// Why something was refused or dropped: the keys of
/// [`RelayStats::refusals`].
pub mod refusal {
    /// A request without credentials, answered with the 401 challenge
    /// (every client's first Allocate).
    pub const CHALLENGED: &str = "challenged";
    /// A wrong password, a malformed or expired username (401).
    pub const BAD_CREDENTIALS: &str = "bad_credentials";
    /// Valid credentials of a peer not authorized now (403).
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const STALE_NONCE: &str = "stale_nonce";
    /// A second allocation, or a request without one (437).
    pub const ALLOCATION_MISMATCH: &str = "allocation_mismatch";
    /// Another username than the allocation's (441).
    pub const WRONG_CREDENTIALS: &str = "wrong_credentials";
    /// Allocations (486/508), ports or channels (508) exhausted.
    pub const QUOTA: &str = "quota";
    /// A permission, channel or datagram for an address other than the
    /// relay's own (403 or dropped).
    pub const PEER_NOT_ALLOWED: &str = "peer_not_allowed";
    /// Data for an address that is no live allocation of this relay.
    pub const NO_PEER: &str = "no_peer";
    /// Data while the sender or the receiver has no permission.
    pub const NO_PERMISSION: &str = "no_permission";
    /// Data from a client without an allocation.
    pub const NO_ALLOCATION: &str = "no_allocation";
    /// ChannelData on a channel not bound.
    pub const NO_CHANNEL: &str = "no_channel";
    pub const RATE_LIMITED: &str = "rate_limited";
    /// A request the relay does not serve or that lacks what it needs
    /// (400, 420, 440, 442, 443, 508 for reservations).
    pub const BAD_REQUEST: &str = "bad_request";
    /// Bytes that are no STUN message or ChannelData; dropped silently.
    pub const MALFORMED: &str = "malformed";
    /// A stream closed for garbage.
    pub const BAD_STREAM: &str = "bad_stream";
    /// A stream refused: too many open.
    pub const TOO_MANY_STREAMS: &str = "too_many_streams";
    /// An output dropped: too many waiting (the shell is not draining).
    pub const OUTPUT_OVERFLOW: &str = "output_overflow";
    /// A parsing crate panicked on the input, which was dropped.
    pub const INTERNAL: &str = "internal";
}

/// For `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Allocations now.
    pub allocations: usize,
    /// Streams tracked now.
    pub streams: usize,
    /// Allocations made since the start.
    pub allocations_made: u64,
    /// Application bytes relayed, and the datagrams carrying them.
    pub bytes_relayed: u64,
    pub packets_relayed: u64,
    /// Refusals and drops by reason (see [`refusal`]).
    pub refusals: BTreeMap<&'static str, u64>,
}

/// Largest request the relay reads (Send indications may be larger).
const MAX_REQUEST: usize = 8 * 1024;
/// Outputs waiting for the shell at most.
const MAX_OUTPUTS: usize = 16 * 1024;
/// Permissions and channels last this long (RFC 8656 §9, §12).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

struct Stream {
    buffer: StreamBuffer,
    remote: Option<SocketAddr>,
}

/// The time and authorization of one call.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    now: Instant,
    unix_now: u64,
    authz: &'a dyn Authorize,
}

pub struct Relay {
    config: RelayConfig,
    nonces: Nonces,
    transactions: TransactionIds,
    ports: PortPool,
    allocations: HashMap<u64, Allocation>,
    next_allocation: u64,
    by_client: HashMap<Client, u64>,
    by_port: HashMap<u16, u64>,
    streams: HashMap<u64, Stream>,
    total_budget: ByteBucket,
    outputs: VecDeque<RelayOutput>,
    deadline: Option<Instant>,
    stats: RelayStats,
}

impl Relay {
    pub fn new(mut config: RelayConfig, now: Instant) -> Relay {
        if stun_types::attribute::Realm::new(&config.realm).is_err() {
            log::warn!("relay realm is too long for STUN; using \"chatixia\"");
            config.realm = "chatixia".to_owned();
        }
        config.max_lifetime = config.max_lifetime.max(config.default_lifetime);
        Relay {
            nonces: Nonces::new(&config.secret),
            transactions: TransactionIds::new(&config.secret),
            ports: PortPool::new(config.ports),
            total_budget: ByteBucket::new(config.total_rate, now),
            config,
            allocations: HashMap::new(),
            next_allocation: 0,
            by_client: HashMap::new(),
            by_port: HashMap::new(),
            streams: HashMap::new(),
            outputs: VecDeque::new(),
            deadline: None,
            stats: RelayStats::default(),
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// REST credentials for `peer_id`, good for `credential_lifetime`.
    pub fn credentials(&self, peer_id: &str, unix_now: u64) -> (String, String) {
        let expiry = unix_now.saturating_add(self.config.credential_lifetime.as_secs());
        auth::mint(&self.config.secret, peer_id, expiry)
    }

    /// A datagram that arrived on the relay's UDP socket.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
        unix_now: u64,
        authz: &dyn Authorize,
    ) {
        let ctx = Ctx { now, unix_now, authz };
        let client = Client::Udp(from);
        let kind = match bytes.first().map(|b| b >> 6) {
            Some(0) => FrameKind::Stun,
            Some(1) => FrameKind::ChannelData,
            _ => return self.count(refusal::MALFORMED),
        };
        self.guarded(|relay| relay.handle_frame(client, kind, bytes, ctx));
    }

    /// A TCP or WebSocket stream was accepted from `remote`. Optional: it
    /// only gives Binding and Allocate answers the real mapped address.
    pub fn handle_stream_opened(&mut self, conn: u64, remote: SocketAddr) {
        if let Some(stream) = self.stream(conn)
            && stream.remote.is_none()
        {
            stream.remote = Some(remote);
        }
    }

    /// Bytes from a stream, cut anywhere. A stream that sends what cannot
    /// be TURN is closed ([`RelayOutput::CloseStream`]).
    pub fn handle_stream_data(&mut self, conn: u64, bytes: &[u8], now: Instant, unix_now: u64, authz: &dyn Authorize) {
        let ctx = Ctx { now, unix_now, authz };
        let Some(stream) = self.stream(conn) else { return };
        let mut buffer = std::mem::take(&mut stream.buffer);
        let client = Client::Stream(conn);
        let fed = framing::feed(&mut buffer, bytes, |kind, frame| {
            self.guarded(|relay| relay.handle_frame(client, kind, frame, ctx));
        });
        match fed {
            Ok(()) => {
                if let Some(stream) = self.streams.get_mut(&conn) {
                    stream.buffer = buffer;
                }
            }
            Err(()) => {
                log::debug!("relay stream {conn}: not TURN; closing it");
                self.count(refusal::BAD_STREAM);
                self.handle_stream_closed(conn);
                self.push(RelayOutput::CloseStream { conn });
            }
        }
    }

    /// The stream is gone, whoever closed it; so is its allocation.
    pub fn handle_stream_closed(&mut self, conn: u64) {
        self.streams.remove(&conn);
        if let Some(id) = self.by_client.get(&Client::Stream(conn)).copied() {
            self.remove_allocation(id);
            self.recompute_deadline();
        }
        self.stats.streams = self.streams.len();
    }

    /// Expires allocations, permissions and channels due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u64> = self.allocations.iter().filter(|(_, a)| !a.is_live(now)).map(|(&id, _)| id).collect();
        for id in expired {
            if let Some(a) = self.allocations.get(&id) {
                log::debug!("relay allocation {} of {} expired", a.relayed, a.peer_id);
            }
            self.remove_allocation(id);
        }
        for a in self.allocations.values_mut() {
            a.expire(now);
        }
        self.recompute_deadline();
    }

    /// When [`Relay::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.outputs.pop_front()
    }

    /// Removes every allocation of `peer_id` now.
    pub fn revoke(&mut self, peer_id: &str) {
        self.remove_where(|a| a.peer_id == peer_id);
    }

    /// Removes the allocations of peers `authz` no longer authorizes.
    pub fn handle_authorization_changed(&mut self, authz: &dyn Authorize) {
        self.remove_where(|a| !authz.is_authorized(&a.peer_id));
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats { allocations: self.allocations.len(), streams: self.streams.len(), ..self.stats.clone() }
    }

    /// One STUN message or ChannelData from `client`.
    fn handle_frame(&mut self, client: Client, kind: FrameKind, bytes: &[u8], ctx: Ctx<'_>) {
        match kind {
            FrameKind::Stun => self.handle_stun(client, bytes, ctx),
            FrameKind::ChannelData => self.handle_channel_data(client, bytes, ctx.now),
        }
    }

    /// Runs `f`, turning a panic inside a parsing crate into a dropped
    /// input rather than a dead registry. Our own code does not panic; the
    /// state it changes is left consistent before any crate call that
    /// could.
    fn guarded(&mut self, f: impl FnOnce(&mut Relay)) {
        if catch_unwind(AssertUnwindSafe(|| f(self))).is_err() {
            self.count(refusal::INTERNAL);
        }
    }

    /// The stream's state, made on first use while there is room.
    fn stream(&mut self, conn: u64) -> Option<&mut Stream> {
        if !self.streams.contains_key(&conn) {
            if self.streams.len() >= self.config.max_streams {
                self.count(refusal::TOO_MANY_STREAMS);
                self.push(RelayOutput::CloseStream { conn });
                return None;
            }
            self.streams.insert(conn, Stream { buffer: StreamBuffer::default(), remote: None });
            self.stats.streams = self.streams.len();
        }
        self.streams.get_mut(&conn)
    }

    /// Where a client is seen from: its UDP source, or its stream's remote.
    fn mapped_address(&self, client: Client) -> SocketAddr {
        match client {
            Client::Udp(addr) => addr,
            Client::Stream(conn) => self.streams.get(&conn).and_then(|s| s.remote).unwrap_or_else(|| {
                let ip = match self.config.relay_ip {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                SocketAddr::new(ip, 0)
            }),
        }
    }

    /// Sends `bytes` to a client: the only destination there is.
    fn send_to(&mut self, client: Client, bytes: Vec<u8>) {
        let output = match client {
            Client::Udp(to) => RelayOutput::Datagram { to, bytes },
            Client::Stream(conn) => RelayOutput::Stream { conn, bytes },
        };
        self.push(output);
    }

    fn push(&mut self, output: RelayOutput) {
        if self.outputs.len() >= MAX_OUTPUTS {
            self.count(refusal::OUTPUT_OVERFLOW);
            return;
        }
        self.outputs.push_back(output);
    }

    fn count(&mut self, reason: &'static str) {
        *self.stats.refusals.entry(reason).or_default() += 1;
    }

    fn remove_where(&mut self, doomed: impl Fn(&Allocation) -> bool) {
        let ids: Vec<u64> = self.allocations.iter().filter(|(_, a)| doomed(a)).map(|(&id, _)| id).collect();
        for id in ids {
            if let Some(a) = self.allocations.get(&id) {
                log::info!("relay allocation {} of {} removed: no longer authorized", a.relayed, a.peer_id);
            }
            self.remove_allocation(id);
        }
        self.recompute_deadline();
    }

    fn remove_allocation(&mut self, id: u64) {
        let Some(a) = self.allocations.remove(&id) else { return };
        self.ports.give_back(a.relayed.port());
        self.by_port.remove(&a.relayed.port());
        if self.by_client.get(&a.client) == Some(&id) {
            self.by_client.remove(&a.client);
        }
    }

    fn recompute_deadline(&mut self) {
        self.deadline = self.allocations.values().map(Allocation::deadline).min();
    }
}
