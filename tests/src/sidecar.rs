//! Sidecars for end-to-end tests: a starter that points a real
//! `chatixia-sidecar` at a test registry on loopback, and a blocking IPC
//! client that plays the agent.

use crate::{Proc, Registry, TIMEOUT, bin_command_via};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running sidecar with its own IPC socket in the test's scratch dir.
pub struct Sidecar {
    pub proc: Proc,
    pub peer_id: String,
    pub socket: PathBuf,
    dir: PathBuf,
    api_key: String,
    registry_port: u16,
    env: Vec<(String, String)>,
    /// Program and arguments the sidecar is started through (empty: none).
    prefix: Vec<OsString>,
}

impl Sidecar {
    /// Starts a sidecar for `api_key` (whose peer_id is `peer_id`) and waits
    /// until its IPC socket is bound.
    pub fn start(reg: &Registry, dir: &Path, api_key: &str, peer_id: &str) -> Sidecar {
        Self::start_with(reg.port, dir, api_key, peer_id, &[])
    }

    /// Like [`Sidecar::start`] with extra environment variables.
    pub fn start_with(port: u16, dir: &Path, api_key: &str, peer_id: &str, env: &[(&str, &str)]) -> Sidecar {
        Self::start_via(&[], port, dir, api_key, peer_id, env)
    }

    /// Like [`Sidecar::start_with`], started through `prefix` (e.g. `ip
    /// netns exec NS`). `env` is applied last, so it can replace the
    /// loopback defaults (`TOKEN_URL`, `SIGNALING_URL`, `ICE_*`,
    /// `STUN_URLS`).
    pub fn start_via(
        prefix: &[OsString],
        port: u16,
        dir: &Path,
        api_key: &str,
        peer_id: &str,
        env: &[(&str, &str)],
    ) -> Sidecar {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let socket = dir.join(format!("{peer_id}.sock"));
        let proc = Self::launch(prefix, port, dir, api_key, &socket, &env);
        Sidecar {
            proc,
            peer_id: peer_id.to_owned(),
            socket,
            dir: dir.to_owned(),
            api_key: api_key.to_owned(),
            registry_port: port,
            env,
            prefix: prefix.to_vec(),
        }
    }

    fn launch(
        prefix: &[OsString],
        port: u16,
        dir: &Path,
        api_key: &str,
        socket: &Path,
        env: &[(String, String)],
    ) -> Proc {
        let mut cmd = bin_command_via(prefix, "chatixia-sidecar");
        cmd.current_dir(dir)
            .env("TOKEN_URL", format!("http://127.0.0.1:{port}/api/token"))
            .env("SIGNALING_URL", format!("ws://127.0.0.1:{port}/ws"))
            .env("IPC_SOCKET", socket)
            // Loopback only: tests never send to this machine's other
            // addresses, and no STUN server is contacted.
            .env("ICE_ALLOW_LOOPBACK", "1")
            .env("ICE_HOST_ADDRESSES", "127.0.0.1")
            .env("STUN_URLS", "")
            .env("STATE_DIR", dir.join("sidecar-state"))
            .env_remove("DEVICE_TOKEN")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env("RUST_LOG", std::env::var("CHATIXIA_E2E_LOG").unwrap_or_else(|_| "info".into()));
        // An empty key means none: the sidecar falls back to its device token.
        if api_key.is_empty() {
            cmd.env_remove("API_KEY");
        } else {
            cmd.env("API_KEY", api_key);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(cmd);
        proc.wait_for_line("IPC socket listening at");
        proc
    }

    /// kill -9, then a fresh process with the same identity and socket.
    pub fn restart(&mut self) {
        self.kill();
        self.proc = Self::launch(&self.prefix, self.registry_port, &self.dir, &self.api_key, &self.socket, &self.env);
    }

    /// kill -9: no goodbye to anyone.
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// Attaches a new agent and waits until the sidecar has taken it on.
    pub fn agent(&self) -> Agent {
        Agent::attach(&self.socket)
    }
}

/// An agent attached to a sidecar's IPC socket. Events are read by a
/// thread, so waiting for one has a timeout. Events passed over while
/// waiting for a particular one are kept, in order, for later calls.
pub struct Agent {
    stream: UnixStream,
    rx: mpsc::Receiver<Value>,
    stash: RefCell<VecDeque<Value>>,
}

impl Drop for Agent {
    /// Closes the connection for real: the reader thread holds a clone.
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Agent {
    pub fn connect(path: &Path) -> Agent {
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        let reader = stream.try_clone().expect("clone");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { return };
                if std::env::var_os("CHATIXIA_E2E_ECHO").is_some() {
                    eprintln!("agent< {line}");
                }
                let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("event is not JSON ({e}): {line}"));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Agent { stream, rx, stash: RefCell::new(VecDeque::new()) }
    }

    /// Connects and waits until the sidecar has taken this agent on (a
    /// `status` round trip), so that every later event reaches it.
    pub fn attach(path: &Path) -> Agent {
        let mut agent = Agent::connect(path);
        agent.status();
        agent
    }

    /// Writes raw bytes (tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("IPC write");
    }

    pub fn command(&mut self, kind: &str, payload: Value) {
        let mut line = json!({"type": kind, "payload": payload}).to_string();
        line.push('\n');
        self.send_raw(line.as_bytes());
    }

    pub fn send(&mut self, target: &str, message: Value) {
        self.command("send", json!({"target_peer": target, "message": message}));
    }

    /// The next event; panics after [`TIMEOUT`].
    pub fn next(&self) -> Value {
        self.next_within(TIMEOUT).expect("no IPC event within the timeout")
    }

    /// The next event, or `None` when nothing comes within `wait`.
    pub fn next_within(&self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.stash.borrow_mut().pop_front() {
            return Some(v);
        }
        match self.rx.recv_timeout(wait) {
            Ok(v) => Some(v),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("IPC connection closed"),
        }
    }

    /// The first event (stashed or new) that satisfies `pred`, within
    /// `wait`; the others stay for later calls.
    pub fn wait_for_within(&self, wait: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        {
            let mut stash = self.stash.borrow_mut();
            if let Some(i) = stash.iter().position(&pred) {
                return stash.remove(i).expect("index");
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(v) => self.stash.borrow_mut().push_back(v),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no {what} within {wait:?}; other events: {:?}", self.stash.borrow())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("IPC connection closed while waiting for {what}"),
            }
        }
    }

    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(TIMEOUT, what, pred)
    }

    /// Waits for an event of `kind` about `peer` (`peer_connected`, `peer_disconnected`).
    pub fn wait_peer_event(&self, kind: &str, peer: &str) -> Value {
        self.wait_for(&format!("{kind} {peer}"), |v| v["type"] == kind && v["payload"]["peer_id"] == peer)
    }

    /// Waits until every peer in `peers` was reported connected.
    pub fn wait_connected(&self, peers: &[&str]) {
        for p in peers {
            self.wait_peer_event("peer_connected", p);
        }
    }

    /// `list_peers`, answered by the next `peer_list` event.
    pub fn list_peers(&mut self) -> Vec<String> {
        self.command("list_peers", json!({}));
        let v = self.wait_for("peer_list", |v| v["type"] == "peer_list");
        serde_json::from_value(v["payload"]["peers"].clone()).expect("peers")
    }

    /// `status`, answered by the next `status` event.
    pub fn status(&mut self) -> Value {
        self.command("status", Value::Null);
        self.wait_for("status", |v| v["type"] == "status")["payload"].clone()
    }

    /// Waits for the next `message` event and returns its payload.
    pub fn next_message(&self) -> Value {
        self.wait_for("message", |v| v["type"] == "message")["payload"].clone()
    }

    /// Waits for the next `error` event and returns its payload.
    pub fn next_error(&self) -> Value {
        self.wait_for("error", |v| v["type"] == "error")["payload"].clone()
    }
}

/// A MeshMessage with the five keys the sidecar emits.
pub fn mesh_message(kind: &str, request_id: &str, payload: Value) -> Value {
    json!({"type": kind, "request_id": request_id, "source_agent": "", "target_agent": "", "payload": payload})
}
