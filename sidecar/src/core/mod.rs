//! The sidecar's sans-IO core: every decision, no IO. Code in this folder
//! never reads a clock, touches a socket or a file, looks a name up, starts
//! a thread or draws random numbers: the shell (`../shell/`) hands it the
//! time, the bytes and the seeds, and carries out what it asks. clippy
//! enforces that (the repository's `clippy.toml`); docs/ARCHITECTURE.md
//! explains why and how the pieces fit.
//!
//! [`node::Node`] is the one object the shell drives. It owns the
//! [`mesh::Mesh`] (links and their signaling, agents' commands), whose
//! links are [`peer::PeerLink`]s (one str0m `Rtc` each), and the
//! [`stun::Gatherer`]. [`ipc`] is the agents' side (who gets which event),
//! [`urls`] and [`backoff`] are the pure parts of the registry client.
//! [`offer_limit`] and [`log_budget`] keep what a hostile peer can cost
//! (answers, log lines) bounded.

pub mod backoff;
pub mod dtls;
pub mod ipc;
pub mod log_budget;
pub mod mesh;
pub mod node;
pub mod offer_limit;
pub mod outbox;
pub mod peer;
#[cfg(test)]
pub mod sim;
pub mod stun;
pub mod turn;
pub mod urls;

use std::net::SocketAddr;

/// `addr` with an IPv4-mapped IPv6 address (as a dual-stack socket reports
/// IPv4 peers) turned into plain IPv4, so one peer has one address.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
