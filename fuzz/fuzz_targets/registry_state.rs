//! What the registry reads from disk at start (the pairing and task state
//! files) and at SIGHUP (the keys file): a corrupt file must be refused
//! with a reason, never crash the start.
#![no_main]

use chatixia_fuzz::{now, registry};
use chatixia_registry::core::keys::KeyStore;
use chatixia_registry::core::persist;
use chatixia_registry::core::registry::SavedState;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            let _ = persist::decode_pairing(bytes);
            let _ = registry().restore(SavedState { pairing: Some(bytes.to_vec()), tasks: None }, now(Duration::ZERO));
        }
        1 => {
            let _ = persist::decode_tasks(bytes);
            let _ = registry().restore(SavedState { pairing: None, tasks: Some(bytes.to_vec()) }, now(Duration::ZERO));
        }
        2 => {
            let _ = persist::decode_secret(bytes);
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(bytes)
                && let Ok(keys) = KeyStore::parse(text)
            {
                registry().handle_keys_reloaded(keys);
            }
        }
    }
});
