//! Harness for end-to-end tests: starts the real binaries on loopback in a
//! scratch directory, waits for their readiness line (an event, not a
//! sleep), and offers small WebSocket and HTTP clients.
//!
//! The binaries must be built first (`cargo build --bins`); the test
//! command in the README does that.

pub mod ws;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Safety net for anything awaited in a test; never a synchronisation tool.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Path of a workspace binary next to the running test's profile directory.
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("CHATIXIA_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} not found: run `cargo build --bins` first", path.display());
    path
}

/// A fresh scratch directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("chatixia-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running child process whose stderr lines are collected and can be
/// awaited.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("CHATIXIA_E2E_ECHO").is_some() {
                    eprintln!("| {line}");
                }
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc { child, lines, rx }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no line containing {needle:?} within {TIMEOUT:?}; log:\n{}", self.log()),
            }
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig} failed");
    }

    /// Waits for exit and returns the status code (None when killed).
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "process did not exit within {TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry on 127.0.0.1 with its own scratch directory, keys file and
/// state directory.
pub struct Registry {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The keys most tests use: three agents and an admin.
pub const DEFAULT_KEYS: &str = r#"{"keys":{
    "key-alpha":{"peer_id":"alpha","role":"agent"},
    "key-bravo":{"peer_id":"bravo","role":"agent"},
    "key-charlie":{"peer_id":"charlie","role":"agent"},
    "key-admin":{"peer_id":"admin-1","role":"admin"}}}"#;

impl Registry {
    /// Starts a registry in `dir` (which holds `api_keys.json` if the test
    /// wrote one) on an ephemeral port.
    pub fn start_in(dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Registry {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::launch(dir.to_owned(), 0, extra_args, env)
    }

    /// Writes [`DEFAULT_KEYS`] into `dir` and starts a registry there.
    pub fn start_default(dir: &Path) -> Registry {
        std::fs::write(dir.join("api_keys.json"), DEFAULT_KEYS).unwrap();
        Self::start_in(dir, &[], &[])
    }

    fn launch(dir: PathBuf, port: u16, extra_args: Vec<String>, env: Vec<(String, String)>) -> Registry {
        let mut cmd = Command::new(bin_path("chatixia-registry"));
        cmd.current_dir(&dir)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(&extra_args)
            .env_remove("SIGNALING_SECRET")
            .env("RUST_LOG", std::env::var("CHATIXIA_E2E_LOG").unwrap_or_else(|_| "info".into()));
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(cmd);
        let line = proc.wait_for_line("listening on http://");
        let port = parse_port(&line).unwrap_or_else(|| panic!("no port in {line:?}"));
        Registry { proc, port, dir, extra_args, env }
    }

    /// Stops the process (SIGKILL) and starts it again on the same port with
    /// the same directory, flags and environment.
    pub fn restart(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let fresh = Self::launch(self.dir.clone(), self.port, self.extra_args.clone(), self.env.clone());
        *self = fresh;
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?token={token}", self.port)
    }

    /// Exchanges an API key for a JWT; panics unless it succeeds.
    pub fn token(&self, api_key: &str) -> String {
        let resp: serde_json::Value = http_agent()
            .post(&self.http("/api/token"))
            .header("X-API-Key", api_key)
            .send_empty()
            .expect("token request")
            .body_mut()
            .read_json()
            .expect("token json");
        resp["token"].as_str().expect("token field").to_owned()
    }
}

fn parse_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("http://")? + 7..];
    let host_port = rest.split(|c: char| c == ' ' || c == '/' || c == ')').next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// A ureq agent that returns non-2xx responses instead of errors, so tests
/// can assert on status codes.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(TIMEOUT)).build().into()
}

/// Runs an async test body on smol with the global safety-net timeout.
pub fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
    smol::block_on(async {
        futures_lite::future::or(async { Some(fut.await) }, async {
            smol::Timer::after(TIMEOUT * 3).await;
            None
        })
        .await
        .expect("test timed out")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_port_of_the_readiness_line() {
        let line = "[INFO  chatixia_registry::shell] listening on http://127.0.0.1:40123 (WebSocket at ws://…)";
        assert_eq!(super::parse_port(line), Some(40123));
    }
}
