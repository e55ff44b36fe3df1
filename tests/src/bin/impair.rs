//! `impair QUEUE LOSS_PERCENT MIN_MS MAX_MS`: impairs the packets an
//! iptables `NFQUEUE --queue-num QUEUE` rule hands it, as `tc netem` would
//! on a kernel that has it: each packet is dropped with LOSS_PERCENT
//! probability, else released after a delay drawn uniformly from
//! MIN_MS..=MAX_MS, so packets also overtake each other. Runs until killed;
//! prints `impair ready` once bound. The NAT lab starts it in a router's
//! namespace (`netlab::Site::impair`).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use nfq::{Queue, Verdict};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// Packets held at once; beyond, new ones pass undelayed.
const MAX_HELD: usize = 65_536;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: impair QUEUE LOSS_PERCENT MIN_MS MAX_MS ({what} missing or invalid)");
        std::process::exit(2)
    })
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let queue_num: u16 = arg(&args, 0, "QUEUE");
    let loss: f64 = arg(&args, 1, "LOSS_PERCENT");
    let (lo, hi): (u64, u64) = (arg(&args, 2, "MIN_MS"), arg(&args, 3, "MAX_MS"));
    let mut queue = Queue::open()?;
    queue.bind(queue_num)?;
    queue.set_fail_open(queue_num, true)?;
    queue.set_queue_max_len(queue_num, 8192)?;
    queue.set_nonblocking(true);
    println!("impair ready");
    let mut seed = u64::from(std::process::id()) | 1;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut held = HashMap::new();
    let mut n = 0u64;
    loop {
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    if random() * 100.0 < loss {
                        msg.set_verdict(Verdict::Drop);
                        queue.verdict(msg)?;
                    } else if held.len() >= MAX_HELD {
                        msg.set_verdict(Verdict::Accept);
                        queue.verdict(msg)?;
                    } else {
                        let delay = lo as f64 + random() * hi.saturating_sub(lo) as f64;
                        n += 1;
                        due.push(Reverse((Instant::now() + Duration::from_secs_f64(delay / 1000.0), n)));
                        held.insert(n, msg);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = due.peek() {
            if at > now {
                break;
            }
            due.pop();
            if let Some(mut msg) = held.remove(&id) {
                msg.set_verdict(Verdict::Accept);
                queue.verdict(msg)?;
            }
        }
        // No descriptor to wait on: a short nap bounds the added delay.
        let next = due.peek().map_or(Duration::from_millis(1), |Reverse((at, _))| at.saturating_duration_since(now));
        std::thread::sleep(next.min(Duration::from_millis(1)));
    }
}
