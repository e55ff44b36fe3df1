//! Who may use the relay: coturn's REST credentials, minted per peer, and
//! the nonces of the long-term credential mechanism (RFC 8489 §9.2).
//!
//! **Credentials.** Username `<expiry>:<peer_id>` (expiry in Unix seconds),
//! password base64(HMAC-SHA1(secret, username)): the registry hands them
//! out and checks them without storing anything. The integrity key
//! MD5(username:realm:password) is derived by stun-types.
//!
//! **Nonces** are stateless too: `<issued, 16 hex digits><MAC, 24 hex
//! digits>`, the MAC being HMAC-SHA1 under a key derived from the secret,
//! over the client (its UDP address or stream id) and the issue time. A
//! nonce is good for [`NONCE_LIFETIME`] on the wall clock the shell passes
//! in, for the client it was given to only; one from the future (a clock
//! stepped back, an earlier run) is stale as well. No clock is read and no
//! random number drawn.

use super::Client;
use ct_codecs::{Base64, Encoder as _, Hex};
use hmac_sha1_compact::HMAC;
use std::time::Duration;

/// How long a nonce is good for.
pub(super) const NONCE_LIFETIME: Duration = Duration::from_secs(600);

/// The credentials of `peer_id` until `expiry` (Unix seconds).
pub(super) fn mint(secret: &[u8], peer_id: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{peer_id}");
    let password = password(secret, &username);
    (username, password)
}

pub(super) fn password(secret: &[u8], username: &str) -> String {
    Base64::encode_to_string(HMAC::mac(username.as_bytes(), secret)).unwrap_or_default()
}

/// Why a username is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UsernameError {
    Malformed,
    Expired,
}

/// The peer_id of a REST username that has not expired at `unix_now`.
pub(super) fn peer_of(username: &str, unix_now: u64) -> Result<&str, UsernameError> {
    let (expiry, peer_id) = username.split_once(':').ok_or(UsernameError::Malformed)?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) || peer_id.is_empty() {
        return Err(UsernameError::Malformed);
    }
    let expiry: u64 = expiry.parse().map_err(|_| UsernameError::Malformed)?;
    if expiry <= unix_now {
        return Err(UsernameError::Expired);
    }
    Ok(peer_id)
}

/// Makes and checks nonces.
pub(super) struct Nonces {
    key: [u8; 20],
}

impl Nonces {
    /// The nonce key is derived from the secret, so that a MAC over a
    /// nonce can never double as a password.
    pub fn new(secret: &[u8]) -> Self {
        Nonces { key: HMAC::mac(b"chatixia relay nonce key", secret) }
    }

    pub fn issue(&self, client: Client, unix_now: u64) -> String {
        let mac = self.mac(client, unix_now);
        format!("{unix_now:016x}{}", Hex::encode_to_string(&mac[..12]).unwrap_or_default())
    }

    /// Whether `nonce` was issued by us to `client` less than
    /// [`NONCE_LIFETIME`] before `unix_now`.
    pub fn is_fresh(&self, nonce: &str, client: Client, unix_now: u64) -> bool {
        if nonce.len() != 40 || !nonce.is_ascii() {
            return false;
        }
        let (issued, mac) = nonce.split_at(16);
        let Ok(issued) = u64::from_str_radix(issued, 16) else { return false };
        if issued > unix_now || unix_now - issued >= NONCE_LIFETIME.as_secs() {
            return false;
        }
        let expected = Hex::encode_to_string(&self.mac(client, issued)[..12]).unwrap_or_default();
        ct_codecs::verify(expected.as_bytes(), mac.as_bytes())
    }

    fn mac(&self, client: Client, issued: u64) -> [u8; 20] {
        let input = match client {
            Client::Udp(addr) => format!("udp {addr} {issued}"),
            Client::Stream(conn) => format!("stream {conn} {issued}"),
        };
        HMAC::mac(input.as_bytes(), &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_coturn_rest() {
        // The same scheme as core::ice (checked there against Python's
        // hmac module), with the peer in the username.
        let (user, password) = mint(b"s3cret", "mesh", 87_400);
        assert_eq!(user, "87400:mesh");
        assert_eq!(password, "Z1pc+7Tkq6nfQA+ASqRaqc1D9gM=");
        assert_eq!(crate::core::ice::turn_credentials("s3cret", 1_000), (user, password));
    }

    #[test]
    fn usernames_name_a_peer_until_they_expire() {
        assert_eq!(peer_of("100:alpha", 99), Ok("alpha"));
        assert_eq!(peer_of("100:a:b", 99), Ok("a:b"));
        assert_eq!(peer_of("100:alpha", 100), Err(UsernameError::Expired));
        for bad in ["alpha", "100:", ":alpha", "+100:alpha", "1e3:alpha", "99999999999999999999999:a", "", " 100:a"] {
            assert_eq!(peer_of(bad, 0), Err(UsernameError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn nonces_are_bound_to_client_and_time() {
        let nonces = Nonces::new(b"secret");
        let a = Client::Udp("192.0.2.1:4000".parse().unwrap());
        let b = Client::Stream(7);
        let n = nonces.issue(a, 1_000);
        assert_eq!(n.len(), 40);
        assert!(nonces.is_fresh(&n, a, 1_000));
        assert!(nonces.is_fresh(&n, a, 1_599));
        assert!(!nonces.is_fresh(&n, a, 1_600), "stale after 10 minutes");
        assert!(!nonces.is_fresh(&n, a, 999), "issued in the future");
        assert!(!nonces.is_fresh(&n, b, 1_000), "another client's");
        assert!(!Nonces::new(b"other").is_fresh(&n, a, 1_000), "another secret's");
        let mut forged = n.clone().into_bytes();
        forged[39] = if forged[39] == b'0' { b'1' } else { b'0' };
        assert!(!nonces.is_fresh(std::str::from_utf8(&forged).unwrap(), a, 1_000));
        for junk in ["", "x", "é".repeat(20).as_str(), &n[..39], &format!("{n}0")] {
            assert!(!nonces.is_fresh(junk, a, 1_000), "{junk:?}");
        }
    }
}
