//! One SSE stream as the gateway and the fan-out see it ([`SseConn`]), this instance's
//! streams and the rooms they are in ([`SseRooms`]), and the response body that drains a
//! stream's queue ([`body`]).
//!
//! A stream has two phases. While it is set up (its channels listened to, replays read)
//! everything it is sent is collected in order, and live events of its channels are parked
//! after it; when the set-up ends the collection is the body's first chunk and the parked
//! events follow (each channel's replay and its `Success` come before any live event of the
//! stream). Then live: each event is queued as the room's shared `event:`/`data:` lines plus
//! this stream's own `id:` line (its cursor after the event), in one bounded queue; a stream
//! whose queue is full is closed as a slow consumer. Clean-up is the body's: dropping it
//! (the client went away, the server ended the stream, a panic) unregisters the stream and
//! runs the gateway's disconnect clean-up ([`Registration`]).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::sse::{self, Cursor};
use herald_protocol::{ChannelName, Epoch, RoomName, SystemMessage};
use parking_lot::{Mutex, RwLock};
use socketioxide::socket::Sid;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

use crate::fanout::EmitReport;
use crate::gateway::{self, Gateway, Peer, Replay, Session};
use crate::metrics as m;

/// Why a stream ends; decides what the client is told last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseClose {
    /// Its queue filled: `system_message` `slow_consumer`, then the stream ends.
    SlowConsumer,
    /// The server disconnected it (its project was deleted).
    Disconnected,
    /// The server is shutting down: the stream ends, the client reconnects elsewhere.
    Shutdown,
    /// Its set-up was refused or failed (no response stream exists).
    Refused,
}

/// A queued message: the part shared by every stream of the broadcast, and this stream's end
/// of it (its `id:` line and the blank line).
pub struct Chunk {
    shared: Bytes,
    own: Bytes,
}

/// Where an event sits in its channel (for the stream's cursor).
#[derive(Debug, Clone, Copy)]
pub struct SseTag<'a> {
    /// The channel.
    pub channel: &'a ChannelName,
    /// Its epoch.
    pub epoch: &'a Epoch,
    /// The event's offset.
    pub offset: u64,
}

/// A live event parked while the stream is set up.
struct Parked {
    shared: Bytes,
    tag: Option<(ChannelName, Epoch, u64)>,
}

/// What the set-up collected.
#[derive(Default)]
struct Setup {
    out: String,
    parked: Vec<Parked>,
}

struct State {
    cursor: Cursor,
    /// `Some` while the stream is set up.
    setup: Option<Setup>,
}

/// One SSE stream.
pub struct SseConn {
    sid: Sid,
    tx: mpsc::Sender<Chunk>,
    capacity: usize,
    state: Mutex<State>,
    session: OnceLock<Arc<Session>>,
    closing: OnceLock<SseClose>,
    wake: Notify,
    rooms: Arc<SseRooms>,
    /// The TCP socket under the stream: shut down when a closing stream cannot deliver its
    /// end within the close timeout (the client stopped reading, so the body is not polled).
    wire: Option<Arc<TcpStream>>,
    close_timeout: Duration,
}

impl SseConn {
    /// The stream's id (tracking entries and logs use it).
    pub fn id(&self) -> Sid {
        self.sid
    }

    /// Sets the session once the project was checked.
    pub fn set_session(&self, session: Session) {
        let _ = self.session.set(Arc::new(session));
    }

    /// Notes the position a listen answered for `channel` (the cursor starts there).
    pub fn note_position(&self, channel: &ChannelName, epoch: &Epoch, offset: u64) {
        self.state
            .lock()
            .cursor
            .set(channel, epoch, herald_protocol::ChannelOffset(offset));
    }

    /// Where the cursor is (what the next `id:` line says).
    fn id_line(cursor: &Cursor) -> Bytes {
        Bytes::from(sse::id_and_end(Some(&cursor.encode())))
    }

    /// Appends a whole message to the set-up or queues it (system messages: no cursor
    /// change, but the current cursor as `id:` so a client that got no event yet still has
    /// one).
    fn send_message(&self, event: &str, data: &str) {
        let mut state = self.state.lock();
        let id = state.cursor.encode();
        if let Some(setup) = &mut state.setup {
            sse::message(&mut setup.out, event, data, Some(&id));
            return;
        }
        let chunk = Chunk {
            shared: Bytes::from(sse::message_head(event, data)),
            own: Bytes::from(sse::id_and_end(Some(&id))),
        };
        self.queue(chunk);
    }

    /// A live event of the fan-out: parked during the set-up, else queued with this stream's
    /// cursor after it. `false`: not queued (closing, or the queue was full and the stream is
    /// now closing as a slow consumer).
    pub fn send_live(&self, shared: &Bytes, tag: Option<SseTag<'_>>) -> bool {
        if self.closing.get().is_some() {
            return false;
        }
        let mut state = self.state.lock();
        if let Some(setup) = &mut state.setup {
            if setup.parked.len() >= self.capacity {
                drop(state);
                self.close(SseClose::SlowConsumer);
                return false;
            }
            setup.parked.push(Parked {
                shared: shared.clone(),
                tag: tag.map(|t| (t.channel.clone(), t.epoch.clone(), t.offset)),
            });
            return true;
        }
        let own = match tag {
            Some(t) => {
                state
                    .cursor
                    .set(t.channel, t.epoch, herald_protocol::ChannelOffset(t.offset));
                Self::id_line(&state.cursor)
            }
            None => Bytes::from_static(b"\n"),
        };
        self.queue(Chunk {
            shared: shared.clone(),
            own,
        })
    }

    fn queue(&self, chunk: Chunk) -> bool {
        match self.tx.try_send(chunk) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(SseClose::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the set-up: what it collected (the stream's first chunk), then the parked live
    /// events queued behind it with their cursors.
    pub fn finish_setup(&self) -> Bytes {
        let mut state = self.state.lock();
        let Some(setup) = state.setup.take() else {
            return Bytes::new();
        };
        let mut first = sse::preamble();
        first.push_str(&setup.out);
        for p in setup.parked {
            let own = match &p.tag {
                Some((channel, epoch, offset)) => {
                    state
                        .cursor
                        .set(channel, epoch, herald_protocol::ChannelOffset(*offset));
                    Self::id_line(&state.cursor)
                }
                None => Bytes::from_static(b"\n"),
            };
            if !self.queue(Chunk {
                shared: p.shared,
                own,
            }) {
                break;
            }
        }
        Bytes::from(first)
    }

    /// Asks the stream to end with `reason` (the first reason wins). The body sends what the
    /// reason says and ends; a stream whose body is not polled within the close timeout (the
    /// client reads nothing) has its TCP socket shut down.
    pub fn close(&self, reason: SseClose) {
        if self.closing.set(reason).is_err() {
            return;
        }
        self.wake.notify_one();
        if reason == SseClose::SlowConsumer {
            metrics::counter!(m::SLOW_CONSUMERS).increment(1);
            tracing::debug!(stream_id = %self.sid, "slow SSE consumer: queue full, ending the stream");
        }
        if reason == SseClose::Refused {
            return;
        }
        if let Some(wire) = self.wire.clone() {
            let (rooms, sid, timeout) = (self.rooms.clone(), self.sid, self.close_timeout);
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                if rooms.get(sid).is_some() {
                    let _ =
                        socket2::SockRef::from(wire.as_ref()).shutdown(std::net::Shutdown::Both);
                }
            });
        }
    }
}

impl Peer for SseConn {
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
        if let Ok((_, channel)) = RoomName::parse_channel(room.as_str()) {
            self.state.lock().cursor.remove(&channel);
        }
    }
    fn is_connected(&self) -> bool {
        self.closing.get().is_none() && !self.tx.is_closed()
    }
    fn send_system(&self, message: &SystemMessage) {
        match serde_json::to_string(message) {
            Ok(json) => self.send_message(
                herald_protocol::messages::event_names::SYSTEM_MESSAGE,
                &json,
            ),
            Err(e) => tracing::error!(error = %e, "system message not encodable"),
        }
    }
    fn send_replay(&self, replay: &Replay<'_>) {
        let name = herald_protocol::messages::event_names::EVENT;
        let mut state = self.state.lock();
        let mut out = String::new();
        for (data, offset) in replay.events {
            let id = replay.epoch.map(|epoch| {
                state.cursor.set(replay.channel, epoch, *offset);
                state.cursor.encode()
            });
            sse::message(&mut out, name, data.get(), id.as_deref());
        }
        if let Some(setup) = &mut state.setup {
            setup.out.push_str(&out);
            return;
        }
        // A replay is one entry of the queue, like the direct transport's.
        self.queue(Chunk {
            shared: Bytes::from(out),
            own: Bytes::new(),
        });
    }
}

/// This instance's SSE streams and the rooms they are in.
#[derive(Default)]
pub struct SseRooms {
    rooms: RwLock<HashMap<RoomName, Vec<Arc<SseConn>>>>,
    conns: Mutex<HashMap<Sid, Arc<SseConn>>>,
    /// `conns.len()`, read without the lock by every broadcast.
    open: std::sync::atomic::AtomicUsize,
}

impl SseRooms {
    /// No streams yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether any stream is open here (broadcasts skip SSE otherwise).
    pub fn is_empty(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::Relaxed) == 0
    }

    /// Registers a new stream in its set-up phase; its [`Registration`] unregisters it.
    pub fn register(
        self: &Arc<Self>,
        socket_buffer: usize,
        wire: Option<Arc<TcpStream>>,
        close_timeout: Duration,
    ) -> (Arc<SseConn>, mpsc::Receiver<Chunk>) {
        let capacity = socket_buffer.max(2);
        let (tx, rx) = mpsc::channel(capacity);
        let conn = Arc::new(SseConn {
            sid: Sid::new(),
            tx,
            capacity,
            state: Mutex::new(State {
                cursor: Cursor::default(),
                setup: Some(Setup::default()),
            }),
            session: OnceLock::new(),
            closing: OnceLock::new(),
            wake: Notify::new(),
            rooms: self.clone(),
            wire,
            close_timeout,
        });
        self.conns.lock().insert(conn.sid, conn.clone());
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!(m::SSE_STREAMS).increment(1.0);
        (conn, rx)
    }

    fn get(&self, sid: Sid) -> Option<Arc<SseConn>> {
        self.conns.lock().get(&sid).cloned()
    }

    fn join(&self, room: &RoomName, sid: Sid) {
        let Some(conn) = self.get(sid) else {
            return;
        };
        let mut rooms = self.rooms.write();
        let members = rooms.entry(room.clone()).or_default();
        if !members.iter().any(|m| m.sid == sid) {
            members.push(conn);
        }
    }

    fn leave(&self, room: &RoomName, sid: Sid) {
        let mut rooms = self.rooms.write();
        if let Some(members) = rooms.get_mut(room) {
            members.retain(|m| m.sid != sid);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    fn unregister(&self, conn: &SseConn) {
        if self.conns.lock().remove(&conn.sid).is_none() {
            return;
        }
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!(m::SSE_STREAMS).decrement(1.0);
        let mut rooms = self.rooms.write();
        rooms.retain(|_, members| {
            members.retain(|m| m.sid != conn.sid);
            !members.is_empty()
        });
    }

    /// Sends `event` with `data` to every stream in `room` but those in `skip`: the
    /// `event:`/`data:` lines are built once for all of them. Never waits on a stream; one
    /// whose queue is full is closed as a slow consumer.
    pub async fn emit(
        &self,
        room: &RoomName,
        event: &str,
        data: &str,
        skip: &[Sid],
        tag: Option<(&ChannelName, &str, u64)>,
    ) -> EmitReport {
        let mut report = EmitReport::default();
        let members: Vec<Arc<SseConn>> = match self.rooms.read().get(room) {
            Some(members) => members.clone(),
            None => return report,
        };
        let shared = Bytes::from(sse::message_head(event, data));
        let epoch = tag.and_then(|(_, epoch, _)| Epoch::parse(epoch).ok());
        let tag = match (tag, &epoch) {
            (Some((channel, _, offset)), Some(epoch)) => Some(SseTag {
                channel,
                epoch,
                offset,
            }),
            _ => None,
        };
        for (i, conn) in members.iter().enumerate() {
            if i > 0 && i % crate::direct::YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            if skip.contains(&conn.sid) {
                continue;
            }
            if conn.send_live(&shared, tag) {
                report.queued += 1;
            } else {
                report.not_queued += 1;
            }
        }
        report
    }

    /// Ends every stream in `room` (its project was deleted).
    pub fn disconnect(&self, room: &RoomName) {
        let members: Vec<Arc<SseConn>> = match self.rooms.read().get(room) {
            Some(members) => members.clone(),
            None => return,
        };
        for conn in members {
            conn.close(SseClose::Disconnected);
        }
    }

    /// Ends every stream (shutdown).
    pub fn close_all(&self) {
        for conn in self.connections() {
            conn.close(SseClose::Shutdown);
        }
    }

    /// The rooms with at least one stream (a snapshot).
    pub fn rooms(&self) -> Vec<RoomName> {
        self.rooms.read().keys().cloned().collect()
    }

    /// Every stream (a snapshot).
    pub fn connections(&self) -> Vec<Arc<SseConn>> {
        self.conns.lock().values().cloned().collect()
    }
}

/// Owns one registered stream. Dropping it, however the stream ends (the body dropped by
/// hyper, a refused set-up, a panic), unregisters the stream and runs the gateway's
/// disconnect clean-up (gauges, tracking entries) in a task of its own.
pub struct Registration {
    conn: Arc<SseConn>,
    gateway: Gateway,
}

impl Registration {
    /// Takes over the clean-up of `conn` (registered by [`SseRooms::register`]).
    pub fn new(conn: Arc<SseConn>, gateway: Gateway) -> Self {
        Self { conn, gateway }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conn.close(SseClose::Refused);
        self.conn.rooms.unregister(&self.conn);
        let Some(session) = self.conn.session.get().cloned() else {
            return;
        };
        let reason = format!("sse {:?}", self.conn.closing.get());
        let (gateway, sid) = (self.gateway.clone(), self.conn.sid);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    gateway::disconnected(&gateway, sid, Some(session), &reason).await;
                });
            }
            Err(_) => {
                tracing::debug!(stream_id = %sid, "no runtime left for the disconnect clean-up")
            }
        }
    }
}

/// The response body of a stream: `first` (the preamble and what the set-up collected), then
/// queued messages, a heartbeat comment after `heartbeat` without one, and the end the close
/// reason asks for. Owns the registration: the stream is cleaned up when hyper drops it.
pub fn body(
    registration: Registration,
    rx: mpsc::Receiver<Chunk>,
    first: Bytes,
    heartbeat: Duration,
) -> axum::body::Body {
    struct Body {
        registration: Registration,
        rx: mpsc::Receiver<Chunk>,
        first: Option<Bytes>,
        pending: Option<Bytes>,
        ended: bool,
        heartbeat: Duration,
    }
    let state = Body {
        registration,
        rx,
        first: Some(first),
        pending: None,
        ended: false,
        heartbeat,
    };
    let stream = futures_util::stream::unfold(state, |mut b| async move {
        if let Some(first) = b.first.take() {
            return Some((Ok::<Bytes, std::convert::Infallible>(first), b));
        }
        if let Some(own) = b.pending.take() {
            return Some((Ok(own), b));
        }
        loop {
            if b.ended {
                return None;
            }
            let conn = b.registration.conn.clone();
            if let Some(reason) = conn.closing.get() {
                b.ended = true;
                b.rx.close();
                if *reason == SseClose::SlowConsumer {
                    let refusal = herald_protocol::Refusal::new(
                        herald_protocol::ErrorCode::SlowConsumer,
                        "this stream did not read its events fast enough; it is closed, reconnect to resume",
                    );
                    let json = serde_json::to_string(&SystemMessage::error(&refusal, None))
                        .unwrap_or_else(|_| "{}".to_owned());
                    let mut out = String::new();
                    sse::message(
                        &mut out,
                        herald_protocol::messages::event_names::SYSTEM_MESSAGE,
                        &json,
                        None,
                    );
                    return Some((Ok(Bytes::from(out)), b));
                }
                return None;
            }
            tokio::select! {
                biased;
                () = conn.wake.notified() => continue,
                chunk = b.rx.recv() => match chunk {
                    Some(chunk) => {
                        if !chunk.own.is_empty() {
                            b.pending = Some(chunk.own);
                        }
                        return Some((Ok(chunk.shared), b));
                    }
                    None => return None,
                },
                () = tokio::time::sleep(b.heartbeat) => {
                    return Some((Ok(Bytes::from_static(sse::HEARTBEAT.as_bytes())), b));
                }
            }
        }
    });
    axum::body::Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    //! The set-up phase's order: replays and `Success` messages first, live events parked
    //! behind them with their cursors; a full queue closes the stream.
    use super::*;
    use herald_protocol::ChannelOffset;
    use serde_json::value::RawValue;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("json")
    }

    fn drain(rx: &mut mpsc::Receiver<Chunk>) -> String {
        let mut out = String::new();
        while let Ok(c) = rx.try_recv() {
            out.push_str(std::str::from_utf8(&c.shared).expect("utf-8"));
            out.push_str(std::str::from_utf8(&c.own).expect("utf-8"));
        }
        out
    }

    #[tokio::test]
    async fn live_events_of_the_set_up_come_after_it_with_their_cursors() {
        let rooms = Arc::new(SseRooms::new());
        let (conn, mut rx) = rooms.register(8, None, Duration::from_secs(1));
        let room = RoomName::parse("p:news").expect("room");
        let channel = ChannelName::parse("news").expect("channel");
        let epoch = Epoch::parse("e").expect("epoch");
        conn.join(&room);
        let events = [
            (raw("{\"n\":1}"), ChannelOffset(1)),
            (raw("{\"n\":2}"), ChannelOffset(2)),
        ];
        conn.send_replay(&Replay {
            room: &room,
            channel: &channel,
            epoch: Some(&epoch),
            events: &events,
        });
        // A live event arrives before the channel's Success is sent: it waits.
        let report = rooms
            .emit(&room, "event", "{\"n\":3}", &[], Some((&channel, "e", 3)))
            .await;
        assert_eq!(report.queued, 1);
        conn.note_position(&channel, &epoch, 2);
        conn.send_system(&SystemMessage::success("listening to news", &channel));
        assert_eq!(drain(&mut rx), "", "nothing is queued during the set-up");
        let first = String::from_utf8(conn.finish_setup().to_vec()).expect("utf-8");
        assert_eq!(
            first,
            "retry: 2000\n\n\
             event: event\ndata: {\"n\":1}\nid: v1|news:e:1\n\n\
             event: event\ndata: {\"n\":2}\nid: v1|news:e:2\n\n\
             event: system_message\ndata: {\"code\":\"Success\",\"message\":\"listening to news\",\"data\":{\"channelName\":\"news\"}}\nid: v1|news:e:2\n\n"
        );
        assert_eq!(
            drain(&mut rx),
            "event: event\ndata: {\"n\":3}\nid: v1|news:e:3\n\n"
        );
        // Live now: queued at once, with the cursor after it.
        rooms
            .emit(&room, "event", "{\"n\":4}", &[], Some((&channel, "e", 4)))
            .await;
        assert_eq!(
            drain(&mut rx),
            "event: event\ndata: {\"n\":4}\nid: v1|news:e:4\n\n"
        );
    }

    #[tokio::test]
    async fn a_full_queue_closes_the_stream_as_a_slow_consumer() {
        let rooms = Arc::new(SseRooms::new());
        let (conn, _rx) = rooms.register(2, None, Duration::from_secs(1));
        let room = RoomName::parse("p:c").expect("room");
        conn.join(&room);
        let _ = conn.finish_setup();
        let mut queued = 0;
        for _ in 0..3 {
            queued += rooms.emit(&room, "event", "1", &[], None).await.queued;
        }
        assert_eq!(queued, 2);
        assert_eq!(conn.closing.get(), Some(&SseClose::SlowConsumer));
        assert!(!conn.is_connected());
        // Nothing more is queued once closing.
        assert_eq!(
            rooms.emit(&room, "event", "1", &[], None).await.not_queued,
            1
        );
    }
}
