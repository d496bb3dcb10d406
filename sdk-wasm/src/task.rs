//! The client's task: one `spawn_local` future that owns all connection state and reads one
//! mailbox (WebSocket frames and closes, the caller's commands, `authorize` answers for
//! re-listens, and a 250 ms tick for timers). Handling an input never awaits, so state is
//! never shared across an `.await`.
//!
//! Phases: `Idle` → (connect) → `Handshake` → `Live` ⇄ (lost) `Waiting` → `Handshake` … →
//! `Closed`. Mirrors the Rust subscriber (`herald-sdk`): re-listen after every reconnection
//! (asking `authorize` again for private channels), `RemovedFromChannel` drops channels from
//! the set, unanswered requests are sent again (socketioxide may answer the handshake before
//! the server's handlers are registered, dropping a request sent right away).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures_channel::oneshot;
use futures_util::StreamExt;
use herald_protocol::codec::{self, ConnectError, DISCONNECT, Decoder, Incoming, Open};
use herald_protocol::messages::event_names::{LISTEN, REMOVE};
use herald_protocol::{
    Ack, ChannelName, HandshakeAuth, ListenRequest, RemoveRequest, SystemMessage, SystemMessageCode,
};
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::JsValue;

use crate::js::{self, ClientError, Conn, Ticker, codes};
use crate::util::backoff_ms;

/// How often timers are checked.
const TICK_MS: i32 = 250;
/// First wait for an acknowledgement before a request is sent again; doubles up to the max.
const FIRST_RESEND_MS: f64 = 1000.0;
const MAX_RESEND_MS: f64 = 4000.0;

/// What the task needs to (re)connect.
pub(crate) struct Config {
    pub(crate) url: String,
    pub(crate) auth: HandshakeAuth,
    pub(crate) authorize: Option<Function>,
    /// The WebSocket class to open connections with (`options.WebSocket`, else the global
    /// one): Node 20 has none, so the JavaScript wrapper lets the caller pass e.g. `ws`.
    pub(crate) web_socket: Function,
    pub(crate) reconnect_delay_ms: f64,
    pub(crate) reconnect_delay_max_ms: f64,
    pub(crate) max_reconnect_attempts: Option<u32>,
    pub(crate) connect_timeout_ms: f64,
    pub(crate) request_timeout_ms: f64,
}

/// State the JavaScript side reads synchronously, and the event callback.
pub(crate) struct Shared {
    pub(crate) state: &'static str,
    pub(crate) channels: BTreeSet<ChannelName>,
    /// `emit(kind, a, b)`: the JavaScript wrapper dispatches to `on(kind, …)` listeners.
    pub(crate) emit: Function,
}

pub(crate) type SharedRef = Rc<RefCell<Shared>>;

/// The answer to a command.
pub(crate) type Reply = oneshot::Sender<Result<(), ClientError>>;

/// What a WebSocket reports.
pub(crate) enum WsEvent {
    Text(String),
    Closed { code: u16, reason: String },
}

/// A request from the JavaScript-facing handle.
pub(crate) enum Command {
    Connect {
        reply: Reply,
    },
    Listen {
        channel: ChannelName,
        token: Option<String>,
        reply: Reply,
        deadline: f64,
    },
    Remove {
        channel: ChannelName,
        reply: Reply,
        deadline: f64,
    },
    Close {
        reply: Reply,
    },
}

/// One input of the mailbox.
pub(crate) enum Input {
    Ws {
        conn: u32,
        event: WsEvent,
    },
    Command(Command),
    /// The `authorize` answer for re-listening `channel` on connection `conn`.
    Token {
        conn: u32,
        channel: ChannelName,
        result: Result<String, ClientError>,
    },
    Tick,
}

/// A request awaiting its acknowledgement.
enum Pending {
    Listen {
        channel: ChannelName,
        token: Option<String>,
        reply: Reply,
        deadline: f64,
    },
    Remove {
        reply: Reply,
        deadline: f64,
    },
    /// A `listen` sent again after a reconnection.
    Relisten {
        channel: ChannelName,
        deadline: f64,
    },
    /// A `remove` nobody waits for.
    Quiet,
}

impl Pending {
    fn deadline(&self) -> Option<f64> {
        match self {
            Pending::Listen { deadline, .. }
            | Pending::Remove { deadline, .. }
            | Pending::Relisten { deadline, .. } => Some(*deadline),
            Pending::Quiet => None,
        }
    }
}

struct Outstanding {
    pending: Pending,
    event: &'static str,
    body: serde_json::Value,
    resend_at: f64,
    resend_interval: f64,
}

struct Handshake {
    conn: Conn,
    decoder: Decoder,
    deadline: f64,
    /// The Engine.IO open packet, once received.
    open: Option<Open>,
}

struct Session {
    conn: Conn,
    decoder: Decoder,
    next_ack: i64,
    outstanding: HashMap<i64, Outstanding>,
    /// Re-listens not answered yet; `connected` is announced when it reaches 0.
    relisten_left: usize,
    last_seen: f64,
    silence_limit: f64,
}

impl Session {
    fn request<T: serde::Serialize>(
        &mut self,
        event: &'static str,
        body: &T,
        pending: Pending,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_value(body)
            .map_err(|e| ClientError::new(codes::PROTOCOL, format!("encoding {event}: {e}")))?;
        self.send_request(Outstanding {
            pending,
            event,
            body,
            resend_at: js::now() + FIRST_RESEND_MS,
            resend_interval: FIRST_RESEND_MS,
        })
    }

    fn send_request(&mut self, request: Outstanding) -> Result<(), ClientError> {
        let id = self.next_ack;
        self.next_ack += 1;
        let frame = codec::encode_event(request.event, &request.body, id)
            .map_err(|e| ClientError::new(codes::PROTOCOL, e.message()))?;
        self.outstanding.insert(id, request);
        self.conn.send(&frame)
    }
}

enum Phase {
    /// Created, `connect()` not called yet (or the first attempt failed).
    Idle,
    Handshake(Handshake),
    Live(Session),
    /// Waiting for the next reconnection attempt.
    Waiting {
        until: f64,
    },
    Closed,
}

/// Why a live session ended.
struct Lost(ClientError);

pub(crate) struct Task {
    config: Rc<Config>,
    shared: SharedRef,
    rx: UnboundedReceiver<Input>,
    tx: UnboundedSender<Input>,
    phase: Phase,
    ticker: Option<Ticker>,
    next_conn: u32,
    /// Consecutive failed attempts since the last connection.
    attempt: u32,
    ever_connected: bool,
    connect_replies: Vec<Reply>,
    /// Requests waiting for a connection.
    deferred: VecDeque<Command>,
}

impl Task {
    pub(crate) fn new(
        config: Rc<Config>,
        shared: SharedRef,
        rx: UnboundedReceiver<Input>,
        tx: UnboundedSender<Input>,
    ) -> Self {
        Self {
            config,
            shared,
            rx,
            tx,
            phase: Phase::Idle,
            ticker: None,
            next_conn: 0,
            attempt: 0,
            ever_connected: false,
            connect_replies: Vec::new(),
            deferred: VecDeque::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        while let Some(input) = self.rx.next().await {
            self.handle(input);
            if matches!(self.phase, Phase::Closed) {
                break;
            }
        }
        // Requests that raced with close().
        self.rx.close();
        while let Ok(input) = self.rx.try_recv() {
            if let Input::Command(command) = input {
                reject_command(command, ClientError::closed());
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Command(Command::Connect { reply }) => self.connect(reply),
            Input::Command(Command::Close { reply }) => {
                self.finish(None);
                let _ = reply.send(Ok(()));
            }
            Input::Command(command) => self.command(command),
            Input::Ws { conn, event } => self.ws_event(conn, event),
            Input::Token {
                conn,
                channel,
                result,
            } => self.relisten_token(conn, channel, result),
            Input::Tick => self.tick(),
        }
    }

    // --- emitting ---------------------------------------------------------------------

    fn emit(&self, kind: &str, a: &JsValue, b: &JsValue) {
        let emit = self.shared.borrow().emit.clone();
        // A listener that throws is the wrapper's business, not the connection's.
        let _ = emit.call3(&JsValue::NULL, &JsValue::from_str(kind), a, b);
    }

    fn set_state(&self, state: &'static str, detail: JsValue) {
        self.shared.borrow_mut().state = state;
        self.emit("state", &JsValue::from_str(state), &detail);
    }

    fn forget_channel(&self, channel: &ChannelName) {
        self.shared.borrow_mut().channels.remove(channel);
    }

    // --- connecting -------------------------------------------------------------------

    fn connect(&mut self, reply: Reply) {
        match self.phase {
            Phase::Closed => {
                let _ = reply.send(Err(ClientError::closed()));
            }
            Phase::Live(_) => {
                let _ = reply.send(Ok(()));
            }
            Phase::Handshake(_) | Phase::Waiting { .. } => self.connect_replies.push(reply),
            Phase::Idle => {
                self.connect_replies.push(reply);
                self.ticker = Some(Ticker::start(self.tx.clone(), TICK_MS));
                self.set_state("connecting", JsValue::UNDEFINED);
                self.start_attempt();
            }
        }
    }

    fn start_attempt(&mut self) {
        self.next_conn = self.next_conn.wrapping_add(1);
        match Conn::open(
            self.next_conn,
            &self.config.web_socket,
            &self.config.url,
            self.tx.clone(),
        ) {
            Ok(conn) => {
                self.phase = Phase::Handshake(Handshake {
                    conn,
                    decoder: Decoder::new(),
                    deadline: js::now() + self.config.connect_timeout_ms,
                    open: None,
                });
            }
            Err(e) => self.attempt_failed(e, false),
        }
    }

    /// A connection attempt failed; `fatal` when the server refused the handshake.
    fn attempt_failed(&mut self, error: ClientError, fatal: bool) {
        self.phase = Phase::Idle; // drops the socket
        if !self.ever_connected {
            // connect() makes one attempt; reconnection starts once connected.
            self.ticker = None;
            for reply in self.connect_replies.drain(..) {
                let _ = reply.send(Err(error.clone()));
            }
            let deferred: Vec<_> = self.deferred.drain(..).collect();
            for command in deferred {
                reject_command(command, error.clone());
            }
            self.set_state("closed", detail(&[("error", error.to_js())]));
            return;
        }
        let exhausted = self
            .config
            .max_reconnect_attempts
            .is_some_and(|max| self.attempt >= max);
        if fatal || exhausted {
            self.finish(Some(error));
        } else {
            self.schedule_retry(error);
        }
    }

    fn schedule_retry(&mut self, error: ClientError) {
        let delay = backoff_ms(
            self.config.reconnect_delay_ms,
            self.config.reconnect_delay_max_ms,
            self.attempt,
            js::random(),
        )
        .round();
        self.attempt += 1;
        self.phase = Phase::Waiting {
            until: js::now() + delay,
        };
        self.set_state(
            "reconnecting",
            detail(&[
                ("attempt", JsValue::from(self.attempt)),
                ("delayMs", JsValue::from(delay)),
                ("error", error.to_js()),
            ]),
        );
    }

    fn ws_event(&mut self, conn: u32, event: WsEvent) {
        let current = match &self.phase {
            Phase::Handshake(h) => h.conn.id,
            Phase::Live(s) => s.conn.id,
            _ => return,
        };
        if conn != current {
            return; // a socket already abandoned
        }
        match event {
            WsEvent::Text(text) => self.frame(&text),
            WsEvent::Closed { code, reason } => {
                let why = if reason.is_empty() {
                    format!("WebSocket closed (code {code})")
                } else {
                    format!("WebSocket closed (code {code}: {reason})")
                };
                let error = ClientError::new(codes::TRANSPORT, why);
                match self.phase {
                    Phase::Live(_) => self.lost(error),
                    _ => self.attempt_failed(error, false),
                }
            }
        }
    }

    fn frame(&mut self, text: &str) {
        match &mut self.phase {
            Phase::Handshake(h) => match handshake_frame(h, &self.config, text) {
                Ok(None) => {}
                Ok(Some(open)) => self.went_live(open),
                Err((error, fatal)) => self.attempt_failed(error, fatal),
            },
            Phase::Live(_) => {
                if let Err(Lost(error)) = self.live_frame(text) {
                    self.lost(error);
                }
            }
            _ => {}
        }
    }

    /// The handshake completed: start the session, re-listen, send what waited.
    fn went_live(&mut self, open: Open) {
        let Phase::Handshake(h) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let silence_limit = open.silence_limit().as_millis() as f64;
        self.phase = Phase::Live(Session {
            conn: h.conn,
            decoder: h.decoder,
            next_ack: 0,
            outstanding: HashMap::new(),
            relisten_left: 0,
            last_seen: js::now(),
            silence_limit,
        });
        self.attempt = 0;
        self.ever_connected = true;
        for reply in self.connect_replies.drain(..) {
            let _ = reply.send(Ok(()));
        }
        if let Err(Lost(error)) = self.start_session() {
            self.lost(error);
        }
    }

    fn start_session(&mut self) -> Result<(), Lost> {
        let channels: Vec<ChannelName> = self.shared.borrow().channels.iter().cloned().collect();
        let Phase::Live(s) = &mut self.phase else {
            return Ok(());
        };
        let deadline = js::now() + self.config.request_timeout_ms;
        for channel in channels {
            s.relisten_left += 1;
            match (&self.config.authorize, channel.is_private()) {
                (Some(authorize), true) => {
                    let (authorize, tx, conn) = (authorize.clone(), self.tx.clone(), s.conn.id);
                    let timeout = self.config.request_timeout_ms;
                    wasm_bindgen_futures::spawn_local(async move {
                        let result = js::authorize(&authorize, &channel, timeout).await;
                        let _ = tx.unbounded_send(Input::Token {
                            conn,
                            channel,
                            result,
                        });
                    });
                }
                _ => {
                    let body = ListenRequest {
                        channel_name: channel.clone(),
                        auth_token: None,
                    };
                    s.request(LISTEN, &body, Pending::Relisten { channel, deadline })
                        .map_err(Lost)?;
                }
            }
        }
        if s.relisten_left == 0 {
            self.set_state("connected", JsValue::UNDEFINED);
        }
        while let Some(command) = self.deferred.pop_front() {
            self.command(command);
            if !matches!(self.phase, Phase::Live(_)) {
                break;
            }
        }
        Ok(())
    }

    /// The live connection broke: requests not answered go to the next connection.
    fn lost(&mut self, error: ClientError) {
        let Phase::Live(s) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let mut unanswered: Vec<_> = s.outstanding.into_iter().collect();
        unanswered.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (_, request) in unanswered {
            match request.pending {
                Pending::Listen {
                    channel,
                    token,
                    reply,
                    deadline,
                } => self.deferred.push_front(Command::Listen {
                    channel,
                    token,
                    reply,
                    deadline,
                }),
                // The channel is out of the set already, and a new connection starts empty.
                Pending::Remove { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                Pending::Relisten { .. } | Pending::Quiet => {}
            }
        }
        self.attempt = 0;
        self.schedule_retry(error);
    }

    /// Closes for good: `error` is `None` after `close()`.
    fn finish(&mut self, error: Option<ClientError>) {
        let closing = error.clone().unwrap_or_else(ClientError::closed);
        if let Phase::Live(s) = std::mem::replace(&mut self.phase, Phase::Closed) {
            let _ = s.conn.send(DISCONNECT);
            for request in s.outstanding.into_values() {
                match request.pending {
                    Pending::Listen { reply, .. } | Pending::Remove { reply, .. } => {
                        let _ = reply.send(Err(closing.clone()));
                    }
                    Pending::Relisten { .. } | Pending::Quiet => {}
                }
            }
        }
        self.ticker = None;
        for reply in self.connect_replies.drain(..) {
            let _ = reply.send(Err(closing.clone()));
        }
        let deferred: Vec<_> = self.deferred.drain(..).collect();
        for command in deferred {
            reject_command(command, closing.clone());
        }
        let detail = match &error {
            Some(e) => detail(&[("error", e.to_js())]),
            None => JsValue::UNDEFINED,
        };
        if self.shared.borrow().state != "closed" || error.is_some() {
            self.set_state("closed", detail);
        }
    }

    // --- requests ---------------------------------------------------------------------

    fn command(&mut self, command: Command) {
        if let Command::Remove { channel, .. } = &command {
            self.forget_channel(channel);
        }
        let Phase::Live(s) = &mut self.phase else {
            match (&self.phase, command) {
                (Phase::Closed, command) => reject_command(command, ClientError::closed()),
                // Not connected: the channel is out of the set, so it will not be re-listened.
                (_, Command::Remove { reply, .. }) => {
                    let _ = reply.send(Ok(()));
                }
                (_, command) => self.deferred.push_back(command),
            }
            return;
        };
        let sent = match command {
            Command::Listen {
                channel,
                token,
                reply,
                deadline,
            } => {
                if reply.is_canceled() {
                    return;
                }
                let body = ListenRequest {
                    channel_name: channel.clone(),
                    auth_token: token.clone(),
                };
                let pending = Pending::Listen {
                    channel,
                    token,
                    reply,
                    deadline,
                };
                s.request(LISTEN, &body, pending)
            }
            Command::Remove {
                channel,
                reply,
                deadline,
            } => {
                let body = RemoveRequest {
                    channel_name: channel,
                };
                s.request(REMOVE, &body, Pending::Remove { reply, deadline })
            }
            Command::Connect { .. } | Command::Close { .. } => Ok(()),
        };
        if let Err(error) = sent {
            self.lost(error);
        }
    }

    fn live_frame(&mut self, text: &str) -> Result<(), Lost> {
        let Phase::Live(s) = &mut self.phase else {
            return Ok(());
        };
        s.last_seen = js::now();
        // A packet this client cannot read is skipped; the connection itself is fine.
        let Ok(incoming) = s.decoder.decode(text) else {
            return Ok(());
        };
        match incoming {
            Incoming::Ping(pong) => s.conn.send(&pong).map_err(Lost)?,
            Incoming::Close | Incoming::Disconnect => {
                return Err(Lost(ClientError::new(
                    codes::TRANSPORT,
                    "the server closed the connection",
                )));
            }
            Incoming::Event(event) => self.emit("event", &js::to_js(&event), &JsValue::UNDEFINED),
            Incoming::System(message) => {
                if message.code == SystemMessageCode::RemovedFromChannel {
                    for channel in removed_channels(&message) {
                        self.forget_channel(&channel);
                    }
                }
                self.emit("system_message", &js::to_js(&message), &JsValue::UNDEFINED);
            }
            Incoming::Ack(id, ack) => self.ack(id, ack)?,
            Incoming::Open(_)
            | Incoming::Connected
            | Incoming::ConnectError(_)
            | Incoming::Ignored => {}
        }
        Ok(())
    }

    fn ack(&mut self, id: i64, ack: Ack) -> Result<(), Lost> {
        let Phase::Live(s) = &mut self.phase else {
            return Ok(());
        };
        let refused = |r| ClientError::refused(r);
        match s.outstanding.remove(&id).map(|r| r.pending) {
            None | Some(Pending::Quiet) => {}
            Some(Pending::Listen { channel, reply, .. }) => {
                let result = match ack {
                    Ack::Ok => {
                        self.shared.borrow_mut().channels.insert(channel);
                        Ok(())
                    }
                    Ack::Refused(r) => Err(refused(r)),
                };
                let _ = reply.send(result);
            }
            Some(Pending::Remove { reply, .. }) => {
                let _ = reply.send(match ack {
                    Ack::Ok => Ok(()),
                    Ack::Refused(r) => Err(refused(r)),
                });
            }
            Some(Pending::Relisten { channel, .. }) => {
                let still_wanted = self.shared.borrow().channels.contains(&channel);
                match ack {
                    Ack::Ok if !still_wanted => {
                        // Removed while the re-listen was on its way: undo it.
                        let body = RemoveRequest {
                            channel_name: channel,
                        };
                        s.request(REMOVE, &body, Pending::Quiet).map_err(Lost)?;
                    }
                    Ack::Ok => {}
                    Ack::Refused(r) => self.relisten_failed(channel, refused(r)),
                }
                self.relisten_done();
            }
        }
        Ok(())
    }

    fn relisten_token(
        &mut self,
        conn: u32,
        channel: ChannelName,
        result: Result<String, ClientError>,
    ) {
        let Phase::Live(s) = &mut self.phase else {
            return;
        };
        if s.conn.id != conn {
            return; // that connection is gone; the next one asked again
        }
        if !self.shared.borrow().channels.contains(&channel) {
            return self.relisten_done(); // removed meanwhile
        }
        match result {
            Ok(token) => {
                let body = ListenRequest {
                    channel_name: channel.clone(),
                    auth_token: Some(token),
                };
                let deadline = js::now() + self.config.request_timeout_ms;
                if let Err(error) =
                    s.request(LISTEN, &body, Pending::Relisten { channel, deadline })
                {
                    self.lost(error);
                }
            }
            Err(error) => {
                self.relisten_failed(channel, error);
                self.relisten_done();
            }
        }
    }

    fn relisten_failed(&self, channel: ChannelName, error: ClientError) {
        self.forget_channel(&channel);
        let failure = detail(&[
            ("channelName", JsValue::from_str(channel.as_str())),
            ("error", error.to_js()),
        ]);
        self.emit("relisten_failed", &failure, &JsValue::UNDEFINED);
    }

    fn relisten_done(&mut self) {
        let Phase::Live(s) = &mut self.phase else {
            return;
        };
        if s.relisten_left == 0 {
            return;
        }
        s.relisten_left -= 1;
        if s.relisten_left == 0 {
            self.set_state("connected", JsValue::UNDEFINED);
        }
    }

    // --- timers -----------------------------------------------------------------------

    fn tick(&mut self) {
        let now = js::now();
        self.expire_deferred(now);
        match &mut self.phase {
            Phase::Handshake(h) if now > h.deadline => {
                let error = ClientError::new(
                    codes::TIMEOUT,
                    format!(
                        "no Socket.IO handshake from {} within {} ms",
                        self.config.url, self.config.connect_timeout_ms
                    ),
                );
                self.attempt_failed(error, false);
            }
            Phase::Waiting { until } if now >= *until => self.start_attempt(),
            Phase::Live(_) => {
                if let Err(Lost(error)) = self.live_timers(now) {
                    self.lost(error);
                }
            }
            _ => {}
        }
    }

    fn live_timers(&mut self, now: f64) -> Result<(), Lost> {
        let Phase::Live(s) = &mut self.phase else {
            return Ok(());
        };
        if now - s.last_seen > s.silence_limit {
            return Err(Lost(ClientError::new(
                codes::TIMEOUT,
                format!("no heartbeat from the server for {} ms", s.silence_limit),
            )));
        }
        let expired: Vec<i64> = s
            .outstanding
            .iter()
            .filter(|(_, r)| r.pending.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        let mut relistens_expired = Vec::new();
        for id in expired {
            let Some(request) = s.outstanding.remove(&id) else {
                continue;
            };
            let timeout = |what: &str| {
                ClientError::new(
                    codes::TIMEOUT,
                    format!(
                        "no answer to {what} within {} ms",
                        self.config.request_timeout_ms
                    ),
                )
            };
            match request.pending {
                Pending::Listen { reply, channel, .. } => {
                    let _ = reply.send(Err(timeout(&format!("listen {channel}"))));
                }
                Pending::Remove { reply, .. } => {
                    let _ = reply.send(Err(timeout("remove")));
                }
                Pending::Relisten { channel, .. } => {
                    let error = timeout(&format!("listen {channel}"));
                    relistens_expired.push((channel, error));
                }
                Pending::Quiet => {}
            }
        }
        // Requests unanswered for a while are sent again under a new ack id; listen and
        // remove are idempotent, and a late answer to the old id is ignored.
        let overdue: Vec<i64> = s
            .outstanding
            .iter()
            .filter(|(_, r)| r.resend_at <= now && !matches!(r.pending, Pending::Quiet))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            let Some(mut request) = s.outstanding.remove(&id) else {
                continue;
            };
            request.resend_interval = (request.resend_interval * 2.0).min(MAX_RESEND_MS);
            request.resend_at = now + request.resend_interval;
            s.send_request(request).map_err(Lost)?;
        }
        for (channel, error) in relistens_expired {
            self.relisten_failed(channel, error);
            self.relisten_done();
        }
        Ok(())
    }

    fn expire_deferred(&mut self, now: f64) {
        let timeout_ms = self.config.request_timeout_ms;
        let (expired, kept): (Vec<_>, Vec<_>) =
            self.deferred.drain(..).partition(|command| match command {
                Command::Listen { deadline, .. } | Command::Remove { deadline, .. } => {
                    *deadline <= now
                }
                _ => false,
            });
        self.deferred = kept.into();
        for command in expired {
            reject_command(
                command,
                ClientError::new(
                    codes::TIMEOUT,
                    format!("not connected within {timeout_ms} ms"),
                ),
            );
        }
    }
}

/// Handles one frame during the handshake: `Ok(Some(open))` once the namespace accepted us,
/// `Err((error, fatal))` when the attempt failed (`fatal` for a refused handshake).
fn handshake_frame(
    h: &mut Handshake,
    config: &Config,
    text: &str,
) -> Result<Option<Open>, (ClientError, bool)> {
    let protocol = |message: &str| (ClientError::new(codes::PROTOCOL, message), false);
    let incoming = h.decoder.decode(text).map_err(|e| protocol(e.message()))?;
    match incoming {
        Incoming::Open(open) => {
            let connect = codec::encode_connect(&config.auth).map_err(|e| protocol(e.message()))?;
            h.conn.send(&connect).map_err(|e| (e, false))?;
            h.open = Some(open);
            Ok(None)
        }
        Incoming::Ping(pong) => {
            h.conn.send(&pong).map_err(|e| (e, false))?;
            Ok(None)
        }
        Incoming::Connected => Ok(Some(h.open.unwrap_or(DEFAULT_OPEN))),
        Incoming::ConnectError(ConnectError::Refused(r)) => Err((ClientError::refused(r), true)),
        Incoming::ConnectError(ConnectError::Other(message)) => Err((
            ClientError::new(codes::PROTOCOL, format!("connection refused: {message}")),
            true,
        )),
        Incoming::Close | Incoming::Disconnect => Err((
            ClientError::new(codes::TRANSPORT, "the server closed the connection"),
            false,
        )),
        _ => Ok(None),
    }
}

/// Engine.IO's defaults, in case a server answers CONNECT before sending its timings.
const DEFAULT_OPEN: Open = Open {
    ping_interval: std::time::Duration::from_millis(25_000),
    ping_timeout: std::time::Duration::from_millis(20_000),
};

fn reject_command(command: Command, error: ClientError) {
    match command {
        Command::Connect { reply }
        | Command::Listen { reply, .. }
        | Command::Remove { reply, .. }
        | Command::Close { reply } => {
            let _ = reply.send(Err(error));
        }
    }
}

/// A plain object from key/value pairs.
pub(crate) fn detail(pairs: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (key, value) in pairs {
        let _ = Reflect::set(&object, &JsValue::from_str(key), value);
    }
    object.into()
}

/// The `data.channels` of a `RemovedFromChannel` message (invalid names are skipped).
pub(crate) fn removed_channels(message: &SystemMessage) -> Vec<ChannelName> {
    message
        .data
        .as_ref()
        .and_then(|d| d.get("channels"))
        .and_then(|c| c.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|c| c.as_str())
                .filter_map(|c| ChannelName::parse(c).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_channels_from_data() {
        let m = SystemMessage {
            code: SystemMessageCode::RemovedFromChannel,
            message: "bye".into(),
            data: Some(serde_json::json!({"channels": ["private-a", "bad name", 3, "b"]})),
        };
        let names: Vec<String> = removed_channels(&m).into_iter().map(String::from).collect();
        assert_eq!(names, ["private-a", "b"]);
        let none = SystemMessage { data: None, ..m };
        assert!(removed_channels(&none).is_empty());
    }
}
