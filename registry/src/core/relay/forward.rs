//! The data path: Send indications and ChannelData from a client, relayed
//! to another allocation of this relay and nowhere else.

use super::bucket::ByteBucket;
use super::framing::CHANNEL_MAX;
use super::{Client, Relay, refusal, wire};
use std::net::SocketAddr;
use std::time::Instant;
use stun_types::message::Message;
use turn_types::attribute::{Data, XorPeerAddress};
use turn_types::channel::ChannelData;

impl Relay {
    pub(super) fn handle_send(&mut self, client: Client, msg: &Message<'_>, now: Instant) {
        let Some(id) = self.by_client.get(&client).copied() else { return self.count(refusal::NO_ALLOCATION) };
        let (Ok(peer), Ok(data)) = (msg.attribute::<XorPeerAddress>(), msg.attribute::<Data>()) else {
            return self.count(refusal::BAD_REQUEST);
        };
        self.relay_from(id, peer.addr(msg.transaction_id()), data.data(), now);
    }

    pub(super) fn handle_channel_data(&mut self, client: Client, bytes: &[u8], now: Instant) {
        let Ok(message) = ChannelData::parse(bytes) else { return self.count(refusal::MALFORMED) };
        if message.id() > CHANNEL_MAX {
            return self.count(refusal::MALFORMED);
        }
        let Some(id) = self.by_client.get(&client).copied() else { return self.count(refusal::NO_ALLOCATION) };
        let Some(peer) = self.allocations.get(&id).and_then(|a| a.channel_peer(message.id(), now)) else {
            return self.count(refusal::NO_CHANNEL);
        };
        self.relay_from(id, peer, message.data(), now);
    }

    /// Hands `payload` from allocation `from` to the allocation at `to`, if
    /// both permit the relay's address and the budgets allow.
    fn relay_from(&mut self, from: u64, to: SocketAddr, payload: &[u8], now: Instant) {
        let Some(sender) = self.allocations.get(&from).filter(|a| a.is_live(now)) else {
            return self.count(refusal::NO_ALLOCATION);
        };
        let source = sender.relayed;
        if to.ip() != self.config.relay_ip {
            return self.count(refusal::PEER_NOT_ALLOWED);
        }
        if !sender.permits(now) {
            return self.count(refusal::NO_PERMISSION);
        }
        let Some(target) = self.by_port.get(&to.port()).copied().filter(|&t| t != from) else {
            return self.count(refusal::NO_PEER);
        };
        let Some(receiver) = self.allocations.get(&target).filter(|b| b.is_live(now)) else {
            return self.count(refusal::NO_PEER);
        };
        if !receiver.permits(now) {
            return self.count(refusal::NO_PERMISSION);
        }
        let destination = receiver.client;
        let channel = receiver.channel_to(source, now);
        let (allocation_rate, total_rate) = (self.config.allocation_rate, self.config.total_rate);
        let Some(sender) = self.allocations.get_mut(&from) else { return };
        let budgets = ((&mut sender.budget, allocation_rate), (&mut self.total_budget, total_rate));
        if !ByteBucket::take_both(budgets.0, budgets.1, payload.len(), now) {
            return self.count(refusal::RATE_LIMITED);
        }
        let bytes = match channel {
            Some(number) => wire::channel_data(number, payload, matches!(destination, Client::Stream(_))),
            None => {
                let transaction = self.transactions.next();
                wire::data_indication(transaction, source, payload)
            }
        };
        let Some(bytes) = bytes else { return self.count(refusal::MALFORMED) };
        self.stats.bytes_relayed += payload.len() as u64;
        self.stats.packets_relayed += 1;
        self.send_to(destination, bytes);
    }
}
