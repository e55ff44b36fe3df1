//! The smol shell around the sidecar's core: the UDP socket, the agents'
//! socket, the registry client, name lookups, signals and systemd, all on
//! one executor thread. It moves bytes and time; every decision is the
//! core's ([`crate::core::node::Node`]). This folder is where clocks,
//! sockets and threads are allowed (docs/ARCHITECTURE.md).
//!
//! The loop sleeps until the socket is readable, the core's deadline
//! passes, or a command, signaling event or lookup answer arrives. After
//! any wake it also drains the socket without blocking, services what is
//! due and takes a bounded batch of commands and signaling events, so no
//! source starves another.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod http;
pub mod interfaces;
pub mod ipc;
pub mod pair;
mod reactor;
pub mod signaling;
mod signals;
pub mod tls;
mod udp;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_executor::LocalExecutor;
use chatixia_protocol::ipc::Command;
use chatixia_settings::systemd::{self, Notifier};
use reactor::Timer;

use crate::core::ipc::{AgentHub, AgentId, IpcConfig};
use crate::core::mesh::{MeshConfig, RegistryState};
use crate::core::node::{LookupId, Node, NodeConfig, NodeOutput, SignalingEvent};
use crate::core::peer::DtlsIdentity;
use crate::core::stun::GathererConfig;
use crate::core::turn::{self, StreamId, TurnServer};
use crate::core::urls::{StunServer, TurnUrl};
use ipc::IpcSocket;
use signaling::{Outgoing, SignalingConfig};
use udp::{Recv, UdpPort};

/// Datagrams read per wake before other work gets its turn.
const DATAGRAM_BATCH: usize = 256;
/// Commands and signaling frames taken per wake.
const INPUT_BATCH: usize = 64;
const COMMAND_QUEUE: usize = 256;
const SIGNALING_QUEUE: usize = 1024;
/// SIGTERM must end the process within 2 s: goodbyes get this long.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(800);
/// Deadlines further away than this are far-off keepalives and refreshes,
/// not retransmissions or handshakes.
const COALESCE_AFTER: Duration = Duration::from_secs(2);
/// Far-off deadlines are rounded up to a multiple of this, so the keepalives
/// of many links (each pair of each link has its own) share one wake-up.
const COALESCE_GRID: Duration = Duration::from_millis(250);
/// Writes queued towards one TURN stream before it counts as stuck.
const STREAM_QUEUE: usize = 256;
/// How long credentials made from `TURN_SECRET` are valid.
const SECRET_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Where the TURN servers and their credentials come from.
#[derive(Debug, Clone)]
pub enum TurnSource {
    /// `TURN_URL` with `TURN_USERNAME`/`TURN_PASSWORD`.
    Static(Vec<TurnServer>),
    /// `TURN_URL` with `TURN_SECRET`: coturn REST credentials made here.
    Secret { urls: Vec<TurnUrl>, secret: String },
    /// No TURN settings: the registry's ICE configuration (`GET /api/config`).
    Registry,
}

/// The first of several futures to finish, polled in the order given.
macro_rules! first_of {
    ($only:expr $(,)?) => { $only };
    ($head:expr, $($rest:expr),+ $(,)?) => { futures_lite::future::or($head, first_of!($($rest),+)) };
}

pub struct ShellConfig {
    pub ipc_socket: PathBuf,
    /// Addresses to offer as host candidates, with the socket's port.
    pub host_addresses: Vec<IpAddr>,
    /// Asked for server-reflexive candidates; empty disables STUN.
    pub stun_servers: Vec<StunServer>,
    pub mesh: MeshConfig,
    pub ipc: IpcConfig,
    pub signaling: SignalingConfig,
    pub turn: TurnSource,
    /// Trusted in addition to the system store for `turns:` servers (and the
    /// registry, see [`SignalingConfig::tls`]).
    pub ca_file: Option<PathBuf>,
}

/// Runs the sidecar until SIGTERM or SIGINT.
pub fn run(config: ShellConfig) -> Result<(), String> {
    // First: every thread started later inherits the blocked signals.
    let signals = signals::install()?;
    let mut notifier = Notifier::from_env();
    // Bound before the registry is contacted, so an agent can attach at once.
    let ipc_socket = IpcSocket::bind(&config.ipc_socket)?;
    let listener = reactor::Async::new(ipc_socket.listener.try_clone().map_err(|e| e.to_string())?)
        .map_err(|e| format!("IPC socket: {e}"))?;
    log::info!("IPC socket listening at {}", ipc_socket.path().display());

    // The first certificate costs ~40 ms (aws-lc seeds its entropy) and
    // the DTLS configuration ~9 ms (dimpl checks its crypto provider); made
    // here, on a thread of its own, they overlap the token exchange instead
    // of delaying the first link.
    let identity = std::thread::Builder::new()
        .name("dtls-cert".into())
        .spawn(|| {
            let started = Instant::now();
            let identity = DtlsIdentity::generate();
            log::debug!("DTLS certificate made in {:?}", started.elapsed());
            let started = Instant::now();
            if std::panic::catch_unwind(crate::core::dtls::prepare).is_ok() {
                log::debug!("DTLS configuration made in {:?}", started.elapsed());
            }
            identity
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;

    let udp = UdpPort::bind()?;
    let port = udp.port();
    let host_candidates: Vec<SocketAddr> = config
        .host_addresses
        .iter()
        .filter(|ip| udp.dual_stack() || ip.is_ipv4())
        .map(|ip| SocketAddr::new(*ip, port))
        .collect();
    log::info!(
        "UDP port {port}; host candidates: {}",
        host_candidates.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
    );

    let node_config = NodeConfig {
        mesh: MeshConfig { seed: fastrand::u64(..), ..config.mesh },
        stun: GathererConfig::default(),
        stun_servers: config.stun_servers,
        host_candidates,
    };
    let mut node = Node::new(node_config, Instant::now());
    let turn_source = config.turn;
    if let Some((servers, valid_for)) = turn_servers(&turn_source) {
        node.handle_turn_servers(servers, valid_for, Instant::now());
    }
    let hub = Rc::new(RefCell::new(AgentHub::new(config.ipc)));
    let (cmd_tx, cmd_rx) = async_channel::bounded::<(AgentId, Command)>(COMMAND_QUEUE);
    let (sig_tx, sig_rx) = async_channel::bounded::<SignalingEvent>(SIGNALING_QUEUE);
    let (out_tx, out_rx) = async_channel::bounded::<Outgoing>(SIGNALING_QUEUE);
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    // One answer per lookup the core asked for; it never has more than a
    // few out at once.
    let (lookup_tx, lookup_rx) = async_channel::unbounded::<Answer>();
    // Bytes and ends of the TURN streams; each stream task waits for room.
    let (stream_tx, stream_rx) = async_channel::bounded::<(StreamId, StreamEvent)>(SIGNALING_QUEUE);

    notifier.ready();
    notifier.status(status_line(RegistryState::Down, 0));

    let tls = config.signaling.tls.clone();
    let ex = Rc::new(LocalExecutor::new());
    reactor::block_on(ex.run(async {
        ex.spawn(ipc::serve(ex.clone(), listener, hub.clone(), cmd_tx)).detach();
        let signaling = ex.spawn(signaling::run(config.signaling, sig_tx, out_rx));
        ex.spawn(async move {
            signals::first(signals).await;
            let _ = stop_tx.send(()).await;
        })
        .detach();

        let mut driver = Driver {
            node,
            identity: Some(identity),
            udp,
            hub,
            out_tx,
            lookup_tx,
            stream_tx,
            streams: HashMap::new(),
            turn: turn_source,
            tls,
            ca_file: config.ca_file,
            ex: ex.clone(),
            notifier,
            buf: vec![0u8; 65_536],
            outgoing: Vec::new(),
            delivered: false,
        };
        driver.flush();
        driver.send_outgoing();
        let inputs =
            Inputs { commands: &cmd_rx, signaling: &sig_rx, lookups: &lookup_rx, streams: &stream_rx, stop: &stop_rx };
        driver.run(inputs).await;
        driver.shutdown(&sig_rx).await;
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

/// The answer to one lookup the core asked for.
type Answer = (LookupId, Vec<Result<Vec<SocketAddr>, String>>);

/// What a TURN stream reports.
enum StreamEvent {
    Data(Vec<u8>),
    Closed,
}

/// The servers of a static or secret source, with how long their
/// credentials last; `None` for the registry, whose come later.
fn turn_servers(source: &TurnSource) -> Option<(Vec<TurnServer>, Option<Duration>)> {
    match source {
        TurnSource::Static(servers) => Some((servers.clone(), None)),
        TurnSource::Secret { urls, secret } => {
            let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let expiry = unix_now + SECRET_CREDENTIAL_LIFETIME.as_secs();
            let (username, password) = turn::rest_credentials(secret, expiry, "sidecar");
            let servers = urls.iter().map(|url| TurnServer::new(url.clone(), &username, &password)).collect();
            Some((servers, Some(SECRET_CREDENTIAL_LIFETIME)))
        }
        TurnSource::Registry => None,
    }
}

/// Where the core's inputs come from, besides the socket and the clock.
struct Inputs<'a> {
    commands: &'a async_channel::Receiver<(AgentId, Command)>,
    signaling: &'a async_channel::Receiver<SignalingEvent>,
    lookups: &'a async_channel::Receiver<Answer>,
    streams: &'a async_channel::Receiver<(StreamId, StreamEvent)>,
    stop: &'a async_channel::Receiver<()>,
}

/// Feeds the core and carries out what it asks.
struct Driver {
    node: Node,
    /// The shared DTLS certificate being made; taken before the first frame
    /// from the registry, which is what can create links.
    identity: Option<std::thread::JoinHandle<Option<DtlsIdentity>>>,
    udp: UdpPort,
    hub: Rc<RefCell<AgentHub>>,
    out_tx: async_channel::Sender<Outgoing>,
    lookup_tx: async_channel::Sender<Answer>,
    stream_tx: async_channel::Sender<(StreamId, StreamEvent)>,
    /// Writers of the open TURN streams.
    streams: HashMap<StreamId, async_channel::Sender<Vec<u8>>>,
    turn: TurnSource,
    /// Trust roots for `turns:`: the registry's when it is TLS, else loaded
    /// at the first `turns:` stream.
    tls: Option<tls::Tls>,
    ca_file: Option<PathBuf>,
    ex: Rc<LocalExecutor<'static>>,
    notifier: Notifier,
    buf: Vec<u8>,
    /// Datagrams held back until the agents' writers have run: see
    /// [`Driver::flush`].
    outgoing: Vec<(SocketAddr, Vec<u8>)>,
    /// Lines for agents were queued since the writers last ran.
    delivered: bool,
}

enum Wake {
    Socket,
    Timer,
    Command((AgentId, Command)),
    Signaling(SignalingEvent),
    Looked(Answer),
    Stream((StreamId, StreamEvent)),
    /// The agents fell behind on a peer's messages, or caught up.
    Throttle((String, bool)),
    Stop,
}

impl Driver {
    async fn run(&mut self, inputs: Inputs<'_>) {
        let watchdog = systemd::watchdog_interval();
        let mut next_watchdog = watchdog.map(|w| Instant::now() + w);
        let mut timer = Timer::never();
        // Re-filed with the reactor only when the deadline moves or after
        // it fired, not at every wake.
        let mut armed: Option<Instant> = None;
        let epoch = Instant::now();
        let mut last_status = (RegistryState::Down, 0);
        loop {
            let mut deadline = self.node.poll_timeout();
            if let Some(w) = next_watchdog {
                deadline = deadline.min(w);
            }
            let wake_at = coalesce(deadline, Instant::now(), epoch);
            if armed != Some(wake_at) {
                timer.set_at(wake_at);
                armed = Some(wake_at);
            }
            let udp = &self.udp;
            let hub = &self.hub;
            // Biased towards the first that is ready. Signaling before
            // commands: a command must see the registry state that was
            // already reported.
            let wake = first_of!(
                async {
                    udp.readable().await;
                    Wake::Socket
                },
                async {
                    (&mut timer).await;
                    Wake::Timer
                },
                async { inputs.signaling.recv().await.map_or(Wake::Stop, Wake::Signaling) },
                async { inputs.commands.recv().await.map_or(Wake::Stop, Wake::Command) },
                async { inputs.lookups.recv().await.map_or(Wake::Stop, Wake::Looked) },
                async { inputs.streams.recv().await.map_or(Wake::Stop, Wake::Stream) },
                async {
                    let change = std::future::poll_fn(|cx| hub.borrow_mut().poll_throttle(cx)).await;
                    Wake::Throttle(change)
                },
                async {
                    let _ = inputs.stop.recv().await;
                    Wake::Stop
                },
            )
            .await;
            let now = Instant::now();
            match wake {
                Wake::Stop => return,
                Wake::Command((agent, cmd)) => self.node.handle_command(agent, cmd, now),
                Wake::Signaling(ev) => self.on_signaling(ev, now),
                Wake::Looked((id, results)) => self.node.handle_lookup(id, results, now),
                Wake::Stream((stream, event)) => self.on_stream(stream, event, now),
                Wake::Timer => armed = None,
                Wake::Socket => self.drain_socket(),
                Wake::Throttle((peer, on)) => self.node.handle_peer_throttle(&peer, on, now),
            }
            self.flush();
            self.service(&inputs);
            if std::mem::take(&mut self.delivered) {
                // The agents' writers first: a message's line goes out
                // before the acknowledgement its arrival caused.
                futures_lite::future::yield_now().await;
            }
            self.send_outgoing();
            if let (Some(at), Some(every)) = (next_watchdog, watchdog)
                && at <= Instant::now()
            {
                self.notifier.watchdog();
                next_watchdog = Some(Instant::now() + every);
            }
            let status = (self.node.registry_state(), self.node.open_peer_count());
            if status != last_status {
                last_status = status;
                self.notifier.status(status_line(status.0, status.1));
            }
        }
    }

    /// Whatever woke us, everything else that is ready gets its turn too.
    fn service(&mut self, inputs: &Inputs<'_>) {
        if self.udp.take_readable() {
            self.drain_socket();
        }
        let now = Instant::now();
        if self.node.poll_timeout() <= now {
            self.node.handle_timeout(now);
            self.flush();
        }
        for _ in 0..INPUT_BATCH {
            let Ok(ev) = inputs.signaling.try_recv() else { break };
            self.on_signaling(ev, Instant::now());
            self.flush();
        }
        for _ in 0..INPUT_BATCH {
            let Ok((stream, event)) = inputs.streams.try_recv() else { break };
            self.on_stream(stream, event, Instant::now());
        }
        for _ in 0..INPUT_BATCH {
            let Ok((agent, cmd)) = inputs.commands.try_recv() else { break };
            self.node.handle_command(agent, cmd, Instant::now());
        }
        self.flush();
    }

    fn on_stream(&mut self, stream: StreamId, event: StreamEvent, now: Instant) {
        match event {
            StreamEvent::Data(bytes) => self.node.handle_stream_data(stream, &bytes, now),
            StreamEvent::Closed => {
                self.streams.remove(&stream);
                self.node.handle_stream_closed(stream, now);
            }
        }
        self.flush();
    }

    /// Opens a stream to a TCP or TLS TURN server: its writes come through
    /// a bounded queue, its reads and its end go to the event loop.
    fn open_stream(&mut self, stream: StreamId, server: SocketAddr, tls_name: Option<String>) {
        let events = self.stream_tx.clone();
        let tls = match &tls_name {
            None => None,
            Some(_) => match &self.tls {
                Some(tls) => Some(tls.clone()),
                None => match tls::Tls::load(self.ca_file.as_deref()) {
                    Ok(tls) => {
                        self.tls = Some(tls.clone());
                        Some(tls)
                    }
                    Err(e) => {
                        log::warn!("turns: {server}: {e}");
                        let _ = events.try_send((stream, StreamEvent::Closed));
                        return;
                    }
                },
            },
        };
        let (writes, queued) = async_channel::bounded::<Vec<u8>>(STREAM_QUEUE);
        self.streams.insert(stream, writes);
        self.ex
            .spawn(async move {
                use futures_lite::{AsyncReadExt, AsyncWriteExt};
                let opened = match (&tls, &tls_name) {
                    (Some(tls), Some(name)) => http::open_stream(server, Some((tls, name))).await,
                    _ => http::open_stream(server, None).await,
                };
                let io = match opened {
                    Ok(io) => io,
                    Err(e) => {
                        log::warn!("TURN server {server}: {e}");
                        let _ = events.send((stream, StreamEvent::Closed)).await;
                        return;
                    }
                };
                let (mut reader, mut writer) = futures_lite::io::split(io);
                let read = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if events.send((stream, StreamEvent::Data(buf[..n].to_vec()))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                };
                let write = async {
                    while let Ok(bytes) = queued.recv().await {
                        if writer.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    // Closed by the core: what was queued went out first.
                    let _ = writer.close().await;
                };
                futures_lite::future::or(read, write).await;
                let _ = events.send((stream, StreamEvent::Closed)).await;
            })
            .detach();
    }

    /// Reads until the socket is empty or [`DATAGRAM_BATCH`] were read; in
    /// that case it stays marked readable, for the next round.
    fn drain_socket(&mut self) {
        let mut emptied = false;
        for _ in 0..DATAGRAM_BATCH {
            match self.udp.recv(&mut self.buf) {
                Ok(Recv::Datagram(d)) => {
                    self.node.handle_datagram(Instant::now(), d.source, d.destination, &self.buf[..d.len]);
                }
                Ok(Recv::Skipped) => {}
                Ok(Recv::Empty) => {
                    emptied = true;
                    break;
                }
                // ICMP errors of earlier sends surface here; they concern
                // one peer, not the socket.
                Err(e) => log::debug!("UDP receive: {e}"),
            }
        }
        if !emptied {
            self.udp.mark_readable();
        }
        // The core polls the links fed above once, for the whole batch.
        self.flush();
    }

    fn on_signaling(&mut self, ev: SignalingEvent, now: Instant) {
        if matches!(ev, SignalingEvent::Frame(_))
            && let Some(thread) = self.identity.take()
        {
            // Usually done long before: the token exchange and WebSocket
            // handshake took longer. At worst this waits once, at startup.
            match thread.join() {
                Ok(Some(identity)) => self.node.set_dtls_identity(identity),
                _ => log::warn!("no shared DTLS certificate; each link makes its own"),
            }
        }
        self.node.handle_signaling(ev, now);
    }

    /// Carries out everything the core asks. Once a line for an agent is
    /// queued, datagrams wait in `outgoing` until the loop has let the
    /// agents' writers run ([`Driver::send_outgoing`]): a DataChannel
    /// message usually comes with the SCTP acknowledgement it caused, and
    /// encrypting and sending that first only delayed the message.
    fn flush(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                NodeOutput::Transmit { destination, contents } => {
                    if self.delivered || !self.outgoing.is_empty() {
                        self.outgoing.push((destination, contents));
                    } else {
                        self.send(destination, &contents);
                    }
                }
                NodeOutput::Signal(text) => {
                    if self.out_tx.try_send(Outgoing::Frame(text)).is_err() {
                        log::warn!("signaling queue full; dropping a frame");
                    }
                }
                NodeOutput::SignalBinary(bytes) => {
                    if self.out_tx.try_send(Outgoing::Binary(bytes)).is_err() {
                        log::debug!("signaling queue full; dropping TURN bytes for the registry's relay");
                    }
                }
                NodeOutput::Event { to, event } => {
                    self.delivered = true;
                    self.hub.borrow_mut().deliver(to, &event);
                    // Held back at once, before the next datagram of the peer.
                    while let Some((peer, on)) = self.hub.borrow_mut().take_throttle() {
                        self.node.handle_peer_throttle(&peer, on, Instant::now());
                    }
                }
                NodeOutput::StreamOpen { stream, server, tls_name } => self.open_stream(stream, server, tls_name),
                NodeOutput::StreamSend { stream, contents } => {
                    let stuck = self.streams.get(&stream).is_some_and(|w| w.try_send(contents).is_err());
                    if stuck {
                        log::warn!("TURN stream {stream} is not taking data; closing it");
                        self.streams.remove(&stream);
                    }
                }
                NodeOutput::StreamClose { stream } => {
                    self.streams.remove(&stream);
                }
                NodeOutput::RenewTurnCredentials => match turn_servers(&self.turn) {
                    Some((servers, valid_for)) => self.node.handle_turn_servers(servers, valid_for, Instant::now()),
                    None => {
                        let _ = self.out_tx.try_send(Outgoing::FetchIceConfig);
                    }
                },
                NodeOutput::Lookup { id, names } => {
                    let answers = self.lookup_tx.clone();
                    self.ex
                        .spawn(async move {
                            let results = match http::off_loop(move || lookup(&names)).await {
                                Ok(results) => results,
                                Err(e) => vec![Err(e)],
                            };
                            let _ = answers.send((id, results)).await;
                        })
                        .detach();
                }
            }
        }
    }

    fn send(&self, destination: SocketAddr, contents: &[u8]) {
        if let Err(e) = self.udp.send(destination, contents) {
            // UDP is lossy anyway; ICE, DTLS and SCTP retransmit.
            log::debug!("UDP send to {destination}: {e}");
        }
    }

    /// [`Driver::flush`] without holding datagrams back (shutting down:
    /// goodbyes first).
    fn flush_now(&mut self) {
        self.flush();
        self.delivered = false;
        self.send_outgoing();
    }

    fn send_outgoing(&mut self) {
        for (destination, contents) in std::mem::take(&mut self.outgoing) {
            self.send(destination, &contents);
        }
    }

    /// Says goodbye on every link and closes the WebSocket, within
    /// [`SHUTDOWN_GRACE`].
    async fn shutdown(&mut self, signaling: &async_channel::Receiver<SignalingEvent>) {
        self.notifier.stopping();
        let end = Instant::now() + SHUTDOWN_GRACE;
        self.node.shutdown(Instant::now());
        self.flush_now();
        let _ = self.out_tx.try_send(Outgoing::Close);
        while !self.node.is_idle() && Instant::now() < end {
            let deadline = self.node.poll_timeout().min(end);
            futures_lite::future::or(self.udp.readable(), async {
                Timer::at(deadline).await;
            })
            .await;
            while signaling.try_recv().is_ok() {}
            self.drain_socket();
            self.node.handle_timeout(Instant::now());
            self.flush_now();
        }
    }
}

/// Looks each `(host, port)` up (getaddrinfo blocks: run it off the event
/// loop). Hosts that are addresses need no lookup.
fn lookup(names: &[(String, u16)]) -> Vec<Result<Vec<SocketAddr>, String>> {
    use std::net::ToSocketAddrs;
    names
        .iter()
        .map(|(host, port)| match host.parse::<IpAddr>() {
            Ok(ip) => Ok(vec![SocketAddr::new(ip, *port)]),
            Err(_) => (host.as_str(), *port).to_socket_addrs().map(Iterator::collect).map_err(|e| e.to_string()),
        })
        .collect()
}

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

    #[test]
    fn literal_hosts_are_not_looked_up() {
        let got = lookup(&[("192.0.2.1".into(), 3478), ("::1".into(), 9)]);
        assert_eq!(got, [Ok(vec!["192.0.2.1:3478".parse().unwrap()]), Ok(vec!["[::1]:9".parse().unwrap()])]);
    }
}
