//! Where a published event goes: every socket in its room, on this instance first, then (Redis
//! mode) on every other instance through Herald's event bus.
//!
//! A room's members on one instance sit on two transports: direct WebSocket connections
//! ([`crate::direct`], the fast path: the event is encoded once into a WebSocket frame that
//! every member's queue shares) and socketioxide sockets (long-polling and polling→WebSocket
//! upgrades), reached through socketioxide's local broadcast, or socket by socket for a channel
//! event with a position in a room with recoverable sessions (each socket numbers its tracked
//! sends, [`crate::gateway::send_marked`]). A channel event with a position carries its
//! recovery marker as last argument on both transports ([`herald_protocol::csr`]). Local
//! delivery never waits on Redis; the bus message goes out after it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use herald_protocol::{MissedEventsReason, RoomName};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Sid;
use socketioxide::{BroadcastError, SocketIo};

use crate::direct::{DirectRooms, frame, packet};
use crate::gateway::Marked;
use crate::log_throttle::LogThrottle;
use crate::metrics as m;

/// What a broadcast reached on this instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmitReport {
    /// Local sockets the packet was queued for.
    pub queued: usize,
    /// Local sockets the packet could not be queued for (full queue: slow consumer, or the
    /// socket closed meanwhile).
    pub not_queued: usize,
}

impl std::ops::AddAssign for EmitReport {
    fn add_assign(&mut self, other: Self) {
        self.queued += other.queued;
        self.not_queued += other.not_queued;
    }
}

/// Why a broadcast failed.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The bus (Redis) could not confirm that every other instance took the event: this
    /// instance's sockets got it, some other instance's may not have.
    #[error("fan-out backend unavailable: {0}")]
    Unavailable(String),
    /// Redis took the event and handed it to every instance subscribed at that moment, but
    /// fewer instances than expected were (an instance's subscription is down or being
    /// re-established). Such an instance catches its sockets up from history once its
    /// subscription is back ([`Fanout::catch_up`]): for an event in history this is repairable
    /// (see `PROTOCOL.md`, "Redis mode: subscription gaps").
    #[error("fan-out not confirmed by every instance: {0}")]
    Unconfirmed(String),
    /// The packet could not be encoded.
    #[error("packet encoding failed: {0}")]
    Encode(String),
}

/// The socketioxide side of an instance's rooms (local operations only).
#[async_trait]
pub trait SioRooms: Send + Sync + 'static {
    /// Emits to the room's local socketioxide sockets, but those in `skip`; `at`: the channel
    /// event's position and marker, when it has one.
    async fn emit_local(
        &self,
        room: &RoomName,
        event: &'static str,
        data: &RawValue,
        skip: &[Sid],
        at: Option<Marked<'_>>,
    ) -> Result<EmitReport, FanoutError>;
    /// Disconnects the room's local socketioxide sockets.
    async fn disconnect_local(&self, room: &RoomName);
    /// The rooms with local socketioxide members.
    async fn local_rooms(&self) -> Vec<String>;
    /// Closes every socketioxide socket (shutdown).
    async fn close(&self);
}

/// The operators of `io`'s default namespace, or `None` while it is not registered (Redis
/// mode registers it asynchronously, once the adapter subscribed its channels) or after
/// `close()`. socketioxide's shorthands (`io.local()`, `io.to()`, `io.get_socket()`…) panic in
/// that state: Herald reaches the default namespace only through this function.
pub fn default_namespace<A: Adapter>(io: &SocketIo<A>) -> Option<BroadcastOperators<A>> {
    io.of("/")
}

#[async_trait]
impl<A: Adapter> SioRooms for SocketIo<A> {
    async fn emit_local(
        &self,
        room: &RoomName,
        event: &'static str,
        data: &RawValue,
        skip: &[Sid],
        at: Option<Marked<'_>>,
    ) -> Result<EmitReport, FanoutError> {
        // No namespace yet: no socketioxide socket can be connected.
        let Some(ns) = default_namespace(self) else {
            return Ok(EmitReport::default());
        };
        let sockets = ns.clone().local().to(room.as_str().to_owned()).sockets();
        let members = sockets.len();
        if members == 0 {
            return Ok(EmitReport::default());
        }
        if let Some(at) = at {
            let tracked = |s: &SocketRef<A>| {
                s.extensions
                    .get::<Arc<crate::gateway::Session>>()
                    .is_some_and(|x| x.sub(room).is_some())
            };
            if skip.len() > 1 || sockets.iter().any(tracked) {
                // Each recoverable socket numbers its sends: one emit per socket.
                let mut report = EmitReport::default();
                for s in sockets.iter().filter(|s| !skip.contains(&s.id)) {
                    match crate::gateway::send_marked(s, room, data, at) {
                        Ok(()) => report.queued += 1,
                        Err(_) => report.not_queued += 1,
                    }
                }
                return Ok(report);
            }
            return broadcast(&ns, room, event, &(data, at.marker), skip, members).await;
        }
        if skip.len() > 1 {
            // Rare (sockets finishing a recovery in Redis mode): one emit per socket.
            let mut report = EmitReport::default();
            for s in sockets.iter().filter(|s| !skip.contains(&s.id)) {
                match s.emit(event, data) {
                    Ok(()) => report.queued += 1,
                    Err(_) => report.not_queued += 1,
                }
            }
            return Ok(report);
        }
        broadcast(&ns, room, event, data, skip, members).await
    }

    async fn disconnect_local(&self, room: &RoomName) {
        let Some(ns) = default_namespace(self) else {
            return;
        };
        if let Err(e) = ns.local().to(room.as_str().to_owned()).disconnect().await {
            tracing::debug!(error = %e, "local disconnect incomplete");
        }
    }

    async fn local_rooms(&self) -> Vec<String> {
        let Some(ns) = default_namespace(self) else {
            return Vec::new();
        };
        match ns.local().rooms().await {
            Ok(rooms) => rooms.into_iter().map(|r| r.into_owned()).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "local rooms not listed");
                Vec::new()
            }
        }
    }

    async fn close(&self) {
        SocketIo::close(self).await;
    }
}

/// socketioxide's local broadcast of `data` to the `members` sockets of `room`, but the one
/// socket in `skip` (if any).
async fn broadcast<A: Adapter, T: Serialize + ?Sized>(
    ns: &BroadcastOperators<A>,
    room: &RoomName,
    event: &'static str,
    data: &T,
    skip: &[Sid],
    members: usize,
) -> Result<EmitReport, FanoutError> {
    // A socket's own `broadcast()` leaves the socket out.
    let ops = match skip.first().and_then(|sid| ns.get_socket(*sid)) {
        Some(origin) => origin.broadcast().local(),
        None => ns.clone().local(),
    };
    match ops.to(room.as_str().to_owned()).emit(event, data).await {
        Ok(()) => Ok(EmitReport {
            queued: members,
            not_queued: 0,
        }),
        Err(BroadcastError::Socket(errors)) => Ok(EmitReport {
            queued: members.saturating_sub(errors.len()),
            not_queued: errors.len(),
        }),
        Err(BroadcastError::Serialize(e)) => Err(FanoutError::Encode(e.to_string())),
        Err(BroadcastError::Adapter(e)) => Err(FanoutError::Unavailable(e.to_string())),
    }
}

/// One message on the event bus between instances (JSON). Messages travel in batches
/// ([`encode_batch`]) that name the sending instance once.
#[derive(Debug, Serialize, Deserialize)]
pub struct BusMessage<'a> {
    /// The room.
    #[serde(rename = "r", borrow)]
    pub room: &'a str,
    /// What to do.
    #[serde(rename = "k")]
    pub kind: BusKind,
    /// The event's JSON (for [`BusKind::Event`]).
    #[serde(rename = "d", borrow, default, skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    /// The event's offset in its channel's history (events of projects with history on).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The epoch of `offset`.
    #[serde(rename = "p", borrow, default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
}

/// A batch on the bus, decoded ([`decode_batch`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The sending instance.
    pub origin: &'a str,
    /// What it carries.
    pub body: BatchBody<'a>,
}

/// What a batch carries.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchBody<'a> {
    /// Bus messages, in order. `seq` numbers the sender's batches from 1 up (`None` from a
    /// sender that does not number them), so a receiver drops a batch it already applied.
    Messages {
        /// The batch's number.
        seq: Option<u64>,
        /// The encoded [`BusMessage`]s.
        messages: Vec<&'a [u8]>,
    },
    /// The sender is shutting down cleanly: stop expecting it on the bus.
    Leave,
}

/// A batch on the wire: `origin` ` ` `seq` `\n`, then each message as a 4-byte big-endian
/// length and its JSON. The origin comes first so an instance skips its own batches without
/// parsing them.
pub fn encode_batch(origin: &str, seq: u64, messages: &[Vec<u8>]) -> Vec<u8> {
    let seq = seq.to_string();
    let size = origin.len() + seq.len() + 2 + messages.iter().map(|m| m.len() + 4).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(origin.as_bytes());
    out.push(b' ');
    out.extend_from_slice(seq.as_bytes());
    out.push(b'\n');
    for m in messages {
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// The notice an instance sends on clean shutdown: `origin` ` leave` `\n`.
pub fn encode_leave(origin: &str) -> Vec<u8> {
    format!("{origin} {LEAVE}\n").into_bytes()
}

const LEAVE: &str = "leave";

/// Splits a batch into its origin and body; `None` if it is malformed. A header without a
/// sequence number (`origin` `\n`) is a batch of messages without one.
pub fn decode_batch(bytes: &[u8]) -> Option<Batch<'_>> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(bytes.get(..nl)?).ok()?;
    let mut rest = bytes.get(nl + 1..)?;
    let (origin, seq) = match header.split_once(' ') {
        None => (header, None),
        Some((origin, LEAVE)) if rest.is_empty() => {
            return Some(Batch {
                origin,
                body: BatchBody::Leave,
            });
        }
        Some((origin, seq)) => (origin, Some(seq.parse::<u64>().ok()?)),
    };
    let mut messages = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        messages.push(rest.get(4..4usize.checked_add(len)?)?);
        rest = rest.get(4 + len..)?;
    }
    Some(Batch {
        origin,
        body: BatchBody::Messages { seq, messages },
    })
}

/// What a bus message asks the other instances to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BusKind {
    /// Emit `event` with `data` to the room.
    #[serde(rename = "e")]
    Event,
    /// Disconnect the room's sockets.
    #[serde(rename = "x")]
    Disconnect,
    /// Emit the `presence` event `data` (a [`herald_protocol::presence::PresenceEvent`]) to
    /// the room.
    #[serde(rename = "pr")]
    Presence,
}

/// The link to the other instances (Redis pub/sub in Redis mode).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// This instance's id, the `origin` of what it sends.
    fn origin(&self) -> &str;
    /// Sends one encoded [`BusMessage`] to every other instance (possibly batched with
    /// others); resolves `Ok` only once every instance known to be alive took it, and
    /// [`FanoutError::Unavailable`] when that cannot be confirmed.
    async fn publish(&self, message: Vec<u8>) -> Result<(), FanoutError>;
}

/// Room operations across both transports and every instance.
pub struct Fanout {
    direct: Arc<DirectRooms>,
    sse: Arc<crate::sse::SseRooms>,
    sio: OnceLock<Box<dyn SioRooms>>,
    /// Admitted socketioxide sockets on this instance: while there are none, broadcasts skip
    /// socketioxide altogether.
    sio_sockets: AtomicUsize,
    bus: OnceLock<Arc<dyn Bus>>,
    /// The "not queued" warning, at most once per room per interval: a socket that never
    /// reads would otherwise log a line for every event of its rooms. socketioxide's
    /// broadcast error does not name the sockets, so the key is the room.
    not_queued_log: LogThrottle<RoomName>,
    /// Per room, sockets that got its events up to an offset from history ([`Fanout::hold_floor`]).
    floors: parking_lot::Mutex<std::collections::HashMap<RoomName, Vec<Floor>>>,
    /// How many rooms have floors: while none, bus events skip the check.
    floors_active: AtomicUsize,
    sequencer: crate::history::Sequencer,
    /// Redis mode: per room with members here, the last event delivered
    /// ([`crate::redis::gap`]).
    positions: crate::redis::gap::Positions,
    /// Redis mode: where missed events are read back ([`Fanout::attach_history`]).
    history: OnceLock<HistorySource>,
}

/// The history a [`Fanout`] reads missed events from, and the store for projects' settings.
struct HistorySource {
    histories: Arc<crate::history::Histories>,
    store: Arc<dyn crate::store::Store>,
}

/// The position fields of an encoded channel event (the payload is skipped, not copied).
#[derive(Deserialize)]
struct Position<'a> {
    #[serde(rename = "channelName", borrow)]
    channel: std::borrow::Cow<'a, str>,
    offset: Option<u64>,
    #[serde(borrow)]
    epoch: Option<std::borrow::Cow<'a, str>>,
}

/// A recovered socket, the offset it has the room's events up to, and since when.
type Floor = (Sid, u64, std::time::Instant);

/// Rooms caught up at once after a re-subscription ([`Fanout::catch_up`]).
const CATCH_UP_CONCURRENCY: usize = 16;

/// Pauses between the tries of a catch-up's history read that failed (the room's sequencer
/// lock is held meanwhile: its deliveries on this instance wait, at most about a second).
const CATCH_UP_READ_RETRIES: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(50),
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(800),
];

/// How long a recovered socket's floor is kept at most ([`Fanout::hold_floor`]): well beyond
/// the bus's confirmation timeout.
pub const FLOOR_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl Fanout {
    /// A fan-out over the direct transport's rooms; the socketioxide side and the bus are
    /// attached once built ([`Fanout::attach_sio`], [`Fanout::attach_bus`]).
    pub fn new(direct: Arc<DirectRooms>) -> Self {
        Self {
            direct,
            sse: Arc::new(crate::sse::SseRooms::new()),
            sio: OnceLock::new(),
            sio_sockets: AtomicUsize::new(0),
            bus: OnceLock::new(),
            not_queued_log: LogThrottle::new("not_queued"),
            floors: parking_lot::Mutex::new(std::collections::HashMap::new()),
            floors_active: AtomicUsize::new(0),
            sequencer: crate::history::Sequencer::default(),
            positions: crate::redis::gap::Positions::default(),
            history: OnceLock::new(),
        }
    }

    /// Redis mode: lets the bus path read from `histories` (with projects' settings from
    /// `store`) the events this instance's subscription missed (once).
    pub fn attach_history(
        &self,
        histories: Arc<crate::history::Histories>,
        store: Arc<dyn crate::store::Store>,
    ) {
        let _ = self.history.set(HistorySource { histories, store });
    }

    /// Attaches the socketioxide side (once).
    pub fn attach_sio(&self, sio: impl SioRooms) {
        let _ = self.sio.set(Box::new(sio));
    }

    /// Attaches the bus to other instances (once, Redis mode).
    pub fn attach_bus(&self, bus: Arc<dyn Bus>) {
        let _ = self.bus.set(bus);
    }

    /// The direct transport's sockets and rooms.
    pub fn direct(&self) -> &Arc<DirectRooms> {
        &self.direct
    }

    /// The SSE transport's streams and rooms.
    pub fn sse(&self) -> &Arc<crate::sse::SseRooms> {
        &self.sse
    }

    /// Per-room ordering of publishes, bus events and recoveries on this instance
    /// ([`crate::history::Sequencer`]).
    pub fn sequencer(&self) -> &crate::history::Sequencer {
        &self.sequencer
    }

    /// A socketioxide socket was admitted.
    pub fn sio_socket_joined(&self) {
        self.sio_sockets.fetch_add(1, Ordering::Relaxed);
    }

    /// An admitted socketioxide socket went away.
    pub fn sio_socket_left(&self) {
        let _ = self
            .sio_sockets
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Emits `event` with the encoded `data` to every socket in `room` except `except`: this
    /// instance's sockets first, then the other instances. An `Unavailable` error means only
    /// this instance's sockets got it.
    pub async fn emit(
        &self,
        room: RoomName,
        event: &'static str,
        data: &RawValue,
        except: Option<Sid>,
    ) -> Result<EmitReport, FanoutError> {
        let report = self.emit_local(&room, event, data, except).await?;
        self.emit_remote(&room, data, None).await?;
        Ok(report)
    }

    /// A socket joined `room` at `offset` of `epoch` (its listen's answer, under the room's
    /// sequencer lock). Redis mode: the room's position when it had none
    /// ([`crate::redis::gap::Positions::joined`]), so a catch-up after a subscription gap
    /// replays from there instead of telling the room it may have missed events.
    pub fn joined_at(&self, room: &RoomName, epoch: &herald_protocol::Epoch, offset: u64) {
        if self.bus.get().is_some() {
            self.positions.joined(room, epoch, offset);
        }
    }

    /// Redis mode: `sid` just got `room`'s events up to `offset` from history; the events of
    /// the room other instances send on the bus up to that offset are not delivered to it
    /// again. (Another instance appends an event before this one read the history, and its
    /// bus message may arrive after.) Forgotten once a later event came, or after
    /// [`FLOOR_TTL`]. Nothing to do without a bus: local publishes are ordered by the
    /// room's sequencer.
    pub fn hold_floor(&self, room: &RoomName, sid: Sid, offset: u64) {
        if self.bus.get().is_none() {
            return;
        }
        let mut floors = self.floors.lock();
        let now = std::time::Instant::now();
        floors.retain(|_, f| {
            f.retain(|x| now.duration_since(x.2) < FLOOR_TTL);
            !f.is_empty()
        });
        floors
            .entry(room.clone())
            .or_default()
            .push((sid, offset, now));
        self.floors_active.store(floors.len(), Ordering::Relaxed);
    }

    /// The sockets of `room` that already have the bus event `data` from history.
    fn skip_floors(&self, room: &RoomName, data: &RawValue) -> Vec<Sid> {
        if self.floors_active.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut floors = self.floors.lock();
        let Some(room_floors) = floors.get_mut(room) else {
            return Vec::new();
        };
        #[derive(Deserialize)]
        struct Offset {
            offset: Option<u64>,
        }
        let Some(offset) = serde_json::from_str::<Offset>(data.get())
            .ok()
            .and_then(|o| o.offset)
        else {
            return Vec::new();
        };
        let now = std::time::Instant::now();
        let skip = room_floors
            .iter()
            .filter(|(_, floor, _)| offset <= *floor)
            .map(|(sid, _, _)| *sid)
            .collect();
        room_floors.retain(|(_, floor, at)| offset < *floor && now.duration_since(*at) < FLOOR_TTL);
        if room_floors.is_empty() {
            floors.remove(room);
        }
        self.floors_active.store(floors.len(), Ordering::Relaxed);
        skip
    }

    /// Sends an `event` with the encoded `data` to the other instances' sockets in `room`
    /// (nothing outside Redis mode), with its history position `at` when it has one. An
    /// `Unavailable` error means some may not have it; `Unconfirmed`, that an instance whose
    /// subscription is down may not have it yet.
    pub async fn emit_remote(
        &self,
        room: &RoomName,
        data: &RawValue,
        at: Option<&crate::history::Position>,
    ) -> Result<(), FanoutError> {
        if let Some(bus) = self.bus.get() {
            let message = BusMessage {
                room: room.as_str(),
                kind: BusKind::Event,
                data: Some(data),
                offset: at.map(|p| p.offset.get()),
                epoch: at.map(|p| p.epoch.as_str()),
            };
            let encoded =
                serde_json::to_vec(&message).map_err(|e| FanoutError::Encode(e.to_string()))?;
            bus.publish(encoded).await?;
        }
        Ok(())
    }

    /// Sends the `presence` event `data` to the sockets of `room` on every instance, except
    /// `except` (the socket whose join it announces). Presence events carry no history
    /// position: the room's presence version orders them ([`crate::presence`]).
    pub async fn emit_presence(
        &self,
        room: &RoomName,
        data: &RawValue,
        except: Option<Sid>,
    ) -> Result<EmitReport, FanoutError> {
        let report = self
            .emit_local(
                room,
                herald_protocol::messages::event_names::PRESENCE,
                data,
                except,
            )
            .await?;
        if let Some(bus) = self.bus.get() {
            let message = BusMessage {
                room: room.as_str(),
                kind: BusKind::Presence,
                data: Some(data),
                offset: None,
                epoch: None,
            };
            let encoded =
                serde_json::to_vec(&message).map_err(|e| FanoutError::Encode(e.to_string()))?;
            bus.publish(encoded).await?;
        }
        Ok(report)
    }

    /// Emits to this instance's sockets in `room` only; counts the deliveries and closes the
    /// direct sockets whose queue was full (slow consumers).
    pub async fn emit_local(
        &self,
        room: &RoomName,
        event: &'static str,
        data: &RawValue,
        except: Option<Sid>,
    ) -> Result<EmitReport, FanoutError> {
        self.emit_local_skipping(room, event, data, except.as_slice())
            .await
    }

    async fn emit_local_skipping(
        &self,
        room: &RoomName,
        event: &'static str,
        data: &RawValue,
        skip: &[Sid],
    ) -> Result<EmitReport, FanoutError> {
        // A channel event with a position carries its recovery marker ([`herald_protocol::csr`]):
        // still one frame for the whole room.
        let position = (event == herald_protocol::messages::event_names::EVENT)
            .then(|| serde_json::from_str::<Position<'_>>(data.get()).ok())
            .flatten();
        let positioned = match &position {
            Some(Position {
                channel,
                offset: Some(offset),
                epoch: Some(epoch),
            }) => herald_protocol::ChannelName::parse(channel)
                .ok()
                .map(|channel| {
                    let marker = herald_protocol::csr::marker(
                        herald_protocol::ChannelOffset(*offset),
                        &channel,
                    );
                    (channel, *offset, epoch.as_ref(), marker)
                }),
            _ => None,
        };
        let (frame, tag) = match &positioned {
            Some((_, offset, epoch, marker)) => (
                frame::text(&packet::event_marked(event, data.get(), marker)),
                Some(crate::direct::EventTag {
                    offset: *offset,
                    epoch,
                }),
            ),
            None => (frame::text(&packet::event(event, data.get())), None),
        };
        let mut report = self.direct.emit(room, &frame, skip, tag).await;
        if !self.sse.is_empty() {
            let tag = positioned.as_ref().map(|(c, o, e, _)| (c, *e, *o));
            report += self.sse.emit(room, event, data.get(), skip, tag).await;
        }
        if self.sio_sockets.load(Ordering::Relaxed) > 0
            && let Some(sio) = self.sio.get()
        {
            let at = positioned
                .as_ref()
                .map(|(_, offset, epoch, marker)| Marked {
                    offset: *offset,
                    epoch,
                    marker,
                });
            report += sio.emit_local(room, event, data, skip, at).await?;
        }
        metrics::counter!(m::DELIVERIES, "outcome" => "queued").increment(report.queued as u64);
        if report.not_queued > 0 {
            metrics::counter!(m::DELIVERIES, "outcome" => "not_queued")
                .increment(report.not_queued as u64);
            if let Some(pass) = self.not_queued_log.check(room) {
                tracing::warn!(
                    not_queued = report.not_queued,
                    room = %room,
                    suppressed = pass.suppressed,
                    other_rooms = pass.overflow,
                    "event not queued for some sockets (slow consumers); at most one line per room every 10 s, `suppressed` counts the others"
                );
            }
        }
        Ok(report)
    }

    /// Delivers this instance's own publish of the event `data`, at `at` in its channel's
    /// history, to this instance's sockets in `room`; the caller holds the room's sequencer
    /// lock. In Redis mode the room's position advances ([`crate::redis::gap`]): an event of
    /// another instance appended before this one but not delivered here yet is read from
    /// history and delivered first, so the room's sockets get its events in offset order.
    pub async fn emit_local_at(
        &self,
        room: &RoomName,
        data: &RawValue,
        at: &crate::history::Position,
    ) -> Result<EmitReport, FanoutError> {
        if self.bus.get().is_none() {
            return self
                .emit_local(
                    room,
                    herald_protocol::messages::event_names::EVENT,
                    data,
                    None,
                )
                .await;
        }
        self.deliver_positioned(room, data, at.epoch.as_str(), at.offset.get())
            .await
    }

    async fn deliver_unpositioned(
        &self,
        room: &RoomName,
        data: &RawValue,
    ) -> Result<EmitReport, FanoutError> {
        let skip = self.skip_floors(room, data);
        self.emit_local_skipping(
            room,
            herald_protocol::messages::event_names::EVENT,
            data,
            &skip,
        )
        .await
    }

    /// Delivers the event `data` at `offset` of `epoch` to this instance's sockets in `room`
    /// unless they had it, after the events between the last one they had and it (read from
    /// history); the caller holds the room's sequencer lock.
    async fn deliver_positioned(
        &self,
        room: &RoomName,
        data: &RawValue,
        epoch: &str,
        offset: u64,
    ) -> Result<EmitReport, FanoutError> {
        use crate::redis::gap::Next;
        match self.positions.classify(room, epoch, offset) {
            Next::Deliver => {}
            Next::Duplicate => {
                metrics::counter!(m::BUS_DUPLICATES_SKIPPED).increment(1);
                return Ok(EmitReport::default());
            }
            Next::Gap {
                epoch: known,
                after,
            } => {
                tracing::debug!(room = %room, after, offset, "gap before a bus event; reading history");
                self.catch_up_room(room, Some((known, after))).await;
                if let Some((e, last)) = self.positions.get(room)
                    && e.as_str() == epoch
                    && last >= offset
                {
                    // History had it: delivered with the ones before it.
                    return Ok(EmitReport::default());
                }
            }
        }
        let skip = self.skip_floors(room, data);
        let report = self
            .emit_local_skipping(
                room,
                herald_protocol::messages::event_names::EVENT,
                data,
                &skip,
            )
            .await?;
        let members = report.queued + report.not_queued + skip.len() > 0;
        self.positions.delivered(room, epoch, offset, members);
        Ok(report)
    }

    /// Redis mode, after this instance's subscription came back (a re-subscription succeeded):
    /// every room with members here gets from history the events published since the last
    /// one delivered here, in order, or a `missed_events` notice where history cannot serve
    /// ([`crate::redis::gap`]). Rooms are caught up a few at a time, each under its
    /// sequencer lock.
    pub async fn catch_up(&self) {
        use futures_util::StreamExt;
        let mut rooms: std::collections::HashSet<RoomName> =
            self.direct.rooms().into_iter().collect();
        rooms.extend(self.sse.rooms());
        if self.sio_sockets.load(Ordering::Relaxed) > 0
            && let Some(sio) = self.sio.get()
        {
            rooms.extend(
                sio.local_rooms()
                    .await
                    .into_iter()
                    .filter_map(|r| RoomName::parse(&r).ok()),
            );
        }
        rooms.retain(|r| RoomName::parse_channel(r.as_str()).is_ok());
        self.positions.retain(|r| rooms.contains(r));
        let count = rooms.len();
        futures_util::stream::iter(rooms)
            .for_each_concurrent(CATCH_UP_CONCURRENCY, |room| async move {
                let _order = self.sequencer.lock(&room).await;
                let known = self.positions.get(&room);
                self.catch_up_room(&room, known).await;
            })
            .await;
        tracing::info!(
            rooms = count,
            "caught up after the bus subscription came back"
        );
    }

    /// Delivers `room`'s events after `known` (the last one delivered here; `None`: unknown)
    /// from history, or sends the room a `missed_events` notice; the caller holds the room's
    /// sequencer lock.
    async fn catch_up_room(&self, room: &RoomName, known: Option<(herald_protocol::Epoch, u64)>) {
        use herald_protocol::history::ChannelOffset;
        let Some(src) = self.history.get() else {
            return;
        };
        let Ok((project, channel)) = RoomName::parse_channel(room.as_str()) else {
            return;
        };
        let settings = src.histories.settings(src.store.as_ref(), &project).await;
        if !settings.enabled() {
            // Its publishes answered 503 while the bus could not confirm them.
            if known.is_some() {
                self.positions.forget(room);
                self.notify_missed(
                    room,
                    &channel,
                    MissedEventsReason::History(herald_protocol::RecoveryFailure::HistoryDisabled),
                )
                .await;
            }
            return;
        }
        let after = known.as_ref().map_or(0, |k| k.1);
        // Right after Redis came back a read may still fail (loading its data, a connection
        // being re-established): a few tries before the room is told it missed events.
        let mut tries = CATCH_UP_READ_RETRIES.iter();
        let slice = loop {
            match src
                .histories
                .backend
                .read(room, settings, ChannelOffset(after), settings.size as usize)
                .await
            {
                Ok(slice) => break slice,
                Err(e) => {
                    metrics::counter!(m::HISTORY_ERRORS).increment(1);
                    if let Some(pause) = tries.next() {
                        tracing::debug!(error = %e, room = %room, "history read failed; trying again");
                        tokio::time::sleep(*pause).await;
                        continue;
                    }
                    tracing::warn!(error = %e, room = %room, "history read failed; the room is told it missed events");
                    self.notify_missed(room, &channel, MissedEventsReason::Unavailable)
                        .await;
                    return;
                }
            }
        };
        let (epoch, top) = (slice.epoch.clone(), slice.top.get());
        let Some((known_epoch, known_offset)) = known else {
            // Nothing delivered here since the members joined: which events they missed
            // cannot be told apart from older ones.
            if let Some(epoch) = epoch
                && top > 0
            {
                self.positions.set(room, epoch, top);
                self.notify_missed(room, &channel, MissedEventsReason::UnknownPosition)
                    .await;
            }
            return;
        };
        let since = herald_protocol::StreamPosition {
            offset: ChannelOffset(known_offset),
            epoch: known_epoch,
        };
        let lost = match crate::history::decide(&since, slice) {
            crate::history::Decision::Recovered(events) => {
                let n = events.len();
                let mut lost = None;
                for e in events {
                    let offset = e.offset;
                    let encoded = RawValue::from_string(e.payload).and_then(|p| {
                        serde_json::value::to_raw_value(&herald_protocol::ChannelEvent {
                            id: Some(e.id),
                            channel_name: channel.clone(),
                            payload: &*p,
                            offset: Some(offset),
                            epoch: epoch.clone(),
                        })
                    });
                    let Ok(raw) = encoded else {
                        tracing::error!(offset = %offset, room = %room, "history event not encodable");
                        lost = Some(herald_protocol::RecoveryFailure::HistoryExpired);
                        break;
                    };
                    let skip = self.skip_floors(room, &raw);
                    if let Err(e) = self
                        .emit_local_skipping(
                            room,
                            herald_protocol::messages::event_names::EVENT,
                            &raw,
                            &skip,
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "caught-up event not delivered locally");
                    }
                    if let Some(epoch) = &epoch {
                        self.positions.set(room, epoch.clone(), offset.get());
                    }
                }
                if n > 0 && lost.is_none() {
                    metrics::counter!(m::BUS_GAPS, "outcome" => "recovered").increment(1);
                    tracing::info!(room = %room, events = n, "missed events delivered from history");
                }
                lost
            }
            crate::history::Decision::Lost(reason) => Some(reason),
        };
        if let Some(reason) = lost {
            match epoch {
                Some(epoch) => self.positions.set(room, epoch, top),
                None => self.positions.forget(room),
            }
            self.notify_missed(room, &channel, MissedEventsReason::History(reason))
                .await;
        }
    }

    /// Sends `room`'s sockets here a `missed_events` notice.
    async fn notify_missed(
        &self,
        room: &RoomName,
        channel: &herald_protocol::ChannelName,
        reason: MissedEventsReason,
    ) {
        metrics::counter!(m::BUS_GAPS, "outcome" => "notified").increment(1);
        tracing::warn!(room = %room, reason = reason.as_str(), "events missed and not recoverable here; the room's sockets are told");
        let message = herald_protocol::history::missed_events(channel, reason);
        let Ok(raw) = serde_json::value::to_raw_value(&message) else {
            return;
        };
        if let Err(e) = self
            .emit_local_skipping(
                room,
                herald_protocol::messages::event_names::SYSTEM_MESSAGE,
                &raw,
                &[],
            )
            .await
        {
            tracing::warn!(error = %e, "missed_events notice not delivered");
        }
    }

    /// Disconnects every socket in `room`, on every instance.
    pub async fn disconnect(&self, room: RoomName) -> Result<(), FanoutError> {
        self.disconnect_local(&room).await;
        if let Some(bus) = self.bus.get() {
            let message = BusMessage {
                room: room.as_str(),
                kind: BusKind::Disconnect,
                data: None,
                offset: None,
                epoch: None,
            };
            let encoded =
                serde_json::to_vec(&message).map_err(|e| FanoutError::Encode(e.to_string()))?;
            bus.publish(encoded).await?;
        }
        Ok(())
    }

    /// Disconnects this instance's sockets in `room`.
    pub async fn disconnect_local(&self, room: &RoomName) {
        self.direct.disconnect(room);
        self.sse.disconnect(room);
        if let Some(sio) = self.sio.get() {
            sio.disconnect_local(room).await;
        }
    }

    /// Applies the messages of one batch another instance sent on the bus, in order.
    pub async fn on_bus_messages(&self, messages: &[&[u8]]) {
        for m in messages {
            self.on_bus_message(m).await;
        }
    }

    async fn on_bus_message(&self, bytes: &[u8]) {
        let message: BusMessage<'_> = match serde_json::from_slice(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable bus message ignored");
                return;
            }
        };
        let room = match RoomName::parse(message.room) {
            Ok(room) => room,
            Err(e) => {
                tracing::warn!(error = %e, "bus message for an invalid room ignored");
                return;
            }
        };
        match (message.kind, message.data) {
            (BusKind::Event, Some(data)) => {
                let _order = self.sequencer.lock(&room).await;
                let result = match (message.epoch, message.offset) {
                    (Some(epoch), Some(offset)) => {
                        self.deliver_positioned(&room, data, epoch, offset).await
                    }
                    _ => self.deliver_unpositioned(&room, data).await,
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "bus event not delivered locally");
                }
            }
            (BusKind::Presence, Some(data)) => {
                let presence = herald_protocol::messages::event_names::PRESENCE;
                if let Err(e) = self.emit_local(&room, presence, data, None).await {
                    tracing::warn!(error = %e, "bus presence event not delivered locally");
                }
            }
            (BusKind::Event | BusKind::Presence, None) => {
                tracing::warn!("bus event without data ignored")
            }
            (BusKind::Disconnect, _) => self.disconnect_local(&room).await,
        }
    }

    /// Closes every local socket (shutdown).
    pub async fn close(&self) {
        self.direct.close_all();
        self.sse.close_all();
        if let Some(sio) = self.sio.get() {
            sio.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_malformed_ones_are_refused() {
        // A payload may hold raw newlines: the framing is by length, not by line.
        let a = b"{\"r\":\"p:c\",\"k\":\"e\",\"d\":{\"x\":\n1}}".to_vec();
        let b = br#"{"r":"p","k":"x"}"#.to_vec();
        let batch = encode_batch("instance-1", 7, &[a.clone(), b.clone()]);
        let decoded = decode_batch(&batch).expect("valid");
        assert_eq!(decoded.origin, "instance-1");
        let BatchBody::Messages { seq, messages } = decoded.body else {
            panic!("messages expected");
        };
        assert_eq!(seq, Some(7));
        assert_eq!(messages, vec![&a[..], &b[..]]);
        let message: BusMessage<'_> = serde_json::from_slice(messages[0]).expect("json");
        assert_eq!(message.kind, BusKind::Event);
        assert!(decode_batch(&batch[..batch.len() - 1]).is_none());
        assert!(decode_batch(b"no newline").is_none());
        assert!(decode_batch(b"x notanumber\n").is_none());
        assert!(decode_batch(b"x 1\n\xff\xff\xff\xff").is_none());
        // Batches of senders that do not number them.
        assert_eq!(
            decode_batch(b"x\n"),
            Some(Batch {
                origin: "x",
                body: BatchBody::Messages {
                    seq: None,
                    messages: vec![]
                }
            })
        );
        assert_eq!(
            decode_batch(&encode_leave("instance-1")),
            Some(Batch {
                origin: "instance-1",
                body: BatchBody::Leave
            })
        );
    }

    /// Redis mode registers the default namespace only once its adapter subscribed: until
    /// then fan-out and the revocation walk (reconciler, notices) see no socketioxide socket
    /// instead of panicking ("default namespace not found").
    #[tokio::test]
    async fn no_namespace_yet_means_no_socketioxide_socket() {
        use crate::revocation::{LocalSockets, RevocationReason};
        let (_svc, io) = SocketIo::new_svc();
        assert!(default_namespace(&io).is_none());
        let room = RoomName::parse("p:c").expect("valid room");
        let data = RawValue::from_string("1".to_owned()).expect("json");
        let report = io
            .emit_local(&room, "event", &data, &[], None)
            .await
            .expect("emit");
        assert_eq!(report, EmitReport::default());
        io.disconnect_local(&room).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let local =
            crate::gateway::GatewaySockets::new(io, &crate::gateway::test_gateway(dir.path()));
        assert!(local.keys_in_use().is_empty());
        let key = herald_protocol::ApiKeyId::parse("00000000000000a1").expect("valid");
        assert_eq!(
            local
                .revoke_key(&key, RevocationReason::NoLongerValid)
                .await,
            0
        );
    }
}
