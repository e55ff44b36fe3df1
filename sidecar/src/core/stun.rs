//! Server-reflexive candidates from STUN servers (docs/PROTOCOL.md "ICE
//! candidates"). The node core ([`super::node`]) gets the servers' names
//! looked up, hands the addresses to [`Gatherer::set_servers`], sends what
//! [`Gatherer::poll_output`] asks on the one UDP socket, offers every
//! datagram from the network to [`Gatherer::handle_datagram`] first, and
//! wakes it at [`Gatherer::poll_timeout`].
//!
//! Host candidates never wait for this: links are offered at once and a
//! server-reflexive candidate is trickled whenever it is learned.
//!
//! One Binding request per server address and round, without credentials
//! (RFC 5389 §7.2.1: retransmitted with the same transaction id, the interval
//! doubling from 500 ms), then a new round every 5 minutes so that a changed
//! NAT mapping is noticed. That is all the gatherer ever wakes for.
//!
//! Messages are encoded and decoded by str0m's STUN codec. Its parser is
//! written for ICE connectivity checks, though: it refuses a Binding success
//! response without MESSAGE-INTEGRITY (which a STUN server does not add to an
//! unauthenticated answer) and logs a warning for every MAPPED-ADDRESS (which
//! many servers add for RFC 3489 clients). [`parse_reply`] therefore hands it
//! a private copy relabelled as a Binding indication, with those attributes
//! renamed to one it skips.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::ice::{StunMessage, StunMessageBuilder, TransId};

use super::canonical;
use super::urls::StunServer;

/// Server addresses asked per round; more are ignored.
const MAX_SERVERS: usize = 8;
/// Server-reflexive addresses remembered for deduplication.
const MAX_LEARNED: usize = 8;
/// Largest datagram taken for a STUN reply (they are ~100 bytes).
const MAX_REPLY: usize = 1280;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const BINDING_INDICATION: u16 = 0x0011;
/// Attributes str0m warns about (MAPPED-ADDRESS, UNKNOWN-ATTRIBUTES,
/// ALTERNATE-SERVER); renamed to [`SKIPPED_ATTRIBUTE`] before parsing.
const NOISY_ATTRIBUTES: [u16; 3] = [0x0001, 0x000A, 0x8023];
/// An unassigned comprehension-optional type, which str0m skips.
const SKIPPED_ATTRIBUTE: u16 = 0x8000;

/// The addresses to ask: at most one per server and IP family, in the
/// order of `servers`. `looked_up` holds the lookup result of each server,
/// in order; a server whose host is an address needs none. An error only
/// when no server has an address and some lookup failed.
pub fn pick_addresses(
    servers: &[StunServer],
    looked_up: &[Result<Vec<SocketAddr>, String>],
) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let addrs: Vec<SocketAddr> = match (s.literal(), looked_up.get(i)) {
            (Some(a), _) => vec![a],
            (None, Some(Ok(addrs))) => addrs.iter().copied().map(canonical).collect(),
            (None, Some(Err(e))) => {
                failures.push(format!("{s}: {e}"));
                continue;
            }
            (None, None) => continue,
        };
        for v6 in [false, true] {
            if let Some(a) = addrs.iter().find(|a| a.is_ipv6() == v6)
                && !out.contains(a)
            {
                out.push(*a);
            }
        }
    }
    if out.is_empty() && !failures.is_empty() {
        return Err(failures.join("; "));
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct GathererConfig {
    /// First retransmission interval; doubles per retransmission.
    pub rto: Duration,
    /// Requests per transaction, the first included.
    pub max_sends: u32,
    /// A new round (lookup and requests) this often.
    pub refresh: Duration,
}

impl Default for GathererConfig {
    fn default() -> Self {
        GathererConfig { rto: Duration::from_millis(500), max_sends: 5, refresh: Duration::from_secs(300) }
    }
}

/// What the gatherer asks of its shell. Drain until `None`.
#[derive(Debug, Clone, PartialEq)]
pub enum StunOutput {
    /// Send a datagram on the UDP socket.
    Transmit { destination: SocketAddr, contents: Vec<u8> },
    /// A server-reflexive address not reported before, with its base (the
    /// host candidate it maps).
    Candidate { addr: SocketAddr, base: SocketAddr },
    /// Time for a new round: look the servers up and call
    /// [`Gatherer::set_servers`] (with no addresses if that failed).
    Resolve,
}

struct Transaction {
    server: SocketAddr,
    id: TransId,
    sends: u32,
    rto: Duration,
    /// Next retransmission, or when to give up; `None` once answered or
    /// given up on.
    next_at: Option<Instant>,
}

pub struct Gatherer {
    config: GathererConfig,
    /// Our host candidates: bases, and mapped addresses not worth reporting.
    hosts: Vec<SocketAddr>,
    transactions: Vec<Transaction>,
    learned: VecDeque<(SocketAddr, SocketAddr)>,
    refresh_at: Option<Instant>,
    outputs: VecDeque<StunOutput>,
}

impl Gatherer {
    /// A gatherer for the socket whose host candidates are `hosts`. It does
    /// nothing until [`Gatherer::set_servers`].
    pub fn new(config: GathererConfig, hosts: Vec<SocketAddr>) -> Gatherer {
        Gatherer {
            config,
            hosts,
            transactions: Vec::new(),
            learned: VecDeque::new(),
            refresh_at: None,
            outputs: VecDeque::new(),
        }
    }

    /// Starts a round: one new transaction per server address whose IP
    /// family has a host candidate (only those can yield a usable base).
    /// Outstanding transactions of the previous round are forgotten.
    pub fn set_servers(&mut self, servers: &[SocketAddr], now: Instant) {
        self.transactions.clear();
        for &server in servers {
            let server = canonical(server);
            let family_ok = self.hosts.iter().any(|h| h.is_ipv6() == server.is_ipv6());
            if !family_ok || self.transactions.iter().any(|t| t.server == server) {
                continue;
            }
            if self.transactions.len() == MAX_SERVERS {
                break;
            }
            let t = Transaction { server, id: TransId::new(), sends: 0, rto: self.config.rto, next_at: Some(now) };
            self.transactions.push(t);
        }
        self.refresh_at = Some(now + self.config.refresh);
        self.handle_timeout(now);
    }

    /// Next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<StunOutput> {
        self.outputs.pop_front()
    }

    /// When [`Gatherer::handle_timeout`] is due next; `None` while there is
    /// nothing scheduled (before the first round, or while a lookup runs).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transactions.iter().filter_map(|t| t.next_at).chain(self.refresh_at).min()
    }

    /// Retransmits, gives up and starts rounds as due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for t in &mut self.transactions {
            let Some(at) = t.next_at else { continue };
            if at > now {
                continue;
            }
            if t.sends >= self.config.max_sends {
                log::debug!("no answer from STUN server {} after {} requests", t.server, t.sends);
                t.next_at = None;
                continue;
            }
            if t.sends > 0 {
                t.rto = t.rto.saturating_mul(2);
            }
            t.sends += 1;
            t.next_at = Some(now + t.rto);
            log::trace!("STUN binding request {} to {}", t.sends, t.server);
            self.outputs.push_back(StunOutput::Transmit { destination: t.server, contents: binding_request(t.id) });
        }
        if self.refresh_at.is_some_and(|at| at <= now) {
            self.refresh_at = None;
            self.outputs.push_back(StunOutput::Resolve);
        }
    }

    /// Takes one datagram if it answers one of our transactions: it comes
    /// from that server and carries that transaction id. Returns `false` for
    /// anything else, which then belongs to the links.
    pub fn handle_datagram(&mut self, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) -> bool {
        let source = canonical(source);
        // Cheap test first: most datagrams are DTLS/SCTP from peers.
        let Some(idx) = self.transactions.iter().position(|t| t.server == source) else { return false };
        let Some(reply) = parse_reply(bytes) else { return false };
        let t = &mut self.transactions[idx];
        if reply.id != t.id {
            return false;
        }
        let server = t.server;
        t.next_at = None;
        match reply.outcome {
            Outcome::Mapped(addr) => self.learn(server, canonical(addr), canonical(destination)),
            Outcome::Error(code) => log::debug!("STUN server {server} refused the binding request ({code:?})"),
            Outcome::Unusable => log::debug!("STUN server {server} answered without XOR-MAPPED-ADDRESS"),
        }
        true
    }

    fn learn(&mut self, server: SocketAddr, addr: SocketAddr, destination: SocketAddr) {
        if self.hosts.contains(&addr) {
            log::debug!("STUN server {server} sees our host candidate {addr}: no NAT on that path");
            return;
        }
        // The base is the local address the answer arrived at, when that is
        // one of our host candidates; otherwise any of the same family.
        let base = if self.hosts.contains(&destination) && destination.is_ipv6() == addr.is_ipv6() {
            destination
        } else if let Some(h) = self.hosts.iter().find(|h| h.is_ipv6() == addr.is_ipv6()) {
            *h
        } else {
            log::debug!("STUN server {server} maps us to {addr}, but no host candidate of that family is its base");
            return;
        };
        if self.learned.contains(&(addr, base)) {
            log::trace!("STUN server {server} confirms {addr}");
            return;
        }
        log::info!("server-reflexive address {addr} (base {base}) from STUN server {server}");
        if self.learned.len() == MAX_LEARNED {
            self.learned.pop_front();
        }
        self.learned.push_back((addr, base));
        self.outputs.push_back(StunOutput::Candidate { addr, base });
    }
}

/// An unauthenticated Binding request (with FINGERPRINT, as str0m writes it).
fn binding_request(id: TransId) -> Vec<u8> {
    let msg = StunMessageBuilder::new().binding().request().build(id);
    let mut buf = [0u8; 64];
    // Without a password str0m never calls the HMAC function.
    match msg.to_bytes(None, &mut buf, |_, _| [0; 20]) {
        Ok(n) => buf[..n].to_vec(),
        Err(e) => {
            // A fixed 28-byte message into 64 bytes cannot fail.
            log::error!("cannot encode a STUN binding request: {e}");
            Vec::new()
        }
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Mapped(SocketAddr),
    Error(Option<u16>),
    /// A success response without XOR-MAPPED-ADDRESS.
    Unusable,
}

#[derive(Debug)]
struct Reply {
    id: TransId,
    outcome: Outcome,
}

/// A Binding success or error response, decoded by str0m (see the module
/// documentation for why on a relabelled copy). `None` for anything else.
fn parse_reply(bytes: &[u8]) -> Option<Reply> {
    if bytes.len() < 20 || bytes.len() > MAX_REPLY || bytes[4..8] != MAGIC_COOKIE {
        return None;
    }
    let typ = u16::from_be_bytes([bytes[0], bytes[1]]);
    if typ != BINDING_SUCCESS && typ != BINDING_ERROR {
        return None;
    }
    let mut copy = [0u8; MAX_REPLY];
    let copy = &mut copy[..bytes.len()];
    copy.copy_from_slice(bytes);
    copy[..2].copy_from_slice(&BINDING_INDICATION.to_be_bytes());
    let mut off = 20;
    while off + 4 <= copy.len() {
        let attr = u16::from_be_bytes([copy[off], copy[off + 1]]);
        let len = usize::from(u16::from_be_bytes([copy[off + 2], copy[off + 3]]));
        if NOISY_ATTRIBUTES.contains(&attr) {
            copy[off..off + 2].copy_from_slice(&SKIPPED_ATTRIBUTE.to_be_bytes());
        }
        off += 4 + len.div_ceil(4) * 4;
    }
    let msg = StunMessage::parse(copy).ok()?;
    let outcome = if typ == BINDING_ERROR {
        Outcome::Error(msg.error_code().map(|(code, _)| code))
    } else {
        msg.mapped_address().map_or(Outcome::Unusable, Outcome::Mapped)
    };
    Some(Reply { id: msg.trans_id(), outcome })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sim;
    use std::net::IpAddr;

    const SERVER: &str = "198.51.100.1:3478";
    const HOST: &str = "10.0.0.2:5000";
    const MAPPED: &str = "203.0.113.9:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn success(id: TransId, mapped: SocketAddr) -> Vec<u8> {
        let msg = StunMessageBuilder::new().binding().success().xor_mapped_address(mapped).build(id);
        let mut buf = [0u8; 128];
        let n = msg.to_bytes(None, &mut buf, |_, _| [0; 20]).unwrap();
        buf[..n].to_vec()
    }

    /// How a coturn-like server answers: MAPPED-ADDRESS, XOR-MAPPED-ADDRESS,
    /// SOFTWARE (odd length, padded), no integrity, no fingerprint.
    fn classic_success(id: &[u8; 12], mapped: std::net::SocketAddrV4) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01]);
        attrs.extend_from_slice(&mapped.port().to_be_bytes());
        attrs.extend_from_slice(&mapped.ip().octets());
        attrs.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
        attrs.extend_from_slice(&(mapped.port() ^ 0x2112).to_be_bytes());
        let ip = u32::from(*mapped.ip()) ^ 0x2112_A442;
        attrs.extend_from_slice(&ip.to_be_bytes());
        attrs.extend_from_slice(&[0x80, 0x22, 0x00, 0x05]);
        attrs.extend_from_slice(b"abcde\0\0\0");
        let mut msg = vec![0x01, 0x01];
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(id);
        msg.extend_from_slice(&attrs);
        msg
    }

    fn id_bytes(request: &[u8]) -> [u8; 12] {
        request[8..20].try_into().unwrap()
    }

    fn drain(g: &mut Gatherer) -> Vec<StunOutput> {
        std::iter::from_fn(|| g.poll_output()).collect()
    }

    fn requests(outs: &[StunOutput]) -> Vec<(SocketAddr, Vec<u8>)> {
        outs.iter()
            .filter_map(|o| match o {
                StunOutput::Transmit { destination, contents } => Some((*destination, contents.clone())),
                _ => None,
            })
            .collect()
    }

    fn started(now: Instant) -> (Gatherer, TransId) {
        let mut g = Gatherer::new(GathererConfig::default(), vec![addr(HOST)]);
        assert_eq!(g.poll_timeout(), None, "idle until servers are known");
        g.set_servers(&[addr(SERVER)], now);
        let id = g.transactions[0].id;
        (g, id)
    }

    #[test]
    fn a_request_is_sent_at_once_and_the_answer_yields_a_candidate() {
        let now = sim::start();
        let (mut g, id) = started(now);
        let outs = drain(&mut g);
        let reqs = requests(&outs);
        assert_eq!(reqs.len(), 1);
        let (to, bytes) = &reqs[0];
        assert_eq!(*to, addr(SERVER));
        // Binding request, magic cookie, our transaction id, FINGERPRINT only.
        assert_eq!(&bytes[..2], &[0x00, 0x01]);
        assert_eq!(&bytes[4..8], &MAGIC_COOKIE);
        assert_eq!(bytes.len(), 28);
        assert!(g.handle_datagram(addr(SERVER), addr(HOST), &success(id, addr(MAPPED))));
        assert_eq!(drain(&mut g), [StunOutput::Candidate { addr: addr(MAPPED), base: addr(HOST) }]);
        // Answered: nothing until the refresh.
        assert_eq!(g.poll_timeout(), Some(now + Duration::from_secs(300)));
        // A duplicate answer is still ours, but reports nothing new.
        assert!(g.handle_datagram(addr(SERVER), addr(HOST), &success(id, addr(MAPPED))));
        assert!(drain(&mut g).is_empty());
    }

    #[test]
    fn answers_with_mapped_address_and_padding_are_understood() {
        let now = sim::start();
        let (mut g, _) = started(now);
        let reqs = requests(&drain(&mut g));
        let reply = classic_success(&id_bytes(&reqs[0].1), "203.0.113.9:40000".parse().unwrap());
        assert!(g.handle_datagram(addr(SERVER), addr(HOST), &reply));
        assert_eq!(drain(&mut g), [StunOutput::Candidate { addr: addr(MAPPED), base: addr(HOST) }]);
    }

    #[test]
    fn wrong_transaction_or_source_is_not_ours() {
        let now = sim::start();
        let (mut g, id) = started(now);
        drain(&mut g);
        let other = TransId::new();
        assert!(!g.handle_datagram(addr(SERVER), addr(HOST), &success(other, addr(MAPPED))));
        assert!(!g.handle_datagram(addr("198.51.100.2:3478"), addr(HOST), &success(id, addr(MAPPED))));
        assert!(!g.handle_datagram(addr("198.51.100.1:3479"), addr(HOST), &success(id, addr(MAPPED))));
        assert!(drain(&mut g).is_empty());
        // Still waiting for the real answer.
        assert_eq!(g.poll_timeout(), Some(now + Duration::from_millis(500)));
        // The dual-stack socket reports a v4-mapped source: the same server.
        let std::net::IpAddr::V4(v4) = addr(SERVER).ip() else { unreachable!() };
        let v6 = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), 3478);
        assert!(g.handle_datagram(v6, addr(HOST), &success(id, addr(MAPPED))));
    }

    #[test]
    fn retransmits_with_backoff_then_gives_up_and_refreshes() {
        let t0 = sim::start();
        let (mut g, id) = started(t0);
        let mut sent = vec![(Duration::ZERO, requests(&drain(&mut g)))];
        let mut now = t0;
        while let Some(at) = g.poll_timeout() {
            if at >= t0 + Duration::from_secs(300) {
                break;
            }
            now = at;
            g.handle_timeout(now);
            let reqs = requests(&drain(&mut g));
            if !reqs.is_empty() {
                sent.push((now - t0, reqs));
            }
        }
        let times: Vec<u64> = sent.iter().map(|(t, _)| t.as_millis() as u64).collect();
        assert_eq!(times, [0, 500, 1500, 3500, 7500]);
        for (_, reqs) in &sent {
            assert_eq!(reqs.len(), 1);
            assert_eq!(id_bytes(&reqs[0].1), id_bytes(&sent[0].1[0].1), "retransmissions keep the id");
        }
        assert_eq!(now - t0, Duration::from_millis(15_500), "gave up after the last interval");
        // Given up: a late answer still counts.
        assert!(g.handle_datagram(addr(SERVER), addr(HOST), &success(id, addr(MAPPED))));
        drain(&mut g);
        // The refresh asks for a lookup; the new round has a fresh id.
        let at = g.poll_timeout().unwrap();
        assert_eq!(at, t0 + Duration::from_secs(300));
        g.handle_timeout(at);
        assert_eq!(drain(&mut g), [StunOutput::Resolve]);
        assert_eq!(g.poll_timeout(), None, "nothing scheduled while the lookup runs");
        g.set_servers(&[addr(SERVER)], at);
        let reqs = requests(&drain(&mut g));
        assert_eq!(reqs.len(), 1);
        assert_ne!(id_bytes(&reqs[0].1), id_bytes(&sent[0].1[0].1));
        assert!(!g.handle_datagram(addr(SERVER), addr(HOST), &success(id, addr(MAPPED))), "old round");
        let new_id = g.transactions[0].id;
        assert!(g.handle_datagram(addr(SERVER), addr(HOST), &success(new_id, addr(MAPPED))));
        assert!(drain(&mut g).is_empty(), "same mapping: deduplicated");
        // The mapping changed: reported.
        let at = g.poll_timeout().unwrap();
        g.handle_timeout(at);
        drain(&mut g);
        g.set_servers(&[addr(SERVER)], at);
        drain(&mut g);
        let id3 = g.transactions[0].id;
        assert!(g.handle_datagram(addr(SERVER), addr(HOST), &success(id3, addr("203.0.113.9:40001"))));
        assert_eq!(drain(&mut g), [StunOutput::Candidate { addr: addr("203.0.113.9:40001"), base: addr(HOST) }]);
    }

    #[test]
    fn idle_wakeups_are_rare() {
        // No answer ever: per 5 minutes, 5 requests and one give-up.
        let t0 = sim::start();
        let (mut g, _) = started(t0);
        let mut wakes = 0;
        let end = t0 + Duration::from_secs(3600);
        while let Some(at) = g.poll_timeout() {
            if at > end {
                break;
            }
            wakes += 1;
            g.handle_timeout(at);
            if drain(&mut g).contains(&StunOutput::Resolve) {
                g.set_servers(&[addr(SERVER)], at);
                drain(&mut g);
            }
        }
        assert!(wakes <= 12 * 7, "{wakes} wake-ups in an hour");
    }

    #[test]
    fn mapped_host_address_and_foreign_families_are_ignored() {
        let now = sim::start();
        let hosts = vec![addr(HOST), addr("[2001:db8::2]:5000")];
        let mut g = Gatherer::new(GathererConfig::default(), hosts.clone());
        g.set_servers(&[addr(SERVER), addr("[2001:db8::53]:3478")], now);
        assert_eq!(requests(&drain(&mut g)).len(), 2);
        let id = g.transactions[0].id;
        assert!(g.handle_datagram(addr(SERVER), addr(HOST), &success(id, addr(HOST))));
        assert!(drain(&mut g).is_empty(), "no NAT: the host candidate already covers it");
        let id6 = g.transactions[1].id;
        let v6 = addr("[2001:db8:ffff::1]:6000");
        // Arrived at an address that is not a host candidate: a host of the
        // same family is the base.
        assert!(g.handle_datagram(addr("[2001:db8::53]:3478"), addr("[2001:db8::99]:5000"), &success(id6, v6)));
        assert_eq!(drain(&mut g), [StunOutput::Candidate { addr: v6, base: hosts[1] }]);

        // An IPv4-only socket does not ask IPv6 servers.
        let mut g = Gatherer::new(GathererConfig::default(), vec![addr(HOST)]);
        g.set_servers(&[addr("[2001:db8::53]:3478"), addr(SERVER), addr(SERVER)], now);
        let reqs = requests(&drain(&mut g));
        assert_eq!(reqs.iter().map(|r| r.0).collect::<Vec<_>>(), [addr(SERVER)]);
    }

    #[test]
    fn error_responses_end_the_transaction() {
        let now = sim::start();
        let (mut g, id) = started(now);
        drain(&mut g);
        let msg = StunMessageBuilder::new().binding().failure().error_code(400, "Bad Request").build(id);
        let mut buf = [0u8; 128];
        let n = msg.to_bytes(None, &mut buf, |_, _| [0; 20]).unwrap();
        assert!(g.handle_datagram(addr(SERVER), addr(HOST), &buf[..n]));
        assert!(drain(&mut g).is_empty());
        assert_eq!(g.poll_timeout(), Some(now + Duration::from_secs(300)));
    }

    #[test]
    fn garbage_never_panics_and_is_not_ours() {
        let now = sim::start();
        let (mut g, id) = started(now);
        drain(&mut g);
        let good = success(id, addr(MAPPED));
        let mut rng = 0x1234_5678_9abc_def0_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                good.clone()
            } else {
                let len = (next() % 120) as usize;
                (0..len).map(|_| next() as u8).collect()
            };
            if round % 2 == 0 {
                // Flip, cut or extend the valid answer.
                match next() % 3 {
                    0 => {
                        let i = (next() as usize) % bytes.len();
                        bytes[i] ^= 1 << (next() % 8);
                    }
                    1 => bytes.truncate((next() as usize) % bytes.len()),
                    _ => bytes.extend((0..(next() % 9)).map(|_| next() as u8)),
                }
                if next() % 2 == 0 {
                    // Keep the header consistent so the attributes are parsed.
                    let len = bytes.len().saturating_sub(20) as u16;
                    if bytes.len() >= 4 {
                        bytes[2..4].copy_from_slice(&len.to_be_bytes());
                    }
                }
            }
            let _ = g.handle_datagram(addr(SERVER), addr(HOST), &bytes);
            let _ = parse_reply(&bytes);
        }
        assert!(!g.handle_datagram(addr(SERVER), addr(HOST), &[]));
        assert!(!g.handle_datagram(addr(SERVER), addr(HOST), &[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!g.handle_datagram(addr(SERVER), addr(HOST), &vec![0u8; 4000]));
    }

    #[test]
    fn one_address_per_server_and_family_from_literals_and_lookups() {
        let servers = crate::core::urls::parse_stun_urls(
            "stun:192.0.2.1:1,stun:[2001:db8::1]:2,stun:192.0.2.1:1,stun:a.example:3,stun:b.example:4",
        );
        let looked_up = vec![
            Ok(vec![addr("192.0.2.1:1")]),
            Ok(vec![addr("[2001:db8::1]:2")]),
            Ok(vec![addr("198.51.100.7:3"), addr("198.51.100.8:3"), addr("[2001:db8::7]:3")]),
            Err("no such name".to_owned()),
        ];
        assert_eq!(
            pick_addresses(&servers, &looked_up).unwrap(),
            [addr("192.0.2.1:1"), addr("[2001:db8::1]:2"), addr("198.51.100.7:3"), addr("[2001:db8::7]:3")]
        );
        // Literals need no lookup at all.
        assert_eq!(pick_addresses(&servers[..2], &[]).unwrap(), [addr("192.0.2.1:1"), addr("[2001:db8::1]:2")]);
        let err = pick_addresses(&servers[3..], &looked_up[3..]).unwrap_err();
        assert!(err.contains("b.example:4: no such name"), "{err}");
    }
}
