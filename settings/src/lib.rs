//! Every setting has one name, used as the environment variable (`PORT`), as
//! the flag (`--port`) and in `.env`. A flag wins over the environment, the
//! environment over `.env`, and `.env` over the built-in default.
//!
//! Kept dependency-free and tiny: the sidecar's binary budget is 4 MiB.
//! [`systemd`], [`durable`] and [`text`] are the other pieces of process glue
//! both daemons share.

pub mod durable;
pub mod log_budget;
pub mod systemd;
pub mod text;
pub mod window;

use std::collections::HashMap;
use std::fmt::Write as _;

/// One setting. `switch` settings take no value on the command line
/// (`--dev`); in the environment they are on when set to `1` or `true`.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
    pub switch: bool,
    /// A flag other than the one derived from `name`.
    pub flag: Option<&'static str>,
}

impl Setting {
    pub const fn value(name: &'static str, default: Option<&'static str>, help: &'static str) -> Self {
        Setting { name, default, help, switch: false, flag: None }
    }
    pub const fn switch(name: &'static str, help: &'static str) -> Self {
        Setting { name, default: None, help, switch: true, flag: None }
    }
    pub const fn with_flag(mut self, flag: &'static str) -> Self {
        self.flag = Some(flag);
        self
    }
    fn flag(&self) -> String {
        if let Some(flag) = self.flag {
            return flag.to_owned();
        }
        format!("--{}", self.name.to_ascii_lowercase().replace('_', "-"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// `--help` was given; the text is the usage to print.
    Help(String),
    Invalid(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Help(text) => f.write_str(text),
            ParseError::Invalid(msg) => f.write_str(msg),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: HashMap<&'static str, String>,
    /// Arguments that are not flags, in order (subcommands and their operands).
    pub positional: Vec<String>,
}

impl Settings {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn is_on(&self, name: &str) -> bool {
        matches!(self.get(name), Some("1" | "true" | "yes" | "on"))
    }

    /// A parsed value, with an error naming the setting when it is malformed.
    pub fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| format!("{name}={v:?}: {e}")),
        }
    }
}

/// The usage text that `--help` prints.
pub fn usage(program: &str, about: &str, settings: &[Setting]) -> String {
    let mut out = format!("{program}: {about}\n\nSettings (flag, or environment variable / .env entry):\n");
    for s in settings {
        let flag = if s.switch { s.flag() } else { format!("{} <value>", s.flag()) };
        let _ = write!(out, "  {flag:<32} {:<22} {}", s.name, s.help);
        if let Some(d) = s.default {
            let _ = write!(out, " [default: {d}]");
        }
        out.push('\n');
    }
    out
}

/// Parses `.env` text: `NAME=value` lines, `#` comments, optional `export`
/// and surrounding quotes.
pub fn parse_dotenv(text: &str) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            vars.insert(k.trim().to_owned(), v.to_owned());
        }
    }
    vars
}

/// Resolves `settings` from `args` (without the program name), the
/// environment lookup `env`, and `.env` variables.
pub fn resolve(
    program: &str,
    about: &str,
    settings: &[Setting],
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
    dotenv: &HashMap<String, String>,
) -> Result<Settings, ParseError> {
    let mut out = Settings::default();
    for s in settings {
        let v = env(s.name).or_else(|| dotenv.get(s.name).cloned()).or(s.default.map(str::to_owned));
        if let Some(v) = v {
            out.values.insert(s.name, v);
        }
    }
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Err(ParseError::Help(usage(program, about, settings)));
        }
        if !arg.starts_with("--") {
            out.positional.push(arg);
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let Some(s) = settings.iter().find(|s| s.flag() == flag) else {
            return Err(ParseError::Invalid(format!("unknown flag {flag} (see --help)")));
        };
        let value = if s.switch {
            inline.unwrap_or_else(|| "1".to_owned())
        } else {
            match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(ParseError::Invalid(format!("{flag} needs a value"))),
            }
        };
        out.values.insert(s.name, value);
    }
    Ok(out)
}

/// [`resolve`] against the process: `std::env::args`, the environment, and
/// `./.env` when present.
pub fn from_process(program: &str, about: &str, settings: &[Setting]) -> Result<Settings, ParseError> {
    let dotenv = std::fs::read_to_string(".env").map(|t| parse_dotenv(&t)).unwrap_or_default();
    resolve(program, about, settings, std::env::args().skip(1), |k| std::env::var(k).ok(), &dotenv)
}

/// [`from_process`] for a daemon's `main`: `--help` prints the usage and a
/// bad flag its error, each ending the process with the right status (0 or
/// 2); otherwise the settings, with logging set up from `RUST_LOG`.
pub fn daemon_settings(program: &str, about: &str, settings: &[Setting]) -> Result<Settings, std::process::ExitCode> {
    one_malloc_arena();
    let resolved = match from_process(program, about, settings) {
        Ok(s) => s,
        Err(ParseError::Help(text)) => {
            print!("{text}");
            return Err(std::process::ExitCode::SUCCESS);
        }
        Err(ParseError::Invalid(msg)) => {
            eprintln!("{program}: {msg}");
            return Err(std::process::ExitCode::from(2));
        }
    };
    let logger = env_logger::Builder::new()
        .parse_filters(QUIET_DEPENDENCIES)
        .parse_filters(resolved.get("RUST_LOG").unwrap_or("info"))
        .format_timestamp_millis()
        .build();
    log_budget::Limited::install(logger);
    Ok(resolved)
}

/// Keeps glibc's malloc to its main arena. By default every thread that
/// allocates gets an arena of its own, and what it touched stays resident
/// after the thread ends: the sidecar's short-lived helpers (a name lookup,
/// an HTTP request) left about a quarter MiB each. The daemons allocate on
/// one thread, so contention does not matter. Call before any thread.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called before threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands memory that malloc holds free back to the system. glibc keeps
/// freed memory for reuse, and what thousands of closed connections had
/// used stays resident until trimmed. A few milliseconds on a large heap;
/// call it after a mass of frees, not routinely.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of malloc's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Dependencies that log every step at info level (the TURN crates, and
/// `tracing` spans turned into log lines): warnings only, unless `RUST_LOG`
/// names them (`turn_client_proto=debug`); a bare level such as `debug` is
/// less specific and leaves them quiet.
const QUIET_DEPENDENCIES: &str =
    "tracing::span=warn,turn_client_proto=warn,turn_server_proto=warn,turn_types=warn,stun_proto=warn,stun_types=warn";

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &[Setting] = &[
        Setting::value("PORT", Some("8080"), "port"),
        Setting::value("STATE_DIR", None, "state"),
        Setting::switch("CHATIXIA_DEV", "dev mode").with_flag("--dev"),
    ];

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flag_beats_env_beats_dotenv_beats_default() {
        let dotenv = parse_dotenv("PORT=1\nSTATE_DIR='/d'\n# c\nexport CHATIXIA_DEV=\"1\"\n");
        let none = |_: &str| None;
        let s = resolve("p", "a", SETTINGS, args(&[]), none, &HashMap::new()).unwrap();
        assert_eq!(s.get("PORT"), Some("8080"));
        let s = resolve("p", "a", SETTINGS, args(&[]), none, &dotenv).unwrap();
        assert_eq!(s.get("PORT"), Some("1"));
        assert_eq!(s.get("STATE_DIR"), Some("/d"));
        assert!(s.is_on("CHATIXIA_DEV"));
        let env = |k: &str| (k == "PORT").then(|| "2".to_owned());
        let s = resolve("p", "a", SETTINGS, args(&[]), env, &dotenv).unwrap();
        assert_eq!(s.get("PORT"), Some("2"));
        let s = resolve("p", "a", SETTINGS, args(&["--port", "3"]), env, &dotenv).unwrap();
        assert_eq!(s.parse::<u16>("PORT").unwrap(), Some(3));
        let s = resolve("p", "a", SETTINGS, args(&["--port=4", "sub"]), env, &dotenv).unwrap();
        assert_eq!(s.get("PORT"), Some("4"));
        assert_eq!(s.positional, vec!["sub".to_owned()]);
    }

    #[test]
    fn switches_and_errors() {
        let none = |_: &str| None;
        let s = resolve("p", "a", SETTINGS, args(&["--dev"]), none, &HashMap::new()).unwrap();
        assert!(s.is_on("CHATIXIA_DEV"));
        let e = resolve("p", "a", SETTINGS, args(&["--nope"]), none, &HashMap::new()).unwrap_err();
        assert!(matches!(e, ParseError::Invalid(m) if m.contains("--nope")));
        let e = resolve("p", "a", SETTINGS, args(&["--port"]), none, &HashMap::new()).unwrap_err();
        assert!(matches!(e, ParseError::Invalid(m) if m.contains("needs a value")));
        let e = resolve("p", "a", SETTINGS, args(&["--help"]), none, &HashMap::new()).unwrap_err();
        assert!(matches!(e, ParseError::Help(t) if t.contains("--state-dir <value>") && t.contains("[default: 8080]")));
        let s = resolve("p", "a", SETTINGS, args(&["--port", "x"]), none, &HashMap::new()).unwrap();
        assert!(s.parse::<u16>("PORT").unwrap_err().contains("PORT"));
    }
}
