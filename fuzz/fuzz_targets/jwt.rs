//! Tokens as clients present them (WebSocket query, Bearer header).
#![no_main]

use chatixia_fuzz::SECRET;
use chatixia_registry::core::token::TokenIssuer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static ISSUER: OnceLock<TokenIssuer> = OnceLock::new();
    let issuer = ISSUER.get_or_init(|| TokenIssuer::new(SECRET).expect("secret"));
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = issuer.verify(&text, 1_700_000_000) {
        // Only tokens we minted verify; the fuzzer cannot forge the MAC.
        assert!(!id.peer_id.is_empty(), "{text}");
    }
});
