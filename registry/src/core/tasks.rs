//! The task hub (docs/PROTOCOL.md, Routes: the task shapes and rules): a
//! bounded in-memory queue of tasks that agents submit over HTTP and claim
//! with their heartbeats.
//!
//! Sans-IO: every call takes `now`, and everything that depends on the passage
//! of time (TTL expiry, forgetting finished tasks) is applied lazily at the
//! start of each call, so there is no background timer and the result of a
//! call depends only on the calls before it.
//!
//! Bounds, because submission needs no credential: at most
//! [`Limits::max_open`] tasks not yet finished (further submissions are
//! refused), and finished tasks are forgotten once there are more than
//! [`Limits::max_finished`] of them or [`Limits::finished_retention`] after
//! they finished, whichever comes first.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Task states the hub itself assigns. Agents may set any other string
/// through an update (compatible); only `completed` and `failed` are final.
pub mod state {
    pub const PENDING: &str = "pending";
    pub const ASSIGNED: &str = "assigned";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";

    pub fn is_final(state: &str) -> bool {
        state == COMPLETED || state == FAILED
    }
}

/// `error` of a task that outlived its `ttl` (compatible).
pub const TTL_EXPIRED: &str = "TTL expired";
pub const DEFAULT_TTL: u64 = 300;
/// Longest `ttl` kept; a larger one is cut to this. Submission needs no
/// credential, so a task must not be able to hold its place for ever.
pub const MAX_TTL: u64 = 24 * 3600;

/// A JSON value kept as the text it arrived as. A parsed [`Value`] of a
/// 64 KiB array of small numbers takes over 1 MB; the text takes 64 KiB.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    pub fn null() -> Self {
        RawJson(RawValue::NULL.to_owned())
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl Default for RawJson {
    fn default() -> Self {
        RawJson::null()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Equal when the texts are: payloads are compared only in tests and
/// after a round trip through a file, which keeps the text.
impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Value> for RawJson {
    fn eq(&self, other: &Value) -> bool {
        serde_json::from_str::<Value>(self.as_str()).is_ok_and(|v| &v == other)
    }
}

impl From<Value> for RawJson {
    fn from(v: Value) -> Self {
        serde_json::value::to_raw_value(&v).map(RawJson).unwrap_or_default()
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(RawJson)
    }
}

fn default_ttl() -> u64 {
    DEFAULT_TTL
}

/// Body of `POST /api/hub/tasks` (compatible): every field is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSubmission {
    #[serde(default)]
    pub skill: String,
    #[serde(default)]
    pub target_agent_id: String,
    #[serde(default)]
    pub source_agent_id: String,
    #[serde(default)]
    pub payload: RawJson,
    /// Seconds from submission until an unfinished task fails.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
}

impl Default for TaskSubmission {
    fn default() -> Self {
        TaskSubmission {
            skill: String::new(),
            target_agent_id: String::new(),
            source_agent_id: String::new(),
            payload: RawJson::null(),
            ttl: DEFAULT_TTL,
        }
    }
}

/// Body of `POST /api/hub/tasks/{id}` (compatible). Empty `result`/`error`
/// leave the stored ones alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUpdate {
    pub state: String,
    #[serde(default)]
    pub result: String,
    #[serde(default)]
    pub error: String,
}

/// A task as answered over HTTP (compatible) and as persisted to disk.
/// Timestamps are seconds since the Unix epoch. Reading tolerates missing
/// optional fields so that state files stay loadable if a field is added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    #[serde(default)]
    pub skill: String,
    #[serde(default)]
    pub target_agent_id: String,
    #[serde(default)]
    pub source_agent_id: String,
    #[serde(default)]
    pub assigned_agent_id: String,
    #[serde(default)]
    pub payload: RawJson,
    pub state: String,
    #[serde(default)]
    pub result: String,
    #[serde(default)]
    pub error: String,
    pub created_at: f64,
    pub updated_at: f64,
    #[serde(default = "default_ttl")]
    pub ttl: u64,
}

impl Task {
    pub fn is_final(&self) -> bool {
        state::is_final(&self.state)
    }

    /// What the task costs to keep, counted against [`Limits::max_bytes`]:
    /// its texts plus a fixed share for the record and the map entry.
    fn stored_bytes(&self) -> usize {
        const RECORD: usize = 256;
        RECORD
            + self.id.len()
            + self.skill.len()
            + self.target_agent_id.len()
            + self.source_agent_id.len()
            + self.assigned_agent_id.len()
            + self.payload.as_str().len()
            + self.state.len()
            + self.result.len()
            + self.error.len()
    }

    /// The moment the task expires: "age exceeds ttl" means `now > deadline`.
    fn deadline(&self) -> f64 {
        self.created_at + self.ttl as f64
    }

    /// Listing order: oldest first, id as a tie-breaker so that the order
    /// never depends on the hash map's.
    fn order(a: &Task, b: &Task) -> Ordering {
        a.created_at.total_cmp(&b.created_at).then_with(|| a.id.cmp(&b.id))
    }

    fn claimable_by(&self, agent_id: &str, skills: &[String]) -> bool {
        if self.state != state::PENDING {
            return false;
        }
        // A targeted task goes to its target only, whatever its skill (the
        // original let any agent with the skill take it).
        if !self.target_agent_id.is_empty() {
            return self.target_agent_id == agent_id;
        }
        !self.skill.is_empty() && skills.contains(&self.skill)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_open: usize,
    pub max_finished: usize,
    pub finished_retention: Duration,
    /// Bytes all tasks together may take ([`Task::stored_bytes`]); finished
    /// tasks are forgotten, oldest first, to make room.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_open: 10_000,
            max_finished: 1_000,
            finished_retention: Duration::from_secs(3600),
            max_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// [`Limits::max_open`] tasks are already waiting or running.
    Full,
    /// Unfinished tasks already take [`Limits::max_bytes`].
    NoRoom,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full => f.write_str("too many open tasks"),
            SubmitError::NoRoom => f.write_str("task store full"),
        }
    }
}

impl std::error::Error for SubmitError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    NotFound,
    /// The task is `completed` or `failed` and cannot change any more.
    Final,
    /// The new `result`/`error` do not fit in [`Limits::max_bytes`].
    NoRoom,
}

impl fmt::Display for UpdateError {
    /// The texts are the compatible `{"error": …}` values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::NotFound => f.write_str("not found"),
            UpdateError::Final => f.write_str("task is final"),
            UpdateError::NoRoom => f.write_str("task store full"),
        }
    }
}

impl std::error::Error for UpdateError {}

#[derive(Debug, Clone)]
pub struct TaskHub {
    tasks: HashMap<String, Task>,
    limits: Limits,
    seed: u64,
    counter: u64,
    open: usize,
    finished: usize,
    /// Sum of [`Task::stored_bytes`] over all tasks.
    bytes: usize,
    /// Nothing time-driven can happen at or before this instant, which lets
    /// the many calls between deadlines skip the scan over all tasks.
    next_sweep: f64,
    revision: u64,
}

impl TaskHub {
    /// `seed` should be random (the shell fills it from getrandom): it keeps
    /// the ids of this process apart from those of earlier runs, whose tasks
    /// may have been restored from disk.
    pub fn new(seed: u64) -> Self {
        Self::with_limits(seed, Limits::default())
    }

    pub fn with_limits(seed: u64, limits: Limits) -> Self {
        TaskHub {
            tasks: HashMap::new(),
            limits,
            seed,
            counter: 0,
            open: 0,
            finished: 0,
            bytes: 0,
            next_sweep: f64::INFINITY,
            revision: 0,
        }
    }

    /// Number of tasks held, finished or not, as of the last call.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Grows by at least one whenever the hub's content changes, including
    /// changes made lazily by a read (expiry, forgetting old tasks). The
    /// shell compares it before and after a call to know whether to persist.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `POST /api/hub/tasks`: queues a `pending` task and returns its id.
    pub fn submit(&mut self, sub: TaskSubmission, now: SystemTime) -> Result<String, SubmitError> {
        let now = epoch_seconds(now);
        self.sweep(now);
        if self.open >= self.limits.max_open {
            return Err(SubmitError::Full);
        }
        let id = self.next_id(now);
        let task = Task {
            id: id.clone(),
            skill: sub.skill,
            target_agent_id: sub.target_agent_id,
            source_agent_id: sub.source_agent_id,
            assigned_agent_id: String::new(),
            payload: sub.payload,
            state: state::PENDING.to_owned(),
            result: String::new(),
            error: String::new(),
            created_at: now,
            updated_at: now,
            ttl: sub.ttl.min(MAX_TTL),
        };
        if !self.make_room(task.stored_bytes()) {
            return Err(SubmitError::NoRoom);
        }
        self.bytes += task.stored_bytes();
        self.next_sweep = self.next_sweep.min(task.deadline());
        self.tasks.insert(id.clone(), task);
        self.open += 1;
        self.revision += 1;
        Ok(id)
    }

    /// `GET /api/hub/tasks/all`: every task, oldest first.
    pub fn all(&mut self, now: SystemTime) -> Vec<Task> {
        self.sweep(epoch_seconds(now));
        self.snapshot()
    }

    pub fn get(&mut self, id: &str, now: SystemTime) -> Option<Task> {
        self.sweep(epoch_seconds(now));
        self.tasks.get(id).cloned()
    }

    /// `POST /api/hub/tasks/{id}`.
    pub fn update(&mut self, id: &str, upd: TaskUpdate, now: SystemTime) -> Result<(), UpdateError> {
        let now = epoch_seconds(now);
        self.sweep(now);
        let task = self.tasks.get(id).ok_or(UpdateError::NotFound)?;
        if task.is_final() {
            return Err(UpdateError::Final);
        }
        let old = task.stored_bytes();
        let replaced = |new: &str, current: &str| if new.is_empty() { current.len() } else { new.len() };
        let new = old - task.state.len() - task.result.len() - task.error.len()
            + upd.state.len()
            + replaced(&upd.result, &task.result)
            + replaced(&upd.error, &task.error);
        if new > old && !self.make_room(new - old) {
            return Err(UpdateError::NoRoom);
        }
        self.bytes = self.bytes + new - old;
        let task = self.tasks.get_mut(id).ok_or(UpdateError::NotFound)?;
        task.state = upd.state;
        if !upd.result.is_empty() {
            task.result = upd.result;
        }
        if !upd.error.is_empty() {
            task.error = upd.error;
        }
        task.updated_at = now;
        if task.is_final() {
            let forget_at = now + self.limits.finished_retention.as_secs_f64();
            self.open = self.open.saturating_sub(1);
            self.finished += 1;
            self.next_sweep = self.next_sweep.min(forget_at);
            self.trim_finished();
        }
        self.revision += 1;
        Ok(())
    }

    /// Claim on heartbeat: every `pending` task addressed to `agent_id`, or
    /// addressed to nobody with a skill in `skills`, becomes `assigned` to
    /// the agent and is returned, oldest first.
    pub fn claim(&mut self, agent_id: &str, skills: &[String], now: SystemTime) -> Vec<Task> {
        let now = epoch_seconds(now);
        self.sweep(now);
        let mut claimed: Vec<Task> = self
            .tasks
            .values_mut()
            .filter(|t| t.claimable_by(agent_id, skills))
            .map(|t| {
                t.state = state::ASSIGNED.to_owned();
                t.assigned_agent_id = agent_id.to_owned();
                t.updated_at = now;
                t.clone()
            })
            .collect();
        if !claimed.is_empty() {
            self.revision += 1;
        }
        claimed.sort_by(Task::order);
        claimed
    }

    /// Every task, oldest first, as they stand after the last call; for
    /// persisting. Does not apply expiry (it takes no `now`).
    pub fn snapshot(&self) -> Vec<Task> {
        let mut all: Vec<Task> = self.tasks.values().cloned().collect();
        all.sort_by(Task::order);
        all
    }

    /// Replaces the content with `tasks` (e.g. a snapshot read back from
    /// disk) and applies expiry and the bounds as of `now`. Of duplicate
    /// ids the last wins. Returns how many unfinished tasks were dropped
    /// because they exceeded [`Limits::max_open`] or, with every finished
    /// task gone, [`Limits::max_bytes`] (the newest go, since the oldest
    /// were accepted first).
    pub fn restore(&mut self, tasks: Vec<Task>, now: SystemTime) -> usize {
        self.tasks = tasks
            .into_iter()
            .map(|mut t| {
                t.ttl = t.ttl.min(MAX_TTL);
                (t.id.clone(), t)
            })
            .collect();
        self.revision += 1;
        // Expire first, so that tasks that are over anyway do not take the
        // place of live ones under the bounds.
        self.next_sweep = f64::NEG_INFINITY;
        self.sweep(epoch_seconds(now));
        if self.open <= self.limits.max_open && self.make_room(0) {
            return 0;
        }
        let mut open: Vec<(f64, String)> =
            self.tasks.values().filter(|t| !t.is_final()).map(|t| (t.created_at, t.id.clone())).collect();
        open.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        // Newest first: the oldest were accepted first.
        let mut dropped = 0;
        while self.open - dropped > self.limits.max_open || self.bytes > self.limits.max_bytes {
            let Some((_, id)) = open.pop() else { break };
            if let Some(t) = self.tasks.remove(&id) {
                self.bytes -= t.stored_bytes();
            }
            dropped += 1;
        }
        self.open -= dropped;
        dropped
    }

    /// Forgets finished tasks, earliest finished first, until `need` more
    /// bytes fit under [`Limits::max_bytes`]; `false` if they cannot.
    fn make_room(&mut self, need: usize) -> bool {
        if self.bytes + need <= self.limits.max_bytes {
            return true;
        }
        let finished = self.finished_oldest_first();
        for id in finished {
            if self.bytes + need <= self.limits.max_bytes {
                break;
            }
            if let Some(t) = self.tasks.remove(&id) {
                self.bytes -= t.stored_bytes();
                self.finished -= 1;
                self.revision += 1;
            }
        }
        self.bytes + need <= self.limits.max_bytes
    }

    /// Applies what time has made due: fails expired tasks, forgets finished
    /// tasks past retention, and recounts.
    fn sweep(&mut self, now: f64) {
        if now <= self.next_sweep {
            return;
        }
        let retention = self.limits.finished_retention.as_secs_f64();
        let before = self.tasks.len();
        let mut changed = false;
        self.tasks.retain(|_, t| {
            if !t.is_final() && now > t.deadline() {
                t.state = state::FAILED.to_owned();
                t.error = TTL_EXPIRED.to_owned();
                // When it expired, not when we noticed: the retention clock
                // then starts at the right moment however late the sweep.
                t.updated_at = t.deadline();
                changed = true;
            }
            !(t.is_final() && now > t.updated_at + retention)
        });
        changed |= self.tasks.len() != before;
        self.finished = self.tasks.values().filter(|t| t.is_final()).count();
        self.open = self.tasks.len() - self.finished;
        self.bytes = self.tasks.values().map(Task::stored_bytes).sum();
        changed |= self.trim_finished();
        self.next_sweep = self
            .tasks
            .values()
            .map(|t| if t.is_final() { t.updated_at + retention } else { t.deadline() })
            .fold(f64::INFINITY, f64::min);
        if changed {
            self.revision += 1;
        }
    }

    /// Ids of the finished tasks, earliest finished first (id breaks ties).
    fn finished_oldest_first(&self) -> Vec<String> {
        let mut finished: Vec<(f64, &String)> =
            self.tasks.values().filter(|t| t.is_final()).map(|t| (t.updated_at, &t.id)).collect();
        finished.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        finished.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Forgets the earliest-finished tasks beyond [`Limits::max_finished`].
    fn trim_finished(&mut self) -> bool {
        if self.finished <= self.limits.max_finished {
            return false;
        }
        let finished = self.finished_oldest_first();
        let excess = finished.len().saturating_sub(self.limits.max_finished);
        for id in finished.iter().take(excess) {
            if let Some(t) = self.tasks.remove(id) {
                self.bytes -= t.stored_bytes();
            }
        }
        self.finished -= excess;
        excess > 0
    }

    fn next_id(&mut self, now: f64) -> String {
        loop {
            self.counter = self.counter.wrapping_add(1);
            let id = task_id(self.seed, self.counter, now);
            // Only a restored task from an earlier run can collide, and only
            // with negligible probability; skipping keeps it from being
            // overwritten anyway.
            if !self.tasks.contains_key(&id) {
                return id;
            }
        }
    }
}

/// A 128-bit id shown like a UUID (8-4-4-4-12 hex): 48 bits of submission
/// time in milliseconds, 64 bits that are a bijection of the counter keyed
/// by the seed, and 16 bits of the seed. The bijection makes ids of one
/// process distinct for 2^64 submissions whatever the clock does; the seed
/// and the time make a collision with an earlier run's ids improbable.
fn task_id(seed: u64, counter: u64, now: f64) -> String {
    // `as` saturates and maps NaN to 0, which is what a broken clock deserves.
    let millis = ((now * 1000.0) as u64) & 0xFFFF_FFFF_FFFF;
    let unique = mix(counter ^ seed);
    let tag = mix(seed.rotate_left(32)) & 0xFFFF;
    let bits = (u128::from(millis) << 80) | (u128::from(unique) << 16) | u128::from(tag);
    let hex = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The splitmix64 finalizer: a bijection on u64 (each step, xor-shift or
/// multiplication by an odd constant, is invertible) that scatters bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seconds since the Unix epoch; a clock before 1970 reads as 0 rather than
/// failing.
pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;

    const BASE: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(BASE + secs)
    }

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(BASE) + Duration::from_millis(ms)
    }

    fn sub(skill: &str, target: &str) -> TaskSubmission {
        TaskSubmission { skill: skill.into(), target_agent_id: target.into(), ..TaskSubmission::default() }
    }

    fn upd(state: &str, result: &str, error: &str) -> TaskUpdate {
        TaskUpdate { state: state.into(), result: result.into(), error: error.into() }
    }

    fn skills(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn ids(tasks: &[Task]) -> Vec<String> {
        tasks.iter().map(|t| t.id.clone()).collect()
    }

    #[test]
    fn submission_defaults_match_spec() {
        let s: TaskSubmission = serde_json::from_value(json!({})).unwrap();
        assert_eq!(s, TaskSubmission::default());
        assert_eq!(s.ttl, 300);
        assert_eq!(s.payload, Value::Null);
        let s: TaskSubmission =
            serde_json::from_value(json!({"skill": "x", "target_agent_id": "a", "source_agent_id": "b",
                   "payload": {"k": [1]}, "ttl": 5, "extra": 1}))
            .unwrap();
        assert_eq!(s.payload, json!({"k": [1]}));
        assert_eq!(s.ttl, 5);
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        for bad in [json!({"ttl": -1}), json!({"ttl": "300"}), json!({"ttl": 1.5}), json!({"skill": 3}), json!([1])] {
            assert!(serde_json::from_value::<TaskSubmission>(bad.clone()).is_err(), "{bad}");
        }
        for bad in [json!({}), json!({"state": 1}), json!({"state": "x", "result": {}})] {
            assert!(serde_json::from_value::<TaskUpdate>(bad.clone()).is_err(), "{bad}");
        }
        let u: TaskUpdate = serde_json::from_value(json!({"state": "completed"})).unwrap();
        assert_eq!(u, upd("completed", "", ""));
    }

    #[test]
    fn submit_creates_a_pending_task_with_all_fields() {
        let mut hub = TaskHub::new(7);
        let mut s = sub("search", "a1");
        s.source_agent_id = "src".into();
        s.payload = json!({"q": "x"}).into();
        s.ttl = 60;
        let id = hub.submit(s, at_ms(1500)).unwrap();
        let t = hub.get(&id, at(2)).unwrap();
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            v,
            json!({
                "id": id, "skill": "search", "target_agent_id": "a1", "source_agent_id": "src",
                "assigned_agent_id": "", "payload": {"q": "x"}, "state": "pending",
                "result": "", "error": "", "created_at": (BASE as f64) + 1.5,
                "updated_at": (BASE as f64) + 1.5, "ttl": 60
            })
        );
        assert!(hub.get("nope", at(2)).is_none());
    }

    #[test]
    fn task_round_trips_through_json_and_tolerates_missing_optionals() {
        let mut hub = TaskHub::new(1);
        let id = hub.submit(sub("s", ""), at(0)).unwrap();
        let t = hub.get(&id, at(0)).unwrap();
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Task>(&text).unwrap(), t);
        let minimal: Task =
            serde_json::from_value(json!({"id": "x", "state": "pending", "created_at": 1.0, "updated_at": 2.0}))
                .unwrap();
        assert_eq!(minimal.ttl, 300);
        assert_eq!(minimal.payload, Value::Null);
        assert!(serde_json::from_value::<Task>(json!({"id": "x"})).is_err());
    }

    #[test]
    fn ids_look_like_uuids_and_never_repeat() {
        let mut hub = TaskHub::new(42);
        let mut seen = HashSet::new();
        for _ in 0..5000 {
            // Same instant every time: uniqueness must not rely on the clock.
            let id = hub.submit(sub("s", ""), at(0)).unwrap();
            assert_eq!(id.len(), 36);
            let parts: Vec<_> = id.split('-').map(str::len).collect();
            assert_eq!(parts, [8, 4, 4, 4, 12]);
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
            assert!(!id.chars().any(|c| c.is_ascii_uppercase()));
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn ids_differ_across_seeds_and_are_deterministic_per_seed() {
        let first = |seed| TaskHub::new(seed).submit(sub("s", ""), at(0)).unwrap();
        assert_eq!(first(1), first(1));
        assert_ne!(first(1), first(2));
        // The counter is a bijection keyed by the seed, so nearby seeds and
        // counters do not line up into shared ids.
        let a: HashSet<String> = (0..1000).map(|i| task_id(1, i, 0.0)).collect();
        let b: HashSet<String> = (0..1000).map(|i| task_id(2, i, 0.0)).collect();
        assert!(a.is_disjoint(&b));
    }

    #[test]
    fn id_survives_absurd_clocks() {
        assert_eq!(task_id(0, 0, f64::NAN).len(), 36);
        assert_eq!(task_id(0, 0, -5.0).len(), 36);
        assert_eq!(task_id(u64::MAX, u64::MAX, f64::MAX).len(), 36);
        let mut hub = TaskHub::new(0);
        let before_1970 = UNIX_EPOCH - Duration::from_secs(10);
        assert!(hub.submit(sub("s", ""), before_1970).is_ok());
    }

    #[test]
    fn all_lists_oldest_first() {
        let mut hub = TaskHub::new(3);
        let a = hub.submit(sub("s", ""), at(5)).unwrap();
        let b = hub.submit(sub("s", ""), at(1)).unwrap();
        let c = hub.submit(sub("s", ""), at(3)).unwrap();
        assert_eq!(ids(&hub.all(at(6))), [b, c, a]);
    }

    #[test]
    fn update_sets_state_and_keeps_result_and_error_on_empty() {
        let mut hub = TaskHub::new(0);
        let id = hub.submit(sub("s", ""), at(0)).unwrap();
        hub.update(&id, upd("running", "partial", ""), at(1)).unwrap();
        hub.update(&id, upd("running", "", "warn"), at(2)).unwrap();
        let t = hub.get(&id, at(2)).unwrap();
        assert_eq!(t.state, "running");
        assert_eq!(t.result, "partial");
        assert_eq!(t.error, "warn");
        assert_eq!(t.updated_at, (BASE + 2) as f64);
        hub.update(&id, upd("completed", "done", ""), at(3)).unwrap();
        let t = hub.get(&id, at(3)).unwrap();
        assert_eq!((t.state.as_str(), t.result.as_str()), ("completed", "done"));
    }

    #[test]
    fn update_errors() {
        let mut hub = TaskHub::new(0);
        assert_eq!(hub.update("x", upd("completed", "", ""), at(0)), Err(UpdateError::NotFound));
        let id = hub.submit(sub("s", ""), at(0)).unwrap();
        hub.update(&id, upd("failed", "", "boom"), at(1)).unwrap();
        assert_eq!(hub.update(&id, upd("pending", "", ""), at(2)), Err(UpdateError::Final));
        assert_eq!(hub.update(&id, upd("completed", "r", ""), at(2)), Err(UpdateError::Final));
        let t = hub.get(&id, at(2)).unwrap();
        assert_eq!((t.state.as_str(), t.error.as_str(), t.result.as_str()), ("failed", "boom", ""));
        assert_eq!(UpdateError::NotFound.to_string(), "not found");
        assert_eq!(UpdateError::Final.to_string(), "task is final");
    }

    #[test]
    fn claim_by_target_and_by_skill() {
        let mut hub = TaskHub::new(0);
        let targeted = hub.submit(sub("", "a1"), at(1)).unwrap();
        let by_skill = hub.submit(sub("search", ""), at(2)).unwrap();
        let other_skill = hub.submit(sub("chat", ""), at(3)).unwrap();
        let for_a2 = hub.submit(sub("search", "a2"), at(4)).unwrap();

        let got = hub.claim("a1", &skills(&["search"]), at(10));
        assert_eq!(ids(&got), [targeted.clone(), by_skill.clone()]);
        for t in &got {
            assert_eq!(t.state, "assigned");
            assert_eq!(t.assigned_agent_id, "a1");
            assert_eq!(t.updated_at, (BASE + 10) as f64);
        }
        assert_eq!(hub.get(&by_skill, at(10)).unwrap().state, "assigned");
        // Claimed tasks are not handed out twice.
        assert!(hub.claim("a1", &skills(&["search"]), at(11)).is_empty());
        assert!(hub.claim("a3", &skills(&["search"]), at(11)).is_empty());
        // A targeted task goes to its target only, even with a matching skill.
        assert_eq!(hub.get(&for_a2, at(11)).unwrap().state, "pending");
        assert_eq!(ids(&hub.claim("a2", &[], at(12))), [for_a2]);
        assert_eq!(hub.get(&other_skill, at(12)).unwrap().state, "pending");
    }

    #[test]
    fn claim_ignores_empty_skill_and_empty_agent() {
        let mut hub = TaskHub::new(0);
        let id = hub.submit(sub("", ""), at(0)).unwrap();
        assert!(hub.claim("", &skills(&[""]), at(1)).is_empty());
        assert!(hub.claim("a", &skills(&[""]), at(1)).is_empty());
        assert_eq!(hub.get(&id, at(1)).unwrap().state, "pending");
    }

    #[test]
    fn claim_skips_non_pending() {
        let mut hub = TaskHub::new(0);
        let id = hub.submit(sub("s", ""), at(0)).unwrap();
        hub.update(&id, upd("running", "", ""), at(1)).unwrap();
        assert!(hub.claim("a", &skills(&["s"]), at(2)).is_empty());
        // An agent may hand a task back by setting it pending again.
        hub.update(&id, upd("pending", "", ""), at(3)).unwrap();
        assert_eq!(ids(&hub.claim("b", &skills(&["s"]), at(4))), [id]);
    }

    #[test]
    fn ttl_expiry_is_applied_lazily_by_every_call() {
        let mut hub = TaskHub::new(0);
        let mut s = sub("s", "");
        s.ttl = 10;
        let id = hub.submit(s, at(0)).unwrap();
        // Age equal to ttl is not "exceeds".
        assert_eq!(hub.get(&id, at(10)).unwrap().state, "pending");
        let t = hub.get(&id, at_ms(10_001)).unwrap();
        assert_eq!(t.state, "failed");
        assert_eq!(t.error, "TTL expired");
        assert_eq!(t.updated_at, (BASE + 10) as f64);

        for call in 0..4 {
            let mut hub = TaskHub::new(0);
            let mut s = sub("s", "");
            s.ttl = 10;
            let id = hub.submit(s, at(0)).unwrap();
            let later = at(11);
            match call {
                0 => assert!(hub.claim("a", &skills(&["s"]), later).is_empty()),
                1 => assert_eq!(hub.all(later)[0].state, "failed"),
                2 => assert_eq!(hub.update(&id, upd("completed", "", ""), later), Err(UpdateError::Final)),
                _ => {
                    hub.submit(sub("x", ""), later).unwrap();
                }
            }
            assert_eq!(hub.snapshot()[0].error, "TTL expired", "call {call}");
        }
    }

    #[test]
    fn assigned_tasks_expire_too_but_finished_ones_do_not() {
        let mut hub = TaskHub::new(0);
        let mut s = sub("s", "");
        s.ttl = 10;
        let assigned = hub.submit(s.clone(), at(0)).unwrap();
        let done = hub.submit(s, at(0)).unwrap();
        hub.claim("a", &skills(&["s"]), at(1));
        hub.update(&done, upd("completed", "ok", ""), at(2)).unwrap();
        let t = hub.get(&assigned, at(20)).unwrap();
        assert_eq!((t.state.as_str(), t.error.as_str()), ("failed", "TTL expired"));
        assert_eq!(t.assigned_agent_id, "a");
        let t = hub.get(&done, at(20)).unwrap();
        assert_eq!((t.state.as_str(), t.error.as_str()), ("completed", ""));
    }

    #[test]
    fn zero_ttl_expires_at_the_next_instant() {
        let mut hub = TaskHub::new(0);
        let mut s = sub("s", "");
        s.ttl = 0;
        let id = hub.submit(s, at(0)).unwrap();
        assert_eq!(hub.claim("a", &skills(&["s"]), at(0))[0].id, id);
        assert_eq!(hub.get(&id, at_ms(1)).unwrap().state, "failed");
    }

    #[test]
    fn finished_tasks_are_forgotten_an_hour_after_finishing() {
        let mut hub = TaskHub::new(0);
        let mut s = sub("s", "");
        s.ttl = 100_000;
        let done = hub.submit(s.clone(), at(0)).unwrap();
        let open = hub.submit(s, at(0)).unwrap();
        hub.update(&done, upd("completed", "", ""), at(100)).unwrap();
        assert!(hub.get(&done, at(3700)).is_some());
        assert!(hub.get(&done, at(3701)).is_none());
        assert!(hub.get(&open, at(3701)).is_some());
        assert_eq!(hub.len(), 1);
    }

    #[test]
    fn expired_tasks_are_kept_an_hour_after_expiring() {
        let mut hub = TaskHub::new(0);
        let mut s = sub("s", "");
        s.ttl = 10;
        let id = hub.submit(s, at(0)).unwrap();
        // First looked at long after expiry, but within the hour after it.
        assert_eq!(hub.get(&id, at(3000)).unwrap().error, "TTL expired");
        assert!(hub.get(&id, at(3610)).is_some());
        assert!(hub.get(&id, at(3611)).is_none());
        // Never looked at within the hour: gone at the first look.
        let mut s = sub("s", "");
        s.ttl = 10;
        let id = hub.submit(s, at(4000)).unwrap();
        assert!(hub.get(&id, at(9000)).is_none());
        assert!(hub.is_empty());
    }

    #[test]
    fn finished_tasks_are_bounded_in_count_oldest_finished_first() {
        let limits = Limits { max_finished: 3, ..Limits::default() };
        let mut hub = TaskHub::with_limits(0, limits);
        let ids: Vec<String> = (0..5).map(|i| hub.submit(sub("s", ""), at(i)).unwrap()).collect();
        // Finish in an order different from submission.
        for (i, k) in [4usize, 0, 3, 1, 2].into_iter().enumerate() {
            hub.update(&ids[k], upd("completed", "", ""), at(10 + i as u64)).unwrap();
        }
        let left: HashSet<String> = hub.all(at(20)).into_iter().map(|t| t.id).collect();
        let want: HashSet<String> = [&ids[3], &ids[1], &ids[2]].into_iter().cloned().collect();
        assert_eq!(left, want);
    }

    fn with_payload(bytes: usize) -> TaskSubmission {
        TaskSubmission { skill: "s".into(), payload: json!("x".repeat(bytes)).into(), ..TaskSubmission::default() }
    }

    #[test]
    fn stored_bytes_are_bounded_and_finished_tasks_make_room_first() {
        let limits = Limits { max_bytes: 21_000, ..Limits::default() };
        let mut hub = TaskHub::with_limits(0, limits);
        let ids: Vec<String> = (0..6).map(|i| hub.submit(with_payload(3_000), at(i)).unwrap()).collect();
        assert_eq!(hub.submit(with_payload(3_000), at(6)), Err(SubmitError::NoRoom));
        // A small one still fits.
        let small = hub.submit(sub("s", ""), at(6)).unwrap();
        // Finished tasks are forgotten, earliest finished first, to make room.
        hub.update(&ids[3], upd("completed", "", ""), at(7)).unwrap();
        hub.update(&ids[1], upd("completed", "", ""), at(8)).unwrap();
        let fresh = hub.submit(with_payload(3_000), at(9)).unwrap();
        let left: HashSet<String> = hub.all(at(9)).into_iter().map(|t| t.id).collect();
        assert!(!left.contains(&ids[3]) && left.contains(&ids[1]) && left.contains(&fresh), "{left:?}");
        // A result that does not fit is refused and the task stays as it was.
        let huge = "r".repeat(30_000);
        assert_eq!(hub.update(&small, upd("completed", &huge, ""), at(10)), Err(UpdateError::NoRoom));
        assert_eq!(hub.get(&small, at(10)).unwrap().state, "pending");
        // Once the finished one is gone, results may use its room.
        hub.update(&small, upd("completed", &"r".repeat(2_500), ""), at(11)).unwrap();
        assert!(hub.get(&ids[1], at(11)).is_none());
        // The running count matches a recount.
        let recount: usize = hub.snapshot().iter().map(Task::stored_bytes).sum();
        assert_eq!(hub.bytes, recount);
        assert!(hub.bytes <= 21_000);
    }

    #[test]
    fn payloads_are_kept_as_their_text_and_ttl_is_capped() {
        let mut hub = TaskHub::new(0);
        let body = br#"{"skill":"s","ttl":18446744073709551615,"payload":[0,0,0,{"a":[1]}]}"#;
        let sub: TaskSubmission = serde_json::from_slice(body).unwrap();
        let id = hub.submit(sub, at(0)).unwrap();
        let task = hub.get(&id, at(0)).unwrap();
        assert_eq!(task.ttl, MAX_TTL);
        assert_eq!(task.payload.as_str(), r#"[0,0,0,{"a":[1]}]"#);
        assert_eq!(serde_json::to_value(&task).unwrap()["payload"], json!([0, 0, 0, {"a": [1]}]));
    }

    #[test]
    fn restore_drops_the_newest_open_tasks_beyond_the_byte_bound() {
        let mut old = TaskHub::new(1);
        let submitted: Vec<String> = (0..5).map(|i| old.submit(with_payload(3_000), at(i)).unwrap()).collect();
        let limits = Limits { max_bytes: 10_000, ..Limits::default() };
        let mut hub = TaskHub::with_limits(2, limits);
        assert_eq!(hub.restore(old.snapshot(), at(10)), 2);
        assert_eq!(ids(&hub.snapshot()), submitted[..3]);
    }

    #[test]
    fn default_limits() {
        let l = Limits::default();
        assert_eq!(l.max_open, 10_000);
        assert_eq!(l.max_finished, 1_000);
        assert_eq!(l.finished_retention, Duration::from_secs(3600));
    }

    #[test]
    fn open_tasks_are_bounded() {
        let limits = Limits { max_open: 2, ..Limits::default() };
        let mut hub = TaskHub::with_limits(0, limits);
        let a = hub.submit(sub("s", ""), at(0)).unwrap();
        hub.submit(sub("s", ""), at(0)).unwrap();
        assert_eq!(hub.submit(sub("s", ""), at(0)), Err(SubmitError::Full));
        assert_eq!(SubmitError::Full.to_string(), "too many open tasks");
        // Assigned tasks still count as open.
        hub.claim("x", &skills(&["s"]), at(1));
        assert_eq!(hub.submit(sub("s", ""), at(1)), Err(SubmitError::Full));
        // Finishing one frees a slot.
        hub.update(&a, upd("completed", "", ""), at(2)).unwrap();
        assert!(hub.submit(sub("s", ""), at(2)).is_ok());
        assert_eq!(hub.submit(sub("s", ""), at(2)), Err(SubmitError::Full));
        // So does expiry.
        assert!(hub.submit(sub("s", ""), at(400)).is_ok());
    }

    #[test]
    fn revision_tracks_every_change_including_lazy_ones() {
        let mut hub = TaskHub::new(0);
        let r0 = hub.revision();
        let mut s = sub("s", "");
        s.ttl = 10;
        let id = hub.submit(s, at(0)).unwrap();
        let r1 = hub.revision();
        assert!(r1 > r0);
        hub.all(at(1));
        hub.get(&id, at(1));
        assert!(hub.claim("a", &skills(&["other"]), at(1)).is_empty());
        assert_eq!(hub.revision(), r1, "reads changed nothing");
        hub.get(&id, at(11));
        let r2 = hub.revision();
        assert!(r2 > r1, "expiry on read is a change");
        assert!(hub.update(&id, upd("x", "", ""), at(12)).is_err());
        assert_eq!(hub.revision(), r2);
        hub.get(&id, at(4000));
        assert!(hub.revision() > r2, "forgetting is a change");
    }

    #[test]
    fn snapshot_and_restore_round_trip() {
        let mut hub = TaskHub::new(9);
        let a = hub.submit(sub("s", ""), at(0)).unwrap();
        let b = hub.submit(sub("", "t"), at(1)).unwrap();
        hub.claim("t", &[], at(2));
        hub.update(&a, upd("completed", "r", ""), at(3)).unwrap();
        let snap = hub.snapshot();
        let text = serde_json::to_string(&snap).unwrap();

        let mut fresh = TaskHub::new(10);
        let back: Vec<Task> = serde_json::from_str(&text).unwrap();
        assert_eq!(fresh.restore(back, at(4)), 0);
        assert_eq!(fresh.snapshot(), snap);
        assert_eq!(fresh.get(&b, at(4)).unwrap().state, "assigned");
        // Terminal state and counts survive the restore.
        assert_eq!(fresh.update(&a, upd("pending", "", ""), at(5)), Err(UpdateError::Final));
        let c = fresh.submit(sub("s", ""), at(5)).unwrap();
        assert!(c != a && c != b);
        assert_eq!(fresh.len(), 3);
    }

    #[test]
    fn restore_applies_expiry_retention_and_bounds() {
        let mut old = TaskHub::new(1);
        let mut short = sub("s", "");
        short.ttl = 10;
        let mut long = sub("s", "");
        long.ttl = 100_000;
        let expired = old.submit(short, at(0)).unwrap();
        let gone = old.submit(long.clone(), at(0)).unwrap();
        old.update(&gone, upd("failed", "", "x"), at(1)).unwrap();
        let keep: Vec<String> = (0..3).map(|i| old.submit(long.clone(), at(5 + i)).unwrap()).collect();
        let snap = old.snapshot();
        assert_eq!(snap[0].state, "pending", "not yet expired on disk");

        let limits = Limits { max_open: 2, ..Limits::default() };
        let mut hub = TaskHub::with_limits(2, limits);
        // At 3605 s the first task has expired (kept: it finished at 10 s),
        // the failed one finished over an hour ago (forgotten), and of the
        // three live tasks the newest exceeds max_open. The expired task
        // does not count against the bound.
        let dropped = hub.restore(snap, at(3605));
        assert_eq!(dropped, 1);
        let left = hub.snapshot();
        assert_eq!(ids(&left), [expired, keep[0].clone(), keep[1].clone()]);
        assert_eq!(left[0].error, "TTL expired");
        assert_eq!(left[0].updated_at, (BASE + 10) as f64);
        assert_eq!(hub.submit(sub("s", ""), at(3605)), Err(SubmitError::Full));
        hub.update(&keep[0], upd("completed", "", ""), at(3606)).unwrap();
        assert!(hub.submit(sub("s", ""), at(3606)).is_ok());
    }

    #[test]
    fn restore_keeps_the_last_of_duplicate_ids() {
        let mut hub = TaskHub::new(0);
        let mut t: Task = serde_json::from_value(json!({
            "id": "dup", "state": "pending",
            "created_at": BASE as f64, "updated_at": BASE as f64
        }))
        .unwrap();
        let first = t.clone();
        t.skill = "second".into();
        hub.restore(vec![first, t], at(1));
        assert_eq!(hub.len(), 1);
        assert_eq!(hub.get("dup", at(1)).unwrap().skill, "second");
    }

    #[test]
    fn generated_ids_skip_restored_ones() {
        let mut probe = TaskHub::new(5);
        let would_be = probe.submit(sub("s", ""), at(0)).unwrap();
        let mut hub = TaskHub::new(5);
        let restored: Task = serde_json::from_value(json!({
            "id": would_be, "skill": "restored", "state": "pending",
            "created_at": BASE as f64, "updated_at": BASE as f64
        }))
        .unwrap();
        hub.restore(vec![restored], at(0));
        let id = hub.submit(sub("s", ""), at(0)).unwrap();
        assert_ne!(id, would_be);
        assert_eq!(hub.get(&would_be, at(0)).unwrap().skill, "restored");
    }
}
