//! Forged and decoded JWTs, for tests that need tokens the registry did not
//! mint: a foreign issuer with the same secret, an attacker with another
//! secret, or claims and algorithms the registry must refuse.

use ct_codecs::{Base64UrlSafeNoPadding, Decoder, Encoder};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

pub const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

pub fn b64url(data: impl AsRef<[u8]>) -> String {
    Base64UrlSafeNoPadding::encode_to_string(data).expect("base64")
}

/// `header.claims.signature` with an HMAC-SHA256 signature.
pub fn sign_hs256(secret: &[u8], header: &str, claims: &Value) -> String {
    let input = format!("{}.{}", b64url(header), b64url(claims.to_string()));
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), secret);
    format!("{input}.{}", b64url(mac))
}

/// Whether `token` carries a valid HMAC-SHA256 signature of `secret`.
pub fn verify_hs256(secret: &[u8], token: &str) -> bool {
    let Some((input, sig)) = token.rsplit_once('.') else { return false };
    b64url(hmac_sha256::HMAC::mac(input.as_bytes(), secret)) == sig
}

/// A correctly signed HS384 token (`alg: HS384`).
pub fn sign_hs384(secret: &[u8], claims: &Value) -> String {
    let input = format!("{}.{}", b64url(r#"{"alg":"HS384","typ":"JWT"}"#), b64url(claims.to_string()));
    let mac = hmac_sha512::sha384::HMAC::mac(input.as_bytes(), secret);
    format!("{input}.{}", b64url(mac))
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned(claims: &Value) -> String {
    format!("{}.{}.", b64url(r#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string()))
}

/// The claims the registry issues: `sub`, `role`, `iat`, `exp = iat + 300`.
pub fn claims(sub: &str, role: &str, iat: u64) -> Value {
    json!({"sub": sub, "role": role, "iat": iat, "exp": iat + 300})
}

/// A valid HS256 token for `sub`, issued now.
pub fn mint(secret: &[u8], sub: &str, role: &str) -> String {
    sign_hs256(secret, HS256, &claims(sub, role, now_unix()))
}

/// Decodes a token's header and claims without verifying anything.
pub fn decode(token: &str) -> (Value, Value) {
    let part = |s: &str| -> Value {
        let bytes = Base64UrlSafeNoPadding::decode_to_vec(s, None).expect("base64url part");
        serde_json::from_slice(&bytes).expect("JSON part")
    };
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {token}");
    (part(parts[0]), part(parts[1]))
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_matches_the_rfc_7515_example() {
        // RFC 7515 appendix A.1, with its exact header and claims bytes.
        let key = Base64UrlSafeNoPadding::decode_to_vec(
            "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
            None,
        )
        .unwrap();
        let header = "{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
        let claims = "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
        let input = format!("{}.{}", b64url(header), b64url(claims));
        let sig = b64url(hmac_sha256::HMAC::mac(input.as_bytes(), &key));
        assert_eq!(sig, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
    }
}
