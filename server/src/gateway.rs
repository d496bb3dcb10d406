//! The client gateway: Socket.IO handlers for the default namespace.
//!
//! * handshake: `auth.projectId` must name an existing project ([`authenticate`]);
//! * `listen` / `remove`: join or leave `{projectId}:{channelName}` rooms, private ones only
//!   with a valid channel token ([`ChannelTokens::authorize_listen`]);
//! * `event` from a client: relayed to the other members of a private channel it joined;
//! * any other event: refused with `unknown_event`;
//! * disconnect: connection-tracking entries removed.
//!
//! Every request is answered: through the ack when the client asked for one, and always with
//! a `system_message` (`Success` or `Error` with the error code).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_protocol::messages::event_names::{EVENT, LISTEN, REMOVE, SYSTEM_MESSAGE};
use herald_protocol::{
    Ack, ApiKeyId, ChannelEvent, ChannelKind, ChannelName, ClientEvent, ErrorCode, HandshakeAuth,
    ListenRequest, ProjectId, Refusal, RemoveRequest, RoomName, SystemMessage,
};
use parking_lot::Mutex;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide_core::adapter::DefinedAdapter;
use time::OffsetDateTime;

use crate::channel_token::{ChannelTokens, check_signing_key, store_refusal};
use crate::metrics as m;
use crate::revocation::{LocalSockets, RevocationQueue, RevocationReason};
use crate::store::Store;
use crate::tracking::ConnectionTracker;

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

/// Per-socket state, kept in the socket's extensions.
#[derive(Debug)]
pub struct Session {
    /// The project from the handshake.
    pub project: ProjectId,
    /// Channels this socket listens to; private ones with the API key whose token opened them.
    channels: Mutex<HashMap<ChannelName, Option<ApiKeyId>>>,
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
    let result = admit(s, auth.ok(), gw).await;
    if let Err(ConnectRefusal(r)) = &result {
        metrics::counter!(m::CONNECT_REFUSALS, "code" => r.code.as_str()).increment(1);
    }
    result
}

async fn admit<A: Adapter>(
    s: SocketRef<A>,
    auth: Option<Value>,
    gw: Gateway,
) -> Result<(), ConnectRefusal> {
    let auth = HandshakeAuth::parse(auth.as_ref()).map_err(ConnectRefusal)?;
    match gw.store.project(&auth.project_id).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::debug!(socket_id = %s.id, project_id = %auth.project_id, "handshake refused: unknown project");
            return Err(ConnectRefusal(Refusal::new(
                ErrorCode::UnknownProject,
                format!("project {} does not exist", auth.project_id),
            )));
        }
        Err(e) => {
            tracing::warn!(socket_id = %s.id, error = %e, "handshake failed: store error");
            return Err(ConnectRefusal(store_refusal(e)));
        }
    }
    let project = auth.project_id;
    s.extensions.insert(Arc::new(Session {
        project: project.clone(),
        channels: Mutex::new(HashMap::new()),
    }));
    // Handlers are registered here, before socketioxide sends the CONNECT packet: a client
    // may emit `listen` the instant it sees CONNECT, and the connect handler runs only after.
    s.join(RoomName::project(&project).into_string());
    s.on(LISTEN, on_listen::<A>);
    s.on(REMOVE, on_remove::<A>);
    s.on(EVENT, on_client_event::<A>);
    s.on_fallback(on_unknown_event::<A>);
    s.on_disconnect(on_disconnect::<A>);
    Ok(())
}

async fn on_connect<A: Adapter>(s: SocketRef<A>) {
    metrics::gauge!(m::SOCKETS_CONNECTED).increment(1.0);
    if let Some(session) = session(&s) {
        tracing::debug!(socket_id = %s.id, project_id = %session.project, transport = ?s.transport_type(), "socket connected");
    }
}

fn session<A: Adapter>(s: &SocketRef<A>) -> Option<Arc<Session>> {
    s.extensions.get::<Arc<Session>>()
}

/// Answers a request through the ack (if asked) and a `system_message`.
fn reply<A: Adapter>(
    s: &SocketRef<A>,
    ack: AckSender<A>,
    result: Result<SystemMessage, (Refusal, Option<ChannelName>)>,
) {
    let (ack_body, message) = match result {
        Ok(message) => (Ack::Ok, message),
        Err((refusal, channel)) => {
            let message = SystemMessage::error(&refusal, channel.as_ref());
            (Ack::Refused(refusal), message)
        }
    };
    if let Err(e) = ack.send(&ack_body) {
        tracing::debug!(socket_id = %s.id, error = %e, "ack not delivered");
    }
    if let Err(e) = s.emit(SYSTEM_MESSAGE, &message) {
        tracing::debug!(socket_id = %s.id, error = %e, "system message not delivered");
    }
}

async fn on_listen<A: Adapter>(
    s: SocketRef<A>,
    TryData(body): TryData<Value>,
    ack: AckSender<A>,
    State(gw): State<Gateway>,
) {
    let result = listen(&s, &gw, body.ok()).await;
    if let Err((refusal, _)) = &result {
        let code = refusal.code.as_str();
        metrics::counter!(m::LISTEN_REFUSALS, "code" => code).increment(1);
        if refusal.code.is_token_refusal() {
            metrics::counter!(m::AUTH_FAILURES, "reason" => code).increment(1);
        }
    }
    reply(&s, ack, result);
}

async fn listen<A: Adapter>(
    s: &SocketRef<A>,
    gw: &Gateway,
    body: Option<Value>,
) -> Result<SystemMessage, (Refusal, Option<ChannelName>)> {
    let session = session(s).ok_or_else(|| (not_connected(), None))?;
    let req = ListenRequest::parse(&body.unwrap_or(Value::Null)).map_err(|r| (r, None))?;
    let channel = req.channel_name;
    let fail = |r: Refusal| (r, Some(channel.clone()));
    let room = RoomName::channel(&session.project, &channel);

    let signing_key = match channel.kind() {
        ChannelKind::Public => None,
        ChannelKind::Private => Some(
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
                    tracing::info!(socket_id = %s.id, project_id = %session.project, channel = %channel, code = %r.code, "private listen refused");
                    fail(r)
                })?,
        ),
    };
    if let Some(key) = &signing_key
        && key_revoked(gw, key).await
    {
        return Err(fail(revoked_refusal()));
    }

    {
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
        if channels
            .insert(channel.clone(), signing_key.clone())
            .is_none()
        {
            subscription_gauge(channel.kind()).increment(1.0);
        }
        s.join(room.clone().into_string());
    }

    if let Some(key) = &signing_key {
        let sid = s.id.to_string();
        if let Err(e) = gw.tracker.add(&sid, &room, key).await {
            // Without a tracking entry the key's revocation could not find this socket:
            // refuse the join instead of leaving an untracked member.
            tracing::warn!(socket_id = %sid, error = %e, "tracking failed; listen undone");
            leave(s, &session, &channel, &room);
            return Err(fail(Refusal::new(
                ErrorCode::Unavailable,
                "connection tracking is unavailable, try again shortly",
            )));
        }
        if !s.connected() {
            // The socket went away while we were checking; its disconnect clean-up may have
            // run before our entry existed.
            let _ = gw.tracker.remove(&sid, &room).await;
        }
        // A revocation racing this listen: either its local pass saw the socket in the room
        // (and removed it), or the revoked mark, written before that pass, is visible here.
        if key_revoked(gw, key).await || !key_still_signs(gw, key).await {
            leave(s, &session, &channel, &room);
            let _ = gw.tracker.remove(&sid, &room).await;
            return Err(fail(revoked_refusal()));
        }
    }
    tracing::debug!(socket_id = %s.id, project_id = %session.project, channel = %channel, "listening");
    Ok(SystemMessage::success(
        format!("listening to {channel}"),
        &channel,
    ))
}

fn leave<A: Adapter>(s: &SocketRef<A>, session: &Session, channel: &ChannelName, room: &RoomName) {
    if session.channels.lock().remove(channel).is_some() {
        subscription_gauge(channel.kind()).decrement(1.0);
    }
    s.leave(room.as_str().to_owned());
}

fn subscription_gauge(kind: ChannelKind) -> metrics::Gauge {
    let kind = match kind {
        ChannelKind::Public => "public",
        ChannelKind::Private => "private",
    };
    metrics::gauge!(m::SUBSCRIPTIONS, "kind" => kind)
}

async fn on_remove<A: Adapter>(
    s: SocketRef<A>,
    TryData(body): TryData<Value>,
    ack: AckSender<A>,
    State(gw): State<Gateway>,
) {
    let result = async {
        let session = session(&s).ok_or_else(|| (not_connected(), None))?;
        let req = RemoveRequest::parse(&body.ok().unwrap_or(Value::Null)).map_err(|r| (r, None))?;
        let channel = req.channel_name;
        let room = RoomName::channel(&session.project, &channel);
        leave(&s, &session, &channel, &room);
        if channel.is_private()
            && let Err(e) = gw.tracker.remove(&s.id.to_string(), &room).await
        {
            tracing::warn!(socket_id = %s.id, error = %e, "tracking clean-up on remove failed");
        }
        Ok(SystemMessage::success(
            format!("removed from {channel}"),
            &channel,
        ))
    }
    .await;
    reply(&s, ack, result);
}

async fn on_client_event<A: Adapter>(
    s: SocketRef<A>,
    TryData(body): TryData<Value>,
    ack: AckSender<A>,
    State(gw): State<Gateway>,
) {
    let result = async {
        let session = session(&s).ok_or_else(|| (not_connected(), None))?;
        let ev = ClientEvent::parse(&body.ok().unwrap_or(Value::Null)).map_err(|r| (r, None))?;
        let channel = ev.channel_name;
        let fail = |r: Refusal| (r, Some(channel.clone()));
        if !channel.is_private() {
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
        };
        if let Err(e) = s.to(room.into_string()).emit(EVENT, &event).await {
            tracing::warn!(socket_id = %s.id, error = %e, "client event relay incomplete");
        }
        metrics::counter!(m::CLIENT_EVENTS).increment(1);
        Ok(SystemMessage::success(
            format!("event sent to {channel}"),
            &channel,
        ))
    }
    .await;
    reply(&s, ack, result);
}

async fn on_unknown_event<A: Adapter>(s: SocketRef<A>, Event(event): Event, ack: AckSender<A>) {
    let refusal = Refusal::new(
        ErrorCode::UnknownEvent,
        format!(
            "unknown event {:?}; clients send listen, remove or event",
            event.chars().take(64).collect::<String>()
        ),
    );
    reply(&s, ack, Err((refusal, None)));
}

async fn on_disconnect<A: Adapter>(
    s: SocketRef<A>,
    reason: DisconnectReason,
    State(gw): State<Gateway>,
) {
    let sid = s.id.to_string();
    metrics::gauge!(m::SOCKETS_CONNECTED).decrement(1.0);
    if let Some(session) = session(&s) {
        for channel in session.channels.lock().drain() {
            subscription_gauge(channel.0.kind()).decrement(1.0);
        }
    }
    match gw.tracker.remove_socket(&sid).await {
        Ok(removed) => {
            tracing::debug!(socket_id = %sid, ?reason, tracked = removed.len(), "socket disconnected")
        }
        Err(e) => {
            tracing::warn!(socket_id = %sid, error = %e, "tracking clean-up on disconnect failed")
        }
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

fn revoked_refusal() -> Refusal {
    Refusal::new(
        ErrorCode::TokenKeyRevoked,
        "the API key that signed this token has been revoked",
    )
}

/// This instance's sockets, for the revocation workflow.
pub struct GatewaySockets<A: Adapter> {
    io: SocketIo<A>,
    tracker: Arc<dyn ConnectionTracker>,
}

impl<A: Adapter> GatewaySockets<A> {
    /// Wraps the Socket.IO handle.
    pub fn new(io: SocketIo<A>, tracker: Arc<dyn ConnectionTracker>) -> Self {
        Self { io, tracker }
    }
}

#[async_trait::async_trait]
impl<A: Adapter> LocalSockets for GatewaySockets<A> {
    async fn revoke_key(&self, key: &ApiKeyId, reason: RevocationReason) -> usize {
        let mut affected = 0;
        for s in self.io.local().sockets() {
            let Some(session) = session(&s) else { continue };
            let removed: Vec<ChannelName> = {
                let mut channels = session.channels.lock();
                let gone: Vec<ChannelName> = channels
                    .iter()
                    .filter(|(_, k)| k.as_ref() == Some(key))
                    .map(|(c, _)| c.clone())
                    .collect();
                for c in &gone {
                    channels.remove(c);
                    subscription_gauge(ChannelKind::Private).decrement(1.0);
                    s.leave(RoomName::channel(&session.project, c).into_string());
                }
                gone
            };
            if removed.is_empty() {
                continue;
            }
            affected += 1;
            metrics::counter!(m::REVOCATION_SOCKETS_REMOVED).increment(1);
            let message = SystemMessage::removed_from_channels(reason.message(), &removed);
            if let Err(e) = s.emit(SYSTEM_MESSAGE, &message) {
                tracing::debug!(socket_id = %s.id, error = %e, "RemovedFromChannel not delivered");
            }
            let sid = s.id.to_string();
            for c in &removed {
                let room = RoomName::channel(&session.project, c);
                if let Err(e) = self.tracker.remove(&sid, &room).await {
                    tracing::warn!(socket_id = %sid, error = %e, "tracking clean-up after revocation failed");
                }
            }
            tracing::info!(socket_id = %sid, api_key_id = %key, channels = removed.len(), "socket removed from private channels");
        }
        affected
    }

    fn keys_in_use(&self) -> HashSet<ApiKeyId> {
        let mut keys = HashSet::new();
        for s in self.io.local().sockets() {
            if let Some(session) = session(&s) {
                keys.extend(session.channels.lock().values().flatten().cloned());
            }
        }
        keys
    }
}

fn not_connected() -> Refusal {
    Refusal::new(ErrorCode::Internal, "socket has no session")
}
