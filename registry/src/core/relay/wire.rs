//! What the relay writes: responses (signed with the requester's key when
//! it proved one, always with FINGERPRINT), Data indications and
//! ChannelData, all through stun-types and turn-types. Writing can only
//! fail on a value out of range; such a message is not sent (`None`), never
//! a panic.

use std::net::SocketAddr;
use stun_types::attribute::{ErrorCode, Nonce, Realm, UnknownAttributes};
use stun_types::message::{
    IntegrityAlgorithm, IntegrityKey, LongTermKeyCredentials, Message, MessageClass, MessageType, MessageWriteVec,
    TransactionId,
};
use stun_types::prelude::*;
use turn_types::attribute::{Data, XorPeerAddress};
use turn_types::channel::ChannelData;
use turn_types::message::DATA;

/// The key a long-term credential signs with (MESSAGE-INTEGRITY, SHA-1).
pub(super) fn key(username: &str, password: &str, realm: &str) -> IntegrityKey {
    LongTermKeyCredentials::new(username.to_owned(), password.to_owned(), realm.to_owned())
        .make_key(IntegrityAlgorithm::Sha1)
}

/// A success response to `request` (which must be a request) to fill in.
pub(super) fn success(request: &Message<'_>) -> MessageWriteVec {
    Message::builder_success(request, MessageWriteVec::with_capacity(128))
}

/// An error response with `code` and `reason`.
pub(super) fn error(request: &Message<'_>, code: u16, reason: &str) -> Option<MessageWriteVec> {
    let mut out = Message::builder_error(request, MessageWriteVec::with_capacity(128));
    out.add_attribute(&ErrorCode::builder(code).reason(reason).build().ok()?).ok()?;
    Some(out)
}

/// 420 listing the attributes not understood.
pub(super) fn unknown_attributes(
    request: &Message<'_>,
    unknown: &[stun_types::attribute::AttributeType],
) -> Option<MessageWriteVec> {
    let mut out = error(request, ErrorCode::UNKNOWN_ATTRIBUTE, "Unknown Attribute")?;
    out.add_attribute(&UnknownAttributes::new(unknown)).ok()?;
    Some(out)
}

/// An unsigned challenge (401) or stale-nonce (438) with a nonce to use.
pub(super) fn challenge(request: &Message<'_>, code: u16, reason: &str, realm: &str, nonce: &str) -> Option<Vec<u8>> {
    let mut out = error(request, code, reason)?;
    out.add_attribute(&Realm::new(realm).ok()?).ok()?;
    out.add_attribute(&Nonce::new(nonce).ok()?).ok()?;
    finish(out, None)
}

/// Signs with `key` when there is one, adds FINGERPRINT.
pub(super) fn finish(mut out: MessageWriteVec, key: Option<&IntegrityKey>) -> Option<Vec<u8>> {
    if let Some(key) = key {
        out.add_message_integrity_with_key(key, IntegrityAlgorithm::Sha1).ok()?;
    }
    out.add_fingerprint().ok()?;
    Some(out.finish())
}

/// A Data indication: `payload` from `peer`.
pub(super) fn data_indication(transaction: TransactionId, peer: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let mtype = MessageType::from_class_method(MessageClass::Indication, DATA);
    let mut out = Message::builder(mtype, transaction, MessageWriteVec::with_capacity(payload.len() + 48));
    out.add_attribute(&XorPeerAddress::new(peer, transaction)).ok()?;
    out.add_attribute(&Data::new(payload)).ok()?;
    Some(out.finish())
}

/// A ChannelData message; on a stream padded to a multiple of 4 bytes
/// (RFC 8656 §12.5).
pub(super) fn channel_data(number: u16, payload: &[u8], padded: bool) -> Option<Vec<u8>> {
    if payload.len() > usize::from(u16::MAX) {
        return None;
    }
    let len = 4 + payload.len();
    let mut out = vec![0; if padded { len.next_multiple_of(4) } else { len }];
    ChannelData::new(number, payload).write_into_unchecked(&mut out[..len]);
    Some(out)
}

/// Transaction ids of the indications the relay sends. RFC 8489 wants them
/// unpredictable only for requests (whose responses could be forged); an
/// indication needs one that does not repeat soon. A counter mixed by
/// splitmix64, seeded from the secret, keeps the core free of random
/// sources.
pub(super) struct TransactionIds {
    seed: u64,
    counter: u64,
}

impl TransactionIds {
    pub fn new(secret: &[u8]) -> Self {
        let mac = hmac_sha1_compact::HMAC::mac(b"chatixia relay transaction ids", secret);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&mac[..8]);
        TransactionIds { seed: u64::from_le_bytes(seed), counter: 0 }
    }

    pub fn next(&mut self) -> TransactionId {
        self.counter = self.counter.wrapping_add(1);
        let high = splitmix(self.seed ^ self.counter);
        let low = splitmix(high ^ 0x5bd1_e995);
        // 96 bits: stun-types keeps the low 96 of the u128.
        (((u128::from(high) << 64) | u128::from(low)) & ((1u128 << 96) - 1)).into()
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
