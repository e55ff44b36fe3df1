//! Control tests of the NAT lab (src/netlab.rs): before any test trusts
//! the lab to tell whether sidecars connect across NATs, these show with a
//! plain UDP/TCP probe (src/bin/netprobe.rs) and the kernel's counters
//! that each NAT kind behaves as named, that coturn sees each site from its
//! router's WAN address (over UDP and over TLS), that rebinding changes a
//! mapping, and that a lab leaves nothing behind, even when its test
//! panics.
//!
//! They need root and the lab's tools (scripts/netlab-deps.sh); without
//! them they pass with a notice unless CHATIXIA_REQUIRE_NETLAB=1.

use chatixia_e2e::netlab::{Coturn, Lab, NatKind, OUTSIDE_IPS, Probe, SERVER_IP, Site, TurnTls, stun};
use chatixia_e2e::tls_proxy::ca_file;
use chatixia_e2e::{Scratch, TIMEOUT};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The port every site's probe binds on its host.
const PROBE_PORT: u16 = 41000;

/// Polls `cond` until it holds. Only for kernel counters, which announce
/// nothing: bounded by [`TIMEOUT`].
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `text` from `outsider` to each of `targets` (a NAT'd site's
/// mappings, none of them ever towards `outsider`) and shows that the
/// router dropped them all; then that a reply from `contacted` to the
/// mapping it saw does get in, and that none of the intruders did.
fn outsiders_cannot_get_in(
    site: &Site,
    probe: &Probe,
    outsider: &mut Probe,
    targets: &[SocketAddrV4],
    contacted: (&mut Probe, SocketAddrV4),
) {
    let name = format!("{:?}", site.kind).to_lowercase().replace([' ', '{', '}', ':'], "");
    let before = site.counters().dropped_unsolicited.packets;
    for (i, target) in targets.iter().enumerate() {
        outsider.send(*target, &format!("{name}-intruder-{i}"));
    }
    eventually("the router dropped every unsolicited datagram", || {
        site.counters().dropped_unsolicited.packets >= before + targets.len() as u64
    });
    let (contacted, seen_as) = contacted;
    let reply = format!("{name}-reply");
    contacted.send(seen_as, &reply);
    assert_eq!(probe.recv_from(&reply), contacted.local, "the contacted host's reply gets in");
    for i in 0..targets.len() {
        assert!(!probe.got(&format!("{name}-intruder-{i}")), "an outsider got into {name}: {:?}", probe.log());
    }
}

/// A STUN Binding over TLS to coturn's `turns:` port, from the calling
/// thread's namespace, trusting only the test CA and checking the
/// certificate against the server's IP address.
fn stun_over_tls(server: SocketAddrV4) -> SocketAddrV4 {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file()).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(std::net::IpAddr::V4(*server.ip()).into());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let mut tcp = TcpStream::connect_timeout(&server.into(), TIMEOUT).expect("TCP to coturn's TLS port");
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(&stun::binding_request(*b"nat-lab-tls1")).expect("TLS handshake and request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while stun::message_len(&answer).is_none_or(|len| answer.len() < len) {
        let n = tls.read(&mut buf).expect("TLS read");
        assert!(n > 0, "coturn closed the TLS connection");
        answer.extend_from_slice(&buf[..n]);
    }
    stun::mapped_address(&answer).unwrap_or_else(|| panic!("not a Binding success: {answer:02x?}"))
}

#[test]
fn each_nat_kind_behaves_as_named() {
    let start = Instant::now();
    let Some(lab) = Lab::new("control") else { return };
    let public = lab.site(NatKind::Public);
    let cone = lab.site(NatKind::Cone);
    let symmetric = lab.site(NatKind::Symmetric);
    let blocked = lab.site(NatKind::UdpBlocked { allow: SERVER_IP });
    let turn = lab.start_coturn(Coturn { tls: Some(TurnTls::lab_fixture()), ..Coturn::default() });
    let set_up = start.elapsed();
    let [r1_ip, r2_ip, outsider_ip] = OUTSIDE_IPS;
    let mut r1 = lab.probe(r1_ip, 9001);
    let r2 = lab.probe(r2_ip, 9002);
    let mut outsider = lab.probe(outsider_ip, 9003);
    let mut report = Vec::new();

    // Public: seen as itself everywhere, and reachable by anyone.
    let mut public_probe = public.probe(PROBE_PORT);
    let own = SocketAddrV4::new(public.wan_ip, PROBE_PORT);
    assert_eq!(public_probe.stun(turn.addr()), own);
    public_probe.send(r1.local, "public-r1");
    public_probe.send(r2.local, "public-r2");
    assert_eq!(r1.recv_from("public-r1"), own);
    assert_eq!(r2.recv_from("public-r2"), own);
    outsider.send(own, "public-outsider");
    assert_eq!(public_probe.recv_from("public-outsider"), outsider.local, "a public host is reachable by anyone");
    report.push(format!("Public     stun {own}, r1 {own}, r2 {own}, an uncontacted host gets in (as it should)"));

    // Cone: one mapping for every destination, equal to the local port;
    // only what was contacted gets back in.
    let mut p = cone.probe(PROBE_PORT);
    let mapped = p.stun(turn.addr());
    assert_eq!(mapped, SocketAddrV4::new(cone.wan_ip, PROBE_PORT), "coturn sees the router's WAN address, port kept");
    p.send(r1.local, "cone-r1");
    p.send(r2.local, "cone-r2");
    let (at_r1, at_r2) = (r1.recv_from("cone-r1"), r2.recv_from("cone-r2"));
    assert_eq!((at_r1, at_r2), (mapped, mapped), "the same mapping towards every destination");
    outsiders_cannot_get_in(&cone, &p, &mut outsider, &[mapped], (&mut r1, at_r1));
    report.push(format!(
        "Cone       local {} → stun {mapped}, r1 {at_r1}, r2 {at_r2}; uncontacted host dropped",
        p.local
    ));

    // Path evidence: the cone's counters saw STUN as `turn` and the
    // probes as `other`; direct UDP to the public host counts as a peer.
    let c = cone.counters();
    assert!(c.out.turn.packets >= 1 && c.inbound.turn.packets >= 1, "{c:?}");
    assert!(c.out.other.packets >= 2 && c.inbound.other.packets >= 1, "{c:?}");
    assert_eq!(lab.direct_udp(&cone, &public).packets, 0, "{c:?}");
    p.send(own, "cone-to-public");
    assert_eq!(public_probe.recv_from("cone-to-public"), mapped);
    let direct = lab.direct_udp(&cone, &public);
    assert_eq!(direct.packets, 1, "one datagram went directly from the cone to the public host");
    assert_eq!(lab.direct_udp(&cone, &symmetric).packets, 0);
    report.push(format!("counters   cone → public direct UDP {direct}; cone's edge: {c}"));

    // A private address of another site is not routed on the internet:
    // the datagram ends in the dead end, silently.
    let before = lab.dead_end().packets;
    p.send(SocketAddrV4::new(symmetric.host_ip, PROBE_PORT), "cone-to-private");
    eventually("the datagram reached the dead end", || lab.dead_end().packets > before);

    // coturn over TLS (turns:) with the lab certificate, seen from the cone.
    let tls_port = turn.tls_port.expect("TLS on");
    let over_tls = cone.in_host(|| stun_over_tls(SocketAddrV4::new(turn.ip, tls_port)));
    assert_eq!(*over_tls.ip(), cone.wan_ip, "coturn over TLS sees the router's WAN address");
    report.push(format!("coturn     UDP {mapped}, TLS {over_tls} (certificate for {SERVER_IP} checked)"));

    // Rebinding: the same socket gets a new external port from the new
    // range, and the old mapping is closed.
    let (lo, hi) = cone.rebind();
    let rebound = p.stun(turn.addr());
    assert_eq!(*rebound.ip(), cone.wan_ip);
    assert!((lo..=hi).contains(&rebound.port()) && rebound != mapped, "{rebound} after rebinding to {lo}-{hi}");
    let before = cone.counters().dropped_unsolicited.packets;
    r1.send(mapped, "cone-old-mapping");
    eventually("the old mapping is dropped", || cone.counters().dropped_unsolicited.packets > before);
    assert!(!p.got("cone-old-mapping"));
    report.push(format!("Cone       rebind → ports {lo}-{hi}: stun {rebound}; the old mapping {mapped} is closed"));
    drop(p);

    // Symmetric: a new external port for every destination.
    let mut p = symmetric.probe(PROBE_PORT);
    let mapped = p.stun(turn.addr());
    assert_eq!(*mapped.ip(), symmetric.wan_ip, "coturn sees the router's WAN address");
    p.send(r1.local, "symmetric-r1");
    p.send(r2.local, "symmetric-r2");
    let (at_r1, at_r2) = (r1.recv_from("symmetric-r1"), r2.recv_from("symmetric-r2"));
    assert_eq!((*at_r1.ip(), *at_r2.ip()), (symmetric.wan_ip, symmetric.wan_ip));
    let ports = [mapped.port(), at_r1.port(), at_r2.port()];
    assert!(
        ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2],
        "one port per destination: {ports:?}"
    );
    outsiders_cannot_get_in(&symmetric, &p, &mut outsider, &[mapped, at_r1, at_r2], (&mut r1, at_r1));
    report.push(format!(
        "Symmetric  local {} → stun {mapped}, r1 {at_r1}, r2 {at_r2}; uncontacted host dropped",
        p.local
    ));
    drop(p);

    // UdpBlocked: UDP only to the allowed server; TCP anywhere.
    let mut p = blocked.probe(PROBE_PORT);
    let mapped = p.stun(turn.addr());
    assert_eq!(mapped, SocketAddrV4::new(blocked.wan_ip, PROBE_PORT), "UDP to the allowed host passes, cone-like");
    let before = blocked.counters().dropped_udp.packets;
    p.send(r1.local, "blocked-r1");
    p.send(r2.local, "blocked-r2");
    eventually("the router dropped both datagrams", || blocked.counters().dropped_udp.packets >= before + 2);
    assert!(!r1.got("blocked-r1") && !r2.got("blocked-r2"), "UDP got out of a UDP-blocking site");
    let local = p.tcp(r1.local).expect("TCP passes");
    let seen = r1.accepted();
    assert_eq!(*seen.ip(), blocked.wan_ip, "TCP from {local} arrives NATed");
    // The contacted host here is coturn (the only one UDP reaches): a
    // second Binding is the reply that must get in.
    outsiders_cannot_get_in_by_stun(&blocked, &mut p, &mut outsider, mapped, turn.addr());
    report.push(format!(
        "UdpBlocked stun {mapped}; UDP to r1, r2 dropped at the router; TCP {local} → r1 seen as {seen}; uncontacted host dropped"
    ));

    let measured = start.elapsed();
    drop((r1, r2, outsider, p, public_probe));
    let torn = Instant::now();
    let names = lab.namespaces();
    drop(lab);
    let tear_down = torn.elapsed();
    assert!(netns_list().iter().all(|n| !names.contains(n)), "namespaces left");
    eprintln!("NAT lab control (set-up {set_up:?}, whole test {measured:?}, tear-down {tear_down:?}):");
    for line in report {
        eprintln!("  {line}");
    }
}

/// [`outsiders_cannot_get_in`] for a site whose only UDP partner is the
/// STUN server: the positive control is a fresh Binding answer.
fn outsiders_cannot_get_in_by_stun(
    site: &Site,
    probe: &mut Probe,
    outsider: &mut Probe,
    target: SocketAddrV4,
    stun: SocketAddrV4,
) {
    let before = site.counters().dropped_unsolicited.packets;
    outsider.send(target, "blocked-intruder");
    eventually("the router dropped the unsolicited datagram", || site.counters().dropped_unsolicited.packets > before);
    assert_eq!(probe.stun(stun), target, "the server's answer gets in");
    assert!(!probe.got("blocked-intruder"));
}

/// `ip netns list`, names only (read-only, in the test's own namespace).
fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The test's own network namespace as `ip` shows it: interface names,
/// IPv4 addresses and every IPv4 route (read-only).
fn root_network() -> String {
    let mut text = String::new();
    for args in [&["-o", "link", "show"][..], &["-o", "-4", "addr", "show"], &["-4", "route", "show", "table", "all"]] {
        let out = Command::new("ip").args(args).output().expect("ip");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // Interface lines: only "N: name:" (flags and state may change).
            let line =
                if args[1] == "link" { line.split(':').take(2).collect::<Vec<_>>().join(":") } else { line.into() };
            text += &line;
            text.push('\n');
        }
    }
    text
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(cmdline)
        })
        .collect()
}

#[test]
fn labs_coexist_and_leave_nothing_behind() {
    let before = root_network();
    let Some(a) = Lab::new("leak-a") else { return };
    let b = Lab::new("leak-b").expect("a second lab");
    // The same addresses in both labs, without interference.
    let (site_a, site_b) = (a.site(NatKind::Cone), b.site(NatKind::Symmetric));
    let (mut pa, mut pb) = (site_a.probe(PROBE_PORT), site_b.probe(PROBE_PORT));
    let (ra, rb) = (a.probe(OUTSIDE_IPS[0], 9001), b.probe(OUTSIDE_IPS[0], 9001));
    pa.send(ra.local, "in-lab-a");
    pb.send(rb.local, "in-lab-b");
    assert_eq!(ra.recv_from("in-lab-a"), SocketAddrV4::new(site_a.wan_ip, PROBE_PORT));
    assert_eq!(*rb.recv_from("in-lab-b").ip(), site_b.wan_ip);
    assert!(!ra.got("in-lab-b") && !rb.got("in-lab-a"), "the labs are separate");
    let mut names = a.namespaces();
    names.extend(b.namespaces());
    let dir = a.dir().to_owned();
    drop((pa, pb, ra, rb));
    let turn = a.start_coturn(Coturn { secret: Some("lab-rest-secret".into()), ..Coturn::default() });
    assert!(turn.users.is_empty(), "REST credentials only");
    assert_eq!(processes_mentioning(&dir.display().to_string()).len(), 1, "coturn runs");
    drop(a);
    drop(b);
    // A site that outlives its lab refuses to run anything.
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| site_a.command("true")));
    assert!(refused.is_err(), "a dropped lab's site ran a command");

    // A test that panics halfway, with coturn and a probe running.
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(move || {
        let lab = Lab::new("leak-panic").expect("lab");
        let site = lab.site(NatKind::Cone);
        lab.start_coturn(Coturn::default());
        let _probe = site.probe(PROBE_PORT);
        tx.send((lab.namespaces(), lab.dir().to_owned())).unwrap();
        panic!("deliberate panic in the middle of a lab test");
    });
    assert!(outcome.is_err());
    let (panicked, panicked_dir) = rx.recv().unwrap();
    names.extend(panicked);

    let left: Vec<String> = netns_list().into_iter().filter(|n| names.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    for d in [&dir, &panicked_dir] {
        let procs = processes_mentioning(&d.display().to_string());
        assert!(procs.is_empty(), "processes left: {procs:?}");
        assert!(!d.exists(), "{} left", d.display());
    }
    assert_eq!(root_network(), before, "the test's own namespace changed");
}

#[test]
fn a_registry_and_a_sidecar_start_inside_the_lab() {
    let Some(lab) = Lab::new("smoke") else { return };
    let site = lab.site(NatKind::Cone);
    lab.start_coturn(Coturn::default());
    let dir = Scratch::new("netlab-smoke");
    let reg = lab.start_registry(dir.path());
    assert_eq!(lab.in_internet(|| reg.get("/healthz")).status, 200);
    let alpha = site.start_sidecar(&reg, dir.path(), "key-alpha", "alpha", &[]);
    let srflx = format!("server-reflexive address {}:", site.wan_ip);
    alpha.proc.wait_for_lines(&["connected to the registry as alpha", &srflx]);
    let c = site.counters();
    assert!(c.out.turn.packets >= 1, "STUN went to coturn: {c:?}");
    assert!(c.out.other.packets >= 1, "the registry connection went through the router: {c:?}");
}
