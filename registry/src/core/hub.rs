//! The signaling hub (docs/PROTOCOL.md, Signaling WebSocket): who is
//! connected, what each frame
//! means, where it goes. Sans-IO: the shell feeds connections, frames and
//! ticks in, and drains [`HubOutput`]s to move bytes.

use crate::core::ratelimit::{Rate, TokenBucket};
use crate::core::token::Identity;
use chatixia_protocol::signaling::{
    Envelope, EnvelopeRef, ErrorPayload, MeshHealthPayload, MeshStatusPayload, PeerLeftPayload, PeerListPayload,
    PongPayload, close_codes, error_codes, types,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

pub type ConnId = u64;

/// "Is this peer_id allowed in the mesh right now?" Fed by the API keys and
/// the pairing store; asked at every decision, never cached.
/// Tables this small are never shrunk: growing them back costs more than
/// they hold.
const SPARE_FLOOR: usize = 64;

fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > SPARE_FLOOR && map.capacity() > 4 * map.len() {
        map.shrink_to_fit();
    }
}

pub trait Authorize {
    fn is_authorized(&self, peer_id: &str) -> bool;
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub max_frame_bytes: usize,
    pub frame_rate: Rate,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// Bounds what one `mesh_status` may claim.
    pub max_reported_peers: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_frame_bytes: 64 * 1024,
            frame_rate: Rate::new(200.0, 400.0),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_reported_peers: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubOutput {
    Send { conn: ConnId, text: String },
    Ping { conn: ConnId },
    Close { conn: ConnId, code: u16, reason: &'static str },
}

struct Conn {
    peer_id: String,
    last_seen: Instant,
    last_ping: Instant,
    bucket: TokenBucket,
    /// Inside a run of rate-limited frames: only the first gets an error.
    limited: bool,
    /// Last known authorization, only to notice transitions.
    authorized: bool,
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    pub relayed: u64,
    pub drops: BTreeMap<&'static str, u64>,
}

pub struct Hub {
    config: HubConfig,
    started: Instant,
    conns: HashMap<ConnId, Conn>,
    by_peer: HashMap<String, ConnId>,
    mesh_status: HashMap<String, Vec<String>>,
    /// Per reporter, the peers whose link it reported a path for, and
    /// whether that path goes through a TURN relay.
    mesh_paths: HashMap<String, BTreeMap<String, bool>>,
    outputs: VecDeque<HubOutput>,
    /// Peers whose connection ended, not yet announced (see
    /// [`Hub::handle_departures`]).
    departed: Vec<String>,
    pub stats: HubStats,
}

impl Hub {
    pub fn new(config: HubConfig, now: Instant) -> Self {
        Hub {
            config,
            started: now,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            mesh_status: HashMap::new(),
            mesh_paths: HashMap::new(),
            outputs: VecDeque::new(),
            departed: Vec::new(),
            stats: HubStats::default(),
        }
    }

    pub fn poll_output(&mut self) -> Option<HubOutput> {
        self.outputs.pop_front()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Peers with a live connection, sorted.
    pub fn connected_peers(&self) -> Vec<String> {
        let mut peers: Vec<String> = self.by_peer.keys().cloned().collect();
        peers.sort();
        peers
    }

    /// What each sidecar last reported about its open DataChannels.
    pub fn mesh_status(&self) -> &HashMap<String, Vec<String>> {
        &self.mesh_status
    }

    /// Per reporter, whether each reported link is relayed (sidecars that
    /// report paths only).
    pub fn mesh_paths(&self) -> &HashMap<String, BTreeMap<String, bool>> {
        &self.mesh_paths
    }

    /// A WebSocket with a verified identity was accepted. An older connection
    /// of the same peer_id is closed: one connection per identity.
    pub fn handle_connect(&mut self, conn: ConnId, id: &Identity, authz: &dyn Authorize, now: Instant) {
        if let Some(old) = self.by_peer.insert(id.peer_id.clone(), conn)
            && self.conns.remove(&old).is_some()
        {
            log::info!("peer {} reconnected; closing its older connection {old}", id.peer_id);
            self.outputs.push_back(HubOutput::Close { conn: old, code: close_codes::REPLACED, reason: "replaced" });
        }
        self.conns.insert(
            conn,
            Conn {
                peer_id: id.peer_id.clone(),
                last_seen: now,
                last_ping: now,
                bucket: TokenBucket::new(self.config.frame_rate, now),
                limited: false,
                authorized: authz.is_authorized(&id.peer_id),
            },
        );
    }

    /// The connection is gone. Only the peer's current connection counts:
    /// closing a replaced socket never removes its successor. Its departure
    /// is announced by the next [`Hub::handle_departures`].
    pub fn handle_disconnect(&mut self, conn: ConnId, authz: &dyn Authorize) {
        let Some(c) = self.conns.remove(&conn) else { return };
        if self.by_peer.get(&c.peer_id) != Some(&conn) {
            return;
        }
        self.by_peer.remove(&c.peer_id);
        self.mesh_status.remove(&c.peer_id);
        self.mesh_paths.remove(&c.peer_id);
        if authz.is_authorized(&c.peer_id) {
            self.departed.push(c.peer_id);
        }
    }

    /// Whether departures wait to be announced.
    pub fn has_departures(&self) -> bool {
        !self.departed.is_empty()
    }

    /// Announces the departures since the last call to whoever is
    /// connected now. The shell calls it at once for a lone departure and
    /// gathers those that follow (docs/PROTOCOL.md, "Leaving"): when a crowd
    /// leaves together (a gateway's uplink drops), announcing each
    /// departure at once to everyone still on the list cost n²/2 frames,
    /// mostly to sockets that were closing too (10,000 clients: about a
    /// minute of the registry's loop). A peer that
    /// is connected again by then is not announced: its new connection's
    /// offers replace the old links, as when a connection is replaced.
    pub fn handle_departures(&mut self, authz: &dyn Authorize) {
        let mut departed = std::mem::take(&mut self.departed);
        departed.sort_unstable();
        departed.dedup();
        departed.retain(|peer| !self.by_peer.contains_key(peer));
        self.announce_left(departed, authz);
    }

    /// A WebSocket-level ping or pong: proof of life.
    pub fn handle_activity(&mut self, conn: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_seen = now;
        }
    }

    /// A binary frame: not part of the protocol.
    pub fn handle_binary(&mut self, conn: ConnId, now: Instant) {
        self.handle_activity(conn, now);
        self.reject(conn, error_codes::INVALID_FRAME, "binary frames are not supported; send JSON text");
    }

    /// The relay could not take the TURN bytes of `conn`'s binary frames (not
    /// TURN, or no room for another stream): its relay stream is reset, the
    /// signaling on the socket goes on.
    pub fn handle_relay_refused(&mut self, conn: ConnId) {
        self.reject(conn, error_codes::INVALID_FRAME, "binary frames carry TURN only; the relay stream was reset");
    }

    /// A frame above the hard cap, already discarded by the shell.
    pub fn handle_oversize(&mut self, conn: ConnId, len: usize, now: Instant) {
        self.handle_activity(conn, now);
        let msg = format!("frame of {len} bytes exceeds {} bytes", self.config.max_frame_bytes);
        self.reject(conn, error_codes::TOO_LARGE, &msg);
    }

    pub fn handle_frame(&mut self, conn: ConnId, text: &str, authz: &dyn Authorize, now: Instant, unix_ms: u64) {
        let rate = self.config.frame_rate;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.last_seen = now;
        if !c.bucket.take(rate, now) {
            let first = !c.limited;
            c.limited = true;
            self.count_drop(error_codes::RATE_LIMITED);
            if first {
                self.send_error(conn, error_codes::RATE_LIMITED, "too many frames; slow down");
            }
            return;
        }
        c.limited = false;
        let sender = c.peer_id.clone();
        if text.len() > self.config.max_frame_bytes {
            return self.handle_oversize(conn, text.len(), now);
        }
        let frame = match EnvelopeRef::parse(text) {
            Ok(f) => f,
            Err(e) => return self.reject(conn, error_codes::INVALID_FRAME, &format!("not a signaling frame: {e}")),
        };
        if frame.peer_id != sender {
            let msg = format!("frame claims peer_id {:?} but this connection is {sender:?}", frame.peer_id);
            return self.reject(conn, error_codes::PEER_ID_MISMATCH, &msg);
        }
        match frame.kind.as_ref() {
            types::REGISTER => self.send_peer_list(conn, &sender, authz),
            types::OFFER | types::ANSWER | types::ICE_CANDIDATE => {
                self.relay(conn, &sender, frame.target_id.as_deref(), text, authz)
            }
            types::HEARTBEAT => {}
            types::PING => self.send(conn, types::PONG, PongPayload { timestamp: unix_ms }),
            types::MESH_HEALTH => {
                let payload = MeshHealthPayload {
                    connected_peers: self.by_peer.len(),
                    authorized_peers: self.by_peer.keys().filter(|p| authz.is_authorized(p)).count(),
                    uptime_s: now.saturating_duration_since(self.started).as_secs(),
                };
                self.send(conn, types::MESH_HEALTH, payload)
            }
            types::MESH_STATUS => {
                let raw = frame.payload.map(|p| p.get()).unwrap_or("null");
                match serde_json::from_str::<MeshStatusPayload>(raw) {
                    Ok(mut status) => {
                        status.peers.truncate(self.config.max_reported_peers);
                        status.peers.retain(|p| p != &sender);
                        let paths: BTreeMap<String, bool> = status
                            .paths
                            .into_iter()
                            .filter(|(peer, _)| status.peers.contains(peer))
                            .map(|(peer, path)| (peer, path.local == "relay" || path.remote == "relay"))
                            .collect();
                        if paths.is_empty() {
                            self.mesh_paths.remove(&sender);
                        } else {
                            self.mesh_paths.insert(sender.clone(), paths);
                        }
                        self.mesh_status.insert(sender, status.peers);
                    }
                    Err(e) => self.reject(conn, error_codes::INVALID_FRAME, &format!("bad mesh_status payload: {e}")),
                }
            }
            other => log::debug!("ignoring frame of unknown type {other:?} from {sender}"),
        }
    }

    /// Pings due connections and closes silent ones; tables that a crowd
    /// of connections grew give their spare room back once it has left.
    pub fn handle_tick(&mut self, now: Instant) {
        shrink_if_sparse(&mut self.conns);
        shrink_if_sparse(&mut self.by_peer);
        shrink_if_sparse(&mut self.mesh_status);
        shrink_if_sparse(&mut self.mesh_paths);
        if self.outputs.is_empty() && self.outputs.capacity() > SPARE_FLOOR {
            self.outputs = VecDeque::new();
        }
        for (&id, c) in self.conns.iter_mut() {
            if now.saturating_duration_since(c.last_seen) >= self.config.idle_timeout {
                log::info!("closing connection {id} of {}: silent for {:?}", c.peer_id, self.config.idle_timeout);
                self.outputs.push_back(HubOutput::Close { conn: id, code: 1001, reason: "idle timeout" });
            } else if now.saturating_duration_since(c.last_ping) >= self.config.ping_interval {
                c.last_ping = now;
                self.outputs.push_back(HubOutput::Ping { conn: id });
            }
        }
    }

    /// Authorization changed somewhere (key reload, approval, revocation):
    /// connections that lost it are closed and announced as gone; those that
    /// gained it learn who is there, since as newcomers they offer.
    pub fn handle_authorization_changed(&mut self, authz: &dyn Authorize) {
        let mut lost = Vec::new();
        let mut gained = Vec::new();
        for (&id, c) in self.conns.iter_mut() {
            let now_authorized = authz.is_authorized(&c.peer_id);
            match (c.authorized, now_authorized) {
                (true, false) => lost.push(id),
                (false, true) => gained.push((id, c.peer_id.clone())),
                _ => {}
            }
            c.authorized = now_authorized;
        }
        let mut left = Vec::new();
        for id in lost {
            let Some(c) = self.conns.remove(&id) else { continue };
            log::info!("peer {} lost its authorization; closing connection {id}", c.peer_id);
            self.outputs.push_back(HubOutput::Close { conn: id, code: close_codes::REVOKED, reason: "not authorized" });
            if self.by_peer.get(&c.peer_id) == Some(&id) {
                self.by_peer.remove(&c.peer_id);
                self.mesh_status.remove(&c.peer_id);
                self.mesh_paths.remove(&c.peer_id);
                left.push(c.peer_id);
            }
        }
        self.announce_left(left, authz);
        for (id, peer) in gained {
            self.send_peer_list(id, &peer, authz);
        }
    }

    /// Closes every connection of `peer_id` now (revocation, rejection).
    pub fn handle_revoked(&mut self, peer_id: &str, authz: &dyn Authorize) {
        if let Some(c) = self.by_peer.get(peer_id).and_then(|id| self.conns.get_mut(id)) {
            // Force the transition even if it was never marked authorized.
            c.authorized = true;
        }
        self.handle_authorization_changed(authz);
    }

    fn send_peer_list(&mut self, conn: ConnId, me: &str, authz: &dyn Authorize) {
        let peers = if authz.is_authorized(me) {
            let mut peers: Vec<String> =
                self.by_peer.keys().filter(|p| p.as_str() != me && authz.is_authorized(p)).cloned().collect();
            peers.sort();
            peers
        } else {
            Vec::new()
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.authorized = authz.is_authorized(me);
        }
        self.send(conn, types::PEER_LIST, PeerListPayload { peers });
    }

    fn relay(&mut self, conn: ConnId, sender: &str, target: Option<&str>, text: &str, authz: &dyn Authorize) {
        let Some(target) = target.filter(|t| !t.is_empty()) else {
            return self.reject(conn, error_codes::INVALID_FRAME, "offer, answer and ice_candidate need a target_id");
        };
        if !authz.is_authorized(sender) {
            return self.reject(conn, error_codes::NOT_AUTHORIZED, "this peer is not authorized to signal");
        }
        let Some(&to) = self.by_peer.get(target) else {
            let msg = format!("peer {target:?} is not connected");
            return self.reject(conn, error_codes::UNKNOWN_TARGET, &msg);
        };
        if !authz.is_authorized(target) {
            let msg = format!("peer {target:?} is not authorized");
            return self.reject(conn, error_codes::NOT_AUTHORIZED, &msg);
        }
        self.stats.relayed += 1;
        self.outputs.push_back(HubOutput::Send { conn: to, text: text.to_owned() });
    }

    /// Tells every authorized peer connected now that `left` are gone. Who
    /// may hear of them is asked once, not once per departure and recipient.
    fn announce_left(&mut self, left: Vec<String>, authz: &dyn Authorize) {
        if left.is_empty() {
            return;
        }
        let recipients: Vec<ConnId> =
            self.by_peer.iter().filter(|(p, _)| authz.is_authorized(p)).map(|(_, &id)| id).collect();
        if recipients.is_empty() {
            return;
        }
        let texts: Vec<String> = left
            .into_iter()
            .map(|peer_id| Envelope::from_registry(types::PEER_LEFT, PeerLeftPayload { peer_id }).to_json())
            .collect();
        for conn in recipients {
            for text in &texts {
                self.outputs.push_back(HubOutput::Send { conn, text: text.clone() });
            }
        }
    }

    fn send(&mut self, conn: ConnId, kind: &str, payload: impl serde::Serialize) {
        let text = Envelope::from_registry(kind, payload).to_json();
        self.outputs.push_back(HubOutput::Send { conn, text });
    }

    /// Drops the frame, counts it, and tells the sender why.
    fn reject(&mut self, conn: ConnId, code: &'static str, message: &str) {
        self.count_drop(code);
        self.send_error(conn, code, message);
    }

    fn send_error(&mut self, conn: ConnId, code: &'static str, message: &str) {
        log::debug!("connection {conn}: {code}: {message}");
        self.send(conn, types::ERROR, ErrorPayload { code: code.to_owned(), message: message.to_owned() });
    }

    fn count_drop(&mut self, reason: &'static str) {
        *self.stats.drops.entry(reason).or_default() += 1;
    }

    /// The shell could not queue a frame for `conn`: the relay never waits
    /// for one slow peer, so the connection is closed. The close goes out
    /// ahead of what is already queued, so nothing more is sent to it.
    pub fn handle_slow_consumer(&mut self, conn: ConnId) {
        log::warn!("connection {conn} is not reading; closing it");
        self.count_drop("slow_consumer");
        self.outputs.push_front(HubOutput::Close { conn, code: 1008, reason: "too slow" });
    }
}

// The tests need a real clock: an Instant can only be had from it.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::cell::RefCell;
    use std::collections::HashSet;

    struct Allow(RefCell<HashSet<String>>);
    impl Allow {
        fn of(peers: &[&str]) -> Self {
            Allow(RefCell::new(peers.iter().map(|s| s.to_string()).collect()))
        }
    }
    impl Authorize for Allow {
        fn is_authorized(&self, peer_id: &str) -> bool {
            self.0.borrow().contains(peer_id)
        }
    }

    fn id(peer: &str) -> Identity {
        Identity { peer_id: peer.into(), role: "agent".into() }
    }

    fn drain(hub: &mut Hub) -> Vec<HubOutput> {
        std::iter::from_fn(|| hub.poll_output()).collect()
    }

    fn sent(outputs: &[HubOutput]) -> Vec<(ConnId, Value)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                HubOutput::Send { conn, text } => Some((*conn, serde_json::from_str(text).unwrap())),
                _ => None,
            })
            .collect()
    }

    fn frame(kind: &str, from: &str, to: Option<&str>, payload: Value) -> String {
        Envelope::new(kind, from, to, payload).to_json()
    }

    fn setup(peers: &[&str], allowed: &[&str]) -> (Hub, Allow, Instant) {
        let t0 = Instant::now();
        let mut hub = Hub::new(HubConfig::default(), t0);
        let authz = Allow::of(allowed);
        for (i, p) in peers.iter().enumerate() {
            hub.handle_connect(i as ConnId + 1, &id(p), &authz, t0);
        }
        (hub, authz, t0)
    }

    fn error_code(v: &Value) -> &str {
        assert_eq!(v["type"], "error");
        assert_eq!(v["peer_id"], "registry");
        v["payload"]["code"].as_str().unwrap()
    }

    #[test]
    fn register_lists_other_authorized_peers() {
        let (mut hub, authz, t0) = setup(&["a", "b", "c", "x"], &["a", "b", "c"]);
        hub.handle_frame(1, &frame("register", "a", None, Value::Null), &authz, t0, 0);
        let out = sent(&drain(&mut hub));
        assert_eq!(out, vec![(1, json!({"type":"peer_list","peer_id":"registry","payload":{"peers":["b","c"]}}))]);
        hub.handle_frame(4, &frame("register", "x", None, Value::Null), &authz, t0, 0);
        assert_eq!(sent(&drain(&mut hub))[0].1["payload"]["peers"], json!([]));
    }

    #[test]
    fn relays_exactly_and_in_order() {
        let (mut hub, authz, t0) = setup(&["a", "b"], &["a", "b"]);
        let frames: Vec<String> =
            (0..5).map(|i| frame("ice_candidate", "a", Some("b"), json!({"candidate": format!("c{i}")}))).collect();
        for f in &frames {
            hub.handle_frame(1, f, &authz, t0, 0);
        }
        let out = drain(&mut hub);
        let expected: Vec<HubOutput> = frames.iter().map(|f| HubOutput::Send { conn: 2, text: f.clone() }).collect();
        assert_eq!(out, expected);
        assert_eq!(hub.stats.relayed, 5);
    }

    #[test]
    fn rejects_forged_unknown_unauthorized_and_malformed() {
        let (mut hub, authz, t0) = setup(&["a", "b", "x"], &["a", "b"]);
        let cases = [
            (1, frame("offer", "b", Some("a"), json!({"sdp":"v=0"})), "peer_id_mismatch"),
            (1, frame("offer", "a", Some("ghost"), json!({"sdp":"v=0"})), "unknown_target"),
            (1, frame("offer", "a", Some("x"), json!({"sdp":"v=0"})), "not_authorized"),
            (3, frame("offer", "x", Some("a"), json!({"sdp":"v=0"})), "not_authorized"),
            (1, frame("offer", "a", None, json!({"sdp":"v=0"})), "invalid_frame"),
            (1, "not json".to_owned(), "invalid_frame"),
            (1, r#"{"type":"offer"}"#.to_owned(), "invalid_frame"),
            (
                1,
                format!(r#"{{"type":"offer","peer_id":"a","target_id":"b","payload":"{}"}}"#, "x".repeat(70_000)),
                "too_large",
            ),
        ];
        for (conn, text, code) in cases {
            hub.handle_frame(conn, &text, &authz, t0, 0);
            let out = sent(&drain(&mut hub));
            assert_eq!(out.len(), 1, "{code}: {out:?}");
            assert_eq!(out[0].0, conn, "{code}: error goes back to the sender only");
            assert_eq!(error_code(&out[0].1), code);
        }
        assert_eq!(hub.stats.relayed, 0);
        assert_eq!(hub.stats.drops["not_authorized"], 2);
    }

    #[test]
    fn binary_and_oversize_frames_get_errors_and_keep_the_connection() {
        let (mut hub, authz, t0) = setup(&["a", "b"], &["a", "b"]);
        hub.handle_binary(1, t0);
        hub.handle_oversize(1, 3_000_000, t0);
        let out = sent(&drain(&mut hub));
        assert_eq!(error_code(&out[0].1), "invalid_frame");
        assert_eq!(error_code(&out[1].1), "too_large");
        hub.handle_frame(1, &frame("offer", "a", Some("b"), json!({"sdp":"x"})), &authz, t0, 0);
        assert_eq!(sent(&drain(&mut hub))[0].0, 2);
    }

    #[test]
    fn unknown_types_and_heartbeats_are_ignored() {
        let (mut hub, authz, t0) = setup(&["a"], &["a"]);
        hub.handle_frame(1, &frame("future_thing", "a", None, json!({"x":1})), &authz, t0, 0);
        hub.handle_frame(1, &frame("heartbeat", "a", None, Value::Null), &authz, t0, 0);
        assert!(drain(&mut hub).is_empty());
    }

    #[test]
    fn ping_and_mesh_health() {
        let (mut hub, authz, t0) = setup(&["a", "x"], &["a"]);
        hub.handle_frame(1, &frame("ping", "a", None, Value::Null), &authz, t0, 1234);
        hub.handle_frame(1, &frame("mesh_health", "a", None, Value::Null), &authz, t0 + Duration::from_secs(7), 0);
        let out = sent(&drain(&mut hub));
        assert_eq!(out[0].1, json!({"type":"pong","peer_id":"registry","payload":{"timestamp":1234}}));
        assert_eq!(
            out[1].1,
            json!({"type":"mesh_health","peer_id":"registry",
                   "payload":{"connected_peers":2,"authorized_peers":1,"uptime_s":7}})
        );
    }

    #[test]
    fn duplicate_identity_replaces_the_old_connection() {
        let (mut hub, authz, t0) = setup(&["a", "b"], &["a", "b"]);
        hub.handle_connect(10, &id("a"), &authz, t0);
        assert_eq!(drain(&mut hub), vec![HubOutput::Close { conn: 1, code: 4001, reason: "replaced" }]);
        // The old socket's late close must not remove the new one.
        hub.handle_disconnect(1, &authz);
        assert!(drain(&mut hub).is_empty(), "no peer_left for a replaced socket");
        hub.handle_frame(2, &frame("offer", "b", Some("a"), json!({"sdp":"x"})), &authz, t0, 0);
        assert_eq!(sent(&drain(&mut hub))[0].0, 10);
        // Frames still arriving on the old socket are ignored.
        hub.handle_frame(1, &frame("offer", "a", Some("b"), json!({"sdp":"x"})), &authz, t0, 0);
        assert!(drain(&mut hub).is_empty());
    }

    #[test]
    fn leaving_peer_is_announced_to_authorized_peers_only() {
        let (mut hub, authz, _) = setup(&["a", "b", "x"], &["a", "b"]);
        hub.handle_disconnect(1, &authz);
        assert!(drain(&mut hub).is_empty(), "announced by handle_departures");
        hub.handle_departures(&authz);
        let out = sent(&drain(&mut hub));
        assert_eq!(out, vec![(2, json!({"type":"peer_left","peer_id":"registry","payload":{"peer_id":"a"}}))]);
        hub.handle_disconnect(3, &authz);
        hub.handle_departures(&authz);
        assert!(drain(&mut hub).is_empty(), "an unauthorized peer was never visible");
        assert_eq!(hub.connected_peers(), vec!["b".to_owned()]);
    }

    #[test]
    fn rate_limit_drops_and_warns_once_per_run() {
        let t0 = Instant::now();
        let config = HubConfig { frame_rate: Rate::new(1.0, 3.0), ..Default::default() };
        let mut hub = Hub::new(config, t0);
        let authz = Allow::of(&["a", "b"]);
        hub.handle_connect(1, &id("a"), &authz, t0);
        hub.handle_connect(2, &id("b"), &authz, t0);
        let f = frame("ice_candidate", "a", Some("b"), json!({}));
        for _ in 0..10 {
            hub.handle_frame(1, &f, &authz, t0, 0);
        }
        let out = sent(&drain(&mut hub));
        assert_eq!(out.iter().filter(|(c, _)| *c == 2).count(), 3);
        let errors: Vec<_> = out.iter().filter(|(c, _)| *c == 1).collect();
        assert_eq!(errors.len(), 1);
        assert_eq!(error_code(&errors[0].1), "rate_limited");
        assert_eq!(hub.stats.drops["rate_limited"], 7);
        // The other peer is unaffected.
        hub.handle_frame(2, &frame("ice_candidate", "b", Some("a"), json!({})), &authz, t0, 0);
        assert_eq!(sent(&drain(&mut hub))[0].0, 1);
    }

    #[test]
    fn a_slow_consumer_is_closed_before_anything_else_goes_out() {
        let (mut hub, authz, t0) = setup(&["a", "b"], &["a", "b"]);
        hub.handle_frame(1, &frame("offer", "a", Some("b"), json!({"sdp":"x"})), &authz, t0, 0);
        hub.handle_slow_consumer(2);
        let out = drain(&mut hub);
        assert_eq!(out[0], HubOutput::Close { conn: 2, code: 1008, reason: "too slow" });
        assert_eq!(out.len(), 2, "the queued frame stays behind the close: {out:?}");
        assert_eq!(hub.stats.drops["slow_consumer"], 1);
    }

    #[test]
    fn a_crowd_that_leaves_together_is_not_announced_to_itself() {
        let names: Vec<String> = (0..100).map(|i| format!("p{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (mut hub, authz, t0) = setup(&refs, &refs);
        // All but p000 leave; p001 comes back before the announcement.
        for conn in 2..=100 {
            hub.handle_disconnect(conn, &authz);
        }
        hub.handle_connect(200, &id("p001"), &authz, t0);
        drain(&mut hub);
        hub.handle_departures(&authz);
        let out = sent(&drain(&mut hub));
        // 98 announcements to p000, 98 to p001's new connection; nothing of p001.
        assert_eq!(out.len(), 2 * 98, "{out:?}");
        assert!(out.iter().all(|(c, m)| (*c == 1 || *c == 200) && m["payload"]["peer_id"] != "p001"));
        assert!(!hub.has_departures());
        hub.handle_departures(&authz);
        assert!(drain(&mut hub).is_empty());
    }

    #[test]
    fn tables_a_crowd_grew_shrink_at_the_tick_after_it_left() {
        let names: Vec<String> = (0..2000).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (mut hub, authz, t0) = setup(&refs, &refs[..1]);
        for conn in 2..=2000 {
            hub.handle_disconnect(conn, &authz);
        }
        drain(&mut hub);
        assert!(hub.conns.capacity() >= 2000 && hub.by_peer.capacity() >= 2000);
        hub.handle_tick(t0 + Duration::from_secs(1));
        assert!(hub.conns.capacity() <= SPARE_FLOOR && hub.by_peer.capacity() <= SPARE_FLOOR);
        assert_eq!(hub.connection_count(), 1);
        assert_eq!(hub.outputs.capacity(), 0);
    }

    #[test]
    fn tick_pings_and_closes_idle_connections() {
        let (mut hub, authz, t0) = setup(&["a", "b"], &["a", "b"]);
        hub.handle_tick(t0 + Duration::from_secs(31));
        let mut out = drain(&mut hub);
        out.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(out, vec![HubOutput::Ping { conn: 1 }, HubOutput::Ping { conn: 2 }]);
        hub.handle_activity(2, t0 + Duration::from_secs(60));
        hub.handle_frame(2, &frame("heartbeat", "b", None, Value::Null), &authz, t0 + Duration::from_secs(61), 0);
        hub.handle_tick(t0 + Duration::from_secs(91));
        let out = drain(&mut hub);
        assert!(out.contains(&HubOutput::Close { conn: 1, code: 1001, reason: "idle timeout" }));
        assert!(!out.iter().any(|o| matches!(o, HubOutput::Close { conn: 2, .. })));
    }

    #[test]
    fn losing_authorization_closes_and_announces_gaining_it_pushes_peer_list() {
        let (mut hub, authz, t0) = setup(&["a", "b", "p"], &["a", "b"]);
        authz.0.borrow_mut().remove("a");
        authz.0.borrow_mut().insert("p".into());
        hub.handle_authorization_changed(&authz);
        let out = drain(&mut hub);
        assert!(out.contains(&HubOutput::Close { conn: 1, code: 4003, reason: "not authorized" }));
        let msgs = sent(&out);
        assert!(msgs.contains(&(2, json!({"type":"peer_left","peer_id":"registry","payload":{"peer_id":"a"}}))));
        assert!(msgs.contains(&(3, json!({"type":"peer_list","peer_id":"registry","payload":{"peers":["b"]}}))));
        assert!(!msgs.iter().any(|(c, _)| *c == 1), "nothing more to the closed connection");
        hub.handle_disconnect(1, &authz);
        assert!(drain(&mut hub).is_empty());
        hub.handle_frame(3, &frame("offer", "p", Some("b"), json!({"sdp":"x"})), &authz, t0, 0);
        assert_eq!(sent(&drain(&mut hub))[0].0, 2);
    }

    #[test]
    fn mesh_status_is_kept_bounded_and_forgotten_on_leave() {
        let (mut hub, authz, t0) = setup(&["a", "b"], &["a", "b"]);
        let many: Vec<String> = (0..2000).map(|i| format!("p{i}")).collect();
        hub.handle_frame(1, &frame("mesh_status", "a", None, json!({"peers": many})), &authz, t0, 0);
        hub.handle_frame(2, &frame("mesh_status", "b", None, json!({"peers": ["a", "b"]})), &authz, t0, 0);
        assert_eq!(hub.mesh_status()["a"].len(), 1024);
        assert_eq!(hub.mesh_status()["b"], vec!["a".to_owned()]);
        hub.handle_frame(2, &frame("mesh_status", "b", None, json!({"peers": 5})), &authz, t0, 0);
        assert_eq!(error_code(&sent(&drain(&mut hub))[0].1), "invalid_frame");
        hub.handle_disconnect(1, &authz);
        assert!(!hub.mesh_status().contains_key("a"));
    }
}
