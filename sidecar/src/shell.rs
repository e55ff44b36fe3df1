//! The smol shell around the mesh core: one UDP socket, the IPC socket, the
//! signaling client and signals, all on one thread (plus async-io's
//! reactor thread, SPEC §6.3).
//!
//! The node loop follows notes §2: sleep until the socket is readable, the
//! earliest deadline passes, or a command or signaling frame arrives; after
//! any wake, drain the socket without blocking, service every due deadline
//! and take a bounded batch of commands, so no source starves another.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use chatixia_protocol::ipc::Command;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt};
use smol::{Async, LocalExecutor, Timer};

use crate::ipc::{self, AgentHub, IpcConfig, IpcSocket};
use crate::mesh::{AgentId, Mesh, MeshConfig, MeshOutput, RegistryState};
use crate::peer::DtlsIdentity;
use crate::signaling::{self, Outgoing, SignalingConfig, SignalingEvent};
use crate::stun::{self, Gatherer, GathererConfig, StunOutput, StunServer};
use chatixia_settings::systemd::{self, Notifier};

/// notes pitfall 3: the default 208 KB drops datagrams under load.
const SOCKET_BUFFER: usize = 1 << 20;
/// Datagrams read per wake before other work gets its turn.
const DATAGRAM_BATCH: usize = 256;
/// Commands and signaling frames taken per wake.
const INPUT_BATCH: usize = 64;
const COMMAND_QUEUE: usize = 256;
const SIGNALING_QUEUE: usize = 1024;
/// SIGTERM to exit within 2 s (SPEC §6.3): goodbyes get this long.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(800);

pub struct NodeConfig {
    pub ipc_socket: PathBuf,
    /// Addresses to offer as host candidates, with the socket's port.
    pub host_addresses: Vec<IpAddr>,
    /// Asked for server-reflexive candidates; empty disables STUN.
    pub stun_servers: Vec<StunServer>,
    pub mesh: MeshConfig,
    pub ipc: IpcConfig,
    pub signaling: SignalingConfig,
}

/// Runs the sidecar until SIGTERM or SIGINT.
pub fn run(config: NodeConfig) -> Result<(), String> {
    let mut notifier = Notifier::from_env();
    // Bound before the registry is contacted, so an agent can attach at once.
    let ipc_socket = IpcSocket::bind(&config.ipc_socket)?;
    let listener = Async::new(ipc_socket.listener.try_clone().map_err(|e| e.to_string())?)
        .map_err(|e| format!("IPC socket: {e}"))?;
    log::info!("IPC socket listening at {}", ipc_socket.path().display());

    // The first certificate costs ~40 ms (aws-lc seeds its entropy); made
    // here, on a thread of its own, it overlaps the token exchange instead
    // of delaying the first link.
    let identity = std::thread::Builder::new()
        .name("dtls-cert".into())
        .spawn(|| {
            let started = Instant::now();
            let identity = DtlsIdentity::generate();
            log::debug!("DTLS certificate made in {:?}", started.elapsed());
            identity
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;

    let udp = bind_udp()?;
    let port = udp.get_ref().local_addr().map_err(|e| e.to_string())?.port();
    let dual_stack = udp.get_ref().local_addr().is_ok_and(|a| a.is_ipv6());
    let candidates: Vec<SocketAddr> = config
        .host_addresses
        .iter()
        .filter(|ip| dual_stack || ip.is_ipv4())
        .map(|ip| SocketAddr::new(*ip, port))
        .collect();
    if candidates.is_empty() {
        log::warn!("no usable local address for host candidates; links depend on peer-reflexive ones");
    }
    log::info!(
        "UDP port {port}; host candidates: {}",
        candidates.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
    );

    let signals = async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let now = Instant::now();
    let mut mesh = Mesh::new(MeshConfig { seed: fastrand::u64(..), ..config.mesh }, now);
    if !config.stun_servers.is_empty() && candidates.is_empty() {
        log::info!("no host candidate to be the base of a server-reflexive one; not asking STUN servers");
    }
    let stun = (!config.stun_servers.is_empty() && !candidates.is_empty()).then(|| Stun {
        gatherer: Gatherer::new(GathererConfig::default(), candidates.clone()),
        servers: config.stun_servers,
        lookup: None,
        lookup_failed: false,
    });
    mesh.set_local_candidates(candidates);
    let hub = Rc::new(RefCell::new(AgentHub::new(config.ipc)));
    let (cmd_tx, cmd_rx) = async_channel::bounded::<(AgentId, Command)>(COMMAND_QUEUE);
    let (sig_tx, sig_rx) = async_channel::bounded::<SignalingEvent>(SIGNALING_QUEUE);
    let (out_tx, out_rx) = async_channel::bounded::<Outgoing>(SIGNALING_QUEUE);
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);

    notifier.ready();
    notifier.status(status_line(RegistryState::Down, 0));

    let ex = Rc::new(LocalExecutor::new());
    smol::block_on(ex.run(async {
        ex.spawn(ipc::serve(ex.clone(), listener, hub.clone(), cmd_tx)).detach();
        let signaling = ex.spawn(signaling::run(config.signaling, sig_tx, out_rx));
        ex.spawn(async move {
            use futures_lite::StreamExt;
            let mut signals = signals;
            if let Some(Ok(sig)) = signals.next().await {
                log::info!("received {sig:?}; shutting down");
            }
            let _ = stop_tx.send(()).await;
        })
        .detach();

        let mut node = Node {
            mesh,
            identity: Some(identity),
            stun,
            udp,
            udp_port: port,
            udp_v6: dual_stack,
            hub,
            out_tx,
            notifier,
            buf: vec![0u8; 65_536],
        };
        // Links do not wait for this: the first round runs alongside them.
        node.start_stun_round(Instant::now());
        node.run(&cmd_rx, &sig_rx, &stop_rx).await;
        node.shutdown(&sig_rx).await;
        // The WebSocket close was requested; give it a moment, not forever.
        futures_lite::future::or(signaling, async {
            Timer::after(Duration::from_millis(300)).await;
        })
        .await;
    }));
    drop(ipc_socket);
    log::info!("stopped");
    Ok(())
}

/// Deadlines further away than this are far-off keepalives and refreshes,
/// not retransmissions or handshakes.
const COALESCE_AFTER: Duration = Duration::from_secs(2);
/// Far-off deadlines are rounded up to a multiple of this, so the keepalives
/// of many links (each pair of each link has its own) share one wake-up.
const COALESCE_GRID: Duration = Duration::from_millis(250);

/// When to wake for `deadline`: exactly then if it is near, else at the
/// next `COALESCE_GRID` boundary counted from `epoch`. Late by less than the
/// grid, which no far-off deadline minds.
fn coalesce(deadline: Instant, now: Instant, epoch: Instant) -> Instant {
    if deadline <= now + COALESCE_AFTER {
        return deadline;
    }
    let grid = COALESCE_GRID.as_nanos();
    let slots = deadline.saturating_duration_since(epoch).as_nanos().div_ceil(grid);
    let rounded = Duration::from_nanos(u64::try_from(slots * grid).unwrap_or(u64::MAX));
    epoch.checked_add(rounded).unwrap_or(deadline)
}

fn status_line(registry: RegistryState, peers: usize) -> String {
    format!("registry {}, {peers} peers", registry.as_str())
}

/// One socket for all peers. Dual-stack when the host has IPv6; the real
/// destination address of each datagram comes from `IP(V6)_PKTINFO`, because
/// ICE matches it against our candidates.
fn bind_udp() -> Result<Async<UdpSocket>, String> {
    let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
        .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .map_err(|e| format!("cannot bind a UDP socket: {e}"))?;
    for (name, result) in [
        ("SO_RCVBUF", setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER)),
        ("SO_SNDBUF", setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER)),
    ] {
        if let Err(e) = result {
            log::warn!("cannot set {name}: {e}");
        }
    }
    let v6 = sock.local_addr().is_ok_and(|a| a.is_ipv6());
    if v6 {
        setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true).map_err(|e| format!("IPV6_RECVPKTINFO: {e}"))?;
    }
    // Also on the dual-stack socket, where IPv4 datagrams may report it.
    let v4 = setsockopt(&sock, sockopt::Ipv4PacketInfo, &true);
    if !v6 {
        v4.map_err(|e| format!("IP_PKTINFO: {e}"))?;
    }
    Async::new(sock).map_err(|e| format!("UDP socket: {e}"))
}

/// An IPv4 address as the dual-stack socket sees it, and back.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn for_socket(addr: SocketAddr, v6_socket: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v6_socket => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        other => other,
    }
}

struct Datagram {
    len: usize,
    source: SocketAddr,
    destination: Option<IpAddr>,
}

/// One datagram without blocking; `None` when there is none.
fn recv_datagram(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo, nix::libc::in_pktinfo);
    let msg = match recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
        Ok(msg) => msg,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut destination = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv6PacketInfo(pi) => {
                    destination = Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr)).to_canonical())
                }
                ControlMessageOwned::Ipv4PacketInfo(pi) => {
                    destination = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr))))
                }
                _ => {}
            }
        }
    }
    let source = msg.address.as_ref().and_then(|a| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::from((v4.ip(), v4.port())))
        } else {
            a.as_sockaddr_in6().map(|v6| SocketAddr::from((v6.ip(), v6.port())))
        }
    });
    let len = msg.bytes;
    Ok(source.map(|s| Datagram { len, source: canonical(s), destination }))
}

/// The result of looking the STUN servers up on a short-lived thread.
type Lookup = Pin<Box<dyn Future<Output = Result<Result<Vec<SocketAddr>, String>, String>>>>;

struct Stun {
    gatherer: Gatherer,
    servers: Vec<StunServer>,
    /// A name lookup in progress.
    lookup: Option<Lookup>,
    /// The last lookup failed (said once at info, then at debug).
    lookup_failed: bool,
}

struct Node {
    mesh: Mesh,
    /// The shared DTLS certificate being made; taken before the first frame
    /// from the registry, which is what can create links.
    identity: Option<std::thread::JoinHandle<Option<DtlsIdentity>>>,
    stun: Option<Stun>,
    udp: Async<UdpSocket>,
    /// Facts of `udp`, asked once instead of per datagram.
    udp_port: u16,
    udp_v6: bool,
    hub: Rc<RefCell<AgentHub>>,
    out_tx: async_channel::Sender<Outgoing>,
    notifier: Notifier,
    buf: Vec<u8>,
}

enum Wake {
    Socket,
    Timer,
    Command((AgentId, Command)),
    Signaling(SignalingEvent),
    Looked(Result<Result<Vec<SocketAddr>, String>, String>),
    Stop,
}

impl Node {
    async fn run(
        &mut self,
        commands: &async_channel::Receiver<(AgentId, Command)>,
        signaling: &async_channel::Receiver<SignalingEvent>,
        stop: &async_channel::Receiver<()>,
    ) {
        use futures_lite::future::or;
        let watchdog = systemd::watchdog_interval();
        let mut next_watchdog = watchdog.map(|w| Instant::now() + w);
        let mut timer = Timer::never();
        // Re-arming an async-io timer wakes the reactor (an eventfd write,
        // a spurious epoll return, a timerfd update), so it is re-armed only
        // when the deadline moves or after it fired.
        let mut armed: Option<Instant> = None;
        let epoch = Instant::now();
        let mut last_status = (RegistryState::Down, 0);
        loop {
            let mut deadline = self.mesh.poll_timeout();
            if let Some(w) = next_watchdog {
                deadline = deadline.min(w);
            }
            if let Some(t) = self.stun.as_ref().and_then(|s| s.gatherer.poll_timeout()) {
                deadline = deadline.min(t);
            }
            let wake_at = coalesce(deadline, Instant::now(), epoch);
            if armed != Some(wake_at) {
                timer.set_at(wake_at);
                armed = Some(wake_at);
            }
            let udp = &self.udp;
            let lookup = self.stun.as_mut().and_then(|s| s.lookup.as_mut());
            let wake = or(
                async {
                    let _ = udp.readable().await;
                    Wake::Socket
                },
                or(
                    async {
                        (&mut timer).await;
                        Wake::Timer
                    },
                    // Signaling before commands: a command must see the
                    // registry state that was already reported.
                    or(
                        async { signaling.recv().await.map_or(Wake::Stop, Wake::Signaling) },
                        or(
                            async { commands.recv().await.map_or(Wake::Stop, Wake::Command) },
                            or(
                                async {
                                    let _ = stop.recv().await;
                                    Wake::Stop
                                },
                                async {
                                    match lookup {
                                        Some(f) => Wake::Looked(f.await),
                                        None => futures_lite::future::pending().await,
                                    }
                                },
                            ),
                        ),
                    ),
                ),
            )
            .await;
            let now = Instant::now();
            match wake {
                Wake::Stop => return,
                Wake::Command((agent, cmd)) => self.mesh.handle_command(agent, cmd, now),
                Wake::Signaling(ev) => self.on_signaling(ev, now),
                Wake::Looked(result) => self.on_stun_lookup(result, now),
                Wake::Timer => armed = None,
                Wake::Socket => {}
            }
            self.flush();
            self.service(commands, signaling);
            if let (Some(at), Some(every)) = (next_watchdog, watchdog)
                && at <= Instant::now()
            {
                self.notifier.watchdog();
                next_watchdog = Some(Instant::now() + every);
            }
            let status = (self.mesh.registry_state(), self.mesh.open_peer_count());
            if status != last_status {
                last_status = status;
                self.notifier.status(status_line(status.0, status.1));
            }
        }
    }

    /// Whatever woke us, everything else that is ready gets its turn too.
    fn service(
        &mut self,
        commands: &async_channel::Receiver<(AgentId, Command)>,
        signaling: &async_channel::Receiver<SignalingEvent>,
    ) {
        self.drain_socket();
        let now = Instant::now();
        if self.mesh.poll_timeout() <= now {
            self.mesh.handle_timeout(now);
            self.flush();
        }
        if let Some(stun) = &mut self.stun
            && stun.gatherer.poll_timeout().is_some_and(|t| t <= now)
        {
            stun.gatherer.handle_timeout(now);
            self.flush_stun(now);
        }
        for _ in 0..INPUT_BATCH {
            let Ok(ev) = signaling.try_recv() else { break };
            self.on_signaling(ev, Instant::now());
            self.flush();
        }
        for _ in 0..INPUT_BATCH {
            let Ok((agent, cmd)) = commands.try_recv() else { break };
            self.mesh.handle_command(agent, cmd, Instant::now());
        }
        self.flush();
    }

    fn drain_socket(&mut self) {
        for _ in 0..DATAGRAM_BATCH {
            match recv_datagram(self.udp.get_ref(), &mut self.buf) {
                Ok(Some(d)) => {
                    let Some(ip) = d.destination else {
                        log::debug!("datagram from {} without its destination address; dropped", d.source);
                        continue;
                    };
                    let now = Instant::now();
                    let destination = SocketAddr::new(ip, self.udp_port);
                    let bytes = &self.buf[..d.len];
                    if let Some(stun) = &mut self.stun
                        && stun.gatherer.handle_datagram(d.source, destination, bytes)
                    {
                        self.flush_stun(now);
                        continue;
                    }
                    self.mesh.handle_datagram(now, d.source, destination, bytes);
                }
                Ok(None) => break,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; they concern
                    // one peer, not the socket.
                    log::debug!("UDP receive: {e}");
                }
            }
        }
        // The mesh polls the links fed above once, for the whole batch.
        self.flush();
    }

    /// Looks the STUN servers up and starts a round of requests. Literal
    /// addresses need no lookup; names are resolved on a short-lived thread
    /// (getaddrinfo blocks; see [`crate::http::off_loop`] for why not smol's
    /// pool), and the round starts when the answer is in.
    fn start_stun_round(&mut self, now: Instant) {
        let Some(stun) = &mut self.stun else { return };
        if stun.lookup.is_some() {
            return;
        }
        if stun.servers.iter().all(|s| s.literal().is_some()) {
            let result = stun::resolve(&stun.servers);
            self.on_stun_lookup(Ok(result), now);
        } else {
            let servers = stun.servers.clone();
            stun.lookup = Some(Box::pin(crate::http::off_loop(move || stun::resolve(&servers))));
        }
    }

    fn on_stun_lookup(&mut self, result: Result<Result<Vec<SocketAddr>, String>, String>, now: Instant) {
        let Some(stun) = &mut self.stun else { return };
        stun.lookup = None;
        let addrs = match result.and_then(|r| r) {
            Ok(addrs) => {
                if stun.lookup_failed {
                    log::info!("STUN servers resolve again");
                }
                stun.lookup_failed = false;
                addrs
            }
            Err(e) => {
                // Offline or no DNS: host candidates still work; try again at
                // the next round without filling the log.
                if stun.lookup_failed {
                    log::debug!("cannot look up the STUN servers: {e}");
                } else {
                    log::info!("cannot look up the STUN servers (retrying every few minutes): {e}");
                }
                stun.lookup_failed = true;
                Vec::new()
            }
        };
        log::debug!("asking STUN servers at {addrs:?}");
        stun.gatherer.set_servers(&addrs, now);
        self.flush_stun(now);
    }

    fn flush_stun(&mut self, now: Instant) {
        let v6 = self.udp_v6;
        loop {
            let Some(out) = self.stun.as_mut().and_then(|s| s.gatherer.poll_output()) else { return };
            match out {
                StunOutput::Transmit { destination, contents } => {
                    if let Err(e) = self.udp.get_ref().send_to(&contents, for_socket(destination, v6)) {
                        // Offline: the request is retried, then the round
                        // gives up quietly.
                        log::debug!("UDP send to STUN server {destination}: {e}");
                    }
                }
                StunOutput::Candidate { addr, base } => {
                    self.mesh.add_srflx_candidate(addr, base, now);
                    self.flush();
                }
                StunOutput::Resolve => self.start_stun_round(now),
            }
        }
    }

    fn on_signaling(&mut self, ev: SignalingEvent, now: Instant) {
        if matches!(ev, SignalingEvent::Frame(_))
            && let Some(thread) = self.identity.take()
        {
            // Usually done long before: the token exchange and WebSocket
            // handshake took longer. At worst this waits once, at startup.
            match thread.join() {
                Ok(Some(identity)) => self.mesh.set_dtls_identity(identity),
                _ => log::warn!("no shared DTLS certificate; each link makes its own"),
            }
        }
        match ev {
            SignalingEvent::Connecting => self.mesh.handle_registry_connecting(),
            SignalingEvent::Connected { peer_id } => self.mesh.handle_registry_connected(&peer_id, now),
            SignalingEvent::Frame(text) => self.mesh.handle_signal(&text, now),
            SignalingEvent::Down => self.mesh.handle_registry_down(),
        }
    }

    fn flush(&mut self) {
        let v6 = self.udp_v6;
        while let Some(out) = self.mesh.poll_output() {
            match out {
                MeshOutput::Transmit { destination, contents, .. } => {
                    if let Err(e) = self.udp.get_ref().send_to(&contents, for_socket(destination, v6)) {
                        // UDP is lossy anyway; SCTP and ICE retransmit.
                        log::debug!("UDP send to {destination}: {e}");
                    }
                }
                MeshOutput::Signal(env) => {
                    if self.out_tx.try_send(Outgoing::Frame(env.to_json())).is_err() {
                        log::warn!("signaling queue full; dropping a {} frame", env.kind);
                    }
                }
                MeshOutput::Event { to, event } => self.hub.borrow_mut().deliver(to, &event),
            }
        }
    }

    /// Says goodbye on every link and closes the WebSocket, within
    /// [`SHUTDOWN_GRACE`].
    async fn shutdown(&mut self, signaling: &async_channel::Receiver<SignalingEvent>) {
        self.notifier.stopping();
        let end = Instant::now() + SHUTDOWN_GRACE;
        self.mesh.shutdown(Instant::now());
        self.flush();
        let _ = self.out_tx.try_send(Outgoing::Close);
        while !self.mesh.is_idle() && Instant::now() < end {
            let deadline = self.mesh.poll_timeout().min(end);
            futures_lite::future::or(
                async {
                    let _ = self.udp.readable().await;
                },
                async {
                    Timer::at(deadline).await;
                },
            )
            .await;
            while signaling.try_recv().is_ok() {}
            self.drain_socket();
            let now = Instant::now();
            self.mesh.handle_timeout(now);
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_deadlines_are_kept_and_far_ones_share_grid_slots() {
        let epoch = Instant::now();
        let now = epoch + Duration::from_secs(10);
        let near = now + Duration::from_millis(1_999);
        assert_eq!(coalesce(near, now, epoch), near);
        let past = now - Duration::from_millis(5);
        assert_eq!(coalesce(past, now, epoch), past);
        // Two keepalives 100 ms apart inside one slot wake together, at the
        // slot's end, never before either is due and never a slot late.
        let first = now + Duration::from_millis(6_010);
        let second = now + Duration::from_millis(6_110);
        let slot = epoch + Duration::from_millis(16_250);
        assert_eq!(coalesce(first, now, epoch), slot);
        assert_eq!(coalesce(second, now, epoch), slot);
        assert!(slot - first < COALESCE_GRID);
        // On a boundary already: not moved.
        let exact = epoch + Duration::from_millis(16_000);
        assert_eq!(coalesce(exact, now, epoch), exact);
    }
}
