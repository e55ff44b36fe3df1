//! Everything the registry holds in memory, in one place, so that the HTTP
//! handlers (`api`) and the facade (`registry`) work on the same parts
//! without either owning the other. Only the facade holds one.

use crate::core::agents::AgentRegistry;
use crate::core::config::RegistryConfig;
use crate::core::hub::{Authorize, Hub};
use crate::core::keys::KeyStore;
use crate::core::now::Now;
use crate::core::pairing::PairingStore;
use crate::core::ratelimit::{KeyedLimiter, TokenBucket};
use crate::core::relay::Relay;
use crate::core::tasks::TaskHub;
use crate::core::token::TokenIssuer;
use std::net::IpAddr;

/// Fills a buffer from a CSPRNG or says why it cannot; the shell passes the
/// operating system's, tests a deterministic one.
pub type RandomSource = Box<dyn FnMut(&mut [u8]) -> Result<(), String>>;

/// Who may join the mesh: the peer_ids of the API keys and of approved
/// pairing entries.
pub(in crate::core) struct Authorization<'a> {
    pub keys: &'a KeyStore,
    pub pairing: &'a PairingStore,
}

impl Authorize for Authorization<'_> {
    fn is_authorized(&self, peer_id: &str) -> bool {
        self.keys.has_peer(peer_id) || self.pairing.is_approved(peer_id)
    }
}

/// Counters for `/metrics` that no part keeps itself.
#[derive(Debug, Default, Clone)]
pub(in crate::core) struct Counters {
    pub tokens_issued: u64,
    pub tokens_refused: u64,
    pub tokens_rate_limited: u64,
    pub ws_refused: u64,
    pub pairings: u64,
    pub pairings_refused: u64,
    pub pairings_rate_limited: u64,
}

pub(in crate::core) struct RegistryState {
    pub config: RegistryConfig,
    pub keys: KeyStore,
    pub tokens: TokenIssuer,
    pub hub: Hub,
    pub agents: AgentRegistry,
    pub tasks: TaskHub,
    pub pairing: PairingStore,
    pub counters: Counters,
    pub token_limiter: KeyedLimiter<IpAddr>,
    pub pair_limiter: KeyedLimiter<IpAddr>,
    pub pair_checks: TokenBucket,
    pub rng: RandomSource,
    /// The TURN relay, when enabled, and the port it listens on.
    pub relay: Option<(Relay, u16)>,
}

impl RegistryState {
    pub fn new(
        config: RegistryConfig,
        keys: KeyStore,
        tokens: TokenIssuer,
        task_seed: u64,
        rng: RandomSource,
        now: Now,
    ) -> Self {
        let task_limits = config.task_limits;
        RegistryState {
            relay: config.relay.clone().map(|(c, port)| (Relay::new(c, now.mono), port)),
            hub: Hub::new(config.hub.clone(), now.mono),
            token_limiter: KeyedLimiter::new(config.token_rate, 10_000),
            pair_limiter: KeyedLimiter::new(config.pair_rate, 10_000),
            pair_checks: TokenBucket::new(config.pair_global_rate, now.mono),
            pairing: PairingStore::new(config.pairing),
            config,
            keys,
            tokens,
            agents: AgentRegistry::new(),
            tasks: TaskHub::with_limits(task_seed, task_limits),
            counters: Counters::default(),
            rng,
        }
    }

    /// The hub together with the authorization it must consult, borrowed
    /// apart so a hub call can read the keys and pairing entries.
    pub fn hub_with_authz(&mut self) -> (&mut Hub, Authorization<'_>) {
        (&mut self.hub, Authorization { keys: &self.keys, pairing: &self.pairing })
    }

    /// Authorization changed (keys reloaded, a device approved): sockets
    /// that lost it are closed, those that gained it learn who is there.
    pub fn authorization_changed(&mut self) {
        let (hub, authz) = self.hub_with_authz();
        hub.handle_authorization_changed(&authz);
        if let Some((relay, _)) = &mut self.relay {
            relay.handle_authorization_changed(&Authorization { keys: &self.keys, pairing: &self.pairing });
        }
    }

    /// Closes the sockets of a device that was just rejected or revoked and
    /// tells the others it left.
    pub fn shut_out(&mut self, peer_id: &str) {
        let (hub, authz) = self.hub_with_authz();
        hub.handle_revoked(peer_id, &authz);
        if let Some((relay, _)) = &mut self.relay {
            relay.revoke(peer_id);
        }
    }

    /// The relay together with the authorization it consults.
    pub fn relay_with_authz(&mut self) -> Option<(&mut Relay, Authorization<'_>)> {
        let authz = Authorization { keys: &self.keys, pairing: &self.pairing };
        self.relay.as_mut().map(|(relay, _)| (relay, authz))
    }
}
