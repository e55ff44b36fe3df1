//! Sidecar figures of README, benchmarks: RSS idle and with 10 open peers, threads,
//! idle CPU, second start → `peer_connected`, IPC round trip, DataChannel
//! throughput and 11 sidecars meshing at once.
//!
//! Real `chatixia-sidecar` processes against a real registry, all on
//! 127.0.0.1 (ICE host candidates on loopback only, no STUN). The agents are
//! the bench's own blocking IPC clients; a reader thread per agent stamps
//! every event with the time it was read. Every loop is bounded in count and
//! in time; every process is killed when its figure is done (on drop).

use crate::report::{self, Budget, Report, Unit};
use chatixia_e2e::{Proc, Registry, Scratch, bin_command};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

pub const FLAGS: &[(&str, bool)] = &[("--quick", false), ("--window", true)];
pub const OPTIONS: &str = "  --quick             idle CPU over 10 s instead of 60 s\n  --window N          throughput: 16 KiB messages in flight, 1..=60 [default: 60]\n";

const MIB: f64 = 1024.0 * 1024.0;
/// Sidecars of the full mesh (bench-s00 … bench-s10): 55 links.
const MESH: usize = 11;
/// Runs of "11 sidecars started together".
const MESH_RUNS: usize = 3;
const MESH_BUDGET: Duration = Duration::from_secs(3);
/// Bound on a mesh forming before the run counts as failed.
const MESH_LIMIT: Duration = Duration::from_secs(20);
/// Second-sidecar starts (bench-b00 … bench-b19).
const STARTS: usize = 20;
/// Bound on one second start reaching `peer_connected`.
const START_LIMIT: Duration = Duration::from_secs(10);
/// Each start takes at least this long, so the registry's token bucket
/// (10/s, burst 20, per client address) never delays a start.
pub(crate) const START_PACE: Duration = Duration::from_millis(250);
const RTT_WARMUP: usize = 100;
const RTT_ROUNDS: usize = 2_000;
const RTT_LIMIT: Duration = Duration::from_secs(30);
/// Each DataChannel message (the MeshMessage JSON) is exactly this long.
const BULK_BYTES: usize = 16 * 1024;
/// Messages accepted by A but not yet seen by B's agent: at most 60 (with
/// 32 bytes of accounting each, just under the sidecar's 1 MiB per-peer
/// send queue, so a full window alone never meets backpressure).
pub(crate) const MAX_WINDOW: u64 = 60;
const BULK_MESSAGES: u64 = 100_000;
const BULK_TIME: Duration = Duration::from_secs(5);
/// Wait between a state change and reading VmRSS.
const SETTLE: Duration = Duration::from_millis(500);
/// Bound on any single awaited event.
pub(crate) const EVENT_LIMIT: Duration = Duration::from_secs(10);

struct Options {
    quick: bool,
    window: u64,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options { quick: false, window: MAX_WINDOW };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--window" => {
                let n = it.next().and_then(|v| v.parse().ok()).filter(|n| (1..=MAX_WINDOW).contains(n));
                opts.window = n.ok_or(format!("--window takes 1 to {MAX_WINDOW}"))?;
            }
            other => return Err(format!("unknown sidecar option {other:?}")),
        }
    }
    Ok(opts)
}

pub fn run(report: &mut Report, args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    report.note_setup("chatixia-sidecar", &["MAX_MESSAGE_BYTES", "TURN_URL", "ICE_TRANSPORT_POLICY", "RUST_LOG"]);
    report::raise_nofile(4096)?;
    unpanicked(|| {
        idle(report)?;
        second_start(report)?;
        mesh(report, &opts)
    })
}

/// Runs `f`, turning a panic into an error: the harness panics when a
/// process does not come up, which is a failed run, not a crash.
pub(crate) fn unpanicked(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())),
    }
}

// ---------------------------------------------------------------- figures

/// Idle RSS: registry up, one agent attached, no peers.
fn idle(report: &mut Report) -> Result<(), String> {
    let env = Env::new("bench-sc-idle")?;
    let s = env.spawn("bench-s00");
    let mut agent = Ipc::attach(&env.socket("bench-s00"), EVENT_LIMIT)?;
    s.wait_for_line("connected to the registry as bench-s00");
    agent.status()?;
    std::thread::sleep(SETTLE);
    let pid = s.child.id();
    let rss = report::rss_bytes(pid)?;
    report.figure("sidecar idle RSS", rss as f64, Unit::MiB, Budget::AtMost(4.0 * MIB));
    report.note("VmRSS 500 ms after registering with the registry, one agent attached, no peers");
    report.note(&report::rss_breakdown(pid)?);
    report.note(&format!("threads when idle: {}", report::thread_names(pid).join(", ")));
    s.signal("TERM");
    Ok(())
}

/// The first sidecar runs with its agent attached; 20 times a second one
/// (a new identity each time) is spawned and the first agent's
/// `peer_connected` for it awaited; then the second gets SIGTERM.
fn second_start(report: &mut Report) -> Result<(), String> {
    let env = Env::new("bench-sc-start")?;
    let first = env.spawn("bench-s00");
    let mut a = Ipc::attach(&env.socket("bench-s00"), EVENT_LIMIT)?;
    first.wait_for_line("connected to the registry as bench-s00");
    a.status()?;
    let mut at_first = Vec::new();
    let mut at_second = Vec::new();
    let mut unclean = 0;
    for i in 0..STARTS {
        let began = Instant::now();
        let id = format!("bench-b{i:02}");
        let t0 = Instant::now();
        let mut second = env.spawn(&id);
        let mut b = Ipc::attach(&env.socket(&id), EVENT_LIMIT)?;
        let (ta, _) = a.wait(START_LIMIT, &format!("peer_connected {id} at bench-s00"), |v| {
            v["type"] == "peer_connected" && v["payload"]["peer_id"] == id.as_str()
        })?;
        let (tb, _) = b.wait(START_LIMIT, "peer_connected bench-s00 at the second", |v| {
            v["type"] == "peer_connected" && v["payload"]["peer_id"] == "bench-s00"
        })?;
        at_first.push((ta - t0).as_nanos() as u64);
        at_second.push((tb - t0).as_nanos() as u64);
        drop(b);
        second.signal("TERM");
        let gone = a.wait(EVENT_LIMIT, "peer_disconnected", |v| {
            v["type"] == "peer_disconnected" && v["payload"]["peer_id"] == id.as_str()
        });
        if gone.is_err() || !exited_within(&mut second, Duration::from_secs(3)) {
            unclean += 1;
        }
        drop(second);
        std::thread::sleep(START_PACE.saturating_sub(began.elapsed()));
    }
    at_first.sort_unstable();
    at_second.sort_unstable();
    report.figure(
        "second sidecar start -> peer_connected, median",
        report::percentile(&at_first, 50.0) as f64,
        Unit::Ms,
        Budget::AtMost(15e6),
    );
    report.figure(
        "second sidecar start -> peer_connected, slowest of 20",
        *at_first.last().unwrap_or(&0) as f64,
        Unit::Ms,
        Budget::AtMost(100e6),
    );
    report.note(&format!(
        "from spawning the second process to the FIRST sidecar's agent reading peer_connected; {STARTS} starts, \
         a new identity each, loopback; all (ms): {}",
        list_ms(&at_first)
    ));
    report.note(&format!(
        "at the second sidecar's own agent: median {:.1} ms, slowest {:.1} ms",
        report::percentile(&at_second, 50.0) as f64 / 1e6,
        *at_second.last().unwrap_or(&0) as f64 / 1e6
    ));
    if unclean > 0 {
        report.note(&format!("warning: {unclean} second sidecars did not leave cleanly within bounds after SIGTERM"));
    }
    Ok(())
}

/// 11 sidecars started together, three times; the last mesh stays up for
/// the RSS, thread, idle-CPU, round-trip and throughput figures.
fn mesh(report: &mut Report, opts: &Options) -> Result<(), String> {
    let ids: Vec<String> = (0..MESH).map(|i| format!("bench-s{i:02}")).collect();
    let mut times = Vec::new();
    let mut kept = None;
    for run in 0..MESH_RUNS {
        let env = Env::new("bench-sc-mesh")?;
        let t0 = Instant::now();
        let procs: Vec<Proc> = ids.iter().map(|id| env.spawn(id)).collect();
        let spawned = t0.elapsed();
        let mut agents = Vec::new();
        for id in &ids {
            agents.push(Ipc::attach(&env.socket(id), EVENT_LIMIT)?);
        }
        let mut last = t0;
        for (agent, id) in agents.iter_mut().zip(&ids) {
            for other in ids.iter().filter(|o| *o != id) {
                let (t, _) = agent.wait(MESH_LIMIT.saturating_sub(t0.elapsed()), &format!("{id} -> {other}"), |v| {
                    v["type"] == "peer_connected" && v["payload"]["peer_id"] == other.as_str()
                })?;
                last = last.max(t);
            }
        }
        let took = last - t0;
        report.note(&format!(
            "run {}: all 55 links open (110 peer_connected events) {:.1} ms after spawning the first sidecar \
             (spawning all 11 took {:.1} ms)",
            run + 1,
            took.as_secs_f64() * 1e3,
            spawned.as_secs_f64() * 1e3
        ));
        times.push(took);
        if run + 1 == MESH_RUNS {
            kept = Some((env, procs, agents));
        }
        // Otherwise the registry, sidecars and agents are dropped: killed.
    }
    let worst = times.iter().max().copied().unwrap_or_default();
    report.figure(
        "11 sidecars started together: all 55 links open, slowest of 3 runs",
        worst.as_nanos() as f64,
        Unit::Ms,
        Budget::AtMost(MESH_BUDGET.as_nanos() as f64),
    );

    let Some((_env, procs, mut agents)) = kept else { return Err("no mesh".into()) };
    let pid = procs[0].child.id();
    std::thread::sleep(SETTLE);
    let rss = report::rss_bytes(pid)?;
    report.figure("sidecar RSS with 10 open peers", rss as f64, Unit::MiB, Budget::AtMost(6.0 * MIB));
    report.note("bench-s00 of the 11-sidecar mesh, 500 ms after its agent saw all 10 peer_connected, no traffic yet");
    report.note(&report::rss_breakdown(pid)?);
    let threads = report::threads(pid)?;
    report.figure("sidecar threads, steady state", threads as f64, Unit::Count("threads"), Budget::Exactly(1.0));
    report.note(&format!(
        "/proc/PID/task of bench-s00 with 10 open peers, no traffic: {}",
        report::thread_names(pid).join(", ")
    ));

    // Idle CPU.
    let span = if opts.quick { Duration::from_secs(10) } else { Duration::from_secs(60) };
    let cpu0 = report::process_cpu(pid)?;
    let wall0 = Instant::now();
    std::thread::sleep(span);
    let cpu = report::process_cpu(pid)?.saturating_sub(cpu0);
    let wall = wall0.elapsed();
    let percent = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    report.figure(
        &format!("sidecar idle CPU over {} s with 10 idle peers", span.as_secs()),
        percent,
        Unit::Percent("of one core"),
        Budget::AtMost(0.05),
    );
    report.note(&format!(
        "utime+stime of bench-s00 from /proc/PID/stat: {} ms in {:.1} s (clock-tick resolution 10 ms){}",
        cpu.as_millis(),
        wall.as_secs_f64(),
        if opts.quick { "; --quick: 10 s, not the 60 s of README, benchmarks" } else { "" }
    ));

    // Round trips bench-s00 -> bench-s01 -> bench-s00.
    let (a, rest) = agents.split_first_mut().ok_or("no agents")?;
    let b = &mut rest[0];
    let mut max_threads = report::threads(pid)?;
    b.echo.store(true, Ordering::Relaxed);
    let echo = round_trips(a, "bench-s01", "echo")?;
    b.echo.store(false, Ordering::Relaxed);
    max_threads = max_threads.max(report::threads(pid)?);
    report.figure(
        "IPC -> DataChannel -> IPC round trip A->B->A, p50",
        report::percentile(&echo, 50.0) as f64,
        Unit::Us,
        Budget::AtMost(150e3),
    );
    report.figure(
        "IPC -> DataChannel -> IPC round trip A->B->A, p99",
        report::percentile(&echo, 99.0) as f64,
        Unit::Us,
        Budget::AtMost(500e3),
    );
    report.note(&format!(
        "{} round trips, one in flight: A's agent sends to B, B's agent echoes it with `send`, A's agent reads it \
         (both agents' IPC hops included); max {:.1} µs",
        echo.len(),
        *echo.last().unwrap_or(&0) as f64 / 1e3
    ));
    let ping = round_trips(a, "bench-s01", "ping")?;
    report.figure(
        "mesh ping -> pong answered by B's sidecar, p50",
        report::percentile(&ping, 50.0) as f64,
        Unit::Us,
        Budget::None,
    );
    report.note(&format!(
        "context, {} round trips: p99 {:.1} µs (B's agent not involved)",
        ping.len(),
        report::percentile(&ping, 99.0) as f64 / 1e3
    ));

    // Throughput bench-s00 -> bench-s01.
    let bulk = bulk(a, b, ("bench-s00", "bench-s01"), (pid, procs[1].child.id()), opts.window)?;
    max_threads = max_threads.max(bulk.max_threads);
    report.figure(
        "DataChannel one-way throughput, 16 KiB messages",
        bulk.bytes_per_sec / 1e6,
        Unit::PerSec("MB"),
        Budget::AtLeast(60.0),
    );
    for note in &bulk.notes {
        report.note(note);
    }
    report.note(&format!(
        "threads of bench-s00 under load: at most {max_threads} seen (sampled every 100 ms during the throughput run)"
    ));
    let rss = report::rss_bytes(pid)?;
    report.note(&format!("RSS of bench-s00 after the traffic: {:.2} MiB (context)", rss as f64 / MIB));
    Ok(())
}

/// One message in flight at a time, `RTT_WARMUP` unrecorded first; sorted
/// nanoseconds. `kind` "echo" is echoed by B's agent, "ping" answered by B's
/// sidecar with "pong".
pub(crate) fn round_trips(a: &mut Ipc, to: &str, kind: &str) -> Result<Vec<u64>, String> {
    let started = Instant::now();
    let mut rtts = Vec::with_capacity(RTT_ROUNDS);
    let want = if kind == "ping" { "pong" } else { kind };
    for i in 0..RTT_WARMUP + RTT_ROUNDS {
        if started.elapsed() > RTT_LIMIT {
            break;
        }
        let rid = format!("{kind}-{i}");
        let line = command_line("send", json!({"target_peer": to, "message": mesh_message(kind, &rid, json!(i))}));
        let t0 = Instant::now();
        a.write(&line)?;
        let (t, _) = a.wait(EVENT_LIMIT, &format!("{want} {rid}"), |v| {
            v["type"] == "message"
                && v["payload"]["message"]["type"] == want
                && v["payload"]["message"]["request_id"] == rid
        })?;
        if i >= RTT_WARMUP {
            rtts.push((t - t0).as_nanos() as u64);
        }
    }
    if rtts.len() < 1000 {
        return Err(format!("only {} {kind} round trips within {RTT_LIMIT:?}", rtts.len()));
    }
    rtts.sort_unstable();
    Ok(rtts)
}

/// What [`bulk`] measured.
pub(crate) struct Bulk {
    /// Received by B's agent.
    pub bytes_per_sec: f64,
    /// What was sent and received, and the CPU it took.
    pub notes: [String; 2],
    /// The most threads seen in A's sidecar during the run.
    pub max_threads: usize,
}

/// [`throughput`] from A (`names.0`, sidecar `pids.0`) to B, with the CPU
/// time both sidecars and the bench's sending thread spent on it.
pub(crate) fn bulk(a: &mut Ipc, b: &Ipc, names: (&str, &str), pids: (u32, u32), window: u64) -> Result<Bulk, String> {
    let cpu_before = (report::process_cpu(pids.0)?, report::process_cpu(pids.1)?, report::thread_cpu());
    let (bytes_per_sec, note, max_threads, took) = throughput(a, b, names, pids.0, window)?;
    let cpu_share = |d: Duration| d.as_secs_f64() / took.as_secs_f64() * 100.0;
    let cpu_note = format!(
        "CPU during the run: A's sidecar {:.0} %, B's sidecar {:.0} %, the bench's sending thread {:.0} % of one core",
        cpu_share(report::process_cpu(pids.0)?.saturating_sub(cpu_before.0)),
        cpu_share(report::process_cpu(pids.1)?.saturating_sub(cpu_before.1)),
        cpu_share(report::thread_cpu().saturating_sub(cpu_before.2)),
    );
    Ok(Bulk { bytes_per_sec, notes: [note, cpu_note], max_threads })
}

/// A (`names.0`) pipelines 16 KiB messages to B (`names.1`) with at most
/// `window` accepted but not yet received; a `backpressure` error un-counts
/// the refused message and pauses A for 1 ms. Returns bytes/s received by
/// B's agent, a note, the most threads seen in A's sidecar (`pid`) and the
/// wall time of the whole run.
fn throughput(
    a: &mut Ipc,
    b: &Ipc,
    names: (&str, &str),
    pid: u32,
    window: u64,
) -> Result<(f64, String, usize, Duration), String> {
    let empty = mesh_message("bulk", "", json!("")).to_string().len();
    let message = mesh_message("bulk", "", json!("x".repeat(BULK_BYTES - empty)));
    if message.to_string().len() != BULK_BYTES {
        return Err("bulk message is not 16 KiB".into());
    }
    let line = command_line("send", json!({"target_peer": names.1, "message": message}));
    let received = |b: &Ipc| b.counters.bulk.load(Ordering::Relaxed);
    let refused = |a: &Ipc| a.counters.backpressure.load(Ordering::Relaxed);
    let (recv0, refused0) = (received(b), refused(a));
    let mut sent = 0u64;
    let mut pauses = 0u64;
    let mut seen_refused = refused0;
    let mut max_threads = 0;
    let start = Instant::now();
    let mut next_sample = start;
    while sent < BULK_MESSAGES && start.elapsed() < BULK_TIME {
        let now_refused = refused(a);
        if now_refused != seen_refused {
            seen_refused = now_refused;
            pauses += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        let accepted = sent - (now_refused - refused0);
        if accepted.saturating_sub(received(b) - recv0) >= window {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        a.write(&line)?;
        sent += 1;
        if Instant::now() >= next_sample {
            max_threads = max_threads.max(report::threads(pid)?);
            next_sample += Duration::from_millis(100);
        }
    }
    // Drain: everything A accepted reaches B, or the bound passes.
    let drain_until = Instant::now() + EVENT_LIMIT;
    loop {
        // A refusal may still be on its way; give it a moment at the end.
        let accepted = sent - (refused(a) - refused0);
        if received(b) - recv0 >= accepted || Instant::now() > drain_until {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    let got = received(b) - recv0;
    let last = b.counters.last_bulk_ns.load(Ordering::Relaxed);
    let elapsed = Duration::from_nanos(last.saturating_sub(nanos_since_epoch(start)));
    if got == 0 || elapsed.is_zero() {
        return Err("no bulk message reached B".into());
    }
    let refusals = refused(a) - refused0;
    let lost = (sent - refusals).saturating_sub(got);
    let rate = (got * BULK_BYTES as u64) as f64 / elapsed.as_secs_f64();
    let note = format!(
        "{} -> {}: {} messages of exactly 16,384 bytes (MeshMessage JSON) read by B's agent in {:.2} s; \
         window {window} messages; {refusals} backpressure refusals ({pauses} pauses); {lost} accepted but not received",
        names.0,
        names.1,
        report::thousands(got),
        elapsed.as_secs_f64()
    );
    Ok((rate, note, max_threads, start.elapsed()))
}

// ---------------------------------------------------------------- processes

/// A registry with the bench's keys in a scratch directory; sidecars of it
/// put their IPC sockets and state there.
struct Env {
    // Field order: the registry is killed before the directory goes.
    reg: Registry,
    dir: Scratch,
}

impl Env {
    fn new(tag: &str) -> Result<Env, String> {
        let dir = Scratch::new(tag);
        let mut keys = String::from("{\"keys\":{");
        let ids = (0..MESH).map(|i| format!("s{i:02}")).chain((0..STARTS).map(|i| format!("b{i:02}")));
        for (n, id) in ids.enumerate() {
            let sep = if n == 0 { "" } else { "," };
            let _ = write!(keys, "{sep}\"bench-key-{id}\":{{\"peer_id\":\"bench-{id}\",\"role\":\"agent\"}}");
        }
        keys.push_str("}}");
        std::fs::write(dir.path().join("api_keys.json"), keys).map_err(|e| e.to_string())?;
        let reg = Registry::start_in(dir.path(), &[], &[("RUST_LOG", "info")]);
        Ok(Env { reg, dir })
    }

    fn socket(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.sock"))
    }

    /// Spawns a sidecar for `bench-XNN` without waiting for anything.
    fn spawn(&self, id: &str) -> Proc {
        let key = format!("bench-key-{}", id.trim_start_matches("bench-"));
        let port = self.reg.port;
        let state = self.dir.path().join(format!("{id}-state"));
        let mut cmd = bin_command("chatixia-sidecar");
        cmd.current_dir(self.dir.path())
            .env("API_KEY", key)
            .env("TOKEN_URL", format!("http://127.0.0.1:{port}/api/token"))
            .env("SIGNALING_URL", format!("ws://127.0.0.1:{port}/ws"))
            .env("IPC_SOCKET", self.socket(id))
            .env("ICE_ALLOW_LOOPBACK", "1")
            .env("ICE_HOST_ADDRESSES", "127.0.0.1")
            .env("STUN_URLS", "")
            .env("STATE_DIR", state)
            .env_remove("DEVICE_TOKEN")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env("RUST_LOG", "info");
        Proc::spawn(cmd)
    }
}

pub(crate) fn exited_within(p: &mut Proc, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = p.child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

// ---------------------------------------------------------------- agent

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn nanos_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH.get_or_init(Instant::now)).as_nanos() as u64
}

#[derive(Default)]
struct Counters {
    /// `bulk` messages read (not forwarded).
    bulk: AtomicU64,
    /// When the last one was read, ns since [`EPOCH`].
    last_bulk_ns: AtomicU64,
    /// `backpressure` errors read (not forwarded).
    backpressure: AtomicU64,
}

/// A bench agent: a reader thread stamps each event with the time it was
/// read. It counts `bulk` messages and `backpressure` errors instead of
/// forwarding them, and answers `echo` messages itself while `echo` is set.
pub(crate) struct Ipc {
    stream: UnixStream,
    rx: mpsc::Receiver<(Instant, Value)>,
    stash: VecDeque<(Instant, Value)>,
    counters: Arc<Counters>,
    /// While set, the reader thread echoes `echo` messages back.
    pub echo: Arc<AtomicBool>,
}

impl Drop for Ipc {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Ipc {
    /// Connects once the socket is bound (polling every ms up to `limit`),
    /// then makes sure the sidecar has taken this agent on (`status`).
    pub(crate) fn attach(path: &Path, limit: Duration) -> Result<Ipc, String> {
        let _ = EPOCH.get_or_init(Instant::now);
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(format!("connect {}: {e}", path.display())),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        let reader = stream.try_clone().map_err(|e| e.to_string())?;
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let echo = Arc::new(AtomicBool::new(false));
        let (c, e) = (counters.clone(), echo.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { return };
                let t = Instant::now();
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                let kind = v["type"].as_str().unwrap_or_default();
                let inner = v["payload"]["message"]["type"].as_str().unwrap_or_default();
                if kind == "message" && inner == "bulk" {
                    c.bulk.fetch_add(1, Ordering::Relaxed);
                    c.last_bulk_ns.store(nanos_since_epoch(t), Ordering::Relaxed);
                    continue;
                }
                if kind == "error" && v["payload"]["code"] == "backpressure" {
                    c.backpressure.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if kind == "message" && inner == "echo" && e.load(Ordering::Relaxed) {
                    let back = command_line(
                        "send",
                        json!({"target_peer": v["payload"]["from_peer"], "message": v["payload"]["message"]}),
                    );
                    if writer.write_all(back.as_bytes()).is_err() {
                        return;
                    }
                    continue;
                }
                if tx.send((t, v)).is_err() {
                    return;
                }
            }
        });
        let mut ipc = Ipc { stream, rx, stash: VecDeque::new(), counters, echo };
        ipc.status()?;
        Ok(ipc)
    }

    fn write(&mut self, line: &str) -> Result<(), String> {
        self.stream.write_all(line.as_bytes()).map_err(|e| format!("IPC write: {e}"))
    }

    pub(crate) fn status(&mut self) -> Result<Value, String> {
        self.write(&command_line("status", Value::Null))?;
        Ok(self.wait(EVENT_LIMIT, "status", |v| v["type"] == "status")?.1)
    }

    /// The first event (stashed or new) matching `pred` within `limit`,
    /// with the time it was read; the others stay for later calls.
    pub(crate) fn wait(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value), String> {
        if let Some(i) = self.stash.iter().position(|(_, v)| pred(v)) {
            return Ok(self.stash.remove(i).expect("index"));
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, v)) if pred(&v) => return Ok((t, v)),
                Ok(other) => {
                    // Bounded: the oldest unrelated events go first.
                    if self.stash.len() >= 4096 {
                        self.stash.pop_front();
                    }
                    self.stash.push_back(other);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(format!("no {what} within {limit:?}")),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("IPC connection closed while waiting for {what}"));
                }
            }
        }
    }
}

fn command_line(kind: &str, payload: Value) -> String {
    let mut line = json!({"type": kind, "payload": payload}).to_string();
    line.push('\n');
    line
}

/// A MeshMessage with the five keys the sidecar emits.
fn mesh_message(kind: &str, request_id: &str, payload: Value) -> Value {
    json!({"type": kind, "request_id": request_id, "source_agent": "", "target_agent": "", "payload": payload})
}

fn list_ms(sorted: &[u64]) -> String {
    sorted.iter().map(|n| format!("{:.1}", *n as f64 / 1e6)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert!(parse(&["--quick".into()]).is_ok_and(|o| o.quick));
        // The registry's option never reaches this parser (main filters it).
        assert!(parse(&["--client-threads".into(), "2".into()]).is_err());
        assert!(parse(&["--bogus".into()]).is_err());
        assert!(parse(&["--window".into(), "8".into()]).is_ok_and(|o| o.window == 8));
        assert!(parse(&["--window".into(), "61".into()]).is_err());
        assert!(MAX_WINDOW * (BULK_BYTES as u64 + 32) < 1 << 20);
    }

    #[test]
    fn bulk_messages_are_exactly_16_kib() {
        let empty = mesh_message("bulk", "", json!("")).to_string().len();
        assert_eq!(mesh_message("bulk", "", json!("x".repeat(BULK_BYTES - empty))).to_string().len(), BULK_BYTES);
    }
}
