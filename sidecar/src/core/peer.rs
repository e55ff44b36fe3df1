//! One WebRTC link to one remote peer (docs/PROTOCOL.md §5): a sans-IO wrapper around a
//! `str0m::Rtc` that carries the mesh DataChannel.
//!
//! Nothing here touches a socket, a clock or a thread. The owner feeds
//! datagrams ([`PeerLink::handle_receive`]) and time
//! ([`PeerLink::handle_timeout`]), and after *every* call that takes
//! `&mut self` drains [`PeerLink::poll_output`] until it returns
//! [`LinkOutput::Timeout`]. That is str0m's single-mutation contract; skipping
//! a drain stalls the link.
//!
//! A link never takes the process down: any error or panic inside str0m ends
//! that link with [`LinkOutput::Closed`] (docs/PROTOCOL.md §5.5).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatixia_protocol::mesh::{DATA_CHANNEL_LABEL, DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES_CEILING};
use chatixia_protocol::signaling::IceCandidatePayload;
use chatixia_settings::text::clip;

use super::outbox::Origin;
use crate::core::log_budget::one_line;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::config::DtlsCert;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, CandidateKind, Event, IceConnectionState, Input, Output, Rtc, RtcError};

/// Per-peer outgoing queue bound used while the SCTP send buffer is full.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1 << 20;
/// Bound on remote candidates remembered per link (buffered ones and the
/// addresses used for routing).
pub const DEFAULT_MAX_REMOTE_CANDIDATES: usize = 64;
/// Each side checks every candidate pair at least this often once a link is
/// idle (str0m's default is 3 s). Each check is a wake-up and two datagrams
/// per pair and side, the whole idle CPU cost of a sidecar; with both sides
/// checking, a peer is still heard from at least every 6 s on every pair.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(6);
/// Two keepalive rounds missed on every pair. It keeps dead-peer detection
/// within 15 s, which ICE alone cannot do (about 21.5 s, and 15 s at best
/// with tuning: docs/ARCHITECTURE.md, str0m fact 4).
pub const DEFAULT_SILENCE_TIMEOUT: Duration = Duration::from_secs(12);
/// How long the peer's data may come from another address than ours goes
/// to before the link is given up as stale ([`LinkOutput::PeerMoved`]).
/// Longer than ICE takes to move both ends to a better pair.
pub const PEER_MOVED_AFTER: Duration = Duration::from_secs(2);
/// The same when the peer sends no data, only ICE checks: how long the
/// address our data goes to may stay silent while the peer is heard from
/// another. Both sides check the selected pair every [`DEFAULT_KEEPALIVE`],
/// so a live address is never silent this long.
pub const PATH_SILENT_AFTER: Duration = Duration::from_secs(8);
/// Timeouts run at once after the answer: one per check that arrived
/// before it (the answerer sends a first one and may retransmit it), plus
/// the one that sends our own checks.
const EARLY_CHECK_ROUNDS: usize = 4;

/// Half of str0m's default: sctp-proto walks everything in flight on each
/// poll, so a smaller buffer is faster (docs/ARCHITECTURE.md, str0m fact 2; 16 KiB messages over
/// loopback: 30 MB/s at 128 KiB, 35 MB/s at 64 KiB). It is raised when a
/// configured message would not fit, because a message larger than the
/// buffer is never accepted (docs/ARCHITECTURE.md, str0m fact 2).
const SCTP_SEND_BUFFER: usize = 64 * 1024;
/// RFC 8841 §6.1: what a peer that does not advertise `a=max-message-size`
/// accepts.
const REMOTE_MAX_MESSAGE_DEFAULT: usize = 64 * 1024;
/// The original sidecar sends up to this much (docs/PROTOCOL.md §5.2–5.3), so we must accept it
/// even when our own sending limit is lower.
const RECEIVE_MESSAGE_FLOOR: usize = 65_535;
/// Charged per queued message on top of its length so that a flood of empty
/// messages is bounded too.
const QUEUE_ENTRY_OVERHEAD: usize = 32;
/// Real SDPs are a few KiB; anything far bigger is not worth parsing.
const MAX_SDP_BYTES: usize = 64 * 1024;
/// How often str0m reports the round trip of the selected pair. Each report
/// is a wake-up of the link, so rarely.
const STATS_INTERVAL: Duration = Duration::from_secs(30);
/// A graceful close sends its goodbye without waiting for replies, so this
/// only bounds a close that str0m somehow never finishes.
const CLOSE_DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How far ahead a finished link asks to be woken: effectively never.
const IDLE_WAKEUP: Duration = Duration::from_secs(3600);

/// What a link needs to know from an SDP, ours or the remote's.
struct SdpFacts {
    /// Mid and m-line index of the data section, if there is one.
    data: Option<(String, u16)>,
    /// The `a=max-message-size` of the data section, RFC 8841 defaults.
    max_message: usize,
    /// Addresses and kinds of the `a=candidate` lines.
    candidate_addrs: Vec<(SocketAddr, PathKind)>,
}

/// `SdpOffer` and `SdpAnswer` deref to the same SDP type, which str0m does not
/// export by name, so this is a macro rather than a function.
macro_rules! sdp_facts {
    ($sdp:expr) => {{
        let sdp = &$sdp;
        let data = sdp
            .media_lines
            .iter()
            .enumerate()
            .find(|(_, m)| m.typ.is_channel())
            .and_then(|(i, m)| Some((m.mid().to_string(), u16::try_from(i).ok()?)));
        let max_message = sdp
            .media_lines
            .iter()
            .find(|m| m.typ.is_channel())
            .and_then(|m| m.max_message_size())
            .map_or(REMOTE_MAX_MESSAGE_DEFAULT, |n| if n == 0 { usize::MAX } else { n });
        let candidate_addrs = sdp
            .session
            .ice_candidates()
            .chain(sdp.media_lines.iter().flat_map(|m| m.ice_candidates()))
            .filter(|c| c.proto() == Protocol::Udp)
            .map(|c| (c.addr(), PathKind::of(c.kind())))
            .collect();
        SdpFacts { data, max_message, candidate_addrs }
    }};
}

/// What kind of candidate one end of a link's path is (the ICE candidate
/// types, RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Host,
    Srflx,
    Prflx,
    Relay,
}

impl PathKind {
    fn of(kind: CandidateKind) -> PathKind {
        match kind {
            CandidateKind::Host => PathKind::Host,
            CandidateKind::ServerReflexive => PathKind::Srflx,
            CandidateKind::PeerReflexive => PathKind::Prflx,
            CandidateKind::Relayed => PathKind::Relay,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Host => "host",
            PathKind::Srflx => "srflx",
            PathKind::Prflx => "prflx",
            PathKind::Relay => "relay",
        }
    }
}

/// The pair of addresses a link's data goes over: the one ICE selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkPath {
    /// Our end: a socket address of ours, or one of our relayed addresses.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// What the remote end is, from the candidates it signaled; an address
    /// only learned from its checks is peer-reflexive.
    pub remote_kind: PathKind,
    /// Round trip of ICE's last check on the pair.
    pub rtt: Option<Duration>,
}

/// Settings shared by all links of a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Largest text message [`PeerLink::send`] accepts (`MAX_MESSAGE_BYTES`).
    /// Capped at 256 KiB, and further at what the remote SDP advertises.
    pub max_message_bytes: usize,
    /// Bound of the per-peer queue of messages waiting for SCTP buffer space;
    /// beyond it [`PeerLink::send`] fails with [`SendError::Backpressure`].
    pub max_queued_bytes: usize,
    /// Bound on remote candidates remembered per link.
    pub max_remote_candidates: usize,
    /// A link that receives no datagram at all from its peer for this long is
    /// closed, during setup as well as once open. `None` leaves dead-peer
    /// detection to ICE alone.
    pub silence_timeout: Option<Duration>,
    /// Optional ICE tuning (docs/ARCHITECTURE.md, str0m fact 4: ICE never notices a vanished
    /// peer in under about 15 s, whatever is set here).
    pub max_stun_rto: Option<Duration>,
    pub max_stun_retransmits: Option<usize>,
    /// The DTLS certificate every link presents; `None` makes str0m generate
    /// one per link, which costs ~40 ms for the first (aws-lc seeds its
    /// entropy then) and keeps a key pair per link.
    pub identity: Option<DtlsIdentity>,
}

/// One DTLS certificate and key shared by all links of a sidecar, as browsers
/// share one per origin. Each link's SDP carries its fingerprint, so sharing
/// it changes nothing for the remote's verification.
#[derive(Clone)]
pub struct DtlsIdentity(Arc<DtlsCert>);

impl DtlsIdentity {
    /// A fresh self-signed certificate, or `None` if the crypto provider
    /// fails (links then generate their own).
    pub fn generate() -> Option<DtlsIdentity> {
        catch_unwind(|| str0m::crypto::from_feature_flags().dtls_provider.generate_certificate())
            .ok()
            .flatten()
            .map(|cert| DtlsIdentity(Arc::new(cert)))
    }
}

impl fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DtlsIdentity(..)")
    }
}

impl PartialEq for DtlsIdentity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DtlsIdentity {}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            max_remote_candidates: DEFAULT_MAX_REMOTE_CANDIDATES,
            silence_timeout: Some(DEFAULT_SILENCE_TIMEOUT),
            max_stun_rto: Some(DEFAULT_KEEPALIVE),
            max_stun_retransmits: None,
            identity: None,
        }
    }
}

impl LinkConfig {
    fn message_limit(&self) -> usize {
        self.max_message_bytes.min(MAX_MESSAGE_BYTES_CEILING)
    }
}

/// What a link asks of its owner. Drain until `Timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutput {
    /// Send `contents` from local address `source` to `destination`.
    Transmit { source: SocketAddr, destination: SocketAddr, contents: Vec<u8> },
    /// The DataChannel is open; [`PeerLink::send`] works from now on. Once.
    Open,
    /// One text message from the remote peer.
    Message(String),
    /// A remote address the link may check or be reached from, learned
    /// from the signaled candidates or a check; a relay must permit it.
    RemoteAddress(SocketAddr),
    /// The selected path changed (see [`PeerLink::path`]).
    PathChanged,
    /// The peer's data has come from this other address for
    /// [`PEER_MOVED_AFTER`] while ours still goes to the old one: its NAT
    /// gave it a new mapping, and ICE will not move to it (the new pair can
    /// rank no higher than the old one). Only a fresh link brings our data
    /// back. At most once per link.
    PeerMoved(SocketAddr),
    /// The link is finished: the peer went silent
    /// ([`LinkConfig::silence_timeout`]) or ICE lost it, the channel or the
    /// connection was closed by either side (a local [`PeerLink::close`]
    /// included), or str0m failed. Exactly once per link; nothing but
    /// `Transmit`s of a graceful close follows.
    Closed,
    /// Call [`PeerLink::handle_timeout`] at this instant (earlier is fine).
    Timeout(Instant),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The SDP could not be parsed, is too large, or has no data section.
    InvalidSdp(String),
    /// str0m refused the SDP; the link is finished.
    Rejected(String),
    /// An answer arrived while no offer of ours was waiting for one.
    NotExpected,
    /// str0m could not be set up at all.
    Internal(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::InvalidSdp(m) => write!(f, "invalid SDP: {m}"),
            LinkError::Rejected(m) => write!(f, "SDP rejected: {m}"),
            LinkError::NotExpected => write!(f, "no offer is waiting for an answer"),
            LinkError::Internal(m) => write!(f, "WebRTC setup failed: {m}"),
        }
    }
}

impl std::error::Error for LinkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The DataChannel is not open (yet, or any more).
    NotOpen,
    /// Over [`LinkConfig::max_message_bytes`] or the remote's advertised limit.
    TooLarge { len: usize, max: usize },
    /// The SCTP buffer and the per-peer queue are both full.
    Backpressure,
    /// sctp-proto packetizes an empty message into nothing, so str0m would
    /// report it sent while the remote never sees it. Mesh messages are JSON
    /// objects and never empty.
    Empty,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NotOpen => write!(f, "data channel is not open"),
            SendError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max} bytes")
            }
            SendError::Backpressure => write!(f, "peer send queue is full"),
            SendError::Empty => write!(f, "empty messages cannot be sent"),
        }
    }
}

impl std::error::Error for SendError {}

/// One remote peer's connection and DataChannel.
pub struct PeerLink {
    rtc: Rtc,
    config: LinkConfig,
    /// Prefix of log lines; the owner sets it to the remote peer id.
    name: String,
    /// Set on the offerer until the answer arrives.
    pending_offer: Option<SdpPendingOffer>,
    remote_description: bool,
    /// Trickled before the remote description; str0m gets them once it is set.
    early_candidates: Vec<Candidate>,
    /// Trickled candidates taken so far, early or not. str0m pairs each new
    /// one with every local candidate and keeps them all, so a peer that
    /// trickles thousands would cost memory and CPU without end.
    trickled: usize,
    /// Where the remote may send from, and what kind of candidate each is;
    /// routing fallback for datagrams that `Rtc::accepts` refuses
    /// (docs/ARCHITECTURE.md, str0m fact 1).
    remote_addrs: Vec<(SocketAddr, PathKind)>,
    /// Remote addresses not reported yet ([`LinkOutput::RemoteAddress`]).
    new_remote_addrs: Vec<SocketAddr>,
    /// The (local, remote) pair DTLS records last went out on.
    path: Option<(SocketAddr, SocketAddr)>,
    path_reported: bool,
    /// Since when the peer's DTLS has come from an address our path does
    /// not go to, and whether that was reported.
    moved_since: Option<(SocketAddr, Instant)>,
    moved_reported: bool,
    /// When the address our data goes to was last heard from (or became
    /// that address).
    destination_heard: Option<Instant>,
    rtt: Option<Duration>,
    mid: Option<String>,
    mline_index: u16,
    /// The remote's `a=max-message-size`, RFC 8841 default when absent.
    remote_max_message: usize,
    /// The channel we send on: the first one that opened.
    channel: Option<ChannelId>,
    /// Waiting for room in the SCTP buffer, with who sent them.
    queue: VecDeque<(Origin, String)>,
    queued_bytes: usize,
    /// Written into SCTP but not yet acknowledged by the peer, with the
    /// byte offset each one ends at: what a link that dies hands back
    /// ([`PeerLink::take_undelivered`]). Bounded by the SCTP buffer.
    in_flight: VecDeque<(u64, Origin, String)>,
    /// Bytes ever written into SCTP.
    written: u64,
    open_reported: bool,
    /// The link is over for the application; `Closed` is due or was given.
    ended: bool,
    closed_reported: bool,
    ended_at: Option<Instant>,
    last_now: Instant,
    /// When the peer was last heard from, for `silence_timeout`.
    last_heard: Instant,
}

impl fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerLink")
            .field("name", &self.name)
            .field("mid", &self.mid)
            .field("open", &self.is_open())
            .field("alive", &self.is_alive())
            .field("queued_bytes", &self.queued_bytes)
            .finish_non_exhaustive()
    }
}

impl PeerLink {
    /// Starts a link as the offering side: creates the `mesh` DataChannel
    /// (ordered, reliable, in-band DCEP). `local_candidates` become host
    /// candidates inside the offer, which opens the link about twice as fast
    /// as trickling them (docs/ARCHITECTURE.md, str0m fact 7).
    pub fn new_offerer(
        local_candidates: &[SocketAddr],
        config: &LinkConfig,
        now: Instant,
    ) -> Result<(PeerLink, String), LinkError> {
        PeerLink::new_offerer_with_label(DATA_CHANNEL_LABEL, local_candidates, config, now)
    }

    fn new_offerer_with_label(
        label: &str,
        local_candidates: &[SocketAddr],
        config: &LinkConfig,
        now: Instant,
    ) -> Result<(PeerLink, String), LinkError> {
        let mut link = PeerLink::build(config, now)?;
        for addr in local_candidates {
            link.add_local_host(*addr);
        }
        let applied = guarded(&mut link.rtc, |rtc| {
            let mut api = rtc.sdp_api();
            api.add_channel_with_config(ChannelConfig {
                label: label.to_owned(),
                ordered: true,
                reliability: Reliability::Reliable,
                negotiated: None,
                ..Default::default()
            });
            Ok(api.apply())
        })
        .map_err(LinkError::Internal)?;
        let Some((offer, pending)) = applied else {
            return Err(LinkError::Internal("str0m produced no offer".into()));
        };
        let (mid, index) =
            sdp_facts!(offer).data.ok_or_else(|| LinkError::Internal("offer without a data section".into()))?;
        link.mid = Some(mid);
        link.mline_index = index;
        link.pending_offer = Some(pending);
        Ok((link, offer.to_sdp_string()))
    }

    /// Starts a link as the answering side. A DataChannel of any label is
    /// accepted (docs/PROTOCOL.md §4.6, §5.1).
    pub fn new_answerer(
        offer_sdp: &str,
        local_candidates: &[SocketAddr],
        config: &LinkConfig,
        now: Instant,
    ) -> Result<(PeerLink, String), LinkError> {
        if offer_sdp.len() > MAX_SDP_BYTES {
            return Err(LinkError::InvalidSdp(format!("{} bytes is too large", offer_sdp.len())));
        }
        let offer =
            SdpOffer::from_sdp_string(offer_sdp).map_err(|e| LinkError::InvalidSdp(one_line(&e.to_string())))?;
        let facts = sdp_facts!(offer);
        let Some((mid, index)) = facts.data else {
            return Err(LinkError::InvalidSdp("no m=application section".into()));
        };

        let mut link = PeerLink::build(config, now)?;
        for addr in local_candidates {
            link.add_local_host(*addr);
        }
        let answer = guarded(&mut link.rtc, |rtc| rtc.sdp_api().accept_offer(offer)).map_err(LinkError::Rejected)?;
        link.mid = Some(mid);
        link.mline_index = index;
        link.remote_max_message = facts.max_message;
        link.remote_description = true;
        for (addr, kind) in facts.candidate_addrs {
            link.remember_addr(addr, kind);
        }
        // str0m's ICE agent sends no check before its first timeout, and
        // nothing would be due before the silence timeout: without this the
        // answerer waits for the offerer's checks, which its own NAT drops
        // as long as it has sent nothing towards the offerer. Checking from
        // both sides at once is what punches the holes.
        link.handle_timeout(now);
        Ok((link, answer.to_sdp_string()))
    }

    /// Applies the remote answer to our offer, then any candidates that were
    /// trickled before it. A parse error leaves the link waiting for a better
    /// answer; an answer str0m refuses finishes the link.
    pub fn accept_answer(&mut self, sdp: &str, now: Instant) -> Result<(), LinkError> {
        self.touch(now);
        if self.pending_offer.is_none() || self.ended {
            return Err(LinkError::NotExpected);
        }
        if sdp.len() > MAX_SDP_BYTES {
            return Err(LinkError::InvalidSdp(format!("{} bytes is too large", sdp.len())));
        }
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| LinkError::InvalidSdp(one_line(&e.to_string())))?;
        let facts = sdp_facts!(answer);
        if facts.data.is_none() {
            return Err(LinkError::InvalidSdp("no m=application section".into()));
        }
        let Some(pending) = self.pending_offer.take() else {
            return Err(LinkError::NotExpected);
        };
        if let Err(e) = guarded(&mut self.rtc, |rtc| rtc.sdp_api().accept_answer(pending, answer)) {
            self.fail(&e);
            return Err(LinkError::Rejected(e));
        }
        self.remote_max_message = facts.max_message;
        self.remote_description = true;
        for (addr, kind) in facts.candidate_addrs {
            self.remember_addr(addr, kind);
        }
        for c in std::mem::take(&mut self.early_candidates) {
            self.apply_remote_candidate(c);
        }
        // Starts the ICE checks at the caller's time rather than at the next
        // timeout. str0m answers one check that came before the answer per
        // timeout and then returns without checking (docs/ARCHITECTURE.md,
        // str0m fact 11): the answerer's early checks would hold ours back
        // by its 50 ms pacing. A few rounds answer them and check at once.
        for _ in 0..EARLY_CHECK_ROUNDS {
            self.handle_timeout(now);
        }
        Ok(())
    }

    /// Takes one trickled remote candidate. Tolerates what other stacks send
    /// (docs/PROTOCOL.md §4.6, §5.1): with or without `candidate:`/`a=candidate:`, any `sdpMid`,
    /// an empty candidate (end of candidates). Candidates that cannot be used
    /// here (mDNS `.local` names, TCP, garbage) are ignored, never fatal.
    pub fn add_remote_candidate(&mut self, c: &IceCandidatePayload) {
        if self.ended {
            return;
        }
        let line = c.candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            log::debug!("[{}] remote end of candidates", self.name);
            return;
        }
        if let (Some(theirs), Some(ours)) = (c.sdp_mid.as_deref(), self.mid.as_deref())
            && !theirs.is_empty()
            && theirs != ours
        {
            // One data section per session, so the candidate can only be for
            // it; a mismatch is a quirk of the other stack, not a reason to
            // lose the candidate.
            log::debug!("[{}] candidate for mid {:?}, ours is {ours:?}; using it anyway", self.name, clip(theirs));
        }
        let prefixed;
        let line = if line.starts_with("candidate:") {
            line
        } else {
            prefixed = format!("candidate:{line}");
            &prefixed
        };
        let cand = match Candidate::from_sdp_string(line) {
            Ok(cand) => cand,
            Err(e) => {
                // Browsers hide host addresses behind `<uuid>.local`; the
                // peer-reflexive candidate learned from their checks replaces
                // it.
                log::debug!("[{}] ignoring remote candidate {:?}: {}", self.name, clip(line), clip(&e.to_string()));
                return;
            }
        };
        if cand.proto() != Protocol::Udp {
            log::debug!("[{}] ignoring non-UDP remote candidate", self.name);
            return;
        }
        if self.trickled >= self.config.max_remote_candidates {
            if self.trickled == self.config.max_remote_candidates {
                log::warn!(
                    "[{}] peer trickled more than {} candidates; ignoring the rest",
                    self.name,
                    self.config.max_remote_candidates
                );
                self.trickled += 1;
            }
            return;
        }
        self.trickled += 1;
        self.remember_addr(cand.addr(), PathKind::of(cand.kind()));
        if self.remote_description {
            self.apply_remote_candidate(cand);
        } else {
            self.early_candidates.push(cand);
        }
    }

    /// Adds a host candidate after the SDP was made and returns what to
    /// trickle to the remote (with the real mid), or `None` if str0m refused
    /// the address (link-local IPv4, unspecified, duplicate).
    pub fn add_local_candidate(&mut self, addr: SocketAddr) -> Option<IceCandidatePayload> {
        let cand = Candidate::host(addr, "udp").ok()?;
        self.add_local(cand)
    }

    /// Adds a server-reflexive candidate (`addr` as seen by a STUN server,
    /// `base` the local socket address) and returns what to trickle.
    pub fn add_local_srflx_candidate(&mut self, addr: SocketAddr, base: SocketAddr) -> Option<IceCandidatePayload> {
        let cand = Candidate::server_reflexive(addr, base, "udp").ok()?;
        self.add_local(cand)
    }

    /// Adds a relayed candidate (`relayed` on a TURN server reached from
    /// `local`) and returns what to trickle.
    pub fn add_local_relayed_candidate(
        &mut self,
        relayed: SocketAddr,
        local: SocketAddr,
    ) -> Option<IceCandidatePayload> {
        let cand = Candidate::relayed(relayed, local, "udp").ok()?;
        self.add_local(cand)
    }

    /// Stops using a local candidate whose address is gone (an allocation
    /// that ended).
    pub fn remove_local_candidate(&mut self, addr: SocketAddr, kind: PathKind) {
        if self.ended {
            return;
        }
        let cand = match kind {
            PathKind::Relay => Candidate::relayed(addr, addr, "udp"),
            _ => Candidate::host(addr, "udp"),
        };
        if let Ok(cand) = cand
            && let Err(e) = guarded(&mut self.rtc, |rtc| {
                rtc.direct_api().invalidate_candidate(&cand);
                Ok(())
            })
        {
            self.fail(&e);
        }
    }

    /// The mid of the data section, for the `sdpMid` of trickled candidates.
    /// str0m makes random ones, not `"0"` (docs/ARCHITECTURE.md, str0m fact 8).
    pub fn mid(&self) -> Option<String> {
        self.mid.clone()
    }

    /// Whether a datagram belongs to this link: str0m says so, or it comes
    /// from an address the remote signaled or checked from. The second test
    /// matters: str0m refuses a DTLS ClientHello that arrives before its own
    /// check on that pair succeeded, which costs a 1 s DTLS retransmit
    /// (docs/ARCHITECTURE.md, str0m fact 1; 6 ms instead of 1.02 s to open in the tests here).
    pub fn accepts(&self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) -> bool {
        self.accepts_strict(now, source, destination, bytes) || (self.is_alive() && self.knows_remote_address(source))
    }

    /// Only str0m's own judgement. An owner with several links can ask this
    /// of all of them first and fall back to
    /// [`PeerLink::knows_remote_address`], so that a stale address of one
    /// link never steals another link's datagrams.
    pub fn accepts_strict(&self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) -> bool {
        if !self.rtc.is_alive() {
            return false;
        }
        match Receive::new(Protocol::Udp, source, destination, bytes) {
            Ok(recv) => self.rtc_accepts(&Input::Receive(now, recv)),
            Err(_) => false,
        }
    }

    /// Whether `addr` is a signaled or checked remote address of this link.
    pub fn knows_remote_address(&self, addr: SocketAddr) -> bool {
        self.remote_addrs.iter().any(|(a, _)| *a == addr)
    }

    /// The path data goes over, once DTLS has used one.
    pub fn path(&self) -> Option<LinkPath> {
        let (local, remote) = self.path?;
        let remote_kind =
            self.remote_addrs.iter().find(|(a, _)| *a == remote).map_or(PathKind::Prflx, |(_, kind)| *kind);
        Some(LinkPath { local, remote, remote_kind, rtt: self.rtt })
    }

    /// Feeds one received datagram. Datagrams that are not WebRTC are dropped.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) {
        self.touch(now);
        if !self.rtc.is_alive() {
            return;
        }
        let recv = match Receive::new(Protocol::Udp, source, destination, bytes) {
            Ok(recv) => recv,
            Err(e) => {
                log::debug!("[{}] dropping {} byte datagram from {source}: {e}", self.name, bytes.len());
                return;
            }
        };
        let input = Input::Receive(now, recv);
        let known = self.knows_remote_address(source);
        let from_peer = known || self.rtc_accepts(&input);
        if from_peer && !known {
            // A check carrying our ufrag reveals a peer-reflexive address,
            // e.g. of a browser that hides its host address behind mDNS; its
            // DTLS must be routed here too.
            self.remember_addr(source, PathKind::Prflx);
        }
        match guarded(&mut self.rtc, |rtc| rtc.handle_input(input)) {
            // Strangers' datagrams must not keep a dead link alive.
            Ok(()) if from_peer => {
                self.last_heard = self.last_heard.max(now);
                let dtls = bytes.first().is_some_and(|b| (20..=63).contains(b));
                self.watch_peer_source(source, dtls, now);
            }
            Ok(()) => {}
            Err(e) => self.fail(&e),
        }
    }

    /// The peer was heard from `source` (a DTLS record when `dtls`): is that
    /// where ours goes? Its data coming from elsewhere for
    /// [`PEER_MOVED_AFTER`], or our destination silent for
    /// [`PATH_SILENT_AFTER`] while the peer is heard elsewhere, means its
    /// NAT moved it.
    fn watch_peer_source(&mut self, source: SocketAddr, dtls: bool, now: Instant) {
        let Some((_, destination)) = self.path else { return };
        if self.moved_reported {
            return;
        }
        if destination == source {
            self.destination_heard = Some(now);
            if dtls {
                self.moved_since = None;
            }
            return;
        }
        let heard = *self.destination_heard.get_or_insert(now);
        let silent = now.saturating_duration_since(heard) >= PATH_SILENT_AFTER;
        let moved = match self.moved_since {
            Some((from, since)) if dtls && from == source => now.saturating_duration_since(since) >= PEER_MOVED_AFTER,
            _ => {
                if dtls {
                    self.moved_since = Some((source, now));
                }
                false
            }
        };
        if moved || silent {
            log::info!(
                "[{}] the peer is heard from {source} while ours goes to {destination}, silent for {:?}",
                self.name,
                now.saturating_duration_since(heard)
            );
            self.moved_since = Some((source, now));
            self.moved_reported = true;
        }
    }

    /// Advances time; call at (or after) the last `Timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        if !self.rtc.is_alive() {
            return;
        }
        if self.wakeup_deadline().is_some_and(|d| now >= d) {
            if self.ended {
                log::debug!("[{}] closing took too long; dropping it", self.name);
            } else {
                log::debug!("[{}] nothing heard from the peer; closing", self.name);
                self.end();
            }
            // Either the peer is unreachable, so a goodbye would go nowhere,
            // or the goodbye already had its chance.
            self.rtc.disconnect();
            return;
        }
        if let Err(e) = guarded(&mut self.rtc, |rtc| rtc.handle_input(Input::Timeout(now))) {
            self.fail(&e);
        }
    }

    /// Sends one text message for `origin`. Messages are delivered in
    /// order; when the SCTP buffer is full they wait in the per-peer queue,
    /// which is flushed by [`PeerLink::poll_output`]. Drain `poll_output`
    /// afterwards.
    pub fn send(&mut self, text: &str, origin: Origin) -> Result<(), SendError> {
        if self.ended || !self.rtc.is_alive() {
            return Err(SendError::NotOpen);
        }
        let Some(cid) = self.channel else {
            return Err(SendError::NotOpen);
        };
        if text.is_empty() {
            return Err(SendError::Empty);
        }
        let max = self.send_limit();
        if text.len() > max {
            return Err(SendError::TooLarge { len: text.len(), max });
        }
        if self.queue.is_empty() {
            match guarded(&mut self.rtc, |rtc| write_text(rtc, cid, text)) {
                Ok(true) => {
                    self.sent(origin, text.to_owned());
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => {
                    self.fail(&e);
                    return Err(SendError::NotOpen);
                }
            }
        }
        let cost = text.len() + QUEUE_ENTRY_OVERHEAD;
        if self.queued_bytes + cost > self.config.max_queued_bytes {
            return Err(SendError::Backpressure);
        }
        self.queue.push_back((origin, text.to_owned()));
        self.queued_bytes += cost;
        Ok(())
    }

    /// Everything taken but not known to be delivered, oldest first, once
    /// the link has ended: written but unacknowledged, then still queued.
    /// The peer may have received some of the first ones (their
    /// acknowledgement lost); sending them again is what keeps them from
    /// being lost.
    pub fn take_undelivered(&mut self) -> Vec<(Origin, String)> {
        if !self.ended {
            return Vec::new();
        }
        let mut out: Vec<(Origin, String)> = self.in_flight.drain(..).map(|(_, o, t)| (o, t)).collect();
        out.extend(self.queue.drain(..));
        self.queued_bytes = 0;
        out
    }

    /// Bytes of messages written but not acknowledged yet.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight.iter().map(|(_, _, t)| t.len()).sum()
    }

    fn sent(&mut self, origin: Origin, text: String) {
        self.written += text.len() as u64;
        self.in_flight.push_back((self.written, origin, text));
    }

    /// Forgets the written messages SCTP has had acknowledged: what is not
    /// acknowledged is still in its buffer.
    fn release_acknowledged(&mut self) {
        let Some(cid) = self.channel else { return };
        if self.in_flight.is_empty() || self.ended {
            return;
        }
        let buffered = match guarded(&mut self.rtc, |rtc| Ok(rtc.channel(cid).map(|mut c| c.buffered_amount()))) {
            Ok(Some(b)) => b as u64,
            _ => return,
        };
        let acknowledged = self.written.saturating_sub(buffered);
        while self.in_flight.front().is_some_and(|(end, _, _)| *end <= acknowledged) {
            self.in_flight.pop_front();
        }
    }

    /// The largest message [`PeerLink::send`] takes now: the configured limit,
    /// lowered to the remote's `a=max-message-size`.
    pub fn send_limit(&self) -> usize {
        self.config.message_limit().min(self.remote_max_message)
    }

    /// Bytes (plus a small per-message overhead) waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Ends the link gracefully: SCTP shutdown and DTLS close_notify, so the
    /// remote learns at once (docs/ARCHITECTURE.md, str0m fact 5). Keep servicing the link until
    /// [`PeerLink::is_alive`] is false. Queued messages are discarded.
    pub fn close(&mut self) {
        if self.ended {
            return;
        }
        self.end();
        if !self.rtc.is_alive() {
            return;
        }
        if self.rtc.is_connected() {
            if let Err(e) = guarded(&mut self.rtc, |rtc| rtc.close()) {
                log::debug!("[{}] close: {e}", self.name);
                self.rtc.disconnect();
            }
        } else {
            // Nothing to tell a peer we never reached.
            self.rtc.disconnect();
        }
    }

    /// Whether the link still needs servicing (including the drain of a
    /// graceful close). Drop it once this is false.
    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    /// Whether messages can be sent.
    pub fn is_open(&self) -> bool {
        self.channel.is_some() && !self.ended && self.rtc.is_alive()
    }

    /// Sets the prefix of this link's log lines (the remote peer id).
    pub fn set_name(&mut self, name: &str) {
        self.name = name.to_owned();
    }

    /// Next thing to do. Call until it returns `Timeout`.
    pub fn poll_output(&mut self) -> LinkOutput {
        loop {
            if self.ended && !self.closed_reported {
                self.closed_reported = true;
                return LinkOutput::Closed;
            }
            if !self.rtc.is_alive() {
                return LinkOutput::Timeout(self.idle_deadline());
            }
            if let Some(addr) = self.new_remote_addrs.pop() {
                return LinkOutput::RemoteAddress(addr);
            }
            if !self.path_reported {
                self.path_reported = true;
                return LinkOutput::PathChanged;
            }
            if self.moved_reported
                && let Some((source, _)) = self.moved_since.take()
            {
                return LinkOutput::PeerMoved(source);
            }
            let out = match guarded(&mut self.rtc, |rtc| rtc.poll_output()) {
                Ok(out) => out,
                Err(e) => {
                    self.fail(&e);
                    continue;
                }
            };
            match out {
                Output::Transmit(t) => {
                    // DTLS records (content types 20-63) only go over the
                    // selected pair; STUN checks go over every pair.
                    let dtls = t.contents.first().is_some_and(|b| (20..=63).contains(b));
                    if dtls && self.path != Some((t.source, t.destination)) {
                        self.path = Some((t.source, t.destination));
                        self.path_reported = false;
                        self.destination_heard = Some(self.last_now);
                    }
                    return LinkOutput::Transmit {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    };
                }
                Output::Event(e) => {
                    if let Some(out) = self.on_event(e) {
                        return out;
                    }
                }
                Output::Timeout(t) => {
                    // Writing is a mutation: whatever it queued in str0m must
                    // be polled out before the link may sleep.
                    if self.flush_queue() {
                        continue;
                    }
                    self.release_acknowledged();
                    let t = self.wakeup_deadline().map_or(t, |d| t.min(d));
                    return LinkOutput::Timeout(t);
                }
            }
        }
    }

    fn build(config: &LinkConfig, now: Instant) -> Result<PeerLink, LinkError> {
        let limit = config.message_limit();
        let receive_limit = limit.clamp(RECEIVE_MESSAGE_FLOOR, MAX_MESSAGE_BYTES_CEILING);
        let mut builder = Rtc::builder()
            .clear_codecs()
            .set_stats_interval(Some(STATS_INTERVAL))
            .set_sctp_max_message_size(u32::try_from(receive_limit).unwrap_or(u32::MAX))
            .set_sctp_max_buffered_amount(SCTP_SEND_BUFFER.max(limit))
            .set_crypto_provider(super::dtls::crypto_provider());
        if let Some(rto) = config.max_stun_rto {
            builder.set_max_stun_rto(rto);
        }
        if let Some(n) = config.max_stun_retransmits {
            builder.set_max_stun_retransmits(n);
        }
        if let Some(identity) = &config.identity {
            builder = builder.set_dtls_cert(DtlsCert::clone(&identity.0));
        }
        // `build` panics instead of returning errors (crypto provider setup).
        let rtc = catch_unwind(AssertUnwindSafe(|| builder.build(now)))
            .map_err(|p| LinkError::Internal(panic_text(p.as_ref())))?;
        Ok(PeerLink {
            rtc,
            config: config.clone(),
            name: String::new(),
            pending_offer: None,
            remote_description: false,
            early_candidates: Vec::new(),
            trickled: 0,
            remote_addrs: Vec::new(),
            new_remote_addrs: Vec::new(),
            path: None,
            path_reported: true,
            moved_since: None,
            moved_reported: false,
            destination_heard: None,
            rtt: None,
            mid: None,
            mline_index: 0,
            remote_max_message: REMOTE_MAX_MESSAGE_DEFAULT,
            channel: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: VecDeque::new(),
            written: 0,
            open_reported: false,
            ended: false,
            closed_reported: false,
            ended_at: None,
            last_now: now,
            last_heard: now,
        })
    }

    fn add_local_host(&mut self, addr: SocketAddr) {
        match Candidate::host(addr, "udp") {
            Ok(cand) => {
                if self.add_local(cand).is_none() {
                    log::debug!("[{}] local candidate {addr} not used", self.name);
                }
            }
            Err(e) => log::debug!("[{}] local candidate {addr} refused: {e}", self.name),
        }
    }

    fn add_local(&mut self, cand: Candidate) -> Option<IceCandidatePayload> {
        if self.ended {
            return None;
        }
        let added = guarded(&mut self.rtc, |rtc| Ok(rtc.add_local_candidate(cand).map(|c| c.to_sdp_string())));
        match added {
            Ok(line) => line.map(|candidate| IceCandidatePayload {
                candidate,
                sdp_mid: self.mid.clone(),
                sdp_mline_index: Some(self.mline_index),
            }),
            Err(e) => {
                self.fail(&e);
                None
            }
        }
    }

    fn apply_remote_candidate(&mut self, cand: Candidate) {
        if let Err(e) = guarded(&mut self.rtc, |rtc| {
            rtc.add_remote_candidate(cand);
            Ok(())
        }) {
            self.fail(&e);
        }
    }

    fn remember_addr(&mut self, addr: SocketAddr, kind: PathKind) {
        if !self.knows_remote_address(addr) && self.remote_addrs.len() < self.config.max_remote_candidates {
            self.remote_addrs.push((addr, kind));
            self.new_remote_addrs.push(addr);
        }
    }

    fn on_event(&mut self, event: Event) -> Option<LinkOutput> {
        if self.ended {
            return None;
        }
        match event {
            Event::ChannelOpen(id, label) => {
                if self.channel.is_none() {
                    log::debug!("[{}] channel {:?} open", self.name, clip(&label));
                    self.channel = Some(id);
                }
                if !self.open_reported {
                    self.open_reported = true;
                    return Some(LinkOutput::Open);
                }
                None
            }
            Event::ChannelData(data) => match String::from_utf8(data.data) {
                Ok(text) => Some(LinkOutput::Message(text)),
                Err(e) => {
                    log::debug!("[{}] dropping {} byte message that is not UTF-8", self.name, e.as_bytes().len());
                    None
                }
            },
            Event::ChannelClose(id) if Some(id) == self.channel => {
                log::debug!("[{}] remote closed the channel", self.name);
                self.close();
                None
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                log::debug!("[{}] ICE disconnected", self.name);
                self.end();
                // The peer is unreachable: a goodbye would go nowhere.
                self.rtc.disconnect();
                None
            }
            Event::PeerStats(stats) => {
                let selected = stats.selected_candidate_pair.as_ref();
                let rtt = selected.and_then(|p| p.current_round_trip_time);
                if rtt.is_some() {
                    self.rtt = rtt;
                }
                // ICE may move to a better pair while the link is idle; the
                // path is otherwise learnt from the next DTLS record.
                if let Some(p) = selected
                    && self.path.is_some()
                    && self.path != Some((p.local.addr, p.remote.addr))
                {
                    self.path = Some((p.local.addr, p.remote.addr));
                    self.path_reported = false;
                    self.destination_heard = Some(self.last_now);
                }
                None
            }
            Event::Closed => {
                log::debug!("[{}] remote closed the connection", self.name);
                // str0m answers the close itself while we keep polling.
                self.end();
                None
            }
            _ => None,
        }
    }

    /// Moves queued messages into the SCTP buffer while it has room. Returns
    /// whether anything changed, i.e. whether str0m must be polled again.
    fn flush_queue(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let Some(cid) = self.channel else {
            return false;
        };
        let mut wrote = false;
        while let Some((_, front)) = self.queue.front() {
            match guarded(&mut self.rtc, |rtc| write_text(rtc, cid, front)) {
                Ok(true) => {
                    self.queued_bytes -= front.len() + QUEUE_ENTRY_OVERHEAD;
                    if let Some((origin, text)) = self.queue.pop_front() {
                        self.sent(origin, text);
                    }
                    wrote = true;
                }
                Ok(false) => break,
                Err(e) => {
                    self.fail(&e);
                    return true;
                }
            }
        }
        wrote
    }

    /// The link is over; what was not delivered stays for
    /// [`PeerLink::take_undelivered`].
    fn end(&mut self) {
        self.ended = true;
        self.ended_at.get_or_insert(self.last_now);
        self.early_candidates.clear();
    }

    fn fail(&mut self, reason: &str) {
        log::warn!("[{}] WebRTC link failed: {reason}", self.name);
        self.end();
        self.pending_offer = None;
        self.rtc.disconnect();
    }

    fn touch(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
    }

    /// When the link gives up on its own: the silence timeout while it is
    /// running, the close-drain bound once it ended.
    fn wakeup_deadline(&self) -> Option<Instant> {
        match self.ended_at {
            Some(at) => at.checked_add(CLOSE_DRAIN_LIMIT),
            None => self.config.silence_timeout.and_then(|t| self.last_heard.checked_add(t)),
        }
    }

    fn rtc_accepts(&self, input: &Input) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.rtc.accepts(input))).unwrap_or(false)
    }

    fn idle_deadline(&self) -> Instant {
        self.last_now.checked_add(IDLE_WAKEUP).unwrap_or(self.last_now)
    }
}

fn write_text(rtc: &mut Rtc, cid: ChannelId, text: &str) -> Result<bool, RtcError> {
    match rtc.channel(cid) {
        Some(mut chan) => chan.write(false, text.as_bytes()),
        // The channel went away under us; the close event ends the link.
        None => Ok(false),
    }
}

/// Runs `f` on the `Rtc`, turning both errors and panics into a reason text.
/// After an `Err` the caller must discard the `Rtc` state (`fail`), which is
/// what makes `AssertUnwindSafe` sound here.
fn guarded<R>(rtc: &mut Rtc, f: impl FnOnce(&mut Rtc) -> Result<R, RtcError>) -> Result<R, String> {
    match catch_unwind(AssertUnwindSafe(|| f(rtc))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(panic_text(p.as_ref())),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text payload".into());
    format!("panic in str0m: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sim::{self, Network};

    const A_ADDR: &str = "192.0.2.1:4000";
    const B_ADDR: &str = "198.51.100.2:5000";
    /// One-way delay of the simulated network.
    const DELAY: Duration = Duration::from_micros(500);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    struct Side {
        link: PeerLink,
        addr: SocketAddr,
        deadline: Instant,
        opened_at: Option<Instant>,
        closed_at: Option<Instant>,
        messages: Vec<String>,
        /// A vanished peer: neither driven nor reachable.
        frozen: bool,
    }

    impl Side {
        fn new(link: PeerLink, addr: SocketAddr, now: Instant) -> Side {
            Side { link, addr, deadline: now, opened_at: None, closed_at: None, messages: Vec::new(), frozen: false }
        }
    }

    /// Two links joined by an in-memory network with simulated time.
    struct Net {
        a: Side,
        b: Side,
        start: Instant,
        now: Instant,
        net: Network,
        /// Datagrams that neither half of `accepts` claimed.
        unclaimed: usize,
    }

    impl Net {
        fn new(a: PeerLink, b: PeerLink, start: Instant) -> Net {
            let mut net = Net {
                a: Side::new(a, addr(A_ADDR), start),
                b: Side::new(b, addr(B_ADDR), start),
                start,
                now: start,
                net: Network::new(DELAY),
                unclaimed: 0,
            };
            net.drain(true);
            net.drain(false);
            net
        }

        fn side(&mut self, a: bool) -> &mut Side {
            if a { &mut self.a } else { &mut self.b }
        }

        /// Polls one link until it sleeps, putting its datagrams on the wire.
        fn drain(&mut self, a: bool) {
            let now = self.now;
            for _ in 0..1_000_000 {
                let side = self.side(a);
                let own = side.addr;
                match side.link.poll_output() {
                    LinkOutput::Transmit { source, destination, contents } => {
                        assert_eq!(source, own, "sent from a foreign address");
                        self.net.send(now, source, destination, contents);
                    }
                    LinkOutput::Open => {
                        assert!(side.opened_at.is_none(), "Open twice");
                        assert!(side.closed_at.is_none(), "Open after Closed");
                        side.opened_at = Some(now);
                    }
                    LinkOutput::Message(m) => {
                        assert!(side.closed_at.is_none(), "Message after Closed");
                        side.messages.push(m);
                    }
                    LinkOutput::Closed => {
                        assert!(side.closed_at.is_none(), "Closed twice");
                        side.closed_at = Some(now);
                    }
                    LinkOutput::RemoteAddress(_) | LinkOutput::PathChanged | LinkOutput::PeerMoved(_) => {}
                    LinkOutput::Timeout(t) => {
                        side.deadline = t;
                        return;
                    }
                }
            }
            panic!("poll_output never returned Timeout");
        }

        /// Advances to the next event (a delivery or a deadline) and runs it.
        fn step(&mut self) {
            let mut next = self.a.deadline.min(self.b.deadline);
            if self.b.frozen {
                next = self.a.deadline;
            }
            if let Some(at) = self.net.next_at() {
                next = next.min(at);
            }
            self.now = self.now.max(next);
            let now = self.now;
            while let Some(d) = self.net.pop_due(now) {
                let to_a = d.to == self.a.addr;
                let side = self.side(to_a);
                if side.frozen || d.to != side.addr {
                    continue;
                }
                if side.link.accepts(now, d.from, d.to, &d.contents) {
                    side.link.handle_receive(now, d.from, d.to, &d.contents);
                    self.drain(to_a);
                } else {
                    self.unclaimed += 1;
                }
            }
            for a in [true, false] {
                let side = self.side(a);
                if !side.frozen && side.deadline <= now {
                    side.link.handle_timeout(now);
                    self.drain(a);
                }
            }
        }

        /// Runs until `done` holds or `limit` of simulated time has passed.
        fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) -> bool {
            let end = self.now + limit;
            for _ in 0..2_000_000 {
                if done(self) {
                    return true;
                }
                if self.now > end {
                    return false;
                }
                self.step();
            }
            panic!("simulation does not advance time");
        }

        fn run_until_open(&mut self) {
            let opened =
                self.run_until(Duration::from_secs(10), |n| n.a.opened_at.is_some() && n.b.opened_at.is_some());
            assert!(opened, "channel did not open: {:?} {:?}", self.a.link, self.b.link);
            assert!(self.a.link.is_open() && self.b.link.is_open());
        }

        fn elapsed(&self, t: Option<Instant>) -> Duration {
            t.expect("event happened") - self.start
        }
    }

    /// Offer and answer with the host candidates inside the SDPs.
    fn connect_with_sdp_candidates(config: &LinkConfig) -> Net {
        let start = sim::start();
        let (mut a, offer) = PeerLink::new_offerer(&[addr(A_ADDR)], config, start).unwrap();
        let (b, answer) = PeerLink::new_answerer(&offer, &[addr(B_ADDR)], config, start).unwrap();
        a.accept_answer(&answer, start).unwrap();
        let mut net = Net::new(a, b, start);
        net.run_until_open();
        net
    }

    fn connect() -> Net {
        connect_with_sdp_candidates(&LinkConfig::default())
    }

    /// Adds `.local` candidate lines, as browsers write them, to the data
    /// section of an SDP.
    fn with_mdns_candidate(sdp: &str, mid: &str) -> String {
        let anchor = format!("a=mid:{mid}\r\n");
        assert!(sdp.contains(&anchor), "{sdp}");
        sdp.replace(
            &anchor,
            &format!(
                "{anchor}a=candidate:842163049 1 udp 2122260223 \
                 6f1b7c0e-2a5d-4f63-9a1e-0c3f2b9d7e11.local 54321 typ host generation 0\r\n"
            ),
        )
    }

    #[test]
    fn links_sharing_an_identity_present_one_certificate_and_still_open() {
        let identity = DtlsIdentity::generate().expect("a certificate");
        let shared = LinkConfig { identity: Some(identity), ..LinkConfig::default() };
        let now = sim::start();
        let fingerprint =
            |sdp: &str| sdp.lines().find(|l| l.starts_with("a=fingerprint:")).map(str::to_owned).expect("fingerprint");
        let (_a, first) = PeerLink::new_offerer(&[], &shared, now).unwrap();
        let (_b, second) = PeerLink::new_offerer(&[], &shared, now).unwrap();
        let (_c, own) = PeerLink::new_offerer(&[], &LinkConfig::default(), now).unwrap();
        assert_eq!(fingerprint(&first), fingerprint(&second));
        assert_ne!(fingerprint(&first), fingerprint(&own));
        // Both ends presenting the same certificate is legal DTLS; links of
        // two sidecars never do, but the handshake must not care.
        let mut net = connect_with_sdp_candidates(&shared);
        net.a.link.send("over a shared identity", 0).unwrap();
        net.drain(true);
        assert!(net.run_until(Duration::from_secs(1), |n| n.b.messages == ["over a shared identity"]));
    }

    #[test]
    fn opens_with_candidates_in_the_sdp() {
        let config = LinkConfig::default();
        let start = sim::start();
        let (mut a, offer) = PeerLink::new_offerer(&[addr(A_ADDR)], &config, start).unwrap();
        let mid = a.mid().expect("offerer knows its mid");
        assert!(offer.contains(&format!("a=mid:{mid}\r\n")), "{offer}");
        assert!(offer.contains("a=candidate:"), "{offer}");
        assert!(offer.contains("192.0.2.1 4000 typ host"), "{offer}");
        assert!(offer.contains("m=application"), "{offer}");
        assert!(offer.contains("a=max-message-size:"), "{offer}");

        // Browsers put mDNS host candidates in the SDP too; they must not
        // break anything.
        let offer = with_mdns_candidate(&offer, &mid);
        let (b, answer) = PeerLink::new_answerer(&offer, &[addr(B_ADDR)], &config, start).unwrap();
        assert_eq!(b.mid().as_deref(), Some(mid.as_str()));
        assert!(answer.contains("198.51.100.2 5000 typ host"), "{answer}");
        let answer = with_mdns_candidate(&answer, &mid);
        a.accept_answer(&answer, start).unwrap();

        let mut net = Net::new(a, b, start);
        net.run_until_open();
        let (ta, tb) = (net.elapsed(net.a.opened_at), net.elapsed(net.b.opened_at));
        eprintln!("open with SDP candidates: offerer {ta:?}, answerer {tb:?} (simulated)");
        // Without the address fallback in `accepts` this takes over 1 s.
        assert!(ta < Duration::from_millis(300) && tb < Duration::from_millis(300));
        assert_eq!(net.unclaimed, 0);
    }

    #[test]
    fn a_check_that_beats_the_answer_does_not_hold_back_the_offerers_own() {
        let config = LinkConfig::default();
        let start = sim::start();
        let (a, offer) = PeerLink::new_offerer(&[addr(A_ADDR)], &config, start).unwrap();
        let (b, answer) = PeerLink::new_answerer(&offer, &[addr(B_ADDR)], &config, start).unwrap();
        // The answerer checks at once; its check arrives while the answer
        // is still on its way through the registry.
        let mut net = Net::new(a, b, start);
        net.run_until(Duration::from_millis(3), |_| false);
        let answered = net.now;
        net.a.link.accept_answer(&answer, answered).unwrap();
        net.drain(true);
        net.run_until_open();
        let took = net.a.opened_at.unwrap() - answered;
        eprintln!("open {took:?} after the answer (simulated, {DELAY:?} one way)");
        // A few round trips; waiting out str0m's 50 ms check pacing would
        // show here.
        assert!(took < Duration::from_millis(25), "{took:?}");
    }

    /// The shapes other stacks trickle candidates in (docs/PROTOCOL.md §4.6, §5.1).
    #[derive(Clone, Copy, Debug)]
    enum Form {
        AsProduced,
        NoPrefixEmptyMid,
        AttributeLineNoMid,
    }

    fn reshape(c: &IceCandidatePayload, form: Form) -> IceCandidatePayload {
        match form {
            Form::AsProduced => c.clone(),
            Form::NoPrefixEmptyMid => IceCandidatePayload {
                candidate: c.candidate.strip_prefix("candidate:").unwrap().to_owned(),
                sdp_mid: Some(String::new()),
                sdp_mline_index: None,
            },
            Form::AttributeLineNoMid => IceCandidatePayload {
                candidate: format!("a={}\r\n", c.candidate),
                sdp_mid: None,
                sdp_mline_index: None,
            },
        }
    }

    /// Candidates that must be ignored without harming the link.
    fn junk_candidates() -> Vec<IceCandidatePayload> {
        let c = |s: &str, mid: Option<&str>| IceCandidatePayload {
            candidate: s.to_owned(),
            sdp_mid: mid.map(str::to_owned),
            sdp_mline_index: Some(0),
        };
        vec![
            c("candidate:1 1 udp 2122260223 0b5e2b8c-3c1e-4f0e-8f67-5b8d7d0f1a2b.local 50000 typ host", Some("0")),
            c("candidate:2 1 tcp 1518280447 192.0.2.99 9 typ host tcptype active", None),
            c("candidate:garbage", None),
            c("  ", None),
            c(&"x".repeat(5000), None),
            c("", Some("")),
        ]
    }

    fn trickle_only(form: Form) {
        let config = LinkConfig::default();
        let start = sim::start();
        let (mut a, offer) = PeerLink::new_offerer(&[], &config, start).unwrap();
        assert!(!offer.contains("a=candidate"), "{offer}");
        let (mut b, answer) = PeerLink::new_answerer(&offer, &[], &config, start).unwrap();
        assert!(!answer.contains("a=candidate"), "{answer}");

        let ca = a.add_local_candidate(addr(A_ADDR)).expect("host candidate");
        let cb = b.add_local_candidate(addr(B_ADDR)).expect("host candidate");
        assert!(ca.candidate.starts_with("candidate:"), "{ca:?}");
        assert_eq!(ca.sdp_mid, a.mid());
        assert_eq!(cb.sdp_mid, a.mid());
        assert_eq!(ca.sdp_mline_index, Some(0));

        // b's candidate and the junk reach a before the answer does.
        for junk in junk_candidates() {
            a.add_remote_candidate(&junk);
        }
        a.add_remote_candidate(&reshape(&cb, form));
        a.add_remote_candidate(&IceCandidatePayload::default());
        a.accept_answer(&answer, start).unwrap();

        for junk in junk_candidates() {
            b.add_remote_candidate(&junk);
        }
        b.add_remote_candidate(&reshape(&ca, form));

        let mut net = Net::new(a, b, start);
        net.run_until_open();
        let (ta, tb) = (net.elapsed(net.a.opened_at), net.elapsed(net.b.opened_at));
        eprintln!("open with trickled candidates ({form:?}): offerer {ta:?}, answerer {tb:?} (simulated)");
        assert!(ta < Duration::from_millis(300) && tb < Duration::from_millis(300));
        assert!(net.a.link.send("hi", 0).is_ok());
        assert!(net.run_until(Duration::from_secs(1), |n| n.b.messages == ["hi"]));
    }

    /// A peer that trickles thousands of candidates gets checks sent to the
    /// first [`DEFAULT_MAX_REMOTE_CANDIDATES`] only; the rest are not even
    /// kept (str0m would pair every one and keep it for the link's life).
    #[test]
    fn trickled_candidates_beyond_the_bound_are_ignored() {
        let config = LinkConfig::default();
        let start = sim::start();
        let (mut a, offer) = PeerLink::new_offerer(&[addr(A_ADDR)], &config, start).unwrap();
        let (_b, answer) = PeerLink::new_answerer(&offer, &[], &config, start).unwrap();
        a.accept_answer(&answer, start).unwrap();
        let mid = a.mid();
        for i in 0..2_000u32 {
            let host = format!("198.51.100.{}", 1 + i % 250);
            let port = 20_000 + i / 250;
            a.add_remote_candidate(&IceCandidatePayload {
                candidate: format!("candidate:{i} 1 udp 2122260223 {host} {port} typ host"),
                sdp_mid: mid.clone(),
                sdp_mline_index: Some(0),
            });
        }
        let mut destinations = std::collections::HashSet::new();
        let mut now = start;
        let end = start + Duration::from_secs(20);
        while now < end {
            loop {
                match a.poll_output() {
                    LinkOutput::Transmit { destination, .. } => {
                        destinations.insert(destination);
                    }
                    LinkOutput::Timeout(t) => {
                        now = t.max(now + Duration::from_millis(1));
                        break;
                    }
                    _ => {}
                }
            }
            a.handle_timeout(now);
        }
        assert!(!destinations.is_empty());
        assert!(
            destinations.len() <= DEFAULT_MAX_REMOTE_CANDIDATES,
            "checks went to {} remote addresses",
            destinations.len()
        );
    }

    #[test]
    fn opens_with_trickled_candidates_as_produced() {
        trickle_only(Form::AsProduced);
    }

    #[test]
    fn opens_with_trickled_candidates_without_prefix_and_empty_mid() {
        trickle_only(Form::NoPrefixEmptyMid);
    }

    #[test]
    fn opens_with_trickled_attribute_lines_without_mid() {
        trickle_only(Form::AttributeLineNoMid);
    }

    #[test]
    fn answerer_accepts_any_label() {
        let config = LinkConfig::default();
        let start = sim::start();
        let (mut a, offer) = PeerLink::new_offerer_with_label("chat", &[addr(A_ADDR)], &config, start).unwrap();
        let (b, answer) = PeerLink::new_answerer(&offer, &[addr(B_ADDR)], &config, start).unwrap();
        a.accept_answer(&answer, start).unwrap();
        let mut net = Net::new(a, b, start);
        net.run_until_open();
        net.b.link.send("hello", 0).unwrap();
        net.drain(false);
        assert!(net.run_until(Duration::from_secs(1), |n| n.a.messages == ["hello"]));
    }

    #[test]
    fn messages_flow_both_ways_in_order() {
        let mut net = connect();
        let n = 300;
        let mut sent_a = Vec::new();
        let mut sent_b = Vec::new();
        for i in 0..n {
            let ma = format!("{{\"type\":\"a\",\"n\":{i}}}");
            let mb = format!("b{i}-{}", "y".repeat(i % 50));
            net.a.link.send(&ma, 0).unwrap();
            net.b.link.send(&mb, 0).unwrap();
            sent_a.push(ma);
            sent_b.push(mb);
            if i % 7 == 0 {
                net.drain(true);
                net.drain(false);
                net.step();
            }
        }
        net.drain(true);
        net.drain(false);
        assert!(
            net.run_until(Duration::from_secs(5), |net| { net.a.messages.len() == n && net.b.messages.len() == n })
        );
        assert_eq!(net.b.messages, sent_a);
        assert_eq!(net.a.messages, sent_b);
        // str0m cannot send an empty message, so it is refused, not lost.
        assert_eq!(net.a.link.send("", 0), Err(SendError::Empty));
    }

    #[test]
    fn message_size_limit() {
        let mut net = connect();
        assert_eq!(net.a.link.send_limit(), DEFAULT_MAX_MESSAGE_BYTES);
        let big: String = (0..65_000u32).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        net.a.link.send(&big, 0).unwrap();
        net.drain(true);
        let too_big = "z".repeat(65_001);
        assert_eq!(net.a.link.send(&too_big, 0), Err(SendError::TooLarge { len: 65_001, max: 65_000 }));
        assert_eq!(net.b.link.send(&too_big, 0), Err(SendError::TooLarge { len: 65_001, max: 65_000 }));
        assert!(net.run_until(Duration::from_secs(2), |n| !n.b.messages.is_empty()));
        assert_eq!(net.b.messages.len(), 1);
        assert!(net.b.messages[0] == big, "big message corrupted");
        // A refused message does not hurt the channel.
        net.a.link.send("after", 0).unwrap();
        net.drain(true);
        assert!(net.run_until(Duration::from_secs(1), |n| n.b.messages.len() == 2));
        assert!(net.a.closed_at.is_none() && net.b.closed_at.is_none());
    }

    #[test]
    fn remote_advertised_limit_lowers_ours() {
        let config = LinkConfig::default();
        let start = sim::start();
        let (mut a, offer) = PeerLink::new_offerer(&[addr(A_ADDR)], &config, start).unwrap();
        let (b, answer) = PeerLink::new_answerer(&offer, &[addr(B_ADDR)], &config, start).unwrap();
        let line = answer
            .lines()
            .find(|l| l.starts_with("a=max-message-size:"))
            .expect("str0m advertises its limit")
            .to_owned();
        let answer = answer.replace(&line, "a=max-message-size:1000");
        a.accept_answer(&answer, start).unwrap();
        let mut net = Net::new(a, b, start);
        net.run_until_open();
        assert_eq!(net.a.link.send_limit(), 1000);
        assert_eq!(net.a.link.send(&"q".repeat(1001), 0), Err(SendError::TooLarge { len: 1001, max: 1000 }));
        net.a.link.send(&"q".repeat(1000), 0).unwrap();
        // b saw str0m's own (larger) advertisement and keeps our limit.
        assert_eq!(net.b.link.send_limit(), DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn flood_hits_backpressure_then_everything_arrives_in_order() {
        let config = LinkConfig { max_queued_bytes: 256 * 1024, ..LinkConfig::default() };
        let mut net = connect_with_sdp_candidates(&config);
        let chunk = "m".repeat(16 * 1024);
        let mut sent = Vec::new();
        loop {
            let msg = format!("{:06}{chunk}", sent.len());
            match net.a.link.send(&msg, 0) {
                Ok(()) => sent.push(msg),
                Err(SendError::Backpressure) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(sent.len() < 1000, "no backpressure");
        }
        assert!(net.a.link.queued_bytes() > 0);
        assert!(net.a.link.queued_bytes() <= config.max_queued_bytes);
        // SCTP buffer (128 KiB) plus queue (256 KiB), 16 KiB each.
        assert!(sent.len() >= 16, "only {} accepted", sent.len());
        net.drain(true);
        let n = sent.len();
        assert!(net.run_until(Duration::from_secs(10), |net| net.b.messages.len() >= n));
        assert!(net.b.messages == sent, "flood arrived out of order or corrupted");
        assert_eq!(net.a.link.queued_bytes(), 0);
        // Room again.
        net.a.link.send("more", 0).unwrap();
    }

    #[test]
    fn close_reaches_the_other_side() {
        let mut net = connect();
        let t0 = net.now;
        net.a.link.close();
        assert_eq!(net.a.link.send("late", 0), Err(SendError::NotOpen));
        assert!(!net.a.link.is_open());
        net.drain(true);
        assert!(net.a.closed_at.is_some(), "local close reports Closed too");
        assert!(net.run_until(Duration::from_secs(5), |n| n.b.closed_at.is_some()));
        let took = net.b.closed_at.unwrap() - t0;
        eprintln!("remote saw close after {took:?} (simulated)");
        assert!(took < Duration::from_millis(100));
        assert_eq!(net.b.link.send("late", 0), Err(SendError::NotOpen));
        assert!(net.run_until(Duration::from_secs(5), |n| { !n.a.link.is_alive() && !n.b.link.is_alive() }));
        // Nothing more from either, ever.
        net.run_until(Duration::from_secs(2), |_| false);
    }

    #[test]
    fn vanished_peer_is_detected_within_15_s() {
        let mut net = connect();
        // Idle links stay up: keepalives keep the silence timer fed.
        assert!(!net.run_until(Duration::from_secs(60), |n| { n.a.closed_at.is_some() || n.b.closed_at.is_some() }));
        net.b.frozen = true;
        let t0 = net.now;
        assert!(net.run_until(Duration::from_secs(60), |n| n.a.closed_at.is_some()));
        let took = net.a.closed_at.unwrap() - t0;
        eprintln!("vanished peer detected after {took:?} (simulated, silence timeout)");
        assert!(took <= Duration::from_secs(15), "{took:?}");
        assert!(!net.a.link.is_alive());
        assert_eq!(net.a.link.send("x", 0), Err(SendError::NotOpen));
    }

    #[test]
    fn close_towards_a_vanished_peer_finishes() {
        let mut net = connect();
        net.b.frozen = true;
        net.a.link.close();
        net.drain(true);
        assert!(net.a.closed_at.is_some());
        assert!(net.run_until(Duration::from_secs(10), |n| !n.a.link.is_alive()));
        assert!(net.now - net.a.closed_at.unwrap() < CLOSE_DRAIN_LIMIT, "drain hit the safety bound");
    }

    #[test]
    fn vanished_peer_is_detected_by_ice_alone() {
        // With str0m's own keepalive timing; ours checks less often and
        // leaves detection to the silence timeout.
        let config = LinkConfig { silence_timeout: None, max_stun_rto: None, ..LinkConfig::default() };
        let mut net = connect_with_sdp_candidates(&config);
        net.b.frozen = true;
        let t0 = net.now;
        assert!(net.run_until(Duration::from_secs(60), |n| n.a.closed_at.is_some()));
        let took = net.a.closed_at.unwrap() - t0;
        eprintln!("vanished peer detected after {took:?} (simulated, ICE only)");
        assert!(took <= Duration::from_secs(30), "{took:?}");
        assert!(!net.a.link.is_alive());
    }

    #[test]
    fn unanswered_offer_times_out() {
        let config = LinkConfig::default();
        let now = sim::start();
        let (mut a, _offer) = PeerLink::new_offerer(&[addr(A_ADDR)], &config, now).unwrap();
        let LinkOutput::Timeout(t) = a.poll_output() else {
            panic!("an offer alone sends nothing");
        };
        assert!(t <= now + DEFAULT_SILENCE_TIMEOUT);
        a.handle_timeout(now + DEFAULT_SILENCE_TIMEOUT);
        assert_eq!(a.poll_output(), LinkOutput::Closed);
        assert!(!a.is_alive());
    }

    #[test]
    fn garbage_datagrams_do_not_break_the_link() {
        let mut net = connect();
        let (src, dst) = (net.a.addr, net.b.addr);
        let stranger = addr("203.0.113.9:7000");
        let mut garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x00, 0x01, 0x00, 0x00],
            vec![0x01; 20],
            vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 3, 1, 2, 3],
            vec![0x80; 64],
            vec![0xff; 1200],
        ];
        // DTLS application data and handshake records with random bodies.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for first in [0x17u8, 0x16, 0x15, 0x14] {
            let mut g = vec![first, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 50, 0, 40];
            for _ in 0..40 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                g.push(seed as u8);
            }
            garbage.push(g);
        }
        for g in &garbage {
            assert!(!net.b.link.accepts(net.now, stranger, dst, g));
            // Fed to the link whatever `accepts` says: the owner may route by
            // address alone.
            net.b.link.handle_receive(net.now, src, dst, g);
            net.drain(false);
            net.b.link.handle_receive(net.now, stranger, dst, g);
            net.drain(false);
        }
        assert!(net.b.closed_at.is_none(), "garbage closed the link");
        net.a.link.send("still here", 0).unwrap();
        net.b.link.send("me too", 0).unwrap();
        net.drain(true);
        net.drain(false);
        assert!(
            net.run_until(Duration::from_secs(2), |n| { n.b.messages == ["still here"] && n.a.messages == ["me too"] })
        );
    }

    #[test]
    fn bad_sdp_is_refused() {
        let config = LinkConfig::default();
        let now = sim::start();
        assert!(matches!(PeerLink::new_answerer("not an sdp", &[], &config, now), Err(LinkError::InvalidSdp(_))));
        assert!(matches!(
            PeerLink::new_answerer(&"v=0\r\n".repeat(20_000), &[], &config, now),
            Err(LinkError::InvalidSdp(_))
        ));
        let (mut a, offer) = PeerLink::new_offerer(&[], &config, now).unwrap();
        let no_data = offer.split("m=application").next().unwrap().to_owned();
        assert!(matches!(PeerLink::new_answerer(&no_data, &[], &config, now), Err(LinkError::InvalidSdp(_))));
        // A garbled answer leaves the offer waiting for a real one.
        assert!(matches!(a.accept_answer("garbage", now), Err(LinkError::InvalidSdp(_))));
        let (mut b, answer) = PeerLink::new_answerer(&offer, &[], &config, now).unwrap();
        assert_eq!(b.accept_answer(&answer, now), Err(LinkError::NotExpected));
        a.accept_answer(&answer, now).unwrap();
        assert_eq!(a.accept_answer(&answer, now), Err(LinkError::NotExpected));
        assert_eq!(a.send("x", 0), Err(SendError::NotOpen));
    }

    #[test]
    fn str0m_panics_and_errors_end_only_the_link() {
        let mut net = connect();
        let r = guarded(&mut net.a.link.rtc, |_| -> Result<(), RtcError> { panic!("boom") });
        assert_eq!(r, Err("panic in str0m: boom".to_owned()));
        net.a.link.fail("injected");
        net.drain(true);
        assert!(net.a.closed_at.is_some());
        assert!(!net.a.link.is_alive());
        assert_eq!(net.a.link.send("x", 0), Err(SendError::NotOpen));
        // The other side notices through its silence timeout.
        assert!(net.run_until(Duration::from_secs(20), |n| n.b.closed_at.is_some()));
    }

    #[test]
    fn close_before_connecting_finishes_at_once() {
        let config = LinkConfig::default();
        let now = sim::start();
        let (mut a, _offer) = PeerLink::new_offerer(&[addr(A_ADDR)], &config, now).unwrap();
        a.close();
        assert_eq!(a.poll_output(), LinkOutput::Closed);
        assert!(matches!(a.poll_output(), LinkOutput::Timeout(_)));
        assert!(!a.is_alive());
        // Everything after the end is a no-op.
        a.handle_timeout(now + Duration::from_secs(1));
        a.add_remote_candidate(&IceCandidatePayload {
            candidate: "candidate:1 1 udp 1 192.0.2.5 9 typ host".into(),
            ..Default::default()
        });
        a.close();
        assert!(matches!(a.poll_output(), LinkOutput::Timeout(_)));
    }
}
