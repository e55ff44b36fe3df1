//! The agent registry (docs/PROTOCOL.md, Routes: AgentInfo, AgentRecord,
//! Heartbeat): what agents told us about themselves through
//! `POST /api/registry/agents` and `POST /api/hub/heartbeat`, and their health
//! derived from how long ago we last heard from them.
//!
//! Sans-IO: every method that needs the time takes `now`; health is computed
//! on read, so there is no background loop to forget to run.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Silence after which an agent is `stale` (compatible).
pub const STALE_AFTER: Duration = Duration::from_secs(90);
/// Silence after which an agent is `offline` (compatible).
pub const OFFLINE_AFTER: Duration = Duration::from_secs(270);
/// Default bound of the table. Registration needs no credential, so without a
/// bound anyone could grow the registry's memory by inventing agent ids.
pub const DEFAULT_MAX_AGENTS: usize = 10_000;

/// Largest agent record kept ([`AgentInfo::stored_bytes`]). Registration
/// needs no credential and a 64 KiB body of short skill names would
/// otherwise cost half a megabyte; real agents send well under 1 KiB.
pub const MAX_AGENT_BYTES: usize = 8 * 1024;

/// Default bound of all records together; the least recently heard
/// agents make room, as with [`DEFAULT_MAX_AGENTS`].
pub const DEFAULT_MAX_TOTAL_BYTES: usize = 8 << 20;

/// An agent record over [`MAX_AGENT_BYTES`]; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "agent record of {} bytes exceeds {MAX_AGENT_BYTES}", self.0)
    }
}

const DEFAULT_PORT: u16 = 8000;

fn default_port() -> u16 {
    DEFAULT_PORT
}

/// `capabilities` of an [`AgentInfo`]; every field may be omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub mcp_servers: Vec<String>,
    #[serde(default)]
    pub goals_count: u32,
    #[serde(default)]
    pub mode: String,
}

/// Body of `POST /api/registry/agents` (compatible). `agent_id` and `hostname`
/// are required; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent_id: String,
    pub hostname: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub sidecar_peer_id: String,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub mode: String,
}

impl AgentInfo {
    /// What the record costs to keep: its texts, with a share for each
    /// list entry and for the record itself.
    pub fn stored_bytes(&self) -> usize {
        let list = |l: &[String]| l.iter().map(|s| 32 + s.len()).sum::<usize>();
        256 + self.agent_id.len()
            + self.hostname.len()
            + self.ip.len()
            + self.sidecar_peer_id.len()
            + self.status.len()
            + self.mode.len()
            + self.capabilities.mode.len()
            + list(&self.capabilities.skills)
            + list(&self.capabilities.mcp_servers)
    }

    /// An agent known only by id and hostname, every other field at its default.
    pub fn new(agent_id: &str, hostname: &str) -> Self {
        AgentInfo {
            agent_id: agent_id.to_owned(),
            hostname: hostname.to_owned(),
            ip: String::new(),
            port: DEFAULT_PORT,
            sidecar_peer_id: String::new(),
            capabilities: Capabilities::default(),
            status: String::new(),
            mode: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Active,
    Stale,
    Offline,
}

impl Health {
    /// Health of an agent last heard from at `last_heartbeat`. A heartbeat
    /// "from the future" (the wall clock stepped back) counts as fresh rather
    /// than making the agent vanish until the clock catches up.
    pub fn at(last_heartbeat: SystemTime, now: SystemTime) -> Health {
        let silence = now.duration_since(last_heartbeat).unwrap_or(Duration::ZERO);
        if silence > OFFLINE_AFTER {
            Health::Offline
        } else if silence > STALE_AFTER {
            Health::Stale
        } else {
            Health::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Active => "active",
            Health::Stale => "stale",
            Health::Offline => "offline",
        }
    }
}

/// What the registry answers about an agent (compatible): the [`AgentInfo`]
/// keys flattened, plus health and two RFC 3339 timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    #[serde(flatten)]
    pub info: AgentInfo,
    pub health: Health,
    pub registered_at: String,
    pub last_heartbeat: String,
}

/// Body of `POST /api/hub/heartbeat` (compatible). Every field but `agent_id`
/// is optional and kept as `None` when absent, because an absent field must
/// leave the stored value alone while a present one replaces it
/// (docs/PROTOCOL.md, Heartbeat); the documented defaults only apply when
/// the heartbeat creates the agent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Heartbeat {
    pub agent_id: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub sidecar_peer_id: Option<String>,
    /// Accepted for compatibility; the registry derives it from `skill_names`.
    #[serde(default)]
    pub skills_count: Option<u32>,
    #[serde(default)]
    pub goals_count: Option<u32>,
    /// Accepted for compatibility and not stored. A float, since agents that
    /// compute it from `time.time()` send fractions.
    #[serde(default)]
    pub uptime_seconds: Option<f64>,
    #[serde(default)]
    pub skill_names: Option<Vec<String>>,
}

impl Heartbeat {
    /// The agent a first heartbeat creates, with the documented defaults for
    /// whatever it left out.
    fn into_new_agent(self) -> AgentInfo {
        let mode = self.mode.unwrap_or_default();
        AgentInfo {
            hostname: self.hostname.unwrap_or_default(),
            ip: self.ip.unwrap_or_default(),
            port: self.port.unwrap_or(DEFAULT_PORT),
            sidecar_peer_id: self.sidecar_peer_id.unwrap_or_default(),
            capabilities: Capabilities {
                skills: self.skill_names.unwrap_or_default(),
                mcp_servers: Vec::new(),
                goals_count: self.goals_count.unwrap_or(0),
                // The original copies the heartbeat's mode here on creation;
                // clients reading capabilities.mode expect it.
                mode: mode.clone(),
            },
            status: self.status.unwrap_or_default(),
            mode,
            agent_id: self.agent_id,
        }
    }

    fn apply_to(self, info: &mut AgentInfo) {
        if let Some(v) = self.hostname {
            info.hostname = v;
        }
        if let Some(v) = self.ip {
            info.ip = v;
        }
        if let Some(v) = self.port {
            info.port = v;
        }
        if let Some(v) = self.status {
            info.status = v;
        }
        if let Some(v) = self.mode {
            info.mode = v;
        }
        // Even a present but empty sidecar_peer_id keeps the stored one: the
        // original never blanked it, and agent SDKs send "" while their
        // sidecar is still starting, which must not drop them from the mesh.
        if let Some(v) = self.sidecar_peer_id.filter(|v| !v.is_empty()) {
            info.sidecar_peer_id = v;
        }
        if let Some(v) = self.goals_count {
            info.capabilities.goals_count = v;
        }
        if let Some(v) = self.skill_names {
            info.capabilities.skills = v;
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    info: AgentInfo,
    registered_at: SystemTime,
    last_heartbeat: SystemTime,
    /// Peer of the credential that created the record (empty: none); it
    /// may act for the agent while `sidecar_peer_id` is still empty.
    owner: String,
}

impl Entry {
    fn record(&self, now: SystemTime) -> AgentRecord {
        AgentRecord {
            info: self.info.clone(),
            health: self.health(now),
            registered_at: rfc3339(self.registered_at),
            last_heartbeat: rfc3339(self.last_heartbeat),
        }
    }

    fn health(&self, now: SystemTime) -> Health {
        Health::at(self.last_heartbeat, now)
    }
}

/// The table of agents, keyed by `agent_id` (kept ordered so listings come out
/// sorted without a sort per request).
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: BTreeMap<String, Entry>,
    max_agents: usize,
    /// Sum of [`AgentInfo::stored_bytes`] over all agents.
    bytes: usize,
    max_bytes: usize,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentRegistry {
    pub fn new() -> Self {
        Self::with_max_agents(DEFAULT_MAX_AGENTS)
    }

    /// A registry holding at most `max_agents` (at least one).
    pub fn with_max_agents(max_agents: usize) -> Self {
        Self::with_limits(max_agents, DEFAULT_MAX_TOTAL_BYTES)
    }

    /// At most `max_agents` (at least one), and `max_bytes` all together.
    pub fn with_limits(max_agents: usize, max_bytes: usize) -> Self {
        AgentRegistry { agents: BTreeMap::new(), max_agents: max_agents.max(1), bytes: 0, max_bytes }
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// [`AgentRegistry::upsert_as`] by nobody in particular (unit tests).
    #[cfg(test)]
    pub fn upsert(&mut self, info: AgentInfo, now: SystemTime) -> Result<(), TooLarge> {
        self.upsert_as(info, "", now)
    }

    /// `POST /api/registry/agents` by the credential of peer `owner`, which
    /// becomes the record's owner if it creates it: the body replaces
    /// everything the agent told us before and counts as a heartbeat.
    /// `registered_at` stays the time we first saw the agent (the original
    /// reset it on every POST, which made it useless).
    pub fn upsert_as(&mut self, info: AgentInfo, owner: &str, now: SystemTime) -> Result<(), TooLarge> {
        let size = info.stored_bytes();
        if size > MAX_AGENT_BYTES {
            return Err(TooLarge(size));
        }
        let (registered_at, owner) =
            self.remove_entry(&info.agent_id).map_or((now, owner.to_owned()), |e| (e.registered_at, e.owner));
        self.insert(info, registered_at, owner, now);
        Ok(())
    }

    /// The peer that may act for `agent_id` (its `sidecar_peer_id`, or
    /// while that is empty the peer that created it); `None` for an
    /// unknown agent, `Some("")` for one nobody owns.
    pub fn owner_of(&self, agent_id: &str) -> Option<&str> {
        let e = self.agents.get(agent_id)?;
        Some(if e.info.sidecar_peer_id.is_empty() { &e.owner } else { &e.info.sidecar_peer_id })
    }

    /// [`AgentRegistry::heartbeat_as`] by nobody in particular (unit tests).
    #[cfg(test)]
    pub fn heartbeat(&mut self, hb: Heartbeat, now: SystemTime) -> Result<(), TooLarge> {
        self.heartbeat_as(hb, "", now)
    }

    /// `POST /api/hub/heartbeat` by the credential of peer `owner`: creates
    /// an unknown agent (owned by `owner`), otherwise refreshes it and
    /// overwrites only the fields the heartbeat carries.
    pub fn heartbeat_as(&mut self, hb: Heartbeat, owner: &str, now: SystemTime) -> Result<(), TooLarge> {
        let (info, registered_at, owner) = match self.agents.get(&hb.agent_id) {
            Some(entry) => {
                let mut info = entry.info.clone();
                hb.apply_to(&mut info);
                (info, entry.registered_at, entry.owner.clone())
            }
            None => (hb.into_new_agent(), now, owner.to_owned()),
        };
        let size = info.stored_bytes();
        if size > MAX_AGENT_BYTES {
            return Err(TooLarge(size));
        }
        self.remove_entry(&info.agent_id);
        self.insert(info, registered_at, owner, now);
        Ok(())
    }

    fn insert(&mut self, info: AgentInfo, registered_at: SystemTime, owner: String, now: SystemTime) {
        let size = info.stored_bytes();
        while !self.agents.is_empty() && (self.agents.len() >= self.max_agents || self.bytes + size > self.max_bytes) {
            self.evict_least_recently_heard();
        }
        self.bytes += size;
        self.agents.insert(info.agent_id.clone(), Entry { info, registered_at, last_heartbeat: now, owner });
    }

    fn remove_entry(&mut self, agent_id: &str) -> Option<Entry> {
        let entry = self.agents.remove(agent_id)?;
        self.bytes -= entry.info.stored_bytes();
        Some(entry)
    }

    /// Makes room by forgetting the agent silent for longest: it is the one
    /// most likely gone, and a live agent that is evicted comes back with
    /// its next heartbeat.
    fn evict_least_recently_heard(&mut self) {
        let oldest = self.agents.iter().min_by_key(|(_, e)| e.last_heartbeat).map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.remove_entry(&id);
        }
    }

    /// Every agent, sorted by `agent_id`.
    pub fn list(&self, now: SystemTime) -> Vec<AgentRecord> {
        self.agents.values().map(|e| e.record(now)).collect()
    }

    pub fn get(&self, agent_id: &str, now: SystemTime) -> Option<AgentRecord> {
        self.agents.get(agent_id).map(|e| e.record(now))
    }

    pub fn remove(&mut self, agent_id: &str) -> bool {
        self.remove_entry(agent_id).is_some()
    }

    /// One `active` agent advertising `skill`: the one heard from most
    /// recently, as it is the likeliest to still be there; ties go to the
    /// smallest `agent_id` so the answer is stable.
    pub fn route(&self, skill: &str, now: SystemTime) -> Option<AgentRecord> {
        self.agents
            .values()
            .filter(|e| e.health(now) == Health::Active)
            .filter(|e| e.info.capabilities.skills.iter().any(|s| s == skill))
            // BTreeMap order is ascending id and max_by_key keeps the last
            // maximum, so reverse to let the smallest id win a tie.
            .rev()
            .max_by_key(|e| e.last_heartbeat)
            .map(|e| e.record(now))
    }

    /// The skills an agent advertises, to claim tasks for it after a
    /// heartbeat that may not have repeated them. Empty for unknown agents.
    pub fn skills_of(&self, agent_id: &str) -> Vec<String> {
        self.agents.get(agent_id).map(|e| e.info.capabilities.skills.clone()).unwrap_or_default()
    }

    /// `(agent_id, sidecar_peer_id)` of every active agent that has a
    /// sidecar, sorted by `agent_id`.
    pub fn sidecar_peers(&self, now: SystemTime) -> Vec<(String, String)> {
        self.agents
            .values()
            .filter(|e| !e.info.sidecar_peer_id.is_empty() && e.health(now) == Health::Active)
            .map(|e| (e.info.agent_id.clone(), e.info.sidecar_peer_id.clone()))
            .collect()
    }
}

/// RFC 3339 in UTC with microseconds and a `+00:00` offset, always the same
/// length. That is the shape the original's timestamps had (`+00:00`), and
/// fixed six digits parse with Python's `datetime.fromisoformat` on every
/// version, which rejects `Z` and nine digits before 3.11.
pub fn rfc3339(t: SystemTime) -> String {
    let nanos = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    // Out-of-range times (year outside ±9999) only come from a broken clock;
    // clamping beats panicking.
    let dt = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or_else(|_| {
        if nanos < 0 { time::PrimitiveDateTime::MIN.assume_utc() } else { time::PrimitiveDateTime::MAX.assume_utc() }
    });
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn at(secs: u64) -> SystemTime {
        // 2023-11-14T22:13:20Z: a fixed, realistic base for every test clock.
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn hb(v: Value) -> Heartbeat {
        serde_json::from_value(v).expect("valid heartbeat")
    }

    fn info(v: Value) -> AgentInfo {
        serde_json::from_value(v).expect("valid agent info")
    }

    fn agent(id: &str, skills: &[&str], peer: &str) -> AgentInfo {
        let mut a = AgentInfo::new(id, "host");
        a.capabilities.skills = skills.iter().map(|s| s.to_string()).collect();
        a.sidecar_peer_id = peer.to_owned();
        a
    }

    #[test]
    fn agent_info_defaults_match_spec() {
        let a = info(json!({"agent_id": "a1", "hostname": "h"}));
        assert_eq!(a, AgentInfo::new("a1", "h"));
        assert_eq!(a.port, 8000);
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            json!({
                "agent_id": "a1", "hostname": "h", "ip": "", "port": 8000,
                "sidecar_peer_id": "",
                "capabilities": {"skills": [], "mcp_servers": [], "goals_count": 0, "mode": ""},
                "status": "", "mode": ""
            })
        );
        // A partial capabilities object gets the missing keys defaulted.
        let a = info(json!({"agent_id": "a", "hostname": "h", "capabilities": {"skills": ["x"]}}));
        assert_eq!(a.capabilities.skills, ["x"]);
        assert_eq!(a.capabilities.goals_count, 0);
    }

    #[test]
    fn agent_info_rejects_bad_input_without_panicking() {
        for bad in [
            json!({"hostname": "h"}),
            json!({"agent_id": "a"}),
            json!({"agent_id": 1, "hostname": "h"}),
            json!({"agent_id": "a", "hostname": "h", "port": 65536}),
            json!({"agent_id": "a", "hostname": "h", "port": -1}),
            json!({"agent_id": "a", "hostname": "h", "capabilities": {"skills": "x"}}),
            json!({"agent_id": "a", "hostname": "h", "capabilities": {"goals_count": -1}}),
            json!([]),
        ] {
            assert!(serde_json::from_value::<AgentInfo>(bad.clone()).is_err(), "{bad}");
        }
        let a = info(json!({"agent_id": "a", "hostname": "h", "port": 65535, "extra": [1]}));
        assert_eq!(a.port, 65535);
    }

    #[test]
    fn record_flattens_info_and_adds_health_and_timestamps() {
        let mut reg = AgentRegistry::new();
        reg.upsert(agent("a1", &["search"], "agent-abc123"), at(0)).unwrap();
        let rec = reg.get("a1", at(1)).unwrap();
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["agent_id"], "a1");
        assert_eq!(v["capabilities"]["skills"], json!(["search"]));
        assert_eq!(v["sidecar_peer_id"], "agent-abc123");
        assert_eq!(v["health"], "active");
        assert_eq!(v["registered_at"], "2023-11-14T22:13:20.000000+00:00");
        assert_eq!(v["last_heartbeat"], "2023-11-14T22:13:20.000000+00:00");
        assert!(v.get("info").is_none(), "info must be flattened");
        // And it reads back, for clients written in Rust.
        let back: AgentRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn rfc3339_has_a_fixed_shape() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456+00:00");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(before), "1969-12-31T23:59:59.000000+00:00");
        // An absurd clock must not panic.
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert!(rfc3339(far).starts_with("9999-12-31T23:59:59"));
    }

    #[test]
    fn health_thresholds() {
        let last = at(0);
        assert_eq!(Health::at(last, at(0)), Health::Active);
        assert_eq!(Health::at(last, at(90)), Health::Active);
        assert_eq!(Health::at(last, at(91)), Health::Stale);
        assert_eq!(Health::at(last, at(270)), Health::Stale);
        assert_eq!(Health::at(last, at(271)), Health::Offline);
        // Clock stepped back: still active, not an error.
        assert_eq!(Health::at(at(100), at(0)), Health::Active);
        assert_eq!(serde_json::to_value(Health::Stale).unwrap(), "stale");
        assert_eq!(Health::Offline.as_str(), "offline");
    }

    #[test]
    fn health_is_computed_on_read_and_refreshed_by_heartbeat() {
        let mut reg = AgentRegistry::new();
        reg.upsert(agent("a1", &[], ""), at(0)).unwrap();
        assert_eq!(reg.get("a1", at(100)).unwrap().health, Health::Stale);
        assert_eq!(reg.get("a1", at(300)).unwrap().health, Health::Offline);
        reg.heartbeat(hb(json!({"agent_id": "a1"})), at(300)).unwrap();
        let rec = reg.get("a1", at(300)).unwrap();
        assert_eq!(rec.health, Health::Active);
        assert_eq!(rec.last_heartbeat, rfc3339(at(300)));
        assert_eq!(rec.registered_at, rfc3339(at(0)));
    }

    #[test]
    fn upsert_replaces_info_but_keeps_registration_time() {
        let mut reg = AgentRegistry::new();
        reg.upsert(agent("a1", &["x"], "p1"), at(0)).unwrap();
        reg.upsert(agent("a1", &["y"], ""), at(10)).unwrap();
        let rec = reg.get("a1", at(10)).unwrap();
        assert_eq!(rec.info.capabilities.skills, ["y"]);
        assert_eq!(rec.info.sidecar_peer_id, "");
        assert_eq!(rec.registered_at, rfc3339(at(0)));
        assert_eq!(rec.last_heartbeat, rfc3339(at(10)));
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn first_heartbeat_creates_agent_with_spec_defaults() {
        let mut reg = AgentRegistry::new();
        reg.heartbeat(hb(json!({"agent_id": "a1"})), at(0)).unwrap();
        let rec = reg.get("a1", at(0)).unwrap();
        assert_eq!(rec.info, AgentInfo::new("a1", ""));
        assert_eq!(rec.health, Health::Active);

        reg.heartbeat(
            hb(json!({
                "agent_id": "a2", "hostname": "h2", "ip": "10.0.0.2", "port": 9000,
                "status": "running", "mode": "auto", "sidecar_peer_id": "agent-000002",
                "skills_count": 2, "goals_count": 3, "uptime_seconds": 12.5,
                "skill_names": ["search", "chat"]
            })),
            at(0),
        )
        .unwrap();
        let a = reg.get("a2", at(0)).unwrap().info;
        assert_eq!(a.hostname, "h2");
        assert_eq!(a.ip, "10.0.0.2");
        assert_eq!(a.port, 9000);
        assert_eq!(a.status, "running");
        assert_eq!(a.mode, "auto");
        assert_eq!(a.sidecar_peer_id, "agent-000002");
        assert_eq!(a.capabilities.skills, ["search", "chat"]);
        assert_eq!(a.capabilities.goals_count, 3);
        assert_eq!(a.capabilities.mode, "auto");
        assert!(a.capabilities.mcp_servers.is_empty());
    }

    #[test]
    fn heartbeat_keeps_fields_it_does_not_carry() {
        let mut reg = AgentRegistry::new();
        let mut full = agent("a1", &["search"], "agent-000001");
        full.ip = "10.0.0.1".into();
        full.port = 9001;
        full.status = "running".into();
        full.mode = "auto".into();
        full.capabilities.goals_count = 4;
        full.capabilities.mcp_servers = vec!["fs".into()];
        reg.upsert(full.clone(), at(0)).unwrap();

        reg.heartbeat(hb(json!({"agent_id": "a1"})), at(5)).unwrap();
        assert_eq!(reg.get("a1", at(5)).unwrap().info, full);

        reg.heartbeat(hb(json!({"agent_id": "a1", "status": "busy", "skill_names": ["chat"], "port": 7})), at(6))
            .unwrap();
        let a = reg.get("a1", at(6)).unwrap().info;
        assert_eq!(a.status, "busy");
        assert_eq!(a.capabilities.skills, ["chat"]);
        assert_eq!(a.port, 7);
        assert_eq!(a.ip, "10.0.0.1");
        assert_eq!(a.hostname, "host");
        assert_eq!(a.mode, "auto");
        assert_eq!(a.capabilities.goals_count, 4);
        assert_eq!(a.capabilities.mcp_servers, ["fs"]);
        assert_eq!(a.sidecar_peer_id, "agent-000001");
    }

    #[test]
    fn heartbeat_present_values_overwrite_even_when_empty_except_sidecar() {
        let mut reg = AgentRegistry::new();
        let mut full = agent("a1", &["search"], "agent-000001");
        full.ip = "10.0.0.1".into();
        reg.upsert(full, at(0)).unwrap();
        reg.heartbeat(hb(json!({"agent_id": "a1", "ip": "", "skill_names": [], "sidecar_peer_id": ""})), at(1))
            .unwrap();
        let a = reg.get("a1", at(1)).unwrap().info;
        assert_eq!(a.ip, "");
        assert!(a.capabilities.skills.is_empty());
        assert_eq!(a.sidecar_peer_id, "agent-000001");
        reg.heartbeat(hb(json!({"agent_id": "a1", "sidecar_peer_id": "agent-000009"})), at(2)).unwrap();
        assert_eq!(reg.get("a1", at(2)).unwrap().info.sidecar_peer_id, "agent-000009");
    }

    #[test]
    fn heartbeat_null_counts_as_absent() {
        let mut reg = AgentRegistry::new();
        reg.upsert(agent("a1", &["s"], "p"), at(0)).unwrap();
        reg.heartbeat(hb(json!({"agent_id": "a1", "hostname": null, "skill_names": null})), at(1)).unwrap();
        let a = reg.get("a1", at(1)).unwrap().info;
        assert_eq!(a.hostname, "host");
        assert_eq!(a.capabilities.skills, ["s"]);
    }

    #[test]
    fn heartbeat_rejects_bad_input_without_panicking() {
        for bad in [
            json!({}),
            json!({"agent_id": 5}),
            json!({"agent_id": "a", "port": 70000}),
            json!({"agent_id": "a", "port": "80"}),
            json!({"agent_id": "a", "skill_names": "x"}),
            json!({"agent_id": "a", "skill_names": [1]}),
            json!({"agent_id": "a", "goals_count": -1}),
            json!({"agent_id": "a", "uptime_seconds": "1"}),
            json!("a"),
        ] {
            assert!(serde_json::from_value::<Heartbeat>(bad.clone()).is_err(), "{bad}");
        }
        let h = hb(json!({"agent_id": "a", "uptime_seconds": 3, "unknown": true}));
        assert_eq!(h.uptime_seconds, Some(3.0));
    }

    #[test]
    fn list_is_sorted_by_agent_id() {
        let mut reg = AgentRegistry::new();
        for id in ["c", "a", "b"] {
            reg.upsert(agent(id, &[], ""), at(0)).unwrap();
        }
        let ids: Vec<_> = reg.list(at(0)).into_iter().map(|r| r.info.agent_id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn get_and_remove() {
        let mut reg = AgentRegistry::new();
        assert!(reg.is_empty());
        reg.upsert(agent("a1", &[], ""), at(0)).unwrap();
        assert!(reg.get("a2", at(0)).is_none());
        assert!(!reg.remove("a2"));
        assert!(reg.remove("a1"));
        assert!(reg.get("a1", at(0)).is_none());
        assert!(!reg.remove("a1"));
        assert!(reg.is_empty());
    }

    #[test]
    fn route_picks_an_active_agent_with_the_skill() {
        let mut reg = AgentRegistry::new();
        assert!(reg.route("search", at(0)).is_none());
        reg.upsert(agent("old", &["search"], ""), at(0)).unwrap();
        reg.upsert(agent("chat", &["chat"], ""), at(200)).unwrap();
        reg.upsert(agent("fresh", &["search", "x"], ""), at(150)).unwrap();
        // "old" is stale by now; "fresh" is the only active one with the skill.
        assert_eq!(reg.route("search", at(200)).unwrap().info.agent_id, "fresh");
        assert_eq!(reg.route("chat", at(200)).unwrap().health, Health::Active);
        assert!(reg.route("nothing", at(200)).is_none());
        // Stale agents are not routed to.
        assert!(reg.route("search", at(150 + 91)).is_none());
        // Skills are matched exactly, not as substrings.
        assert!(reg.route("sea", at(150)).is_none());
    }

    #[test]
    fn route_prefers_freshest_then_smallest_id() {
        let mut reg = AgentRegistry::new();
        reg.upsert(agent("b", &["s"], ""), at(10)).unwrap();
        reg.upsert(agent("c", &["s"], ""), at(10)).unwrap();
        reg.upsert(agent("a", &["s"], ""), at(5)).unwrap();
        assert_eq!(reg.route("s", at(20)).unwrap().info.agent_id, "b");
        reg.heartbeat(hb(json!({"agent_id": "a"})), at(11)).unwrap();
        assert_eq!(reg.route("s", at(20)).unwrap().info.agent_id, "a");
    }

    #[test]
    fn heartbeat_skill_names_drive_routing() {
        let mut reg = AgentRegistry::new();
        reg.heartbeat(hb(json!({"agent_id": "a", "skill_names": ["s"]})), at(0)).unwrap();
        assert!(reg.route("s", at(0)).is_some());
        reg.heartbeat(hb(json!({"agent_id": "a", "skill_names": ["t"]})), at(1)).unwrap();
        assert!(reg.route("s", at(1)).is_none());
        assert_eq!(reg.route("t", at(1)).unwrap().info.agent_id, "a");
    }

    #[test]
    fn skills_of_known_and_unknown() {
        let mut reg = AgentRegistry::new();
        reg.upsert(agent("a", &["x", "y"], ""), at(0)).unwrap();
        assert_eq!(reg.skills_of("a"), ["x", "y"]);
        assert!(reg.skills_of("nobody").is_empty());
    }

    #[test]
    fn sidecar_peers_are_active_agents_with_a_sidecar() {
        let mut reg = AgentRegistry::new();
        reg.upsert(agent("a", &[], "agent-00000a"), at(100)).unwrap();
        reg.upsert(agent("b", &[], ""), at(100)).unwrap();
        reg.upsert(agent("c", &[], "agent-00000c"), at(0)).unwrap();
        reg.upsert(agent("d", &[], "agent-00000d"), at(100)).unwrap();
        assert_eq!(
            reg.sidecar_peers(at(100)),
            [("a".to_string(), "agent-00000a".to_string()), ("d".to_string(), "agent-00000d".to_string()),]
        );
    }

    #[test]
    fn table_is_bounded_and_evicts_the_longest_silent() {
        let mut reg = AgentRegistry::with_max_agents(3);
        reg.upsert(agent("a", &[], ""), at(10)).unwrap();
        reg.upsert(agent("b", &[], ""), at(5)).unwrap();
        reg.upsert(agent("c", &[], ""), at(20)).unwrap();
        // Updating a known agent never evicts.
        reg.heartbeat(hb(json!({"agent_id": "a"})), at(30)).unwrap();
        assert_eq!(reg.len(), 3);
        reg.heartbeat(hb(json!({"agent_id": "d"})), at(31)).unwrap();
        assert_eq!(reg.len(), 3);
        assert!(reg.get("b", at(31)).is_none());
        reg.upsert(agent("e", &[], ""), at(32)).unwrap();
        assert_eq!(reg.len(), 3);
        assert!(reg.get("c", at(32)).is_none());
        let ids: Vec<_> = reg.list(at(32)).into_iter().map(|r| r.info.agent_id).collect();
        assert_eq!(ids, ["a", "d", "e"]);
    }

    #[test]
    fn zero_capacity_still_holds_one_agent() {
        let mut reg = AgentRegistry::with_max_agents(0);
        reg.upsert(agent("a", &[], ""), at(0)).unwrap();
        reg.upsert(agent("b", &[], ""), at(1)).unwrap();
        assert_eq!(reg.len(), 1);
        assert!(reg.get("b", at(1)).is_some());
    }

    #[test]
    fn default_bound_is_ten_thousand() {
        let mut reg = AgentRegistry::default();
        for i in 0..DEFAULT_MAX_AGENTS + 5 {
            reg.heartbeat(Heartbeat { agent_id: format!("agent-{i:05}"), ..Heartbeat::default() }, at(i as u64))
                .unwrap();
        }
        assert_eq!(reg.len(), DEFAULT_MAX_AGENTS);
        assert!(reg.get("agent-00004", at(0)).is_none());
        assert!(reg.get("agent-00005", at(0)).is_some());
    }

    #[test]
    fn records_over_the_size_bound_are_refused_and_change_nothing() {
        let mut reg = AgentRegistry::default();
        reg.upsert(agent("a1", &["search"], "p1"), at(0)).unwrap();
        // 3,000 one-letter skills: about 9 KB of JSON, far more once parsed.
        let many: Vec<String> = (0..3_000).map(|i| format!("{}", i % 10)).collect();
        let mut big = agent("a1", &[], "p1");
        big.capabilities.skills = many.clone();
        assert!(matches!(reg.upsert(big, at(1)), Err(TooLarge(n)) if n > MAX_AGENT_BYTES));
        let refused = Heartbeat { agent_id: "a1".into(), skill_names: Some(many), ..Heartbeat::default() };
        assert!(reg.heartbeat(refused.clone(), at(2)).is_err());
        let kept = reg.get("a1", at(2)).unwrap();
        assert_eq!(kept.info.capabilities.skills, ["search"]);
        assert_eq!(kept.last_heartbeat, rfc3339(at(0)));
        // A new agent that is too large is not created either.
        assert!(reg.heartbeat(Heartbeat { agent_id: "new".into(), ..refused }, at(3)).is_err());
        assert!(reg.get("new", at(3)).is_none());
    }

    #[test]
    fn all_records_together_are_bounded_least_recently_heard_first() {
        let mut reg = AgentRegistry::with_limits(100, 4_000);
        let skills: Vec<String> = (0..20).map(|i| format!("skill-{i}")).collect();
        let refs: Vec<&str> = skills.iter().map(String::as_str).collect();
        let size = agent("agent-0", &refs, "p").stored_bytes();
        for i in 0..10u64 {
            reg.upsert(agent(&format!("agent-{i}"), &refs, "p"), at(i)).unwrap();
        }
        let fit = 4_000 / size;
        assert_eq!(reg.len(), fit);
        assert!(reg.bytes <= 4_000);
        assert!(reg.get("agent-9", at(9)).is_some());
        assert!(reg.get(&format!("agent-{}", 9 - fit), at(9)).is_none());
        // An update that keeps the size replaces the record in place.
        reg.upsert(agent("agent-9", &refs, "p"), at(10)).unwrap();
        assert_eq!(reg.len(), fit);
        let recount: usize = reg.agents.values().map(|e| e.info.stored_bytes()).sum();
        assert_eq!(reg.bytes, recount);
        assert!(reg.remove("agent-9"));
        assert_eq!(reg.bytes, recount - size);
    }
}
