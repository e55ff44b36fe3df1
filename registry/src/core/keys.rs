//! The API keys file (docs/PROTOCOL.md, API keys file).
//!
//! Keys are held only as SHA-256 digests: a plain key in the file is hashed
//! on load, a `sha256:<hex>` entry is taken as its digest. Lookup hashes the
//! presented key, so no clear key stays in memory and comparison time does
//! not depend on how much of a key matched.

use crate::core::digest::{from_hex, sha256};
use chatixia_protocol::claims::{ROLE_ADMIN, ROLE_AGENT};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// The original's development key, only with `--dev`.
pub const DEV_KEY: &str = "ak_dev_001";
pub const DEV_PEER_ID: &str = "agent-001";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyEntry {
    pub peer_id: String,
    #[serde(default = "default_role")]
    pub role: String,
}

fn default_role() -> String {
    ROLE_AGENT.to_owned()
}

#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    by_digest: HashMap<[u8; 32], KeyEntry>,
    /// The peer_ids of all entries: authorization asks for every peer of
    /// every `peer_list` and twice per relayed frame, so no scan.
    peers: HashSet<String>,
}

impl KeyStore {
    pub fn dev() -> Self {
        let mut store = KeyStore::default();
        store
            .by_digest
            .insert(sha256(DEV_KEY.as_bytes()), KeyEntry { peer_id: DEV_PEER_ID.into(), role: ROLE_AGENT.into() });
        store.index_peers();
        store
    }

    fn index_peers(&mut self) {
        self.peers = HashSet::with_capacity(self.by_digest.len());
        self.peers.extend(self.by_digest.values().map(|e| e.peer_id.clone()));
    }

    /// Parses the file's text; both `{"keys": {...}}` and the bare map.
    ///
    /// The text is read in place (member names and entries borrowed from
    /// it) rather than as a `serde_json::Value` tree: for 10,000 keys that
    /// tree was 8 MB of small allocations, freed between the entries'
    /// strings, which left the heap too fragmented to give back.
    pub fn parse(text: &str) -> Result<Self, String> {
        let root: &RawValue = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let mut root = members(root).ok_or("expected a JSON object with a \"keys\" object")?;
        let entries = match root.remove(&Name::from("keys")) {
            Some(keys) => match members(keys) {
                Some(map) if !map.contains_key(&Name::from("peer_id")) => map,
                _ if root.is_empty() => return Err("\"keys\" must be an object of key entries".into()),
                _ => {
                    // A bare map that happens to contain a key named "keys".
                    root.insert(Name::from("keys"), keys);
                    root
                }
            },
            None => root,
        };
        let mut store = KeyStore { by_digest: HashMap::with_capacity(entries.len()), peers: HashSet::new() };
        for (Name(key), entry) in entries {
            let entry: KeyEntry =
                serde_json::from_str(entry.get()).map_err(|e| format!("entry {}: {e}", redact(&key)))?;
            if entry.peer_id.is_empty() {
                return Err(format!("entry {}: empty peer_id", redact(&key)));
            }
            if entry.role != ROLE_AGENT && entry.role != ROLE_ADMIN {
                return Err(format!(
                    "entry {}: role {:?} is neither \"agent\" nor \"admin\"",
                    redact(&key),
                    entry.role
                ));
            }
            let digest = match key.strip_prefix("sha256:") {
                Some(hex) => {
                    from_hex(hex).ok_or_else(|| format!("entry {}: sha256 needs 64 hex digits", redact(&key)))?
                }
                None if key.is_empty() => return Err("an entry has an empty key".into()),
                None => sha256(key.as_bytes()),
            };
            store.by_digest.insert(digest, entry);
        }
        store.index_peers();
        Ok(store)
    }

    /// Adds `other`'s keys; on a clash, `other` wins.
    pub fn merge(&mut self, other: KeyStore) {
        self.by_digest.extend(other.by_digest);
        self.index_peers();
    }

    pub fn lookup(&self, presented: &str) -> Option<&KeyEntry> {
        self.by_digest.get(&sha256(presented.as_bytes()))
    }

    pub fn has_peer(&self, peer_id: &str) -> bool {
        self.peers.contains(peer_id)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// A JSON object's member name, borrowed from the text unless escaped.
#[derive(PartialEq, Eq, Hash, Deserialize)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'a> From<&'a str> for Name<'a> {
    fn from(name: &'a str) -> Self {
        Name(Cow::Borrowed(name))
    }
}

/// The members of a JSON object, their values unparsed; `None` if `raw` is
/// not an object.
fn members(raw: &RawValue) -> Option<HashMap<Name<'_>, &RawValue>> {
    serde_json::from_str(raw.get()).ok()
}

/// Names a key in messages without writing it to a log.
fn redact(key: &str) -> String {
    if key.starts_with("sha256:") {
        return key.chars().take(15).collect::<String>() + "…";
    }
    let head: String = key.chars().take(4).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::digest::to_hex;

    #[test]
    fn reads_wrapped_and_bare_shapes() {
        for text in [
            r#"{"keys":{"k1":{"peer_id":"agent-1","role":"agent"},"k2":{"peer_id":"boss","role":"admin"}}}"#,
            r#"{"k1":{"peer_id":"agent-1","role":"agent"},"k2":{"peer_id":"boss","role":"admin"}}"#,
        ] {
            let s = KeyStore::parse(text).unwrap();
            assert_eq!(s.len(), 2);
            assert_eq!(s.lookup("k1").unwrap().peer_id, "agent-1");
            assert_eq!(s.lookup("k2").unwrap().role, "admin");
            assert!(s.lookup("k3").is_none());
            assert!(s.has_peer("boss"));
        }
    }

    #[test]
    fn escaped_names_and_the_last_of_duplicate_keys_count() {
        let s =
            KeyStore::parse(r#"{"keys":{"k\"1":{"peer_id":"a"},"k2":{"peer_id":"b"},"k2":{"peer_id":"c"}}}"#).unwrap();
        assert_eq!(s.lookup("k\"1").unwrap().peer_id, "a");
        assert_eq!(s.lookup("k2").unwrap().peer_id, "c");
    }

    #[test]
    fn matches_hashed_keys() {
        let digest = to_hex(&sha256(b"secret-key"));
        let text = format!(r#"{{"keys":{{"sha256:{digest}":{{"peer_id":"h","role":"agent"}}}}}}"#);
        let s = KeyStore::parse(&text).unwrap();
        assert_eq!(s.lookup("secret-key").unwrap().peer_id, "h");
        assert!(s.lookup(&format!("sha256:{digest}")).is_none());
    }

    #[test]
    fn malformed_files_are_errors_that_say_why() {
        let cases = [
            ("{", "not valid JSON"),
            ("[]", "JSON object"),
            (r#"{"keys":[]}"#, "\"keys\" must be an object"),
            (r#"{"keys":{"k":{"role":"agent"}}}"#, "peer_id"),
            (r#"{"keys":{"k":{"peer_id":"a","role":"root"}}}"#, "neither"),
            (r#"{"keys":{"sha256:zz":{"peer_id":"a"}}}"#, "64 hex"),
            (r#"{"keys":{"k":"a"}}"#, "entry"),
        ];
        for (text, needle) in cases {
            let err = KeyStore::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn errors_never_contain_the_key() {
        let err = KeyStore::parse(r#"{"keys":{"supersecretkey":{"peer_id":""}}}"#).unwrap_err();
        assert!(!err.contains("supersecretkey"), "{err}");
    }

    #[test]
    fn merge_reindexes_peers() {
        let mut s = KeyStore::parse(r#"{"ak_dev_001":{"peer_id":"old"},"k2":{"peer_id":"two"}}"#).unwrap();
        assert!(s.has_peer("old"));
        s.merge(KeyStore::dev());
        assert!(!s.has_peer("old"), "the dev key now maps to agent-001");
        assert!(s.has_peer(DEV_PEER_ID) && s.has_peer("two"));
    }

    #[test]
    fn dev_store_has_the_original_dev_key() {
        assert_eq!(KeyStore::dev().lookup(DEV_KEY).unwrap().peer_id, DEV_PEER_ID);
    }
}
