//! One allocation: a relayed address owned by one client (a UDP 5-tuple or
//! a stream) on behalf of one peer, with its permission, channels, expiry
//! and byte budget. Only the relay's own address can be permitted, so the
//! permission table is a single expiry; channels are a bounded list.

use super::Client;
use super::bucket::ByteBucket;
use std::net::SocketAddr;
use std::time::Instant;
use stun_types::message::TransactionId;

/// Channels one allocation may bind.
pub(super) const MAX_CHANNELS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
}

pub(super) struct Allocation {
    pub client: Client,
    pub peer_id: String,
    /// The username it was made with: later requests must use the same
    /// (RFC 8656 §5, else 441).
    pub username: String,
    pub relayed: SocketAddr,
    /// The Allocate that made it: a retransmission of it is answered with
    /// the same success rather than 437.
    pub transaction: TransactionId,
    pub lifetime_secs: u32,
    pub expires: Instant,
    /// Until when the relay's own address is permitted (the only address
    /// that can be).
    pub permission: Option<Instant>,
    pub channels: Vec<Channel>,
    pub budget: ByteBucket,
}

impl Allocation {
    pub fn is_live(&self, now: Instant) -> bool {
        self.expires > now
    }

    pub fn permits(&self, now: Instant) -> bool {
        self.permission.is_some_and(|until| until > now)
    }

    /// The live channel bound to `peer`.
    pub fn channel_to(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels.iter().find(|c| c.peer == peer && c.expires > now).map(|c| c.number)
    }

    /// The peer of live channel `number`.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels.iter().find(|c| c.number == number && c.expires > now).map(|c| c.peer)
    }

    /// Drops what has expired; the earliest expiry still to come.
    pub fn expire(&mut self, now: Instant) -> Instant {
        if self.permission.is_some_and(|until| until <= now) {
            self.permission = None;
        }
        self.channels.retain(|c| c.expires > now);
        self.deadline()
    }

    pub fn deadline(&self) -> Instant {
        let mut at = self.expires;
        if let Some(until) = self.permission {
            at = at.min(until);
        }
        self.channels.iter().fold(at, |at, c| at.min(c.expires))
    }
}
