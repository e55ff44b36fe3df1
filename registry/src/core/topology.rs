//! The mesh topology answered by `GET /api/hub/network/topology`
//! (docs/PROTOCOL.md, Topology):
//! `{"nodes": [...], "mesh_edges": [{"from_peer", "to_peer"}]}`.
//!
//! # Edges
//!
//! The original drew every active agent's sidecar linked to every other one,
//! whatever links really existed. Ours draws what sidecars report in
//! `mesh_status` (their open DataChannels):
//!
//! - A reported link is one edge per unordered pair of peer ids, with
//!   `from_peer < to_peer`, whichever side or sides reported it. A peer
//!   listing itself or an empty id is ignored. Reported links count whatever
//!   the health of the agents behind them: the sidecar is a daemon that
//!   outlives its agent, and the link is real.
//! - Sidecars that do not report (older versions) fall back to the original
//!   rule, but only among themselves: every pair of active agents' distinct
//!   `sidecar_peer_id`s, both non-reporting, is an edge. A reporting sidecar's
//!   list is the whole truth about its own links, so no fallback edge ever
//!   touches it; if a reporter is linked to an old sidecar, its report
//!   already contains that edge.
//! - Edges are sorted by `(from_peer, to_peer)`. Their number is bounded
//!   ([`DEFAULT_MAX_EDGES`]), reported edges first, because the fallback rule
//!   grows quadratically; a cut list carries `"truncated": true` (the key is
//!   absent otherwise).
//!
//! # Nodes
//!
//! One node per agent record, sorted by `agent_id`, with the original's keys
//! (so dashboards written for it keep working) and one more:
//!
//! ```json
//! {"agent_id": "a1", "ip": "10.0.0.5", "port": 8000, "hostname": "pi-1",
//!  "sidecar_peer_id": "agent-1a2b3c", "mode": "auto", "skills_count": 3,
//!  "health": "active", "mesh_peers": ["agent-4d5e6f"], "reported": true}
//! ```
//!
//! `mesh_peers` are the sidecar's neighbours in `mesh_edges` (sorted), and
//! `reported` says whether they come from its own report rather than the
//! fallback. Agents sharing one sidecar each get a node with the same peers.
//!
//! Then one node per peer that appears as a reporter or in an edge but is no
//! agent's `sidecar_peer_id` (a sidecar with no agent attached, or a browser
//! peer), sorted by peer id: `agent_id`, `ip`, `hostname`, `mode` empty,
//! `port` and `skills_count` 0, `health` `active` (it reports, or holds an
//! open DataChannel with a peer that does).

use crate::core::agents::{AgentRecord, Health};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Enough for a full mesh of about 300 sidecars, yet an answer of a few MB.
pub const DEFAULT_MAX_EDGES: usize = 50_000;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeshEdge {
    pub from_peer: String,
    pub to_peer: String,
    /// `relay` when either end reports the link going through a TURN
    /// relay, `direct` when an end reports a direct path; absent when
    /// neither says (older sidecars, or an assumed link). New.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyNode {
    pub agent_id: String,
    pub ip: String,
    pub port: u16,
    pub hostname: String,
    pub sidecar_peer_id: String,
    pub mode: String,
    pub skills_count: usize,
    pub health: Health,
    pub mesh_peers: Vec<String>,
    pub reported: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub nodes: Vec<TopologyNode>,
    pub mesh_edges: Vec<MeshEdge>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Topology {
    /// Builds the topology from every agent record (any health; the rule
    /// picks the active ones) and the latest `mesh_status` of each connected
    /// sidecar, as `(peer_id, open DataChannel peer ids)`; a map such as
    /// `&HashMap<String, Vec<String>>` works as is. A reporter with an empty
    /// list has reported "no links", which is not the same as not reporting.
    pub fn build<R, K, V, P>(agents: &[AgentRecord], reports: R) -> Topology
    where
        R: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        Self::build_bounded(agents, reports, DEFAULT_MAX_EDGES)
    }

    /// [`Topology::build`] with at most `max_edges` edges.
    pub fn build_bounded<R, K, V, P>(agents: &[AgentRecord], reports: R, max_edges: usize) -> Topology
    where
        R: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let mut reporters: BTreeSet<String> = BTreeSet::new();
        let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
        for (reporter, peers) in reports {
            let reporter = reporter.as_ref();
            if reporter.is_empty() {
                continue;
            }
            reporters.insert(reporter.to_owned());
            for peer in peers {
                let peer = peer.as_ref();
                if peer.is_empty() || peer == reporter {
                    continue;
                }
                reported.insert(ordered_pair(reporter, peer));
            }
        }

        let fallback: Vec<&str> = agents
            .iter()
            .filter(|a| a.health == Health::Active)
            .map(|a| a.info.sidecar_peer_id.as_str())
            .filter(|p| !p.is_empty() && !reporters.contains(*p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();

        let mut edges: Vec<MeshEdge> = Vec::new();
        let mut truncated = false;
        for (from_peer, to_peer) in reported {
            if edges.len() == max_edges {
                truncated = true;
                break;
            }
            edges.push(MeshEdge { from_peer, to_peer, path: None });
        }
        'pairs: for (i, from) in fallback.iter().enumerate() {
            for to in &fallback[i + 1..] {
                if edges.len() == max_edges {
                    truncated = true;
                    break 'pairs;
                }
                edges.push(MeshEdge { from_peer: (*from).to_owned(), to_peer: (*to).to_owned(), path: None });
            }
        }
        // Both sources are sorted, but a fallback pair may sort before a
        // reported one.
        edges.sort();

        let mut neighbours: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for e in &edges {
            neighbours.entry(&e.from_peer).or_default().push(&e.to_peer);
            neighbours.entry(&e.to_peer).or_default().push(&e.from_peer);
        }
        let peers_of = |peer: &str| -> Vec<String> {
            let mut v: Vec<String> =
                neighbours.get(peer).map(|n| n.iter().map(|p| (*p).to_owned()).collect()).unwrap_or_default();
            v.sort();
            v
        };

        let mut sorted_agents: Vec<&AgentRecord> = agents.iter().collect();
        sorted_agents.sort_by(|a, b| a.info.agent_id.cmp(&b.info.agent_id));
        let mut nodes: Vec<TopologyNode> = sorted_agents
            .iter()
            .map(|a| {
                let peer = a.info.sidecar_peer_id.as_str();
                TopologyNode {
                    agent_id: a.info.agent_id.clone(),
                    ip: a.info.ip.clone(),
                    port: a.info.port,
                    hostname: a.info.hostname.clone(),
                    sidecar_peer_id: peer.to_owned(),
                    mode: a.info.mode.clone(),
                    skills_count: a.info.capabilities.skills.len(),
                    health: a.health,
                    mesh_peers: if peer.is_empty() { Vec::new() } else { peers_of(peer) },
                    reported: reporters.contains(peer),
                }
            })
            .collect();

        let known: BTreeSet<&str> = agents.iter().map(|a| a.info.sidecar_peer_id.as_str()).collect();
        let agentless: BTreeSet<&str> = reporters
            .iter()
            .map(String::as_str)
            .chain(neighbours.keys().copied())
            .filter(|p| !known.contains(p))
            .collect();
        nodes.extend(agentless.into_iter().map(|peer| TopologyNode {
            agent_id: String::new(),
            ip: String::new(),
            port: 0,
            hostname: String::new(),
            sidecar_peer_id: peer.to_owned(),
            mode: String::new(),
            skills_count: 0,
            health: Health::Active,
            mesh_peers: peers_of(peer),
            reported: reporters.contains(peer),
        }));

        Topology { nodes, mesh_edges: edges, truncated }
    }
}

impl Topology {
    /// Marks each edge with the path its ends reported: per reporter, per
    /// peer, whether the link is relayed.
    pub fn with_paths(mut self, paths: &HashMap<String, BTreeMap<String, bool>>) -> Topology {
        let of = |a: &str, b: &str| paths.get(a).and_then(|p| p.get(b)).copied();
        for e in &mut self.mesh_edges {
            let reports = [of(&e.from_peer, &e.to_peer), of(&e.to_peer, &e.from_peer)];
            e.path = match reports {
                [None, None] => None,
                _ if reports.contains(&Some(true)) => Some("relay".into()),
                _ => Some("direct".into()),
            };
        }
        self
    }
}

fn ordered_pair(a: &str, b: &str) -> (String, String) {
    if a < b { (a.to_owned(), b.to_owned()) } else { (b.to_owned(), a.to_owned()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::agents::AgentInfo;
    use serde_json::json;
    use std::collections::HashMap;

    fn rec(id: &str, peer: &str, health: Health) -> AgentRecord {
        let mut info = AgentInfo::new(id, &format!("host-{id}"));
        info.sidecar_peer_id = peer.to_owned();
        AgentRecord { info, health, registered_at: String::new(), last_heartbeat: String::new() }
    }

    fn active(id: &str, peer: &str) -> AgentRecord {
        rec(id, peer, Health::Active)
    }

    fn no_reports() -> Vec<(String, Vec<String>)> {
        Vec::new()
    }

    fn edges(t: &Topology) -> Vec<(&str, &str)> {
        t.mesh_edges.iter().map(|e| (e.from_peer.as_str(), e.to_peer.as_str())).collect()
    }

    fn node<'a>(t: &'a Topology, peer: &str) -> &'a TopologyNode {
        t.nodes.iter().find(|n| n.sidecar_peer_id == peer).unwrap_or_else(|| panic!("no node for {peer}"))
    }

    #[test]
    fn empty_input_gives_empty_topology() {
        let t = Topology::build(&[], no_reports());
        assert_eq!(t, Topology::default());
        assert_eq!(serde_json::to_value(&t).unwrap(), json!({"nodes": [], "mesh_edges": []}));
    }

    #[test]
    fn without_reports_falls_back_to_full_mesh_of_active_sidecars() {
        let agents = [
            active("a", "p-a"),
            active("b", "p-b"),
            active("c", "p-c"),
            active("nosidecar", ""),
            rec("stale", "p-s", Health::Stale),
            rec("off", "p-o", Health::Offline),
        ];
        let t = Topology::build(&agents, no_reports());
        assert_eq!(edges(&t), [("p-a", "p-b"), ("p-a", "p-c"), ("p-b", "p-c")]);
        assert_eq!(node(&t, "p-a").mesh_peers, ["p-b", "p-c"]);
        assert!(!node(&t, "p-a").reported);
        assert!(node(&t, "p-s").mesh_peers.is_empty());
        assert_eq!(node(&t, "p-s").health, Health::Stale);
        // Every agent is a node, whatever its health or sidecar.
        let ids: Vec<_> = t.nodes.iter().map(|n| n.agent_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "nosidecar", "off", "stale"]);
    }

    #[test]
    fn node_has_the_original_keys_plus_reported() {
        let mut a = active("a1", "p1");
        a.info.ip = "10.0.0.5".into();
        a.info.mode = "auto".into();
        a.info.capabilities.skills = vec!["x".into(), "y".into()];
        let t = Topology::build(&[a, active("a2", "p2")], no_reports());
        assert_eq!(
            serde_json::to_value(&t.nodes[0]).unwrap(),
            json!({
                "agent_id": "a1", "ip": "10.0.0.5", "port": 8000, "hostname": "host-a1",
                "sidecar_peer_id": "p1", "mode": "auto", "skills_count": 2,
                "health": "active", "mesh_peers": ["p2"], "reported": false
            })
        );
        assert_eq!(serde_json::to_value(&t.mesh_edges).unwrap(), json!([{"from_peer": "p1", "to_peer": "p2"}]));
    }

    #[test]
    fn reported_links_replace_the_guess_and_are_deduplicated() {
        let agents = [active("a", "p-a"), active("b", "p-b"), active("c", "p-c")];
        let mut reports: HashMap<String, Vec<String>> = HashMap::new();
        // Only a–b is really up; both sides say so, in either order.
        reports.insert("p-b".into(), vec!["p-a".into()]);
        reports.insert("p-a".into(), vec!["p-b".into(), "p-b".into()]);
        reports.insert("p-c".into(), vec![]);
        let t = Topology::build(&agents, &reports);
        assert_eq!(edges(&t), [("p-a", "p-b")]);
        assert!(node(&t, "p-c").mesh_peers.is_empty());
        assert!(node(&t, "p-c").reported);
        assert_eq!(node(&t, "p-b").mesh_peers, ["p-a"]);
        assert!(!t.truncated);
    }

    #[test]
    fn edges_carry_the_path_either_end_reported() {
        let agents = [active("a", "p-a"), active("b", "p-b"), active("c", "p-c")];
        let reports = [("p-a", vec!["p-b", "p-c"]), ("p-b", vec!["p-a", "p-c"]), ("p-c", vec!["p-a", "p-b"])];
        let mut paths: HashMap<String, BTreeMap<String, bool>> = HashMap::new();
        // a–b: a says direct, b says relayed (its own end is a relay).
        paths.entry("p-a".into()).or_default().insert("p-b".into(), false);
        paths.entry("p-b".into()).or_default().insert("p-a".into(), true);
        // a–c: only c reports a path.
        paths.entry("p-c".into()).or_default().insert("p-a".into(), false);
        let t = Topology::build(&agents, reports).with_paths(&paths);
        let path = |a: &str, b: &str| {
            t.mesh_edges.iter().find(|e| e.from_peer == a && e.to_peer == b).and_then(|e| e.path.clone())
        };
        assert_eq!(path("p-a", "p-b").as_deref(), Some("relay"));
        assert_eq!(path("p-a", "p-c").as_deref(), Some("direct"));
        assert_eq!(path("p-b", "p-c"), None, "nobody reported a path");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["mesh_edges"][0]["path"], "relay");
        assert!(json["mesh_edges"][2].get("path").is_none(), "absent, not null: {json}");
    }

    #[test]
    fn edges_are_ordered_whichever_side_reports() {
        let agents = [active("a", "zz"), active("b", "aa")];
        let t = Topology::build(&agents, [("zz", ["aa"])]);
        assert_eq!(edges(&t), [("aa", "zz")]);
    }

    #[test]
    fn non_reporters_are_meshed_among_themselves_only() {
        // p-a and p-b report; p-c and p-d are old sidecars.
        let agents = [active("a", "p-a"), active("b", "p-b"), active("c", "p-c"), active("d", "p-d")];
        let reports = vec![("p-a".to_string(), vec!["p-c".to_string()]), ("p-b".to_string(), vec![])];
        let t = Topology::build(&agents, reports);
        // a–c from a's report, c–d from the fallback; nothing guessed for a
        // or b, whose reports are complete.
        assert_eq!(edges(&t), [("p-a", "p-c"), ("p-c", "p-d")]);
        assert!(node(&t, "p-a").reported);
        assert!(!node(&t, "p-c").reported);
        assert_eq!(node(&t, "p-c").mesh_peers, ["p-a", "p-d"]);
        assert!(node(&t, "p-b").mesh_peers.is_empty());
    }

    #[test]
    fn reported_links_count_whatever_the_agents_health() {
        let agents = [rec("a", "p-a", Health::Offline), rec("b", "p-b", Health::Stale)];
        let t = Topology::build(&agents, [("p-a", vec!["p-b"])]);
        assert_eq!(edges(&t), [("p-a", "p-b")]);
        assert_eq!(node(&t, "p-a").health, Health::Offline);
        assert_eq!(node(&t, "p-b").mesh_peers, ["p-a"]);
    }

    #[test]
    fn peers_without_agents_become_nodes() {
        let agents = [active("a", "p-a")];
        let reports = [("p-a", vec!["browser-1"]), ("lonely", vec![]), ("p-x", vec!["p-a", "p-y"])];
        let t = Topology::build(&agents, reports);
        assert_eq!(edges(&t), [("browser-1", "p-a"), ("p-a", "p-x"), ("p-x", "p-y")]);
        let extra: Vec<_> = t.nodes[1..].iter().map(|n| (n.sidecar_peer_id.as_str(), n.reported)).collect();
        assert_eq!(extra, [("browser-1", false), ("lonely", true), ("p-x", true), ("p-y", false)]);
        let x = node(&t, "p-x");
        assert_eq!(x.agent_id, "");
        assert_eq!(x.port, 0);
        assert_eq!(x.health, Health::Active);
        assert_eq!(x.mesh_peers, ["p-a", "p-y"]);
        assert_eq!(t.nodes.len(), 5);
    }

    #[test]
    fn self_links_and_empty_ids_are_ignored() {
        let agents = [active("a", "p-a"), active("b", "p-b")];
        let reports = [("p-a", vec!["p-a", "", "p-b"]), ("", vec!["p-a", "p-b"])];
        let t = Topology::build(&agents, reports);
        assert_eq!(edges(&t), [("p-a", "p-b")]);
        assert_eq!(t.nodes.len(), 2);
    }

    #[test]
    fn agents_sharing_a_sidecar_share_its_peers() {
        let agents = [active("a1", "p"), active("a2", "p"), active("b", "q")];
        let t = Topology::build(&agents, no_reports());
        assert_eq!(edges(&t), [("p", "q")]);
        assert_eq!(t.nodes[0].mesh_peers, ["q"]);
        assert_eq!(t.nodes[1].mesh_peers, ["q"]);
        assert_eq!(t.nodes[2].mesh_peers, ["p"]);
    }

    #[test]
    fn nodes_are_sorted_whatever_the_input_order() {
        let agents = [active("c", ""), active("a", ""), active("b", "")];
        let t = Topology::build(&agents, no_reports());
        let ids: Vec<_> = t.nodes.iter().map(|n| n.agent_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn edge_count_is_bounded_reported_first() {
        let agents: Vec<AgentRecord> = (0..6).map(|i| active(&format!("a{i}"), &format!("p{i}"))).collect();
        // p5 reports a link to p4 and to an outsider; p0..p4 minus p4 are old.
        let reports = [("p5", vec!["zz", "p4"]), ("p4", vec!["p5"])];
        let t = Topology::build_bounded(&agents, reports.clone(), 3);
        assert!(t.truncated);
        assert_eq!(t.mesh_edges.len(), 3);
        // Both reported edges made it; one fallback edge filled the rest.
        assert_eq!(edges(&t), [("p0", "p1"), ("p4", "p5"), ("p5", "zz")]);
        assert_eq!(serde_json::to_value(&t).unwrap()["truncated"], true);

        let whole = Topology::build(&agents, reports);
        assert!(!whole.truncated);
        // C(4,2) fallback pairs among p0..p3 plus the two reported edges.
        assert_eq!(whole.mesh_edges.len(), 8);
    }

    #[test]
    fn large_fallback_mesh_stops_at_the_bound() {
        let agents: Vec<AgentRecord> = (0..1000).map(|i| active(&format!("a{i:04}"), &format!("p{i:04}"))).collect();
        let t = Topology::build(&agents, no_reports());
        assert_eq!(t.mesh_edges.len(), DEFAULT_MAX_EDGES);
        assert!(t.truncated);
    }

    #[test]
    fn topology_round_trips_through_json() {
        let agents = [active("a", "p-a"), active("b", "p-b")];
        let t = Topology::build(&agents, [("p-a", vec!["x"])]);
        let back: Topology = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }
}
