//! The browser driver of [`herald_client_core::Session`]: one `spawn_local` future that owns
//! the session and reads one mailbox (WebSocket frames and closes, the caller's commands,
//! `authorize` answers, and the one-shot timer armed for the session's next timeout). It
//! moves bytes, time and tokens; every protocol decision is the session's. Handling an input
//! never awaits, so state is never shared across an `.await`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures_channel::oneshot;
use futures_util::StreamExt;
use herald_client_core::{
    ConnId, FetchId, Instant, Output, RequestId, Session, SessionError, State, TransportEnd,
};
use herald_protocol::presence::Member;
use herald_protocol::{ChannelName, ErrorCode};
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::JsValue;

use crate::js::{self, ClientError, Conn, Timer, codes};

/// What the driver needs besides the session's own settings.
pub(crate) struct Config {
    pub(crate) url: String,
    pub(crate) authorize: Option<Function>,
    /// The WebSocket class to open connections with (`options.WebSocket`, else the global
    /// one): Node 20 has none, so the JavaScript wrapper lets the caller pass e.g. `ws`.
    pub(crate) web_socket: Function,
    pub(crate) request_timeout_ms: f64,
    pub(crate) session: herald_client_core::Config,
}

/// State the JavaScript side reads synchronously, and the event callback.
pub(crate) struct Shared {
    pub(crate) state: &'static str,
    /// The session's channels in name order, copied after every input. A `Vec`: the session
    /// already yields them sorted, and collecting into a `BTreeSet` would compile a sort
    /// into the wasm for nothing.
    pub(crate) channels: Vec<ChannelName>,
    /// The members of each presence channel listened to: set before the event that changed
    /// them is emitted, dropped with the channel.
    pub(crate) members: Vec<(ChannelName, Vec<Member>)>,
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
    Connect { reply: Reply },
    Listen { channel: ChannelName, reply: Reply },
    Remove { channel: ChannelName, reply: Reply },
    Close { reply: Reply },
}

/// One input of the mailbox.
pub(crate) enum Input {
    Ws {
        conn: u64,
        event: WsEvent,
    },
    Command(Command),
    /// The `authorize` answer to fetch `fetch`.
    Token {
        fetch: FetchId,
        result: Result<String, ClientError>,
    },
    /// The timer armed for the session's next timeout fired.
    Timer,
}

pub(crate) struct Task {
    config: Rc<Config>,
    session: Session<ClientError>,
    shared: SharedRef,
    rx: UnboundedReceiver<Input>,
    tx: UnboundedSender<Input>,
    conn: Option<Conn>,
    timer: Option<(Instant, Timer)>,
    replies: HashMap<RequestId, Reply>,
}

impl Task {
    pub(crate) fn new(
        config: Rc<Config>,
        shared: SharedRef,
        rx: UnboundedReceiver<Input>,
        tx: UnboundedSender<Input>,
    ) -> Self {
        Self {
            session: Session::new(config.session.clone()),
            config,
            shared,
            rx,
            tx,
            conn: None,
            timer: None,
            replies: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        while let Some(input) = self.rx.next().await {
            self.handle(input);
            self.drain();
            let mut shared = self.shared.borrow_mut();
            shared.channels = self.session.channels().cloned().collect();
            let Shared {
                channels, members, ..
            } = &mut *shared;
            members.retain(|(c, _)| channels.contains(c));
            drop(shared);
            if self.session.is_closed() {
                break;
            }
            self.arm_timer();
        }
        self.timer = None;
        // Requests that raced with close().
        self.rx.close();
        while let Ok(input) = self.rx.try_recv() {
            if let Input::Command(command) = input {
                let (Command::Connect { reply }
                | Command::Listen { reply, .. }
                | Command::Remove { reply, .. }
                | Command::Close { reply }) = command;
                let _ = reply.send(Err(ClientError::closed()));
            }
        }
    }

    fn handle(&mut self, input: Input) {
        let now = now();
        match input {
            Input::Command(command) => {
                let (id, reply) = match command {
                    Command::Connect { reply } => (self.session.connect(now), reply),
                    Command::Listen { channel, reply } => {
                        (self.session.listen(now, channel, None), reply)
                    }
                    Command::Remove { channel, reply } => {
                        (self.session.remove(now, channel), reply)
                    }
                    Command::Close { reply } => {
                        self.session.close(now);
                        let _ = reply.send(Ok(()));
                        return;
                    }
                };
                self.replies.insert(id, reply);
            }
            Input::Ws { conn, event } => {
                let conn = ConnId::from_raw(conn);
                match event {
                    WsEvent::Text(text) => self.session.transport_frame(now, conn, &text),
                    WsEvent::Closed { code, reason } => {
                        if self.conn.as_ref().is_some_and(|c| c.id == conn.get()) {
                            self.conn = None;
                        }
                        let end = TransportEnd::Closed {
                            code: Some(code),
                            reason,
                        };
                        self.session.transport_closed(now, conn, end);
                    }
                }
            }
            Input::Token { fetch, result } => self.session.token_ready(now, fetch, result),
            Input::Timer => {
                self.timer = None;
                self.session.handle_timeout(now);
            }
        }
    }

    /// Carries out what the session asked for.
    fn drain(&mut self) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::OpenTransport(conn) => {
                    self.conn = None;
                    match Conn::open(
                        conn.get(),
                        &self.config.web_socket,
                        &self.config.url,
                        self.tx.clone(),
                    ) {
                        Ok(c) => self.conn = Some(c),
                        Err(error) => {
                            let end = TransportEnd::Failed {
                                error,
                                retryable: true,
                            };
                            self.session.transport_closed(now(), conn, end);
                        }
                    }
                }
                Output::Send(frame) => {
                    if let Some(conn) = &self.conn
                        && let Err(error) = conn.send(&frame)
                    {
                        let id = ConnId::from_raw(conn.id);
                        self.conn = None;
                        let end = TransportEnd::Failed {
                            error,
                            retryable: true,
                        };
                        self.session.transport_closed(now(), id, end);
                    }
                }
                Output::CloseTransport => self.conn = None, // dropping closes it
                Output::Event(event) => {
                    self.emit("event", &js::to_js(&event), &JsValue::UNDEFINED);
                }
                Output::System(message) => {
                    self.emit("system_message", &js::to_js(&message), &JsValue::UNDEFINED);
                }
                Output::Recovery(r) => {
                    let reason = r.reason.map_or(JsValue::UNDEFINED, |reason| {
                        JsValue::from_str(reason.as_str())
                    });
                    let recovery = detail(&[
                        ("channelName", JsValue::from_str(r.channel.as_str())),
                        ("recovered", JsValue::from_bool(r.recovered)),
                        ("reason", reason),
                    ]);
                    self.emit("recovery", &recovery, &JsValue::UNDEFINED);
                }
                Output::RelistenFailed { channel, error } => {
                    let failure = detail(&[
                        ("channelName", JsValue::from_str(channel.as_str())),
                        ("error", client_error(error).to_js()),
                    ]);
                    self.emit("relisten_failed", &failure, &JsValue::UNDEFINED);
                }
                Output::State(state) => self.state(state),
                Output::Presence(change) => {
                    self.share_members(&change.channel);
                    let presence = detail(&[
                        ("channelName", JsValue::from_str(change.channel.as_str())),
                        ("action", JsValue::from_str(change.action.as_str())),
                        ("member", member_to_js(&change.member)),
                    ]);
                    self.emit("presence", &presence, &JsValue::UNDEFINED);
                }
                Output::PresenceSynced { channel, members } => {
                    let synced = detail(&[
                        ("channelName", JsValue::from_str(channel.as_str())),
                        ("members", members_to_js(&members)),
                    ]);
                    self.shared_members(&channel, members);
                    self.emit("presence_synced", &synced, &JsValue::UNDEFINED);
                }
                Output::FetchToken { fetch, channel } => self.fetch_token(fetch, channel),
                Output::Complete { request, result } => {
                    if let Some(reply) = self.replies.remove(&request) {
                        let _ = reply.send(result.map_err(client_error));
                    }
                }
            }
        }
    }

    fn state(&mut self, state: State<ClientError>) {
        let (name, detail) = match state {
            State::Connecting => ("connecting", JsValue::UNDEFINED),
            State::Connected => ("connected", JsValue::UNDEFINED),
            State::Reconnecting {
                attempt,
                delay,
                cause,
            } => (
                "reconnecting",
                detail(&[
                    ("attempt", JsValue::from(attempt)),
                    // Through u64: converting as_millis()'s u128 to f64 is a helper of its own.
                    (
                        "delayMs",
                        JsValue::from(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX) as f64),
                    ),
                    ("error", client_error(cause).to_js()),
                ]),
            ),
            State::Closed { cause: None } if self.shared.borrow().state == "closed" => return,
            State::Closed { cause } => (
                "closed",
                match cause {
                    Some(e) => detail(&[("error", client_error(e).to_js())]),
                    None => JsValue::UNDEFINED,
                },
            ),
        };
        self.shared.borrow_mut().state = name;
        self.emit("state", &JsValue::from_str(name), &detail);
    }

    /// Copies the session's members of `channel` to what `members()` reads.
    fn share_members(&self, channel: &ChannelName) {
        self.shared_members(channel, self.session.members(channel));
    }

    fn shared_members(&self, channel: &ChannelName, members: Vec<Member>) {
        let mut shared = self.shared.borrow_mut();
        match shared.members.iter_mut().find(|(c, _)| c == channel) {
            Some((_, slot)) => *slot = members,
            None => shared.members.push((channel.clone(), members)),
        }
    }

    fn emit(&self, kind: &str, a: &JsValue, b: &JsValue) {
        let emit = self.shared.borrow().emit.clone();
        // A listener that throws is the wrapper's business, not the connection's.
        let _ = emit.call3(&JsValue::NULL, &JsValue::from_str(kind), a, b);
    }

    fn fetch_token(&self, fetch: FetchId, channel: ChannelName) {
        let tx = self.tx.clone();
        let Some(authorize) = self.config.authorize.clone() else {
            let error = client_error(SessionError::NoTokenProvider(channel));
            let _ = tx.unbounded_send(Input::Token {
                fetch,
                result: Err(error),
            });
            return;
        };
        let timeout = self.config.request_timeout_ms;
        wasm_bindgen_futures::spawn_local(async move {
            let result = js::authorize(&authorize, &channel, timeout).await;
            // The session may not need it any more; then it is ignored.
            let _ = tx.unbounded_send(Input::Token { fetch, result });
        });
    }

    /// Arms the one timer for the session's next timeout (none when nothing is timed, so an
    /// idle client keeps no Node process alive).
    fn arm_timer(&mut self) {
        let next = self.session.next_timeout();
        if self.timer.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        self.timer = next.map(|at| {
            let wait = at.saturating_since(now()).as_secs_f64() * 1000.0;
            (at, Timer::start(self.tx.clone(), wait))
        });
    }
}

fn now() -> Instant {
    Instant::from_millis_f64(js::now())
}

/// The session's error as the JavaScript `HeraldError`'s code and message.
fn client_error(e: SessionError<ClientError>) -> ClientError {
    match e {
        SessionError::Refused { code, message } => ClientError::new(code.as_str(), message),
        SessionError::Timeout(what) => {
            ClientError::new(codes::TIMEOUT, format!("timed out {what}"))
        }
        closed @ SessionError::ClosedByServer { .. } => {
            ClientError::new(codes::TRANSPORT, closed.to_string())
        }
        SessionError::Protocol(what) => ClientError::new(codes::PROTOCOL, what),
        SessionError::NoTokenProvider(channel) => ClientError::new(
            ErrorCode::TokenMissing.as_str(),
            format!("{channel} is a private channel: pass an `authorize` callback to the client"),
        ),
        SessionError::Closed => ClientError::closed(),
        SessionError::Driver(e) => e,
    }
}

/// `{ userId, info }`, built by hand (no serde in the wasm for it; `info` is already JSON
/// text).
fn member_to_js(member: &Member) -> JsValue {
    let info = member.info.as_ref().map_or(JsValue::NULL, |info| {
        js_sys::JSON::parse(info.as_json()).unwrap_or(JsValue::NULL)
    });
    detail(&[
        ("userId", JsValue::from_str(member.user_id.as_str())),
        ("info", info),
    ])
}

/// A JavaScript array of [`member_to_js`].
pub(crate) fn members_to_js(members: &[Member]) -> JsValue {
    members
        .iter()
        .map(member_to_js)
        .collect::<js_sys::Array>()
        .into()
}

/// A plain object from key/value pairs.
pub(crate) fn detail(pairs: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (key, value) in pairs {
        let _ = Reflect::set(&object, &JsValue::from_str(key), value);
    }
    object.into()
}
