//! The relay's sockets (docs/PROTOCOL.md §3.10): UDP and TCP on
//! `RELAY_PORT`. What arrives goes to the core's relay; what it asks to
//! send is dispatched by [`super::Shared::dispatch`]. TURN over the
//! signaling WebSocket comes in through `ws.rs` instead.

use super::{Shared, SocketGuard, now};
use crate::core::ratelimit::Rate;
use crate::core::registry::RELAY_TCP_STREAMS;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, LocalExecutor, Timer};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::rc::Rc;
use std::time::Duration;

/// Datagrams read per wake before other work gets its turn.
const DATAGRAM_BATCH: usize = 64;
/// Writes queued towards one relay TCP connection; beyond it, frames are
/// dropped, as UDP would lose them.
pub(super) const STREAM_QUEUE: usize = 256;

/// What the operator asked of the relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// UDP and TCP port (`RELAY_PORT`).
    pub port: u16,
    /// Address relayed addresses are given on (`RELAY_ADDRESS`).
    pub address: Option<IpAddr>,
    /// Range the relayed ports are drawn from (`RELAY_PORTS`).
    pub ports: (u16, u16),
    /// Relayed bytes per second per allocation (`RELAY_BANDWIDTH`).
    pub allocation_rate: Rate,
    /// Relayed bytes per second in all (`RELAY_TOTAL_BANDWIDTH`).
    pub total_rate: Rate,
    /// `RELAY_PORT` was set: a port that cannot be bound stops the start
    /// instead of turning the relay off.
    pub explicit: bool,
}

pub(super) struct RelaySockets {
    pub udp: Async<UdpSocket>,
    pub tcp: Async<TcpListener>,
}

/// Binds UDP and TCP on `ip:port` (the same port for both, when `port` is
/// 0 the one the UDP socket got).
pub(super) fn bind(ip: IpAddr, port: u16) -> Result<RelaySockets, String> {
    let udp = UdpSocket::bind((ip, port)).map_err(|e| format!("UDP {ip}:{port}: {e}"))?;
    let port = udp.local_addr().map_err(|e| e.to_string())?.port();
    let tcp = TcpListener::bind((ip, port)).map_err(|e| format!("TCP {ip}:{port}: {e}"))?;
    Ok(RelaySockets {
        udp: Async::new(udp).map_err(|e| e.to_string())?,
        tcp: Async::new(tcp).map_err(|e| e.to_string())?,
    })
}

/// The address other hosts most likely reach this one by: the source
/// address of the route to the outside (no packet is sent), else loopback.
pub(super) fn outward_address() -> IpAddr {
    UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| {
            // A documentation address: only the route to it is looked up.
            s.connect(("192.0.2.1", 9))?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Reads the relay's UDP socket forever.
pub(super) async fn udp_loop(shared: Rc<Shared>) {
    let Some(sockets) = shared.relay.as_ref() else { return };
    let mut buf = vec![0u8; 65_536];
    loop {
        if sockets.udp.readable().await.is_err() {
            Timer::after(Duration::from_millis(100)).await;
            continue;
        }
        for _ in 0..DATAGRAM_BATCH {
            match sockets.udp.get_ref().recv_from(&mut buf) {
                Ok((n, from)) => shared.registry.borrow_mut().handle_relay_datagram(from, &buf[..n], now()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP errors of earlier sends: about one client only.
                Err(e) => log::debug!("relay UDP receive: {e}"),
            }
        }
        shared.dispatch();
        futures_lite::future::yield_now().await;
    }
}

/// Accepts TCP connections on the relay's port forever.
pub(super) async fn accept_loop(ex: Rc<LocalExecutor<'static>>, shared: Rc<Shared>) {
    let Some(sockets) = shared.relay.as_ref() else { return };
    loop {
        let (stream, peer) = match sockets.tcp.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                log::warn!("relay accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.open_sockets.get() >= shared.config.max_connections {
            log::warn!("refusing relay connection from {peer}: {} connections open", shared.open_sockets.get());
            continue;
        }
        let _ = stream.get_ref().set_nodelay(true);
        let guard = SocketGuard::new(&shared);
        let conn = RELAY_TCP_STREAMS + shared.next_relay_stream.get();
        shared.next_relay_stream.set(shared.next_relay_stream.get() + 1);
        ex.spawn(serve(shared.clone(), stream, peer, conn, guard)).detach();
    }
}

/// One TCP connection speaking TURN.
async fn serve(shared: Rc<Shared>, stream: Async<TcpStream>, peer: SocketAddr, conn: u64, _guard: Rc<SocketGuard>) {
    let (writes, queued) = async_channel::bounded::<Vec<u8>>(STREAM_QUEUE);
    shared.relay_streams.borrow_mut().insert(conn, writes);
    shared.registry.borrow_mut().handle_relay_stream_opened(conn, peer);
    let reader = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match (&stream).read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    shared.registry.borrow_mut().handle_relay_stream_data(conn, &buf[..n], now());
                    shared.dispatch();
                }
            }
        }
    };
    let writer = async {
        // Ends when the core closes the stream (the sender is dropped).
        while let Ok(bytes) = queued.recv().await {
            if (&stream).write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    futures_lite::future::or(reader, writer).await;
    shared.relay_streams.borrow_mut().remove(&conn);
    shared.registry.borrow_mut().handle_relay_stream_closed(conn);
    shared.dispatch();
    log::debug!("relay connection {conn} from {peer} closed");
}
