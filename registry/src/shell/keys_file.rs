//! Reading the API keys file, at the start and on SIGHUP.

use crate::core::keys::KeyStore;
use std::path::Path;

/// The keys in `path`, plus the development key with `dev`. A missing file
/// is no error: the registry then runs on paired devices alone.
pub(super) fn load_keys(path: &Path, dev: bool) -> Result<KeyStore, String> {
    let mut keys = match std::fs::read_to_string(path) {
        Ok(text) => KeyStore::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::warn!(
                "no API keys file at {}; no static keys are loaded. Create it as \
                 {{\"keys\": {{\"<key>\": {{\"peer_id\": \"<id>\", \"role\": \"agent\"}}}}}} and send SIGHUP",
                path.display()
            );
            KeyStore::default()
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if dev {
        log::warn!("--dev: accepting the well-known development key for agent-001");
        keys.merge(KeyStore::dev());
    }
    Ok(keys)
}
