//! What the operator decides about the registry: limits, ICE servers, CORS
//! and proxies. main.rs fills it from the settings.

use crate::core::hub::HubConfig;
use crate::core::pairing::PairingLimits;
use crate::core::ratelimit::Rate;
use crate::core::relay::RelayConfig;
use crate::core::tasks::Limits as TaskLimits;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub hub: HubConfig,
    pub token_rate: Rate,
    pub stun_urls: Vec<String>,
    pub turn: Option<(String, String)>,
    /// `None` means any origin (`*`), for non-admin routes only.
    pub cors_origins: Option<Vec<String>>,
    pub trusted_proxies: Vec<IpAddr>,
    pub pairing: PairingLimits,
    /// Pairing attempts per client address (IPv6: per /64).
    pub pair_rate: Rate,
    /// Code checks across all clients: a 6-digit code falls to guessing
    /// from enough addresses unless the total is bounded too.
    pub pair_global_rate: Rate,
    /// The registry's own TURN relay and the port it listens on (UDP and
    /// TCP); `None` when `RELAY_PORT` is 0.
    pub relay: Option<(RelayConfig, u16)>,
    /// What the task hub may hold (`TASKS_MAX_BYTES` sets `max_bytes`).
    pub task_limits: TaskLimits,
    /// `REST_AUTH=strict`: every route but health, the dashboard's assets
    /// and the credential exchanges needs a credential, reads included.
    pub rest_auth_strict: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            hub: HubConfig::default(),
            token_rate: Rate::new(10.0, 20.0),
            stun_urls: vec!["stun:stun.l.google.com:19302".into()],
            turn: None,
            cors_origins: None,
            trusted_proxies: Vec::new(),
            pairing: PairingLimits::default(),
            pair_rate: Rate::per_window(5, Duration::from_secs(60)),
            pair_global_rate: Rate::per_window(60, Duration::from_secs(60)),
            relay: None,
            task_limits: TaskLimits::default(),
            rest_auth_strict: false,
        }
    }
}
