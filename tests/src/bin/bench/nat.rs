//! NAT lab figures: how fast every pair of NAT kinds links, and what the
//! TURN relay costs in round trip and throughput.
//!
//! Real `chatixia-sidecar` processes in the NAT lab of
//! `chatixia_e2e::netlab` (network namespaces, one router per site, coturn),
//! set up as `tests/tests/nat_matrix.rs` does: two sites of each kind
//! (public, port-restricted cone, symmetric, UDP blocked), the registry and
//! coturn (UDP, TCP and TLS, REST credentials) on the lab's internet, the
//! sidecars taking their TURN servers from the registry. The agents are
//! the sidecar section's bench agents ([`Ipc`]), and the round trip and
//! throughput are measured by the same code as there.
//!
//! Needs root and the lab's tools; without them the section says why and
//! is skipped, unless `CHATIXIA_REQUIRE_NETLAB=1`, which makes it a failed
//! run. Every loop is bounded in count and in time; every sidecar gets
//! SIGTERM when its figure is done and is killed on drop, and dropping the
//! lab removes everything it made.

use crate::report::{self, Budget, Report, Unit};
use crate::sidecar::{EVENT_LIMIT, Ipc, MAX_WINDOW, START_PACE, bulk, exited_within, round_trips, unpanicked};
use chatixia_e2e::netlab::{Coturn, Lab, NatKind, OUTSIDE_IPS, Site, TurnServer, TurnTls};
use chatixia_e2e::sidecar::Sidecar;
use chatixia_e2e::{Registry, Scratch, tls_proxy};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const FLAGS: &[(&str, bool)] = &[("--nat-runs", true)];
pub const OPTIONS: &str = concat!(
    "  --nat-runs N        links per pair of NAT kinds, 1..=50 [default: 5]\n",
    "                      (the section needs root and the NAT lab's tools, scripts/netlab-deps.sh;\n",
    "                      without them it is skipped, a failed run if CHATIXIA_REQUIRE_NETLAB=1)\n",
);

const DEFAULT_RUNS: usize = 5;
const MAX_RUNS: usize = 50;
/// coturn's REST secret, known to the registry (and, for the relay's round
/// trip and throughput, to the sidecars themselves).
const SECRET: &str = "bench-rest-secret";
/// Each pair of NAT kinds links within this long.
const LINK_BUDGET: Duration = Duration::from_secs(5);
/// A link not open after this long counts as not linked (and over budget).
const LINK_LIMIT: Duration = Duration::from_secs(10);
/// Bound on a sidecar leaving after SIGTERM.
const EXIT_LIMIT: Duration = Duration::from_secs(3);
/// The programs the lab runs (see `chatixia_e2e::netlab`).
const LAB_TOOLS: [&str; 6] = ["ip", "iptables-restore", "iptables-save", "conntrack", "sysctl", "turnserver"];

fn parse(args: &[String]) -> Result<usize, String> {
    let mut runs = DEFAULT_RUNS;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--nat-runs" => {
                let n = it.next().and_then(|v| v.parse().ok()).filter(|n| (1..=MAX_RUNS).contains(n));
                runs = n.ok_or(format!("--nat-runs takes 1 to {MAX_RUNS}"))?;
            }
            other => return Err(format!("unknown nat option {other:?}")),
        }
    }
    Ok(runs)
}

pub fn run(report: &mut Report, args: &[String]) -> Result<(), String> {
    let runs = parse(args)?;
    if !lab_available(report)? {
        return Ok(());
    }
    // The sidecars get every TURN and ICE setting from the bench.
    report.note_setup("chatixia-sidecar", &["MAX_MESSAGE_BYTES"]);
    report::raise_nofile(4096)?;
    unpanicked(|| {
        let Some(w) = World::new(runs)? else {
            report.note(LAB_NOT_SET_UP);
            return Ok(());
        };
        matrix(report, &w, runs)?;
        relay_cost(report, &w)
    })
}

/// What a section notes when `Lab::new` returned `None` (it said why on
/// stderr; `CHATIXIA_REQUIRE_NETLAB=1` panics there instead).
pub(crate) const LAB_NOT_SET_UP: &str = "skipped: the NAT lab could not be set up (see the NOTICE above)";

/// Whether the NAT lab can run here. When it cannot, a note says why and
/// the section is skipped, or it is an error with `CHATIXIA_REQUIRE_NETLAB=1`.
pub(crate) fn lab_available(report: &Report) -> Result<bool, String> {
    let required = std::env::var("CHATIXIA_REQUIRE_NETLAB").is_ok_and(|v| v == "1");
    let Some(why) = lab_unavailable() else { return Ok(true) };
    let why = format!("the NAT lab cannot run here: {why} (it needs root and {})", LAB_TOOLS.join(", "));
    if required {
        return Err(format!("{why}; CHATIXIA_REQUIRE_NETLAB=1"));
    }
    report.note(&format!(
        "skipped: {why}; scripts/netlab-deps.sh installs the tools; CHATIXIA_REQUIRE_NETLAB=1 makes this a \
         failed run"
    ));
    Ok(false)
}

/// Why the lab cannot run here, if it cannot: not root, or tools missing.
fn lab_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<_> =
        std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into)).collect();
    let missing: Vec<&str> =
        LAB_TOOLS.into_iter().filter(|tool| !dirs.iter().any(|d| d.join(tool).is_file())).collect();
    (!missing.is_empty()).then(|| format!("missing {}", missing.join(", ")))
}

// ---------------------------------------------------------------- the lab

/// The lab with its registry and coturn. Field order: the registry goes
/// first, the lab (and everything in its namespaces) last but the directory.
struct World {
    registry: Registry,
    /// Two sites of each kind, so that a kind can meet itself.
    sites: Vec<(NatKind, [Site; 2])>,
    turn: TurnServer,
    lab: Lab,
    dir: Scratch,
}

fn kinds() -> [NatKind; 4] {
    // The UDP-blocked site may send UDP only to an outside host that is
    // never used: nothing of ours gets out over UDP.
    [NatKind::Public, NatKind::Cone, NatKind::Symmetric, NatKind::UdpBlocked { allow: OUTSIDE_IPS[2] }]
}

pub(crate) fn kind_name(kind: NatKind) -> &'static str {
    match kind {
        NatKind::Public => "public",
        NatKind::Cone => "cone",
        NatKind::Symmetric => "symmetric",
        NatKind::UdpBlocked { .. } => "udp-blocked",
        NatKind::OnlyTcpTo { .. } => "tcp-to-registry-only",
    }
}

impl World {
    /// `None` when the lab cannot be made (Lab::new says why).
    fn new(runs: usize) -> Result<Option<World>, String> {
        let Some(lab) = Lab::new("bench-nat") else { return Ok(None) };
        let sites: Vec<(NatKind, [Site; 2])> = kinds().into_iter().map(|k| (k, [lab.site(k), lab.site(k)])).collect();
        let coturn = Coturn { secret: Some(SECRET.into()), tls: Some(TurnTls::lab_fixture()), ..Coturn::default() };
        let turn = lab.start_coturn(coturn);
        let dir = Scratch::new("bench-nat");
        let mut ids: Vec<String> = Vec::new();
        for pair in 0..10 {
            for run in 0..runs {
                ids.push(format!("nat-a{pair}r{run}"));
                ids.push(format!("nat-b{pair}r{run}"));
            }
        }
        for scenario in SCENARIOS {
            ids.extend([format!("nat-{}-a", scenario.tag), format!("nat-{}-b", scenario.tag)]);
        }
        write_keys(dir.path(), &ids)?;
        let urls = [turn.turn_url("udp"), turn.turn_url("tcp"), turn.turns_url().ok_or("coturn without TLS")?];
        let registry = lab.start_registry_with(
            dir.path(),
            &[],
            &[("TURN_URL", &urls.join(",")), ("TURN_SECRET", SECRET), ("RUST_LOG", "info")],
        );
        Ok(Some(World { registry, sites, turn, lab, dir }))
    }

    /// Starts `id` on `site`; see [`start_sidecar`].
    fn start(&self, site: &Site, id: &str, extra: &[(&str, &str)]) -> Sidecar {
        start_sidecar(&self.registry, self.dir.path(), site, id, extra)
    }

    /// The log lines of a sidecar `id` on a site of `kind` that has all it
    /// needs before anyone links with it: registered, and a relayed address
    /// from each TURN server it can reach (the registry's three, over TCP
    /// only when UDP is blocked).
    fn ready_lines(&self, id: &str, kind: NatKind) -> Vec<String> {
        let t = &self.turn;
        let mut urls = Vec::new();
        if !matches!(kind, NatKind::UdpBlocked { .. }) {
            urls.push(format!("turn:{}:{}", t.ip, t.port));
        }
        urls.push(format!("turn:{}:{}?transport=tcp", t.ip, t.port));
        urls.extend(t.tls_port.map(|p| format!("turns:{}:{p}", t.ip)));
        let mut lines = vec![format!("connected to the registry as {id}")];
        lines.extend(urls.iter().map(|u| format!("TURN {u}: relayed address")));
        lines
    }
}

/// Starts `id` (API key `key-{id}`) on `site` against the lab's
/// `registry`, its state in `dir`, and waits until its IPC socket is
/// bound. It has no TURN or ICE settings of its own unless `extra` gives
/// some: it takes the registry's (`GET /api/config`).
pub(crate) fn start_sidecar(registry: &Registry, dir: &Path, site: &Site, id: &str, extra: &[(&str, &str)]) -> Sidecar {
    let ca = tls_proxy::ca_file().to_string_lossy().into_owned();
    let state = dir.join(format!("{id}-state")).to_string_lossy().into_owned();
    // Empty is unset: nothing inherited from the bench's environment.
    let mut env = vec![
        ("REGISTRY_CA_FILE", ca.as_str()),
        ("STATE_DIR", state.as_str()),
        ("RUST_LOG", "info"),
        ("TURN_URL", ""),
        ("TURN_SECRET", ""),
        ("TURN_USERNAME", ""),
        ("TURN_PASSWORD", ""),
        ("ICE_TRANSPORT_POLICY", ""),
    ];
    env.extend_from_slice(extra);
    site.start_sidecar(registry, dir, &format!("key-{id}"), id, &env)
}

/// An `api_keys.json` in `dir` giving each of `ids` the key `key-{id}`.
pub(crate) fn write_keys(dir: &Path, ids: &[String]) -> Result<(), String> {
    let keys: Vec<String> =
        ids.iter().map(|id| format!("\"key-{id}\":{{\"peer_id\":\"{id}\",\"role\":\"agent\"}}")).collect();
    std::fs::write(dir.join("api_keys.json"), format!("{{\"keys\":{{{}}}}}", keys.join(",")))
        .map_err(|e| format!("api_keys.json: {e}"))
}

/// SIGTERM to each, then waits (bounded) for them to leave; the ones that
/// do not are killed on drop. How many did not leave in time.
fn stop(sidecars: Vec<Sidecar>) -> usize {
    for s in &sidecars {
        s.proc.signal("TERM");
    }
    let mut unclean = 0;
    for mut s in sidecars {
        if !exited_within(&mut s.proc, EXIT_LIMIT) {
            unclean += 1;
        }
    }
    unclean
}

/// Two linked sidecars, A and B, with their bench agents: what the round
/// trip and throughput figures of this section and the relay section are
/// measured on.
pub(crate) struct Pair {
    // Field order: the agents go before their sidecars.
    pub agent_a: Ipc,
    pub agent_b: Ipc,
    pub a: Sidecar,
    pub b: Sidecar,
    pub ids: (String, String),
}

impl Pair {
    /// Starts A (`start(sites.0, ids.0)`), waits for the log lines `ready`
    /// of it (none: only for its IPC socket), starts B on `sites.1` and
    /// waits until both agents have read `peer_connected` for the other.
    pub(crate) fn link(
        start: impl Fn(&Site, &str) -> Sidecar,
        sites: (&Site, &Site),
        ids: (String, String),
        ready: &[String],
    ) -> Result<Pair, String> {
        let a = start(sites.0, &ids.0);
        let agent_a = Ipc::attach(&a.socket, EVENT_LIMIT)?;
        if !ready.is_empty() {
            a.proc.wait_for_lines(&ready.iter().map(String::as_str).collect::<Vec<_>>());
        }
        let b = start(sites.1, &ids.1);
        let agent_b = Ipc::attach(&b.socket, EVENT_LIMIT)?;
        let mut pair = Pair { agent_a, agent_b, a, b, ids };
        let (a_id, b_id) = (pair.ids.0.as_str(), pair.ids.1.as_str());
        pair.agent_a.wait(LINK_LIMIT, &format!("peer_connected {b_id}"), |v| {
            v["type"] == "peer_connected" && v["payload"]["peer_id"] == b_id
        })?;
        pair.agent_b.wait(LINK_LIMIT, &format!("peer_connected {a_id}"), |v| {
            v["type"] == "peer_connected" && v["payload"]["peer_id"] == a_id
        })?;
        Ok(pair)
    }

    /// A's and B's `status` paths entry for the other.
    pub(crate) fn paths(&mut self) -> Result<(Value, Value), String> {
        let pa = self.agent_a.status()?["payload"]["paths"][&self.ids.1].clone();
        let pb = self.agent_b.status()?["payload"]["paths"][&self.ids.0].clone();
        Ok((pa, pb))
    }

    /// Round trips A -> B -> A with B's agent echoing (the sidecar
    /// section's code), as p50 and p99 figures named `{label}: …`; sorted
    /// nanoseconds.
    pub(crate) fn round_trips(&mut self, report: &mut Report, label: &str) -> Result<Vec<u64>, String> {
        self.agent_b.echo.store(true, Ordering::Relaxed);
        let rtt = round_trips(&mut self.agent_a, &self.ids.1, "echo");
        self.agent_b.echo.store(false, Ordering::Relaxed);
        let rtt = rtt?;
        for p in [50.0, 99.0] {
            report.figure(
                &format!("{label}: IPC -> DataChannel -> IPC round trip, p{p}"),
                report::percentile(&rtt, p) as f64,
                Unit::Us,
                Budget::None,
            );
        }
        report.note(&format!(
            "{} round trips, one in flight, B's agent echoing (as in the sidecar section); max {:.1} µs",
            rtt.len(),
            *rtt.last().unwrap_or(&0) as f64 / 1e3
        ));
        Ok(rtt)
    }

    /// 16 KiB messages A -> B (the sidecar section's code) as a figure
    /// named `{label}: …`, with its notes; bytes/s.
    pub(crate) fn throughput(&mut self, report: &mut Report, label: &str) -> Result<f64, String> {
        let pids = (self.a.proc.child.id(), self.b.proc.child.id());
        let bulk = bulk(&mut self.agent_a, &self.agent_b, (&self.ids.0, &self.ids.1), pids, MAX_WINDOW)?;
        report.figure(
            &format!("{label}: DataChannel one-way throughput, 16 KiB messages"),
            bulk.bytes_per_sec / 1e6,
            Unit::PerSec("MB"),
            Budget::None,
        );
        for note in &bulk.notes {
            report.note(note);
        }
        Ok(bulk.bytes_per_sec)
    }

    /// A warning, with A's last path changes, when A's path is no longer
    /// `first` (its path when the figures began).
    pub(crate) fn note_path_change(&mut self, report: &Report, first: &Value) -> Result<(), String> {
        let now = self.paths()?.0;
        if side_path(&now) != side_path(first) {
            report.note(&format!("warning: A's path changed meanwhile, to {}; A logged:", side_path(&now)));
            let log = self.a.proc.log();
            let changes: Vec<&str> = log.lines().filter(|l| l.contains("path to")).collect();
            for line in &changes[changes.len().saturating_sub(4)..] {
                report.note(&format!("  {line}"));
            }
        }
        Ok(())
    }

    /// SIGTERM to both; a warning when one does not leave in time.
    pub(crate) fn stop(self, report: &Report) {
        let Pair { agent_a, agent_b, a, b, .. } = self;
        drop((agent_a, agent_b));
        let unclean = stop(vec![a, b]);
        if unclean > 0 {
            report.note(&format!("warning: {unclean} sidecars did not leave within {EXIT_LIMIT:?} after SIGTERM"));
        }
    }
}

// ---------------------------------------------------------------- figures

/// One link of a pair: how long it took, and the path each side reported.
struct Link {
    took: Option<Duration>,
    path: String,
    error: Option<String>,
    /// Sidecars that did not leave within [`EXIT_LIMIT`] after SIGTERM.
    unclean: usize,
}

/// `local/transport->remote` from one side's `status` paths entry.
pub(crate) fn side_path(p: &Value) -> String {
    let s = |k: &str| p[k].as_str().unwrap_or("?").to_owned();
    if p.is_null() { "none".into() } else { format!("{}/{}->{}", s("local"), s("local_transport"), s("remote")) }
}

pub(crate) fn relayed(p: &Value) -> bool {
    p["local"] == "relay" || p["remote"] == "relay"
}

/// A sidecar on `a` that has all it needs, then one on `b`: from starting
/// the second to the first's agent reading `peer_connected`.
fn link(w: &World, a: &Site, b: &Site, ids: (&str, &str)) -> Result<Link, String> {
    let first = w.start(a, ids.0, &[]);
    let mut agent_a = Ipc::attach(&first.socket, EVENT_LIMIT)?;
    let ready = w.ready_lines(ids.0, a.kind);
    first.proc.wait_for_lines(&ready.iter().map(String::as_str).collect::<Vec<_>>());
    let t0 = Instant::now();
    let second = w.start(b, ids.1, &[]);
    let mut agent_b = Ipc::attach(&second.socket, EVENT_LIMIT)?;
    let connected = agent_a.wait(LINK_LIMIT.saturating_sub(t0.elapsed()), &format!("peer_connected {}", ids.1), |v| {
        v["type"] == "peer_connected" && v["payload"]["peer_id"] == ids.1
    });
    let result = match connected {
        Ok((t, _)) => {
            agent_b.wait(EVENT_LIMIT, &format!("peer_connected {} at the second", ids.0), |v| {
                v["type"] == "peer_connected" && v["payload"]["peer_id"] == ids.0
            })?;
            let pa = agent_a.status()?["payload"]["paths"][ids.1].clone();
            let pb = agent_b.status()?["payload"]["paths"][ids.0].clone();
            let kind = if relayed(&pa) || relayed(&pb) { "relay" } else { "direct" };
            let path = format!("{kind} {} | {}", side_path(&pa), side_path(&pb));
            Link { took: Some(t - t0), path, error: None, unclean: 0 }
        }
        Err(e) => Link { took: None, path: "not linked".into(), error: Some(e), unclean: 0 },
    };
    drop((agent_a, agent_b));
    Ok(Link { unclean: stop(vec![first, second]), ..result })
}

/// Every unordered pair of NAT kinds, `runs` links each.
fn matrix(report: &mut Report, w: &World, runs: usize) -> Result<(), String> {
    report.note(&format!(
        "NAT lab: second sidecar start -> first sidecar's agent reads peer_connected; links per pair of NAT kinds: \
         {runs}; the first is on a site of the first kind, registered and holding its TURN allocations, before the \
         second starts on a site of the second kind; both take coturn (UDP, TCP, TLS) from the registry"
    ));
    let mut pair = 0;
    for i in 0..w.sites.len() {
        for j in i..w.sites.len() {
            let (ka, sites_a) = &w.sites[i];
            let (kb, sites_b) = &w.sites[j];
            let label = format!("{} <-> {}", kind_name(*ka), kind_name(*kb));
            let mut times = Vec::new();
            let mut paths: BTreeMap<String, usize> = BTreeMap::new();
            let mut errors = Vec::new();
            let mut unclean = 0;
            for run in 0..runs {
                let began = Instant::now();
                let (a, b) = (format!("nat-a{pair}r{run}"), format!("nat-b{pair}r{run}"));
                let l = link(w, &sites_a[0], &sites_b[1], (&a, &b))?;
                // Not linked: counted at the limit, so over budget.
                times.push(l.took.unwrap_or(LINK_LIMIT).as_nanos() as u64);
                *paths.entry(l.path).or_default() += 1;
                errors.extend(l.error.map(|e| format!("run {}: {e}", run + 1)));
                unclean += l.unclean;
                // The registry hands out at most 10 tokens a second per address.
                std::thread::sleep(START_PACE.saturating_sub(began.elapsed()));
            }
            pair += 1;
            let all = list_ms(&times);
            times.sort_unstable();
            report.figure(
                &format!("nat {label}: second start -> peer_connected, median"),
                report::percentile(&times, 50.0) as f64,
                Unit::Ms,
                Budget::None,
            );
            report.figure(
                &format!("nat {label}: second start -> peer_connected, slowest of {runs}"),
                *times.last().unwrap_or(&0) as f64,
                Unit::Ms,
                Budget::AtMost(LINK_BUDGET.as_nanos() as f64),
            );
            let paths: Vec<String> = paths.iter().map(|(p, n)| format!("{p} (x{n})")).collect();
            report.note(&format!("all (ms, in order): {all}; path, first's | second's view: {}", paths.join(", ")));
            for e in &errors {
                report.note(&format!("warning: not linked within {LINK_LIMIT:?}: {e}"));
            }
            if unclean > 0 {
                report.note(&format!("warning: {unclean} sidecars did not leave within {EXIT_LIMIT:?} after SIGTERM"));
            }
        }
    }
    Ok(())
}

/// How two public sidecars are made to link for [`relay_cost`].
struct Scenario {
    tag: &'static str,
    what: &'static str,
    /// `None`: the registry's TURN servers and every candidate (the path is
    /// direct). `Some(transport)`: `ICE_TRANSPORT_POLICY=relay` and, as
    /// the sidecars' own `TURN_URL`/`TURN_SECRET`, only coturn's URL for
    /// that transport. With all three of the registry's URLs the relayed
    /// pair first chosen and the one used later vary from run to run.
    relay: Option<&'static str>,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario { tag: "direct", what: "direct (public <-> public)", relay: None },
    Scenario { tag: "relay", what: "TURN relay over UDP", relay: Some("udp") },
    Scenario { tag: "tcp", what: "TURN relay over TCP", relay: Some("tcp") },
];

/// Round trips (sorted ns) and bytes/s of one scenario.
struct Traffic {
    rtt: Vec<u64>,
    bytes_per_sec: f64,
}

/// Round trip and throughput directly between two public sites, then with
/// `ICE_TRANSPORT_POLICY=relay` through coturn over UDP, and over TCP.
fn relay_cost(report: &mut Report, w: &World) -> Result<(), String> {
    let [direct, relay, tcp] = &SCENARIOS;
    let direct = traffic(report, w, direct)?;
    let relay = traffic(report, w, relay)?;
    traffic(report, w, tcp)?;
    let (d, r) = (report::percentile(&direct.rtt, 50.0), report::percentile(&relay.rtt, 50.0));
    report.figure(
        "nat round trip added by the TURN relay (p50 relay - p50 direct)",
        r as f64 - d as f64,
        Unit::Us,
        Budget::None,
    );
    report.note(&format!(
        "throughput through the relay: {:.0} % of direct",
        relay.bytes_per_sec / direct.bytes_per_sec * 100.0
    ));
    Ok(())
}

fn traffic(report: &mut Report, w: &World, s: &Scenario) -> Result<Traffic, String> {
    let (site_a, site_b) = (&w.sites[0].1[0], &w.sites[0].1[1]);
    let ids = (format!("nat-{}-a", s.tag), format!("nat-{}-b", s.tag));
    let url = s.relay.map(|transport| w.turn.turn_url(transport));
    let mut extra = Vec::new();
    if let Some(url) = &url {
        extra.extend([("ICE_TRANSPORT_POLICY", "relay"), ("TURN_URL", url.as_str()), ("TURN_SECRET", SECRET)]);
    }
    let mut pair = Pair::link(|site, id| w.start(site, id, &extra), (site_a, site_b), ids, &[])?;
    let (pa, pb) = pair.paths()?;
    let expected = |p: &Value| match s.relay {
        None => !relayed(p),
        Some(t) => p["local"] == "relay" && p["remote"] == "relay" && p["local_transport"] == t,
    };
    let shown = format!("{} | {}", side_path(&pa), side_path(&pb));
    let how = match &url {
        None => "TURN servers from the registry".to_owned(),
        Some(url) => format!("ICE_TRANSPORT_POLICY=relay, TURN_URL={url}"),
    };
    report.note(&format!("NAT lab, two public sites, {} ({how}): path {shown}", s.what));
    if !expected(&pa) || !expected(&pb) {
        report.note("warning: not the path this scenario is meant to measure");
    }

    let label = format!("nat {}", s.what);
    let rtt = pair.round_trips(report, &label)?;
    let before = (site_a.counters(), w.lab.direct_udp(site_a, site_b));
    let bytes_per_sec = pair.throughput(report, &label)?;
    let after = (site_a.counters(), w.lab.direct_udp(site_a, site_b));
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let to_coturn = |c: &chatixia_e2e::netlab::Counters| c.out.turn.bytes + c.out.relay.bytes;
    report.note(&format!(
        "kernel counters during the throughput run: A's site sent {:.1} MB to coturn; {:.1} MB went directly \
         between the two sites",
        mb(to_coturn(&after.0) - to_coturn(&before.0)),
        mb(after.1.bytes - before.1.bytes)
    ));
    pair.note_path_change(report, &pa)?;
    pair.stop(report);
    Ok(Traffic { rtt, bytes_per_sec })
}

fn list_ms(values: &[u64]) -> String {
    values.iter().map(|n| format!("{:.1}", *n as f64 / 1e6)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert_eq!(parse(&[]), Ok(DEFAULT_RUNS));
        assert_eq!(parse(&["--nat-runs".into(), "2".into()]), Ok(2));
        assert!(parse(&["--nat-runs".into(), "0".into()]).is_err());
        assert!(parse(&["--nat-runs".into(), "51".into()]).is_err());
        assert!(parse(&["--nat-runs".into()]).is_err());
        assert!(parse(&["--bogus".into()]).is_err());
    }

    #[test]
    fn paths_read_from_status() {
        let p = serde_json::json!({"local": "relay", "remote": "relay", "local_transport": "tcp", "rtt_ms": null});
        assert_eq!(side_path(&p), "relay/tcp->relay");
        assert!(relayed(&p));
        assert_eq!(side_path(&Value::Null), "none");
    }
}
