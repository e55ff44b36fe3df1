//! Pairing (docs/PROTOCOL.md, Pairing): invite codes, onboarding entries and
//! device tokens.
//!
//! Sans-IO like the rest of the core: every call that depends on time takes
//! `now`, and every call that needs randomness takes a [`Random`] source (the
//! shell passes the OS CSPRNG, tests a scripted one), so the store's
//! behaviour is a function of its inputs.
//!
//! Secrets are held only as SHA-256 digests: a code or device token is hashed
//! when issued and a presented one is hashed before lookup, so neither this
//! store nor its persisted [`PairingSnapshot`] contains one in the clear.
//! (For a 6-digit code that only keeps it out of the file: anyone who can
//! read the state directory can brute-force 10^6 digests, but can also read
//! the signing secret next to it, so hashing codes harder would buy nothing.)
//!
//! Bounds, because redemption needs no credential: at most
//! [`PairingLimits::max_live_codes`] unexpired codes and
//! [`PairingLimits::max_entries`] entries. When the entries are full the
//! longest-finished rejected or revoked entry is forgotten; if every entry is
//! still pending or approved, redemption is refused before the code is spent.

use crate::core::digest::{from_hex, sha256, to_hex};
use crate::core::tasks::epoch_seconds;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

/// How long an invite code can be redeemed, in seconds (compatible).
pub const CODE_TTL_SECS: u64 = 300;
/// Longest accepted `agent_name`, in characters.
pub const MAX_AGENT_NAME_CHARS: usize = 128;

/// Fills the buffer from a CSPRNG, or says why it cannot.
pub type Random<'a> = &'a mut dyn FnMut(&mut [u8]) -> Result<(), String>;

/// Draws more than this many colliding values in a row only if the tables
/// are nearly full of the value space, which the limits rule out; it stops
/// a broken random source from looping forever.
const MAX_DRAWS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    PendingApproval,
    Approved,
    Rejected,
    Revoked,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::PendingApproval, Status::Approved, Status::Rejected, Status::Revoked];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::PendingApproval => "pending_approval",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Revoked => "revoked",
        }
    }

    /// Rejected and revoked entries never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Rejected | Status::Revoked)
    }
}

/// An entry as `/api/pairing/pending` and `/all` list it: the original's
/// fields (timestamps in epoch seconds) plus `invited_by`, the peer_id whose
/// credential generated the code. Never the device token, nor its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnboardingEntry {
    pub id: String,
    pub agent_name: String,
    pub peer_id: String,
    pub status: Status,
    pub created_at: f64,
    pub updated_at: f64,
    #[serde(default)]
    pub invited_by: String,
}

/// What a successful redemption returns: the entry, and the device token,
/// which exists in the clear only here, once.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    pub entry: OnboardingEntry,
    pub device_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairError {
    BadCodeFormat,
    NameRequired,
    NameTooLong,
    NameHasControlCharacters,
    InvalidCode,
    /// Every entry slot holds a pending or approved entry.
    Full,
    NoRandomness(String),
}

impl fmt::Display for PairError {
    /// The texts of the first three and `InvalidCode` are the compatible
    /// `{"error": …}` values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairError::BadCodeFormat => f.write_str("code must be exactly 6 digits"),
            PairError::NameRequired => f.write_str("agent_name is required"),
            PairError::NameTooLong => write!(f, "agent_name must be at most {MAX_AGENT_NAME_CHARS} characters"),
            PairError::NameHasControlCharacters => f.write_str("agent_name must not contain control characters"),
            PairError::InvalidCode => f.write_str("invalid or expired pairing code"),
            PairError::Full => f.write_str("too many paired devices; revoke or reject some first"),
            PairError::NoRandomness(e) => write!(f, "no randomness available: {e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeError {
    /// [`PairingLimits::max_live_codes`] codes are live (for an agent: all
    /// but [`ADMIN_RESERVE`] of them).
    Full,
    /// The inviter, not an admin, holds [`AGENT_CODES`] live codes.
    TooManyOwn,
    NoRandomness(String),
}

impl fmt::Display for CodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeError::Full => f.write_str("too many live pairing codes; wait for some to be used or expire"),
            CodeError::TooManyOwn => {
                write!(f, "at most {AGENT_CODES} live pairing codes per inviter; wait for some to be used or expire")
            }
            CodeError::NoRandomness(e) => write!(f, "no randomness available: {e}"),
        }
    }
}

/// The entry does not exist or is not in the state the transition starts
/// from; the API answers both alike (compatible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongState;

/// Live codes one inviter without the admin role may hold.
pub const AGENT_CODES: usize = 10;
/// Live codes only admins may take.
pub const ADMIN_RESERVE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairingLimits {
    pub max_live_codes: usize,
    pub max_entries: usize,
}

impl Default for PairingLimits {
    fn default() -> Self {
        PairingLimits { max_live_codes: 1_000, max_entries: 10_000 }
    }
}

/// A code as persisted: its digest, when it stops working, and who made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCode {
    pub sha256: String,
    pub expires_at: f64,
    #[serde(default)]
    pub created_by: String,
}

/// An entry as persisted: the listed fields and the device token's digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEntry {
    #[serde(flatten)]
    pub entry: OnboardingEntry,
    pub device_token_sha256: String,
}

/// Everything the store holds, for persisting; see [`crate::core::persist`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairingSnapshot {
    pub codes: Vec<StoredCode>,
    pub entries: Vec<StoredEntry>,
}

#[derive(Debug, Clone)]
struct Code {
    expires_at: f64,
    created_by: String,
}

impl Code {
    /// Valid until `expires_at`; and, should the wall clock have gone back,
    /// never for longer than a fresh code would be, so a clock jump cannot
    /// stretch a code's life.
    fn is_live(&self, now: f64) -> bool {
        now < self.expires_at && self.expires_at - now <= CODE_TTL_SECS as f64
    }
}

#[derive(Debug, Clone)]
struct Entry {
    public: OnboardingEntry,
    token_digest: [u8; 32],
}

#[derive(Debug, Clone, Default)]
pub struct PairingStore {
    limits: PairingLimits,
    codes: HashMap<[u8; 32], Code>,
    entries: HashMap<String, Entry>,
    by_token: HashMap<[u8; 32], String>,
    by_peer: HashMap<String, String>,
    revision: u64,
}

impl PairingStore {
    pub fn new(limits: PairingLimits) -> Self {
        PairingStore { limits, ..Default::default() }
    }

    /// Grows whenever what [`PairingStore::snapshot`] returns changes; the
    /// shell persists when it moved.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `POST /api/pairing/generate-code`: a fresh 6-digit code, different
    /// from every live one, valid for [`CODE_TTL_SECS`]. An inviter that is
    /// not an admin may hold [`AGENT_CODES`] live codes, and agents
    /// together leave [`ADMIN_RESERVE`] of the bound to admins, so no agent
    /// key can stop an admin from inviting.
    pub fn generate_code(
        &mut self,
        created_by: &str,
        admin: bool,
        now: SystemTime,
        rng: Random,
    ) -> Result<String, CodeError> {
        let now = epoch_seconds(now);
        self.purge_codes(now);
        if self.codes.len() >= self.limits.max_live_codes {
            return Err(CodeError::Full);
        }
        if !admin {
            let own = self.codes.values().filter(|c| c.created_by == created_by).count();
            if own >= AGENT_CODES {
                return Err(CodeError::TooManyOwn);
            }
            if self.codes.len() + ADMIN_RESERVE >= self.limits.max_live_codes {
                return Err(CodeError::Full);
            }
        }
        for _ in 0..MAX_DRAWS {
            let code = format!("{:06}", uniform_below(1_000_000, rng).map_err(CodeError::NoRandomness)?);
            let digest = sha256(code.as_bytes());
            if self.codes.contains_key(&digest) {
                continue;
            }
            let expires_at = now + CODE_TTL_SECS as f64;
            self.codes.insert(digest, Code { expires_at, created_by: created_by.to_owned() });
            self.revision += 1;
            return Ok(code);
        }
        Err(CodeError::Full)
    }

    /// Unexpired codes, as of `now`.
    pub fn live_codes(&self, now: SystemTime) -> usize {
        let now = epoch_seconds(now);
        self.codes.values().filter(|c| c.is_live(now)).count()
    }

    /// The checks that need no state, in the original's order; returns the
    /// trimmed name. [`PairingStore::redeem`] applies them too.
    pub fn check_request(code: &str, agent_name: &str) -> Result<String, PairError> {
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PairError::BadCodeFormat);
        }
        let name = agent_name.trim();
        if name.is_empty() {
            return Err(PairError::NameRequired);
        }
        if name.chars().count() > MAX_AGENT_NAME_CHARS {
            return Err(PairError::NameTooLong);
        }
        // Names end up in terminals (the admin CLI) and logs.
        if name.chars().any(char::is_control) {
            return Err(PairError::NameHasControlCharacters);
        }
        Ok(name.to_owned())
    }

    /// `POST /api/pairing/pair`: spends the code and creates a pending entry
    /// with a fresh id, peer_id and device token. `peer_taken` says which
    /// peer_ids exist outside this store (API keys). Nothing changes unless
    /// it succeeds; in particular the code stays usable after any error.
    pub fn redeem(
        &mut self,
        code: &str,
        agent_name: &str,
        now: SystemTime,
        rng: Random,
        peer_taken: &dyn Fn(&str) -> bool,
    ) -> Result<Paired, PairError> {
        let name = Self::check_request(code, agent_name)?;
        let now = epoch_seconds(now);
        let code_digest = sha256(code.as_bytes());
        let invited_by = match self.codes.get(&code_digest) {
            Some(c) if c.is_live(now) => c.created_by.clone(),
            _ => return Err(PairError::InvalidCode),
        };
        let forget = self.room_for_one().ok_or(PairError::Full)?;

        let random = |rng: &mut dyn FnMut(&mut [u8]) -> Result<(), String>, n| {
            let mut buf = vec![0u8; n];
            rng(&mut buf).map(|()| to_hex(&buf)).map_err(PairError::NoRandomness)
        };
        let id = draw(|| random(rng, 4), |id| self.entries.contains_key(id))?;
        let peer_id =
            draw(|| Ok(format!("agent-{}", random(rng, 3)?)), |p| self.by_peer.contains_key(p) || peer_taken(p))?;
        let device_token = format!("dt_{}", random(rng, 16)?);
        let token_digest = sha256(device_token.as_bytes());
        if self.by_token.contains_key(&token_digest) {
            // 128 random bits equal to an existing token: the source is broken.
            return Err(PairError::NoRandomness("the random source repeats itself".into()));
        }

        if let Some(old) = forget {
            self.remove(&old);
        }
        self.codes.remove(&code_digest);
        let entry = OnboardingEntry {
            id: id.clone(),
            agent_name: name,
            peer_id: peer_id.clone(),
            status: Status::PendingApproval,
            created_at: now,
            updated_at: now,
            invited_by,
        };
        self.by_token.insert(token_digest, id.clone());
        self.by_peer.insert(peer_id, id.clone());
        self.entries.insert(id, Entry { public: entry.clone(), token_digest });
        self.revision += 1;
        Ok(Paired { entry, device_token })
    }

    /// `pending_approval` → `approved`.
    pub fn approve(&mut self, id: &str, now: SystemTime) -> Result<OnboardingEntry, WrongState> {
        self.transition(id, Status::PendingApproval, Status::Approved, now)
    }

    /// `pending_approval` → `rejected`.
    pub fn reject(&mut self, id: &str, now: SystemTime) -> Result<OnboardingEntry, WrongState> {
        self.transition(id, Status::PendingApproval, Status::Rejected, now)
    }

    /// `approved` → `revoked`.
    pub fn revoke(&mut self, id: &str, now: SystemTime) -> Result<OnboardingEntry, WrongState> {
        self.transition(id, Status::Approved, Status::Revoked, now)
    }

    fn transition(
        &mut self,
        id: &str,
        from: Status,
        to: Status,
        now: SystemTime,
    ) -> Result<OnboardingEntry, WrongState> {
        let entry = self.entries.get_mut(id).filter(|e| e.public.status == from).ok_or(WrongState)?;
        entry.public.status = to;
        entry.public.updated_at = epoch_seconds(now);
        self.revision += 1;
        Ok(entry.public.clone())
    }

    /// Entries, oldest first; only pending ones with `pending_only`.
    pub fn list(&self, pending_only: bool) -> Vec<OnboardingEntry> {
        let mut list: Vec<OnboardingEntry> = self
            .entries
            .values()
            .filter(|e| !pending_only || e.public.status == Status::PendingApproval)
            .map(|e| e.public.clone())
            .collect();
        list.sort_by(|a, b| a.created_at.total_cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        list
    }

    pub fn get(&self, id: &str) -> Option<&OnboardingEntry> {
        self.entries.get(id).map(|e| &e.public)
    }

    /// The entry a presented device token belongs to, whatever its status.
    pub fn by_device_token(&self, token: &str) -> Option<&OnboardingEntry> {
        let id = self.by_token.get(&sha256(token.as_bytes()))?;
        self.get(id)
    }

    pub fn by_peer_id(&self, peer_id: &str) -> Option<&OnboardingEntry> {
        self.get(self.by_peer.get(peer_id)?)
    }

    /// Whether `peer_id` belongs to an approved entry: such peers are in the
    /// mesh like those of API keys.
    pub fn is_approved(&self, peer_id: &str) -> bool {
        self.by_peer_id(peer_id).is_some_and(|e| e.status == Status::Approved)
    }

    /// Whether `peer_id` belongs to a rejected or revoked entry: its tokens,
    /// even unexpired ones, are refused.
    pub fn is_shut_out(&self, peer_id: &str) -> bool {
        self.by_peer_id(peer_id).is_some_and(|e| e.status.is_terminal())
    }

    pub fn count(&self, status: Status) -> usize {
        self.entries.values().filter(|e| e.public.status == status).count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Everything held, in a stable order (codes by expiry, entries oldest
    /// first), so equal content serializes to equal bytes.
    pub fn snapshot(&self) -> PairingSnapshot {
        let mut codes: Vec<StoredCode> = self
            .codes
            .iter()
            .map(|(digest, c)| StoredCode {
                sha256: to_hex(digest),
                expires_at: c.expires_at,
                created_by: c.created_by.clone(),
            })
            .collect();
        codes.sort_by(|a, b| a.expires_at.total_cmp(&b.expires_at).then_with(|| a.sha256.cmp(&b.sha256)));
        let entries = self
            .list(false)
            .into_iter()
            .map(|entry| {
                let digest = self.entries[&entry.id].token_digest;
                StoredEntry { entry, device_token_sha256: to_hex(&digest) }
            })
            .collect();
        PairingSnapshot { codes, entries }
    }

    /// Rebuilds a store from a snapshot (read back from disk), dropping codes
    /// that expired meanwhile. A snapshot this store could not have written
    /// (bad digests, duplicate ids, peer_ids or tokens) is an error.
    pub fn restore(snapshot: PairingSnapshot, limits: PairingLimits, now: SystemTime) -> Result<Self, String> {
        let now = epoch_seconds(now);
        let mut store = PairingStore::new(limits);
        for c in snapshot.codes {
            let digest =
                from_hex(&c.sha256).ok_or_else(|| format!("code digest {:?} is not 64 hex digits", c.sha256))?;
            let code = Code { expires_at: c.expires_at, created_by: c.created_by };
            if code.is_live(now) {
                store.codes.insert(digest, code);
            }
        }
        for stored in snapshot.entries {
            let e = stored.entry;
            let digest = from_hex(&stored.device_token_sha256)
                .ok_or_else(|| format!("entry {:?}: device token digest is not 64 hex digits", e.id))?;
            if e.id.is_empty() || e.peer_id.is_empty() {
                return Err(format!("entry {:?} has an empty id or peer_id", e.id));
            }
            if store.entries.contains_key(&e.id) {
                return Err(format!("entry id {:?} appears twice", e.id));
            }
            if store.by_peer.insert(e.peer_id.clone(), e.id.clone()).is_some() {
                return Err(format!("peer_id {:?} appears twice", e.peer_id));
            }
            if store.by_token.insert(digest, e.id.clone()).is_some() {
                return Err(format!("entry {:?}: device token digest appears twice", e.id));
            }
            store.entries.insert(e.id.clone(), Entry { public: e, token_digest: digest });
        }
        // Over the bounds (e.g. the limits were lowered): make room the way
        // redemption would, never dropping a pending or approved entry.
        while store.entries.len() > limits.max_entries {
            match store.oldest_finished() {
                Some(id) => store.remove(&id),
                None => break,
            }
        }
        Ok(store)
    }

    /// Forgets codes that can no longer be redeemed.
    fn purge_codes(&mut self, now: f64) {
        let before = self.codes.len();
        self.codes.retain(|_, c| c.is_live(now));
        if self.codes.len() != before {
            self.revision += 1;
        }
    }

    /// `Some(None)`: there is room; `Some(Some(id))`: there is room once the
    /// entry `id` is forgotten; `None`: no room.
    fn room_for_one(&self) -> Option<Option<String>> {
        if self.entries.len() < self.limits.max_entries {
            return Some(None);
        }
        self.oldest_finished().map(Some)
    }

    /// The rejected or revoked entry that finished first.
    fn oldest_finished(&self) -> Option<String> {
        self.entries
            .values()
            .filter(|e| e.public.status.is_terminal())
            .min_by(|a, b| {
                a.public.updated_at.total_cmp(&b.public.updated_at).then_with(|| a.public.id.cmp(&b.public.id))
            })
            .map(|e| e.public.id.clone())
    }

    fn remove(&mut self, id: &str) {
        if let Some(e) = self.entries.remove(id) {
            self.by_peer.remove(&e.public.peer_id);
            self.by_token.remove(&e.token_digest);
            self.revision += 1;
        }
    }
}

/// Draws values until one is not `taken`.
fn draw(
    mut next: impl FnMut() -> Result<String, PairError>,
    taken: impl Fn(&str) -> bool,
) -> Result<String, PairError> {
    for _ in 0..MAX_DRAWS {
        let value = next()?;
        if !taken(&value) {
            return Ok(value);
        }
    }
    Err(PairError::Full)
}

/// A uniform integer in `0..bound` by rejection sampling: taking a plain
/// 32-bit value modulo `bound` would favour the low codes.
fn uniform_below(bound: u32, rng: Random) -> Result<u32, String> {
    let zone = u32::MAX - u32::MAX % bound;
    for _ in 0..MAX_DRAWS {
        let mut buf = [0u8; 4];
        rng(&mut buf)?;
        let v = u32::from_le_bytes(buf);
        if v < zone {
            return Ok(v % bound);
        }
    }
    Err("the random source keeps returning values out of range".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::{Duration, UNIX_EPOCH};

    const T0: u64 = 1_800_000_000;

    fn at(secs: f64) -> SystemTime {
        let t0 = UNIX_EPOCH + Duration::from_secs(T0);
        if secs >= 0.0 { t0 + Duration::from_secs_f64(secs) } else { t0 - Duration::from_secs_f64(-secs) }
    }

    /// A deterministic source: a counter run through splitmix64.
    struct Counter(u64);
    impl Counter {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), String> {
            for chunk in buf.chunks_mut(8) {
                self.0 += 1;
                let mut z = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes()[..chunk.len()]);
            }
            Ok(())
        }
    }

    /// Returns the scripted byte strings in order, then fails.
    struct Script(VecDeque<Vec<u8>>);
    impl Script {
        fn of(parts: &[&[u8]]) -> Self {
            Script(parts.iter().map(|p| p.to_vec()).collect())
        }
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), String> {
            let next = self.0.pop_front().ok_or("script exhausted")?;
            assert_eq!(next.len(), buf.len(), "scripted {next:?} for a read of {}", buf.len());
            buf.copy_from_slice(&next);
            Ok(())
        }
    }

    fn store() -> PairingStore {
        PairingStore::new(PairingLimits::default())
    }

    fn nobody(_: &str) -> bool {
        false
    }

    /// A code, redeemed at `when`; returns the result.
    fn pair(s: &mut PairingStore, rng: &mut Counter, name: &str, when: f64) -> Paired {
        let code = s.generate_code("inviter", true, at(when), &mut |b| rng.fill(b)).unwrap();
        s.redeem(&code, name, at(when), &mut |b| rng.fill(b), &nobody).unwrap()
    }

    #[test]
    fn codes_are_six_digits_single_use_and_live_300_seconds() {
        let mut s = store();
        let mut rng = Counter(0);
        let code = s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        assert_eq!(s.live_codes(at(299.9)), 1);
        assert_eq!(s.live_codes(at(300.0)), 0);

        let p = s.redeem(&code, "dev", at(299.0), &mut |b| rng.fill(b), &nobody).unwrap();
        assert_eq!(p.entry.invited_by, "ops");
        let again = s.redeem(&code, "dev", at(299.0), &mut |b| rng.fill(b), &nobody);
        assert_eq!(again.unwrap_err(), PairError::InvalidCode, "single use");

        let late = s.generate_code("ops", true, at(1000.0), &mut |b| rng.fill(b)).unwrap();
        let r = s.redeem(&late, "dev", at(1300.0), &mut |b| rng.fill(b), &nobody);
        assert_eq!(r.unwrap_err(), PairError::InvalidCode, "expired at exactly 300 s");
        assert_eq!(s.live_codes(at(1300.0)), 0);
    }

    #[test]
    fn agents_hold_few_codes_and_cannot_crowd_out_admins() {
        let mut s = PairingStore::new(PairingLimits { max_live_codes: 130, ..PairingLimits::default() });
        let mut rng = Counter(0);
        let mut make =
            |s: &mut PairingStore, who: &str, admin: bool| s.generate_code(who, admin, at(0.0), &mut |b| rng.fill(b));
        for _ in 0..AGENT_CODES {
            make(&mut s, "agent-a", false).unwrap();
        }
        assert_eq!(make(&mut s, "agent-a", false), Err(CodeError::TooManyOwn));
        // Other agents fill what is not reserved for admins ...
        make(&mut s, "agent-b", false).unwrap();
        make(&mut s, "agent-c", false).unwrap();
        assert_eq!(s.live_codes(at(0.0)), 12);
        for _ in 0..18 {
            let _ = make(&mut s, "agent-d", false);
            let _ = make(&mut s, "agent-e", false);
        }
        assert_eq!(s.live_codes(at(0.0)), 130 - ADMIN_RESERVE);
        assert_eq!(make(&mut s, "agent-f", false), Err(CodeError::Full));
        // ... and an admin still gets codes, up to the bound.
        for _ in 0..ADMIN_RESERVE {
            make(&mut s, "ops", true).unwrap();
        }
        assert_eq!(make(&mut s, "ops", true), Err(CodeError::Full));
    }

    #[test]
    fn a_wall_clock_that_went_back_does_not_stretch_a_code() {
        let mut s = store();
        let mut rng = Counter(0);
        let code = s.generate_code("ops", true, at(1000.0), &mut |b| rng.fill(b)).unwrap();
        // An hour earlier by the clock: the code would otherwise live 3900 s.
        let r = s.redeem(&code, "dev", at(-2600.0), &mut |b| rng.fill(b), &nobody);
        assert_eq!(r.unwrap_err(), PairError::InvalidCode);
    }

    #[test]
    fn code_generation_is_uniform_and_never_reuses_a_live_code() {
        let mut s = store();
        // 0 → "000000"; then 0 again (collides, drawn again); u32::MAX is in
        // the rejected zone above the last full multiple of 10^6; then 7.
        let mut rng =
            Script::of(&[&0u32.to_le_bytes(), &0u32.to_le_bytes(), &u32::MAX.to_le_bytes(), &7u32.to_le_bytes()]);
        let a = s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap();
        let b = s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("000000", "000007"));
        assert_eq!(s.live_codes(at(1.0)), 2);
        // Both still work.
        let mut rng = Counter(0);
        for code in [a, b] {
            assert!(s.redeem(&code, "dev", at(1.0), &mut |b| rng.fill(b), &nobody).is_ok());
        }
    }

    #[test]
    fn an_expired_code_may_be_drawn_again() {
        let mut s = store();
        let zero = 0u32.to_le_bytes();
        let mut rng = Script::of(&[&zero, &zero]);
        assert_eq!(s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap(), "000000");
        assert_eq!(s.generate_code("ops", true, at(400.0), &mut |b| rng.fill(b)).unwrap(), "000000");
    }

    #[test]
    fn live_codes_are_bounded_and_a_failing_source_is_an_error() {
        let mut s = PairingStore::new(PairingLimits { max_live_codes: 2, max_entries: 10 });
        let mut rng = Counter(0);
        for _ in 0..2 {
            s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap();
        }
        assert_eq!(s.generate_code("ops", true, at(1.0), &mut |b| rng.fill(b)), Err(CodeError::Full));
        // Once they expire there is room again.
        assert!(s.generate_code("ops", true, at(301.0), &mut |b| rng.fill(b)).is_ok());
        let mut broken = |_: &mut [u8]| Err("no entropy".to_owned());
        assert!(matches!(s.generate_code("ops", true, at(302.0), &mut broken), Err(CodeError::NoRandomness(_))));
    }

    #[test]
    fn codes_and_tokens_are_held_only_as_digests() {
        let mut s = store();
        let mut rng = Counter(0);
        let code = s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap();
        let unused = s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap();
        let p = s.redeem(&code, "dev", at(0.0), &mut |b| rng.fill(b), &nobody).unwrap();
        let text = serde_json::to_string(&s.snapshot()).unwrap();
        for secret in [&unused, &p.device_token, &p.device_token[3..].to_owned()] {
            assert!(!text.contains(secret.as_str()), "{secret} in {text}");
        }
        assert!(text.contains(&to_hex(&sha256(unused.as_bytes()))));
        assert!(text.contains(&to_hex(&sha256(p.device_token.as_bytes()))));
    }

    #[test]
    fn redemption_gives_the_compatible_shapes() {
        let mut s = store();
        let mut rng = Counter(0);
        let p = pair(&mut s, &mut rng, "  kitchen-pi  ", 5.0);
        let is_hex =
            |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        assert!(is_hex(&p.entry.id, 8), "{}", p.entry.id);
        assert!(is_hex(p.entry.peer_id.strip_prefix("agent-").unwrap(), 6), "{}", p.entry.peer_id);
        assert!(is_hex(p.device_token.strip_prefix("dt_").unwrap(), 32), "{}", p.device_token);
        assert_eq!(p.entry.agent_name, "kitchen-pi", "trimmed");
        assert_eq!(p.entry.status, Status::PendingApproval);
        assert_eq!((p.entry.created_at, p.entry.updated_at), (T0 as f64 + 5.0, T0 as f64 + 5.0));
        let listed = serde_json::to_value(s.list(true)).unwrap();
        assert_eq!(
            listed,
            serde_json::json!([{
                "id": p.entry.id, "agent_name": "kitchen-pi", "peer_id": p.entry.peer_id,
                "status": "pending_approval", "created_at": T0 as f64 + 5.0, "updated_at": T0 as f64 + 5.0,
                "invited_by": "inviter"
            }])
        );
    }

    #[test]
    fn request_checks_come_in_the_original_order_and_spend_nothing() {
        let mut s = store();
        let mut rng = Counter(0);
        let code = s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap();
        let long = "x".repeat(MAX_AGENT_NAME_CHARS + 1);
        let other = if code == "123456" { "654321" } else { "123456" };
        let cases = [
            ("12345", "dev", PairError::BadCodeFormat),
            ("1234567", "dev", PairError::BadCodeFormat),
            ("12345a", "", PairError::BadCodeFormat),
            ("１２３４５６", "dev", PairError::BadCodeFormat),
            (" 12345", "dev", PairError::BadCodeFormat),
            (&code, "", PairError::NameRequired),
            (&code, " \t ", PairError::NameRequired),
            (&code, &long, PairError::NameTooLong),
            (&code, "evil\u{1b}[2J", PairError::NameHasControlCharacters),
            (other, "dev", PairError::InvalidCode),
        ];
        for (c, name, want) in cases {
            assert_eq!(s.redeem(c, name, at(1.0), &mut |b| rng.fill(b), &nobody).unwrap_err(), want, "{c:?} {name:?}");
        }
        let ok = "é".repeat(MAX_AGENT_NAME_CHARS);
        assert!(s.redeem(&code, &ok, at(1.0), &mut |b| rng.fill(b), &nobody).is_ok(), "the code survived the errors");
    }

    #[test]
    fn a_failing_source_at_redemption_leaves_the_code_usable() {
        let mut s = store();
        let mut rng = Counter(0);
        let code = s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap();
        let rev = s.revision();
        let mut broken = |_: &mut [u8]| Err("no entropy".to_owned());
        let r = s.redeem(&code, "dev", at(1.0), &mut broken, &nobody);
        assert!(matches!(r, Err(PairError::NoRandomness(_))));
        assert_eq!((s.revision(), s.len()), (rev, 0), "nothing changed");
        assert!(s.redeem(&code, "dev", at(1.0), &mut |b| rng.fill(b), &nobody).is_ok());
    }

    #[test]
    fn ids_and_peer_ids_are_unique_including_api_key_peer_ids() {
        let mut s = store();
        let mut codes = Counter(0);
        let c1 = s.generate_code("ops", true, at(0.0), &mut |b| codes.fill(b)).unwrap();
        let c2 = s.generate_code("ops", true, at(0.0), &mut |b| codes.fill(b)).unwrap();
        let id = [0xaa, 0xbb, 0xcc, 0xdd];
        let peer = [0x01, 0x02, 0x03];
        let taken_by_key = [0x0a, 0x0b, 0x0c];
        let mut rng = Script::of(&[&id, &taken_by_key, &peer, &[1; 16]]);
        let keys = |p: &str| p == "agent-0a0b0c";
        let first = s.redeem(&c1, "one", at(1.0), &mut |b| rng.fill(b), &keys).unwrap();
        assert_eq!((first.entry.id.as_str(), first.entry.peer_id.as_str()), ("aabbccdd", "agent-010203"));
        // The same id and peer_id come up again and are drawn anew.
        let mut rng = Script::of(&[&id, &[0x11, 0x22, 0x33, 0x44], &peer, &[4, 5, 6], &[2; 16]]);
        let second = s.redeem(&c2, "two", at(1.0), &mut |b| rng.fill(b), &keys).unwrap();
        assert_eq!((second.entry.id.as_str(), second.entry.peer_id.as_str()), ("11223344", "agent-040506"));
    }

    #[test]
    fn status_transitions_follow_the_spec_and_nothing_else() {
        use Status::*;
        type Op = fn(&mut PairingStore, &str, SystemTime) -> Result<OnboardingEntry, WrongState>;
        let ops: [(&str, Op); 3] =
            [("approve", PairingStore::approve), ("reject", PairingStore::reject), ("revoke", PairingStore::revoke)];
        // (state reached by the setup, op, resulting state or None = refused)
        let table: [(Status, &str, Option<Status>); 12] = [
            (PendingApproval, "approve", Some(Approved)),
            (PendingApproval, "reject", Some(Rejected)),
            (PendingApproval, "revoke", None),
            (Approved, "approve", None),
            (Approved, "reject", None),
            (Approved, "revoke", Some(Revoked)),
            (Rejected, "approve", None),
            (Rejected, "reject", None),
            (Rejected, "revoke", None),
            (Revoked, "approve", None),
            (Revoked, "reject", None),
            (Revoked, "revoke", None),
        ];
        for (from, op_name, want) in table {
            let mut s = store();
            let mut rng = Counter(0);
            let id = pair(&mut s, &mut rng, "dev", 0.0).entry.id;
            match from {
                PendingApproval => {}
                Approved => drop(s.approve(&id, at(1.0)).unwrap()),
                Rejected => drop(s.reject(&id, at(1.0)).unwrap()),
                Revoked => {
                    s.approve(&id, at(1.0)).unwrap();
                    s.revoke(&id, at(1.0)).unwrap();
                }
            }
            let op = ops.iter().find(|(n, _)| *n == op_name).unwrap().1;
            let rev = s.revision();
            let got = op(&mut s, &id, at(7.0));
            match want {
                Some(to) => {
                    let e = got.unwrap();
                    assert_eq!((e.status, e.updated_at), (to, T0 as f64 + 7.0), "{from:?} {op_name}");
                    assert!(s.revision() > rev);
                }
                None => {
                    assert_eq!(got, Err(WrongState), "{from:?} {op_name}");
                    assert_eq!((s.get(&id).unwrap().status, s.revision()), (from, rev), "unchanged");
                }
            }
            assert_eq!(op(&mut s, "nope", at(8.0)), Err(WrongState), "unknown id");
        }
    }

    #[test]
    fn device_tokens_and_peer_ids_resolve_by_status() {
        let mut s = store();
        let mut rng = Counter(0);
        let p = pair(&mut s, &mut rng, "dev", 0.0);
        let peer = p.entry.peer_id.clone();
        let status = |s: &PairingStore| s.by_device_token(&p.device_token).map(|e| e.status);
        assert_eq!(status(&s), Some(Status::PendingApproval));
        assert!(!s.is_approved(&peer) && !s.is_shut_out(&peer));
        s.approve(&p.entry.id, at(1.0)).unwrap();
        assert_eq!(status(&s), Some(Status::Approved));
        assert!(s.is_approved(&peer) && !s.is_shut_out(&peer));
        s.revoke(&p.entry.id, at(2.0)).unwrap();
        assert_eq!(status(&s), Some(Status::Revoked));
        assert!(!s.is_approved(&peer) && s.is_shut_out(&peer));
        assert!(s.by_device_token("dt_00000000000000000000000000000000").is_none());
        assert!(s.by_device_token("").is_none());
        assert!(!s.is_approved("alpha") && !s.is_shut_out("alpha"));
    }

    #[test]
    fn listing_is_oldest_first_and_pending_only_on_request() {
        let mut s = store();
        let mut rng = Counter(0);
        let ids: Vec<String> = (0..3).map(|i| pair(&mut s, &mut rng, "dev", 10.0 - i as f64).entry.id).collect();
        s.approve(&ids[1], at(20.0)).unwrap();
        let all: Vec<String> = s.list(false).into_iter().map(|e| e.id).collect();
        assert_eq!(all, [ids[2].clone(), ids[1].clone(), ids[0].clone()]);
        let pending: Vec<String> = s.list(true).into_iter().map(|e| e.id).collect();
        assert_eq!(pending, [ids[2].clone(), ids[0].clone()]);
    }

    #[test]
    fn entries_are_bounded_by_forgetting_the_longest_finished() {
        let mut s = PairingStore::new(PairingLimits { max_live_codes: 10, max_entries: 3 });
        let mut rng = Counter(0);
        let e: Vec<Paired> = (0..3).map(|i| pair(&mut s, &mut rng, "dev", i as f64)).collect();
        s.reject(&e[0].entry.id, at(50.0)).unwrap();
        s.approve(&e[1].entry.id, at(10.0)).unwrap();
        s.revoke(&e[1].entry.id, at(40.0)).unwrap();
        // Full: the revoke at 40 s is the oldest finish and goes first.
        let fourth = pair(&mut s, &mut rng, "dev", 60.0);
        assert!(s.get(&e[1].entry.id).is_none() && s.get(&e[0].entry.id).is_some());
        assert!(s.by_device_token(&e[1].device_token).is_none());
        assert!(!s.is_shut_out(&e[1].entry.peer_id));
        let _fifth = pair(&mut s, &mut rng, "dev", 61.0);
        assert!(s.get(&e[0].entry.id).is_none());
        assert_eq!(s.len(), 3);
        // Now all three are live: a redemption is refused and keeps its code.
        let code = s.generate_code("ops", true, at(62.0), &mut |b| rng.fill(b)).unwrap();
        assert_eq!(s.redeem(&code, "dev", at(62.0), &mut |b| rng.fill(b), &nobody), Err(PairError::Full));
        s.reject(&fourth.entry.id, at(63.0)).unwrap();
        assert!(s.redeem(&code, "dev", at(64.0), &mut |b| rng.fill(b), &nobody).is_ok());
    }

    #[test]
    fn snapshot_and_restore_round_trip() {
        let mut s = store();
        let mut rng = Counter(0);
        let a = pair(&mut s, &mut rng, "a", 0.0);
        let b = pair(&mut s, &mut rng, "b", 1.0);
        let _c = pair(&mut s, &mut rng, "c", 2.0);
        s.approve(&a.entry.id, at(3.0)).unwrap();
        s.reject(&b.entry.id, at(3.0)).unwrap();
        let live = s.generate_code("ops", true, at(4.0), &mut |b| rng.fill(b)).unwrap();
        let snap = s.snapshot();
        let back = PairingStore::restore(snap.clone(), PairingLimits::default(), at(5.0)).unwrap();
        assert_eq!(back.snapshot(), snap);
        assert!(back.is_approved(&a.entry.peer_id));
        assert!(back.is_shut_out(&b.entry.peer_id));
        assert_eq!(back.by_device_token(&a.device_token).unwrap().id, a.entry.id);
        // The code is still live after the restore, and only until its time.
        let mut back2 = PairingStore::restore(snap.clone(), PairingLimits::default(), at(5.0)).unwrap();
        assert!(back2.redeem(&live, "d", at(6.0), &mut |b| rng.fill(b), &nobody).is_ok());
        let expired = PairingStore::restore(snap, PairingLimits::default(), at(305.0)).unwrap();
        assert_eq!(expired.live_codes(at(305.0)), 0);
        assert!(expired.snapshot().codes.is_empty());
    }

    #[test]
    fn restore_refuses_what_this_store_never_writes() {
        let mut s = store();
        let mut rng = Counter(0);
        pair(&mut s, &mut rng, "a", 0.0);
        pair(&mut s, &mut rng, "b", 0.0);
        let good = s.snapshot();
        let mut cases: Vec<(&str, PairingSnapshot)> = Vec::new();
        let mut dup_id = good.clone();
        dup_id.entries[1].entry.id = dup_id.entries[0].entry.id.clone();
        cases.push(("appears twice", dup_id));
        let mut dup_peer = good.clone();
        dup_peer.entries[1].entry.peer_id = dup_peer.entries[0].entry.peer_id.clone();
        cases.push(("appears twice", dup_peer));
        let mut dup_token = good.clone();
        dup_token.entries[1].device_token_sha256 = dup_token.entries[0].device_token_sha256.clone();
        cases.push(("appears twice", dup_token));
        let mut bad_digest = good.clone();
        bad_digest.entries[0].device_token_sha256 = "abc".into();
        cases.push(("64 hex", bad_digest));
        let mut bad_code = good.clone();
        bad_code.codes.push(StoredCode { sha256: "zz".into(), expires_at: 0.0, created_by: String::new() });
        cases.push(("64 hex", bad_code));
        let mut empty = good;
        empty.entries[0].entry.peer_id.clear();
        cases.push(("empty", empty));
        for (needle, snap) in cases {
            let err = PairingStore::restore(snap, PairingLimits::default(), at(1.0)).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn revision_moves_with_every_change_and_only_then() {
        let mut s = store();
        let mut rng = Counter(0);
        let mut rev = s.revision();
        let mut moved = |s: &PairingStore| {
            let m = s.revision() != rev;
            rev = s.revision();
            m
        };
        let code = s.generate_code("ops", true, at(0.0), &mut |b| rng.fill(b)).unwrap();
        assert!(moved(&s));
        let _ = s.list(false);
        let _ = s.live_codes(at(1.0));
        let wrong = if code == "000000" { "000001" } else { "000000" };
        assert!(s.redeem(wrong, "x", at(1.0), &mut |b| rng.fill(b), &nobody).is_err());
        assert!(!moved(&s), "reads and refusals change nothing");
        let p = s.redeem(&code, "x", at(1.0), &mut |b| rng.fill(b), &nobody).unwrap();
        assert!(moved(&s));
        assert!(s.revoke(&p.entry.id, at(2.0)).is_err());
        assert!(!moved(&s));
        s.approve(&p.entry.id, at(2.0)).unwrap();
        assert!(moved(&s));
        // An expired code is forgotten at the next generation: a change too.
        s.generate_code("ops", true, at(10.0), &mut |b| rng.fill(b)).unwrap();
        let before = s.revision();
        s.generate_code("ops", true, at(1000.0), &mut |b| rng.fill(b)).unwrap();
        assert_eq!(s.revision(), before + 2, "one for the purge, one for the new code");
    }
}
