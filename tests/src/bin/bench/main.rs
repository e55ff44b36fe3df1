//! `bench`: measures the README, benchmarks figures of the real release binaries on
//! 127.0.0.1 (the `nat` and `relay` sections: in the NAT lab of `chatixia_e2e::netlab`)
//! and prints each next to its budget. Not part of the test suite.
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
//! A section is a module with `run(&mut Report, &[String])` and its
//! `FLAGS`; add it to [`SECTIONS`] (and its binaries to `bench/run.sh`).
//! Each section is handed only its own options, so `bench all` takes the
//! options of every section.

mod nat;
mod registry;
mod relay;
mod report;
mod sidecar;

use report::Report;
use std::process::ExitCode;

type Section = fn(&mut Report, &[String]) -> Result<(), String>;
/// A section's options: the flag, and whether a value follows it.
type Flags = &'static [(&'static str, bool)];

/// name, what it measures, entry point, options; `all` runs them in this
/// order. The registry's comes last: its 10,000 sockets closing leave the
/// kernel expiring their TIME_WAIT states about a minute later, which
/// stalled a relay latency run that followed (p99 1.2 instead of 0.1 ms)
/// and would disturb whatever section came next.
const SECTIONS: &[(&str, &str, Section, Flags)] = &[
    (
        "sidecar",
        "sidecar RSS, threads, idle CPU, start to peer_connected, round trip, throughput, mesh",
        sidecar::run,
        sidecar::FLAGS,
    ),
    (
        "nat",
        "NAT lab (root): every pair of NAT kinds linking, round trip and throughput direct and through TURN",
        nat::run,
        nat::FLAGS,
    ),
    (
        "relay",
        "NAT lab (root): the registry's own TURN relay over UDP and the WebSocket against a direct path, its CPU per MB",
        relay::run,
        relay::FLAGS,
    ),
    (
        "registry",
        "registry RSS idle, with 10,000 clients and after they left, relay throughput and latency",
        registry::run,
        registry::FLAGS,
    ),
];

/// The options in `args` that belong to a section with `own` flags; those
/// of other sections are left out, anything else is an error.
fn section_args(args: &[String], own: Flags) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let flag = |flags: Flags| flags.iter().find(|(name, _)| name == arg).copied();
        if let Some((_, takes_value)) = flag(own) {
            out.push(arg.clone());
            if takes_value {
                out.extend(it.next().cloned());
            }
        } else if let Some((_, takes_value)) = SECTIONS.iter().find_map(|s| flag(s.3)) {
            if takes_value {
                it.next();
            }
        } else {
            return Err(format!("unknown option {arg:?}"));
        }
    }
    Ok(out)
}

fn usage() -> String {
    let mut text = String::from(
        "usage: bench SECTION [OPTIONS]   (or: bench all)\n\
         Measures README, benchmarks figures of the release binaries on 127.0.0.1.\n\nsections:\n",
    );
    for (name, what, _, _) in SECTIONS {
        text.push_str(&format!("  {name:<10} {what}\n"));
    }
    text.push_str("\nregistry options:\n");
    text.push_str(registry::OPTIONS);
    text.push_str("\nsidecar options:\n");
    text.push_str(sidecar::OPTIONS);
    text.push_str("\nnat options:\n");
    text.push_str(nat::OPTIONS);
    text.push_str("\nrelay options:\n");
    text.push_str(relay::OPTIONS);
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
    let chosen: Vec<&(&str, &str, Section, Flags)> = if section == "all" {
        SECTIONS.iter().collect()
    } else {
        match SECTIONS.iter().find(|(name, _, _, _)| name == section) {
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
    for (name, _, run, flags) in chosen {
        println!("# section {name}");
        if let Err(e) = section_args(&args[1..], flags).and_then(|own| run(&mut report, &own)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn each_section_gets_only_its_own_options() {
        let args = strings(&["--client-threads", "2", "--window", "8", "--quick"]);
        assert_eq!(section_args(&args, sidecar::FLAGS).unwrap(), strings(&["--window", "8", "--quick"]));
        assert_eq!(section_args(&args, registry::FLAGS).unwrap(), strings(&["--client-threads", "2"]));
        assert!(section_args(&strings(&["--bogus"]), sidecar::FLAGS).is_err());
        let args = strings(&["--quick", "--nat-runs", "2"]);
        assert_eq!(section_args(&args, nat::FLAGS).unwrap(), strings(&["--nat-runs", "2"]));
        assert_eq!(section_args(&args, sidecar::FLAGS).unwrap(), strings(&["--quick"]));
        assert_eq!(section_args(&args, relay::FLAGS).unwrap(), strings(&[]));
    }
}
