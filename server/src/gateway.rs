//! The client gateway: Socket.IO handlers for the default namespace.
//!
//! * handshake: `auth.projectId` must name an existing project ([`authenticate`]);
//! * `listen` / `remove`: join or leave `{projectId}:{channelName}` rooms, private ones only
//!   with a valid channel token ([`ChannelTokens::authorize_listen`]); a `listen` with
//!   `since` first gets the events it missed from the channel's history ([`listen`]);
//! * `event` from a client: relayed to the other members of a private channel it joined;
//! * any other event: refused with `unknown_event`;
//! * disconnect: connection-tracking entries removed; a recoverable session's record saved;
//! * connection state recovery for `socket.io-client` ([`crate::csr`]) on both transports: the
//!   handshake's session ([`connect_session`]) and its resume ([`resume`]; socketioxide
//!   sockets check it in the connect middleware and replay once connected, see `admit`).
//!
//! Every request is answered: through the ack when the client asked for one, and always with
//! a `system_message` (`Success` or `Error` with the error code).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_protocol::history::{ListenAck, ListenAnswer};
use herald_protocol::messages::event_names::{EVENT, LISTEN, PRESENCE, REMOVE, SYSTEM_MESSAGE};
use herald_protocol::{
    Ack, ApiKeyId, ChannelEvent, ChannelKind, ChannelName, ChannelOffset, ClientEvent, Epoch,
    ErrorCode, HandshakeAuth, HistorySettings, ListenRequest, ProjectId, Recovery, RecoveryFailure,
    Refusal, RemoveRequest, RoomName, StreamPosition, SystemMessage,
};
use parking_lot::Mutex;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::{DisconnectReason, Sid};
use socketioxide_core::adapter::DefinedAdapter;
use time::OffsetDateTime;

use crate::channel_token::{ChannelTokens, Grant, check_signing_key, store_refusal};
use crate::direct::DirectRooms;
use crate::fanout::Fanout;
use crate::log_throttle::{LogThrottle, backend_faults};
use crate::metrics as m;
use crate::presence::Presences;
use crate::revocation::{LocalSockets, RevocationQueue, RevocationReason};
use crate::store::{SecretId, Store};
use crate::tracking::ConnectionTracker;
use herald_protocol::presence::{Member, PresenceRequest, PresenceSnapshot, not_presence_channel};

/// What the gateway handlers share.
#[derive(Clone)]
pub struct Gateway(Arc<GatewayInner>);

/// Contents of [`Gateway`].
pub struct GatewayInner {
    /// Projects and keys.
    pub store: Arc<dyn Store>,
    /// Socket ↔ (room, key) index.
    pub tracker: Arc<dyn ConnectionTracker>,
    /// Channel token checks.
    pub tokens: ChannelTokens,
    /// Channels per socket.
    pub max_channels_per_socket: usize,
    /// Largest client event payload.
    pub max_payload_bytes: usize,
    /// The revoked-key set (tokens of a revoked key open nothing).
    pub revocations: Arc<dyn RevocationQueue>,
    /// Where events go: client events relayed to private channels use it too.
    pub fanout: Arc<Fanout>,
    /// Channel history (publish appends, `listen` with `since` replays).
    pub histories: Arc<crate::history::Histories>,
    /// Connection state recovery for socket.io-client (`None`: disabled).
    pub recovery: Option<Arc<crate::csr::Recovery>>,
    /// Presence channels' members and their announcements.
    pub presence: Arc<Presences>,
    /// This instance's subscriptions per room (the `channel_occupied`/`channel_vacated`
    /// webhooks).
    pub occupancy: Arc<crate::occupancy::Occupancy>,
    /// Where webhook events are handed over (client events).
    pub webhooks: crate::webhooks::WebhookEvents,
}

impl GatewayInner {
    /// The direct transport's sockets and rooms.
    pub fn direct(&self) -> &Arc<DirectRooms> {
        self.fanout.direct()
    }
}

/// A connected client as the gateway sees it, whichever transport carries it: a socketioxide
/// socket (HTTP long-polling, upgrades) or a direct WebSocket connection
/// ([`crate::direct`]). The request handlers below are written once against this trait.
pub trait Peer: Send + Sync {
    /// The socket id (tracking entries and logs use it).
    fn sid(&self) -> Sid;
    /// The session, once the handshake admitted the socket.
    fn session(&self) -> Option<Arc<Session>>;
    /// Joins a room on this instance.
    fn join(&self, room: &RoomName);
    /// Leaves a room on this instance.
    fn leave(&self, room: &RoomName);
    /// Whether the socket is still connected.
    fn is_connected(&self) -> bool;
    /// Sends a `system_message` (dropped with a debug line when the socket is gone or full).
    fn send_system(&self, message: &SystemMessage);
    /// Sends a recovery's replayed history events (`event`, oldest first) to this socket only.
    ///
    /// The replay is one unit for the socket's queue: it was asked for and is bounded by the
    /// project's `history.size`, so it never counts as the socket falling behind (a replay
    /// longer than `--socket-buffer` would otherwise close every recovering socket as a slow
    /// consumer, and its next recovery again).
    fn send_replay(&self, replay: &Replay<'_>);
}

/// A recovery's replayed events of one channel. With an epoch, the direct transport adds each
/// event's recovery marker to its frame and counts it as a send of the subscription
/// ([`crate::csr`]).
#[derive(Debug, Clone, Copy)]
pub struct Replay<'a> {
    /// The channel's room.
    pub room: &'a RoomName,
    /// The channel.
    pub channel: &'a ChannelName,
    /// The channel's epoch (`None`: the events carry no position).
    pub epoch: Option<&'a Epoch>,
    /// The encoded `event` payloads and their offsets, oldest first.
    pub events: &'a [(Box<serde_json::value::RawValue>, ChannelOffset)],
}

impl<A: Adapter> Peer for SocketRef<A> {
    fn sid(&self) -> Sid {
        self.id
    }
    fn session(&self) -> Option<Arc<Session>> {
        self.extensions.get::<Arc<Session>>()
    }
    fn join(&self, room: &RoomName) {
        socketioxide::socket::Socket::join(self, room.as_str().to_owned());
    }
    fn leave(&self, room: &RoomName) {
        socketioxide::socket::Socket::leave(self, room.as_str().to_owned());
    }
    fn is_connected(&self) -> bool {
        self.connected()
    }
    fn send_system(&self, message: &SystemMessage) {
        if let Err(e) = self.emit(SYSTEM_MESSAGE, message) {
            tracing::debug!(socket_id = %self.id, error = %e, "system message not delivered");
        }
    }
    fn send_replay(&self, replay: &Replay<'_>) {
        // socketioxide queues packet by packet, each taking a place of its buffer
        // (`--socket-buffer`, default 1024, above the default `history.size` of 100): what does
        // not fit is counted as not queued, as in the live fan-out to these sockets.
        let mut not_queued = 0u64;
        for (data, offset) in replay.events {
            let result = match replay.epoch {
                Some(epoch) => {
                    let marker = herald_protocol::csr::marker(*offset, replay.channel);
                    send_marked(
                        self,
                        replay.room,
                        data,
                        Marked {
                            offset: offset.get(),
                            epoch: epoch.as_str(),
                            marker: &marker,
                        },
                    )
                }
                None => self.emit(EVENT, data),
            };
            if let Err(e) = result {
                not_queued += 1;
                tracing::debug!(socket_id = %self.id, error = %e, "history event not delivered");
            }
        }
        if not_queued > 0 {
            metrics::counter!(m::DELIVERIES, "outcome" => "not_queued").increment(not_queued);
        }
    }
}

/// A channel event's position and its recovery marker ([`herald_protocol::csr::marker`]), for
/// a socketioxide socket.
#[derive(Debug, Clone, Copy)]
pub struct Marked<'a> {
    /// The event's offset.
    pub offset: u64,
    /// Its epoch.
    pub epoch: &'a str,
    /// `"<offset>:<channelName>"`, the event's last argument.
    pub marker: &'a str,
}

/// Sends a channel `event` of `room` to a socketioxide socket with its marker as last argument;
/// in a recoverable session that tracks the room, numbered and noted in the subscription's cell
/// like [`crate::direct::DirectConn::send_tracked`] ([`CsrState::send_tracked`]).
pub fn send_marked<A: Adapter>(
    s: &SocketRef<A>,
    room: &RoomName,
    data: &serde_json::value::RawValue,
    at: Marked<'_>,
) -> Result<(), socketioxide::SendError> {
    let send = || s.emit(EVENT, &(data, at.marker));
    let session = session(s);
    let tracked = session
        .as_ref()
        .and_then(|x| Some((x.csr.as_ref()?, x.sub(room)?)));
    match tracked {
        Some((csr, cell)) => csr.send_tracked(&cell, at.offset, at.epoch, send),
        None => send(),
    }
}

impl Gateway {
    /// Wraps the shared parts.
    pub fn new(inner: GatewayInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for Gateway {
    type Target = GatewayInner;
    fn deref(&self) -> &GatewayInner {
        &self.0
    }
}

/// Per-socket state, kept in the socket's extensions (socketioxide) or its connection
/// (direct transport).
#[derive(Debug)]
pub struct Session {
    /// The project from the handshake.
    pub project: ProjectId,
    /// Channels this socket listens to; private ones with what their token granted (the key
    /// that signed it, the secret that verified it).
    channels: Mutex<HashMap<ChannelName, Option<Grant>>>,
    /// Connection state recovery (direct transport with recovery on).
    pub csr: Option<CsrState>,
}

/// A recoverable session's own part ([`crate::csr`]).
#[derive(Debug)]
pub struct CsrState {
    /// The pid the CONNECT reply carries.
    pub pid: Mutex<herald_protocol::csr::Pid>,
    /// The `offset` the client presented when the session started.
    pub baseline: Option<String>,
    /// Per channel room: what the subscription was sent.
    subs: Mutex<HashMap<RoomName, Arc<crate::csr::SubCell>>>,
    /// Tracked sends so far (socketioxide sockets; a direct connection numbers its own under
    /// its wire lock, [`crate::direct::DirectConn::send_tracked`]).
    sent: Mutex<u64>,
    /// A socketioxide socket's resume, checked in the connect middleware, replayed once
    /// socketioxide counts the socket connected ([`admit`]); held while it is applied, so a
    /// disconnect meanwhile waits for it.
    pending: tokio::sync::Mutex<Option<ResumePlan>>,
}

impl CsrState {
    /// A new session's: a fresh pid.
    pub fn new(baseline: Option<String>) -> Self {
        Self {
            pid: Mutex::new(herald_protocol::csr::Pid::from_bytes(rand::random())),
            baseline,
            subs: Mutex::new(HashMap::new()),
            sent: Mutex::new(0),
            pending: tokio::sync::Mutex::new(None),
        }
    }

    /// Numbers a tracked send, notes it in `cell` (the event at `offset` of `epoch`) and makes
    /// it with `send` while the number is held: the numbers follow the order the sends reach
    /// the socket's queue.
    pub fn send_tracked<R>(
        &self,
        cell: &crate::csr::SubCell,
        offset: u64,
        epoch: &str,
        send: impl FnOnce() -> R,
    ) -> R {
        let mut sent = self.sent.lock();
        *sent += 1;
        cell.record(*sent, offset, epoch);
        send()
    }
}

impl Session {
    /// A session in `project` with no channels.
    pub fn new(project: ProjectId) -> Self {
        Self {
            project,
            channels: Mutex::new(HashMap::new()),
            csr: None,
        }
    }

    /// A recoverable session in `project`.
    pub fn recoverable(project: ProjectId, csr: CsrState) -> Self {
        Self {
            csr: Some(csr),
            ..Self::new(project)
        }
    }

    /// The subscription cell of a channel room, if tracked.
    pub fn sub(&self, room: &RoomName) -> Option<Arc<crate::csr::SubCell>> {
        self.csr.as_ref()?.subs.lock().get(room).cloned()
    }

    fn set_sub(&self, room: &RoomName, cell: Arc<crate::csr::SubCell>) {
        if let Some(csr) = &self.csr {
            csr.subs.lock().insert(room.clone(), cell);
        }
    }

    fn drop_sub(&self, room: &RoomName) {
        if let Some(csr) = &self.csr {
            csr.subs.lock().remove(room);
        }
    }

    /// Every room this session is in: its project's and its channels'.
    pub fn rooms(&self) -> Vec<RoomName> {
        let channels = self.channels.lock();
        let mut rooms = Vec::with_capacity(channels.len() + 1);
        rooms.push(RoomName::project(&self.project));
        rooms.extend(channels.keys().map(|c| RoomName::channel(&self.project, c)));
        rooms
    }
}

/// A refused handshake; its `Display` is the `message` of the client's `connect_error`:
/// `"{code}: {message}"`.
#[derive(Debug)]
pub struct ConnectRefusal(pub Refusal);

impl std::fmt::Display for ConnectRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.message)
    }
}

/// Registers the gateway on the default namespace of `io`. With a remote adapter the returned
/// future subscribes to the adapter's channels and must be awaited; the namespace accepts
/// sockets once it resolved.
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>) -> A::InitRes {
    io.ns("/", on_connect::<A>.with(authenticate::<A>))
}

/// Connect middleware: the handshake must name an existing project.
async fn authenticate<A: Adapter>(
    s: SocketRef<A>,
    TryData(auth): TryData<Value>,
    State(gw): State<Gateway>,
) -> Result<(), ConnectRefusal> {
    admit(s, auth.ok(), gw).await
}

/// Checks a handshake's `auth`: it must name an existing project. Counts refusals.
pub async fn check_handshake(
    gw: &Gateway,
    sid: Sid,
    auth: Option<&Value>,
) -> Result<ProjectId, ConnectRefusal> {
    let result = async {
        let auth = HandshakeAuth::parse(auth).map_err(ConnectRefusal)?;
        match gw.store.project(&auth.project_id).await {
            Ok(Some(_)) => Ok(auth.project_id),
            Ok(None) => {
                tracing::debug!(socket_id = %sid, project_id = %auth.project_id, "handshake refused: unknown project");
                Err(ConnectRefusal(Refusal::new(
                    ErrorCode::UnknownProject,
                    format!("project {} does not exist", auth.project_id),
                )))
            }
            Err(e) => {
                if let Some(p) = backend_faults().check(&"handshake") {
                    tracing::warn!(socket_id = %sid, error = %e, suppressed = p.suppressed, "handshake failed: store error");
                }
                Err(ConnectRefusal(store_refusal(e)))
            }
        }
    }
    .await;
    if let Err(ConnectRefusal(r)) = &result {
        metrics::counter!(m::CONNECT_REFUSALS, "code" => r.code.as_str()).increment(1);
    }
    result
}

/// The socketioxide handshake. A recoverable session's CONNECT reply carries its pid (the
/// vendored socketioxide adds the [`socketioxide::ConnectPid`] left in the extensions). A
/// resume is checked here, so the reply can carry the same pid when it will succeed, and
/// applied by [`on_connect`]: socketioxide lets a socket receive events (its own or a room's)
/// only once it counts it connected, after the reply.
async fn admit<A: Adapter>(
    s: SocketRef<A>,
    auth: Option<Value>,
    gw: Gateway,
) -> Result<(), ConnectRefusal> {
    let project = check_handshake(&gw, s.id, auth.as_ref()).await?;
    let (session, resume) = connect_session(&gw, project.clone(), auth.as_ref());
    let session = Arc::new(session);
    s.extensions.insert(session.clone());
    // Handlers are registered here, before socketioxide sends the CONNECT packet: a client
    // may emit `listen` the instant it sees CONNECT, and the connect handler runs only after.
    Peer::join(&s, &RoomName::project(&project));
    s.on(LISTEN, on_listen::<A>);
    s.on(REMOVE, on_remove::<A>);
    s.on(EVENT, on_client_event::<A>);
    s.on(PRESENCE, on_presence::<A>);
    s.on_fallback(on_unknown_event::<A>);
    s.on_disconnect(on_disconnect::<A>);
    gw.fanout.sio_socket_joined();
    if let Some(csr) = &session.csr {
        if let Some(resume) = resume {
            match prepare_resume(&s, &gw, &resume).await {
                Ok(plan) => {
                    *csr.pid.lock() = plan.pid.clone();
                    *csr.pending.lock().await = Some(plan);
                }
                Err(f) => count_resume(&s, &Err((f, false))),
            }
        }
        let pid = csr.pid.lock().as_str().to_owned();
        s.extensions.insert(socketioxide::ConnectPid(pid));
    }
    Ok(())
}

async fn on_connect<A: Adapter>(s: SocketRef<A>, State(gw): State<Gateway>) {
    metrics::gauge!(m::SOCKETS_CONNECTED).increment(1.0);
    if let Some(session) = session(&s) {
        tracing::debug!(socket_id = %s.id, project_id = %session.project, transport = ?s.transport_type(), "socket connected");
        finish_resume(&s, &gw, &session).await;
    }
}

/// Applies the resume [`admit`] checked: the socket is connected now, the reply told the
/// client it recovered. When the replay fails after all (a channel's history expired or its
/// key was revoked since the check), the engine.io connection is closed: the client
/// reconnects and, the record being used, starts a new session (the pid it holds is no
/// longer this session's).
async fn finish_resume<A: Adapter>(s: &SocketRef<A>, gw: &Gateway, session: &Session) {
    let Some(csr) = &session.csr else {
        return;
    };
    let mut pending = csr.pending.lock().await;
    let Some(plan) = pending.take() else {
        return;
    };
    let result = apply_resume(s, gw, &plan).await;
    count_resume(s, &result);
    if result.is_err() {
        *csr.pid.lock() = herald_protocol::csr::Pid::from_bytes(rand::random());
        drop(pending);
        s.close_underlying_transport().await;
    }
}

fn session<A: Adapter>(s: &SocketRef<A>) -> Option<Arc<Session>> {
    s.extensions.get::<Arc<Session>>()
}

/// What a request handler answers: a success message, or a refusal (and the channel it is
/// about).
pub type Outcome = Result<SystemMessage, (Refusal, Option<ChannelName>)>;

/// An ack body: a plain [`Ack`], or the ack of a successful `listen` on a channel with
/// history ([`ListenAck`]) or a presence channel ([`PresenceListenAck`]).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum AckBody {
    /// `{ "ok": … }`.
    Plain(Ack),
    /// `{ "ok": true, "recovered": …, … }` or `{ "ok": true, "epoch", "offset" }`.
    Listen(ListenAck),
    /// `{ "ok": true, "members", "presenceVersion", … }`.
    Presence(PresenceListenAck),
}

/// The ack of a successful `listen` on a presence channel: the members (the
/// [`PresenceSnapshot`]) and, when the project keeps history, the recovery or position.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PresenceListenAck {
    /// Always `true`.
    pub ok: bool,
    /// The recovery or the channel's position, as in [`ListenAck`].
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub answer: Option<ListenAnswer>,
    /// The members and their version.
    #[serde(flatten)]
    pub presence: PresenceSnapshot,
}

/// What a successful `listen` adds to its ack besides `ok`.
#[derive(Debug, Clone, Default)]
pub struct ListenExtras {
    /// The recovery (a listen with `since`) or the channel's position (history on).
    pub answer: Option<ListenAnswer>,
    /// A presence channel's members.
    pub presence: Option<PresenceSnapshot>,
}

impl From<Option<ListenAnswer>> for ListenExtras {
    fn from(answer: Option<ListenAnswer>) -> Self {
        Self {
            answer,
            presence: None,
        }
    }
}

/// Splits an outcome into the ack body and the `system_message`.
pub fn answer(result: Outcome) -> (AckBody, SystemMessage) {
    answer_with(result, ListenExtras::default())
}

/// Like [`answer`], with what a successful `listen` found (its recovery or the channel's
/// position, a presence channel's members).
pub fn answer_with(result: Outcome, extras: ListenExtras) -> (AckBody, SystemMessage) {
    match (result, extras) {
        (
            Ok(message),
            ListenExtras {
                answer,
                presence: Some(presence),
            },
        ) => (
            AckBody::Presence(PresenceListenAck {
                ok: true,
                answer,
                presence,
            }),
            message,
        ),
        (
            Ok(message),
            ListenExtras {
                answer: Some(answer),
                presence: None,
            },
        ) => (AckBody::Listen(ListenAck { ok: true, answer }), message),
        (Ok(message), _) => (AckBody::Plain(Ack::Ok), message),
        (Err((refusal, channel)), _) => {
            let message = SystemMessage::error(&refusal, channel.as_ref());
            (AckBody::Plain(Ack::Refused(refusal)), message)
        }
    }
}

/// Answers a request through the ack (if asked) and a `system_message`.
fn reply<A: Adapter>(s: &SocketRef<A>, ack: AckSender<A>, result: Outcome) {
    reply_with(s, ack, result, ListenExtras::default())
}

fn reply_with<A: Adapter>(
    s: &SocketRef<A>,
    ack: AckSender<A>,
    result: Outcome,
    extras: ListenExtras,
) {
    let (ack_body, message) = answer_with(result, extras);
    if let Err(e) = ack.send(&ack_body) {
        tracing::debug!(socket_id = %s.id, error = %e, "ack not delivered");
    }
    s.send_system(&message);
}

/// Counts a refused `listen`.
pub fn count_listen(result: &Outcome) {
    if let Err((refusal, _)) = result {
        let code = refusal.code.as_str();
        metrics::counter!(m::LISTEN_REFUSALS, "code" => code).increment(1);
        if refusal.code.is_token_refusal() {
            metrics::counter!(m::AUTH_FAILURES, "reason" => code).increment(1);
        }
    }
}

async fn on_listen<A: Adapter>(
    s: SocketRef<A>,
    TryData(body): TryData<Value>,
    ack: AckSender<A>,
    State(gw): State<Gateway>,
) {
    let (result, extras) = listen(&s, &gw, body.ok()).await;
    count_listen(&result);
    reply_with(&s, ack, result, extras);
}

/// `listen {channelName, authToken?, since?}`: the outcome, and, when it succeeded on a
/// channel whose project keeps history, what the ack adds: the recovery (with `since`) or
/// the channel's position (without).
///
/// The room's [`Sequencer`](crate::history::Sequencer) lock is held from before the join to
/// after the replay or the position read (the private-channel checks included, so no event
/// is replayed before they passed): every event of the channel published on this instance
/// meanwhile is then either replayed (or at most the answered offset) or delivered live
/// after, never both, never neither.
///
/// A presence channel's ack adds its members: read after the socket became one, so every
/// transition after their version reaches the socket as a `presence` event.
pub async fn listen<P: Peer>(s: &P, gw: &Gateway, body: Option<Value>) -> (Outcome, ListenExtras) {
    let (outcome, answer) = listen_any(s, gw, body).await;
    match outcome {
        Ok(Listened { message, presence }) => (Ok(message), ListenExtras { answer, presence }),
        Err(refusal) => (Err(refusal), ListenExtras::default()),
    }
}

/// A successful `listen`: its `Success`, and a presence channel's members.
struct Listened {
    message: SystemMessage,
    presence: Option<PresenceSnapshot>,
}

type ListenOutcome = Result<Listened, (Refusal, Option<ChannelName>)>;

async fn listen_any<P: Peer>(
    s: &P,
    gw: &Gateway,
    body: Option<Value>,
) -> (ListenOutcome, Option<ListenAnswer>) {
    let body = body.unwrap_or(Value::Null);
    let since = match ListenRequest::parse_since(&body) {
        Ok(since) => since,
        Err(r) => {
            let channel = herald_protocol::messages::channel_field(&body).ok();
            return (Err((r, channel)), None);
        }
    };
    let Some(since) = since else {
        if let Some(joined) = listen_tracked(s, gw, &body).await {
            return joined;
        }
        return listen_plain(s, gw, body).await;
    };
    let Some((channel, session, room)) = listen_target(s, &body) else {
        return (listen_checked(s, gw, body).await, None);
    };
    let settings = gw
        .histories
        .settings(gw.store.as_ref(), &session.project)
        .await;
    let _order = gw.fanout.sequencer().lock(&room).await;
    let new_cell = (session.csr.is_some() && session.sub(&room).is_none()).then(|| {
        let cell = crate::csr::SubCell::new(Some(&since.epoch), since.offset);
        session.set_sub(&room, cell.clone());
        cell
    });
    let outcome = listen_checked(s, gw, body).await;
    if outcome.is_err() {
        if new_cell.is_some() && !session.channels.lock().contains_key(&channel) {
            session.drop_sub(&room);
        }
        return (outcome, None);
    }
    let recovery = recover(s, gw, &room, &channel, settings, &since).await;
    if let Some(cell) = new_cell
        && !recovery.recovered
    {
        // Nothing replayed: the socket has the channel from where it is now.
        cell.rebase(
            recovery.epoch.as_ref(),
            recovery.offset.unwrap_or(ChannelOffset(0)),
        );
    }
    metrics::counter!(m::HISTORY_RECOVERIES, "outcome" => recovery.reason.map_or("recovered", |r| r.as_str()))
        .increment(1);
    (outcome, Some(ListenAnswer::Recovery(recovery)))
}

/// What a `listen` body is for: its channel, the socket's session and the room; `None` when the
/// body names no valid channel or the socket has no session (then [`listen_checked`] answers).
fn listen_target<P: Peer>(s: &P, body: &Value) -> Option<(ChannelName, Arc<Session>, RoomName)> {
    let channel = herald_protocol::messages::channel_field(body).ok()?;
    let session = s.session()?;
    let room = RoomName::channel(&session.project, &channel);
    Some((channel, session, room))
}

/// A plain `listen` (no `since`): on a channel whose project keeps history, under the room's
/// sequencer lock like the join, the channel's position for the ack (a stream is started when
/// the channel has none, so the position exists before its first event).
async fn listen_plain<P: Peer>(
    s: &P,
    gw: &Gateway,
    body: Value,
) -> (ListenOutcome, Option<ListenAnswer>) {
    let Some((_, session, room)) = listen_target(s, &body) else {
        return (listen_checked(s, gw, body).await, None);
    };
    let settings = gw
        .histories
        .settings(gw.store.as_ref(), &session.project)
        .await;
    if !settings.enabled() {
        return (listen_checked(s, gw, body).await, None);
    }
    let _order = gw.fanout.sequencer().lock(&room).await;
    let outcome = listen_checked(s, gw, body).await;
    if outcome.is_err() {
        return (outcome, None);
    }
    let position = match gw.histories.backend.position(&room).await {
        Ok(p) => {
            gw.fanout.joined_at(&room, &p.epoch, p.offset.get());
            Some(ListenAnswer::Position(StreamPosition {
                offset: p.offset,
                epoch: p.epoch,
            }))
        }
        Err(e) => {
            if let Some(p) = backend_faults().check(&"history_position") {
                tracing::warn!(error = %e, suppressed = p.suppressed, "history position unavailable; plain listen ack");
            }
            // The listen itself succeeded; the client just holds no position (as with
            // history off).
            None
        }
    };
    (outcome, position)
}

/// A plain `listen` of a recoverable session ([`crate::csr`]) for a channel it does not track
/// yet: under the room's sequencer lock, notes where the channel is, then joins (`None`: not
/// such a listen).
///
/// The ack carries the channel's position like [`listen_plain`]'s (the same one the session
/// notes).
async fn listen_tracked<P: Peer>(
    s: &P,
    gw: &Gateway,
    body: &Value,
) -> Option<(ListenOutcome, Option<ListenAnswer>)> {
    gw.recovery.as_ref()?;
    let (channel, session, room) = listen_target(s, body)?;
    session.csr.as_ref()?;
    if session.sub(&room).is_some() {
        return None;
    }
    let settings = gw
        .histories
        .settings(gw.store.as_ref(), &session.project)
        .await;
    let _order = gw.fanout.sequencer().lock(&room).await;
    // `position` (not `head`): a channel without a stream gets one, so the position exists.
    let position = if settings.enabled() {
        gw.histories.backend.position(&room).await.ok()
    } else {
        None
    };
    let cell = match &position {
        Some(p) => crate::csr::SubCell::new(Some(&p.epoch), p.offset),
        None => crate::csr::SubCell::unrecoverable(),
    };
    session.set_sub(&room, cell);
    let outcome = listen_checked(s, gw, body.clone()).await;
    if outcome.is_err() && !session.channels.lock().contains_key(&channel) {
        session.drop_sub(&room);
    }
    if let (Ok(_), Some(p)) = (&outcome, &position) {
        gw.fanout.joined_at(&room, &p.epoch, p.offset.get());
    }
    let answer = position.map(|p| {
        ListenAnswer::Position(StreamPosition {
            offset: p.offset,
            epoch: p.epoch,
        })
    });
    Some((outcome, answer))
}

/// Reads the history after `since` and sends the missed events to `s`, oldest first; the
/// caller holds the room's sequencer lock. The socket then stands at the channel's latest
/// offset, recovered or not ([`Fanout::joined_at`]).
async fn recover<P: Peer>(
    s: &P,
    gw: &Gateway,
    room: &RoomName,
    channel: &ChannelName,
    settings: HistorySettings,
    since: &StreamPosition,
) -> Recovery {
    let recovery = replay_since(s, gw, room, channel, settings, since).await;
    if let (Some(epoch), Some(offset)) = (&recovery.epoch, recovery.offset) {
        gw.fanout.joined_at(room, epoch, offset.get());
    }
    recovery
}

async fn replay_since<P: Peer>(
    s: &P,
    gw: &Gateway,
    room: &RoomName,
    channel: &ChannelName,
    settings: HistorySettings,
    since: &StreamPosition,
) -> Recovery {
    let lost = |reason, epoch, offset| Recovery {
        recovered: false,
        reason: Some(reason),
        epoch,
        offset,
    };
    if !settings.enabled() {
        return lost(RecoveryFailure::HistoryDisabled, None, None);
    }
    let slice = match gw
        .histories
        .backend
        .read(room, settings, since.offset, settings.size as usize)
        .await
    {
        Ok(slice) => slice,
        Err(e) => {
            if let Some(p) = backend_faults().check(&"history_read") {
                tracing::warn!(error = %e, suppressed = p.suppressed, "history read failed; listen not recovered");
            }
            // What was missed cannot be known: the client must re-sync.
            return lost(RecoveryFailure::HistoryExpired, None, None);
        }
    };
    let (epoch, top) = (slice.epoch.clone(), slice.top);
    match crate::history::decide(since, slice) {
        crate::history::Decision::Lost(reason) => lost(reason, epoch, Some(top)),
        crate::history::Decision::Recovered(events) => {
            // Encode them all first: one that cannot be is a gap, and a gap is not recovered.
            let mut frames = Vec::with_capacity(events.len());
            for e in events {
                let encoded = serde_json::value::RawValue::from_string(e.payload).and_then(|p| {
                    serde_json::value::to_raw_value(&ChannelEvent {
                        id: Some(e.id),
                        channel_name: channel.clone(),
                        payload: &*p,
                        offset: Some(e.offset),
                        epoch: epoch.clone(),
                    })
                });
                match encoded {
                    Ok(raw) => frames.push((raw, e.offset)),
                    Err(err) => {
                        tracing::error!(error = %err, offset = %e.offset, "history event not encodable; listen not recovered");
                        return lost(RecoveryFailure::HistoryExpired, epoch, Some(top));
                    }
                }
            }
            s.send_replay(&Replay {
                room,
                channel,
                epoch: epoch.as_ref(),
                events: &frames,
            });
            gw.fanout.hold_floor(room, s.sid(), top.get());
            Recovery {
                recovered: true,
                reason: None,
                epoch,
                offset: Some(top),
            }
        }
    }
}

/// `listen {channelName, authToken?}` without the recovery part.
async fn listen_checked<P: Peer>(s: &P, gw: &Gateway, body: Value) -> ListenOutcome {
    let sid = s.sid();
    let session = s.session().ok_or_else(|| (not_connected(), None))?;
    let req = ListenRequest::parse(&body).map_err(|r| (r, None))?;
    let channel = req.channel_name;
    let fail = |r: Refusal| (r, Some(channel.clone()));
    let room = RoomName::channel(&session.project, &channel);

    let grant = match channel.kind() {
        ChannelKind::Public => None,
        ChannelKind::Private | ChannelKind::Presence => Some(
            gw.tokens
                .authorize_listen(
                    gw.store.as_ref(),
                    &session.project,
                    &channel,
                    req.auth_token.as_deref(),
                    OffsetDateTime::now_utc(),
                )
                .await
                .map_err(|r| {
                    if let Some(p) = refused_listen_log().check(&sid) {
                    tracing::info!(socket_id = %sid, project_id = %session.project, channel = %channel, code = %r.code, suppressed = p.suppressed, "private listen refused");
                }
                    fail(r)
                })?,
        ),
    };
    if let Some(grant) = &grant
        && key_revoked(gw, &grant.api_key_id).await
    {
        return Err(fail(revoked_refusal()));
    }

    let newly_joined = {
        let mut channels = session.channels.lock();
        if !channels.contains_key(&channel) && channels.len() >= gw.max_channels_per_socket {
            return Err(fail(Refusal::new(
                ErrorCode::TooManyChannels,
                format!(
                    "this socket already listens to {} channels, the limit",
                    gw.max_channels_per_socket
                ),
            )));
        }
        let newly = channels.insert(channel.clone(), grant.clone()).is_none();
        if newly {
            subscribed(gw, channel.kind(), &room);
            s.join(&room);
        }
        newly
    };

    if let Some(grant) = &grant {
        let key = &grant.api_key_id;
        let sid = sid.to_string();
        if let Err(e) = gw.tracker.add(&sid, &room, key).await {
            // Without a tracking entry the key's revocation could not find this socket:
            // refuse the join instead of leaving an untracked member.
            if let Some(p) = backend_faults().check(&"listen_tracking") {
                tracing::warn!(socket_id = %sid, error = %e, suppressed = p.suppressed, "tracking failed; listen undone");
            }
            leave(s, gw, &session, &channel, &room);
            return Err(fail(Refusal::new(
                ErrorCode::Unavailable,
                "connection tracking is unavailable, try again shortly",
            )));
        }
        if !s.is_connected() {
            // The socket went away while we were checking; its disconnect clean-up may have
            // run before our entry existed.
            let _ = gw.tracker.remove(&sid, &room).await;
        }
        // A revocation racing this listen: either its local pass saw the socket in the room
        // (and removed it), or the revoked mark, written before that pass, is visible here.
        if key_revoked(gw, key).await || !key_still_signs(gw, key).await {
            leave(s, gw, &session, &channel, &room);
            let _ = gw.tracker.remove(&sid, &room).await;
            return Err(fail(revoked_refusal()));
        }
        // Likewise a rotation of the project's secret racing this listen: its local pass saw
        // the socket, or the new secret is visible here.
        if !secret_still_current(gw, &session.project, grant.secret).await {
            leave(s, gw, &session, &channel, &room);
            let _ = gw.tracker.remove(&sid, &room).await;
            return Err(fail(Refusal::new(
                ErrorCode::TokenBadSignature,
                "the project's signing secret was rotated while this listen was checked; sign a new token",
            )));
        }
    }
    let presence = match grant.as_ref().and_then(|g| g.member.as_ref()) {
        Some(member) => Some(
            presence_join(s, gw, &session, &channel, &room, member, newly_joined)
                .await
                .map_err(fail)?,
        ),
        None => None,
    };
    tracing::debug!(socket_id = %sid, project_id = %session.project, channel = %channel, "listening");
    Ok(Listened {
        message: SystemMessage::success(format!("listening to {channel}"), &channel),
        presence,
    })
}

/// The presence part of a checked `listen`: a socket that just joined becomes a member (the
/// whole listen is undone when it cannot: a full channel, the backend down); the ack's
/// members. A socket listening again is a member already: only the members are read.
async fn presence_join<P: Peer>(
    s: &P,
    gw: &Gateway,
    session: &Session,
    channel: &ChannelName,
    room: &RoomName,
    member: &Member,
    newly_joined: bool,
) -> Result<PresenceSnapshot, Refusal> {
    let members = if newly_joined {
        match gw.presence.join(room, channel, s.sid(), member).await {
            Ok(members) => Ok(members),
            Err(refusal) => {
                if refusal.code != ErrorCode::PresenceFull {
                    // The join may have happened before the members read failed.
                    gw.presence.leave(room, channel, s.sid()).await;
                }
                leave(s, gw, session, channel, room);
                let _ = gw.tracker.remove(&s.sid().to_string(), room).await;
                Err(refusal)
            }
        }
    } else {
        gw.presence.manager.members(room).await.map_err(|e| {
            tracing::debug!(error = %e, "presence members unavailable");
            Refusal::new(
                ErrorCode::Unavailable,
                "presence is unavailable, try again shortly",
            )
        })
    }?;
    if newly_joined && !s.is_connected() {
        // The socket went away meanwhile; its disconnect clean-up may have run before the
        // membership existed.
        gw.presence.leave(room, channel, s.sid()).await;
    }
    Ok(PresenceSnapshot {
        members: members.members,
        presence_version: members.version,
    })
}

/// "private listen refused": one line per socket per interval (a client may retry a bad
/// token in a loop); every refusal is counted in `herald_listen_refusals_total` anyway.
fn refused_listen_log() -> &'static LogThrottle<Sid> {
    static T: std::sync::LazyLock<LogThrottle<Sid>> =
        std::sync::LazyLock::new(|| LogThrottle::new("private_listen_refused"));
    &T
}

/// Takes the socket out of a channel's room and its session; whether it was in the session.
fn leave<P: Peer + ?Sized>(
    s: &P,
    gw: &GatewayInner,
    session: &Session,
    channel: &ChannelName,
    room: &RoomName,
) -> bool {
    let was_in = session.channels.lock().remove(channel).is_some();
    if was_in {
        unsubscribed(gw, channel.kind(), room);
    }
    s.leave(room);
    session.drop_sub(room);
    was_in
}

fn subscription_gauge(kind: ChannelKind) -> metrics::Gauge {
    metrics::gauge!(m::SUBSCRIPTIONS, "kind" => kind.as_str())
}

/// A socket's channel entered its session: the gauge, and the room's occupancy.
fn subscribed(gw: &GatewayInner, kind: ChannelKind, room: &RoomName) {
    subscription_gauge(kind).increment(1.0);
    gw.occupancy.joined(room);
}

/// A socket's channel left its session: the gauge, and the room's occupancy.
fn unsubscribed(gw: &GatewayInner, kind: ChannelKind, room: &RoomName) {
    subscription_gauge(kind).decrement(1.0);
    gw.occupancy.left(room);
}

async fn on_remove<A: Adapter>(
    s: SocketRef<A>,
    TryData(body): TryData<Value>,
    ack: AckSender<A>,
    State(gw): State<Gateway>,
) {
    let result = remove(&s, &gw, body.ok()).await;
    reply(&s, ack, result);
}

/// `remove {channelName}`.
pub async fn remove<P: Peer>(s: &P, gw: &Gateway, body: Option<Value>) -> Outcome {
    let session = s.session().ok_or_else(|| (not_connected(), None))?;
    let req = RemoveRequest::parse(&body.unwrap_or(Value::Null)).map_err(|r| (r, None))?;
    let channel = req.channel_name;
    let room = RoomName::channel(&session.project, &channel);
    if leave(s, gw, &session, &channel, &room) && channel.is_presence() {
        gw.presence.leave(&room, &channel, s.sid()).await;
    }
    if channel.needs_token()
        && let Err(e) = gw.tracker.remove(&s.sid().to_string(), &room).await
        && let Some(p) = backend_faults().check(&"remove_tracking")
    {
        tracing::warn!(socket_id = %s.sid(), error = %e, suppressed = p.suppressed, "tracking clean-up on remove failed");
    }
    Ok(SystemMessage::success(
        format!("removed from {channel}"),
        &channel,
    ))
}

async fn on_client_event<A: Adapter>(
    s: SocketRef<A>,
    TryData(body): TryData<Value>,
    ack: AckSender<A>,
    State(gw): State<Gateway>,
) {
    let result = client_event(&s, &gw, body.ok()).await;
    reply(&s, ack, result);
}

/// A client `event {channelName, payload}`: relayed to the other members of a private
/// channel the socket joined, on every instance.
pub async fn client_event<P: Peer>(s: &P, gw: &Gateway, body: Option<Value>) -> Outcome {
    let session = s.session().ok_or_else(|| (not_connected(), None))?;
    let ev = ClientEvent::parse(&body.unwrap_or(Value::Null)).map_err(|r| (r, None))?;
    let channel = ev.channel_name;
    let fail = |r: Refusal| (r, Some(channel.clone()));
    if !channel.needs_token() {
        return Err(fail(Refusal::new(
            ErrorCode::ClientEventNotAllowed,
            "clients may send events only to private channels they joined",
        )));
    }
    if !session.channels.lock().contains_key(&channel) {
        return Err(fail(Refusal::new(
            ErrorCode::NotJoined,
            format!("this socket does not listen to {channel}"),
        )));
    }
    let size = serde_json::to_string(&ev.payload)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    herald_protocol::api::check_payload_size(size, gw.max_payload_bytes).map_err(fail)?;
    let room = RoomName::channel(&session.project, &channel);
    let event = ChannelEvent {
        id: None,
        channel_name: channel.clone(),
        payload: ev.payload,
        offset: None,
        epoch: None,
    };
    let encoded = serde_json::value::to_raw_value(&event).map_err(|_| {
        fail(Refusal::new(
            ErrorCode::Internal,
            "event could not be encoded",
        ))
    })?;
    if let Err(e) = gw.fanout.emit(room, EVENT, &encoded, Some(s.sid())).await
        && let Some(p) = backend_faults().check(&"client_event_relay")
    {
        tracing::warn!(socket_id = %s.sid(), error = %e, suppressed = p.suppressed, "client event relay incomplete");
    }
    metrics::counter!(m::CLIENT_EVENTS).increment(1);
    let user_id = session
        .channels
        .lock()
        .get(&channel)
        .and_then(|g| g.as_ref())
        .and_then(|g| g.member.as_ref())
        .map(|m| m.user_id.as_str().to_owned());
    let mut data = serde_json::json!({
        "channelName": channel.as_str(),
        "socketId": s.sid().as_str(),
        "payload": event.payload,
    });
    if let Some(user_id) = user_id {
        data["userId"] = Value::String(user_id);
    }
    gw.webhooks.emit(
        &session.project,
        herald_protocol::webhook::WebhookEventType::ClientEvent,
        data,
    );
    Ok(SystemMessage::success(
        format!("event sent to {channel}"),
        &channel,
    ))
}

async fn on_presence<A: Adapter>(
    s: SocketRef<A>,
    TryData(body): TryData<Value>,
    ack: AckSender<A>,
    State(gw): State<Gateway>,
) {
    let (result, extras) = presence_query(&s, &gw, body.ok()).await;
    reply_with(&s, ack, result, extras);
}

/// A client `presence {channelName}`: the members of a presence channel this socket listens
/// to, in the ack as in a `listen`'s (`members`, `presenceVersion`).
pub async fn presence_query<P: Peer>(
    s: &P,
    gw: &Gateway,
    body: Option<Value>,
) -> (Outcome, ListenExtras) {
    let asked = async {
        let session = s.session().ok_or_else(|| (not_connected(), None))?;
        let req = PresenceRequest::parse(&body.unwrap_or(Value::Null)).map_err(|r| (r, None))?;
        let channel = req.channel_name;
        let fail = |r: Refusal| (r, Some(channel.clone()));
        if !channel.is_presence() {
            return Err(fail(not_presence_channel(&channel)));
        }
        if !session.channels.lock().contains_key(&channel) {
            return Err(fail(Refusal::new(
                ErrorCode::NotJoined,
                format!("this socket does not listen to {channel}"),
            )));
        }
        let room = RoomName::channel(&session.project, &channel);
        let members = gw.presence.manager.members(&room).await.map_err(|e| {
            tracing::debug!(error = %e, "presence members unavailable");
            fail(Refusal::new(
                ErrorCode::Unavailable,
                "presence is unavailable, try again shortly",
            ))
        })?;
        Ok((channel, members))
    };
    match asked.await {
        Ok((channel, members)) => (
            Ok(SystemMessage::success(
                format!("members of {channel}"),
                &channel,
            )),
            ListenExtras {
                answer: None,
                presence: Some(PresenceSnapshot {
                    members: members.members,
                    presence_version: members.version,
                }),
            },
        ),
        Err(refusal) => (Err(refusal), ListenExtras::default()),
    }
}

async fn on_unknown_event<A: Adapter>(s: SocketRef<A>, Event(event): Event, ack: AckSender<A>) {
    reply(&s, ack, unknown_event(&event));
}

/// Any other event name.
pub fn unknown_event(event: &str) -> Outcome {
    Err((
        Refusal::new(
            ErrorCode::UnknownEvent,
            format!(
                "unknown event {:?}; clients send listen, remove, event or presence",
                event.chars().take(64).collect::<String>()
            ),
        ),
        None,
    ))
}

async fn on_disconnect<A: Adapter>(
    s: SocketRef<A>,
    reason: DisconnectReason,
    State(gw): State<Gateway>,
) {
    gw.fanout.sio_socket_left();
    disconnected(&gw, s.id, session(&s), &format!("{reason:?}")).await;
}

/// Clean-up after a socket that passed the handshake went away: gauges and tracking entries.
pub async fn disconnected(gw: &Gateway, sid: Sid, session: Option<Arc<Session>>, reason: &str) {
    let sid_ref = sid;
    let sid = sid.to_string();
    metrics::gauge!(m::SOCKETS_CONNECTED).decrement(1.0);
    if let (Some(session), Some(recovery)) = (&session, &gw.recovery) {
        // A resume checked but not applied yet (the socket went away at once): its record
        // goes back as it was; the client got nothing of it and presents the same offset.
        let unapplied = match &session.csr {
            Some(csr) => csr.pending.lock().await.take(),
            None => None,
        };
        let record = match unapplied {
            Some(plan) => Some(crate::csr::SessionRecord {
                expires_at: crate::csr::now_secs().saturating_add(recovery.window.as_secs()),
                ..plan.record
            }),
            None => session_record(session, recovery.window),
        };
        if let Some(record) = record {
            recovery.save(record).await;
        }
    }
    if let Some(session) = session {
        let channels: Vec<ChannelName> = session.channels.lock().drain().map(|(c, _)| c).collect();
        for channel in channels {
            let room = RoomName::channel(&session.project, &channel);
            unsubscribed(gw, channel.kind(), &room);
            if channel.is_presence() {
                gw.presence.leave(&room, &channel, sid_ref).await;
            }
        }
    }
    match gw.tracker.remove_socket(&sid).await {
        Ok(removed) => {
            tracing::debug!(socket_id = %sid, reason, tracked = removed.len(), "socket disconnected")
        }
        Err(e) => {
            if let Some(p) = backend_faults().check(&"disconnect_tracking") {
                tracing::warn!(socket_id = %sid, error = %e, suppressed = p.suppressed, "tracking clean-up on disconnect failed")
            }
        }
    }
}

/// What a recoverable session leaves behind when its socket goes away ([`crate::csr`]).
fn session_record(
    session: &Session,
    window: std::time::Duration,
) -> Option<crate::csr::SessionRecord> {
    let csr = session.csr.as_ref()?;
    let channels = session.channels.lock();
    let subs = csr.subs.lock();
    let channels = channels
        .iter()
        .map(|(channel, grant)| crate::csr::ChannelRecord {
            channel: channel.as_str().to_owned(),
            grant: grant.as_ref().map(|g| crate::csr::GrantRecord {
                api_key_id: g.api_key_id.to_string(),
                secret: g.secret.to_bits(),
                token_exp: g.token_exp,
                member: g.member.clone(),
            }),
            sub: subs
                .get(&RoomName::channel(&session.project, channel))
                .map(|c| c.snapshot())
                .unwrap_or_else(|| crate::csr::SubCell::unrecoverable().snapshot()),
        })
        .collect();
    Some(crate::csr::SessionRecord {
        pid: csr.pid.lock().as_str().to_owned(),
        project: session.project.as_str().to_owned(),
        baseline: csr.baseline.clone(),
        channels,
        expires_at: crate::csr::now_secs().saturating_add(window.as_secs()),
    })
}

/// Why a resume failed, and whether the socket already joined rooms (it must then be closed:
/// a fresh session has none).
pub type ResumeError = (crate::csr::ResumeFailure, bool);

/// What a CONNECT's `auth` asks of connection state recovery: a resume, and the `offset`
/// the client presented, as text.
#[derive(Debug, Clone)]
pub struct ResumeRequest {
    /// The pid and offset.
    pub resume: herald_protocol::csr::ResumeAuth,
    /// The `offset`, when it is text short enough to be a marker.
    pub presented: Option<String>,
}

/// The session a CONNECT into `project` starts, on either transport: recoverable when
/// recovery is on (its baseline: the `offset` the client presented), and the resume its
/// `auth` asks for, if any ([`resume`]).
pub fn connect_session(
    gw: &Gateway,
    project: ProjectId,
    auth: Option<&Value>,
) -> (Session, Option<ResumeRequest>) {
    if gw.recovery.is_none() {
        return (Session::new(project), None);
    }
    // socket.io-client's connection state recovery: a reconnect presents the pid and the
    // marker of the last event it got.
    let presented = auth
        .and_then(|a| a.get("offset"))
        .and_then(Value::as_str)
        .filter(|o| o.len() <= herald_protocol::csr::MAX_MARKER_LEN)
        .map(str::to_owned);
    let resume = herald_protocol::csr::ResumeAuth::parse(auth).map(|resume| ResumeRequest {
        resume,
        presented: presented.clone(),
    });
    let session = Session::recoverable(project, CsrState::new(presented));
    (session, resume)
}

/// A socket.io-client CONNECT that presented a `pid` ([`crate::csr`]): takes the saved
/// session, checks it may still have every channel, works out where each channel stopped
/// ([`prepare_resume`]), joins the rooms and replays what was missed ([`apply_resume`]). `Ok`
/// with the session's pid when recovered; `s`'s session must be recoverable and have no
/// channels yet.
pub async fn resume<P: Peer>(
    s: &P,
    gw: &Gateway,
    request: &ResumeRequest,
) -> Result<herald_protocol::csr::Pid, ResumeError> {
    let result = match prepare_resume(s, gw, request).await {
        Ok(plan) => apply_resume(s, gw, &plan).await,
        Err(f) => Err((f, false)),
    };
    count_resume(s, &result);
    result
}

/// Counts a resume's outcome (`herald_csr_resumes_total`).
fn count_resume<P: Peer>(s: &P, result: &Result<herald_protocol::csr::Pid, ResumeError>) {
    let outcome = match result {
        Ok(_) => "recovered",
        Err((f, _)) => f.as_str(),
    };
    metrics::counter!(m::CSR_RESUMES, "outcome" => outcome).increment(1);
    if let Err((f, _)) = result
        && *f != crate::csr::ResumeFailure::Unknown
    {
        tracing::debug!(socket_id = %s.sid(), outcome, "session not recovered");
    }
}

/// A resume checked by [`prepare_resume`], to be applied by [`apply_resume`].
#[derive(Debug)]
pub struct ResumePlan {
    /// The saved session (taken from the store).
    record: crate::csr::SessionRecord,
    /// Its pid.
    pid: herald_protocol::csr::Pid,
    /// The project's history settings.
    settings: HistorySettings,
    /// Each channel: where it stopped, its grant, where its replay starts.
    channels: Vec<(crate::csr::Resumed, Option<Grant>, Option<StreamPosition>)>,
}

/// The checks of a resume, before the socket joins anything: the record taken, where each
/// channel stopped, every private channel still allowed, history able to serve every channel.
pub async fn prepare_resume<P: Peer>(
    s: &P,
    gw: &Gateway,
    request: &ResumeRequest,
) -> Result<ResumePlan, crate::csr::ResumeFailure> {
    use crate::csr::ResumeFailure as F;
    let (Some(recovery), Some(session)) = (&gw.recovery, s.session()) else {
        return Err(F::Unknown);
    };
    if session.csr.is_none() {
        return Err(F::Unknown);
    }
    let resume = &request.resume;
    let pid = resume.pid.clone().ok_or(F::Unknown)?;
    let record = recovery
        .store
        .take(&session.project, &pid)
        .await
        .map_err(|_| F::Unavailable)?
        .ok_or(F::Unknown)?;
    if record.project != session.project.as_str() || record.pid != pid.as_str() {
        return Err(F::ProjectMismatch);
    }
    let channels = crate::csr::positions(
        &record,
        resume.offset.as_ref(),
        request.presented.as_deref(),
    )?;
    if channels.len() > gw.max_channels_per_socket {
        return Err(F::Ambiguous);
    }
    // Private channels: the token still valid, its key and secret still current.
    let now = crate::csr::now_secs();
    let mut grants = Vec::with_capacity(channels.len());
    for c in &channels {
        let grant = match &c.grant {
            None => None,
            Some(g) => {
                let key = crate::csr::grant_key(g).ok_or(F::Revoked)?;
                let secret = crate::store::SecretId::from_bits(g.secret);
                if g.token_exp <= now
                    || key_revoked(gw, &key).await
                    || !key_still_signs(gw, &key).await
                    || !secret_still_current(gw, &session.project, secret).await
                {
                    return Err(F::Revoked);
                }
                Some(Grant {
                    api_key_id: key,
                    secret,
                    token_exp: g.token_exp,
                    member: g.member.clone(),
                })
            }
        };
        grants.push(grant);
    }
    let settings = gw
        .histories
        .settings(gw.store.as_ref(), &session.project)
        .await;
    if !settings.enabled() {
        return Err(F::History);
    }
    // Can history serve every channel? (Nothing joined yet: a fresh session must not have
    // been in any room.)
    let mut sinces = Vec::with_capacity(channels.len());
    for c in &channels {
        let room = RoomName::channel(&session.project, &c.channel);
        let since = resume_since(gw, &room, settings, c).await?;
        if let Some(since) = &since {
            let slice = gw
                .histories
                .backend
                .read(&room, settings, since.offset, settings.size as usize)
                .await
                .map_err(|_| F::History)?;
            if matches!(
                crate::history::decide(since, slice),
                crate::history::Decision::Lost(_)
            ) {
                return Err(F::History);
            }
        }
        sinces.push(since);
    }
    let channels = channels
        .into_iter()
        .zip(grants)
        .zip(sinces)
        .map(|((c, grant), since)| (c, grant, since))
        .collect();
    Ok(ResumePlan {
        record,
        pid,
        settings,
        channels,
    })
}

/// Applies a checked resume: each channel under its room's sequencer lock, the socket joins
/// it and gets what it missed from history. An error says whether the socket already joined
/// rooms (a fresh session has none).
pub async fn apply_resume<P: Peer>(
    s: &P,
    gw: &Gateway,
    plan: &ResumePlan,
) -> Result<herald_protocol::csr::Pid, ResumeError> {
    use crate::csr::ResumeFailure as F;
    let (Some(session), true) = (s.session(), s.is_connected()) else {
        return Err((F::Unknown, false));
    };
    let Some(csr) = &session.csr else {
        return Err((F::Unknown, false));
    };
    let sid = s.sid().to_string();
    for (c, grant, since) in &plan.channels {
        let room = RoomName::channel(&session.project, &c.channel);
        let _order = gw.fanout.sequencer().lock(&room).await;
        session.set_sub(
            &room,
            crate::csr::SubCell::new(
                c.epoch.as_ref().or(since.as_ref().map(|x| &x.epoch)),
                c.offset,
            ),
        );
        let key = grant.as_ref().map(|g| g.api_key_id.clone());
        if session
            .channels
            .lock()
            .insert(c.channel.clone(), grant.clone())
            .is_none()
        {
            subscribed(gw, c.channel.kind(), &room);
        }
        s.join(&room);
        if let Some(key) = &key
            && (gw.tracker.add(&sid, &room, key).await.is_err() || key_revoked(gw, key).await)
        {
            return Err((F::Revoked, true));
        }
        // A presence channel's membership was given up at the disconnect: join again (the
        // transitions meanwhile are not replayed; the client asks for the members).
        if let Some(member) = grant.as_ref().and_then(|g| g.member.as_ref())
            && gw
                .presence
                .join(&room, &c.channel, s.sid(), member)
                .await
                .is_err()
        {
            return Err((F::Unavailable, true));
        }
        if let Some(since) = since {
            let recovery = recover(s, gw, &room, &c.channel, plan.settings, since).await;
            if !recovery.recovered {
                return Err((F::History, true));
            }
        }
    }
    *csr.pid.lock() = plan.pid.clone();
    Ok(plan.pid.clone())
}

/// Where a resumed channel's replay starts: `None` when there is nothing to replay (the
/// channel had no history when joined and still has none).
async fn resume_since(
    gw: &Gateway,
    room: &RoomName,
    settings: HistorySettings,
    c: &crate::csr::Resumed,
) -> Result<Option<StreamPosition>, crate::csr::ResumeFailure> {
    if let Some(epoch) = &c.epoch {
        return Ok(Some(StreamPosition {
            offset: c.offset,
            epoch: epoch.clone(),
        }));
    }
    // No epoch: the socket joined before the channel's first event and got none since. Every
    // event of the stream is missed, so it must still hold its first.
    let slice = gw
        .histories
        .backend
        .read(room, settings, ChannelOffset(0), 0)
        .await
        .map_err(|_| crate::csr::ResumeFailure::History)?;
    match (slice.epoch, slice.first) {
        (None, _) => Ok(None),
        (Some(epoch), Some(ChannelOffset(1))) => Ok(Some(StreamPosition {
            offset: ChannelOffset(0),
            epoch,
        })),
        (Some(_), _) => Err(crate::csr::ResumeFailure::History),
    }
}

async fn key_revoked(gw: &Gateway, key: &ApiKeyId) -> bool {
    // Unknown (Redis down) counts as revoked: refusing a join is safe, letting one in is not.
    gw.revocations.is_revoked(key).await.unwrap_or(true)
}

async fn key_still_signs(gw: &Gateway, key: &ApiKeyId) -> bool {
    match gw.store.api_key(key).await {
        Ok(record) => check_signing_key(record.as_ref(), OffsetDateTime::now_utc()).is_ok(),
        Err(_) => false,
    }
}

async fn secret_still_current(gw: &Gateway, project: &ProjectId, secret: SecretId) -> bool {
    // Unknown (store down) counts as rotated: refusing a join is safe, letting one in is not.
    matches!(gw.store.project(project).await, Ok(Some(p)) if p.signing_secret.id() == secret)
}

fn revoked_refusal() -> Refusal {
    Refusal::new(
        ErrorCode::TokenKeyRevoked,
        "the API key that signed this token has been revoked",
    )
}

/// This instance's sockets (both transports), for the revocation workflow.
pub struct GatewaySockets<A: Adapter> {
    io: SocketIo<A>,
    direct: Arc<DirectRooms>,
    sse: Arc<crate::sse::SseRooms>,
    tracker: Arc<dyn ConnectionTracker>,
    presence: Arc<Presences>,
    occupancy: Arc<crate::occupancy::Occupancy>,
}

impl<A: Adapter> GatewaySockets<A> {
    /// Wraps the Socket.IO handle and the gateway's direct sockets, SSE streams, tracking and
    /// presence.
    pub fn new(io: SocketIo<A>, gw: &Gateway) -> Self {
        Self {
            io,
            direct: gw.fanout.direct().clone(),
            sse: gw.fanout.sse().clone(),
            tracker: gw.tracker.clone(),
            presence: gw.presence.clone(),
            occupancy: gw.occupancy.clone(),
        }
    }

    /// This instance's socketioxide sockets; none while the namespace is not registered yet
    /// (Redis mode, before the adapter subscribed) or after shutdown closed it.
    fn sio_sockets(&self) -> Vec<SocketRef<A>> {
        crate::fanout::default_namespace(&self.io)
            .map(|ns| ns.local().sockets())
            .unwrap_or_default()
    }

    /// Removes one socket from the private channels whose grant matches `revoked`, sends it
    /// one `RemovedFromChannel` naming them, cleans tracking; whether it had any.
    async fn revoke_on<P: Peer>(
        &self,
        s: &P,
        revoked: impl Fn(&Grant) -> bool,
        reason: RevocationReason,
    ) -> bool {
        let Some(session) = s.session() else {
            return false;
        };
        let removed: Vec<ChannelName> = {
            let mut channels = session.channels.lock();
            let gone: Vec<ChannelName> = channels
                .iter()
                .filter(|(_, g)| g.as_ref().is_some_and(&revoked))
                .map(|(c, _)| c.clone())
                .collect();
            for c in &gone {
                channels.remove(c);
                let room = RoomName::channel(&session.project, c);
                subscription_gauge(c.kind()).decrement(1.0);
                self.occupancy.left(&room);
                s.leave(&room);
                session.drop_sub(&room);
            }
            gone
        };
        if removed.is_empty() {
            return false;
        }
        metrics::counter!(m::REVOCATION_SOCKETS_REMOVED).increment(1);
        s.send_system(&SystemMessage::removed_from_channels(
            reason.message(),
            &removed,
        ));
        let sid = s.sid().to_string();
        for c in &removed {
            let room = RoomName::channel(&session.project, c);
            if c.is_presence() {
                self.presence.leave(&room, c, s.sid()).await;
            }
            if let Err(e) = self.tracker.remove(&sid, &room).await {
                tracing::warn!(socket_id = %sid, error = %e, "tracking clean-up after revocation failed");
            }
        }
        tracing::info!(socket_id = %sid, project_id = %session.project, ?reason, channels = removed.len(), "socket removed from private channels");
        true
    }

    /// Every local session of both transports, with its peer.
    async fn revoke_all(
        &self,
        project: Option<&ProjectId>,
        revoked: impl Fn(&Grant) -> bool + Copy,
        reason: RevocationReason,
    ) -> usize {
        let in_project = |session: Option<Arc<Session>>| {
            session.is_some_and(|x| project.is_none_or(|p| &x.project == p))
        };
        let mut affected = 0;
        for s in self.sio_sockets() {
            if in_project(session(&s)) {
                affected += usize::from(self.revoke_on(&s, revoked, reason).await);
            }
        }
        for c in self.direct.connections() {
            if in_project(c.session()) {
                affected += usize::from(self.revoke_on(c.as_ref(), revoked, reason).await);
            }
        }
        for c in self.sse.connections() {
            if in_project(c.session()) {
                affected += usize::from(self.revoke_on(c.as_ref(), revoked, reason).await);
            }
        }
        affected
    }

    /// Every local presence membership (socket, room, channel, member), both transports.
    fn presence_memberships(&self) -> Vec<(Sid, RoomName, ChannelName, Member)> {
        fn of(
            sid: Sid,
            session: Option<Arc<Session>>,
        ) -> Vec<(Sid, RoomName, ChannelName, Member)> {
            let Some(session) = session else {
                return Vec::new();
            };
            let channels = session.channels.lock();
            channels
                .iter()
                .filter_map(|(c, g)| {
                    let member = g.as_ref()?.member.clone()?;
                    Some((
                        sid,
                        RoomName::channel(&session.project, c),
                        c.clone(),
                        member,
                    ))
                })
                .collect()
        }
        let mut out = Vec::new();
        for s in self.sio_sockets() {
            out.extend(of(s.id, session(&s)));
        }
        for c in self.direct.connections() {
            out.extend(of(c.sid(), c.session()));
        }
        for c in self.sse.connections() {
            out.extend(of(c.sid(), c.session()));
        }
        out
    }

    /// Re-asserts every local presence membership in the backend
    /// ([`Presences::reassert`]); how many there are. Stops at the first backend failure.
    pub async fn reassert_presence(&self) -> Result<usize, crate::presence::PresenceError> {
        let memberships = self.presence_memberships();
        for (sid, room, channel, member) in &memberships {
            self.presence.reassert(room, channel, *sid, member).await?;
        }
        Ok(memberships.len())
    }

    fn sessions(&self) -> Vec<Arc<Session>> {
        let direct = self.direct.connections();
        let sse = self.sse.connections();
        self.sio_sockets()
            .into_iter()
            .filter_map(|s| session(&s))
            .chain(direct.iter().filter_map(|c| c.session()))
            .chain(sse.iter().filter_map(|c| c.session()))
            .collect()
    }
}

#[async_trait::async_trait]
impl<A: Adapter> LocalSockets for GatewaySockets<A> {
    async fn revoke_key(&self, key: &ApiKeyId, reason: RevocationReason) -> usize {
        self.revoke_all(None, |g: &Grant| &g.api_key_id == key, reason)
            .await
    }

    fn keys_in_use(&self) -> HashSet<ApiKeyId> {
        let mut keys = HashSet::new();
        for session in self.sessions() {
            keys.extend(
                session
                    .channels
                    .lock()
                    .values()
                    .flatten()
                    .map(|g| g.api_key_id.clone()),
            );
        }
        keys
    }

    async fn revoke_secret(&self, project: &ProjectId, current: SecretId) -> usize {
        self.revoke_all(
            Some(project),
            |g: &Grant| g.secret != current,
            RevocationReason::SecretRotated,
        )
        .await
    }

    fn secrets_in_use(&self) -> HashMap<ProjectId, HashSet<SecretId>> {
        let mut secrets: HashMap<ProjectId, HashSet<SecretId>> = HashMap::new();
        for session in self.sessions() {
            let channels = session.channels.lock();
            let ids: Vec<SecretId> = channels.values().flatten().map(|g| g.secret).collect();
            if !ids.is_empty() {
                secrets
                    .entry(session.project.clone())
                    .or_default()
                    .extend(ids);
            }
        }
        secrets
    }
}

/// A gateway over embedded backends in `dir` (unit tests): in-memory tracking, presence and
/// history, ten channels per socket, 1 KiB payloads, no recovery.
#[cfg(test)]
pub(crate) fn test_gateway(dir: &std::path::Path) -> Gateway {
    use crate::revocation::embedded::EmbeddedQueue;
    use crate::store::embedded::EmbeddedStore;
    let store = Arc::new(EmbeddedStore::open(dir).expect("store"));
    let queue = Arc::new(EmbeddedQueue::open(store.database()).expect("queue"));
    let fanout = Arc::new(Fanout::new(Arc::new(DirectRooms::new())));
    let webhooks = crate::webhooks::WebhookEvents::channel().0;
    Gateway::new(GatewayInner {
        presence: Arc::new(Presences::new(
            Arc::new(crate::presence::memory::MemoryPresence::new()),
            fanout.clone(),
            1000,
            webhooks.clone(),
        )),
        occupancy: Arc::new(crate::occupancy::Occupancy::new()),
        webhooks,
        store,
        tracker: Arc::new(crate::tracking::memory::MemoryTracker::new()),
        tokens: ChannelTokens::new(
            "herald",
            std::time::Duration::from_secs(600),
            std::time::Duration::from_secs(3600),
        )
        .expect("ttl within the cap"),
        max_channels_per_socket: 10,
        max_payload_bytes: 1024,
        revocations: queue,
        fanout,
        histories: Arc::new(crate::history::Histories::new(Arc::new(
            crate::history::memory::MemoryHistory::new(1 << 20),
        ))),
        recovery: None,
    })
}

fn not_connected() -> Refusal {
    Refusal::new(ErrorCode::Internal, "socket has no session")
}
