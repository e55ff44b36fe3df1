//! Registry figures of README, benchmarks: RSS idle, with 10,000 registered
//! WebSocket clients and after they left; relay throughput and latency between one pair.
//!
//! Each figure gets its own registry on 127.0.0.1 in a scratch directory.
//! Every loop is bounded in count and in time.

use crate::report::{self, Budget, Report, Unit};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use chatixia_e2e::ws::{Incoming, WsClient};
use chatixia_e2e::{DEFAULT_KEYS, Registry, Scratch, TIMEOUT, jwt};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use smol::channel::{Receiver, Sender};
use smol::{Async, Timer};
use std::fmt::Write as _;
use std::future::Future;
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const FLAGS: &[(&str, bool)] = &[("--client-threads", true)];
pub const OPTIONS: &str = "  --client-threads N  relay clients: 1 = sender and receiver share a thread,\n                      2 = a thread each [default: 2 with 4+ cores, else 1]\n";

const MIB: f64 = 1024.0 * 1024.0;
/// Registered clients for the RSS figure; peer ids bench-0000…
const CLIENTS: usize = 10_000;
/// Upgrades in flight while the clients connect.
const CONNECT_CONCURRENCY: usize = 50;
/// Bound on connecting and registering all clients.
const CONNECT_LIMIT: Duration = Duration::from_secs(120);
/// How long the registry may take to see all clients gone.
const LEAVE_LIMIT: Duration = Duration::from_secs(120);
/// Relayed frames are exactly this long (JSON text).
const FRAME_BYTES: usize = 2048;
/// Frames in flight A → B. Below the registry's WS_SEND_QUEUE (256), so a
/// burst can never make B count as a slow consumer.
const WINDOW: usize = 128;
/// Frames fed before one flush (one write).
const BATCH: usize = 32;
const WARMUP_FRAMES: u64 = 5_000;
const THROUGHPUT_FRAMES: u64 = 200_000;
const THROUGHPUT_TIME: Duration = Duration::from_secs(5);
const LATENCY_RATE: u64 = 10_000;
const LATENCY_TIME: Duration = Duration::from_secs(3);
/// Wait between a state change and reading VmRSS.
const SETTLE: Duration = Duration::from_millis(300);
/// Slack on top of a run's duration before it counts as stalled.
const STALL: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<Async<TcpStream>>;

struct Options {
    client_threads: usize,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options { client_threads: if report::cores() >= 4 { 2 } else { 1 } };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--client-threads" => {
                let n = it.next().and_then(|v| v.parse().ok()).filter(|n| (1..=2).contains(n));
                opts.client_threads = n.ok_or("--client-threads takes 1 or 2")?;
            }
            other => return Err(format!("unknown registry option {other:?}")),
        }
    }
    Ok(opts)
}

pub fn run(report: &mut Report, args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    report.note_setup(
        "chatixia-registry",
        &["WS_RATE_LIMIT", "WS_SEND_QUEUE", "MAX_CONNECTIONS", "STATE_DIR", "STATE_DIRECTORY", "RUST_LOG"],
    );
    // Each client is a socket here and one in the registry, which inherits the limit.
    let nofile = report::raise_nofile(CLIENTS as u64 + 512)?;
    if nofile < CLIENTS as u64 + 64 {
        return Err(format!("open-files limit is {nofile}; {CLIENTS} clients need more (ulimit -n)"));
    }
    // The relay first: 10,000 sockets closing leave the kernel expiring
    // their TIME_WAIT states about a minute later, which showed as stalls of
    // tens of milliseconds in a latency run that followed (p99 1.2 ms
    // instead of 0.1 ms, measured both ways).
    relay(report, &opts)?;
    memory(report)
}

fn bench_secret() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("chatixia-bench-{}-{nanos}", std::process::id())
}

/// Idle RSS, then RSS with [`CLIENTS`] clients that each sent `register`
/// and received their `peer_list`.
fn memory(report: &mut Report) -> Result<(), String> {
    {
        let dir = Scratch::new("bench-idle");
        std::fs::write(dir.path().join("api_keys.json"), DEFAULT_KEYS).map_err(|e| e.to_string())?;
        let reg = Registry::start_in(dir.path(), &[], &[("RUST_LOG", "info")]);
        std::thread::sleep(SETTLE);
        let idle = report::rss_bytes(reg.proc.child.id())?;
        report.figure("registry idle RSS", idle as f64, Unit::MiB, Budget::AtMost(4.0 * MIB));
        report.note("VmRSS 300 ms after the readiness line, no clients, 4 API keys");
    }

    let dir = Scratch::new("bench-rss");
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("bench-{i:05}")).collect();
    let mut keys = String::from("{\"keys\":{");
    for (i, id) in ids.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(keys, "{sep}\"bench-key-{i:05}\":{{\"peer_id\":\"{id}\",\"role\":\"agent\"}}");
    }
    keys.push_str("}}");
    std::fs::write(dir.path().join("api_keys.json"), keys).map_err(|e| e.to_string())?;
    // A known secret: the bench mints the 10,000 tokens itself instead of
    // going through /api/token (10/s per address).
    let secret = bench_secret();
    let max = (CLIENTS + 100).to_string();
    let env = [("SIGNALING_SECRET", secret.as_str()), ("RUST_LOG", "info"), ("MAX_CONNECTIONS", max.as_str())];
    let reg = Registry::start_in(dir.path(), &[], &env);
    let pid = reg.proc.child.id();

    std::thread::sleep(SETTLE);
    let idle = report::rss_bytes(pid)?;

    let started = Instant::now();
    let clients = smol::block_on(bounded(CONNECT_LIMIT, connect_all(&reg, &ids, &secret)))?;
    let connect_time = started.elapsed();
    std::thread::sleep(SETTLE);
    let loaded = report::rss_bytes(pid)?;
    report.figure(
        "registry RSS with 10,000 registered WebSocket clients",
        loaded as f64,
        Unit::MiB,
        Budget::AtMost(64.0 * MIB),
    );
    let per_client = loaded.saturating_sub(idle) as f64 / CLIENTS as f64 / 1024.0;
    report.note(&format!(
        "{:.1} KiB per client over the same registry idle with its {} API keys ({:.2} MiB); \
         connected and registered {} clients, {CONNECT_CONCURRENCY} at a time, in {:.2} s \
         (each got a peer_list of all that came before it)",
        per_client,
        report::thousands(CLIENTS as u64),
        idle as f64 / MIB,
        report::thousands(CLIENTS as u64),
        connect_time.as_secs_f64()
    ));

    // All leave at once; the registry announces each departure to those
    // still connected, then should give its memory back.
    let started = Instant::now();
    drop(clients);
    let deadline = started + LEAVE_LIMIT;
    // A busy registry may not answer within the agent's timeout: that is
    // not an answer, ask again.
    let metrics_url = reg.http("/metrics");
    let open = || {
        let mut reply = chatixia_e2e::http_agent().get(&metrics_url).call().ok()?;
        let text = reply.body_mut().read_to_string().ok()?;
        chatixia_e2e::metric(&text, "chatixia_ws_connections")
    };
    let mut gone = false;
    while Instant::now() < deadline {
        if open() == Some(0.0) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left_in = started.elapsed();
    // The registry trims its heap at its ticks (every 5 s) while the count
    // falls, and once more a tick after it held still.
    let trimmed_by = Instant::now() + Duration::from_secs(11);
    let mut after = report::rss_bytes(pid)?;
    while after as f64 > idle as f64 * 1.1 && Instant::now() < trimmed_by {
        std::thread::sleep(Duration::from_millis(200));
        after = report::rss_bytes(pid)?;
    }
    report.figure(
        "registry RSS after the 10,000 clients left",
        after as f64,
        Unit::MiB,
        Budget::AtMost(idle as f64 * 1.1),
    );
    let closed = if gone {
        format!(
            "all {} connections closed by the registry {:.2} s after the clients closed them",
            report::thousands(CLIENTS as u64),
            left_in.as_secs_f64()
        )
    } else {
        format!(
            "the registry still had connections {:.0} s after the clients closed them all (measured then)",
            left_in.as_secs_f64()
        )
    };
    report.note(&format!("budget: the same registry idle + 10 % ({:.2} MiB); {closed}", idle as f64 * 1.1 / MIB));
    drop(reg);
    Ok(())
}

async fn connect_all(reg: &Registry, ids: &[String], secret: &str) -> Result<Vec<WsClient>, String> {
    let ex = smol::LocalExecutor::new();
    ex.run(async {
        let mut clients = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CONNECT_CONCURRENCY) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|id| {
                    let url = reg.ws_url(&jwt::mint(secret.as_bytes(), id, "agent"));
                    ex.spawn(connect_and_register(url, id.clone()))
                })
                .collect();
            for task in tasks {
                clients.push(task.await?);
            }
        }
        Ok(clients)
    })
    .await
}

async fn connect_and_register(url: String, id: String) -> Result<WsClient, String> {
    let mut client = WsClient::connect(&url, &id).await.map_err(|e| format!("{id}: upgrade failed: {e}"))?;
    client.send("register", None, Value::Null).await;
    match client.next_within(TIMEOUT).await {
        Some(Incoming::Json(v)) if v["type"] == "peer_list" => Ok(client),
        other => Err(format!("{id}: expected a peer_list, got {other:?}")),
    }
}

/// Throughput and latency between alpha and bravo on a registry without
/// the per-connection frame rate limit.
fn relay(report: &mut Report, opts: &Options) -> Result<(), String> {
    let dir = Scratch::new("bench-relay");
    std::fs::write(dir.path().join("api_keys.json"), DEFAULT_KEYS).map_err(|e| e.to_string())?;
    let reg = Registry::start_in(dir.path(), &[], &[("WS_RATE_LIMIT", "0"), ("RUST_LOG", "info")]);
    let pid = reg.proc.child.id();
    let (mut a, mut b) = smol::block_on(async {
        let a = connect_and_register(reg.ws_url(&reg.token("key-alpha")), "alpha".into()).await?;
        let b = connect_and_register(reg.ws_url(&reg.token("key-bravo")), "bravo".into()).await?;
        Ok::<_, String>((a, b))
    })?;
    let threads = opts.client_threads;
    let client_side =
        if threads == 2 { "sender and receiver on a thread each" } else { "sender and receiver on one thread" };

    run_pair(&mut a, &mut b, Pace::Window, WARMUP_FRAMES, Duration::from_secs(2), threads, pid)?;
    let t = run_pair(&mut a, &mut b, Pace::Window, THROUGHPUT_FRAMES, THROUGHPUT_TIME, threads, pid)?;
    let rate = t.frames as f64 / t.elapsed.as_secs_f64();
    report.figure(
        "registry relay throughput, one pair, 2 KiB frames",
        rate,
        Unit::PerSec("frames"),
        Budget::AtLeast(150_000.0),
    );
    report.note(&format!(
        "registry started with WS_RATE_LIMIT=0 (per-connection frame rate limit off); {} ice_candidate frames \
         of {FRAME_BYTES} bytes alpha → bravo in {:.2} s, window {WINDOW}; {client_side}",
        report::thousands(t.frames),
        t.elapsed.as_secs_f64()
    ));
    report.note(&t.limiter());

    let l = run_pair(&mut a, &mut b, Pace::Rate(LATENCY_RATE), LATENCY_RATE * 3, LATENCY_TIME, threads, pid)?;
    let mut lat = l.latencies_ns.clone();
    lat.sort_unstable();
    let (p50, p99) = (report::percentile(&lat, 50.0), report::percentile(&lat, 99.0));
    let name = format!("registry relay latency at {} frames/s", report::thousands(LATENCY_RATE));
    report.figure(&format!("{name}, p50"), p50 as f64, Unit::Ms, Budget::None);
    report.figure(&format!("{name}, p99"), p99 as f64, Unit::Ms, Budget::AtMost(0.2e6));
    report.note(&format!(
        "{} frames paced over {:.2} s ({:.0}/s sent), same registry (WS_RATE_LIMIT=0); one way alpha → registry \
         → bravo, send timestamp in the payload, read at the receiver in this process; max {:.3} ms",
        report::thousands(l.frames),
        l.elapsed.as_secs_f64(),
        l.frames as f64 / l.elapsed.as_secs_f64(),
        lat.last().copied().unwrap_or(0) as f64 / 1e6
    ));
    report.note(&l.limiter());

    // The sender got nothing back (no error frames): the pong comes first.
    let reply = smol::block_on(async {
        a.send("ping", None, Value::Null).await;
        a.next_within(TIMEOUT).await
    });
    match reply {
        Some(Incoming::Json(v)) if v["type"] == "pong" => Ok(()),
        other => Err(format!("the sender received {other:?} instead of a pong; were frames refused?")),
    }
}

#[derive(Debug, Clone, Copy)]
enum Pace {
    /// As fast as possible with at most [`WINDOW`] frames in flight.
    Window,
    /// A fixed rate per second.
    Rate(u64),
}

struct PairRun {
    frames: u64,
    /// First send to the end marker's arrival.
    elapsed: Duration,
    latencies_ns: Vec<u64>,
    /// Registry process CPU over `elapsed`, in cores.
    registry_cpu: f64,
    /// Each client thread's CPU over `elapsed`, in cores.
    client_cpu: Vec<(&'static str, f64)>,
    /// Busy cores of the whole machine over `elapsed`.
    machine_cpu: f64,
}

impl PairRun {
    /// Which side the figure was bounded by, from CPU use.
    fn limiter(&self) -> String {
        let mut usage = format!("CPU: registry {:.0}% of a core", self.registry_cpu * 100.0);
        for (name, cpu) in &self.client_cpu {
            let _ = write!(usage, ", bench {name} thread {:.0}%", cpu * 100.0);
        }
        let cores = report::cores() as f64;
        let ours = self.registry_cpu + self.client_cpu.iter().map(|(_, c)| c).sum::<f64>();
        let others = (self.machine_cpu - ours).max(0.0);
        let _ = write!(usage, ", other processes {:.0}%", others * 100.0);
        let busiest_client = self.client_cpu.iter().copied().fold(("", 0.0), |m, c| if c.1 > m.1 { c } else { m });
        let verdict = if self.registry_cpu >= 0.9 {
            "limited by the registry (its event loop thread is saturated)".to_owned()
        } else if busiest_client.1 >= 0.9 {
            format!("limited by the client side (bench {} thread saturated)", busiest_client.0)
        } else if self.machine_cpu >= 0.85 * cores {
            format!(
                "limited by the machine: {:.2} of {cores} cores busy, {others:.2} of them by other processes",
                self.machine_cpu
            )
        } else {
            "no thread saturated (paced, or bounded by the window's round trips)".to_owned()
        };
        format!("{usage}; {verdict}")
    }
}

/// Sends frames alpha → bravo and receives them at bravo until `max`
/// frames or `limit` elapsed, whichever comes first.
fn run_pair(
    a: &mut WsClient,
    b: &mut WsClient,
    pace: Pace,
    max: u64,
    limit: Duration,
    threads: usize,
    registry_pid: u32,
) -> Result<PairRun, String> {
    // Credits: the sender takes one per frame, the receiver returns it.
    let (credit_tx, credit_rx) = smol::channel::bounded(WINDOW);
    for _ in 0..WINDOW {
        let _ = credit_tx.try_send(());
    }
    let record = matches!(pace, Pace::Rate(_));
    let maker = FrameMaker::new(&a.peer_id, &b.peer_id);
    let stall = limit + STALL;
    let epoch = Instant::now();
    let registry_cpu0 = report::process_cpu(registry_pid)?;
    let machine0 = report::machine_cpu()?;
    let (sent, received, client_cpu) = if threads >= 2 {
        std::thread::scope(|s| {
            let receiver = std::thread::Builder::new()
                .name("bench-recv".into())
                .spawn_scoped(s, || {
                    let cpu0 = report::thread_cpu();
                    let r = smol::block_on(bounded(stall, receive(&mut b.ws, credit_tx, epoch, record)));
                    (r, report::thread_cpu() - cpu0)
                })
                .map_err(|e| format!("spawn: {e}"))?;
            let cpu0 = report::thread_cpu();
            let sent = smol::block_on(bounded(stall, send(&mut a.ws, &maker, credit_rx, pace, max, limit, epoch)));
            let send_cpu = report::thread_cpu() - cpu0;
            let (received, recv_cpu) = receiver.join().map_err(|_| "the receiver thread panicked")?;
            Ok::<_, String>((sent, received, vec![("sender", send_cpu), ("receiver", recv_cpu)]))
        })?
    } else {
        let cpu0 = report::thread_cpu();
        let (sent, received) = smol::block_on(futures_lite::future::zip(
            bounded(stall, send(&mut a.ws, &maker, credit_rx, pace, max, limit, epoch)),
            bounded(stall, receive(&mut b.ws, credit_tx, epoch, record)),
        ));
        (sent, received, vec![("sender+receiver", report::thread_cpu() - cpu0)])
    };
    let registry_cpu = report::process_cpu(registry_pid)?.saturating_sub(registry_cpu0);
    let machine1 = report::machine_cpu()?;
    let received = received.map_err(|e| format!("receiver: {e}"))?;
    let sent = sent.map_err(|e| format!("sender: {e}"))?;
    if received.frames != sent {
        return Err(format!("sent {sent} frames but {} arrived", received.frames));
    }
    let elapsed = received.end.saturating_duration_since(epoch);
    let share = |cpu: Duration| cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9);
    Ok(PairRun {
        frames: sent,
        elapsed,
        latencies_ns: received.latencies_ns,
        registry_cpu: share(registry_cpu),
        client_cpu: client_cpu.into_iter().map(|(name, cpu)| (name, share(cpu))).collect(),
        // Busy share of all ticks, times the cores: busy cores on average.
        machine_cpu: (machine1.0 - machine0.0) as f64 / (machine1.1 - machine0.1).max(1) as f64
            * report::cores() as f64,
    })
}

/// Resolves to an error if `fut` takes longer than `limit`.
async fn bounded<T>(limit: Duration, fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    futures_lite::future::or(fut, async {
        Timer::after(limit).await;
        Err(format!("no result within {limit:?}"))
    })
    .await
}

/// `ice_candidate` frames of exactly [`FRAME_BYTES`], numbered and
/// timestamped (ns since the run's epoch) in the payload.
struct FrameMaker {
    head: String,
    pad: String,
}

impl FrameMaker {
    fn new(from: &str, to: &str) -> Self {
        let head = format!(r#"{{"type":"ice_candidate","peer_id":"{from}","target_id":"{to}","payload":{{"#);
        FrameMaker { head, pad: "a".repeat(FRAME_BYTES) }
    }

    fn text(&self, seq: u64, t_ns: u64, end: bool) -> String {
        let mut s = String::with_capacity(FRAME_BYTES);
        s.push_str(&self.head);
        let _ = write!(s, r#""seq":{seq},"t":{t_ns},"end":{end},"candidate":""#);
        let pad = FRAME_BYTES.saturating_sub(s.len() + 3);
        s.push_str(&self.pad[..pad]);
        s.push_str("\"}}");
        s
    }

    fn frame(&self, seq: u64, epoch: Instant, end: bool) -> Message {
        Message::text(self.text(seq, epoch.elapsed().as_nanos() as u64, end))
    }
}

#[allow(clippy::too_many_arguments)]
async fn send(
    ws: &mut Ws,
    maker: &FrameMaker,
    credits: Receiver<()>,
    pace: Pace,
    max: u64,
    limit: Duration,
    epoch: Instant,
) -> Result<u64, String> {
    let err = |e| format!("{e}");
    let start = Instant::now();
    let mut seq = 0u64;
    match pace {
        Pace::Window => {
            while seq < max && start.elapsed() < limit {
                if credits.recv().await.is_err() {
                    break; // the receiver stopped and says why
                }
                ws.feed(maker.frame(seq, epoch, false)).await.map_err(err)?;
                seq += 1;
                let mut batch = 1;
                while batch < BATCH && seq < max && credits.try_recv().is_ok() {
                    ws.feed(maker.frame(seq, epoch, false)).await.map_err(err)?;
                    seq += 1;
                    batch += 1;
                }
                ws.flush().await.map_err(err)?;
            }
        }
        Pace::Rate(per_sec) => {
            let interval = Duration::from_nanos(1_000_000_000 / per_sec.max(1));
            let mut due = start;
            while seq < max && start.elapsed() < limit {
                let now = Instant::now();
                while due <= now && seq < max {
                    ws.feed(maker.frame(seq, epoch, false)).await.map_err(err)?;
                    seq += 1;
                    due += interval;
                }
                ws.flush().await.map_err(err)?;
                Timer::at(due).await;
            }
        }
    }
    // The end marker: everything before it has been relayed once it arrives.
    ws.send(maker.frame(seq, epoch, true)).await.map_err(err)?;
    Ok(seq)
}

#[derive(Deserialize)]
struct Relayed<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    payload: Stamp,
}

#[derive(Deserialize)]
struct Stamp {
    seq: u64,
    t: u64,
    #[serde(default)]
    end: bool,
}

struct Received {
    frames: u64,
    end: Instant,
    latencies_ns: Vec<u64>,
}

/// Reads relayed frames (parsing each, checking order) until the end
/// marker; returns a credit per frame.
async fn receive(ws: &mut Ws, credits: Sender<()>, epoch: Instant, record: bool) -> Result<Received, String> {
    let mut frames = 0u64;
    let mut latencies_ns = Vec::new();
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(frame)) => return Err(format!("closed by the registry: {frame:?}")),
            Ok(_) => continue,
            Err(e) => return Err(format!("{e}")),
        };
        let at = epoch.elapsed().as_nanos() as u64;
        let head = || text.as_str().chars().take(200).collect::<String>();
        let f: Relayed = serde_json::from_str(text.as_str()).map_err(|e| format!("{e}: {}", head()))?;
        if f.kind != "ice_candidate" {
            return Err(format!("unexpected frame {}", head()));
        }
        if f.payload.end {
            return Ok(Received { frames, end: Instant::now(), latencies_ns });
        }
        if f.payload.seq != frames {
            return Err(format!("frame {} arrived as number {frames}", f.payload.seq));
        }
        frames += 1;
        if record {
            latencies_ns.push(at.saturating_sub(f.payload.t));
        }
        let _ = credits.try_send(());
    }
    Err("the connection ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_exactly_2_kib_of_json() {
        let m = FrameMaker::new("alpha", "bravo");
        for (seq, t) in [(0, 0), (123_456, 9_876_543_210), (u64::MAX, u64::MAX)] {
            let text = m.text(seq, t, false);
            assert_eq!(text.len(), FRAME_BYTES);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "ice_candidate");
            assert_eq!(v["target_id"], "bravo");
            let f: Relayed = serde_json::from_str(&text).unwrap();
            assert_eq!((f.payload.seq, f.payload.t, f.payload.end), (seq, t, false));
        }
    }
}
