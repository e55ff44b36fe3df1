//! The registry's own TURN relay (`RELAY_PORT`) in the NAT lab: the round
//! trip it adds, the throughput through it, and the registry's CPU per
//! relayed MB, over UDP and over the signaling WebSocket.
//!
//! One lab without coturn: the registry on the lab's internet with its
//! relay on port 3478, uncapped (`RELAY_BANDWIDTH=0`,
//! `RELAY_TOTAL_BANDWIDTH=0`: the relay itself is measured, not its
//! limits), and three pairs of sites: two public sites (a direct path, the
//! baseline), two symmetric NATs (they cannot hole-punch to each other: the
//! relay over UDP) and two sites that reach nothing but the registry's HTTP
//! port (the relay over the signaling WebSocket). The sidecars have no TURN
//! settings of their own: they take the registry's relay from `GET
//! /api/config`, as deployed ones do, and allocate on it over UDP and over
//! the WebSocket. A sidecar prefers whichever relayed candidate came first,
//! so the symmetric pair may relay over UDP at one end and the WebSocket at
//! the other; then it is linked again with the relay's UDP URL and the
//! credentials `/api/config` hands each peer as its own TURN settings (one
//! allocation, over UDP), and a note says so. The round trip and
//! throughput are the sidecar section's, through the nat section's
//! [`Pair`]; around each throughput run the bench reads the registry's CPU
//! time (`/proc/PID/stat`) and its relay counters (`/metrics`, from inside
//! the lab's internet).
//!
//! Needs root and the lab's tools, as the nat section does. Every loop is
//! bounded in count and in time (the sidecar section's bounds); every
//! sidecar gets SIGTERM when its figures are done and is killed on drop,
//! and dropping the lab removes everything it made.

use crate::nat::{self, Pair, kind_name, relayed, side_path, start_sidecar, write_keys};
use crate::report::{self, Budget, Report, Unit};
use crate::sidecar::unpanicked;
use chatixia_e2e::netlab::{Lab, NatKind, SERVER_IP, Site};
use chatixia_e2e::{Registry, Scratch, metric};
use serde_json::Value;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

pub const FLAGS: &[(&str, bool)] = &[];
pub const OPTIONS: &str = concat!(
    "  none                (the section needs root and the NAT lab's tools, as nat does;\n",
    "                      without them it is skipped, a failed run if CHATIXIA_REQUIRE_NETLAB=1)\n",
);

/// The relay's UDP and TCP port in the lab (the registry's default).
const RELAY_PORT: &str = "3478";

/// One pair of sites and the path its sidecars are meant to take.
struct Scenario {
    tag: &'static str,
    what: &'static str,
    kind: NatKind,
    /// `None`: a direct path. `Some(t)`: relayed at both ends, reaching the
    /// relay over `t` (the `local_transport` of `status`).
    transport: Option<&'static str>,
}

fn scenarios(registry: SocketAddrV4) -> [Scenario; 3] {
    [
        Scenario { tag: "direct", what: "direct (public <-> public)", kind: NatKind::Public, transport: None },
        Scenario {
            tag: "udp",
            what: "over UDP (symmetric <-> symmetric)",
            kind: NatKind::Symmetric,
            transport: Some("udp"),
        },
        Scenario {
            tag: "ws",
            what: "over the WebSocket (registry-port-only <-> registry-port-only)",
            kind: NatKind::OnlyTcpTo { allow: registry },
            transport: Some("websocket"),
        },
    ]
}

pub fn run(report: &mut Report, args: &[String]) -> Result<(), String> {
    if let Some(arg) = args.first() {
        return Err(format!("unknown relay option {arg:?}"));
    }
    if !nat::lab_available(report)? {
        return Ok(());
    }
    let began = Instant::now();
    report.note_setup("chatixia-registry", &[]);
    report.note_setup("chatixia-sidecar", &["MAX_MESSAGE_BYTES"]);
    report::raise_nofile(4096)?;
    unpanicked(|| {
        let Some(w) = World::new()? else {
            report.note(nat::LAB_NOT_SET_UP);
            return Ok(());
        };
        let allow = SocketAddrV4::new(SERVER_IP, w.registry.port);
        let mut measured = Vec::new();
        for s in scenarios(allow) {
            let sites = (w.lab.site(s.kind), w.lab.site(s.kind));
            measured.push((measure(report, &w, &s, (&sites.0, &sites.1))?, s));
        }
        summary(report, &w, &measured)?;
        report.note(&format!("the relay section took {:.0} s", began.elapsed().as_secs_f64()));
        Ok(())
    })
}

// ---------------------------------------------------------------- the lab

/// The lab and its registry. Field order: the registry goes first, the lab
/// (and everything in its namespaces) last but the directory.
struct World {
    registry: Registry,
    lab: Lab,
    dir: Scratch,
}

impl World {
    /// `None` when the lab cannot be made (Lab::new says why).
    fn new() -> Result<Option<World>, String> {
        let Some(lab) = Lab::new("bench-relay") else { return Ok(None) };
        let dir = Scratch::new("bench-relay");
        let ids: Vec<String> = ["direct", "udp", "udponly", "ws"]
            .into_iter()
            .flat_map(|tag| [format!("relay-{tag}-a"), format!("relay-{tag}-b")])
            .collect();
        write_keys(dir.path(), &ids)?;
        let address = SERVER_IP.to_string();
        let registry = lab.start_registry_with(
            dir.path(),
            &[],
            &[
                ("RELAY_PORT", RELAY_PORT),
                ("RELAY_BANDWIDTH", "0"),
                ("RELAY_TOTAL_BANDWIDTH", "0"),
                // Relayed addresses on the lab's server address, as on a
                // real server (the outward address here is the dead end).
                ("RELAY_ADDRESS", &address),
                ("RUST_LOG", "info"),
            ],
        );
        let on = format!("relay on UDP and TCP port {RELAY_PORT}");
        if !registry.proc.log().contains(&on) {
            return Err(format!("the registry's relay is not on; it logged:\n{}", registry.proc.log()));
        }
        Ok(Some(World { registry, lab, dir }))
    }

    fn registry_pid(&self) -> u32 {
        self.registry.proc.child.id()
    }

    /// The registry's CPU time and relay counters, and the kernel counters
    /// of the sites `a` and `b`.
    fn sample(&self, a: &Site, b: &Site) -> Result<Sample, String> {
        let cpu = report::process_cpu(self.registry_pid())?;
        let reply = self.lab.in_internet(|| self.registry.get("/metrics"));
        if reply.status != 200 {
            return Err(format!("GET /metrics: {}", reply.status));
        }
        let text = reply.body;
        let counter = |name: &str| metric(&text, name).ok_or(format!("no {name} in /metrics"));
        let (ca, cb) = (a.counters(), b.counters());
        Ok(Sample {
            cpu,
            bytes: counter("chatixia_relay_bytes_total")?,
            packets: counter("chatixia_relay_packets_total")?,
            refused: refusals(&text),
            sites_out: ca.out.other.bytes + cb.out.other.bytes,
            direct: self.lab.direct_udp(a, b).bytes,
            dropped: ca.dropped_udp.packets + cb.dropped_udp.packets + ca.dropped_tcp.packets + cb.dropped_tcp.packets,
        })
    }
}

/// The sum of `chatixia_relay_refused_total` over its reasons.
fn refusals(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("chatixia_relay_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// See [`World::sample`].
struct Sample {
    cpu: Duration,
    /// `chatixia_relay_bytes_total`, `chatixia_relay_packets_total` and the
    /// sum of `chatixia_relay_refused_total`.
    bytes: f64,
    packets: f64,
    refused: f64,
    /// Bytes both sites sent to the lab's internet other than directly to a
    /// site (here: all to the registry, relay and signaling).
    sites_out: u64,
    /// UDP bytes directly between the two sites.
    direct: u64,
    /// Packets their routers dropped (UDP and TCP not let out).
    dropped: u64,
}

// ---------------------------------------------------------------- figures

/// What one scenario measured.
struct Measured {
    /// Sorted nanoseconds.
    rtt: Vec<u64>,
    bytes_per_sec: f64,
    /// The registry's CPU time during the throughput run.
    cpu: Duration,
    /// Bytes the relay relayed during the throughput run.
    relayed: f64,
    /// Whether both ends reported the path the scenario is meant to take.
    path_ok: bool,
}

impl Measured {
    /// The registry's CPU nanoseconds per relayed MB (10^6 bytes); `None`
    /// when next to nothing was relayed.
    fn cpu_per_mb(&self) -> Option<f64> {
        (self.relayed > 1e5).then(|| self.cpu.as_nanos() as f64 / (self.relayed / 1e6))
    }
}

fn measure(report: &mut Report, w: &World, s: &Scenario, sites: (&Site, &Site)) -> Result<Measured, String> {
    let expected = |p: &Value| match s.transport {
        None => !relayed(p),
        Some(t) => p["local"] == "relay" && p["remote"] == "relay" && p["local_transport"] == t,
    };
    let (mut pair, mut pa, pb) = link(report, w, s, sites, false)?;
    let mut path_ok = expected(&pa) && expected(&pb);
    if !path_ok && s.transport == Some("udp") {
        report.note(
            "warning: not relayed over UDP at both ends: a sidecar prefers whichever of its relayed candidates came \
             first, its UDP or its WebSocket allocation; again with the registry's relay over UDP alone",
        );
        pair.stop(report);
        let pb;
        (pair, pa, pb) = link(report, w, s, sites, true)?;
        path_ok = expected(&pa) && expected(&pb);
    }
    if !path_ok {
        report.note("warning: not the path this scenario is meant to measure");
    }

    let label = format!("relay {}", s.what);
    let rtt = pair.round_trips(report, &label)?;
    let before = w.sample(sites.0, sites.1)?;
    let bytes_per_sec = pair.throughput(report, &label)?;
    let after = w.sample(sites.0, sites.1)?;
    let cpu = after.cpu.saturating_sub(before.cpu);
    let relayed = after.bytes - before.bytes;
    let packets = after.packets - before.packets;
    let mb = |bytes: f64| bytes / 1e6;
    report.note(&format!(
        "during the throughput run: the registry used {} ms of CPU and relayed {:.1} MB in {} packets (avg {:.0} B); \
         {} relay refusals",
        cpu.as_millis(),
        mb(relayed),
        report::thousands(packets as u64),
        if packets > 0.0 { relayed / packets } else { 0.0 },
        after.refused - before.refused
    ));
    report.note(&format!(
        "kernel counters during the throughput run: the two sites sent {:.1} MB to the registry, {:.1} MB directly \
         to each other; their routers dropped {} packets",
        mb((after.sites_out - before.sites_out) as f64),
        mb((after.direct - before.direct) as f64),
        after.dropped - before.dropped
    ));
    pair.note_path_change(report, &pa)?;
    pair.stop(report);
    Ok(Measured { rtt, bytes_per_sec, cpu, relayed, path_ok })
}

/// Links two sidecars of scenario `s` on `sites` and notes their paths;
/// A's and B's path. They take the registry's TURN servers, or, with
/// `udp_only`, the registry's relay over UDP alone as their own TURN
/// settings (with the credentials `GET /api/config` hands each of them).
fn link(
    report: &Report,
    w: &World,
    s: &Scenario,
    sites: (&Site, &Site),
    udp_only: bool,
) -> Result<(Pair, Value, Value), String> {
    let tag = if udp_only { format!("{}only", s.tag) } else { s.tag.to_owned() };
    let ids = (format!("relay-{tag}-a"), format!("relay-{tag}-b"));
    let mut ready = vec![format!("connected to the registry as {}", ids.0)];
    let (mut own_a, mut own_b) = (Vec::new(), Vec::new());
    if udp_only {
        own_a = udp_relay_settings(w, &ids.0)?;
        own_b = udp_relay_settings(w, &ids.1)?;
    } else {
        ready.push("TURN the registry's relay over the signaling WebSocket: relayed address".to_owned());
    }
    if !matches!(s.kind, NatKind::OnlyTcpTo { .. }) {
        ready.push(format!("TURN turn:{SERVER_IP}:{RELAY_PORT}: relayed address"));
    }
    let start = |site: &Site, id: &str| {
        let own = if id == ids.0 { &own_a } else { &own_b };
        let env: Vec<(&str, &str)> = own.iter().map(|(k, v)| (*k, v.as_str())).collect();
        start_sidecar(&w.registry, w.dir.path(), site, id, &env)
    };
    let mut pair = Pair::link(start, sites, ids.clone(), &ready)?;
    let (pa, pb) = pair.paths()?;
    let how = if udp_only {
        format!("TURN_URL=turn:{SERVER_IP}:{RELAY_PORT} with the credentials of GET /api/config")
    } else {
        "TURN servers from the registry".to_owned()
    };
    report.note(&format!(
        "NAT lab, two {} sites, {}, {how}: path {} | {}",
        kind_name(s.kind),
        s.what,
        side_path(&pa),
        side_path(&pb)
    ));
    Ok((pair, pa, pb))
}

/// The registry relay's UDP URL and the REST credentials `GET /api/config`
/// hands `id`, as a sidecar's own TURN settings.
fn udp_relay_settings(w: &World, id: &str) -> Result<Vec<(&'static str, String)>, String> {
    let reply = w.lab.in_internet(|| {
        let token = w.registry.token(&format!("key-{id}"));
        w.registry.request("GET", "/api/config", &[("Authorization", &format!("Bearer {token}"))], None)
    });
    let config = reply.json();
    let udp = format!(":{RELAY_PORT}?transport=udp");
    let entry = config["iceServers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["urls"].as_array().into_iter().flatten().any(|u| u.as_str().is_some_and(|u| u.ends_with(&udp))))
        .ok_or(format!("no relay over UDP in /api/config for {id}: {}", reply.body))?;
    let field = |k: &str| entry[k].as_str().map(str::to_owned).ok_or(format!("no {k} in /api/config for {id}"));
    Ok(vec![
        ("TURN_URL", format!("turn:{SERVER_IP}:{RELAY_PORT}?transport=udp")),
        ("TURN_USERNAME", field("username")?),
        ("TURN_PASSWORD", field("credential")?),
    ])
}

/// The round trip the relay adds, the registry's CPU per relayed MB, its
/// RSS, and a table of the three scenarios.
fn summary(report: &mut Report, w: &World, measured: &[(Measured, Scenario)]) -> Result<(), String> {
    let [(direct, _), relayed @ ..] = measured else { return Err("no baseline".into()) };
    let p50 = |m: &Measured| report::percentile(&m.rtt, 50.0) as f64;
    for (m, s) in relayed {
        let over = if s.transport == Some("udp") { "UDP" } else { "the WebSocket" };
        report.figure(
            &format!("relay round trip added over {over} (p50 relayed - p50 direct)"),
            p50(m) - p50(direct),
            Unit::Us,
            Budget::None,
        );
    }
    for (m, s) in relayed {
        let over = if s.transport == Some("udp") { "UDP" } else { "the WebSocket" };
        match m.cpu_per_mb() {
            Some(ns) => {
                report.figure(&format!("relay registry CPU per relayed MB over {over}"), ns, Unit::Ms, Budget::None)
            }
            None => report.note(&format!("warning: next to nothing relayed over {over}: no CPU per relayed MB")),
        }
    }
    let pid = w.registry_pid();
    report.figure("relay registry RSS after the runs", report::rss_bytes(pid)? as f64, Unit::MiB, Budget::None);
    report.note(&report::rss_breakdown(pid)?);
    report.note(&format!(
        "utime+stime of the registry from /proc/PID/stat (clock-tick resolution {} ms) over \
         chatixia_relay_bytes_total (MB = 10^6 bytes)",
        // SAFETY: sysconf only reads a configuration value.
        1000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1)
    ));
    report.note("path                  RTT p50    RTT p99    MB/s   % of direct  registry CPU  relayed MB  CPU ms/MB");
    for (m, s) in measured {
        let path = match s.transport {
            None => "direct".to_owned(),
            Some(t) => format!("relay/{t}"),
        };
        let per_mb = m.cpu_per_mb().map_or("-".into(), |ns| format!("{:.2}", ns / 1e6));
        report.note(&format!(
            "{:<20} {:>7.0} µs {:>7.0} µs {:>7.1} {:>11.0} % {:>9} ms {:>11.1} {:>10}{}",
            path,
            p50(m) / 1e3,
            report::percentile(&m.rtt, 99.0) as f64 / 1e3,
            m.bytes_per_sec / 1e6,
            m.bytes_per_sec / direct.bytes_per_sec * 100.0,
            m.cpu.as_millis(),
            m.relayed / 1e6,
            per_mb,
            if m.path_ok { "" } else { "  (not the path meant!)" }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_add_up_over_reasons() {
        let text = "# TYPE chatixia_relay_refused_total counter\n\
                    chatixia_relay_refused_total{reason=\"quota\"} 2\n\
                    chatixia_relay_refused_total{reason=\"bandwidth\"} 5\n\
                    chatixia_relay_bytes_total 9\n";
        assert_eq!(refusals(text), 7.0);
        assert_eq!(refusals(""), 0.0);
    }
}
