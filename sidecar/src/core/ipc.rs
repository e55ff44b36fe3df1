//! The agents' side of the sidecar, without the socket: who is attached,
//! what each one still has to receive, what is kept while nobody is
//! attached, when a slow agent is cut off, and how a byte stream from an
//! agent becomes commands (newline-delimited JSON, docs/PROTOCOL.md "IPC").
//! The shell (`shell/ipc.rs`) only moves bytes between sockets and this.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use chatixia_protocol::ipc::{Command, ErrorEvent, Event, error_codes};

/// Identifies one attached agent, for replies to its own commands.
pub type AgentId = u64;

/// Limits of docs/PROTOCOL.md "IPC".
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;
pub const DEFAULT_BACKLOG_EVENTS: usize = 1024;
pub const DEFAULT_MAX_AGENTS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcConfig {
    /// Longest command line accepted; longer ones are skipped with `too_large`.
    pub max_line_bytes: usize,
    /// Events kept while no agent is attached; the oldest go first.
    pub backlog_events: usize,
    /// Bytes kept in that backlog, so 1024 large messages cannot take 64 MiB.
    pub backlog_bytes: usize,
    /// Bytes waiting for one agent. An agent that lets this much pile up is
    /// not reading; it is disconnected rather than slowing the mesh down.
    pub agent_queue_bytes: usize,
    /// Agents attached at once. Each may hold `agent_queue_bytes`, so this
    /// bounds what agents that do not read can cost together.
    pub max_agents: usize,
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            backlog_events: DEFAULT_BACKLOG_EVENTS,
            backlog_bytes: 8 << 20,
            agent_queue_bytes: 4 << 20,
            max_agents: DEFAULT_MAX_AGENTS,
        }
    }
}

/// One input line, as far as framing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Not UTF-8.
    Binary,
    /// Longer than the limit; the rest of it up to the newline is skipped.
    TooLong,
}

/// Cuts a byte stream into lines without ever holding more than the limit.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    limit: usize,
    /// Inside an over-long line, which was already reported.
    skipping: bool,
}

impl LineSplitter {
    pub fn new(limit: usize) -> Self {
        LineSplitter { buf: Vec::new(), limit, skipping: false }
    }

    /// Adds received bytes and appends every finished line to `out`. Empty
    /// lines are skipped; a trailing `\r` is removed.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Line>) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (chunk, rest, ends) = match newline {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if !self.skipping {
                if self.buf.len() + chunk.len() > self.limit {
                    self.buf = Vec::new();
                    self.skipping = true;
                    out.push(Line::TooLong);
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            if ends {
                if !self.skipping {
                    let mut line = std::mem::take(&mut self.buf);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        out.push(String::from_utf8(line).map_or(Line::Binary, Line::Text));
                    }
                }
                self.skipping = false;
            }
        }
    }
}

#[derive(Default)]
struct AgentQueue {
    lines: VecDeque<Rc<str>>,
    bytes: usize,
    /// Cut off for not reading; its connection is to be closed.
    kicked: bool,
    line_waker: Option<Waker>,
    kick_waker: Option<Waker>,
}

impl AgentQueue {
    fn wake(&mut self) {
        if let Some(w) = self.line_waker.take() {
            w.wake();
        }
    }
}

/// Who is attached and what each still has to receive.
pub struct AgentHub {
    config: IpcConfig,
    agents: BTreeMap<AgentId, AgentQueue>,
    next_id: AgentId,
    backlog: VecDeque<Rc<str>>,
    backlog_bytes: usize,
    dropped: u64,
}

impl AgentHub {
    pub fn new(config: IpcConfig) -> Self {
        AgentHub { config, agents: BTreeMap::new(), next_id: 1, backlog: VecDeque::new(), backlog_bytes: 0, dropped: 0 }
    }

    pub fn config(&self) -> &IpcConfig {
        &self.config
    }

    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Whether another agent would exceed [`IpcConfig::max_agents`]; the
    /// shell then sends [`AgentHub::refusal`] and closes the connection.
    pub fn is_full(&self) -> bool {
        self.agents.len() >= self.config.max_agents.max(1)
    }

    /// The line a connection refused by [`AgentHub::is_full`] gets.
    pub fn refusal(&self) -> String {
        Event::Error(ErrorEvent {
            code: error_codes::TOO_MANY_AGENTS.into(),
            message: Some(format!("{} agents are attached already; try again later", self.agents.len())),
            ..Default::default()
        })
        .to_line()
    }

    /// A new agent. It first gets `events_dropped` if the backlog
    /// overflowed, then the backlog.
    pub fn attach(&mut self) -> AgentId {
        let id = self.next_id;
        self.next_id += 1;
        let mut q = AgentQueue::default();
        if self.dropped > 0 {
            let note = Event::Error(ErrorEvent {
                code: error_codes::EVENTS_DROPPED.into(),
                count: Some(self.dropped),
                ..Default::default()
            });
            let line: Rc<str> = note.to_line().into();
            q.bytes += line.len();
            q.lines.push_back(line);
            self.dropped = 0;
        }
        q.bytes += self.backlog_bytes;
        q.lines.extend(self.backlog.drain(..));
        self.backlog_bytes = 0;
        self.agents.insert(id, q);
        id
    }

    pub fn detach(&mut self, id: AgentId) {
        self.agents.remove(&id);
    }

    /// Queues `event` for agent `to`, or for every agent. With none
    /// attached, events for all go to the backlog; a reply to an agent that
    /// left goes nowhere.
    pub fn deliver(&mut self, to: Option<AgentId>, event: &Event) {
        let line: Rc<str> = event.to_line().into();
        match to {
            Some(id) => self.push(id, line),
            None if self.agents.is_empty() => self.push_backlog(line),
            None => {
                let ids: Vec<AgentId> = self.agents.keys().copied().collect();
                for id in ids {
                    self.push(id, line.clone());
                }
            }
        }
    }

    /// The next line for agent `id`; `Ready(None)` once it is gone or was
    /// cut off.
    pub fn poll_line(&mut self, id: AgentId, cx: &mut Context<'_>) -> Poll<Option<Rc<str>>> {
        let Some(q) = self.agents.get_mut(&id) else { return Poll::Ready(None) };
        if q.kicked {
            return Poll::Ready(None);
        }
        match q.lines.pop_front() {
            Some(line) => {
                q.bytes -= line.len();
                Poll::Ready(Some(line))
            }
            None => {
                q.line_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Ready once agent `id` is cut off or gone.
    pub fn poll_kicked(&mut self, id: AgentId, cx: &mut Context<'_>) -> Poll<()> {
        match self.agents.get_mut(&id) {
            Some(q) if !q.kicked => {
                q.kick_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    fn push(&mut self, id: AgentId, line: Rc<str>) {
        let limit = self.config.agent_queue_bytes;
        let Some(q) = self.agents.get_mut(&id) else { return };
        if q.kicked {
            return;
        }
        if q.bytes + line.len() > limit && !q.lines.is_empty() {
            log::warn!("agent {id} is not reading its events ({} bytes waiting); disconnecting it", q.bytes);
            q.kicked = true;
            q.lines.clear();
            q.bytes = 0;
            q.wake();
            if let Some(w) = q.kick_waker.take() {
                w.wake();
            }
            return;
        }
        q.bytes += line.len();
        q.lines.push_back(line);
        q.wake();
    }

    fn push_backlog(&mut self, line: Rc<str>) {
        self.backlog_bytes += line.len();
        self.backlog.push_back(line);
        while self.backlog.len() > self.config.backlog_events
            || (self.backlog_bytes > self.config.backlog_bytes && self.backlog.len() > 1)
        {
            if let Some(old) = self.backlog.pop_front() {
                self.backlog_bytes -= old.len();
                self.dropped += 1;
            }
        }
    }
}

/// What one input line means: a command, or the `error` event its sender
/// gets instead (the connection stays open either way).
pub fn interpret(line: Line, limit: usize) -> Result<Command, Box<ErrorEvent>> {
    match line {
        Line::Text(text) => {
            Command::parse(&text).map_err(|e| line_error(error_codes::INVALID_COMMAND, e.message, e.command))
        }
        Line::Binary => Err(line_error(error_codes::INVALID_COMMAND, "line is not UTF-8".into(), None)),
        Line::TooLong => {
            Err(line_error(error_codes::TOO_LARGE, format!("line longer than {limit} bytes skipped"), None))
        }
    }
}

/// The error for a line that is not a command.
fn line_error(code: &str, message: String, command: Option<String>) -> Box<ErrorEvent> {
    Box::new(ErrorEvent { code: code.into(), message: Some(message), command, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatixia_protocol::mesh::MeshMessage;
    use serde_json::{Value, json};
    use std::task::Waker;

    fn lines(splitter: &mut LineSplitter, chunks: &[&[u8]]) -> Vec<Line> {
        let mut out = Vec::new();
        for c in chunks {
            splitter.push(c, &mut out);
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = LineSplitter::new(100);
        let got = lines(&mut s, &[b"{\"a\"", b":1}\n{\"b\":2}\r\n\n  \n{\"c\"", b":3}\n"]);
        assert_eq!(
            got,
            [Line::Text("{\"a\":1}".into()), Line::Text("{\"b\":2}".into()), Line::Text("{\"c\":3}".into())]
        );
        assert_eq!(lines(&mut s, &[b"\xff\xfe\n"]), [Line::Binary]);
    }

    #[test]
    fn skips_over_long_lines_without_holding_them() {
        let mut s = LineSplitter::new(10);
        let long = [b'x'; 25];
        let got = lines(&mut s, &[&long[..7], &long[7..], b"yyy", b"\nok\n"]);
        assert_eq!(got, [Line::TooLong, Line::Text("ok".into())]);
        assert!(s.buf.capacity() <= 16, "kept {} bytes", s.buf.capacity());
        // Exactly at the limit is fine.
        assert_eq!(lines(&mut s, &[b"0123456789\n"]), [Line::Text("0123456789".into())]);
        assert_eq!(lines(&mut s, &[b"0123456789A\n"]), [Line::TooLong]);
    }

    fn drain(hub: &mut AgentHub, id: AgentId) -> Vec<Value> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(line)) = hub.poll_line(id, &mut cx) {
            assert!(line.ends_with('\n'));
            out.push(serde_json::from_str(&line).unwrap());
        }
        out
    }

    fn connected(peer: &str) -> Event {
        Event::PeerConnected { peer_id: peer.into() }
    }

    #[test]
    fn every_agent_gets_every_event_and_replies_go_to_the_asker() {
        let mut hub = AgentHub::new(IpcConfig::default());
        let a = hub.attach();
        let b = hub.attach();
        hub.deliver(None, &connected("p1"));
        hub.deliver(Some(b), &Event::PeerList { peers: vec!["p1".into()] });
        let msg = Event::Message { from_peer: "p1".into(), message: MeshMessage::new("t", "r", Value::Null) };
        hub.deliver(None, &msg);
        assert_eq!(drain(&mut hub, a).len(), 2);
        let got_b = drain(&mut hub, b);
        assert_eq!(got_b.len(), 3);
        assert_eq!(got_b[1], json!({"type":"peer_list","payload":{"peers":["p1"]}}));
        hub.detach(a);
        hub.deliver(Some(a), &connected("gone"));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(hub.poll_line(a, &mut cx), Poll::Ready(None));
        assert_eq!(hub.agent_count(), 1);
    }

    #[test]
    fn events_wait_for_the_next_agent_and_overflow_is_reported() {
        let config = IpcConfig { backlog_events: 3, ..IpcConfig::default() };
        let mut hub = AgentHub::new(config);
        for i in 0..5 {
            hub.deliver(None, &connected(&format!("p{i}")));
        }
        // A reply to nobody is not kept.
        hub.deliver(Some(42), &connected("x"));
        let a = hub.attach();
        let got = drain(&mut hub, a);
        assert_eq!(got[0], json!({"type":"error","payload":{"code":"events_dropped","count":2}}));
        let peers: Vec<&str> = got[1..].iter().map(|v| v["payload"]["peer_id"].as_str().unwrap()).collect();
        assert_eq!(peers, ["p2", "p3", "p4"]);
        hub.detach(a);
        // Nothing was dropped since: no note for the next one.
        hub.deliver(None, &connected("p5"));
        let b = hub.attach();
        assert_eq!(drain(&mut hub, b), [json!({"type":"peer_connected","payload":{"peer_id":"p5"}})]);
    }

    #[test]
    fn attached_agents_are_bounded() {
        let mut hub = AgentHub::new(IpcConfig { max_agents: 2, ..IpcConfig::default() });
        let a = hub.attach();
        assert!(!hub.is_full());
        hub.attach();
        assert!(hub.is_full());
        let refusal: serde_json::Value = serde_json::from_str(&hub.refusal()).unwrap();
        assert_eq!(refusal["payload"]["code"], "too_many_agents");
        assert!(refusal["payload"]["message"].as_str().is_some_and(|m| m.starts_with("2 agents")), "{refusal}");
        hub.detach(a);
        assert!(!hub.is_full());
        assert_eq!(IpcConfig::default().max_agents * IpcConfig::default().agent_queue_bytes, 32 << 20);
    }

    #[test]
    fn an_agent_that_does_not_read_is_cut_off_alone() {
        let config = IpcConfig { agent_queue_bytes: 1000, ..IpcConfig::default() };
        let mut hub = AgentHub::new(config);
        let slow = hub.attach();
        let fast = hub.attach();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(hub.poll_kicked(slow, &mut cx), Poll::Pending);
        for i in 0..100 {
            hub.deliver(None, &connected(&format!("peer-{i}")));
            assert_eq!(drain(&mut hub, fast).len(), 1);
        }
        assert_eq!(hub.poll_kicked(slow, &mut cx), Poll::Ready(()));
        assert_eq!(hub.poll_line(slow, &mut cx), Poll::Ready(None));
        assert_eq!(hub.poll_kicked(fast, &mut cx), Poll::Pending);
        // One event larger than the whole queue still reaches a reader.
        let big = Event::PeerList { peers: vec!["z".repeat(5000)] };
        hub.deliver(Some(fast), &big);
        assert_eq!(drain(&mut hub, fast).len(), 1);
    }
}
