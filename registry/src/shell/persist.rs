//! Saving the registry's state before answering, so that an acknowledged
//! change survives a crash.
//!
//! The files are written on smol's blocking pool: an fsync can take tens of
//! milliseconds on an SD card, and the event loop must keep relaying
//! signaling meanwhile. That makes writes concurrent with new changes, so:
//! - one write at a time (the lock), since two renames racing could leave
//!   the older content last;
//! - each write takes the state as it is when the write starts, which
//!   includes every change made before it, so a request whose change is
//!   already covered by a finished write does not write again. Under load
//!   many requests thus share one write (group commit) instead of queueing
//!   one fsync each.

use super::state_dir::StateDir;
use crate::core::persist::{PAIRING_FILE, Revisions, TASKS_FILE};
use crate::core::registry::Registry;
use smol::lock::Mutex;
use std::cell::RefCell;

pub(super) struct Persister {
    dir: StateDir,
    /// What the files hold: the revisions of the last successful write.
    saved: Mutex<Revisions>,
}

impl Persister {
    /// `saved`: the revisions of the state as it was loaded from `dir`.
    pub(super) fn new(dir: StateDir, saved: Revisions) -> Self {
        Persister { dir, saved: Mutex::new(saved) }
    }

    /// Returns once the files hold the registry's state as of this call (or
    /// later). On an error the change stays in memory and unsaved; the next
    /// save tries again.
    pub(super) async fn save(&self, registry: &RefCell<Registry>) -> Result<(), String> {
        let mut saved = self.saved.lock().await;
        let (current, dirty) = {
            let registry = registry.borrow();
            (registry.revisions(), registry.changed_since(*saved))
        };
        if dirty.is_empty() {
            return Ok(());
        }
        let dir = self.dir.clone();
        let (written, error) = smol::unblock(move || {
            let mut written = Vec::new();
            for d in &dirty {
                if let Err(e) = dir.write_atomic(d.file(), &d.encode()) {
                    return (written, Some(e));
                }
                written.push(d.file());
            }
            (written, None)
        })
        .await;
        // Record each file that made it, so that when one fails the others
        // are not written again for nothing.
        for file in written {
            match file {
                PAIRING_FILE => saved.pairing = current.pairing,
                TASKS_FILE => saved.tasks = current.tasks,
                _ => {}
            }
        }
        error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::api::request::ApiRequest;
    use crate::core::config::RegistryConfig;
    use crate::core::keys::KeyStore;
    use crate::core::now::Now;
    use crate::core::persist::{TASKS_FILE, decode_tasks};
    use crate::core::token::TokenIssuer;
    use std::time::{Instant, SystemTime};

    fn registry() -> RefCell<Registry> {
        let now = Now { mono: Instant::now(), wall: SystemTime::now() };
        let tokens = TokenIssuer::new(b"persist-test-secret").unwrap();
        let rng = Box::new(|b: &mut [u8]| -> Result<(), String> {
            b.fill(7);
            Ok(())
        });
        RefCell::new(Registry::new(RegistryConfig::default(), KeyStore::default(), tokens, 1, rng, now))
    }

    fn submit(r: &RefCell<Registry>) {
        let now = Now { mono: Instant::now(), wall: SystemTime::now() };
        let submission = ApiRequest { method: "POST", path: "/api/hub/tasks", body: b"{}", ..Default::default() };
        assert_eq!(r.borrow_mut().handle_http(&submission, now).status, 200);
    }

    #[test]
    fn writes_only_what_changed_and_retries_after_a_failure() {
        let dir = std::env::temp_dir().join(format!("chatixia-persister-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        let r = registry();
        let p = Persister::new(state.clone(), r.borrow().revisions());
        smol::block_on(async {
            p.save(&r).await.unwrap();
            assert!(state.read(TASKS_FILE).unwrap().is_none(), "nothing changed, nothing written");

            submit(&r);
            p.save(&r).await.unwrap();
            let tasks = decode_tasks(&state.read(TASKS_FILE).unwrap().unwrap()).unwrap();
            assert_eq!(tasks.len(), 1);
            assert!(state.read(crate::core::persist::PAIRING_FILE).unwrap().is_none(), "pairing did not change");

            // Covered by the last write: no second write.
            std::fs::remove_file(state.file(TASKS_FILE)).unwrap();
            p.save(&r).await.unwrap();
            assert!(state.read(TASKS_FILE).unwrap().is_none());

            // The directory vanishes: the save fails and is not forgotten.
            submit(&r);
            std::fs::remove_dir_all(&dir).unwrap();
            assert!(p.save(&r).await.is_err());
            StateDir::open(&dir).unwrap();
            p.save(&r).await.unwrap();
            let tasks = decode_tasks(&state.read(TASKS_FILE).unwrap().unwrap()).unwrap();
            assert_eq!(tasks.len(), 2, "the retry wrote the unsaved change");
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_saves_leave_the_latest_state_on_disk() {
        let dir = std::env::temp_dir().join(format!("chatixia-persister-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        let r = registry();
        let p = Persister::new(state.clone(), r.borrow().revisions());
        // Each task changes the state and saves, as a request does; while
        // one write is in flight on the blocking pool the others run, change
        // the state further and queue on the lock.
        let ex = smol::LocalExecutor::new();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                ex.spawn(async {
                    submit(&r);
                    p.save(&r).await
                })
            })
            .collect();
        smol::block_on(ex.run(async {
            for t in tasks {
                t.await.unwrap();
            }
        }));
        let tasks = decode_tasks(&state.read(TASKS_FILE).unwrap().unwrap()).unwrap();
        assert_eq!(tasks.len(), 20);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
