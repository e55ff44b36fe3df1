//! Figures next to their budgets, and what the bench reads from /proc.

use std::time::Duration;

/// How a value is printed.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Bytes, printed in MiB.
    MiB,
    /// Per second, printed with thousands separators.
    PerSec(&'static str),
    /// Nanoseconds, printed in ms.
    Ms,
    /// Nanoseconds, printed in µs.
    Us,
    /// A percentage, printed as is.
    Percent(&'static str),
    /// A plain count.
    Count(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub enum Budget {
    AtMost(f64),
    AtLeast(f64),
    /// Exactly this value.
    Exactly(f64),
    /// Reported for context; counts neither way.
    None,
}

#[derive(Debug, Default)]
pub struct Report {
    pub figures: usize,
    pub over: usize,
}

impl Report {
    /// Prints `name: value unit (budget: …, PASS|OVER)`; `value` and the
    /// budget are in the unit's base (bytes, per second, nanoseconds).
    pub fn figure(&mut self, name: &str, value: f64, unit: Unit, budget: Budget) {
        let shown = format_value(value, unit, false);
        let verdict = match budget {
            Budget::AtMost(limit) => Some((format!("≤ {}", format_value(limit, unit, true)), value <= limit)),
            Budget::AtLeast(limit) => Some((format!("≥ {}", format_value(limit, unit, true)), value >= limit)),
            Budget::Exactly(want) => Some((format!("= {}", format_value(want, unit, true)), value == want)),
            Budget::None => None,
        };
        match verdict {
            Some((limit, pass)) => {
                self.figures += 1;
                if !pass {
                    self.over += 1;
                }
                println!("{name}: {shown} (budget: {limit}, {})", if pass { "PASS" } else { "OVER" });
            }
            None => println!("{name}: {shown} (budget: none)"),
        }
    }

    /// Notes which binary of `name` a section measures and its size, with a
    /// warning when it is not a release build (budgets are for those).
    /// What a section measures and under which conditions: the binary, the
    /// settings in this environment that its processes inherit (`inherited`),
    /// and how busy the machine is.
    pub fn note_setup(&self, name: &str, inherited: &[&str]) {
        let bin = chatixia_e2e::bin_path(name);
        let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
        self.note(&format!("{name} binary {} ({} bytes)", bin.display(), thousands(size)));
        if !bin.components().any(|c| c.as_os_str() == "release") {
            self.note("warning: that is not in a release directory; budgets are for release builds");
        }
        for name in inherited {
            if let Ok(value) = std::env::var(name) {
                self.note(&format!("warning: {name}={value} is set here and applies unless the bench sets it"));
            }
        }
        self.note(&format!(
            "{} cores, load average {} at start: speed figures need an otherwise quiet machine",
            cores(),
            load_average()
        ));
    }

    pub fn note(&self, text: &str) {
        println!("#   {text}");
    }
}

fn format_value(value: f64, unit: Unit, compact: bool) -> String {
    match unit {
        Unit::MiB => {
            let mib = value / (1024.0 * 1024.0);
            if compact && mib.fract() == 0.0 { format!("{mib:.0} MiB") } else { format!("{mib:.2} MiB") }
        }
        Unit::PerSec(what) => format!("{} {what}/s", thousands(value.round() as u64)),
        Unit::Ms => {
            let ms = value / 1e6;
            if compact && ms.fract() == 0.0 { format!("{ms:.0} ms") } else { format!("{ms:.3} ms") }
        }
        Unit::Us => {
            let us = value / 1e3;
            if compact && us.fract() == 0.0 { format!("{us:.0} µs") } else { format!("{us:.1} µs") }
        }
        Unit::Percent(what) => {
            if compact {
                format!("{value} % {what}")
            } else {
                format!("{value:.3} % {what}")
            }
        }
        Unit::Count(what) => format!("{} {what}", thousands(value.round() as u64)),
    }
}

pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `/proc/PID/status` of a process.
fn proc_status(pid: u32) -> Result<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))
}

/// The KiB figure of a `Key:  N kB` line of `/proc/PID/status`.
fn status_kib(status: &str, key: &str) -> Result<u64, String> {
    let line = status.lines().find(|l| l.starts_with(key)).ok_or(format!("no {key} line"))?;
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or(format!("bad {key} line"))
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    Ok(status_kib(&proc_status(pid)?, "VmRSS:")? * 1024)
}

/// What VmRSS is made of, for a note: private memory (`RssAnon`), mapped
/// files (`RssFile`), and how much of the latter is the executable itself.
/// The kernel maps a binary's page cache in large folios, so an executable
/// that was just built or copied is resident almost whole after a few
/// faults; that part is shared, clean and reclaimable, unlike `RssAnon`.
pub fn rss_breakdown(pid: u32) -> Result<String, String> {
    let status = proc_status(pid)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("/proc/{pid}/exe: {e}"))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| format!("/proc/{pid}/smaps: {e}"))?;
    let (mut in_exe, mut exe_kib) = (false, 0u64);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Rss:") if in_exe => exe_kib += words.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                in_exe = line.ends_with(&*exe.to_string_lossy());
            }
            _ => {}
        }
    }
    let mib = |k: u64| k as f64 / 1024.0;
    Ok(format!(
        "of which private (RssAnon) {:.2} MiB, mapped files (RssFile) {:.2} MiB: the executable {:.2} MiB, shared \
         libraries the rest",
        mib(status_kib(&status, "RssAnon:")?),
        mib(status_kib(&status, "RssFile:")?),
        mib(exe_kib)
    ))
}

/// User plus system CPU time of a whole process so far.
pub fn process_cpu(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').ok_or("bad stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or("bad stat field");
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(total * 1_000_000_000 / hz))
}

/// Busy and total CPU time of the whole machine so far, in clock ticks
/// summed over all cores (the `cpu` line of /proc/stat).
pub fn machine_cpu() -> Result<(u64, u64), String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = stat.lines().next().filter(|l| l.starts_with("cpu ")).ok_or("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Ok((busy, busy + at(3) + at(4)))
}

/// Number of threads of a process (entries of /proc/PID/task).
pub fn threads(pid: u32) -> Result<usize, String> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| format!("/proc/{pid}/task: {e}"))?;
    Ok(dir.count())
}

/// Names of a process's threads (/proc/PID/task/*/comm), sorted.
pub fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// CPU time of the calling thread so far.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Raises the soft open-files limit to at least `wanted` (within the hard
/// limit); children inherit it. Returns the soft limit now in force.
// rlim_t is u32 on 32-bit ARM, u64 elsewhere: the conversions are not
// useless everywhere.
#[allow(clippy::useless_conversion)]
pub fn raise_nofile(wanted: u64) -> Result<u64, String> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if u64::from(lim.rlim_cur) >= wanted {
        return Ok(lim.rlim_cur.into());
    }
    let wanted = libc::rlim_t::try_from(wanted).unwrap_or(libc::rlim_t::MAX);
    let raised = libc::rlimit { rlim_cur: wanted.min(lim.rlim_max), rlim_max: lim.rlim_max };
    // SAFETY: `raised` is a valid rlimit within the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok(raised.rlim_cur.into())
}

/// Percentile `p` (0..=100) of sorted values, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_breakdown_finds_the_executable_among_the_mappings() {
        let note = rss_breakdown(std::process::id()).unwrap();
        let exe_mib: f64 =
            note.split("the executable ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
        assert!(exe_mib > 0.0, "{note}");
    }

    #[test]
    fn formats_and_ranks() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(format_value(4.0 * 1024.0 * 1024.0, Unit::MiB, true), "4 MiB");
        assert_eq!(format_value(50_000.0, Unit::PerSec("frames"), true), "50,000 frames/s");
        assert_eq!(format_value(1_000_000.0, Unit::Ms, true), "1 ms");
        assert_eq!(format_value(250_000.0, Unit::Us, true), "250 µs");
        assert_eq!(format_value(0.1, Unit::Percent("of one core"), true), "0.1 % of one core");
        assert_eq!(format_value(2.0, Unit::Count("threads"), true), "2 threads");
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
    }
}
