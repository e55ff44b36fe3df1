//! STUN requests: Binding, and the authenticated TURN requests (Allocate,
//! Refresh, CreatePermission, ChannelBind) with the long-term credential
//! checks of RFC 8489 §9.2.4 in its order: no MESSAGE-INTEGRITY → 401
//! challenge; USERNAME, REALM or NONCE missing → 400; nonce not ours or old
//! → 438 with a fresh one; bad username or integrity → 401 carrying the
//! client's own nonce (so a client with wrong credentials stops rather
//! than retrying); then the registry's authorization (403).

use super::allocation::{Allocation, Channel, MAX_CHANNELS};
use super::auth::{self, UsernameError};
use super::bucket::ByteBucket;
use super::framing::CHANNEL_MAX;
use super::{CHANNEL_LIFETIME, Client, Ctx, MAX_REQUEST, PERMISSION_LIFETIME, Relay, refusal, wire};
use std::net::SocketAddr;
use std::time::Duration;
use stun_types::AddressFamily;
use stun_types::attribute::{
    AttributeType, ErrorCode, Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, PasswordAlgorithm, Realm,
    Software, Username, XorMappedAddress,
};
use stun_types::message::{BINDING, IntegrityKey, Message, MessageClass, MessageHeader, MessageWriteVec};
use stun_types::prelude::*;
use turn_types::attribute::{
    AdditionalAddressFamily, AddressErrorCode, ChannelNumber, DontFragment, EvenPort, Lifetime, RequestedAddressFamily,
    RequestedTransport, ReservationToken, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};

/// Attributes every authenticated request may carry.
const AUTH_ATTRIBUTES: [AttributeType; 8] = [
    Username::TYPE,
    Realm::TYPE,
    Nonce::TYPE,
    MessageIntegrity::TYPE,
    MessageIntegritySha256::TYPE,
    PasswordAlgorithm::TYPE,
    Fingerprint::TYPE,
    Software::TYPE,
];

/// XOR-PEER-ADDRESS attributes read from one CreatePermission at most.
const MAX_PEERS_PER_REQUEST: usize = 16;

/// A request whose credentials checked out.
struct Authed {
    peer_id: String,
    username: String,
    key: IntegrityKey,
}

impl Relay {
    /// A STUN message from `client`: exactly one, already cut from a
    /// stream or the whole datagram.
    pub(super) fn handle_stun(&mut self, client: Client, bytes: &[u8], ctx: Ctx<'_>) {
        let exact = MessageHeader::from_bytes(bytes).is_ok_and(|h| {
            h.data_length() % 4 == 0 && MessageHeader::LENGTH + usize::from(h.data_length()) == bytes.len()
        });
        if !exact {
            return self.count(refusal::MALFORMED);
        }
        let Ok(msg) = Message::from_bytes(bytes) else { return self.count(refusal::MALFORMED) };
        match msg.class() {
            MessageClass::Request if bytes.len() > MAX_REQUEST => {
                self.count(refusal::BAD_REQUEST);
                self.reply_error(client, &msg, ErrorCode::BAD_REQUEST, "request too large", None);
            }
            MessageClass::Request => self.handle_request(client, &msg, ctx),
            MessageClass::Indication if msg.has_method(SEND) => self.handle_send(client, &msg, ctx.now),
            // Binding indications are keepalives; responses are not for us.
            MessageClass::Indication if msg.has_method(BINDING) => {}
            _ => self.count(refusal::MALFORMED),
        }
    }

    fn handle_request(&mut self, client: Client, msg: &Message<'_>, ctx: Ctx<'_>) {
        let method = msg.method();
        if method == BINDING {
            return self.answer_binding(client, msg);
        }
        if ![ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method) {
            self.count(refusal::BAD_REQUEST);
            return self.reply_error(client, msg, ErrorCode::BAD_REQUEST, "method not served here", None);
        }
        let Some(authed) = self.authenticate(client, msg, ctx) else { return };
        if !ctx.authz.is_authorized(&authed.peer_id) {
            log::debug!("relay: {} is not authorized; refusing {method} from {client:?}", authed.peer_id);
            if let Some(id) = self.by_client.get(&client).copied() {
                self.remove_allocation(id);
                self.recompute_deadline();
            }
            self.count(refusal::UNAUTHORIZED);
            return self.reply_error(client, msg, ErrorCode::FORBIDDEN, "peer not authorized", Some(&authed.key));
        }
        match method {
            ALLOCATE => self.allocate(client, msg, authed, ctx),
            REFRESH => self.refresh(client, msg, &authed, ctx),
            CREATE_PERMISSION => self.create_permission(client, msg, &authed, ctx),
            _ => self.channel_bind(client, msg, &authed, ctx),
        }
    }

    fn answer_binding(&mut self, client: Client, msg: &Message<'_>) {
        let mut out = wire::success(msg);
        if out.add_attribute(&XorMappedAddress::new(self.mapped_address(client), msg.transaction_id())).is_err() {
            return;
        }
        self.reply(client, out, None);
    }

    /// The credentials of `msg`, or `None` once the answer that refuses it
    /// is queued.
    fn authenticate(&mut self, client: Client, msg: &Message<'_>, ctx: Ctx<'_>) -> Option<Authed> {
        let realm = self.config.realm.clone();
        if !msg.has_attribute(MessageIntegrity::TYPE) {
            self.count(refusal::CHALLENGED);
            let nonce = self.nonces.issue(client, ctx.unix_now);
            let reply = wire::challenge(msg, ErrorCode::UNAUTHORIZED, "Unauthorized", &realm, &nonce);
            self.send_reply(client, reply);
            return None;
        }
        let (Ok(username), Ok(_), Ok(nonce)) =
            (msg.attribute::<Username>(), msg.attribute::<Realm>(), msg.attribute::<Nonce>())
        else {
            self.count(refusal::BAD_REQUEST);
            self.reply_error(client, msg, ErrorCode::BAD_REQUEST, "USERNAME, REALM and NONCE are required", None);
            return None;
        };
        if !self.nonces.is_fresh(nonce.nonce(), client, ctx.unix_now) {
            self.count(refusal::STALE_NONCE);
            let fresh = self.nonces.issue(client, ctx.unix_now);
            let reply = wire::challenge(msg, ErrorCode::STALE_NONCE, "Stale Nonce", &realm, &fresh);
            self.send_reply(client, reply);
            return None;
        }
        let username = username.username().to_owned();
        let refuse = |relay: &mut Relay, why: &str| {
            log::debug!("relay: {why} from {client:?} ({username:?})");
            relay.count(refusal::BAD_CREDENTIALS);
            let reply = wire::challenge(msg, ErrorCode::UNAUTHORIZED, why, &realm, nonce.nonce());
            relay.send_reply(client, reply);
        };
        let peer_id = match auth::peer_of(&username, ctx.unix_now) {
            Ok(peer_id) => peer_id.to_owned(),
            Err(UsernameError::Expired) => {
                refuse(self, "credentials expired");
                return None;
            }
            Err(UsernameError::Malformed) => {
                refuse(self, "username is not <expiry>:<peer_id>");
                return None;
            }
        };
        let password = auth::password(&self.config.secret, &username);
        let key = wire::key(&username, &password, &realm);
        if msg.validate_integrity_with_key(&key).is_err() {
            refuse(self, "wrong credentials");
            return None;
        }
        Some(Authed { peer_id, username, key })
    }

    fn allocate(&mut self, client: Client, msg: &Message<'_>, authed: Authed, ctx: Ctx<'_>) {
        let key = Some(&authed.key);
        self.drop_if_expired(client, ctx);
        if let Some(id) = self.by_client.get(&client).copied() {
            let retransmit = self
                .allocations
                .get(&id)
                .is_some_and(|a| a.transaction == msg.transaction_id() && a.username == authed.username);
            if retransmit {
                return self.answer_allocated(client, msg, id, &authed.key);
            }
            self.count(refusal::ALLOCATION_MISMATCH);
            return self.reply_error(client, msg, ErrorCode::ALLOCATION_MISMATCH, "already allocated", key);
        }
        let mut transport = None;
        let mut lifetime = None;
        let mut even_port = None;
        let mut reservation = false;
        let mut requested_family = None;
        let mut additional_family = None;
        let mut unknown = Vec::new();
        for (_, attr) in msg.iter_attributes() {
            match attr.get_type() {
                RequestedTransport::TYPE => transport = Some(RequestedTransport::from_raw(attr).map(|t| t.protocol())),
                Lifetime::TYPE => lifetime = Lifetime::from_raw(attr).ok().map(|l| l.seconds()),
                EvenPort::TYPE => even_port = Some(EvenPort::from_raw(attr).map(|e| e.requested())),
                ReservationToken::TYPE => reservation = true,
                RequestedAddressFamily::TYPE => {
                    requested_family = Some(RequestedAddressFamily::from_raw(attr).map(|f| f.family()))
                }
                AdditionalAddressFamily::TYPE => {
                    additional_family = Some(AdditionalAddressFamily::from_raw(attr).map(|f| f.family()))
                }
                DontFragment::TYPE => {}
                t if AUTH_ATTRIBUTES.contains(&t) => {}
                t if t.comprehension_required() && unknown.len() < 16 => unknown.push(t),
                _ => {}
            }
        }
        if !unknown.is_empty() {
            self.count(refusal::BAD_REQUEST);
            return self.send_reply(client, wire::unknown_attributes(msg, &unknown).and_then(|o| wire::finish(o, key)));
        }
        let bad = |relay: &mut Relay, code: u16, reason: &str| {
            relay.count(refusal::BAD_REQUEST);
            relay.reply_error(client, msg, code, reason, key);
        };
        match transport {
            None | Some(Err(_)) => return bad(self, ErrorCode::BAD_REQUEST, "REQUESTED-TRANSPORT is required"),
            Some(Ok(RequestedTransport::UDP)) => {}
            Some(Ok(_)) => return bad(self, ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL, "UDP relaying only"),
        }
        let ours = family_of(self.config.relay_ip.is_ipv4());
        // The families asked for: REQUESTED-ADDRESS-FAMILY alone, or IPv4
        // plus ADDITIONAL-ADDRESS-FAMILY (which must then be IPv6).
        let wanted: Vec<AddressFamily> = match (requested_family, additional_family) {
            (Some(_), Some(_)) | (Some(Err(_)), None) | (None, Some(Err(_))) => {
                return bad(self, ErrorCode::BAD_REQUEST, "bad address family attributes");
            }
            (None, Some(Ok(AddressFamily::IPV4))) => {
                return bad(self, ErrorCode::BAD_REQUEST, "ADDITIONAL-ADDRESS-FAMILY must be IPv6");
            }
            (None, Some(Ok(additional))) => vec![AddressFamily::IPV4, additional],
            (Some(Ok(requested)), None) => vec![requested],
            (None, None) => vec![AddressFamily::IPV4],
        };
        if !wanted.contains(&ours) {
            return bad(self, ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED, "this relay has no address of that family");
        }
        if reservation || matches!(even_port, Some(Ok(true))) {
            return bad(self, ErrorCode::INSUFFICIENT_CAPACITY, "port reservations are not supported");
        }
        if matches!(even_port, Some(Err(_))) {
            return bad(self, ErrorCode::BAD_REQUEST, "bad EVEN-PORT");
        }
        let of_peer = self.allocations.values().filter(|a| a.peer_id == authed.peer_id).count();
        if of_peer >= self.config.max_allocations_per_peer {
            self.count(refusal::QUOTA);
            return self.reply_error(client, msg, ErrorCode::ALLOCATION_QUOTA_REACHED, "allocation quota reached", key);
        }
        if self.allocations.len() >= self.config.max_allocations {
            self.count(refusal::QUOTA);
            return self.reply_error(client, msg, ErrorCode::INSUFFICIENT_CAPACITY, "relay full", key);
        }
        let Some(port) = self.ports.take(even_port.is_some()) else {
            self.count(refusal::QUOTA);
            return self.reply_error(client, msg, ErrorCode::INSUFFICIENT_CAPACITY, "no relayed port free", key);
        };
        let lifetime_secs = self.lifetime(lifetime);
        let relayed = SocketAddr::new(self.config.relay_ip, port);
        let id = self.next_allocation;
        self.next_allocation += 1;
        log::info!("relay: {relayed} allocated to {} ({client:?}) for {lifetime_secs} s", authed.peer_id);
        self.allocations.insert(
            id,
            Allocation {
                client,
                peer_id: authed.peer_id.clone(),
                username: authed.username.clone(),
                relayed,
                transaction: msg.transaction_id(),
                lifetime_secs,
                expires: ctx.now + Duration::from_secs(lifetime_secs.into()),
                permission: None,
                channels: Vec::new(),
                budget: ByteBucket::new(self.config.allocation_rate, ctx.now),
            },
        );
        self.by_client.insert(client, id);
        self.by_port.insert(port, id);
        self.stats.allocations_made += 1;
        self.recompute_deadline();
        let refused: Vec<AddressFamily> = wanted.into_iter().filter(|f| *f != ours).collect();
        self.answer_allocated_with(client, msg, id, &authed.key, &refused);
    }

    fn answer_allocated(&mut self, client: Client, msg: &Message<'_>, id: u64, key: &IntegrityKey) {
        self.answer_allocated_with(client, msg, id, key, &[]);
    }

    fn answer_allocated_with(
        &mut self,
        client: Client,
        msg: &Message<'_>,
        id: u64,
        key: &IntegrityKey,
        refused: &[AddressFamily],
    ) {
        let Some(a) = self.allocations.get(&id) else { return };
        let (relayed, lifetime) = (a.relayed, a.lifetime_secs);
        let tid = msg.transaction_id();
        let mapped = self.mapped_address(client);
        let mut out = wire::success(msg);
        let mut ok = out.add_attribute(&XorRelayedAddress::new(relayed, tid)).is_ok()
            && out.add_attribute(&Lifetime::new(lifetime)).is_ok()
            && out.add_attribute(&XorMappedAddress::new(mapped, tid)).is_ok();
        for family in refused {
            let error = ErrorCode::builder(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED).build();
            ok = ok && error.is_ok_and(|e| out.add_attribute(&AddressErrorCode::new(*family, e)).is_ok());
        }
        if ok {
            self.reply(client, out, Some(key));
        }
    }

    fn refresh(&mut self, client: Client, msg: &Message<'_>, authed: &Authed, ctx: Ctx<'_>) {
        let Some(id) = self.own_allocation(client, msg, authed, ctx) else { return };
        let key = Some(&authed.key);
        let mut lifetime = None;
        let mut family = None;
        let mut unknown = Vec::new();
        for (_, attr) in msg.iter_attributes() {
            match attr.get_type() {
                Lifetime::TYPE => lifetime = Lifetime::from_raw(attr).ok().map(|l| l.seconds()),
                RequestedAddressFamily::TYPE => {
                    family = RequestedAddressFamily::from_raw(attr).ok().map(|f| f.family())
                }
                t if AUTH_ATTRIBUTES.contains(&t) => {}
                t if t.comprehension_required() && unknown.len() < 16 => unknown.push(t),
                _ => {}
            }
        }
        if !unknown.is_empty() {
            self.count(refusal::BAD_REQUEST);
            return self.send_reply(client, wire::unknown_attributes(msg, &unknown).and_then(|o| wire::finish(o, key)));
        }
        if family.is_some_and(|f| f != family_of(self.config.relay_ip.is_ipv4())) {
            self.count(refusal::BAD_REQUEST);
            return self.reply_error(client, msg, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, "no such allocation", key);
        }
        let granted = if lifetime == Some(0) {
            if let Some(a) = self.allocations.get(&id) {
                log::info!("relay: {} of {} deleted by its client", a.relayed, a.peer_id);
            }
            self.remove_allocation(id);
            0
        } else {
            let secs = self.lifetime(lifetime);
            if let Some(a) = self.allocations.get_mut(&id) {
                a.lifetime_secs = secs;
                a.expires = ctx.now + Duration::from_secs(secs.into());
            }
            secs
        };
        self.recompute_deadline();
        let mut out = wire::success(msg);
        if out.add_attribute(&Lifetime::new(granted)).is_ok() {
            self.reply(client, out, key);
        }
    }

    fn create_permission(&mut self, client: Client, msg: &Message<'_>, authed: &Authed, ctx: Ctx<'_>) {
        let Some(id) = self.own_allocation(client, msg, authed, ctx) else { return };
        let key = Some(&authed.key);
        let mut peers = Vec::new();
        let mut unknown = Vec::new();
        for (_, attr) in msg.iter_attributes() {
            match attr.get_type() {
                XorPeerAddress::TYPE if peers.len() < MAX_PEERS_PER_REQUEST => {
                    peers.push(XorPeerAddress::from_raw(attr).map(|p| p.addr(msg.transaction_id())))
                }
                XorPeerAddress::TYPE => {
                    self.count(refusal::BAD_REQUEST);
                    return self.reply_error(client, msg, ErrorCode::BAD_REQUEST, "too many peer addresses", key);
                }
                t if AUTH_ATTRIBUTES.contains(&t) => {}
                t if t.comprehension_required() && unknown.len() < 16 => unknown.push(t),
                _ => {}
            }
        }
        if !unknown.is_empty() {
            self.count(refusal::BAD_REQUEST);
            return self.send_reply(client, wire::unknown_attributes(msg, &unknown).and_then(|o| wire::finish(o, key)));
        }
        if peers.is_empty() || peers.iter().any(Result::is_err) {
            self.count(refusal::BAD_REQUEST);
            return self.reply_error(client, msg, ErrorCode::BAD_REQUEST, "XOR-PEER-ADDRESS is required", key);
        }
        for peer in peers.into_iter().flatten() {
            if !self.check_peer(client, msg, peer, key) {
                return;
            }
        }
        if let Some(a) = self.allocations.get_mut(&id) {
            a.permission = Some(ctx.now + PERMISSION_LIFETIME);
        }
        self.recompute_deadline();
        self.reply(client, wire::success(msg), key);
    }

    fn channel_bind(&mut self, client: Client, msg: &Message<'_>, authed: &Authed, ctx: Ctx<'_>) {
        let Some(id) = self.own_allocation(client, msg, authed, ctx) else { return };
        let key = Some(&authed.key);
        let mut number = None;
        let mut peer = None;
        let mut unknown = Vec::new();
        for (_, attr) in msg.iter_attributes() {
            match attr.get_type() {
                ChannelNumber::TYPE => number = ChannelNumber::from_raw(attr).ok().map(|c| c.channel()),
                XorPeerAddress::TYPE => {
                    peer = XorPeerAddress::from_raw(attr).ok().map(|p| p.addr(msg.transaction_id()))
                }
                t if AUTH_ATTRIBUTES.contains(&t) => {}
                t if t.comprehension_required() && unknown.len() < 16 => unknown.push(t),
                _ => {}
            }
        }
        if !unknown.is_empty() {
            self.count(refusal::BAD_REQUEST);
            return self.send_reply(client, wire::unknown_attributes(msg, &unknown).and_then(|o| wire::finish(o, key)));
        }
        let (Some(number), Some(peer)) = (number, peer) else {
            self.count(refusal::BAD_REQUEST);
            return self.reply_error(
                client,
                msg,
                ErrorCode::BAD_REQUEST,
                "CHANNEL-NUMBER and XOR-PEER-ADDRESS required",
                key,
            );
        };
        if !(0x4000..=CHANNEL_MAX).contains(&number) {
            self.count(refusal::BAD_REQUEST);
            return self.reply_error(client, msg, ErrorCode::BAD_REQUEST, "channel numbers are 0x4000-0x4FFF", key);
        }
        if !self.check_peer(client, msg, peer, key) {
            return;
        }
        let Some(a) = self.allocations.get_mut(&id) else { return };
        a.expire(ctx.now);
        let by_number = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        let slot = match (by_number, by_peer) {
            (Some(i), Some(j)) if i == j => Some(i),
            (None, None) if a.channels.len() < MAX_CHANNELS => None,
            (None, None) => {
                self.count(refusal::QUOTA);
                return self.reply_error(client, msg, ErrorCode::INSUFFICIENT_CAPACITY, "too many channels", key);
            }
            _ => {
                self.count(refusal::BAD_REQUEST);
                let reason = "channel or peer already bound otherwise";
                return self.reply_error(client, msg, ErrorCode::BAD_REQUEST, reason, key);
            }
        };
        let channel = Channel { number, peer, expires: ctx.now + CHANNEL_LIFETIME };
        match slot {
            Some(i) => a.channels[i] = channel,
            None => a.channels.push(channel),
        }
        a.permission = Some(ctx.now + PERMISSION_LIFETIME);
        self.recompute_deadline();
        self.reply(client, wire::success(msg), key);
    }

    /// The allocation of `client`, if it is the requester's; otherwise the
    /// refusal is queued (437 without one, 441 for another username).
    fn own_allocation(&mut self, client: Client, msg: &Message<'_>, authed: &Authed, ctx: Ctx<'_>) -> Option<u64> {
        let key = Some(&authed.key);
        self.drop_if_expired(client, ctx);
        let Some(id) = self.by_client.get(&client).copied() else {
            self.count(refusal::ALLOCATION_MISMATCH);
            self.reply_error(client, msg, ErrorCode::ALLOCATION_MISMATCH, "no allocation", key);
            return None;
        };
        if self.allocations.get(&id).is_none_or(|a| a.username != authed.username) {
            self.count(refusal::WRONG_CREDENTIALS);
            self.reply_error(client, msg, ErrorCode::WRONG_CREDENTIALS, "not the allocation's username", key);
            return None;
        }
        Some(id)
    }

    /// Removes the allocation of `client` if it expired and the shell has
    /// not called `handle_timeout` since: it is gone for requests too.
    fn drop_if_expired(&mut self, client: Client, ctx: Ctx<'_>) {
        let id = self.by_client.get(&client).copied();
        if let Some(id) = id.filter(|id| self.allocations.get(id).is_some_and(|a| !a.is_live(ctx.now))) {
            self.remove_allocation(id);
            self.recompute_deadline();
        }
    }

    /// Whether `peer` may be permitted: only the relay's own address can.
    fn check_peer(&mut self, client: Client, msg: &Message<'_>, peer: SocketAddr, key: Option<&IntegrityKey>) -> bool {
        let relay_ip = self.config.relay_ip;
        if peer.is_ipv4() != relay_ip.is_ipv4() {
            self.count(refusal::BAD_REQUEST);
            self.reply_error(client, msg, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, "Peer Address Family Mismatch", key);
            return false;
        }
        if peer.ip() != relay_ip {
            log::debug!("relay: {client:?} asked to reach {peer}, outside the relay");
            self.count(refusal::PEER_NOT_ALLOWED);
            self.reply_error(client, msg, ErrorCode::FORBIDDEN, "only peers on this relay", key);
            return false;
        }
        true
    }

    /// The lifetime granted for a request (LIFETIME `asked`, seconds).
    fn lifetime(&self, asked: Option<u32>) -> u32 {
        let default = self.config.default_lifetime.as_secs();
        let max = self.config.max_lifetime.as_secs();
        let secs = asked.map_or(default, u64::from).clamp(default, max);
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    fn reply_error(&mut self, client: Client, msg: &Message<'_>, code: u16, reason: &str, key: Option<&IntegrityKey>) {
        let reply = wire::error(msg, code, reason).and_then(|out| wire::finish(out, key));
        self.send_reply(client, reply);
    }

    fn reply(&mut self, client: Client, out: MessageWriteVec, key: Option<&IntegrityKey>) {
        let reply = wire::finish(out, key);
        self.send_reply(client, reply);
    }

    fn send_reply(&mut self, client: Client, reply: Option<Vec<u8>>) {
        match reply {
            Some(bytes) => self.send_to(client, bytes),
            None => log::warn!("relay: could not write a response for {client:?}"),
        }
    }
}

fn family_of(ipv4: bool) -> AddressFamily {
    if ipv4 { AddressFamily::IPV4 } else { AddressFamily::IPV6 }
}
