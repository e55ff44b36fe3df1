//! aiortc, an independent WebRTC stack, as a mesh peer for interop tests:
//! tests/interop/aiortc_peer.py as a child process whose progress lines can
//! be awaited, and the exchange of messages both ways once it is linked.
//!
//! Needs Python with aiortc: `scripts/aiortc-venv.sh` creates
//! `target/aiortc-venv` (scripts/test.sh runs it). `CHATIXIA_AIORTC_PYTHON`
//! points elsewhere; `CHATIXIA_SKIP_AIORTC=1` skips these tests (they pass
//! with a notice) on machines that cannot install it.

use crate::TIMEOUT;
use crate::sidecar::{Agent, mesh_message};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The Python with aiortc, or `None` when the tests are to be skipped.
pub fn aiortc_python() -> Option<PathBuf> {
    if std::env::var("CHATIXIA_SKIP_AIORTC").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: aiortc interop test (CHATIXIA_SKIP_AIORTC=1)");
        return None;
    }
    let python = match std::env::var_os("CHATIXIA_AIORTC_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/aiortc-venv/bin/python"),
    };
    let works = Command::new(&python)
        .args(["-c", "import aiortc, websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        works,
        "no Python with aiortc at {}: run scripts/aiortc-venv.sh (creates target/aiortc-venv), or set \
         CHATIXIA_AIORTC_PYTHON to a python that has aiortc and websockets, or set CHATIXIA_SKIP_AIORTC=1 \
         to skip the aiortc interop tests",
        python.display()
    );
    Some(python)
}

/// tests/interop/aiortc_peer.py as a child: stdout lines can be awaited,
/// stderr is kept for failure reports.
pub struct PyPeer {
    child: Child,
    rx: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl PyPeer {
    /// Runs the script with `python` (a command, so that it can be started
    /// inside a network namespace) against the registry at `registry`
    /// (`http://host:port`) as the holder of `key-bravo`.
    pub fn spawn(mut python: Command, registry: &str, args: &[&str]) -> PyPeer {
        let script = workspace_root().join("tests/interop/aiortc_peer.py");
        let cmd = &mut python;
        cmd.arg("-u")
            .arg(script)
            .args(["--registry", registry, "--api-key", "key-bravo", "--timeout", "30"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = python.spawn().expect("spawn aiortc_peer.py");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if std::env::var_os("CHATIXIA_E2E_ECHO").is_some() {
                    eprintln!("py| {line}");
                }
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let err = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var_os("CHATIXIA_E2E_ECHO").is_some() {
                    eprintln!("py! {line}");
                }
                sink.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        PyPeer { child, rx, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub fn wait_for_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => panic!("aiortc peer printed no {prefix:?} line within {TIMEOUT:?}; log:\n{}", self.log()),
            }
        }
    }

    /// Waits for the exit (its own timeout is 30 s) and for the end of stdout.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "aiortc peer did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(_line) = self.rx.recv_timeout(TIMEOUT) {}
        status.code()
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Once alpha and the aiortc peer (bravo) are linked: messages both ways,
/// the sidecar's own pong, a large message, then a clean goodbye.
pub fn exchange(a: &mut Agent, py: &mut PyPeer) {
    // aiortc -> our agent, exactly as sent.
    assert_eq!(
        a.next_message(),
        json!({"from_peer": "bravo", "message": {"type": "hello", "request_id": "r1", "source_agent": "py",
                                                  "target_agent": "", "payload": {"n": 1}}})
    );
    // aiortc's mesh ping is answered by our sidecar itself.
    py.wait_for_line("got pong p1");

    // Our agent -> aiortc -> back; the ping never reached our agent.
    let task = mesh_message("task_request", "t-1", json!({"text": "grüße ✓", "n": [1, 2]}));
    a.send("bravo", task.clone());
    py.wait_for_line("got task_request t-1");
    let echo = a.next_message();
    assert_eq!(echo["from_peer"], "bravo");
    assert_eq!(echo["message"]["type"], "echo", "{echo}");
    assert_eq!(echo["message"]["request_id"], "t-1");
    assert_eq!(echo["message"]["payload"], task);

    // A large message, fragmented by SCTP, both ways.
    let big = mesh_message("big", "b-1", json!("x".repeat(60_000)));
    a.send("bravo", big.clone());
    py.wait_for_line("got big b-1");
    let echo = a.next_message();
    assert_eq!((&echo["message"]["type"], &echo["message"]["payload"]), (&json!("echo"), &big));

    // Our agent's mesh ping is answered by aiortc (the script plays a
    // sidecar there).
    a.send("bravo", mesh_message("ping", "p-2", Value::Null));
    let pong = a.next_message();
    assert_eq!((&pong["message"]["type"], &pong["message"]["request_id"]), (&json!("pong"), &json!("p-2")));

    a.send("bravo", mesh_message("bye", "z", Value::Null));
    py.wait_for_line("done");
    assert_eq!(py.wait_exit(), Some(0), "aiortc peer failed; log:\n{}", py.log());
    a.wait_peer_event("peer_disconnected", "bravo");
    let log = py.log();
    let trickled: Vec<&str> = log.lines().filter(|l| l.starts_with("trickled ")).collect();
    eprintln!("candidates our sidecar trickled to aiortc: {trickled:?}");
}
