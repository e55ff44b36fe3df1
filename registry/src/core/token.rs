//! Signaling JWTs (docs/PROTOCOL.md, Device tokens and JWT; compatible with
//! the original's tokens).
//!
//! HS256 only; `exp = iat + 300`; `exp`, `sub`, `role` and `iat` required;
//! 60 s leeway on `exp`; any `aud` claim rejected. jwt-simple pins the
//! algorithm by key type, so `none`, HS384 and RS* tokens fail verification.

use chatixia_protocol::claims::{EXP_LEEWAY_SECS, TOKEN_LIFETIME_SECS};
use jwt_simple::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleClaim {
    role: String,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub peer_id: String,
    pub role: String,
}

pub struct TokenIssuer {
    key: HS256Key,
}

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 4096;
pub const MIN_SECRET_LEN: usize = 12;

impl TokenIssuer {
    /// jwt-simple refuses HMAC keys under 12 bytes; say so at startup
    /// rather than failing every token later.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!("SIGNALING_SECRET is {} bytes; at least {MIN_SECRET_LEN} are needed", secret.len()));
        }
        Ok(TokenIssuer { key: HS256Key::from_bytes(secret) })
    }

    /// Mints a token issued at `now_unix` (seconds).
    pub fn mint(&self, peer_id: &str, role: &str, now_unix: u64) -> String {
        let mut claims =
            Claims::with_custom_claims(RoleClaim { role: role.to_owned() }, Duration::from_secs(TOKEN_LIFETIME_SECS))
                .with_subject(peer_id);
        // Exactly the original's claim set: no `nbf`, times from the caller.
        claims.invalid_before = None;
        claims.issued_at = Some(Duration::from_secs(now_unix));
        claims.expires_at = Some(Duration::from_secs(now_unix + TOKEN_LIFETIME_SECS));
        // HMAC signing of a serializable claim set cannot fail.
        self.key.authenticate(claims).unwrap_or_default()
    }

    /// Verifies `token` at `now_unix`, returning a reason on failure.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, String> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err("missing or oversized token".into());
        }
        let options = VerificationOptions {
            time_tolerance: Some(Duration::from_secs(EXP_LEEWAY_SECS)),
            artificial_time: Some(Duration::from_secs(now_unix)),
            // The original does not check `iat` against the clock.
            accept_future: true,
            ..Default::default()
        };
        let claims =
            self.key.verify_token::<RoleClaim>(token, Some(options)).map_err(|e| format!("invalid token: {e}"))?;
        if claims.expires_at.is_none() {
            return Err("token has no exp".into());
        }
        if claims.issued_at.is_none() {
            return Err("token has no iat".into());
        }
        if claims.audiences.is_some() {
            return Err("token has an aud claim".into());
        }
        let peer_id = claims.subject.filter(|s| !s.is_empty()).ok_or("token has no sub")?;
        Ok(Identity { peer_id, role: claims.custom.role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ct_codecs::{Base64UrlSafeNoPadding, Decoder, Encoder};

    const NOW: u64 = 1_800_000_000;
    const S: &[u8] = b"test-secret-123";

    fn issuer(secret: &[u8]) -> TokenIssuer {
        TokenIssuer::new(secret).unwrap()
    }

    #[test]
    fn short_secrets_are_refused_up_front() {
        assert!(TokenIssuer::new(b"short").err().unwrap().contains("at least 12"));
    }

    fn b64(s: &str) -> String {
        Base64UrlSafeNoPadding::encode_to_string(s).unwrap()
    }

    /// Signs arbitrary header and claims JSON with HS256, as a foreign issuer would.
    fn forge(secret: &[u8], header: &str, claims: &str) -> String {
        let signing_input = format!("{}.{}", b64(header), b64(claims));
        let mac = hmac_sha256::HMAC::mac(signing_input.as_bytes(), secret);
        format!("{signing_input}.{}", Base64UrlSafeNoPadding::encode_to_string(mac).unwrap())
    }

    #[test]
    fn round_trip_has_exactly_the_compatible_claims() {
        let issuer = issuer(b"secret-secret");
        let token = issuer.mint("agent-001", "agent", NOW);
        let id = issuer.verify(&token, NOW + 10).unwrap();
        assert_eq!(id, Identity { peer_id: "agent-001".into(), role: "agent".into() });
        let body = token.split('.').nth(1).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&ct_codecs::Base64UrlSafeNoPadding::decode_to_vec(body, None).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"sub":"agent-001","role":"agent","iat":NOW,"exp":NOW+300}));
    }

    #[test]
    fn accepts_a_foreign_hs256_token_with_the_same_secret() {
        let header = r#"{"typ":"JWT","alg":"HS256"}"#;
        let claims = format!(r#"{{"sub":"agent-9","role":"agent","iat":{NOW},"exp":{}}}"#, NOW + 300);
        let token = forge(b"shared-secret", header, &claims);
        let id = issuer(b"shared-secret").verify(&token, NOW).unwrap();
        assert_eq!(id.peer_id, "agent-9");
    }

    #[test]
    fn expiry_has_sixty_seconds_of_leeway() {
        let issuer = issuer(S);
        let token = issuer.mint("a", "agent", NOW);
        assert!(issuer.verify(&token, NOW + 300 + 59).is_ok());
        assert!(issuer.verify(&token, NOW + 300 + 61).is_err());
    }

    #[test]
    fn rejects_bad_tokens() {
        let checker = issuer(S);
        let ok_claims = format!(r#"{{"sub":"a","role":"agent","iat":{NOW},"exp":{}}}"#, NOW + 300);
        let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
        let cases = [
            ("garbage", "not.a.jwt".to_owned()),
            ("empty", String::new()),
            ("other secret", issuer(b"other-secret").mint("a", "agent", NOW)),
            ("alg none", format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&ok_claims))),
            ("HS384", forge(S, r#"{"alg":"HS384","typ":"JWT"}"#, &ok_claims)),
            ("no exp", forge(S, hs256, &format!(r#"{{"sub":"a","role":"agent","iat":{NOW}}}"#))),
            ("no iat", forge(S, hs256, &format!(r#"{{"sub":"a","role":"agent","exp":{}}}"#, NOW + 9))),
            ("no sub", forge(S, hs256, &format!(r#"{{"role":"agent","iat":{NOW},"exp":{}}}"#, NOW + 9))),
            ("no role", forge(S, hs256, &format!(r#"{{"sub":"a","iat":{NOW},"exp":{}}}"#, NOW + 9))),
            (
                "aud",
                forge(S, hs256, &format!(r#"{{"sub":"a","role":"agent","aud":"x","iat":{NOW},"exp":{}}}"#, NOW + 9)),
            ),
            ("oversized", "a".repeat(MAX_TOKEN_LEN + 1)),
        ];
        for (what, token) in cases {
            assert!(checker.verify(&token, NOW).is_err(), "{what} was accepted");
        }
        assert!(checker.verify(&forge(S, hs256, &ok_claims), NOW).is_ok());
    }
}
