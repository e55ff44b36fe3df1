//! What the registry keeps in `STATE_DIR`, and its file formats: this module
//! turns state into bytes and back; the shell reads and writes the files.
//!
//! One file per kind of record, each a versioned JSON document:
//!
//! | file | content |
//! |---|---|
//! | `signaling-secret` | the generated JWT secret, 64 hex digits ([`encode_secret`]) |
//! | `pairing.json` | `{"version":1,"codes":[{"sha256","expires_at","created_by"}],"entries":[{…OnboardingEntry,"device_token_sha256"}]}` |
//! | `tasks.json` | `{"version":1,"tasks":[Task…]}` |
//!
//! Why files per kind rather than one document: a change rewrites only its
//! own kind, so approving a device does not rewrite thousands of tasks and a
//! task update does not rewrite the pairing table; and a new kind of record
//! joins later as a new file without a migration of the others. The kinds
//! are independent, so nothing needs to change two files at once.
//!
//! The shell replaces each file whole (`chatixia_settings::durable`:
//! temporary file, fsync, rename, fsync of the directory), so after a crash
//! it holds either the old or the new document. The shell writes after the
//! core has changed a kind (its revision moved) and before it answers the
//! request that changed it. A file that does not parse, or whose version is
//! not one this registry writes, stops the start with an error naming it;
//! nothing ever writes over it, since the registry does not start.
//!
//! Readers tolerate missing optional fields, so a later version that only
//! adds fields can keep `version: 1`; anything else bumps the version.

use crate::core::digest::{from_hex, to_hex};
use crate::core::pairing::PairingSnapshot;
use crate::core::tasks::Task;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const SECRET_FILE: &str = "signaling-secret";
pub const PAIRING_FILE: &str = "pairing.json";
pub const TASKS_FILE: &str = "tasks.json";
pub const VERSION: u32 = 1;

/// Revisions of each persisted kind, as the core reports them; a kind is
/// saved when its revision differs from the one last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Revisions {
    pub pairing: u64,
    pub tasks: u64,
}

/// The content of one state file that needs writing. Serializing is left to
/// [`Dirty::encode`] so the shell can do it off the event loop.
#[derive(Debug, Clone)]
pub enum Dirty {
    Pairing(PairingSnapshot),
    Tasks(Vec<Task>),
}

impl Dirty {
    pub fn file(&self) -> &'static str {
        match self {
            Dirty::Pairing(_) => PAIRING_FILE,
            Dirty::Tasks(_) => TASKS_FILE,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Dirty::Pairing(pairing) => encode(&PairingDoc { version: VERSION, pairing }),
            Dirty::Tasks(tasks) => encode(&TasksDoc { version: VERSION, tasks }),
        }
    }
}

/// The documents, generic over owned (reading) and borrowed (writing)
/// content so that writing does not copy the snapshot.
#[derive(Serialize, Deserialize)]
struct PairingDoc<P> {
    version: u32,
    #[serde(flatten)]
    pairing: P,
}

#[derive(Serialize, Deserialize)]
struct TasksDoc<T> {
    version: u32,
    tasks: T,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: Option<u32>,
}

fn encode(doc: &impl Serialize) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    let mut bytes = serde_json::to_vec(doc).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Checks the version before the shape, so that a file from a newer
/// registry is reported as such rather than as a shape error.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let head: VersionOnly = serde_json::from_slice(bytes).map_err(|e| format!("not a valid state document: {e}"))?;
    match head.version {
        Some(VERSION) => serde_json::from_slice(bytes).map_err(|e| format!("malformed: {e}")),
        Some(v) => Err(format!("version {v} is not {VERSION}, the only one this registry understands")),
        None => Err("the \"version\" field is missing".into()),
    }
}

pub fn decode_pairing(bytes: &[u8]) -> Result<PairingSnapshot, String> {
    decode::<PairingDoc<PairingSnapshot>>(bytes).map(|d| d.pairing)
}

pub fn decode_tasks(bytes: &[u8]) -> Result<Vec<Task>, String> {
    decode::<TasksDoc<Vec<Task>>>(bytes).map(|d| d.tasks)
}

/// The signing secret as its file holds it: 64 hex digits and a newline.
pub fn encode_secret(secret: &[u8; 32]) -> Vec<u8> {
    format!("{}\n", to_hex(secret)).into_bytes()
}

/// The errors say what is wrong after the file's name. A file that is not
/// what we wrote is never replaced: a new secret would void every token.
pub fn decode_secret(bytes: &[u8]) -> Result<[u8; 32], String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not text".to_owned())?;
    from_hex(text.trim()).ok_or_else(|| "must hold 64 hex digits; refusing to replace it".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pairing::{OnboardingEntry, Status, StoredCode, StoredEntry};
    use serde_json::{Value, json};

    fn snapshot() -> PairingSnapshot {
        PairingSnapshot {
            codes: vec![StoredCode { sha256: "ab".repeat(32), expires_at: 1.5, created_by: "ops".into() }],
            entries: vec![StoredEntry {
                entry: OnboardingEntry {
                    id: "0a0b0c0d".into(),
                    agent_name: "pi".into(),
                    peer_id: "agent-010203".into(),
                    status: Status::Approved,
                    created_at: 1.0,
                    updated_at: 2.0,
                    invited_by: "ops".into(),
                },
                device_token_sha256: "cd".repeat(32),
            }],
        }
    }

    #[test]
    fn the_secret_file_is_hex_and_nothing_else_is_taken() {
        let secret = [0xab; 32];
        let bytes = encode_secret(&secret);
        assert_eq!(bytes, format!("{}\n", "ab".repeat(32)).into_bytes());
        assert_eq!(decode_secret(&bytes), Ok(secret));
        assert_eq!(decode_secret(format!("  {}\r\n", "AB".repeat(32)).as_bytes()), Ok(secret));
        assert!(decode_secret(b"abc").unwrap_err().contains("refusing"));
        assert!(decode_secret(&[0xff; 64]).unwrap_err().contains("not text"));
    }

    #[test]
    fn pairing_document_shape_and_round_trip() {
        let bytes = Dirty::Pairing(snapshot()).encode();
        assert_eq!(bytes.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"version": 1,
                "codes": [{"sha256": "ab".repeat(32), "expires_at": 1.5, "created_by": "ops"}],
                "entries": [{"id": "0a0b0c0d", "agent_name": "pi", "peer_id": "agent-010203", "status": "approved",
                    "created_at": 1.0, "updated_at": 2.0, "invited_by": "ops", "device_token_sha256": "cd".repeat(32)}]})
        );
        assert_eq!(decode_pairing(&bytes).unwrap(), snapshot());
    }

    #[test]
    fn tasks_document_round_trips() {
        let task: Task = serde_json::from_value(json!({"id": "t1", "state": "pending", "created_at": 1.0,
            "updated_at": 1.0, "payload": {"x": [1, 2]}}))
        .unwrap();
        let bytes = Dirty::Tasks(vec![task.clone()]).encode();
        assert_eq!(decode_tasks(&bytes).unwrap(), vec![task]);
        assert_eq!(decode_tasks(b"{\"version\":1,\"tasks\":[]}").unwrap(), vec![]);
    }

    #[test]
    fn damaged_or_foreign_documents_are_errors_that_say_why() {
        let good = Dirty::Pairing(snapshot()).encode();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() / 2].to_vec(), "not a valid state document"),
            (Vec::new(), "not a valid state document"),
            (b"\0\0\0\0".to_vec(), "not a valid state document"),
            (b"[]".to_vec(), "not a valid state document"),
            (b"{\"codes\":[],\"entries\":[]}".to_vec(), "\"version\" field is missing"),
            (b"{\"version\":2,\"codes\":[],\"entries\":[]}".to_vec(), "version 2"),
            (b"{\"version\":1,\"codes\":[]}".to_vec(), "malformed"),
            (b"{\"version\":1,\"codes\":[],\"entries\":[{\"id\":\"x\"}]}".to_vec(), "malformed"),
            (b"{\"version\":1,\"codes\":[],\"entries\":[{\"id\":\"x\",\"agent_name\":\"a\",\"peer_id\":\"p\",\"status\":\"sleeping\",\"created_at\":1,\"updated_at\":1,\"device_token_sha256\":\"\"}]}".to_vec(), "malformed"),
        ];
        for (bytes, needle) in cases {
            let err = decode_pairing(&bytes).unwrap_err();
            assert!(err.contains(needle), "{:?}: {err}", String::from_utf8_lossy(&bytes));
        }
        assert!(decode_tasks(b"{\"version\":1,\"tasks\":[{\"id\":1}]}").unwrap_err().contains("malformed"));
    }
}
