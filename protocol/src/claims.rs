//! JWT claims (docs/PROTOCOL.md §2.2, compatible): HS256, `exp = iat + 300`.

use serde::{Deserialize, Serialize};

/// Lifetime of a signaling JWT in seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 300;
/// Clock skew tolerated when checking `exp`.
pub const EXP_LEEWAY_SECS: u64 = 60;

pub const ROLE_AGENT: &str = "agent";
pub const ROLE_ADMIN: &str = "admin";
/// A paired device whose entry still awaits approval (docs/PROTOCOL.md §2.2, §3.4).
pub const ROLE_PENDING: &str = "pending";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub iat: u64,
    pub exp: u64,
}

/// Answer of `POST /api/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub peer_id: String,
    pub role: String,
}
