//! A NAT lab built from Linux network namespaces, for tests that must show
//! sidecars connecting across NATs.
//!
//! # What it builds
//!
//! ```text
//!               ┌──────────────────── internet namespace ────────────────────┐
//!               │ br0: 203.0.113.1/24 (coturn, registry), .2 .3 .4 (probes)  │
//!               │ default via 198.51.100.2 dev dead0: the dead end (nobody)  │
//!               └────┬─────────────────────┬─────────────────────┬───────────┘
//!                    │   internet segment 203.0.113.0/24 (br0)   │
//!       203.0.113.11 │        203.0.113.12 │ wan    203.0.113.13 │ wan
//!          ┌─────────┴───────┐   ┌─────────┴───────┐   ┌─────────┴───────┐
//!          │ site 1 (Public) │   │ site 2 router   │   │ site 3 router   │  …
//!          │ host            │   │ lan 10.2.0.1/24 │   │ lan 10.3.0.1/24 │
//!          └─────────────────┘   └─────────┬───────┘   └─────────┬───────┘
//!                                ┌─────────┴───────┐   ┌─────────┴───────┐
//!                                │ host 10.2.0.2   │   │ host 10.3.0.2   │
//!                                └─────────────────┘   └─────────────────┘
//! ```
//!
//! - **internet** namespace: a bridge `br0` that is the internet segment
//!   203.0.113.0/24 (TEST-NET-3, a documentation range, so nothing here can
//!   be mistaken for a real host). The namespace itself owns 203.0.113.1
//!   ([`SERVER_IP`]: coturn, the registry) and 203.0.113.2–4
//!   ([`OUTSIDE_IPS`]: further "internet hosts" for probes). Its default
//!   route leads into a dead end: a veth whose other end is up but has no
//!   address, behind a gateway 198.51.100.2 (TEST-NET-2) with a permanent,
//!   made-up neighbour entry. The namespace routes, so packets to anything
//!   outside the lab (such as another site's private address, which ICE
//!   tries) are sent there and vanish silently, as on the real internet.
//!   coturn needs such a route: without one its relay gets `Network is
//!   unreachable` the moment ICE tries a peer's private host candidate, and
//!   it closes the whole allocation.
//! - **sites** ([`Lab::site`]), numbered from 1: site *n* has the internet
//!   address 203.0.113.(10+*n*) ([`Site::wan_ip`]). A [`NatKind::Public`]
//!   site is a single host namespace with that address on the segment. Any
//!   other kind is a router namespace (`wan` 203.0.113.(10+*n*)/24, `lan`
//!   10.*n*.0.1/24) in front of a host namespace (10.*n*.0.2/24,
//!   [`Site::host_ip`]).
//! - Veth pairs are created directly inside the namespaces (`ip -n A link
//!   add … peer … netns B`): no interface ever appears in the namespace the
//!   tests run in, and no namespace has a way out of the lab.
//!
//! # NAT kinds
//!
//! Every router drops unsolicited packets to its WAN address (`INPUT -i
//! wan`: ESTABLISHED,RELATED accepted, the rest dropped), as home routers
//! do. Otherwise a peer's ICE check that reaches the router before our own
//! first packet would create a conntrack entry that takes our mapping's
//! tuple, and SNAT would then pick another port: hole punching would fail
//! or work depending on timing.
//!
//! - `Cone`: `SNAT --to-source WAN`. Linux keeps the source port when it can
//!   and reuses a source's mapping for every destination (endpoint-
//!   independent mapping); conntrack lets in only replies from the exact
//!   address and port contacted ("port-restricted cone": Linux has no full
//!   cone).
//! - `Symmetric`: `MASQUERADE --random-fully`: a new random external port
//!   for each destination. Two symmetric NATs, or a symmetric and a
//!   port-restricted one, cannot hole-punch to each other: that takes TURN.
//! - `UdpBlocked { allow }`: like `Cone`, but every UDP packet towards the
//!   internet is dropped unless it goes to `allow` (typically
//!   [`SERVER_IP`], where coturn and the registry are). TCP passes.
//! - `OnlyTcpTo { allow }`: like `Cone`, but all UDP and every TCP
//!   connection except to `allow` (the registry's HTTP port) is dropped, as
//!   in networks that only let HTTPS out to known servers.
//!
//! # Path evidence: reading the counters
//!
//! Each site's edge (the router's `FORWARD`, or a public host's `OUTPUT` and
//! `INPUT`) jumps to two counting chains, `lab_out` for what leaves towards
//! the internet and `lab_in` for what came in. Each has one rule per class
//! of remote end, first match wins: `turn` (coturn's listening ports on
//! [`SERVER_IP`], UDP and TCP, TLS included), `relay` (UDP from or to
//! coturn's relay port range), `peer:IP` (UDP with another site's WAN
//! address: direct traffic between sites) and `other` (everything else,
//! e.g. the registry's HTTP and WebSocket). [`Site::counters`] reads them,
//! with the drop rules (`dropped_unsolicited`, `dropped_udp`), as a
//! [`Counters`]; [`Lab::direct_udp`] answers whether UDP went directly
//! between two sites. They are kernel counters, so they do not depend on
//! anything the program under test says. Adding a site or starting coturn
//! rebuilds the chains and zeroes them: set the lab up first, then measure.
//!
//! # Rebinding
//!
//! [`Site::rebind`] moves a router's SNAT to a new external port range and
//! flushes its conntrack table: every flow gets a new mapping with its
//! next packet, and packets to the old mapping are dropped as unsolicited,
//! as when a home router reboots or a carrier NAT times a mapping out.
//!
//! # Use
//!
//! ```no_run
//! use chatixia_e2e::Scratch;
//! use chatixia_e2e::netlab::{Coturn, Lab, NatKind};
//!
//! // No root or tools: None, and the test passes with a notice.
//! let Some(lab) = Lab::new("pair") else { return };
//! let (a, b) = (lab.site(NatKind::Cone), lab.site(NatKind::Cone));
//! let turn = lab.start_coturn(Coturn::default());
//! let dir = Scratch::new("pair");
//! let registry = lab.start_registry(dir.path());
//! let alpha = a.start_sidecar(&registry, dir.path(), "key-alpha", "alpha", &[]);
//! let bravo = b.start_sidecar(&registry, dir.path(), "key-bravo", "bravo", &[]);
//! alpha.agent().wait_connected(&["bravo"]);
//! // Kernel counters, not the sidecars' word: direct, or through coturn?
//! let direct = lab.direct_udp(&a, &b);
//! let to_turn = a.counters().out.turn;
//! eprintln!("direct {direct}, to coturn {to_turn} ({})", turn.stun_url());
//! ```
//!
//! # Safety and clean-up
//!
//! Every command the lab runs is `ip netns …`, `ip -n NS …` or `ip netns
//! exec NS …` with a namespace this lab created and still holds; anything
//! else is refused with a panic, so a test can never touch the machine's
//! real network. Namespace names are `chxlab<pid>n<counter>-<role>`, so
//! several labs (parallel tests) coexist. Dropping the [`Lab`] — also
//! while a test panics — kills every process in its namespaces and deletes
//! them. Labs of test processes that no longer exist (killed with SIGKILL)
//! are removed by the next [`Lab::new`].
//!
//! Needs root and `ip`, `iptables`, `conntrack`, `sysctl` and `turnserver`
//! (`scripts/netlab-deps.sh` installs them). Without them [`Lab::new`]
//! returns `None` and the test passes with a notice, unless
//! `CHATIXIA_REQUIRE_NETLAB=1` (CI), which turns that into a failure.

use crate::sidecar::Sidecar;
use crate::{DEFAULT_KEYS, Proc, Registry, Scratch, TIMEOUT, bin_command_via};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The internet segment (TEST-NET-3).
pub const INTERNET: &str = "203.0.113.0/24";
/// The internet namespace's own address: coturn and the registry.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// More addresses of the internet namespace: "other internet hosts".
pub const OUTSIDE_IPS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(203, 0, 113, 2), Ipv4Addr::new(203, 0, 113, 3), Ipv4Addr::new(203, 0, 113, 4)];
/// The dead end's gateway (TEST-NET-2): no such host exists.
const DEAD_END_GATEWAY: &str = "198.51.100.2";
/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// Prefix of every lab namespace.
const NAME_PREFIX: &str = "chxlab";
/// Sites get 203.0.113.(10 + n): at most this many per lab.
const MAX_SITES: u8 = 200;

/// How a site reaches the internet; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// A host directly on the internet segment, no router.
    Public,
    /// Endpoint-independent mapping with port preservation (plain SNAT).
    Cone,
    /// A new external port per destination (`MASQUERADE --random-fully`).
    Symmetric,
    /// Cone NAT that drops all UDP except towards `allow`; TCP passes.
    UdpBlocked { allow: Ipv4Addr },
    /// Cone NAT that lets out nothing but TCP to `allow`: a network that
    /// only reaches one HTTPS server (the registry's port).
    OnlyTcpTo { allow: SocketAddrV4 },
}

/// What a [`Sniffer`] saw so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sniffed {
    pub frames: u64,
    pub bytes: u64,
    /// Frames that contained each needle, in the order given.
    pub hits: Vec<u64>,
    /// Frames the kernel dropped because the sniffer fell behind.
    pub dropped: u64,
}

/// Reads every frame of the internet namespace (an `AF_PACKET` socket
/// there) on a thread of its own and counts the frames that contain each
/// needle: evidence of what crossed the lab's internet in the clear.
/// Frames switched by the bridge are seen on each port, so counts are
/// per sighting. Stops when dropped.
pub struct Sniffer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<Sniffed>>,
    fd: Arc<std::os::fd::OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sniffer {
    fn start(fd: std::os::fd::OwnedFd, needles: Vec<Vec<u8>>) -> Sniffer {
        let raw = fd.as_raw_fd();
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        let rcvbuf: libc::c_int = 8 << 20;
        // SAFETY: setsockopt(2) on our socket with values of the sizes given.
        unsafe {
            let size = |n: usize| n as libc::socklen_t;
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size(size_of_val(&timeout)),
            );
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const rcvbuf).cast(),
                size(size_of_val(&rcvbuf)),
            );
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Sniffed { hits: vec![0; needles.len()], ..Sniffed::default() }));
        let fd = Arc::new(fd);
        let thread = {
            let (stop, seen, fd) = (stop.clone(), seen.clone(), fd.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536 + 64];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: recv(2) into a buffer of the length given.
                    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                    let Ok(n) = usize::try_from(n) else { continue };
                    let frame = &buf[..n];
                    let mut seen = seen.lock().unwrap();
                    seen.frames += 1;
                    seen.bytes += n as u64;
                    for (i, needle) in needles.iter().enumerate() {
                        if frame.windows(needle.len()).any(|w| w == needle.as_slice()) {
                            seen.hits[i] += 1;
                        }
                    }
                }
            })
        };
        Sniffer { stop, seen, fd, thread: Some(thread) }
    }

    /// What it saw up to now.
    pub fn sniffed(&self) -> Sniffed {
        #[repr(C)]
        #[derive(Default)]
        struct Stats {
            packets: u32,
            drops: u32,
        }
        let mut stats = Stats::default();
        let mut len = size_of::<Stats>() as libc::socklen_t;
        // SAFETY: PACKET_STATISTICS fills a struct tpacket_stats (two u32).
        unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &raw mut len,
            );
        }
        // Reading the statistics resets them: keep the sum.
        let mut seen = self.seen.lock().unwrap();
        seen.dropped += u64::from(stats.drops);
        seen.clone()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A packet and byte count of one iptables rule (or several added up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pkt/{} B", self.packets, self.bytes)
    }
}

/// `turn 1 pkt/48 B, relay 0 pkt/0 B, peer 203.0.113.12 3 pkt/300 B, other …`
/// (peers only when non-zero).
impl std::fmt::Display for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "turn {}, relay {}", self.turn, self.relay)?;
        for (ip, count) in self.peers.iter().filter(|(_, c)| c.packets > 0) {
            write!(f, ", peer {ip} {count}")?;
        }
        write!(f, ", other {}", self.other)
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "out [{}]; in [{}]; dropped: unsolicited {}, udp {}, tcp {}",
            self.out, self.inbound, self.dropped_unsolicited, self.dropped_udp, self.dropped_tcp
        )
    }
}

/// One direction of a site's traffic, by class of remote end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// coturn's listening ports (STUN, TURN over UDP, TCP, TLS, DTLS).
    pub turn: Count,
    /// coturn's relay port range (UDP).
    pub relay: Count,
    /// UDP with another site's WAN address, by that address.
    pub peers: BTreeMap<Ipv4Addr, Count>,
    /// Everything else.
    pub other: Count,
}

impl Traffic {
    /// UDP with the site whose WAN address is `wan`.
    pub fn peer(&self, wan: Ipv4Addr) -> Count {
        self.peers.get(&wan).copied().unwrap_or_default()
    }
}

/// A site edge's counters (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Forwarded (or sent, for a public host) towards the internet.
    pub out: Traffic,
    /// Let in from the internet.
    pub inbound: Traffic,
    /// Unsolicited packets to the router's WAN or LAN side, dropped.
    pub dropped_unsolicited: Count,
    /// UDP dropped by a `UdpBlocked` or `OnlyTcpTo` router.
    pub dropped_udp: Count,
    /// TCP dropped by an `OnlyTcpTo` router.
    pub dropped_tcp: Count,
}

/// coturn's configuration for [`Lab::start_coturn`].
#[derive(Clone, Debug)]
pub struct Coturn {
    pub realm: String,
    /// Long-term credentials (`user=NAME:PASSWORD`).
    pub users: Vec<(String, String)>,
    /// TURN REST API secret (`use-auth-secret`, `static-auth-secret`).
    /// coturn cannot mix the two methods: with a secret, `users` are left
    /// out (and [`TurnServer::users`] is empty).
    pub secret: Option<String>,
    /// STUN/TURN port, UDP and TCP.
    pub port: u16,
    /// TURN over TLS (and DTLS) when set.
    pub tls: Option<TurnTls>,
    /// Relay ports, inclusive.
    pub relay_ports: (u16, u16),
}

impl Default for Coturn {
    fn default() -> Self {
        Coturn {
            realm: "lab.chatixia.test".into(),
            users: vec![("lab".into(), "lab-password".into())],
            secret: None,
            port: 3478,
            tls: None,
            relay_ports: (50000, 50999),
        }
    }
}

/// coturn's TLS listener.
#[derive(Clone, Debug)]
pub struct TurnTls {
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TurnTls {
    /// Port 5349 with the fixture certificate for [`SERVER_IP`], signed by
    /// the test CA (`tests/fixtures/tls`, `generate.sh` there).
    pub fn lab_fixture() -> TurnTls {
        let dir = crate::tls_proxy::fixture_dir();
        TurnTls { port: 5349, cert: dir.join("lab-server.pem"), key: dir.join("lab-server.key") }
    }
}

/// A running coturn: where to reach it and with which credentials.
#[derive(Clone, Debug)]
pub struct TurnServer {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub tls_port: Option<u16>,
    pub relay_ports: (u16, u16),
    pub realm: String,
    pub users: Vec<(String, String)>,
    pub secret: Option<String>,
}

impl TurnServer {
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, self.port)
    }
    /// `stun:203.0.113.1:3478`: coturn answers Binding requests too.
    pub fn stun_url(&self) -> String {
        format!("stun:{}:{}", self.ip, self.port)
    }
    /// `turn:IP:PORT?transport=udp` or `tcp`.
    pub fn turn_url(&self, transport: &str) -> String {
        format!("turn:{}:{}?transport={transport}", self.ip, self.port)
    }
    /// `turns:IP:PORT?transport=tcp` when TLS is on.
    pub fn turns_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("turns:{}:{p}?transport=tcp", self.ip))
    }
}

/// A lab; everything it made goes when it is dropped.
pub struct Lab {
    inner: Arc<Inner>,
}

/// One site: a host, behind a router unless public.
pub struct Site {
    inner: Arc<Inner>,
    pub index: u8,
    pub kind: NatKind,
    /// The host's own address (10.n.0.2, or the WAN address when public).
    pub host_ip: Ipv4Addr,
    /// The site's address on the internet segment: the router's WAN
    /// address, or the public host's.
    pub wan_ip: Ipv4Addr,
    host_ns: String,
    router_ns: Option<String>,
}

struct Inner {
    /// `chxlab<pid>n<counter>`.
    prefix: String,
    tag: String,
    tools: Tools,
    scratch: Scratch,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Namespaces created and not yet deleted, in creation order.
    namespaces: Vec<String>,
    torn_down: bool,
    sites: Vec<SiteEdge>,
    turn: Option<TurnServer>,
    /// Processes the lab itself owns (coturn).
    procs: Vec<Proc>,
}

/// What the counting chains of every site need to know about a site.
#[derive(Clone)]
struct SiteEdge {
    index: u8,
    wan_ip: Ipv4Addr,
    /// Where the edge's iptables rules live: the router, or the public host.
    edge_ns: String,
    /// Rebinding count.
    generation: u16,
}

/// Absolute paths of the programs the lab runs.
#[derive(Clone)]
struct Tools {
    ip: PathBuf,
    iptables_restore: PathBuf,
    iptables_save: PathBuf,
    conntrack: PathBuf,
    sysctl: PathBuf,
    turnserver: PathBuf,
}

impl Tools {
    /// The tools, or the names of those missing.
    fn find() -> Result<Tools, Vec<&'static str>> {
        let mut missing = Vec::new();
        let mut find = |name: &'static str| {
            find_program(name).unwrap_or_else(|| {
                missing.push(name);
                PathBuf::new()
            })
        };
        let tools = Tools {
            ip: find("ip"),
            iptables_restore: find("iptables-restore"),
            iptables_save: find("iptables-save"),
            conntrack: find("conntrack"),
            sysctl: find("sysctl"),
            turnserver: find("turnserver"),
        };
        if missing.is_empty() { Ok(tools) } else { Err(missing) }
    }
}

/// `name` on PATH or in the sbin directories (which a non-root PATH may
/// lack).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(extra).map(|dir| dir.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

impl Lab {
    /// Builds the internet namespace of a new lab. `None` (after a notice
    /// on stderr) when not root or a tool is missing, unless
    /// `CHATIXIA_REQUIRE_NETLAB=1`, which panics instead.
    pub fn new(tag: &str) -> Option<Lab> {
        let required = std::env::var("CHATIXIA_REQUIRE_NETLAB").is_ok_and(|v| v == "1");
        let unavailable = |why: String| -> Option<Lab> {
            assert!(!required, "CHATIXIA_REQUIRE_NETLAB=1 but the NAT lab cannot run: {why}");
            eprintln!(
                "NOTICE: NAT lab test {tag:?} skipped: {why} (the lab needs root and ip, iptables, \
                 conntrack, sysctl, turnserver, which scripts/netlab-deps.sh installs; \
                 CHATIXIA_REQUIRE_NETLAB=1 makes this a failure)"
            );
            None
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return unavailable("not running as root".into());
        }
        let tools = match Tools::find() {
            Ok(tools) => tools,
            Err(missing) => return unavailable(format!("missing {}", missing.join(", "))),
        };
        // Once per test process: parallel tests would race for the same
        // leftovers.
        static REMOVE_STALE: std::sync::Once = std::sync::Once::new();
        REMOVE_STALE.call_once(|| remove_stale_labs(&tools));

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("{NAME_PREFIX}{}n{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let inner = Inner {
            prefix,
            tag: tag.to_owned(),
            tools,
            scratch: Scratch::new(&format!("netlab-{tag}")),
            state: Mutex::new(State::default()),
        };
        // A root that may not create namespaces (a container without
        // CAP_SYS_ADMIN) is "cannot run" too.
        let internet = inner.ns_name("inet");
        if let Err(e) = inner.add_namespace(&internet) {
            return unavailable(format!("cannot create a network namespace: {e}"));
        }
        let lab = Lab { inner: Arc::new(inner) };
        lab.build_internet();
        Some(lab)
    }

    fn build_internet(&self) {
        let inner = &self.inner;
        let ns = inner.ns_name("inet");
        let mut batch = vec![
            "link set lo up".to_owned(),
            // Spanning tree off and no forwarding delay: ports forward at once.
            "link add br0 type bridge stp_state 0 forward_delay 0".into(),
            format!("addr add {SERVER_IP}/24 dev br0"),
        ];
        batch.extend(OUTSIDE_IPS.iter().map(|ip| format!("addr add {ip}/24 dev br0")));
        batch.extend([
            "link set br0 up".into(),
            // The dead end (see the module documentation).
            "link add dead0 type veth peer name dead1".into(),
            "addr add 198.51.100.1/30 dev dead0".into(),
            "link set dead0 up".into(),
            "link set dead1 up".into(),
            format!("neigh add {DEAD_END_GATEWAY} lladdr 02:00:00:5e:00:53 dev dead0 nud permanent"),
            format!("route add default via {DEAD_END_GATEWAY} dev dead0"),
        ]);
        inner.ip_batch(&ns, &batch);
        // Forwarding, so that what sites send beyond the lab goes into the
        // dead end too (without it the namespace would answer with ICMP
        // unreachables); no redirects between hosts of the one segment.
        inner.sysctl(
            &ns,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
    }

    /// Adds a site of `kind` (see the module documentation for addresses).
    pub fn site(&self, kind: NatKind) -> Site {
        let inner = &self.inner;
        let index = {
            let state = inner.state();
            u8::try_from(state.sites.len() + 1).ok().filter(|n| *n <= MAX_SITES).expect("too many sites")
        };
        let wan_ip = Ipv4Addr::new(203, 0, 113, 10 + index);
        let inet = inner.ns_name("inet");
        let host_ns = inner.ns_name(&format!("h{index}"));
        inner.add_namespace(&host_ns).unwrap_or_else(|e| panic!("{e}"));
        let no_ipv6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"];

        let (host_ip, router_ns, edge_ns) = if kind == NatKind::Public {
            inner.ip_batch(
                &inet,
                &[
                    format!("link add s{index} type veth peer name eth0 netns {host_ns}"),
                    format!("link set s{index} master br0"),
                    format!("link set s{index} up"),
                ],
            );
            inner.ip_batch(
                &host_ns,
                &[
                    "link set lo up".into(),
                    format!("addr add {wan_ip}/24 dev eth0"),
                    "link set eth0 up".into(),
                    format!("route add default via {SERVER_IP}"),
                ],
            );
            inner.sysctl(&host_ns, &no_ipv6);
            let rules = "*filter\n:lab_out - [0:0]\n:lab_in - [0:0]\n\
                         -A OUTPUT -o eth0 -j lab_out\n-A INPUT -i eth0 -j lab_in\nCOMMIT\n";
            inner.iptables_restore(&host_ns, rules, false);
            (wan_ip, None, host_ns.clone())
        } else {
            let router = inner.ns_name(&format!("r{index}"));
            inner.add_namespace(&router).unwrap_or_else(|e| panic!("{e}"));
            let host_ip = Ipv4Addr::new(10, index, 0, 2);
            inner.ip_batch(
                &inet,
                &[
                    format!("link add s{index} type veth peer name wan netns {router}"),
                    format!("link set s{index} master br0"),
                    format!("link set s{index} up"),
                ],
            );
            inner.ip_batch(
                &router,
                &[
                    "link set lo up".into(),
                    format!("addr add {wan_ip}/24 dev wan"),
                    "link set wan up".into(),
                    format!("link add lan type veth peer name eth0 netns {host_ns}"),
                    format!("addr add 10.{index}.0.1/24 dev lan"),
                    "link set lan up".into(),
                    format!("route add default via {SERVER_IP}"),
                ],
            );
            inner.ip_batch(
                &host_ns,
                &[
                    "link set lo up".into(),
                    format!("addr add {host_ip}/24 dev eth0"),
                    "link set eth0 up".into(),
                    format!("route add default via 10.{index}.0.1"),
                ],
            );
            inner.sysctl(&router, &["net.ipv4.ip_forward=1", no_ipv6[0], no_ipv6[1]]);
            inner.sysctl(&host_ns, &no_ipv6);
            inner.iptables_restore(&router, &router_rules(kind, wan_ip, 0), false);
            (host_ip, Some(router.clone()), router)
        };

        inner.state().sites.push(SiteEdge { index, wan_ip, edge_ns, generation: 0 });
        inner.rebuild_counting_chains();
        Site { inner: inner.clone(), index, kind, host_ip, wan_ip, host_ns, router_ns }
    }

    /// Starts coturn in the internet namespace on [`SERVER_IP`] and waits
    /// until its listeners are open (its log says so). It lives as long as
    /// the lab; one per lab.
    pub fn start_coturn(&self, config: Coturn) -> TurnServer {
        let inner = &self.inner;
        assert!(inner.state().turn.is_none(), "coturn already runs in this lab");
        let dir = inner.scratch.path();
        let (lo, hi) = config.relay_ports;
        let mut conf = vec![
            format!("listening-ip={SERVER_IP}"),
            format!("relay-ip={SERVER_IP}"),
            format!("listening-port={}", config.port),
            format!("min-port={lo}"),
            format!("max-port={hi}"),
            format!("realm={}", config.realm),
            // Relaying is allowed within the internet segment; coturn's
            // default refusals (private ranges, loopback) stay.
            "allowed-peer-ip=203.0.113.0-203.0.113.255".into(),
            "fingerprint".into(),
            "no-cli".into(),
            "no-multicast-peers".into(),
            // Foreground, logging to stdout; `verbose` for the "listener
            // opened" lines that say it is ready.
            "log-file=stdout".into(),
            "simple-log".into(),
            "verbose".into(),
            format!("pidfile={}", dir.join("turnserver.pid").display()),
            // Its own database, not the system's /var/lib/turn.
            format!("userdb={}", dir.join("turndb").display()),
        ];
        let users = if config.secret.is_some() { Vec::new() } else { config.users };
        if !users.is_empty() {
            conf.push("lt-cred-mech".into());
        }
        conf.extend(users.iter().map(|(user, password)| format!("user={user}:{password}")));
        if let Some(secret) = &config.secret {
            conf.extend(["use-auth-secret".into(), format!("static-auth-secret={secret}")]);
        }
        match &config.tls {
            Some(tls) => conf.extend([
                format!("tls-listening-port={}", tls.port),
                format!("cert={}", tls.cert.display()),
                format!("pkey={}", tls.key.display()),
            ]),
            None => conf.extend(["no-tls".into(), "no-dtls".into()]),
        }
        let conf_path = dir.join("turnserver.conf");
        std::fs::write(&conf_path, conf.join("\n") + "\n").expect("write turnserver.conf");

        let mut cmd = inner.exec(&inner.ns_name("inet"), &inner.tools.turnserver);
        cmd.arg("-c").arg(&conf_path);
        let proc = Proc::spawn_merged(cmd);
        let udp = format!("UDP listener opened on: {SERVER_IP}:{}", config.port);
        let tcp = format!("TCP listener opened on : {SERVER_IP}:{}", config.port);
        let tls = config.tls.as_ref().map(|t| format!("TLS/TCP listener opened on : {SERVER_IP}:{}", t.port));
        let mut needles = vec![udp.as_str(), tcp.as_str()];
        needles.extend(tls.as_deref());
        proc.wait_for_lines(&needles);

        let turn = TurnServer {
            ip: SERVER_IP,
            port: config.port,
            tls_port: config.tls.as_ref().map(|t| t.port),
            relay_ports: config.relay_ports,
            realm: config.realm,
            users,
            secret: config.secret,
        };
        {
            let mut state = inner.state();
            state.turn = Some(turn.clone());
            state.procs.push(proc);
        }
        inner.rebuild_counting_chains();
        turn
    }

    /// Everything coturn logged so far.
    pub fn coturn_log(&self) -> String {
        self.inner.state().procs.first().map(Proc::log).unwrap_or_default()
    }

    /// The lab's coturn, once started.
    pub fn turn(&self) -> Option<TurnServer> {
        self.inner.state().turn.clone()
    }

    /// Starts a registry in the internet namespace, listening on 0.0.0.0
    /// (so on [`SERVER_IP`]), with [`DEFAULT_KEYS`] unless `dir` already
    /// holds an `api_keys.json`. It announces the lab's STUN server when
    /// coturn runs. Its HTTP helpers name 127.0.0.1: call them inside
    /// [`Lab::in_internet`].
    pub fn start_registry(&self, dir: &Path) -> Registry {
        self.start_registry_with(dir, &[], &[])
    }

    /// Like [`Lab::start_registry`] with flags and environment (applied
    /// after the lab's defaults).
    pub fn start_registry_with(&self, dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Registry {
        let keys = dir.join("api_keys.json");
        if !keys.exists() {
            std::fs::write(&keys, DEFAULT_KEYS).expect("write api_keys.json");
        }
        let stun = self.turn().map(|t| t.stun_url()).unwrap_or_default();
        let mut all = vec![("STUN_URLS", stun.as_str())];
        all.extend_from_slice(env);
        let prefix = self.inner.exec_prefix(&self.inner.ns_name("inet"));
        Registry::start_via(&prefix, "0.0.0.0", dir, extra_args, &all)
    }

    /// A command running `program` in the internet namespace.
    pub fn internet_command(&self, program: impl AsRef<OsStr>) -> Command {
        self.inner.exec(&self.inner.ns_name("inet"), program)
    }

    /// A command running a workspace binary in the internet namespace
    /// (through `CHATIXIA_BIN_RUNNER` when set).
    pub fn internet_bin_command(&self, name: &str) -> Command {
        bin_command_via(&self.inner.exec_prefix(&self.inner.ns_name("inet")), name)
    }

    /// Runs `f` on a thread that has joined the internet namespace: sockets
    /// it opens live there (e.g. [`Registry::get`] of a lab registry).
    pub fn in_internet<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.inner.in_netns(&self.inner.ns_name("inet"), f)
    }

    /// A [`Probe`] in the internet namespace on `ip` ([`SERVER_IP`] or one
    /// of [`OUTSIDE_IPS`]) and `port`.
    pub fn probe(&self, ip: Ipv4Addr, port: u16) -> Probe {
        assert!(ip == SERVER_IP || OUTSIDE_IPS.contains(&ip), "{ip} is not an address of the internet namespace");
        let mut cmd = self.internet_bin_command("netprobe");
        cmd.arg(SocketAddrV4::new(ip, port).to_string());
        Probe::start(cmd, &format!("internet {ip}:{port}"))
    }

    /// A closure that moves the thread that runs it into the internet
    /// namespace, for threads that live longer than [`Lab::in_internet`]
    /// allows (a proxy's, say).
    pub fn internet_entry(&self) -> Box<dyn FnOnce() + Send> {
        let ns = self.inner.ns_name("inet");
        self.inner.check_ns(&ns);
        let path = Path::new(NETNS_DIR).join(&ns);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Box::new(move || {
            // SAFETY: a valid descriptor of a network namespace; setns
            // changes only the calling thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
        })
    }

    /// Starts watching every frame on the internet namespace's interfaces
    /// (the segment all sites, coturn and the registry share) for
    /// `needles`; see [`Sniffer`].
    pub fn sniff(&self, needles: &[&[u8]]) -> Sniffer {
        let fd = self.in_internet(|| {
            // SAFETY: plain socket(2); the descriptor is owned right away.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32) };
            assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd was just opened and nothing else owns it.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
        });
        Sniffer::start(fd, needles.iter().map(|n| n.to_vec()).collect())
    }

    /// UDP that went directly between two sites' WAN addresses, as counted
    /// by their edges (what `a` sent towards `b` plus what `b` sent towards
    /// `a`). Zero when they only ever met through the relay.
    pub fn direct_udp(&self, a: &Site, b: &Site) -> Count {
        let mut sum = a.counters().out.peer(b.wan_ip);
        sum.add(b.counters().out.peer(a.wan_ip));
        sum
    }

    /// What went into the dead end so far: packets for addresses outside
    /// the lab (the transmit counters of its veth).
    pub fn dead_end(&self) -> Count {
        let inner = &self.inner;
        let ns = inner.ns_name("inet");
        inner.check_ns(&ns);
        let mut cmd = Command::new(&inner.tools.ip);
        cmd.args(["-j", "-s", "-n", &ns, "link", "show", "dev", "dead0"]);
        let json: serde_json::Value =
            serde_json::from_str(&inner.run(cmd, "ip -s link show dead0", None)).expect("ip -j");
        let tx = &json[0]["stats64"]["tx"];
        Count { packets: tx["packets"].as_u64().expect("tx packets"), bytes: tx["bytes"].as_u64().expect("tx bytes") }
    }

    /// The names of the namespaces this lab holds.
    pub fn namespaces(&self) -> Vec<String> {
        self.inner.state().namespaces.clone()
    }

    /// The lab's scratch directory (coturn's configuration and database).
    pub fn dir(&self) -> &Path {
        self.inner.scratch.path()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.inner.tear_down();
    }
}

impl Site {
    /// A command running `program` on the site's host.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.inner.exec(&self.host_ns, program)
    }

    /// A command running a workspace binary on the site's host (through
    /// `CHATIXIA_BIN_RUNNER` when set).
    pub fn bin_command(&self, name: &str) -> Command {
        bin_command_via(&self.inner.exec_prefix(&self.host_ns), name)
    }

    /// A command running `program` on the site's router (e.g. `conntrack
    /// -L` while debugging). Panics for a public site, which has none.
    pub fn router_command(&self, program: impl AsRef<OsStr>) -> Command {
        let router = self.router_ns.as_ref().unwrap_or_else(|| panic!("site {} is public: no router", self.index));
        self.inner.exec(router, program)
    }

    /// Runs `f` on a thread that has joined the host's namespace.
    pub fn in_host<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.inner.in_netns(&self.host_ns, f)
    }

    /// A [`Probe`] on the host, bound to [`Site::host_ip`]:`port`.
    pub fn probe(&self, port: u16) -> Probe {
        let mut cmd = self.bin_command("netprobe");
        cmd.arg(SocketAddrV4::new(self.host_ip, port).to_string());
        Probe::start(cmd, &format!("site {} ({:?}) {}:{port}", self.index, self.kind, self.host_ip))
    }

    /// Starts a sidecar on the host (see [`Sidecar::start_via`]) pointed at
    /// `registry` (a lab registry) by its internet address, offering only
    /// the host's address as host candidate, asking the lab's coturn for
    /// its server-reflexive address when coturn runs. `env` comes last and
    /// may replace any of that.
    pub fn start_sidecar(
        &self,
        registry: &Registry,
        dir: &Path,
        api_key: &str,
        peer_id: &str,
        env: &[(&str, &str)],
    ) -> Sidecar {
        let base = format!("{SERVER_IP}:{}", registry.port);
        let (token_url, signaling_url) = (format!("http://{base}/api/token"), format!("ws://{base}/ws"));
        let host = self.host_ip.to_string();
        let stun = self.inner.state().turn.as_ref().map(TurnServer::stun_url).unwrap_or_default();
        let mut all = vec![
            ("TOKEN_URL", token_url.as_str()),
            ("SIGNALING_URL", signaling_url.as_str()),
            ("ICE_HOST_ADDRESSES", host.as_str()),
            ("ICE_ALLOW_LOOPBACK", "0"),
            ("STUN_URLS", stun.as_str()),
        ];
        all.extend_from_slice(env);
        Sidecar::start_via(&self.inner.exec_prefix(&self.host_ns), registry.port, dir, api_key, peer_id, &all)
    }

    /// Impairs everything the site's router forwards, both ways: each
    /// packet is lost with `loss_percent` probability, else delayed by a
    /// uniform `delay_ms` (so packets also overtake each other), by
    /// `impair` (src/bin/impair.rs) on an NFQUEUE, which works where the
    /// kernel has no `netem`. Lasts until the guard is dropped. Panics for
    /// a public site.
    pub fn impair(&self, loss_percent: f64, delay_ms: (u64, u64)) -> Impairment {
        let router = self.router_ns.clone().unwrap_or_else(|| panic!("site {} is public: no router", self.index));
        let queue = u16::from(self.index);
        let mut cmd = bin_command_via(&self.inner.exec_prefix(&router), "impair");
        cmd.args([queue.to_string(), loss_percent.to_string(), delay_ms.0.to_string(), delay_ms.1.to_string()]);
        let proc = Proc::spawn_merged(cmd);
        proc.wait_for_line("impair ready");
        // Bypass: with the program gone, packets pass instead of stopping.
        let rule = format!("FORWARD -j NFQUEUE --queue-num {queue} --queue-bypass");
        self.inner.iptables_restore(&router, &format!("*mangle\n-I {rule}\nCOMMIT\n"), true);
        Impairment { inner: self.inner.clone(), router, rule, _proc: proc }
    }

    /// The edge's counters (see the module documentation).
    pub fn counters(&self) -> Counters {
        let edge = self.router_ns.as_ref().unwrap_or(&self.host_ns);
        let mut cmd = self.inner.exec(edge, &self.inner.tools.iptables_save);
        cmd.args(["-c", "-t", "filter"]);
        parse_counters(&self.inner.run(cmd, "iptables-save -c", None))
    }

    /// Changes the router's mappings mid-conversation: moves SNAT to a new
    /// external port range (20000–20999 on the first call, the next
    /// thousand on each further call) and flushes the router's conntrack
    /// table, so every flow gets a new mapping with its next packet and
    /// answers to the old one are dropped as unsolicited. Returns the new
    /// range. Panics for a public site.
    pub fn rebind(&self) -> (u16, u16) {
        let router =
            self.router_ns.as_ref().unwrap_or_else(|| panic!("site {} is public: nothing to rebind", self.index));
        let generation = {
            let mut state = self.inner.state();
            let edge = state.sites.iter_mut().find(|s| s.index == self.index).expect("site");
            edge.generation += 1;
            edge.generation
        };
        let range = rebind_range(generation);
        // NAT rule first, then the flush: no packet in between can be
        // mapped by the old rule.
        let rules = format!("*nat\n-F POSTROUTING\n{}COMMIT\n", snat_rule(self.kind, self.wan_ip, generation));
        self.inner.iptables_restore(router, &rules, true);
        let mut cmd = self.inner.exec(router, &self.inner.tools.conntrack);
        cmd.arg("-F");
        self.inner.run(cmd, "conntrack -F", None);
        range
    }
}

/// The external port range after `generation` rebinds (0: none).
fn rebind_range(generation: u16) -> (u16, u16) {
    let lo = 20000 + ((generation - 1) % 40) * 1000;
    (lo, lo + 999)
}

/// The router's NAT rules. A port range needs a protocol with ports in
/// the rule, so after a rebind UDP and TCP get one rule each and the rest
/// (ICMP) the plain one.
fn snat_rule(kind: NatKind, wan_ip: Ipv4Addr, generation: u16) -> String {
    let target = |ports: Option<(u16, u16)>| match (kind, ports) {
        (NatKind::Symmetric, None) => "MASQUERADE --random-fully".to_owned(),
        (NatKind::Symmetric, Some((lo, hi))) => format!("MASQUERADE --to-ports {lo}-{hi} --random-fully"),
        (_, None) => format!("SNAT --to-source {wan_ip}"),
        (_, Some((lo, hi))) => format!("SNAT --to-source {wan_ip}:{lo}-{hi}"),
    };
    let mut rules = String::new();
    if generation > 0 {
        for proto in ["udp", "tcp"] {
            rules += &format!("-A POSTROUTING -o wan -p {proto} -j {}\n", target(Some(rebind_range(generation))));
        }
    }
    rules + &format!("-A POSTROUTING -o wan -j {}\n", target(None))
}

/// A router's whole rule set (iptables-restore input).
fn router_rules(kind: NatKind, wan_ip: Ipv4Addr, generation: u16) -> String {
    let mut rules = format!("*nat\n{}COMMIT\n", snat_rule(kind, wan_ip, generation));
    rules += "*filter\n:lab_out - [0:0]\n:lab_in - [0:0]\n";
    // Unsolicited packets from the internet die here (module documentation).
    rules += "-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n";
    rules += "-A INPUT -i wan -m comment --comment drop:unsolicited -j DROP\n";
    rules += "-A FORWARD -i wan -m conntrack ! --ctstate ESTABLISHED,RELATED -m comment --comment drop:unsolicited -j DROP\n";
    rules += "-A FORWARD -i wan -j lab_in\n";
    match kind {
        NatKind::UdpBlocked { allow } => {
            rules +=
                &format!("-A FORWARD -o wan -p udp ! -d {allow}/32 -m comment --comment drop:udp-blocked -j DROP\n");
        }
        NatKind::OnlyTcpTo { allow } => {
            rules += "-A FORWARD -o wan -p udp -m comment --comment drop:udp-blocked -j DROP\n";
            // Counted, then let through; every other TCP connection dies.
            let allowed = format!("-A FORWARD -o wan -p tcp -d {}/32 --dport {}", allow.ip(), allow.port());
            rules += &format!("{allowed} -j lab_out\n{allowed} -j ACCEPT\n");
            rules += "-A FORWARD -o wan -p tcp -m comment --comment drop:tcp-blocked -j DROP\n";
        }
        _ => {}
    }
    rules += "-A FORWARD -o wan -j lab_out\nCOMMIT\n";
    rules
}

/// The counting chains' rules for one edge (iptables-restore input).
fn counting_rules(own_wan: Ipv4Addr, sites: &[SiteEdge], turn: Option<&TurnServer>) -> String {
    let mut rules = String::from("*filter\n-F lab_out\n-F lab_in\n");
    for (chain, remote, port) in [("lab_out", "-d", "--dport"), ("lab_in", "-s", "--sport")] {
        let ports = if port == "--dport" { "--dports" } else { "--sports" };
        if let Some(t) = turn {
            let listening: Vec<String> =
                [Some(t.port), t.tls_port].into_iter().flatten().map(|p| p.to_string()).collect();
            for proto in ["udp", "tcp"] {
                rules += &format!(
                    "-A {chain} {remote} {}/32 -p {proto} -m multiport {ports} {} -m comment --comment turn -j RETURN\n",
                    t.ip,
                    listening.join(",")
                );
            }
            let (lo, hi) = t.relay_ports;
            rules += &format!(
                "-A {chain} {remote} {}/32 -p udp {port} {lo}:{hi} -m comment --comment relay -j RETURN\n",
                t.ip
            );
        }
        for peer in sites.iter().filter(|s| s.wan_ip != own_wan) {
            let ip = peer.wan_ip;
            rules += &format!("-A {chain} {remote} {ip}/32 -p udp -m comment --comment peer:{ip} -j RETURN\n");
        }
        rules += &format!("-A {chain} -m comment --comment other -j RETURN\n");
    }
    rules + "COMMIT\n"
}

/// Reads `iptables-save -c` output: every rule with a lab comment.
fn parse_counters(save: &str) -> Counters {
    let mut counters = Counters::default();
    for line in save.lines().filter(|l| l.starts_with('[')) {
        let Some((count, rule)) = line[1..].split_once("] ") else { continue };
        let Some((packets, bytes)) = count.split_once(':') else { continue };
        let count = Count { packets: packets.parse().unwrap_or(0), bytes: bytes.parse().unwrap_or(0) };
        let words: Vec<&str> = rule.split_whitespace().collect();
        let after = |flag: &str| words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).copied();
        let (Some(chain), Some(comment)) = (after("-A"), after("--comment")) else { continue };
        let comment = comment.trim_matches('"');
        let traffic = match chain {
            "lab_out" => &mut counters.out,
            "lab_in" => &mut counters.inbound,
            _ => {
                match comment {
                    "drop:unsolicited" => counters.dropped_unsolicited.add(count),
                    "drop:udp-blocked" => counters.dropped_udp.add(count),
                    "drop:tcp-blocked" => counters.dropped_tcp.add(count),
                    _ => {}
                }
                continue;
            }
        };
        match comment {
            "turn" => traffic.turn.add(count),
            "relay" => traffic.relay.add(count),
            "other" => traffic.other.add(count),
            _ => {
                if let Some(ip) = comment.strip_prefix("peer:").and_then(|ip| ip.parse().ok()) {
                    traffic.peers.entry(ip).or_default().add(count);
                }
            }
        }
    }
    counters
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ns_name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Panics unless `ns` is a namespace this lab created and still holds:
    /// the guard that keeps every lab command off the machine's network.
    fn check_ns(&self, ns: &str) {
        let state = self.state();
        assert!(
            !state.torn_down && state.namespaces.iter().any(|n| n == ns),
            "refusing to run in network namespace {ns:?}: not one lab {} ({}) created and holds",
            self.prefix,
            self.tag
        );
    }

    /// `ip netns exec NS` as a prefix for [`bin_command_via`] and friends.
    fn exec_prefix(&self, ns: &str) -> Vec<OsString> {
        self.check_ns(ns);
        vec![self.tools.ip.clone().into_os_string(), "netns".into(), "exec".into(), ns.into()]
    }

    /// `ip netns exec NS program`.
    fn exec(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let prefix = self.exec_prefix(ns);
        let mut cmd = Command::new(&prefix[0]);
        cmd.args(&prefix[1..]).arg(program);
        cmd
    }

    fn add_namespace(&self, ns: &str) -> Result<(), String> {
        assert!(ns.starts_with(&self.prefix), "{ns} is not a name of this lab");
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(["netns", "add", ns]);
        run_command(cmd, &format!("ip netns add {ns}"), None)?;
        self.state().namespaces.push(ns.to_owned());
        Ok(())
    }

    /// `ip -n NS -batch -` with one command per line.
    fn ip_batch(&self, ns: &str, lines: &[String]) {
        self.check_ns(ns);
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(["-n", ns, "-batch", "-"]);
        self.run(cmd, &format!("ip -n {ns} -batch"), Some(lines.join("\n") + "\n"));
    }

    fn sysctl(&self, ns: &str, settings: &[&str]) {
        let mut cmd = self.exec(ns, &self.tools.sysctl);
        cmd.arg("-qw").args(settings);
        self.run(cmd, "sysctl", None);
    }

    fn iptables_restore(&self, ns: &str, rules: &str, noflush: bool) {
        let mut cmd = self.exec(ns, &self.tools.iptables_restore);
        cmd.arg("-w");
        if noflush {
            cmd.arg("--noflush");
        }
        self.run(cmd, &format!("iptables-restore in {ns}:\n{rules}"), Some(rules.to_owned()));
    }

    /// Rewrites every edge's counting chains for the current sites and
    /// coturn (zeroing the counters).
    fn rebuild_counting_chains(&self) {
        let (sites, turn) = {
            let state = self.state();
            (state.sites.clone(), state.turn.clone())
        };
        for site in &sites {
            self.iptables_restore(&site.edge_ns, &counting_rules(site.wan_ip, &sites, turn.as_ref()), true);
        }
    }

    /// Runs a set-up command to completion; panics with its output when
    /// it fails.
    fn run(&self, cmd: Command, what: &str, input: Option<String>) -> String {
        run_command(cmd, what, input).unwrap_or_else(|e| panic!("lab {} ({}): {e}", self.prefix, self.tag))
    }

    fn in_netns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        self.check_ns(ns);
        let path = Path::new(NETNS_DIR).join(ns);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                // SAFETY: a valid descriptor of a network namespace; setns
                // changes only this thread's namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
                f()
            });
            thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Kills every process in the lab's namespaces and deletes them. Never
    /// panics (it runs while a test unwinds); problems go to stderr.
    fn tear_down(&self) {
        let (namespaces, procs) = {
            let mut state = self.state();
            state.torn_down = true;
            (std::mem::take(&mut state.namespaces), std::mem::take(&mut state.procs))
        };
        drop(procs);
        delete_namespaces(&self.tools, &namespaces);
        // Sites may outlive the lab (they share `Inner`): the scratch
        // directory goes now, not when the last of them is dropped.
        let _ = std::fs::remove_dir_all(self.scratch.path());
    }
}

/// Kills the processes in `namespaces`, then deletes them.
fn delete_namespaces(tools: &Tools, namespaces: &[String]) {
    for ns in namespaces {
        let mut cmd = Command::new(&tools.ip);
        cmd.args(["netns", "pids", ns]);
        if let Ok(pids) = run_command(cmd, "ip netns pids", None) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
                // SAFETY: kill has no memory-safety preconditions; the pid
                // is a process inside one of the lab's namespaces.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    for ns in namespaces.iter().rev() {
        let mut cmd = Command::new(&tools.ip);
        cmd.args(["netns", "delete", ns]);
        // Another test process may be removing the same leftovers.
        let gone = || !Path::new(NETNS_DIR).join(ns).exists();
        if let Err(e) = run_command(cmd, &format!("ip netns delete {ns}"), None)
            && !gone()
        {
            eprintln!("netlab: {e}");
        }
    }
}

/// Deletes the namespaces and scratch directories of labs whose test
/// process is gone (killed before its labs were dropped).
fn remove_stale_labs(tools: &Tools) {
    let gone = |pid: &str| pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    let names = |dir: &Path| -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()
    };
    // chxlab<pid>n<counter>-<role>
    let stale: Vec<String> = names(Path::new(NETNS_DIR))
        .into_iter()
        .filter(|name| {
            name.strip_prefix(NAME_PREFIX).and_then(|rest| rest.split_once('n')).is_some_and(|(pid, _)| gone(pid))
        })
        .collect();
    if !stale.is_empty() {
        eprintln!("netlab: removing namespaces of test processes that are gone: {}", stale.join(" "));
        delete_namespaces(tools, &stale);
    }
    // chatixia-e2e-netlab-<tag>-<pid>-<counter> (see Scratch::new)
    let temp = std::env::temp_dir();
    for name in names(&temp) {
        let Some(rest) = name.strip_prefix("chatixia-e2e-netlab-") else { continue };
        if rest.rsplit('-').nth(1).is_some_and(gone) {
            let _ = std::fs::remove_dir_all(temp.join(&name));
        }
    }
}

/// How long one set-up command may take. Creating and deleting network
/// namespaces is serialized in the kernel (deletion runs on a work queue),
/// so with a full test suite doing it in parallel on two cores a plain `ip`
/// batch has been seen to take over 20 s.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs a command to completion within [`COMMAND_TIMEOUT`], feeding it
/// `input`; its stdout, or an error with its stderr.
fn run_command(mut cmd: Command, what: &str, input: Option<String>) -> Result<String, String> {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
            let _ = stdin.write_all(input.as_bytes());
        }
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(Ok(out)) => Err(format!("{what}: {} ({})", out.status, String::from_utf8_lossy(&out.stderr).trim())),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            Err(format!("{what}: no exit within {COMMAND_TIMEOUT:?}"))
        }
    }
}

/// An impairment of a site ([`Site::impair`]); removed when dropped.
pub struct Impairment {
    inner: Arc<Inner>,
    router: String,
    rule: String,
    _proc: Proc,
}

impl Drop for Impairment {
    fn drop(&mut self) {
        let rules = format!("*mangle\n-D {}\nCOMMIT\n", self.rule);
        self.inner.iptables_restore(&self.router, &rules, true);
    }
}

/// `netprobe` (src/bin/netprobe.rs) running in a lab namespace, driven
/// line by line. Lines not yet asked for are kept for later calls.
pub struct Probe {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<String>,
    pending: RefCell<VecDeque<String>>,
    log: RefCell<Vec<String>>,
    what: String,
    /// The bound address.
    pub local: SocketAddrV4,
}

impl Probe {
    fn start(mut cmd: Command, what: &str) -> Probe {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("netprobe ({what}): {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut probe = Probe {
            child,
            stdin,
            rx,
            pending: RefCell::default(),
            log: RefCell::default(),
            what: what.to_owned(),
            local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        let ready = probe.wait_line("ready", TIMEOUT, |l| l.starts_with("ready "));
        probe.local = ready[6..].parse().expect("ready line");
        probe
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap_or_else(|e| panic!("netprobe ({}): {e}", self.what));
    }

    /// The first line (kept or new) that `pred` accepts, within `wait`.
    fn wait_line_within(&self, wait: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        {
            let mut pending = self.pending.borrow_mut();
            if let Some(i) = pending.iter().position(|l| pred(l)) {
                return pending.remove(i);
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.rx.recv_timeout(left).ok()?;
            self.log.borrow_mut().push(line.clone());
            if pred(&line) {
                return Some(line);
            }
            self.pending.borrow_mut().push_back(line);
        }
    }

    fn wait_line(&self, what: &str, wait: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait_line_within(wait, pred).unwrap_or_else(|| {
            panic!("netprobe ({}): no {what} within {wait:?}; its output: {:?}", self.what, self.log.borrow())
        })
    }

    /// Sends one datagram `text` (no spaces needed, no newline) to `to`.
    pub fn send(&mut self, to: SocketAddrV4, text: &str) {
        self.command(&format!("send {to} {text}"));
        self.wait_line("send confirmation", TIMEOUT, |l| l == format!("sent {to}"));
    }

    /// The address `server` (a STUN server) sees this probe's socket as.
    /// Asks up to five times, two seconds apart.
    pub fn stun(&mut self, server: SocketAddrV4) -> SocketAddrV4 {
        let answer = format!(" {server}");
        for _ in 0..5 {
            self.command(&format!("stun {server}"));
            let line =
                self.wait_line_within(Duration::from_secs(2), |l| l.starts_with("mapped ") && l.ends_with(&answer));
            if let Some(line) = line {
                return line["mapped ".len()..line.len() - answer.len()].parse().expect("mapped address");
            }
        }
        panic!("netprobe ({}): no STUN answer from {server}; its output: {:?}", self.what, self.log.borrow())
    }

    /// Waits for the datagram `text` and returns its sender.
    pub fn recv_from(&self, text: &str) -> SocketAddrV4 {
        self.recv_from_within(text, TIMEOUT).unwrap_or_else(|| {
            panic!("netprobe ({}): no datagram {text:?}; output: {:?}", self.what, self.log.borrow())
        })
    }

    /// Like [`Probe::recv_from`], `None` when it does not come within `wait`.
    pub fn recv_from_within(&self, text: &str, wait: Duration) -> Option<SocketAddrV4> {
        let suffix = format!(" {text}");
        let line = self.wait_line_within(wait, |l| l.starts_with("recv ") && l.ends_with(&suffix))?;
        Some(line["recv ".len()..line.len() - suffix.len()].parse().expect("sender address"))
    }

    /// Whether the datagram `text` has arrived so far (does not wait).
    pub fn got(&self, text: &str) -> bool {
        while let Ok(line) = self.rx.try_recv() {
            self.log.borrow_mut().push(line.clone());
            self.pending.borrow_mut().push_back(line);
        }
        let suffix = format!(" {text}");
        self.log.borrow().iter().any(|l| l.starts_with("recv ") && l.ends_with(&suffix))
    }

    /// Opens a TCP connection to `to`: the local address, or the error.
    pub fn tcp(&mut self, to: SocketAddrV4) -> Result<SocketAddrV4, String> {
        self.command(&format!("tcp {to}"));
        let (ok, fail) = (format!("tcp-ok {to} "), format!("tcp-fail {to} "));
        let line = self.wait_line("TCP result", TIMEOUT, |l| l.starts_with(&ok) || l.starts_with(&fail));
        match line.strip_prefix(&ok) {
            Some(local) => Ok(local.parse().expect("local address")),
            None => Err(line[fail.len()..].to_owned()),
        }
    }

    /// Waits for an accepted TCP connection and returns its peer.
    pub fn accepted(&self) -> SocketAddrV4 {
        let line = self.wait_line("accepted connection", TIMEOUT, |l| l.starts_with("accepted "));
        line["accepted ".len()..].parse().expect("peer address")
    }

    /// Everything the probe printed so far.
    pub fn log(&self) -> Vec<String> {
        self.log.borrow().clone()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// STUN Binding messages (RFC 5389), for the probe and for tests that talk
/// to coturn themselves (e.g. over TLS).
pub mod stun {
    use std::net::SocketAddrV4;

    pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

    /// A Binding request without attributes, with transaction id `id`.
    pub fn binding_request(id: [u8; 12]) -> Vec<u8> {
        let mut msg = vec![0x00, 0x01, 0x00, 0x00];
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&id);
        msg
    }

    /// The length of the STUN message at the start of `bytes` (header
    /// included), once its header is there.
    pub fn message_len(bytes: &[u8]) -> Option<usize> {
        (bytes.len() >= 20).then(|| 20 + usize::from(u16::from_be_bytes([bytes[2], bytes[3]])))
    }

    /// The XOR-MAPPED-ADDRESS (else MAPPED-ADDRESS) of a Binding success
    /// response with an IPv4 address; `None` for anything else.
    pub fn mapped_address(msg: &[u8]) -> Option<SocketAddrV4> {
        if msg.len() < 20 || msg[..2] != [0x01, 0x01] || msg[4..8] != MAGIC_COOKIE {
            return None;
        }
        let (mut plain, mut xored) = (None, None);
        let mut attrs = &msg[20..];
        while attrs.len() >= 4 {
            let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
            let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
            let value = attrs.get(4..4 + len)?;
            if len == 8 && value[1] == 0x01 {
                let port = u16::from_be_bytes([value[2], value[3]]);
                let ip = [value[4], value[5], value[6], value[7]];
                match kind {
                    0x0001 => plain = Some(SocketAddrV4::new(ip.into(), port)),
                    0x0020 => {
                        let ip: [u8; 4] = std::array::from_fn(|i| ip[i] ^ MAGIC_COOKIE[i]);
                        xored = Some(SocketAddrV4::new(ip.into(), port ^ 0x2112));
                    }
                    _ => {}
                }
            }
            // Attributes are padded to four bytes.
            attrs = attrs.get(4 + len.div_ceil(4) * 4..).unwrap_or_default();
        }
        xored.or(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iptables_save_counters() {
        let save = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [5:300]\n:lab_out - [0:0]\n\
            [3:180] -A INPUT -i wan -m comment --comment drop:unsolicited -j DROP\n\
            [1:60] -A FORWARD -i wan -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment drop:unsolicited -j DROP\n\
            [2:120] -A FORWARD -o wan -p udp ! -d 203.0.113.1/32 -m comment --comment drop:udp-blocked -j DROP\n\
            [4:400] -A lab_out -d 203.0.113.1/32 -p udp -m multiport --dports 3478,5349 -m comment --comment turn -j RETURN\n\
            [1:100] -A lab_out -d 203.0.113.1/32 -p tcp -m multiport --dports 3478,5349 -m comment --comment turn -j RETURN\n\
            [7:700] -A lab_out -d 203.0.113.12/32 -p udp -m comment --comment \"peer:203.0.113.12\" -j RETURN\n\
            [9:900] -A lab_in -m comment --comment other -j RETURN\nCOMMIT\n";
        let c = parse_counters(save);
        assert_eq!(c.dropped_unsolicited, Count { packets: 4, bytes: 240 });
        assert_eq!(c.dropped_udp, Count { packets: 2, bytes: 120 });
        assert_eq!(c.out.turn, Count { packets: 5, bytes: 500 });
        assert_eq!(c.out.peer(Ipv4Addr::new(203, 0, 113, 12)), Count { packets: 7, bytes: 700 });
        assert_eq!(c.inbound.other, Count { packets: 9, bytes: 900 });
        assert_eq!(c.out.relay, Count::default());
    }

    #[test]
    fn rebinding_moves_to_a_new_range_each_time() {
        assert_eq!(rebind_range(1), (20000, 20999));
        assert_eq!(rebind_range(2), (21000, 21999));
        assert_ne!(rebind_range(1), rebind_range(2));
    }

    #[test]
    fn reads_a_binding_response() {
        let mut msg = vec![0x01, 0x01, 0x00, 0x0c];
        msg.extend_from_slice(&stun::MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
        msg.extend_from_slice(&(40000u16 ^ 0x2112).to_be_bytes());
        msg.extend(Ipv4Addr::new(203, 0, 113, 12).octets().iter().zip(stun::MAGIC_COOKIE).map(|(a, c)| a ^ c));
        assert_eq!(stun::mapped_address(&msg), Some(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 12), 40000)));
        assert_eq!(stun::message_len(&msg), Some(msg.len()));
    }
}
