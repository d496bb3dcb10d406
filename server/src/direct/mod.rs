//! The direct transport: Herald's own Engine.IO v4 WebSocket endpoint, the fast path for every
//! client that opens `/socket.io/?EIO=4&transport=websocket` directly (Herald's SDKs, and
//! `socket.io-client` with `transports: ["websocket"]`).
//!
//! Why it exists: socketioxide re-frames each event per socket and feeds it through a channel,
//! a task and a WebSocket sink per socket, and skips a socket whose queue is full without
//! saying which. Here an event becomes one WebSocket frame (`Bytes`) shared by every member of
//! the room; each socket has one bounded queue and one writer task that writes a lone frame as
//! it is and coalesces a backlog into one `write`; a socket whose queue fills is told
//! (`system_message` `slow_consumer`) and closed with WebSocket code 4008.
//!
//! Everything else (HTTP long-polling, polling→WebSocket upgrades, Engine.IO v3) stays with
//! socketioxide; the request handlers ([`crate::gateway`]) serve both through
//! [`crate::gateway::Peer`], and [`crate::fanout::Fanout`] delivers to both.

pub mod conn;
pub mod frame;
pub mod packet;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_protocol::{RoomName, SystemMessage};
use parking_lot::{Mutex, RwLock};
use socketioxide::socket::Sid;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::fanout::EmitReport;
use crate::gateway::{Gateway, Peer, Session};
use crate::metrics as m;

/// Settings of the direct transport (from `herald serve`'s flags).
#[derive(Debug, Clone)]
pub struct DirectSettings {
    /// Engine.IO ping interval.
    pub ping_interval: Duration,
    /// How long a client may take to answer a ping.
    pub ping_timeout: Duration,
    /// How long a client may take to join the namespace.
    pub connect_timeout: Duration,
    /// Largest client message (WebSocket message = one Engine.IO packet).
    pub max_message_bytes: usize,
    /// Frames queued per socket before it counts as a slow consumer.
    pub socket_buffer: usize,
    /// How long a closing socket may take to receive its last frames.
    pub close_timeout: Duration,
}

/// Why a direct connection ends; decides what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed (WebSocket close, Engine.IO close, namespace disconnect, EOF).
    Client,
    /// The client did not answer pings.
    HeartbeatTimeout,
    /// The client did not join the namespace in time.
    ConnectTimeout,
    /// The client broke the protocol: close code and reason.
    Protocol(u16, &'static str),
    /// The socket's queue filled: `system_message` `slow_consumer`, close 4008.
    SlowConsumer,
    /// The server disconnected the socket (its project was deleted): Socket.IO DISCONNECT.
    Disconnected,
    /// The server is shutting down: close 1001, the client reconnects elsewhere.
    Shutdown,
    /// The connection's task ended without a reason of its own (a bug: a panic in a request
    /// handler): close 1011, the client reconnects; its state was cleaned up all the same.
    Internal,
}

impl CloseReason {
    /// The frames the client gets before the connection closes.
    pub fn goodbye(self) -> Vec<Bytes> {
        match self {
            CloseReason::Client => vec![frame::close(frame::CLOSE_NORMAL, "")],
            CloseReason::HeartbeatTimeout => {
                vec![frame::close(frame::CLOSE_POLICY, "ping timeout")]
            }
            CloseReason::ConnectTimeout => {
                vec![frame::close(frame::CLOSE_POLICY, "connect timeout")]
            }
            CloseReason::Protocol(code, reason) => vec![frame::close(code, reason)],
            CloseReason::SlowConsumer => {
                let refusal = herald_protocol::Refusal::new(
                    herald_protocol::ErrorCode::SlowConsumer,
                    "this socket did not read its events fast enough; it is closed, reconnect and listen again",
                );
                let message = serde_json::to_string(&SystemMessage::error(&refusal, None))
                    .unwrap_or_else(|_| "{}".to_owned());
                vec![
                    frame::text(&packet::event(
                        herald_protocol::messages::event_names::SYSTEM_MESSAGE,
                        &message,
                    )),
                    frame::close(
                        frame::CLOSE_SLOW_CONSUMER,
                        herald_protocol::ErrorCode::SlowConsumer.as_str(),
                    ),
                ]
            }
            CloseReason::Disconnected => vec![
                frame::text("41"),
                frame::close(frame::CLOSE_NORMAL, "disconnected by the server"),
            ],
            CloseReason::Shutdown => vec![frame::close(
                frame::CLOSE_GOING_AWAY,
                "server shutting down",
            )],
            CloseReason::Internal => vec![frame::close(frame::CLOSE_INTERNAL, "internal error")],
        }
    }
}

/// One direct connection, as rooms, the gateway and the revocation workflow see it.
pub struct DirectConn {
    sid: Sid,
    /// The socket, written directly while nothing is queued.
    wire: Arc<TcpStream>,
    /// Whether frames wait in `tx`, and when the socket was last written.
    wire_state: Mutex<WireState>,
    tx: mpsc::Sender<Bytes>,
    rooms: Arc<DirectRooms>,
    session: OnceLock<Arc<Session>>,
    closing: OnceLock<CloseReason>,
    writer: OnceLock<AbortHandle>,
    close_timeout: Duration,
}

/// How a connection's frames currently reach its socket.
#[derive(Debug)]
struct WireState {
    /// Frames wait in the queue (or the writer task is writing): new frames queue behind them.
    /// While false, `send` may write straight to the socket.
    busy: bool,
    /// When a frame was last written (directly or by the writer).
    last_write: Instant,
    /// Tracked sends so far ([`DirectConn::send_tracked`]).
    sent: u64,
}

/// A socket written to less than this long ago gets its next frame through the queue: under a
/// high event rate frames then pile up and the writer coalesces them into one `write`, instead
/// of one system call per frame. Below the rate (most sockets, most of the time), each frame
/// goes straight to the socket from the fan-out loop: no queue, no task wake-up.
const COALESCE_WINDOW: Duration = Duration::from_millis(1);

/// Members a fan-out serves before it lets other tasks run.
pub const YIELD_EVERY: usize = 256;

/// What [`DirectConn::send`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written to the socket.
    Written,
    /// Queued behind earlier frames (the writer task writes it).
    Queued,
    /// Not sent: the queue was full (the socket is now closing as a slow consumer) or the
    /// connection is closed.
    Dropped,
}

impl DirectConn {
    /// Sends a frame, in order with every earlier one: straight to the socket when nothing is
    /// waiting and the kernel takes it whole (no task wake-up, no copy), else through the
    /// queue. A full queue closes the socket as a slow consumer.
    pub fn send(&self, frame: Bytes) -> Sent {
        self.send_at(frame, Instant::now())
    }

    /// [`DirectConn::send`] with the time already read (once per broadcast).
    pub fn send_at(&self, frame: Bytes, now: Instant) -> Sent {
        self.send_tracked(frame, now, None)
    }

    /// [`DirectConn::send_at`] of a channel event, numbered among this socket's tracked sends
    /// in the order it reaches the wire or the queue, and noted in its subscription's cell
    /// (`track`: the cell, the event's offset and epoch) for connection state recovery.
    pub fn send_tracked(
        &self,
        frame: Bytes,
        now: Instant,
        track: Option<(&crate::csr::SubCell, u64, &str)>,
    ) -> Sent {
        self.send_numbered(frame, now, |sent| {
            if let Some((cell, offset, epoch)) = track {
                *sent += 1;
                cell.record(*sent, offset, epoch);
            }
        })
    }

    /// Sends `frames` (a recovery's replay) as one unit of the queue: they reach the socket in
    /// order, behind every earlier frame and before every later one, and take one place of
    /// the queue whatever their number (the replay is bounded by the channel's history, not
    /// by `--socket-buffer`). `number` numbers and records them as tracked sends, like
    /// [`DirectConn::send_tracked`] does one.
    fn send_batch(&self, frames: Vec<Bytes>, now: Instant, number: impl FnOnce(&mut u64)) -> Sent {
        let joined = match frames.len() {
            0 => return Sent::Written,
            1 => frames.into_iter().next().unwrap_or_default(),
            _ => {
                let mut all = bytes::BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
                for f in &frames {
                    all.extend_from_slice(f);
                }
                all.freeze()
            }
        };
        self.send_numbered(joined, now, number)
    }

    /// [`DirectConn::send_at`], with `number` run on the socket's tracked-send count under the
    /// lock that orders the frame among the socket's others.
    fn send_numbered(&self, frame: Bytes, now: Instant, number: impl FnOnce(&mut u64)) -> Sent {
        let outcome = {
            let mut state = self.wire_state.lock();
            number(&mut state.sent);
            let frame = if state.busy {
                frame
            } else if now.saturating_duration_since(state.last_write) < COALESCE_WINDOW {
                state.busy = true;
                frame
            } else {
                state.last_write = now;
                match self.wire.try_write(&frame) {
                    Ok(n) if n == frame.len() => return Sent::Written,
                    Ok(n) => {
                        state.busy = true;
                        frame.slice(n..)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        state.busy = true;
                        frame
                    }
                    Err(_) => {
                        state.busy = true;
                        drop(state);
                        self.close(CloseReason::Client);
                        return Sent::Dropped;
                    }
                }
            };
            self.tx.try_send(frame)
        };
        match outcome {
            Ok(()) => Sent::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CloseReason::SlowConsumer);
                Sent::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Dropped,
        }
    }

    /// Asks the connection to close with `reason` (the first reason wins): the writer drops
    /// what is queued, writes the goodbye frames and ends; a writer that cannot finish within
    /// the close timeout (the client stopped reading) is aborted.
    pub fn close(&self, reason: CloseReason) {
        if self.closing.set(reason).is_err() {
            return;
        }
        // No more direct writes: everything goes through the writer, which says goodbye.
        self.wire_state.lock().busy = true;
        if reason == CloseReason::SlowConsumer {
            metrics::counter!(m::SLOW_CONSUMERS).increment(1);
            // One line per socket at most, but many sockets can be slow at once: one warning
            // per interval says how many, each socket gets a debug line.
            tracing::debug!(socket_id = %self.sid, "slow consumer: queue full, closing the socket");
            if let Some(pass) = slow_consumer_log().check(&()) {
                tracing::warn!(socket_id = %self.sid, others_since_last_line = pass.suppressed, "slow consumer: queue full, closing the socket");
            }
        }
        // Wakes an idle writer; a busy one (full queue) sees the flag after its write.
        let _ = self.tx.try_send(Bytes::new());
        // Closes decided elsewhere than in the connection's own reader need a watchdog: the
        // reader waits for the writer, which may be stuck on a client that reads nothing.
        // (The reader bounds its own closes itself.)
        let from_outside = matches!(
            reason,
            CloseReason::SlowConsumer
                | CloseReason::Disconnected
                | CloseReason::Shutdown
                | CloseReason::Internal
        );
        if from_outside && let Some(writer) = self.writer.get() {
            let writer = writer.clone();
            let timeout = self.close_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                writer.abort();
            });
        }
    }

    /// The reason the connection is closing, once asked.
    pub fn closing(&self) -> Option<CloseReason> {
        self.closing.get().copied()
    }
}

impl Peer for DirectConn {
    fn sid(&self) -> Sid {
        self.sid
    }
    fn session(&self) -> Option<Arc<Session>> {
        self.session.get().cloned()
    }
    fn join(&self, room: &RoomName) {
        self.rooms.join(room, self.sid);
    }
    fn leave(&self, room: &RoomName) {
        self.rooms.leave(room, self.sid);
    }
    fn is_connected(&self) -> bool {
        self.closing.get().is_none() && !self.tx.is_closed()
    }
    fn send_system(&self, message: &SystemMessage) {
        match serde_json::to_string(message) {
            Ok(json) => {
                self.send(frame::text(&packet::event(
                    herald_protocol::messages::event_names::SYSTEM_MESSAGE,
                    &json,
                )));
            }
            Err(e) => tracing::error!(error = %e, "system message not encodable"),
        }
    }
    fn send_replay(&self, replay: &crate::gateway::Replay<'_>) {
        let name = herald_protocol::messages::event_names::EVENT;
        let Some(epoch) = replay.epoch else {
            let frames = replay
                .events
                .iter()
                .map(|(data, _)| frame::text(&packet::event(name, data.get())));
            self.send_batch(frames.collect(), Instant::now(), |_| {});
            return;
        };
        let frames = replay.events.iter().map(|(data, offset)| {
            let marker = herald_protocol::csr::marker(*offset, replay.channel);
            frame::text(&packet::event_marked(name, data.get(), &marker))
        });
        let frames: Vec<Bytes> = frames.collect();
        let cell = self.session().and_then(|s| s.sub(replay.room));
        self.send_batch(frames, Instant::now(), |sent| {
            if let Some(cell) = &cell {
                for (_, offset) in replay.events {
                    *sent += 1;
                    cell.record(*sent, offset.get(), epoch.as_str());
                }
            }
        });
    }
}

/// The slow-consumer warning: one line per interval across all sockets.
fn slow_consumer_log() -> &'static crate::log_throttle::LogThrottle<()> {
    static T: std::sync::LazyLock<crate::log_throttle::LogThrottle<()>> =
        std::sync::LazyLock::new(|| crate::log_throttle::LogThrottle::new("slow_consumer"));
    &T
}

/// This instance's direct connections and the rooms they are in.
#[derive(Default)]
pub struct DirectRooms {
    rooms: RwLock<HashMap<RoomName, Vec<Member>>>,
    conns: Mutex<HashMap<Sid, Arc<DirectConn>>>,
}

/// A room member: the connection, and its subscription's cell when the session is
/// recoverable (the fan-out loop updates it without a lookup).
#[derive(Clone)]
struct Member {
    conn: Arc<DirectConn>,
    sub: Option<Arc<crate::csr::SubCell>>,
}

/// What the fan-out needs of a channel event for connection state recovery: its offset and
/// epoch.
#[derive(Debug, Clone, Copy)]
pub struct EventTag<'a> {
    /// The event's offset.
    pub offset: u64,
    /// Its epoch.
    pub epoch: &'a str,
}

impl DirectRooms {
    /// No connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn join(&self, room: &RoomName, sid: Sid) {
        let Some(conn) = self.get(sid) else {
            return;
        };
        let sub = conn.session().and_then(|s| s.sub(room));
        let mut rooms = self.rooms.write();
        let members = rooms.entry(room.clone()).or_default();
        if !members.iter().any(|m| m.conn.sid == sid) {
            members.push(Member { conn, sub });
        }
    }

    fn leave(&self, room: &RoomName, sid: Sid) {
        let mut rooms = self.rooms.write();
        if let Some(members) = rooms.get_mut(room) {
            if let Some(i) = members.iter().position(|m| m.conn.sid == sid) {
                members.swap_remove(i);
            }
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Sends `frame` to every member of `room` but those in `skip`. Never waits on a socket: each
    /// member gets it written or queued ([`DirectConn::send`]); a member whose queue is full is
    /// closed as a slow consumer. The room lock is held only to copy the member list, and the
    /// loop yields to other tasks every [`YIELD_EVERY`] members, so a large room does not hold
    /// a runtime worker for the whole fan-out.
    /// `tag`: the event's position, noted in recoverable members' subscription cells.
    pub async fn emit(
        &self,
        room: &RoomName,
        frame: &Bytes,
        skip: &[Sid],
        tag: Option<EventTag<'_>>,
    ) -> EmitReport {
        let mut report = EmitReport::default();
        let members: Vec<Member> = match self.rooms.read().get(room) {
            Some(members) => members.clone(),
            None => return report,
        };
        let mut now = Instant::now();
        for (i, m) in members.iter().enumerate() {
            if i > 0 && i % YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
                now = Instant::now();
            }
            if skip.contains(&m.conn.sid) {
                continue;
            }
            let track = match (&m.sub, tag) {
                (Some(cell), Some(t)) => Some((cell.as_ref(), t.offset, t.epoch)),
                _ => None,
            };
            match m.conn.send_tracked(frame.clone(), now, track) {
                Sent::Written | Sent::Queued => report.queued += 1,
                Sent::Dropped => report.not_queued += 1,
            }
        }
        report
    }

    /// Disconnects every member of `room`.
    pub fn disconnect(&self, room: &RoomName) {
        let sids: Vec<Sid> = match self.rooms.read().get(room) {
            Some(members) => members.iter().map(|m| m.conn.sid).collect(),
            None => return,
        };
        for sid in sids {
            if let Some(conn) = self.get(sid) {
                conn.close(CloseReason::Disconnected);
            }
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        for conn in self.connections() {
            conn.close(CloseReason::Shutdown);
        }
    }

    /// The rooms with at least one direct member (a snapshot).
    pub fn rooms(&self) -> Vec<RoomName> {
        self.rooms.read().keys().cloned().collect()
    }

    /// Every connection (a snapshot).
    pub fn connections(&self) -> Vec<Arc<DirectConn>> {
        self.conns.lock().values().cloned().collect()
    }

    fn get(&self, sid: Sid) -> Option<Arc<DirectConn>> {
        self.conns.lock().get(&sid).cloned()
    }

    fn register(
        self: &Arc<Self>,
        wire: Arc<TcpStream>,
        tx: mpsc::Sender<Bytes>,
        close_timeout: Duration,
    ) -> Arc<DirectConn> {
        let conn = Arc::new(DirectConn {
            sid: Sid::new(),
            wire,
            wire_state: Mutex::new(WireState {
                busy: false,
                last_write: Instant::now() - COALESCE_WINDOW,
                sent: 0,
            }),
            tx,
            rooms: self.clone(),
            session: OnceLock::new(),
            closing: OnceLock::new(),
            writer: OnceLock::new(),
            close_timeout,
        });
        self.conns.lock().insert(conn.sid, conn.clone());
        conn
    }

    /// Removes a connection from every room it is in and from the connection list.
    pub(crate) fn unregister(&self, conn: &DirectConn) {
        if let Some(session) = conn.session.get() {
            for room in session.rooms() {
                self.leave(&room, conn.sid);
            }
        }
        self.conns.lock().remove(&conn.sid);
    }
}

/// What the upgrade middleware needs.
#[derive(Clone)]
pub struct DirectTransport {
    /// Request handlers' shared state.
    pub gateway: Gateway,
    /// Timing and limits.
    pub settings: Arc<DirectSettings>,
}

/// The socket under the request, when it came through Herald's serve loop ([`crate::listen`]).
pub fn wire_of(req: &Request) -> Option<Arc<TcpStream>> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<wire::Wire>>()
        .map(|info| info.0.0.clone())
}

/// Whether a request opens a direct connection: `GET /socket.io/?EIO=4&transport=websocket`
/// without a `sid` (an upgrade of a polling session stays with socketioxide), with the
/// WebSocket upgrade headers, on a connection accepted by [`crate::listen`].
pub fn is_direct(req: &Request) -> bool {
    if req.method() != axum::http::Method::GET || !req.uri().path().starts_with("/socket.io") {
        return false;
    }
    let Some(query) = req.uri().query() else {
        return false;
    };
    let mut eio4 = false;
    let mut websocket = false;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("EIO", "4")) => eio4 = true,
            Some(("transport", "websocket")) => websocket = true,
            Some(("sid", _)) => return false,
            _ => {}
        }
    }
    eio4 && websocket && header_has(req.headers(), header::UPGRADE, "websocket") && {
        req.extensions()
            .get::<axum::extract::ConnectInfo<wire::Wire>>()
            .is_some()
    }
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Answers a direct WebSocket handshake (see [`is_direct`]): `101 Switching Protocols`, and
/// the connection is served by [`conn::run`] once hyper hands it over.
pub fn upgrade(mut req: Request, transport: &DirectTransport) -> Response {
    let transport = transport.clone();
    let Some(wire) = wire_of(&req) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the direct transport needs the server's own listener",
        )
            .into_response();
    };
    let headers = req.headers();
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (Some(key), true) = (key, version_ok) else {
        return (
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs Sec-WebSocket-Version 13 and a Sec-WebSocket-Key",
        )
            .into_response();
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded",
        )
            .into_response();
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                conn::run(hyper_util::rt::TokioIo::new(upgraded), wire, transport).await
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}
