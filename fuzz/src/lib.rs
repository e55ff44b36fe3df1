//! What the fuzz targets share: a registry and a sidecar node core set up
//! as in production, with fixed keys and a fixed clock, and the way one
//! input becomes several messages.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use chatixia_registry::core::config::RegistryConfig;
use chatixia_registry::core::keys::KeyStore;
use chatixia_registry::core::now::Now;
use chatixia_registry::core::registry::Registry;
use chatixia_registry::core::relay::RelayConfig;
use chatixia_registry::core::token::TokenIssuer;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const KEYS: &str = r#"{"keys":{
    "key-alpha":{"peer_id":"alpha","role":"agent"},
    "key-bravo":{"peer_id":"bravo","role":"agent"},
    "key-admin":{"peer_id":"ops","role":"admin"}}}"#;
pub const SECRET: &[u8] = b"chatixia-fuzz-secret-0123456789ab";

/// One monotonic origin per process, so runs differ only by input.
pub fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// `offset` after the start, on a fixed wall clock.
pub fn now(offset: Duration) -> Now {
    Now { mono: start() + offset, wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000) + offset }
}

pub fn wall(offset: Duration) -> SystemTime {
    now(offset).wall
}

/// A registry with the relay on, as `chatixia-registry` starts by default.
pub fn registry() -> Registry {
    let relay = RelayConfig::new("chatixia", SECRET, "192.0.2.1".parse().unwrap());
    let config = RegistryConfig { relay: Some((relay, 3478)), ..RegistryConfig::default() };
    let keys = KeyStore::parse(KEYS).expect("keys");
    let tokens = TokenIssuer::new(SECRET).expect("secret");
    let mut n = 0u8;
    let rng = Box::new(move |buf: &mut [u8]| {
        for b in buf.iter_mut() {
            n = n.wrapping_mul(31).wrapping_add(17);
            *b = n;
        }
        Ok(())
    });
    Registry::new(config, keys, tokens, 7, rng, now(Duration::ZERO))
}

/// Drains a registry's outputs, as the shell would.
pub fn drain(registry: &mut Registry) {
    let mut left = 100_000;
    while registry.poll_output().is_some() {
        left -= 1;
        assert!(left > 0, "the registry produced output without end");
    }
}

/// The messages in one input: each is a 2-byte big-endian length and that
/// many bytes (the last one may be cut short). Binary formats (STUN, TURN,
/// DTLS) contain every byte value, so no separator would do.
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let [hi, lo, rest @ ..] = data else { return None };
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let (message, after) = rest.split_at(len);
        data = after;
        Some(message)
    })
    .take(64)
}

/// Builds an input of [`messages`]: for seeds and regression tests.
pub fn encode(messages: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        let len = u16::try_from(m.len()).expect("a message under 64 KiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// Link settings with one DTLS certificate for every iteration, as the
/// sidecar shares one across its links: making one per input would spend
/// nearly all the fuzzing time in key generation.
pub fn link_config() -> chatixia_sidecar::core::peer::LinkConfig {
    use chatixia_sidecar::core::peer::{DtlsIdentity, LinkConfig};
    static IDENTITY: OnceLock<Option<DtlsIdentity>> = OnceLock::new();
    LinkConfig { identity: IDENTITY.get_or_init(DtlsIdentity::generate).clone(), ..LinkConfig::default() }
}

/// Mesh settings with [`link_config`].
pub fn mesh_config() -> chatixia_sidecar::core::mesh::MeshConfig {
    chatixia_sidecar::core::mesh::MeshConfig { link: link_config(), ..Default::default() }
}
