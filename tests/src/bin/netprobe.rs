//! netprobe: a small UDP/TCP probe for checking the NAT lab
//! (src/netlab.rs), started inside a lab namespace.
//!
//! `netprobe IP:PORT` binds one UDP socket and one TCP listener to that
//! address, prints `ready IP:PORT`, and then obeys commands, one per line
//! on stdin, answering on stdout:
//!
//! | command | effect and answer |
//! |---|---|
//! | `send IP:PORT TEXT` | one datagram TEXT from the UDP socket; `sent IP:PORT` |
//! | `stun IP:PORT` | a STUN Binding request (RFC 5389) from the UDP socket; the answer comes as `mapped IP:PORT FROM` |
//! | `tcp IP:PORT` | a TCP connection from a fresh socket (3 s limit); `tcp-ok IP:PORT LOCAL` or `tcp-fail IP:PORT ERROR` |
//!
//! Whatever arrives is printed as it comes: a datagram as `recv FROM TEXT`,
//! a Binding success response as `mapped`, an accepted TCP connection as
//! `accepted FROM`. End of stdin ends the probe, so it never outlives the
//! test that drives it.

use chatixia_e2e::netlab::stun;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn main() {
    let Some(bind) = std::env::args().nth(1).and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: netprobe IP:PORT  (then commands on stdin: send, stun, tcp)");
        std::process::exit(2);
    };
    let udp = UdpSocket::bind(bind).unwrap_or_else(|e| fail(&format!("UDP bind {bind}: {e}")));
    let tcp = TcpListener::bind(bind).unwrap_or_else(|e| fail(&format!("TCP bind {bind}: {e}")));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    say(&out, &format!("ready {}", udp.local_addr().expect("local address")));

    let (receiver, printer) = (udp.try_clone().expect("clone"), out.clone());
    std::thread::spawn(move || receive(&receiver, &printer));
    let printer = out.clone();
    std::thread::spawn(move || {
        for stream in tcp.incoming().map_while(Result::ok) {
            if let Ok(from) = stream.peer_addr() {
                say(&printer, &format!("accepted {from}"));
            }
        }
    });

    let mut transaction = 0u32;
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let mut words = line.splitn(3, ' ');
        let (command, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let Ok(to) = target.parse::<SocketAddr>() else {
            fail(&format!("bad command line {line:?}"));
        };
        match command {
            "send" => {
                let text = words.next().unwrap_or_default();
                udp.send_to(text.as_bytes(), to).unwrap_or_else(|e| fail(&format!("send to {to}: {e}")));
                say(&out, &format!("sent {to}"));
            }
            "stun" => {
                transaction += 1;
                udp.send_to(&binding_request(transaction), to).unwrap_or_else(|e| fail(&format!("stun to {to}: {e}")));
            }
            "tcp" => match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                Ok(stream) => say(&out, &format!("tcp-ok {to} {}", stream.local_addr().expect("local address"))),
                Err(e) => say(&out, &format!("tcp-fail {to} {e}")),
            },
            _ => fail(&format!("unknown command {line:?}")),
        }
    }
}

fn say(out: &Mutex<std::io::Stdout>, line: &str) {
    let mut out = out.lock().unwrap();
    // A closed stdout means the test is gone: so are we.
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn fail(why: &str) -> ! {
    eprintln!("netprobe: {why}");
    std::process::exit(1);
}

/// Prints every datagram: Binding success responses as `mapped`, the rest
/// as text.
fn receive(udp: &UdpSocket, out: &Mutex<std::io::Stdout>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf) else { return };
        match stun::mapped_address(&buf[..n]) {
            Some(mapped) => say(out, &format!("mapped {mapped} {from}")),
            None => say(out, &format!("recv {from} {}", String::from_utf8_lossy(&buf[..n]).replace('\n', " "))),
        }
    }
}

/// A Binding request; the transaction id carries our pid and a counter,
/// enough to be unique within a test.
fn binding_request(n: u32) -> Vec<u8> {
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&std::process::id().to_be_bytes());
    id[4..8].copy_from_slice(&n.to_be_bytes());
    id[8..].copy_from_slice(b"nlab");
    stun::binding_request(id)
}
