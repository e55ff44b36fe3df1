//! The state directory's files: the generated signing secret, and what the
//! registry saves (their formats are in `core::persist`). Every write goes
//! to a temporary file that is fsynced, renamed over the target, and the
//! directory fsynced, so a `kill -9` at any moment leaves either the old or
//! the new content, never a torn file.

use super::{Now, Registry};
use crate::core::persist::{self, PAIRING_FILE, SECRET_FILE, TASKS_FILE};
use crate::core::registry::SavedState;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub(super) struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens (creating with mode 0700 if needed) the state directory.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create state directory {}: {e}", path.display()))?;
        Ok(StateDir { path })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads a state file; `Ok(None)` when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.file(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Replaces `name` atomically and durably with `bytes`, mode 0600.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        chatixia_settings::durable::replace_file(&self.path, name, bytes)
            .map_err(|e| format!("cannot write {}: {e}", self.file(name).display()))
    }

    /// The signing secret kept in the state directory, generated on first
    /// use. A file that is not what we wrote is an error, never replaced.
    pub fn load_or_create_secret(&self) -> Result<Vec<u8>, String> {
        let path = self.file(SECRET_FILE);
        if let Some(bytes) = self.read(SECRET_FILE)? {
            let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o077).unwrap_or(0);
            if mode != 0 {
                log::warn!("{} is readable by others (mode {mode:o}); it should be 0600", path.display());
            }
            let secret = persist::decode_secret(&bytes).map_err(|e| format!("{} {e}", path.display()))?;
            return Ok(secret.to_vec());
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| format!("no randomness for the secret: {e}"))?;
        self.write_atomic(SECRET_FILE, &persist::encode_secret(&secret))?;
        log::info!("generated a new signing secret in {}", path.display());
        Ok(secret.to_vec())
    }
}

/// Hands the registry back what earlier runs saved. A file that cannot be
/// read or understood stops the start and is left as it is.
pub(super) fn restore(state: &StateDir, registry: &mut Registry, now: Now) -> Result<(), String> {
    let saved = SavedState { pairing: state.read(PAIRING_FILE)?, tasks: state.read(TASKS_FILE)? };
    let restored = registry.restore(saved, now).map_err(|e| {
        format!(
            "{}: {}. Refusing to start; the file was left as it is. Repair it, or move it away to start \
             without the {} it holds",
            state.file(e.file).display(),
            e.reason,
            e.holds
        )
    })?;
    if let Some(entries) = restored.pairing_entries {
        log::info!("restored {entries} pairing entries from {}", state.file(PAIRING_FILE).display());
    }
    if let Some(tasks) = restored.tasks {
        log::info!("restored {tasks} tasks from {}", state.file(TASKS_FILE).display());
    }
    if restored.tasks_dropped > 0 {
        let dropped = restored.tasks_dropped;
        log::warn!("dropped the {dropped} newest unfinished tasks: more than the limit of open tasks");
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chatixia-state-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn secret_is_generated_once_with_mode_0600_and_then_reused() {
        let dir = temp_dir("secret");
        let state = StateDir::open(&dir).unwrap();
        let a = state.load_or_create_secret().unwrap();
        let b = StateDir::open(&dir).unwrap().load_or_create_secret().unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, b);
        let mode = fs::metadata(dir.join(SECRET_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_secret_is_an_error_and_left_untouched() {
        let dir = temp_dir("corrupt");
        let state = StateDir::open(&dir).unwrap();
        fs::write(dir.join(SECRET_FILE), "abc").unwrap();
        let err = state.load_or_create_secret().unwrap_err();
        assert!(err.contains("refusing"), "{err}");
        assert_eq!(fs::read_to_string(dir.join(SECRET_FILE)).unwrap(), "abc");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_file() {
        let dir = temp_dir("atomic");
        let state = StateDir::open(&dir).unwrap();
        state.write_atomic("f", b"one").unwrap();
        state.write_atomic("f", b"two").unwrap();
        assert_eq!(state.read("f").unwrap().unwrap(), b"two");
        assert_eq!(state.read("missing").unwrap(), None);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
