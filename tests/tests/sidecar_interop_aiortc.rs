//! Interop with an independent WebRTC stack (docs/PROTOCOL.md §4.6, §5.1): aiortc, driven by
//! tests/interop/aiortc_peer.py, joins our registry as peer `bravo` and
//! links with a real sidecar `alpha`, once as the offerer and once as the
//! answerer. Messages go both ways between aiortc and alpha's agent, and the
//! sidecar itself answers aiortc's mesh `ping`.
//!
//! Needs Python with aiortc: `scripts/aiortc-venv.sh` creates
//! `target/aiortc-venv` (scripts/test.sh runs it). `CHATIXIA_AIORTC_PYTHON`
//! points elsewhere; `CHATIXIA_SKIP_AIORTC=1` skips these tests (they pass
//! with a notice) on machines that cannot install it.

use chatixia_e2e::sidecar::{Agent, Sidecar, mesh_message};
use chatixia_e2e::{Registry, Scratch, TIMEOUT};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The Python with aiortc, or `None` when the tests are to be skipped.
fn aiortc_python() -> Option<PathBuf> {
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
struct PyPeer {
    child: Child,
    rx: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl PyPeer {
    fn spawn(python: &PathBuf, reg: &Registry, args: &[&str]) -> PyPeer {
        let script = workspace_root().join("tests/interop/aiortc_peer.py");
        let mut cmd = Command::new(python);
        cmd.arg("-u")
            .arg(script)
            .args(["--registry", &reg.http(""), "--api-key", "key-bravo", "--timeout", "30"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn aiortc_peer.py");
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

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    fn wait_for_line(&self, prefix: &str) -> String {
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
    fn wait_exit(&mut self) -> Option<i32> {
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
fn exchange(a: &mut Agent, py: &mut PyPeer) {
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

#[test]
fn aiortc_offers_and_our_sidecar_answers() {
    let Some(python) = aiortc_python() else { return };
    let dir = Scratch::new("aiortc-offer");
    let reg = Registry::start_default(dir.path());
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let mut a = alpha.agent();
    alpha.proc.wait_for_line("connected to the registry as alpha");

    let t0 = Instant::now();
    let mut py = PyPeer::spawn(&python, &reg, &["--role", "offer", "--target", "alpha"]);
    py.wait_for_line("offer sent");
    let offered = Instant::now();
    a.wait_peer_event("peer_connected", "bravo");
    let open = py.wait_for_line("open");
    eprintln!(
        "aiortc offers: offer -> peer_connected at our sidecar {:?}; aiortc {open} ms; start -> open {:?}",
        offered.elapsed(),
        t0.elapsed()
    );
    exchange(&mut a, &mut py);
}

#[test]
fn our_sidecar_offers_and_aiortc_answers() {
    let Some(python) = aiortc_python() else { return };
    let dir = Scratch::new("aiortc-answer");
    let reg = Registry::start_default(dir.path());
    let mut py = PyPeer::spawn(&python, &reg, &["--role", "answer"]);
    py.wait_for_line("registered");

    // The newcomer offers to everyone in its peer_list: here, aiortc.
    let t0 = Instant::now();
    let alpha = Sidecar::start(&reg, dir.path(), "key-alpha", "alpha");
    let mut a = alpha.agent();
    let offer = py.wait_for_line("offer from");
    assert_eq!(offer, "offer from alpha");
    a.wait_peer_event("peer_connected", "bravo");
    let open = py.wait_for_line("open");
    let channel = py.log().lines().find(|l| l.starts_with("channel ")).map(str::to_owned);
    eprintln!("our sidecar offers: sidecar start -> peer_connected {:?}; aiortc {open} ms; {channel:?}", t0.elapsed());
    assert!(channel.is_some_and(|c| c.contains("label=mesh ordered=True")), "log:\n{}", py.log());
    exchange(&mut a, &mut py);
}
