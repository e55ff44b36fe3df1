//! Harness for end-to-end tests: starts the real binaries on loopback in a
//! scratch directory, waits for their readiness line (an event, not a
//! sleep), and offers small WebSocket and HTTP clients.
//!
//! The binaries must be built first (`cargo build --bins`); the test
//! command in the README does that.

pub mod aiortc;
pub mod jwt;
pub mod netlab;
pub mod sidecar;
pub mod tls_proxy;
pub mod ws;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ws::WsClient;

/// Safety net for anything awaited in a test; never a synchronisation tool.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Path of a workspace binary next to the running test's profile directory.
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("CHATIXIA_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    // Test executables run from target/<profile>/deps/, binaries such as
    // the bench from target/<profile>/: the wanted binary is next to the
    // running one or one directory up.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    let beside = dir.join(name);
    if beside.is_file() {
        return beside;
    }
    let path = dir.parent().expect("target dir").join(name);
    assert!(path.exists(), "{} not found: run `cargo build --bins` first", path.display());
    path
}

/// A command running a workspace binary. With `CHATIXIA_BIN_RUNNER` set
/// (e.g. `qemu-aarch64-static` when the tests themselves run emulated), the
/// binary is started through that runner, since foreign executables cannot
/// be exec'd directly without binfmt_misc.
pub fn bin_command(name: &str) -> Command {
    bin_command_via(&[], name)
}

/// Like [`bin_command`], started through `prefix` (a program and its
/// arguments, e.g. `ip netns exec NS`), which then runs the runner, if any,
/// and the binary.
pub fn bin_command_via(prefix: &[OsString], name: &str) -> Command {
    let mut argv: Vec<OsString> = prefix.to_vec();
    if let Some(runner) = std::env::var("CHATIXIA_BIN_RUNNER").ok().filter(|r| !r.is_empty()) {
        argv.extend(runner.split_whitespace().map(OsString::from));
    }
    argv.push(bin_path(name).into_os_string());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
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
    /// In a mutex so that a `Proc` (and a [`Registry`]) can be used from
    /// another thread, e.g. one inside a lab's network namespace.
    rx: Mutex<mpsc::Receiver<String>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        Self::collect(child, stderr)
    }

    /// Like [`Proc::spawn`] for programs that log to stdout: stdout and
    /// stderr are collected as one stream of lines.
    pub fn spawn_merged(mut cmd: Command) -> Proc {
        let (reader, writer) = std::io::pipe().expect("pipe");
        cmd.stdin(Stdio::null()).stdout(writer.try_clone().expect("pipe clone")).stderr(writer);
        let child = cmd.spawn().expect("spawn");
        // `cmd` still holds our copies of the write end: without dropping
        // them the reader would never see end of file.
        drop(cmd);
        Self::collect(child, reader)
    }

    fn collect(child: Child, stream: impl std::io::Read + Send + 'static) -> Proc {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if std::env::var_os("CHATIXIA_E2E_ECHO").is_some() {
                    eprintln!("| {line}");
                }
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc { child, lines, rx: Mutex::new(rx) }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.lock().unwrap().recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no line containing {needle:?} within {TIMEOUT:?}; log:\n{}", self.log()),
            }
        }
    }

    /// Waits until a line containing each of `needles` has come, in any
    /// order.
    pub fn wait_for_lines(&self, needles: &[&str]) {
        let mut missing: Vec<&str> = needles.to_vec();
        let deadline = Instant::now() + TIMEOUT;
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.lock().unwrap().recv_timeout(left) {
                Ok(line) => missing.retain(|n| !line.contains(n)),
                Err(_) => panic!("no lines containing {missing:?} within {TIMEOUT:?}; log:\n{}", self.log()),
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

    /// Waits for exit and returns the status code (None when killed). Then
    /// every line the process wrote is in [`Proc::log`].
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + TIMEOUT;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status.code();
            }
            assert!(Instant::now() < deadline, "process did not exit within {TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread drops its sender at end of file.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.lock().unwrap().recv_timeout(left) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break code,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("stderr still open after exit"),
            }
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
    /// Program and arguments the registry is started through (empty: none).
    prefix: Vec<OsString>,
    /// Its `--bind` address.
    bind: String,
}

/// The keys most tests use: three agents and an admin.
pub const DEFAULT_KEYS: &str = r#"{"keys":{
    "key-alpha":{"peer_id":"alpha","role":"agent"},
    "key-bravo":{"peer_id":"bravo","role":"agent"},
    "key-charlie":{"peer_id":"charlie","role":"agent"},
    "key-admin":{"peer_id":"admin-1","role":"admin"}}}"#;

/// A fixed `SIGNALING_SECRET` (32 bytes) for tests that forge tokens.
pub const TEST_SECRET: &str = "chatixia-e2e-secret-0123456789ab";

impl Registry {
    /// The command that starts a registry in `dir` on an ephemeral port of
    /// 127.0.0.1, for tests that watch a start fail.
    pub fn command(dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Self::base_command(&[], "127.0.0.1", dir, 0);
        cmd.args(extra_args).envs(env.iter().copied());
        cmd
    }

    fn base_command(prefix: &[OsString], bind: &str, dir: &Path, port: u16) -> Command {
        let mut cmd = bin_command_via(prefix, "chatixia-registry");
        cmd.current_dir(dir)
            .args(["--bind", bind, "--port", &port.to_string()])
            .env_remove("SIGNALING_SECRET")
            // The relay is off unless a test asks for it: parallel tests
            // would race for its default port.
            .env("RELAY_PORT", "0")
            .env("RUST_LOG", std::env::var("CHATIXIA_E2E_LOG").unwrap_or_else(|_| "info".into()));
        cmd
    }

    /// Starts a registry in `dir` (which holds `api_keys.json` if the test
    /// wrote one) on an ephemeral port.
    pub fn start_in(dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Registry {
        Self::start_via(&[], "127.0.0.1", dir, extra_args, env)
    }

    /// Like [`Registry::start_in`], started through `prefix` (e.g. `ip netns
    /// exec NS`) and listening on `bind`. [`Registry::http`] and the
    /// helpers built on it still name 127.0.0.1, so with a prefix they work
    /// only from inside that network namespace.
    pub fn start_via(
        prefix: &[OsString],
        bind: &str,
        dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Registry {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::launch(prefix.to_vec(), bind.to_owned(), dir.to_owned(), 0, extra_args, env)
    }

    /// Writes [`DEFAULT_KEYS`] into `dir` and starts a registry there.
    pub fn start_default(dir: &Path) -> Registry {
        std::fs::write(dir.join("api_keys.json"), DEFAULT_KEYS).unwrap();
        Self::start_in(dir, &[], &[])
    }

    /// Like [`Registry::start_default`], signing with [`TEST_SECRET`] so the
    /// test can forge tokens.
    pub fn start_with_secret(dir: &Path) -> Registry {
        std::fs::write(dir.join("api_keys.json"), DEFAULT_KEYS).unwrap();
        Self::start_in(dir, &[], &[("SIGNALING_SECRET", TEST_SECRET)])
    }

    fn launch(
        prefix: Vec<OsString>,
        bind: String,
        dir: PathBuf,
        port: u16,
        extra_args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Registry {
        let mut cmd = Self::base_command(&prefix, &bind, &dir, port);
        cmd.args(&extra_args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(cmd);
        let line = proc.wait_for_line("listening on http://");
        let port = parse_port(&line).unwrap_or_else(|| panic!("no port in {line:?}"));
        Registry { proc, port, dir, extra_args, env, prefix, bind }
    }

    /// Stops the process (SIGKILL) and starts it again on the same port with
    /// the same directory, flags and environment.
    pub fn restart(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let fresh = Self::launch(
            self.prefix.clone(),
            self.bind.clone(),
            self.dir.clone(),
            self.port,
            self.extra_args.clone(),
            self.env.clone(),
        );
        *self = fresh;
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?token={token}", self.port)
    }

    /// Exchanges an API key for a JWT; panics unless it succeeds. Each call
    /// counts against the token rate limit (burst 20 per client address).
    pub fn token(&self, api_key: &str) -> String {
        let reply = self.request("POST", "/api/token", &[("X-API-Key", api_key)], None);
        assert_eq!(reply.status, 200, "token for {api_key}: {reply:?}");
        reply.json()["token"].as_str().expect("token field").to_owned()
    }

    /// A WebSocket of the key's identity (token exchange, then upgrade).
    pub async fn connect(&self, api_key: &str) -> WsClient {
        let reply = self.request("POST", "/api/token", &[("X-API-Key", api_key)], None);
        assert_eq!(reply.status, 200, "token for {api_key}: {reply:?}");
        let body = reply.json();
        let (token, peer_id) = (body["token"].as_str().unwrap(), body["peer_id"].as_str().unwrap());
        WsClient::connect(&self.ws_url(token), peer_id).await.expect("WebSocket upgrade")
    }

    /// Replaces the keys file.
    pub fn write_keys(&self, json: &str) {
        std::fs::write(self.dir.join("api_keys.json"), json).unwrap();
    }

    /// Replaces the keys file, sends SIGHUP and waits until the registry has
    /// reloaded it.
    pub fn reload_keys(&self, json: &str) {
        self.write_keys(json);
        self.proc.signal("HUP");
        self.proc.wait_for_line("reloaded");
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.request("POST", path, &[("Content-Type", "application/json")], Some(body))
    }

    /// A JSON POST with `X-API-Key`, as the original Python agent sends
    /// its registry and task hub writes.
    pub fn post_as(&self, api_key: &str, path: &str, body: &str) -> Reply {
        self.request("POST", path, &[("Content-Type", "application/json"), ("X-API-Key", api_key)], Some(body))
    }

    /// Any request; non-2xx answers are returned, not errors.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
        let mut req = ureq::http::Request::builder().method(method).uri(self.http(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let agent = http_agent();
        let resp = match body {
            Some(b) => agent.run(req.body(b.to_owned()).expect("request")),
            None => agent.run(req.body(()).expect("request")),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = resp.body_mut().read_to_string().expect("response body");
        Reply { status: resp.status().as_u16(), headers, body }
    }
}

/// The value of one sample of a Prometheus text (`name` with its labels,
/// exactly as written), or `None` when it is not there.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A port of 127.0.0.1 that was free for UDP and TCP a moment ago, for a
/// server that needs the same number on both (the registry's relay).
pub fn free_udp_tcp_port() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = udp.local_addr().expect("local address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP in 100 tries");
}

/// An HTTP answer, read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn parse_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("http://")? + 7..];
    let host_port = rest.split([' ', '/', ')']).next()?;
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
