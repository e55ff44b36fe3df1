//! `bench`: measures the SPEC §7 figures of the real release binaries on
//! 127.0.0.1 and prints each next to its budget. Not part of the test suite.
//!
//! Run it from the repository root with `bench/run.sh [SECTION]`, which
//! builds the release binaries first; by hand:
//!
//! ```text
//! cargo build --release -p chatixia-registry
//! cargo run --release -p chatixia-e2e --bin bench -- registry
//! ```
//!
//! Every figure is one line `name: value unit (budget: …, PASS|OVER)`;
//! context lines start with `#`. Exit status: 0 all within budget, 1 some
//! figure over budget, 2 usage error or a failed run.
//!
//! A section is a module with `run(&mut Report, &[String])`; add it to
//! [`SECTIONS`] (and its binaries to `bench/run.sh`).

mod registry;
mod report;
mod sidecar;

use report::Report;
use std::process::ExitCode;

type Section = fn(&mut Report, &[String]) -> Result<(), String>;

/// name, what it measures, entry point.
const SECTIONS: &[(&str, &str, Section)] = &[
    ("registry", "registry RSS idle and with 1,000 clients, relay throughput and latency", registry::run),
    ("sidecar", "sidecar RSS, threads, idle CPU, start to peer_connected, round trip, throughput, mesh", sidecar::run),
];

fn usage() -> String {
    let mut text = String::from(
        "usage: bench SECTION [OPTIONS]   (or: bench all)\n\
         Measures SPEC §7 figures of the release binaries on 127.0.0.1.\n\nsections:\n",
    );
    for (name, what, _) in SECTIONS {
        text.push_str(&format!("  {name:<10} {what}\n"));
    }
    text.push_str("\nregistry options:\n");
    text.push_str(registry::OPTIONS);
    text.push_str("\nsidecar options:\n");
    text.push_str(sidecar::OPTIONS);
    text
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(section) = args.first() else {
        eprint!("{}", usage());
        return ExitCode::from(2);
    };
    if section == "-h" || section == "--help" || section == "help" {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<&(&str, &str, Section)> = if section == "all" {
        SECTIONS.iter().collect()
    } else {
        match SECTIONS.iter().find(|(name, _, _)| name == section) {
            Some(s) => vec![s],
            None => {
                eprintln!("bench: unknown section {section:?}\n\n{}", usage());
                return ExitCode::from(2);
            }
        }
    };
    if cfg!(debug_assertions) {
        println!("# warning: the bench itself is a debug build; run it with --release (bench/run.sh does)");
    }
    let mut report = Report::default();
    for (name, _, run) in chosen {
        println!("# section {name}");
        if let Err(e) = run(&mut report, &args[1..]) {
            eprintln!("bench {name}: {e}");
            return ExitCode::from(2);
        }
    }
    if report.over > 0 {
        println!("# {} of {} figures over budget", report.over, report.figures);
        ExitCode::from(1)
    } else {
        println!("# all {} figures within budget", report.figures);
        ExitCode::SUCCESS
    }
}
