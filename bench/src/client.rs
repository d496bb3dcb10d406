//! The subscribers: many Socket.IO clients on one thread, over raw Engine.IO framing.
//!
//! One `mio` poll loop (epoll, edge-triggered) drives every connection; all reads go through
//! one shared 64 KiB buffer, and only a partial frame at the end of a read is kept per
//! connection. A client does the WebSocket upgrade on `/socket.io/?EIO=4&transport=websocket`,
//! waits for the Engine.IO open packet, sends the namespace CONNECT with `{projectId}`, then
//! `listen {channelName}` with ack id 0, and counts as ready once the ack says `"ok":true`.
//! From then on the only parsing per received `event` is the `"t":` number of the payload (the
//! publish time in ns since [`now_ns`]'s epoch): one `(t, received_at)` pair is recorded per
//! delivery. Engine.IO pings `2` are answered with `3`, WebSocket pings with pongs. Frames the
//! client sends are masked with the all-zero key (valid, and the payload stays as is).
//!
//! A client of [`Transport::Sse`] speaks Herald's Server-Sent Events transport on the same
//! loop: `GET /v1/sse?projectId=…&channel=…` (HTTP/1.1), a `200` answer head, then the body,
//! de-chunked in place (chunk sizes only; nothing is copied unless a line spans two reads),
//! split into lines. It counts as ready at its channel's `system_message` `Success` (the
//! `listen` ack of a stream); each `event: event` message is one delivery, and as for a socket
//! the only parsing of it is the `"t":` number of its `data:` line. `id:`, `retry:` and
//! comments (heartbeats) are skipped.
//!
//! The loop is driven from async code through [`Clients`]: commands go over a channel plus a
//! `mio::Waker`, answers come back on oneshot channels.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memchr::memmem;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;

const WAKER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;
const EVENT_PREFIX: &[u8] = b"42[\"event\",";
const SYSTEM_PREFIX: &[u8] = b"42[\"system_message\",";
/// Longest SSE line (or partial chunk-size line) a client keeps between two reads.
const MAX_SSE_LINE: usize = 1024 * 1024;
/// Linux `EINPROGRESS`: a non-blocking `connect` under way.
const EINPROGRESS: i32 = 115;

/// Nanoseconds since the process-wide benchmark epoch (monotonic clock).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// Socket.IO over a WebSocket (`/socket.io/?EIO=4&transport=websocket`).
    #[default]
    WebSocket,
    /// Herald's Server-Sent Events stream (`GET /v1/sse`).
    Sse,
}

impl Transport {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "WebSocket",
            Transport::Sse => "SSE",
        }
    }
}

/// A batch of clients to open.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    /// Server address.
    pub addr: SocketAddr,
    /// `auth.projectId` of the handshake.
    pub project: String,
    /// One entry per client: the channel it listens to.
    pub channels: Vec<String>,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Deadline for the whole batch.
    pub timeout: Duration,
    /// `SO_RCVBUF` for these sockets (a small one makes a slow consumer back up sooner).
    pub rcvbuf: Option<usize>,
    /// The `since` of every `listen` (raw JSON `{"offset":…,"epoch":"…"}`): the server
    /// replays the channel's events after it first. WebSocket clients only.
    pub since: Option<String>,
    /// WebSocket or SSE.
    pub transport: Transport,
}

/// How a batch went.
#[derive(Debug, Clone, Default)]
pub struct ConnectReport {
    /// Id of the first client of the batch; the batch is `first_id..first_id + channels.len()`.
    pub first_id: usize,
    /// Clients that completed the handshake and the `listen`.
    pub ok: usize,
    /// Clients that did not.
    pub failed: usize,
    /// The first few failure reasons.
    pub errors: Vec<String>,
    /// Wall time of the batch.
    pub elapsed: Duration,
}

/// Totals of the whole client set.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// `event` packets received since start.
    pub events: u64,
    /// Listening connections the server closed (or that failed) since start.
    pub server_closed: usize,
    /// Why, with counts.
    pub close_reasons: Vec<(String, usize)>,
    /// Frames the client could not make sense of.
    pub protocol_errors: u64,
    /// `system_message` packets with code `Error`.
    pub system_errors: u64,
}

/// One client's counters.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// `event` packets it received.
    pub events: u64,
    /// Still open.
    pub open: bool,
    /// Why it closed, if it did.
    pub closed: Option<String>,
}

enum Cmd {
    Connect(ConnectSpec, oneshot::Sender<ConnectReport>),
    Records(oneshot::Sender<Vec<(u64, u64)>>),
    Reserve(usize),
    SetReading(Vec<usize>, bool, oneshot::Sender<()>),
    CloseAll(oneshot::Sender<usize>),
    Status(oneshot::Sender<Status>),
    Info(usize, oneshot::Sender<ConnInfo>),
    Stop,
}

/// Handle on the client thread.
pub struct Clients {
    tx: mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Clients {
    /// Starts the client thread (no connections yet).
    pub fn start() -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("clients".into())
            .spawn(move || Engine::new(poll).run(rx))?;
        Ok(Self {
            tx,
            waker,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Cmd) {
        let _ = self.tx.send(cmd);
        let _ = self.waker.wake();
    }

    async fn ask<R: Default>(&self, cmd: impl FnOnce(oneshot::Sender<R>) -> Cmd) -> R {
        let (tx, rx) = oneshot::channel();
        self.send(cmd(tx));
        rx.await.unwrap_or_default()
    }

    /// Opens a batch of clients and waits until each is listening or failed.
    pub async fn connect(&self, spec: ConnectSpec) -> ConnectReport {
        self.ask(|tx| Cmd::Connect(spec, tx)).await
    }
    /// Takes the `(publish time, receive time)` pairs recorded so far.
    pub async fn records(&self) -> Vec<(u64, u64)> {
        self.ask(Cmd::Records).await
    }
    /// Pre-allocates room for `n` more records (so the hot loop does not reallocate).
    pub fn reserve(&self, n: usize) {
        self.send(Cmd::Reserve(n));
    }
    /// Stops (`false`) or resumes (`true`) reading on some clients.
    pub async fn set_reading(&self, ids: Vec<usize>, on: bool) {
        self.ask(|tx| Cmd::SetReading(ids, on, tx)).await
    }
    /// Closes every client.
    pub async fn close_all(&self) -> usize {
        self.ask(Cmd::CloseAll).await
    }
    /// Totals.
    pub async fn status(&self) -> Status {
        self.ask(Cmd::Status).await
    }
    /// One client's counters.
    pub async fn info(&self, id: usize) -> ConnInfo {
        self.ask(|tx| Cmd::Info(id, tx)).await
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    WaitOpen,
    WaitConnect,
    WaitAck,
    /// SSE: the request is sent, the answer's head is awaited.
    SseHead,
    /// SSE: `200`, waiting for the channel's `system_message` `Success`.
    SseListen,
    Ready,
}

/// The SSE message being read: which `event:` it named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SseEvent {
    None,
    Event,
    System,
    Other,
}

/// An SSE client's reading state (the chunked framing and the current line and message).
struct SseRead {
    /// `Transfer-Encoding: chunked` (else the body runs to the end of the connection).
    chunked: bool,
    /// Bytes of the current chunk's data still to come.
    chunk_left: usize,
    /// Bytes of the `\r\n` after the current chunk's data still to come.
    crlf_left: u8,
    /// Start of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The current message's `event:`.
    event: SseEvent,
    /// The current `event` message's `"t":`.
    t: Option<u64>,
}

impl SseRead {
    fn new() -> Self {
        Self {
            chunked: false,
            chunk_left: 0,
            crlf_left: 0,
            line: Vec::new(),
            event: SseEvent::None,
            t: None,
        }
    }
}

struct Conn {
    stream: TcpStream,
    state: State,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    channel: String,
    since: Option<String>,
    reading: bool,
    in_batch: bool,
    events: u64,
    transport: Transport,
    sse: SseRead,
}

struct Pending {
    spec: ConnectSpec,
    next: usize,
    in_flight: usize,
    report: ConnectReport,
    reply: oneshot::Sender<ConnectReport>,
    started: Instant,
}

struct Engine {
    poll: Poll,
    conns: Vec<Option<Conn>>,
    /// Closed connections: why, and how many events they had received.
    closed: HashMap<usize, (String, u64)>,
    rbuf: Vec<u8>,
    records: Vec<(u64, u64)>,
    events: u64,
    finder: memmem::Finder<'static>,
    project: String,
    pending: Option<Pending>,
    close_reasons: HashMap<String, usize>,
    server_closed: usize,
    protocol_errors: u64,
    system_errors: u64,
}

fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    Some(
        b[..digits]
            .iter()
            .fold(0u64, |acc, c| acc * 10 + u64::from(c - b'0')),
    )
}

/// The size of a chunk-size line (`1a` or `1a;ext`, optional `\r`), `None` if it is not one.
fn chunk_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let hex = line.split(|b| *b == b';').next().unwrap_or(line);
    if hex.is_empty() || hex.len() > 8 {
        return None;
    }
    hex.iter().try_fold(0usize, |acc, b| {
        let d = (*b as char).to_digit(16)?;
        Some(acc * 16 + d as usize)
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(160)]).into_owned()
}

impl Engine {
    fn new(poll: Poll) -> Self {
        Self {
            poll,
            conns: Vec::new(),
            closed: HashMap::new(),
            rbuf: vec![0; READ_BUF],
            records: Vec::new(),
            events: 0,
            finder: memmem::Finder::new(b"\"t\":").into_owned(),
            project: String::new(),
            pending: None,
            close_reasons: HashMap::new(),
            server_closed: 0,
            protocol_errors: 0,
            system_errors: 0,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.pending.is_some() {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(100)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                eprintln!("herald-bench: poll failed: {e}");
                return;
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                self.drive(ev.token().0, readable, ev.is_writable());
            }
            while let Ok(cmd) = rx.try_recv() {
                if !self.command(cmd) {
                    return;
                }
            }
            self.progress();
        }
    }

    fn command(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Connect(spec, reply) => {
                self.project = spec.project.clone();
                let report = ConnectReport {
                    first_id: self.conns.len(),
                    ..ConnectReport::default()
                };
                self.pending = Some(Pending {
                    spec,
                    next: 0,
                    in_flight: 0,
                    report,
                    reply,
                    started: Instant::now(),
                });
            }
            Cmd::Records(reply) => {
                let _ = reply.send(std::mem::take(&mut self.records));
            }
            Cmd::Reserve(n) => self.records.reserve(n),
            Cmd::SetReading(ids, on, reply) => {
                for id in ids {
                    if let Some(Some(c)) = self.conns.get_mut(id) {
                        c.reading = on;
                    }
                    if on {
                        // Edge-triggered: data that arrived while paused raised no new event.
                        self.drive(id, true, true);
                    }
                }
                let _ = reply.send(());
            }
            Cmd::CloseAll(reply) => {
                let n = (0..self.conns.len()).filter(|id| self.close(*id)).count();
                self.conns.clear();
                self.closed.clear();
                let _ = reply.send(n);
            }
            Cmd::Status(reply) => {
                let mut reasons: Vec<(String, usize)> = self
                    .close_reasons
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
                let _ = reply.send(Status {
                    events: self.events,
                    server_closed: self.server_closed,
                    close_reasons: reasons,
                    protocol_errors: self.protocol_errors,
                    system_errors: self.system_errors,
                });
            }
            Cmd::Info(id, reply) => {
                let info = match self.conns.get(id) {
                    Some(Some(c)) => ConnInfo {
                        events: c.events,
                        open: true,
                        closed: None,
                    },
                    _ => {
                        let closed = self.closed.get(&id).cloned();
                        ConnInfo {
                            events: closed.as_ref().map_or(0, |c| c.1),
                            open: false,
                            closed: closed.map(|c| c.0),
                        }
                    }
                };
                let _ = reply.send(info);
            }
            Cmd::Stop => return false,
        }
        true
    }

    fn close(&mut self, id: usize) -> bool {
        let Some(slot) = self.conns.get_mut(id) else {
            return false;
        };
        let Some(mut c) = slot.take() else {
            return false;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        if c.in_batch
            && let Some(p) = self.pending.as_mut()
        {
            p.in_flight -= 1;
            p.report.failed += 1;
        }
        true
    }

    /// Starts new handshakes of the pending batch, and answers it once every one finished.
    fn progress(&mut self) {
        let Some(mut p) = self.pending.take() else {
            return;
        };
        while p.in_flight < p.spec.concurrency.max(1) && p.next < p.spec.channels.len() {
            let channel = p.spec.channels[p.next].clone();
            p.next += 1;
            match self.open_conn(
                p.spec.addr,
                channel,
                p.spec.since.clone(),
                p.spec.rcvbuf,
                p.spec.transport,
            ) {
                Ok(()) => p.in_flight += 1,
                Err(e) => {
                    p.report.failed += 1;
                    if p.report.errors.len() < 5 {
                        p.report.errors.push(format!("connect: {e}"));
                    }
                    // Keep the ids contiguous: the failed client gets an empty slot.
                    self.conns.push(None);
                }
            }
        }
        if p.in_flight > 0 && p.started.elapsed() > p.spec.timeout {
            let first = p.report.first_id;
            self.pending = Some(p);
            let mut timed_out = Vec::new();
            for id in first..self.conns.len() {
                if let Some(Some(c)) = self.conns.get(id)
                    && c.in_batch
                {
                    timed_out.push((id, c.state));
                }
            }
            for (id, state) in timed_out {
                if let Some(p) = self.pending.as_mut()
                    && p.report.errors.len() < 5
                {
                    p.report
                        .errors
                        .push(format!("timed out in state {state:?}"));
                }
                self.close(id);
            }
            let Some(q) = self.pending.take() else { return };
            p = q;
        }
        if p.next >= p.spec.channels.len() && p.in_flight == 0 {
            p.report.elapsed = p.started.elapsed();
            let _ = p.reply.send(p.report);
        } else {
            self.pending = Some(p);
        }
    }

    fn open_conn(
        &mut self,
        addr: SocketAddr,
        channel: String,
        since: Option<String>,
        rcvbuf: Option<usize>,
        transport: Transport,
    ) -> io::Result<()> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        sock.set_nonblocking(true)?;
        if let Some(size) = rcvbuf {
            sock.set_recv_buffer_size(size)?;
        }
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(EINPROGRESS)
                    || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(std::net::TcpStream::from(sock));
        let id = self.conns.len();
        self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns.push(Some(Conn {
            stream,
            state: State::Connecting,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            channel,
            since,
            reading: true,
            in_batch: true,
            events: 0,
            transport,
            sse: SseRead::new(),
        }));
        Ok(())
    }

    /// Handles readiness of connection `id`.
    fn drive(&mut self, id: usize, readable: bool, writable: bool) {
        let Some(mut c) = self.conns.get_mut(id).and_then(Option::take) else {
            return;
        };
        let was_ready = c.state == State::Ready;
        let result = self.step(&mut c, readable, writable);
        let now_ready = c.state == State::Ready;
        if now_ready && !was_ready && c.in_batch {
            c.in_batch = false;
            if let Some(p) = self.pending.as_mut() {
                p.in_flight -= 1;
                p.report.ok += 1;
            }
        }
        match result {
            Ok(()) => self.conns[id] = Some(c),
            Err(reason) => {
                let _ = self.poll.registry().deregister(&mut c.stream);
                if now_ready {
                    self.server_closed += 1;
                    *self.close_reasons.entry(reason.clone()).or_default() += 1;
                }
                if c.in_batch
                    && let Some(p) = self.pending.as_mut()
                {
                    p.in_flight -= 1;
                    p.report.failed += 1;
                    if p.report.errors.len() < 5 {
                        p.report
                            .errors
                            .push(format!("{reason} (in state {:?})", c.state));
                    }
                }
                self.closed.insert(id, (reason, c.events));
            }
        }
    }

    fn step(&mut self, c: &mut Conn, readable: bool, writable: bool) -> Result<(), String> {
        if c.state == State::Connecting {
            if !readable && !writable {
                return Ok(());
            }
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Err(format!("connect: {e}")),
            }
            match c.stream.peer_addr() {
                Ok(addr) if c.transport == Transport::Sse => {
                    let _ = c.stream.set_nodelay(true);
                    c.outbuf.extend_from_slice(
                        format!(
                            "GET /v1/sse?projectId={}&channel={} HTTP/1.1\r\nHost: {addr}\r\n\
                             Accept: text/event-stream\r\n\r\n",
                            self.project, c.channel
                        )
                        .as_bytes(),
                    );
                    c.state = State::SseHead;
                }
                Ok(addr) => {
                    let _ = c.stream.set_nodelay(true);
                    c.outbuf.extend_from_slice(
                        format!(
                            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\n\
                             Upgrade: websocket\r\nConnection: Upgrade\r\n\
                             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                             Sec-WebSocket-Version: 13\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    c.state = State::Upgrading;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(format!("connect: {e}")),
            }
        }
        if readable && c.reading {
            self.read_all(c)?;
        }
        flush(c)
    }

    fn read_all(&mut self, c: &mut Conn) -> Result<(), String> {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let result = loop {
            match c.stream.read(&mut rbuf) {
                Ok(0) => break Err("closed by server (EOF)".to_owned()),
                Ok(n) => {
                    if let Err(e) = self.process(c, &rbuf[..n], now_ns()) {
                        break Err(e);
                    }
                    if !c.reading {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("read: {e}")),
            }
        };
        self.rbuf = rbuf;
        result
    }

    fn process(&mut self, c: &mut Conn, data: &[u8], now: u64) -> Result<(), String> {
        if c.transport == Transport::Sse {
            return self.sse_process(c, data, now);
        }
        if c.state == State::Upgrading {
            c.inbuf.extend_from_slice(data);
            let Some(end) = memmem::find(&c.inbuf, b"\r\n\r\n") else {
                return if c.inbuf.len() > 16 * 1024 {
                    Err("upgrade answer too long".into())
                } else {
                    Ok(())
                };
            };
            if !c.inbuf.starts_with(b"HTTP/1.1 101") {
                let line = c.inbuf.split(|b| *b == b'\r').next().unwrap_or(&[]);
                return Err(format!("upgrade refused: {}", lossy(line)));
            }
            c.inbuf.drain(..end + 4);
            c.state = State::WaitOpen;
            let buf = std::mem::take(&mut c.inbuf);
            let used = self.frames(c, &buf, now)?;
            c.inbuf = buf;
            c.inbuf.drain(..used);
            return Ok(());
        }
        if c.inbuf.is_empty() {
            let used = self.frames(c, data, now)?;
            c.inbuf.extend_from_slice(&data[used..]);
        } else {
            c.inbuf.extend_from_slice(data);
            let buf = std::mem::take(&mut c.inbuf);
            let used = self.frames(c, &buf, now)?;
            c.inbuf = buf;
            c.inbuf.drain(..used);
        }
        if c.inbuf.capacity() > 4 * READ_BUF && c.inbuf.len() < READ_BUF {
            c.inbuf.shrink_to(READ_BUF);
        }
        Ok(())
    }

    /// An SSE client's bytes: the answer's head first, then the body.
    fn sse_process(&mut self, c: &mut Conn, data: &[u8], now: u64) -> Result<(), String> {
        if c.state != State::SseHead {
            return self.sse_body(c, data, now);
        }
        c.inbuf.extend_from_slice(data);
        let Some(end) = memmem::find(&c.inbuf, b"\r\n\r\n") else {
            return if c.inbuf.len() > 16 * 1024 {
                Err("SSE answer head too long".into())
            } else {
                Ok(())
            };
        };
        if !c.inbuf.starts_with(b"HTTP/1.1 200") {
            // The refusal's JSON body is usually in the same read.
            let line = c.inbuf.split(|b| *b == b'\r').next().unwrap_or(&[]);
            let body = c.inbuf.get(end + 4..).map(lossy).unwrap_or_default();
            return Err(format!("SSE refused: {} {body}", lossy(line)));
        }
        let head = c.inbuf[..end + 2].to_ascii_lowercase();
        if memmem::find(&head, b"\r\ncontent-type: text/event-stream").is_none() {
            return Err(format!(
                "SSE answer is not text/event-stream: {}",
                lossy(&head)
            ));
        }
        c.sse.chunked = memmem::find(&head, b"\r\ntransfer-encoding: chunked\r\n").is_some();
        let rest = c.inbuf.split_off(end + 4);
        c.inbuf.clear();
        c.state = State::SseListen;
        self.sse_body(c, &rest, now)
    }

    /// De-chunks `data` (when the body is chunked) into [`Self::sse_text`]. Only a chunk-size
    /// line split between two reads is kept, in `c.inbuf`.
    fn sse_body(&mut self, c: &mut Conn, data: &[u8], now: u64) -> Result<(), String> {
        if !c.sse.chunked {
            return self.sse_text(c, data, now);
        }
        let mut pos = 0;
        while pos < data.len() {
            if c.sse.chunk_left > 0 {
                let n = c.sse.chunk_left.min(data.len() - pos);
                c.sse.chunk_left -= n;
                if c.sse.chunk_left == 0 {
                    c.sse.crlf_left = 2;
                }
                self.sse_text(c, &data[pos..pos + n], now)?;
                pos += n;
            } else if c.sse.crlf_left > 0 {
                let want = if c.sse.crlf_left == 2 { b'\r' } else { b'\n' };
                if data[pos] != want {
                    return Err("SSE: chunk data not followed by CRLF".into());
                }
                c.sse.crlf_left -= 1;
                pos += 1;
            } else {
                let Some(i) = memchr::memchr(b'\n', &data[pos..]) else {
                    c.inbuf.extend_from_slice(&data[pos..]);
                    if c.inbuf.len() > 64 {
                        return Err(format!("SSE: bad chunk size line {}", lossy(&c.inbuf)));
                    }
                    return Ok(());
                };
                let size = if c.inbuf.is_empty() {
                    chunk_size(&data[pos..pos + i])
                } else {
                    c.inbuf.extend_from_slice(&data[pos..pos + i]);
                    let size = chunk_size(&c.inbuf);
                    c.inbuf.clear();
                    size
                };
                pos += i + 1;
                match size {
                    Some(0) => return Err("SSE stream ended (last chunk)".into()),
                    Some(n) => c.sse.chunk_left = n,
                    None => return Err("SSE: bad chunk size line".into()),
                }
            }
        }
        Ok(())
    }

    /// The stream's text: complete lines go to [`Self::sse_line`], a partial last line waits
    /// in `c.sse.line`.
    fn sse_text(&mut self, c: &mut Conn, text: &[u8], now: u64) -> Result<(), String> {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', text) {
            if c.sse.line.is_empty() {
                self.sse_line(c, &text[start..nl], now)?;
            } else {
                let mut line = std::mem::take(&mut c.sse.line);
                line.extend_from_slice(&text[start..nl]);
                let r = self.sse_line(c, &line, now);
                line.clear();
                c.sse.line = line;
                r?;
            }
            start = nl + 1;
        }
        if start < text.len() {
            c.sse.line.extend_from_slice(&text[start..]);
            if c.sse.line.len() > MAX_SSE_LINE {
                return Err("SSE line too long".into());
            }
        }
        Ok(())
    }

    /// One line of the stream (`\n` removed).
    fn sse_line(&mut self, c: &mut Conn, line: &[u8], now: u64) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The end of a message.
            if c.sse.event == SseEvent::Event {
                self.events += 1;
                c.events += 1;
                match c.sse.t.take() {
                    Some(t) => self.records.push((t, now)),
                    None => self.protocol_errors += 1,
                }
            }
            c.sse.event = SseEvent::None;
            c.sse.t = None;
            return Ok(());
        }
        if let Some(data) = line.strip_prefix(b"data:") {
            match c.sse.event {
                SseEvent::Event if c.sse.t.is_none() => {
                    c.sse.t = self
                        .finder
                        .find(data)
                        .and_then(|i| parse_u64(&data[i + 4..]));
                }
                SseEvent::System => {
                    if memmem::find(data, b"\"code\":\"Error\"").is_some() {
                        self.system_errors += 1;
                    } else if c.state == State::SseListen
                        && memmem::find(data, b"\"code\":\"Success\"").is_some()
                    {
                        c.state = State::Ready;
                    }
                }
                _ => {}
            }
        } else if let Some(name) = line.strip_prefix(b"event:") {
            c.sse.event = match name.strip_prefix(b" ").unwrap_or(name) {
                b"event" => SseEvent::Event,
                b"system_message" => SseEvent::System,
                _ => SseEvent::Other,
            };
        }
        // `id:`, `retry:` and comments (`: heartbeat`) need nothing.
        Ok(())
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes used.
    fn frames(&mut self, c: &mut Conn, buf: &[u8], now: u64) -> Result<usize, String> {
        let mut pos = 0;
        while buf.len() - pos >= 2 {
            let b = &buf[pos..];
            let fin = b[0] & 0x80 != 0;
            let opcode = b[0] & 0x0f;
            if b[1] & 0x80 != 0 {
                return Err("masked frame from the server".into());
            }
            let (len, header) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if b.len() < header + len {
                break;
            }
            let payload = &b[header..header + len];
            match opcode {
                0x1 if fin => self.text(c, payload, now)?,
                0x8 => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    let text = payload.get(2..).map(lossy).unwrap_or_default();
                    return Err(format!("websocket close {code} {text}")
                        .trim_end()
                        .to_owned());
                }
                0x9 => push_frame(&mut c.outbuf, 0xA, payload),
                0xA => {}
                _ => self.protocol_errors += 1,
            }
            pos += header + len;
        }
        Ok(pos)
    }

    fn text(&mut self, c: &mut Conn, p: &[u8], now: u64) -> Result<(), String> {
        if p.starts_with(EVENT_PREFIX) {
            self.events += 1;
            c.events += 1;
            match self.finder.find(p).and_then(|i| parse_u64(&p[i + 4..])) {
                Some(t) => self.records.push((t, now)),
                None => self.protocol_errors += 1,
            }
            return Ok(());
        }
        if p == b"2" {
            push_frame(&mut c.outbuf, 0x1, b"3");
        } else if p == b"1" {
            return Err("engine.io close packet".into());
        } else if p.first() == Some(&b'0') && c.state == State::WaitOpen {
            let auth = format!(r#"40{{"projectId":"{}"}}"#, self.project);
            push_frame(&mut c.outbuf, 0x1, auth.as_bytes());
            c.state = State::WaitConnect;
        } else if p.starts_with(b"40") && c.state == State::WaitConnect {
            let listen = match &c.since {
                Some(since) => format!(
                    r#"420["listen",{{"channelName":"{}","since":{since}}}]"#,
                    c.channel
                ),
                None => format!(r#"420["listen",{{"channelName":"{}"}}]"#, c.channel),
            };
            push_frame(&mut c.outbuf, 0x1, listen.as_bytes());
            c.state = State::WaitAck;
        } else if p.starts_with(b"44") {
            return Err(format!("connect_error {}", lossy(&p[2..])));
        } else if p.starts_with(b"41") {
            return Err("socket.io disconnect packet (41)".into());
        } else if p.starts_with(b"430") && c.state == State::WaitAck {
            if memmem::find(p, b"\"ok\":true").is_none() {
                return Err(format!("listen refused: {}", lossy(p)));
            }
            c.state = State::Ready;
        } else if p.starts_with(SYSTEM_PREFIX) && memmem::find(p, b"\"code\":\"Error\"").is_some() {
            self.system_errors += 1;
        }
        Ok(())
    }
}

fn flush(c: &mut Conn) -> Result<(), String> {
    while !c.outbuf.is_empty() {
        match c.stream.write(&c.outbuf) {
            Ok(0) => return Err("write: closed".into()),
            Ok(n) => {
                c.outbuf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_masked_with_zero_key() {
        let mut out = Vec::new();
        push_frame(&mut out, 1, b"3");
        assert_eq!(out, [0x81, 0x81, 0, 0, 0, 0, b'3']);
        let mut out = Vec::new();
        push_frame(&mut out, 1, &[b'x'; 200]);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 0, 200]);
        assert_eq!(out.len(), 4 + 4 + 200);
    }

    /// A one-connection SSE server: answers `head` then writes `body` a few bytes at a time
    /// (so reads split chunk sizes, CRLFs and lines), and keeps the connection open until
    /// the returned sender is dropped. Gives the request head it got.
    fn fake_sse_server(
        head: &'static str,
        body: Vec<u8>,
    ) -> io::Result<(SocketAddr, mpsc::Receiver<String>, mpsc::Sender<()>)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (req_tx, req_rx) = mpsc::channel();
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || -> io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while memmem::find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut b)?;
                if n == 0 {
                    return Ok(());
                }
                req.extend_from_slice(&b[..n]);
            }
            let _ = req_tx.send(String::from_utf8_lossy(&req).into_owned());
            s.write_all(head.as_bytes())?;
            for piece in body.chunks(7) {
                s.write_all(piece)?;
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = hold_rx.recv();
            Ok(())
        });
        Ok((addr, req_rx, hold_tx))
    }

    fn chunked(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
        }
        out
    }

    fn sse_spec(addr: SocketAddr) -> ConnectSpec {
        ConnectSpec {
            addr,
            project: "p".into(),
            channels: vec!["c".into()],
            concurrency: 1,
            timeout: Duration::from_secs(5),
            rcvbuf: None,
            since: None,
            transport: Transport::Sse,
        }
    }

    #[test]
    fn sse_client_listens_and_counts_events_across_split_chunks()
    -> Result<(), Box<dyn std::error::Error>> {
        let body = chunked(&[
            "retry: 2000\n\n",
            "event: system_message\ndata: {\"code\":\"Success\",\"message\":\"listening to c\",\"data\":{\"channelName\":\"c\"}}\n",
            "id: v1|c:e1:0\n\n",
            "event: event\ndata: {\"id\":\"x\",\"channelName\":\"c\",\"payload\":{\"t\":111,\"p\":\"aa\"},\"offset\":1}\n",
            "id: v1|c:e1:1\n\n",
            ": heartbeat\n\n",
            "event: event\ndata: {\"id\":\"y\",\"channelName\":\"c\",\"payload\":{\"t\":222,\"p\":\"bb\"},\"offset\":2}\nid: v1|c:e1:2\n\n",
        ]);
        let (addr, request, _hold) = fake_sse_server(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            body,
        )?;
        let clients = Clients::start()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let report = clients.connect(sse_spec(addr)).await;
            assert_eq!((report.ok, report.failed), (1, 0), "{:?}", report.errors);
            let deadline = Instant::now() + Duration::from_secs(5);
            while clients.status().await.events < 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let status = clients.status().await;
            assert_eq!(status.events, 2);
            assert_eq!((status.protocol_errors, status.system_errors), (0, 0));
            assert_eq!(status.server_closed, 0);
            let sent: Vec<u64> = clients.records().await.iter().map(|r| r.0).collect();
            assert_eq!(sent, [111, 222]);
        });
        let request = request.recv_timeout(Duration::from_secs(1))?;
        assert!(
            request.starts_with("GET /v1/sse?projectId=p&channel=c HTTP/1.1\r\n"),
            "{request}"
        );
        Ok(())
    }

    #[test]
    fn sse_client_reports_a_refusal() -> Result<(), Box<dyn std::error::Error>> {
        let (addr, _request, _hold) = fake_sse_server(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 26\r\n\r\n\
             {\"code\":\"unknown_project\"}",
            Vec::new(),
        )?;
        let clients = Clients::start()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let report = rt.block_on(clients.connect(sse_spec(addr)));
        assert_eq!((report.ok, report.failed), (0, 1));
        assert!(
            report.errors[0].starts_with("SSE refused: HTTP/1.1 404 Not Found"),
            "{:?}",
            report.errors
        );
        Ok(())
    }

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1a\r"), Some(26));
        assert_eq!(chunk_size(b"FF;name=value"), Some(255));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"xyz"), None);
        assert_eq!(chunk_size(b""), None);
    }

    #[test]
    fn numbers_parse_up_to_the_first_non_digit() {
        assert_eq!(parse_u64(b"12345,\"p\""), Some(12345));
        assert_eq!(parse_u64(b"x"), None);
    }
}
