//! The agents' side of the sidecar, without the socket: who is attached,
//! what each one still has to receive, what is kept while nobody is
//! attached, when a slow agent is cut off, and how a byte stream from an
//! agent becomes commands (newline-delimited JSON, docs/PROTOCOL.md "IPC").
//! The shell (`shell/ipc.rs`) only moves bytes between sockets and this.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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
    /// An agent this far behind, mostly on one peer's messages, has that
    /// peer held back ([`AgentHub::poll_throttle`]) ...
    pub throttle_above: usize,
    /// ... until every agent is less than this behind on them.
    pub release_below: usize,
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            backlog_events: DEFAULT_BACKLOG_EVENTS,
            backlog_bytes: 8 << 20,
            agent_queue_bytes: 4 << 20,
            max_agents: DEFAULT_MAX_AGENTS,
            throttle_above: 1 << 20,
            release_below: 256 << 10,
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
    /// Each line with the peer whose message it carries, if any.
    lines: VecDeque<(Rc<str>, Option<Rc<str>>)>,
    bytes: usize,
    /// Bytes of `lines` per peer whose messages they carry.
    by_peer: HashMap<Rc<str>, usize>,
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

    fn push(&mut self, line: Rc<str>, source: Option<Rc<str>>) {
        self.bytes += line.len();
        if let Some(peer) = &source {
            *self.by_peer.entry(peer.clone()).or_default() += line.len();
        }
        self.lines.push_back((line, source));
    }

    fn pop(&mut self) -> Option<Rc<str>> {
        let (line, source) = self.lines.pop_front()?;
        self.bytes -= line.len();
        if let Some(peer) = source
            && let Some(b) = self.by_peer.get_mut(&peer)
        {
            *b -= line.len();
            if *b == 0 {
                self.by_peer.remove(&peer);
            }
        }
        Some(line)
    }

    fn clear(&mut self) {
        self.lines.clear();
        self.by_peer.clear();
        self.bytes = 0;
    }

    /// The peer with the most bytes waiting here, if it has over half.
    fn dominant_peer(&self) -> Option<&Rc<str>> {
        let (peer, bytes) = self.by_peer.iter().max_by_key(|(_, b)| **b)?;
        (*bytes * 2 > self.bytes).then_some(peer)
    }
}

/// Who is attached and what each still has to receive.
pub struct AgentHub {
    config: IpcConfig,
    agents: BTreeMap<AgentId, AgentQueue>,
    next_id: AgentId,
    backlog: VecDeque<Rc<str>>,
    backlog_bytes: usize,
    /// Peers whose messages the agents are behind on: their traffic is
    /// held back (see [`AgentHub::poll_throttle`]).
    throttled: BTreeSet<Rc<str>>,
    throttle_changes: VecDeque<(String, bool)>,
    throttle_waker: Option<Waker>,
    dropped: u64,
}

impl AgentHub {
    pub fn new(config: IpcConfig) -> Self {
        AgentHub {
            config,
            agents: BTreeMap::new(),
            next_id: 1,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            dropped: 0,
            throttled: BTreeSet::new(),
            throttle_changes: VecDeque::new(),
            throttle_waker: None,
        }
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
            q.push(note.to_line().into(), None);
            self.dropped = 0;
        }
        for line in self.backlog.drain(..) {
            q.push(line, None);
        }
        self.backlog_bytes = 0;
        self.agents.insert(id, q);
        id
    }

    pub fn detach(&mut self, id: AgentId) {
        self.agents.remove(&id);
        self.release_throttles();
    }

    /// Queues `event` for agent `to`, or for every agent. With none
    /// attached, events for all go to the backlog; a reply to an agent that
    /// left goes nowhere.
    pub fn deliver(&mut self, to: Option<AgentId>, event: &Event) {
        let line: Rc<str> = event.to_line().into();
        let source: Option<Rc<str>> = match event {
            Event::Message { from_peer, .. } => Some(from_peer.as_str().into()),
            _ => None,
        };
        match to {
            Some(id) => self.push(id, line, source),
            None if self.agents.is_empty() => self.push_backlog(line),
            None => {
                let ids: Vec<AgentId> = self.agents.keys().copied().collect();
                for id in ids {
                    self.push(id, line.clone(), source.clone());
                }
            }
        }
    }

    /// The next change of which peers to hold back: `(peer, true)` once an
    /// agent has fallen behind by [`IpcConfig::throttle_above`] bytes,
    /// mostly of that peer's messages; `(peer, false)` once every agent
    /// has caught up to [`IpcConfig::release_below`] of them. Meanwhile
    /// the mesh drops that peer's DataChannel packets, so its SCTP slows
    /// down and its agent gets `backpressure`, while the other peers'
    /// messages keep flowing: one peer cannot cost an agent the others'
    /// messages, or its connection. Registers `cx` for the next change.
    pub fn poll_throttle(&mut self, cx: &mut Context<'_>) -> Poll<(String, bool)> {
        match self.throttle_changes.pop_front() {
            Some(change) => Poll::Ready(change),
            None => {
                self.throttle_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Like [`AgentHub::poll_throttle`], for whoever just caused the change.
    pub fn take_throttle(&mut self) -> Option<(String, bool)> {
        self.throttle_changes.pop_front()
    }

    fn change_throttle(&mut self, peer: &str, on: bool) {
        self.throttle_changes.push_back((peer.to_owned(), on));
        if let Some(w) = self.throttle_waker.take() {
            w.wake();
        }
    }

    /// Lifts the throttles of peers the agents have caught up with.
    fn release_throttles(&mut self) {
        if self.throttled.is_empty() {
            return;
        }
        let below = self.config.release_below;
        let caught_up: Vec<Rc<str>> = self
            .throttled
            .iter()
            .filter(|p| self.agents.values().map(|q| q.by_peer.get(*p).copied().unwrap_or(0)).sum::<usize>() < below)
            .cloned()
            .collect();
        for peer in caught_up {
            self.throttled.remove(&peer);
            self.change_throttle(&peer, false);
        }
    }

    /// The next line for agent `id`; `Ready(None)` once it is gone or was
    /// cut off.
    pub fn poll_line(&mut self, id: AgentId, cx: &mut Context<'_>) -> Poll<Option<Rc<str>>> {
        let Some(q) = self.agents.get_mut(&id) else { return Poll::Ready(None) };
        if q.kicked {
            return Poll::Ready(None);
        }
        match q.pop() {
            Some(line) => {
                self.release_throttles();
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

    fn push(&mut self, id: AgentId, line: Rc<str>, source: Option<Rc<str>>) {
        let limit = self.config.agent_queue_bytes;
        let Some(q) = self.agents.get_mut(&id) else { return };
        if q.kicked {
            return;
        }
        if q.bytes + line.len() > limit && !q.lines.is_empty() {
            log::warn!("agent {id} is not reading its events ({} bytes waiting); disconnecting it", q.bytes);
            q.kicked = true;
            q.clear();
            q.wake();
            if let Some(w) = q.kick_waker.take() {
                w.wake();
            }
            self.release_throttles();
            return;
        }
        q.push(line, source);
        q.wake();
        if q.bytes > self.config.throttle_above
            && let Some(peer) = q.dominant_peer().cloned()
            && self.throttled.insert(peer.clone())
        {
            self.change_throttle(&peer, true);
        }
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

    fn message_from(peer: &str, bytes: usize) -> Event {
        let message = chatixia_protocol::mesh::MeshMessage::new("m", "", serde_json::json!("x".repeat(bytes)));
        Event::Message { from_peer: peer.into(), message }
    }

    /// One peer's flood makes the agents fall behind: that peer, and only
    /// that one, is held back until they catch up; the others' messages
    /// stay queued and nobody is disconnected.
    #[test]
    fn a_peer_the_agents_fall_behind_on_is_held_back_until_they_catch_up() {
        let config = IpcConfig { throttle_above: 10_000, release_below: 3_000, ..IpcConfig::default() };
        let mut hub = AgentHub::new(config);
        let slow = hub.attach();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(hub.poll_throttle(&mut cx), Poll::Pending);
        hub.deliver(None, &message_from("calm", 100));
        for _ in 0..12 {
            hub.deliver(None, &message_from("flood", 1_000));
        }
        assert_eq!(hub.poll_throttle(&mut cx), Poll::Ready(("flood".to_owned(), true)));
        assert_eq!(hub.poll_throttle(&mut cx), Poll::Pending, "reported once");
        hub.deliver(None, &message_from("calm", 100));
        // Reading the backlog down lifts it, once.
        let mut read = Vec::new();
        let mut released = None;
        while let Poll::Ready(Some(line)) = hub.poll_line(slow, &mut cx) {
            read.push(line);
            if let Poll::Ready(change) = hub.poll_throttle(&mut cx) {
                assert!(released.is_none());
                released = Some((change, read.len()));
            }
        }
        assert_eq!(read.len(), 14, "nothing lost, the calm peer's messages included");
        let ((peer, on), at) = released.expect("released");
        assert_eq!((peer.as_str(), on), ("flood", false));
        assert!((10..14).contains(&at), "released once under 3,000 bytes of the flood were left: after {at}");
        assert!(!hub.agents[&slow].kicked);
    }

    #[test]
    fn a_peer_held_back_for_an_agent_that_leaves_is_released() {
        let config = IpcConfig { throttle_above: 10_000, release_below: 3_000, ..IpcConfig::default() };
        let mut hub = AgentHub::new(config);
        let a = hub.attach();
        for _ in 0..12 {
            hub.deliver(None, &message_from("flood", 1_000));
        }
        assert_eq!(hub.take_throttle(), Some(("flood".to_owned(), true)));
        hub.detach(a);
        assert_eq!(hub.take_throttle(), Some(("flood".to_owned(), false)));
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
