//! The sidecar's one UDP socket, shared by every link and the STUN
//! requests. Dual-stack when the host has IPv6; the real destination
//! address of each datagram comes from `IP(V6)_PKTINFO`, because ICE
//! matches it against our candidates.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use super::reactor::Async;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt};

use crate::core::canonical;

/// The kernel's default 208 KB drops datagrams of bulk DataChannel traffic,
/// and SCTP's recovery then halves the throughput.
const SOCKET_BUFFER: usize = 1 << 20;

pub struct UdpPort {
    socket: Async<UdpSocket>,
    port: u16,
    dual_stack: bool,
}

/// What one non-blocking read found.
pub enum Recv {
    /// A datagram, read into the caller's buffer.
    Datagram(Received),
    /// A datagram that cannot be used (no source or destination address);
    /// it was dropped.
    Skipped,
    /// Nothing is waiting.
    Empty,
}

pub struct Received {
    pub len: usize,
    pub source: SocketAddr,
    /// Where it was sent to: one of our addresses, with our port.
    pub destination: SocketAddr,
}

impl UdpPort {
    /// Binds an ephemeral port on every address (IPv6 and IPv4 when the
    /// host has IPv6).
    pub fn bind() -> Result<UdpPort, String> {
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
        let local = sock.local_addr().map_err(|e| e.to_string())?;
        let dual_stack = local.is_ipv6();
        if dual_stack {
            setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true).map_err(|e| format!("IPV6_RECVPKTINFO: {e}"))?;
        }
        // Also on the dual-stack socket, where IPv4 datagrams may report it.
        let v4 = setsockopt(&sock, sockopt::Ipv4PacketInfo, &true);
        if !dual_stack {
            v4.map_err(|e| format!("IP_PKTINFO: {e}"))?;
        }
        let socket = Async::new(sock).map_err(|e| format!("UDP socket: {e}"))?;
        Ok(UdpPort { socket, port: local.port(), dual_stack })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether IPv6 addresses can be used (the socket is dual-stack).
    pub fn dual_stack(&self) -> bool {
        self.dual_stack
    }

    /// Resolves once a datagram may be waiting: one came since the last
    /// [`Self::take_readable`] or [`Self::readable`], or a drain stopped
    /// early ([`Self::mark_readable`]).
    pub async fn readable(&self) {
        let _ = self.socket.readable().await;
    }

    /// Whether a datagram may be waiting, without a system call; forgets it.
    pub fn take_readable(&self) -> bool {
        self.socket.clear_readable()
    }

    /// A drain stopped before the socket was empty: it is readable still.
    pub fn mark_readable(&self) {
        self.socket.mark_readable();
    }

    /// Sends without waiting; UDP is lossy anyway and ICE, DTLS and SCTP
    /// retransmit, so a full buffer only costs one datagram.
    pub fn send(&self, destination: SocketAddr, contents: &[u8]) -> io::Result<usize> {
        let destination = match destination {
            SocketAddr::V4(v4) if self.dual_stack => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
            other => other,
        };
        self.socket.get_ref().send_to(contents, destination)
    }

    /// One datagram without blocking.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Recv> {
        let mut iov = [io::IoSliceMut::new(buf)];
        let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo, nix::libc::in_pktinfo);
        let fd = self.socket.get_ref().as_raw_fd();
        let msg = match recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EAGAIN) => return Ok(Recv::Empty),
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
        let Some(source) = source.map(canonical) else { return Ok(Recv::Skipped) };
        let Some(ip) = destination else {
            log::debug!("datagram from {source} without its destination address; dropped");
            return Ok(Recv::Skipped);
        };
        Ok(Recv::Datagram(Received { len, source, destination: SocketAddr::new(ip, self.port) }))
    }
}
