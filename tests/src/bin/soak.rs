//! `soak`: a bounded soak-and-chaos run of the real release binaries in the
//! NAT lab (root). N sidecars, each on its own site (public, cone or
//! symmetric NAT), a registry with its relay, and one agent per sidecar
//! sending a sequence-numbered message to every peer at a steady rate,
//! while faults come on a schedule: kill -9 and restart of a sidecar or of
//! the registry (state kept), loss, delay and reordering (as netem would) on a
//! site, and an address change of a NAT.
//!
//! It reports messages sent, delivered, duplicated, reordered and lost,
//! split into links that stayed up and messages that crossed a break (a
//! fault at either end, or a link that went down, within a window around
//! the send); the time to re-form after each fault; RSS, open descriptors
//! and CPU of every daemon at the start, middle and end; and panics. It
//! fails (exit 1) when a message on a link that stayed up was lost,
//! duplicated or reordered, when a daemon panicked, when a fault was not
//! recovered from, or when a daemon's memory or descriptors grew beyond
//! noise. Not part of the test suite: `scripts/soak.sh` builds and runs it.
//!
//! ```text
//! scripts/soak.sh [--sidecars 20] [--minutes 30] [--fault-every 60] [--seed 1]
//! ```
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use chatixia_e2e::netlab::{Impairment, Lab, NatKind, Site};
use chatixia_e2e::sidecar::Sidecar;
use chatixia_e2e::{Proc, Registry, Scratch, metric};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A message sent before or after a fault at either end within these
/// bounds counts as crossing a break. The upper bound is the outbox's
/// lifetime plus a margin: anything later would have expired.
const BREAK_BEFORE: Duration = Duration::from_secs(5);
const BREAK_AFTER: Duration = Duration::from_secs(35);
/// How long a fault may take to heal before it counts as not recovered.
const REFORM_LIMIT: Duration = Duration::from_secs(90);
/// After the last send: time for the last messages, and for outboxes to
/// expire and say so.
const DRAIN: Duration = Duration::from_secs(40);
/// Growth between the middle and the end that is more than noise.
const RSS_GROWTH_KB: u64 = 2048;
const RSS_GROWTH_RATIO: f64 = 1.25;
const FD_GROWTH: usize = 8;
/// The impairment of a site: 5 % loss, 50–200 ms delay each way (which
/// also reorders).
const LOSS_PERCENT: f64 = 5.0;
const DELAY_MS: (u64, u64) = (50, 200);

struct Options {
    sidecars: usize,
    minutes: f64,
    fault_every: Duration,
    seed: u64,
    interval: Duration,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        sidecars: 20,
        minutes: 30.0,
        fault_every: Duration::from_secs(60),
        seed: 1,
        interval: Duration::from_secs(1),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sidecars" => o.sidecars = value()?.parse().map_err(|e| format!("--sidecars: {e}"))?,
            "--minutes" => o.minutes = value()?.parse().map_err(|e| format!("--minutes: {e}"))?,
            "--fault-every" => {
                o.fault_every = Duration::from_secs_f64(value()?.parse().map_err(|e| format!("--fault-every: {e}"))?)
            }
            "--seed" => o.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--interval-ms" => {
                o.interval = Duration::from_millis(value()?.parse().map_err(|e| format!("--interval-ms: {e}"))?)
            }
            "--help" | "-h" => {
                return Err(
                    "usage: soak [--sidecars N] [--minutes M] [--fault-every SECS] [--seed S] [--interval-ms MS]"
                        .into(),
                );
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if !(2..=60).contains(&o.sidecars) || o.minutes <= 0.0 || o.minutes > 24.0 * 60.0 {
        return Err("--sidecars must be 2..=60 and --minutes within a day".into());
    }
    Ok(o)
}

/// What one agent saw and did, with times.
#[derive(Default)]
struct AgentLog {
    /// (peer, seq, when written to the IPC socket)
    sent: Vec<(usize, u64, Instant)>,
    /// (peer, seq, when received)
    received: Vec<(usize, u64, Instant)>,
    /// (peer, seq, code) of `error` events naming a message.
    errors: Vec<(usize, u64, String)>,
    /// (peer, up, when)
    links: Vec<(usize, bool, Instant)>,
}

struct Node {
    name: String,
    site: Site,
    socket: PathBuf,
    sidecar: Mutex<Sidecar>,
    log: Arc<Mutex<AgentLog>>,
    /// Log lines of processes this node had before its restarts.
    old_logs: Mutex<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    RestartSidecar,
    RestartRegistry,
    Impair,
    Rebind,
}

struct Fault {
    kind: FaultKind,
    node: Option<usize>,
    at: Instant,
    /// Until when it lasts (an impairment: until the next fault).
    until: Instant,
    reformed: Option<Duration>,
}

/// xorshift64*: the schedule is the same for the same seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn site_kind(i: usize) -> NatKind {
    match i % 5 {
        0 => NatKind::Public,
        3 => NatKind::Symmetric,
        _ => NatKind::Cone,
    }
}

fn run(o: &Options) -> Result<bool, String> {
    let lab = Lab::new("soak").ok_or("the NAT lab cannot run here (root and scripts/netlab-deps.sh needed)")?;
    let dir = Scratch::new("soak");
    let names: Vec<String> = (0..o.sidecars).map(|i| format!("s{i:02}")).collect();
    let keys: Vec<String> =
        names.iter().map(|n| format!("\"key-{n}\":{{\"peer_id\":\"{n}\",\"role\":\"agent\"}}")).collect();
    std::fs::write(dir.path().join("api_keys.json"), format!("{{\"keys\":{{{}}}}}", keys.join(",")))
        .map_err(|e| e.to_string())?;
    println!("# soak: {} sidecars, {} min, a fault every {:?}, seed {}", o.sidecars, o.minutes, o.fault_every, o.seed);
    let registry =
        Mutex::new(lab.start_registry_with(dir.path(), &[], &[("RELAY_PORT", "3478"), ("RUST_LOG", "info")]));
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let site = lab.site(site_kind(i));
        let state = dir.path().join(format!("{name}-state"));
        let env = [("STATE_DIR", state.to_str().unwrap_or_default()), ("RUST_LOG", "info")];
        let sidecar = site.start_sidecar(&registry.lock().unwrap(), dir.path(), &format!("key-{name}"), name, &env);
        let socket = sidecar.socket.clone();
        nodes.push(Arc::new(Node {
            name: name.clone(),
            site,
            socket,
            sidecar: Mutex::new(sidecar),
            log: Arc::default(),
            old_logs: Mutex::default(),
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sending = Arc::new(AtomicBool::new(true));
    let start = Instant::now();
    let agents: Vec<_> = (0..nodes.len())
        .map(|i| {
            let (node, n, stop, sending, interval) =
                (nodes[i].clone(), nodes.len(), stop.clone(), sending.clone(), o.interval);
            std::thread::spawn(move || agent(i, node, n, interval, &stop, &sending))
        })
        .collect();

    // The whole mesh first.
    let formed = wait_until(Duration::from_secs(180), || full_mesh(&nodes, start));
    println!("# mesh of {} formed in {:.1} s: {formed}", nodes.len(), start.elapsed().as_secs_f64());
    let mut samples = vec![("start", sample(&registry, &nodes))];

    let end = start + Duration::from_secs_f64(o.minutes * 60.0);
    let middle = start + (end - start) / 2;
    let mut rng = Rng(o.seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let cycle = [
        FaultKind::RestartSidecar,
        FaultKind::Impair,
        FaultKind::Rebind,
        FaultKind::RestartSidecar,
        FaultKind::RestartRegistry,
        FaultKind::Impair,
    ];
    let mut faults: Vec<Fault> = Vec::new();
    let mut impaired: Option<Impairment> = None;
    let mut next = Instant::now() + o.fault_every;
    let mut k = 0;
    while Instant::now() + o.fault_every / 2 < end {
        sleep_until(next.min(end));
        if impaired.take().is_some()
            && let Some(f) = faults.iter_mut().rev().find(|f| f.kind == FaultKind::Impair)
        {
            f.until = Instant::now();
        }
        if samples.len() == 1 && Instant::now() >= middle {
            samples.push(("middle", sample(&registry, &nodes)));
        }
        if Instant::now() + o.fault_every / 2 >= end {
            break;
        }
        let kind = cycle[k % cycle.len()];
        k += 1;
        let fault = match kind {
            FaultKind::RestartSidecar => {
                let i = rng.below(nodes.len());
                let at = Instant::now();
                {
                    let mut sc = nodes[i].sidecar.lock().unwrap();
                    nodes[i].old_logs.lock().unwrap().push(sc.proc.log());
                    sc.restart();
                }
                let reformed = wait_until(REFORM_LIMIT, || relinked(&nodes, i, at)).then(|| at.elapsed());
                Fault { kind, node: Some(i), at, until: at, reformed }
            }
            FaultKind::RestartRegistry => {
                let at = Instant::now();
                {
                    let mut reg = registry.lock().unwrap();
                    nodes[0].old_logs.lock().unwrap().push(format!("registry: {}", reg.proc.log()));
                    reg.restart();
                }
                let n = nodes.len() as f64;
                let reformed = wait_until(REFORM_LIMIT, || {
                    let reg = registry.lock().unwrap();
                    let text = lab.in_internet(|| reg.get("/metrics").body);
                    metric(&text, "chatixia_ws_connections") == Some(n)
                })
                .then(|| at.elapsed());
                Fault { kind, node: None, at, until: at, reformed }
            }
            FaultKind::Impair => {
                let nat: Vec<usize> = (0..nodes.len()).filter(|&i| site_kind(i) != NatKind::Public).collect();
                let i = nat[rng.below(nat.len())];
                impaired = Some(nodes[i].site.impair(LOSS_PERCENT, DELAY_MS));
                let at = Instant::now();
                Fault { kind, node: Some(i), at, until: at + o.fault_every, reformed: None }
            }
            FaultKind::Rebind => {
                let nat: Vec<usize> = (0..nodes.len()).filter(|&i| site_kind(i) != NatKind::Public).collect();
                let i = nat[rng.below(nat.len())];
                nodes[i].site.rebind();
                let at = Instant::now();
                Fault { kind, node: Some(i), at, until: at, reformed: None }
            }
        };
        println!(
            "# {:>7.1} s  {:?}{}{}",
            fault.at.duration_since(start).as_secs_f64(),
            fault.kind,
            fault.node.map(|i| format!(" {}", nodes[i].name)).unwrap_or_default(),
            fault.reformed.map(|d| format!(", re-formed in {:.2} s", d.as_secs_f64())).unwrap_or_default()
        );
        faults.push(fault);
        next += o.fault_every;
    }
    drop(impaired);
    if samples.len() == 1 {
        samples.push(("middle", sample(&registry, &nodes)));
    }
    sleep_until(end);
    sending.store(false, Ordering::SeqCst);
    std::thread::sleep(DRAIN);
    samples.push(("end", sample(&registry, &nodes)));
    stop.store(true, Ordering::SeqCst);
    for a in agents {
        let _ = a.join();
    }
    // Re-forming after an address change: both ways through again.
    for f in faults.iter_mut().filter(|f| f.kind == FaultKind::Rebind) {
        f.reformed = through_again(&nodes, f.node.unwrap_or_default(), f.at);
    }
    let panics = panics(&registry, &nodes);
    Ok(report(o, &nodes, &faults, &samples, panics, start.elapsed()))
}

/// The agent of node `me`: (re)connects to its sidecar's IPC socket, sends
/// every peer a message each `interval` while `sending`, and logs what it
/// gets.
fn agent(me: usize, node: Arc<Node>, n: usize, interval: Duration, stop: &AtomicBool, sending: &AtomicBool) {
    let mut seq = vec![0u64; n];
    let mut conn: Option<UnixStream> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            conn = UnixStream::connect(&node.socket).ok().inspect(|s| {
                if let Ok(reader) = s.try_clone() {
                    let log = node.log.clone();
                    std::thread::spawn(move || read_events(reader, &log));
                }
            });
            if conn.is_none() {
                // The sidecar is restarting: attach as soon as it is back.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        if sending.load(Ordering::SeqCst)
            && let Some(stream) = conn.as_mut()
        {
            let mut lines = String::new();
            let mut batch = Vec::new();
            for (peer, s) in seq.iter_mut().enumerate().filter(|(p, _)| *p != me) {
                *s += 1;
                let message = json!({"type": "soak", "request_id": format!("{peer}:{s}"), "source_agent": "",
                    "target_agent": "", "payload": {"seq": *s}});
                let target = format!("s{peer:02}");
                lines.push_str(
                    &json!({"type": "send", "payload": {"target_peer": target, "message": message}}).to_string(),
                );
                lines.push('\n');
                batch.push((peer, *s));
            }
            let now = Instant::now();
            if stream.write_all(lines.as_bytes()).is_ok() {
                node.log.lock().unwrap().sent.extend(batch.into_iter().map(|(p, s)| (p, s, now)));
            } else {
                // Not written: the numbers are used again.
                for (p, _) in batch {
                    seq[p] -= 1;
                }
                conn = None;
            }
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        std::thread::sleep(next - now);
    }
}

fn peer_index(v: &Value) -> Option<usize> {
    v.as_str()?.strip_prefix('s')?.parse().ok()
}

fn read_events(stream: UnixStream, log: &Mutex<AgentLog>) {
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        let at = Instant::now();
        let p = &v["payload"];
        let mut log = log.lock().unwrap();
        match v["type"].as_str() {
            Some("message") => {
                if let (Some(from), Some(seq)) = (peer_index(&p["from_peer"]), p["message"]["payload"]["seq"].as_u64())
                {
                    log.received.push((from, seq, at));
                }
            }
            Some("error") => {
                let id = p["request_id"].as_str().unwrap_or_default();
                if let Some((peer, seq)) = id.split_once(':')
                    && let (Ok(peer), Ok(seq)) = (peer.parse(), seq.parse())
                {
                    log.errors.push((peer, seq, p["code"].as_str().unwrap_or("?").to_owned()));
                }
            }
            Some(kind @ ("peer_connected" | "peer_disconnected")) => {
                if let Some(peer) = peer_index(&p["peer_id"]) {
                    log.links.push((peer, kind == "peer_connected", at));
                }
            }
            _ => {}
        }
    }
}

/// Polls `done` every 100 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Every node has seen every other connect since `since`.
fn full_mesh(nodes: &[Arc<Node>], since: Instant) -> bool {
    (0..nodes.len()).all(|i| (0..nodes.len()).filter(|&j| j != i).all(|j| connected_since(&nodes[i], j, since)))
}

fn connected_since(node: &Node, peer: usize, since: Instant) -> bool {
    let log = node.log.lock().unwrap();
    log.links.iter().rev().find(|(p, _, _)| *p == peer).is_some_and(|&(_, up, at)| up && at >= since)
}

/// Node `i`, restarted at `at`, has links to everyone again: every other
/// node's agent saw it connect. (Its own agent re-attaches first, which
/// says more about the test's agent than about the sidecar.)
fn relinked(nodes: &[Arc<Node>], i: usize, at: Instant) -> bool {
    (0..nodes.len()).filter(|&j| j != i).all(|j| connected_since(&nodes[j], i, at))
}

/// After node `i`'s address changed at `at`: how long until a message sent
/// after it went through in both directions with every peer.
fn through_again(nodes: &[Arc<Node>], i: usize, at: Instant) -> Option<Duration> {
    let mut worst = Duration::ZERO;
    for j in (0..nodes.len()).filter(|&j| j != i) {
        for (from, to) in [(i, j), (j, i)] {
            let sent: HashMap<u64, Instant> = nodes[from]
                .log
                .lock()
                .unwrap()
                .sent
                .iter()
                .filter(|&&(p, _, t)| p == to && t >= at)
                .map(|&(_, s, t)| (s, t))
                .collect();
            let first = nodes[to]
                .log
                .lock()
                .unwrap()
                .received
                .iter()
                .filter(|&&(p, s, _)| p == from && sent.contains_key(&s))
                .map(|&(_, _, t)| t)
                .min()?;
            worst = worst.max(first.duration_since(at));
        }
    }
    Some(worst)
}

/// (pid, RSS kB, open descriptors, CPU ticks) of a process.
type Usage = (u32, u64, usize, u64);

fn usage(proc: &Proc) -> Option<Usage> {
    let pid = proc.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((pid, rss, fds, ticks))
}

struct Sample {
    at: Instant,
    /// registry first, then the sidecars in order.
    usage: Vec<Option<Usage>>,
}

fn sample(registry: &Mutex<Registry>, nodes: &[Arc<Node>]) -> Sample {
    let mut all = vec![usage(&registry.lock().unwrap().proc)];
    all.extend(nodes.iter().map(|n| usage(&n.sidecar.lock().unwrap().proc)));
    Sample { at: Instant::now(), usage: all }
}

fn panics(registry: &Mutex<Registry>, nodes: &[Arc<Node>]) -> Vec<String> {
    let mut logs = vec![("registry".to_owned(), registry.lock().unwrap().proc.log())];
    for n in nodes {
        logs.push((n.name.clone(), n.sidecar.lock().unwrap().proc.log()));
        logs.extend(n.old_logs.lock().unwrap().iter().map(|l| (format!("{} (earlier run)", n.name), l.clone())));
    }
    logs.iter()
        .flat_map(|(who, log)| log.lines().filter(|l| l.contains("panicked")).map(move |l| format!("{who}: {l}")))
        .collect()
}

#[derive(Default)]
struct Tally {
    sent: u64,
    delivered: u64,
    duplicated: u64,
    reordered: u64,
    /// Not delivered, and the sender was told (an `error` event).
    reported: u64,
    /// Not delivered and not reported.
    lost: u64,
}

fn report(
    o: &Options,
    nodes: &[Arc<Node>],
    faults: &[Fault],
    samples: &[(&str, Sample)],
    panics: Vec<String>,
    took: Duration,
) -> bool {
    let mut up = Tally::default();
    let mut broken = Tally::default();
    let mut examples = Vec::new();
    let touches = |f: &Fault, a: usize, b: usize| {
        f.kind != FaultKind::RestartRegistry && f.kind != FaultKind::Impair && (f.node == Some(a) || f.node == Some(b))
    };
    for (s, sender) in nodes.iter().enumerate() {
        let slog = sender.log.lock().unwrap();
        for (r, receiver) in nodes.iter().enumerate().filter(|&(r, _)| r != s) {
            let rlog = receiver.log.lock().unwrap();
            let mut count: BTreeMap<u64, u32> = BTreeMap::new();
            let mut reordered = BTreeMap::new();
            let mut highest = 0;
            for &(_, seq, _) in rlog.received.iter().filter(|(p, _, _)| *p == s) {
                let c = count.entry(seq).or_default();
                *c += 1;
                if *c == 1 && seq < highest {
                    reordered.insert(seq, ());
                }
                highest = highest.max(seq);
            }
            let reported: HashMap<u64, ()> =
                slog.errors.iter().filter(|(p, _, _)| *p == r).map(|&(_, seq, _)| (seq, ())).collect();
            let downs: Vec<Instant> = slog
                .links
                .iter()
                .filter(|(p, up, _)| *p == r && !up)
                .chain(rlog.links.iter().filter(|(p, up, _)| *p == s && !up))
                .map(|&(_, _, t)| t)
                .collect();
            for &(_, seq, at) in slog.sent.iter().filter(|(p, _, _)| *p == r) {
                let lo = at.checked_sub(BREAK_BEFORE).unwrap_or(at);
                let hi = at + BREAK_AFTER;
                let across = faults.iter().any(|f| touches(f, s, r) && f.at >= lo && f.at <= hi)
                    || downs.iter().any(|&t| t >= lo && t <= hi);
                let t = if across { &mut broken } else { &mut up };
                t.sent += 1;
                match count.get(&seq).copied().unwrap_or(0) {
                    0 if reported.contains_key(&seq) => t.reported += 1,
                    0 => {
                        t.lost += 1;
                        if !across && examples.len() < 10 {
                            examples.push(format!("lost {}->{} seq {seq}", sender.name, receiver.name));
                        }
                    }
                    c => {
                        t.delivered += 1;
                        if c > 1 {
                            t.duplicated += 1;
                            if !across && examples.len() < 10 {
                                examples.push(format!("duplicated {}->{} seq {seq}", sender.name, receiver.name));
                            }
                        }
                    }
                }
                if reordered.contains_key(&seq) {
                    t.reordered += 1;
                    if !across && examples.len() < 10 {
                        examples.push(format!("reordered {}->{} seq {seq}", sender.name, receiver.name));
                    }
                }
            }
        }
    }
    println!(
        "\n## soak and chaos: {} sidecars, {:.0} min ({:.0} s in all), a fault every {:?}, seed {}",
        o.sidecars,
        o.minutes,
        took.as_secs_f64(),
        o.fault_every,
        o.seed
    );
    println!("\n| messages | sent | delivered | duplicated | reordered | reported to the sender | lost |");
    println!("|---|---|---|---|---|---|---|");
    for (what, t) in [("link stayed up", &up), ("across a break", &broken)] {
        println!(
            "| {what} | {} | {} | {} | {} | {} | {} |",
            t.sent, t.delivered, t.duplicated, t.reordered, t.reported, t.lost
        );
    }
    println!("\n| fault | count | re-formed: p50 | p99 | max | not recovered |");
    println!("|---|---|---|---|---|---|");
    let mut unrecovered = 0;
    for kind in [FaultKind::RestartSidecar, FaultKind::RestartRegistry, FaultKind::Rebind, FaultKind::Impair] {
        let of: Vec<&Fault> = faults.iter().filter(|f| f.kind == kind).collect();
        if of.is_empty() {
            continue;
        }
        let mut times: Vec<f64> = of.iter().filter_map(|f| f.reformed.map(|d| d.as_secs_f64())).collect();
        times.sort_by(f64::total_cmp);
        let missing = if kind == FaultKind::Impair { 0 } else { of.len() - times.len() };
        unrecovered += missing;
        let pct = |q: f64| {
            times.get(((times.len() as f64 - 1.0) * q).round() as usize).map_or("–".into(), |t| format!("{t:.2} s"))
        };
        let name = match kind {
            FaultKind::RestartSidecar => "kill -9 and restart of a sidecar",
            FaultKind::RestartRegistry => "kill -9 and restart of the registry",
            FaultKind::Rebind => "NAT address change",
            FaultKind::Impair => "5 % loss, 50–200 ms delay each way, reordering (one site, one fault period)",
        };
        if kind == FaultKind::Impair {
            println!("| {name} | {} | links stay up | | | |", of.len());
        } else {
            println!("| {name} | {} | {} | {} | {} | {missing} |", of.len(), pct(0.5), pct(0.99), pct(1.0));
        }
    }
    println!("\n| daemon | RSS start / middle / end (MiB) | descriptors start / middle / end | CPU, start to end |");
    println!("|---|---|---|---|");
    let mut grew = Vec::new();
    let (first, last) = (&samples[0].1, &samples[samples.len() - 1].1);
    let secs = last.at.duration_since(first.at).as_secs_f64().max(1.0);
    let mut sidecar_cpu = Vec::new();
    for d in 0..first.usage.len() {
        let who = if d == 0 { "registry".to_owned() } else { nodes[d - 1].name.clone() };
        let cells: Vec<Option<Usage>> = samples.iter().map(|(_, s)| s.usage[d]).collect();
        let rss =
            cells.iter().map(|c| c.map_or("–".into(), |u| format!("{:.1}", u.1 as f64 / 1024.0))).collect::<Vec<_>>();
        let fds = cells.iter().map(|c| c.map_or("–".into(), |u| u.2.to_string())).collect::<Vec<_>>();
        let cpu = match (cells[0], cells[cells.len() - 1]) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                let pct = (b.3 - a.3) as f64 / 100.0 / secs * 100.0;
                if d > 0 {
                    sidecar_cpu.push(pct);
                }
                format!("{pct:.2} %")
            }
            _ => "restarted".into(),
        };
        if d == 0 || d <= 3 {
            println!("| {who} | {} | {} | {cpu} |", rss.join(" / "), fds.join(" / "));
        }
        // Growth from the middle to the end of one process's life.
        if let (Some(m), Some(e)) = (cells[cells.len() - 2], cells[cells.len() - 1])
            && m.0 == e.0
            && (e.1 as f64 > m.1 as f64 * RSS_GROWTH_RATIO && e.1 > m.1 + RSS_GROWTH_KB || e.2 > m.2 + FD_GROWTH)
        {
            grew.push(format!("{who}: RSS {} -> {} kB, descriptors {} -> {}", m.1, e.1, m.2, e.2));
        }
    }
    if nodes.len() > 3 {
        let all: Vec<f64> = (1..first.usage.len()).filter_map(|d| last.usage[d].map(|u| u.1 as f64 / 1024.0)).collect();
        let (lo, hi) = all.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        println!(
            "| (all {} sidecars at the end) | {lo:.1} – {hi:.1} | | mean {:.2} % of those not restarted |",
            nodes.len(),
            sidecar_cpu.iter().sum::<f64>() / sidecar_cpu.len().max(1) as f64
        );
    }
    println!("\npanics: {}", panics.len());
    for p in &panics {
        println!("  {p}");
    }
    let clean = up.lost == 0 && up.duplicated == 0 && up.reordered == 0;
    let ok = clean && panics.is_empty() && grew.is_empty() && unrecovered == 0;
    for e in &examples {
        println!("  {e}");
    }
    for g in &grew {
        println!("  grew: {g}");
    }
    println!(
        "\nresult: {}{}{}{}",
        if ok { "PASS" } else { "FAIL" },
        if clean { "" } else { " (a link that stayed up lost, duplicated or reordered messages)" },
        if unrecovered == 0 { String::new() } else { format!(" ({unrecovered} faults not recovered from)") },
        if grew.is_empty() { "" } else { " (memory or descriptors grew)" },
    );
    ok
}
