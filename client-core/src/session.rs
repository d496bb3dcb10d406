//! [`Session`]: one client's protocol state, fed with inputs and drained of outputs.
//!
//! Phases: `Idle` → (connect) → `Handshake` → `Live` ⇄ (lost) `Waiting` → `Handshake` … →
//! `Closed`. A failed first attempt goes back to `Idle` (reconnection starts only once a
//! connection was made); a refused handshake or exhausted attempts end in `Closed`.
//!
//! Requests (`listen`, `remove`) live in one table from the call to their completion, whatever
//! happens meanwhile: waiting for a token, waiting for a connection, sent and waiting for the
//! acknowledgement (sent again under a new ack id when it does not come: socketioxide can
//! answer the handshake before the server's handlers are registered and drop a request sent
//! right away; `listen` and `remove` are idempotent), and moved to the next connection when
//! one is lost. Each ends in exactly one [`Output::Complete`], at the latest at its deadline.
//!
//! Positions and recovery: the session remembers, per channel, the last `{epoch, offset}` it
//! knows (from a listen ack's position, from each event, from a recovery ack) and re-listens
//! after every reconnection with `since` set to it, by itself. Each re-listen's outcome is one
//! [`Output::Recovery`] ([`ChannelRecovery`]), before [`State::Connected`]:
//!
//! * `since` sent: the server's answer (`recovered`, or not with `history_expired`,
//!   `epoch_changed`, `history_disabled`); the missed events came before it as events;
//! * no position known (history off, or no position answered): a plain re-listen, reported
//!   `recovered: false` with `history_disabled` when the answer has no position either (the
//!   project keeps no history), else `epoch_changed` (there is history, but none the session
//!   holds a position in).
//!
//! A gap seen live, an event whose offset is not the last one + 1 in the same epoch, or the
//! first event of a new epoch with an offset above 1, is reported as `recovered: false` with
//! [`RecoveryReason::OffsetGap`] just before the event (which is still delivered). An offset
//! at or below the last one is delivered and does not move the position back (in Redis mode a
//! plain listen's answered offset may be ahead of events still on their way from another
//! instance). While a channel's (re-)listen is unanswered no gap is reported: its answer says
//! what happened.
//!
//! Presence: each presence channel's members ([`Session::members`]) come from its listen
//! ack's snapshot ([`Output::PresenceSynced`]) and its `presence` events
//! ([`Output::Presence`]), by the version rule of [`crate::presence`]: stale events are
//! ignored, events before the ack are buffered, a gap is applied and then re-synced with a
//! `presence` query (its answer is one more `PresenceSynced`). After a reconnection every
//! presence channel is re-synced by its re-listen's ack.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use herald_protocol::codec::{self, ConnectError, DISCONNECT, Decoder, Incoming, Open};
use herald_protocol::messages::event_names::{LISTEN, PRESENCE, REMOVE};
use herald_protocol::presence::{Member, PresenceEvent, PresenceSnapshot};
use herald_protocol::{
    Ack, ChannelEvent, ChannelName, ErrorCode, HandshakeAuth, ListenAnswer, ListenRequest,
    RecoveryFailure, RemoveRequest, StreamPosition, SystemMessage, SystemMessageCode,
};

use crate::backoff::Backoff;
use crate::error::SessionError;
use crate::presence::{Applied, PresenceChange, Query, Roster, Rosters};
use crate::time::Instant;

/// First wait for an acknowledgement before a request is sent again; it doubles up to
/// [`MAX_RESEND`].
const FIRST_RESEND: Duration = Duration::from_secs(1);
const MAX_RESEND: Duration = Duration::from_secs(4);

/// Engine.IO's defaults, in case a server answers CONNECT before sending its timings.
const DEFAULT_OPEN: Open = Open {
    ping_interval: Duration::from_millis(25_000),
    ping_timeout: Duration::from_millis(20_000),
};

/// What a session needs to know; the URL and the token provider itself stay with the driver.
#[derive(Debug, Clone)]
pub struct Config {
    /// The handshake's `auth`.
    pub auth: HandshakeAuth,
    /// Whether the driver can fetch tokens ([`Output::FetchToken`]): private channels listened
    /// to without a token, and every private channel re-listened after a reconnection.
    pub has_token_provider: bool,
    /// Delays between reconnection attempts.
    pub backoff: Backoff,
    /// Consecutive failed reconnection attempts before giving up (`None`: never).
    pub max_reconnect_attempts: Option<u32>,
    /// Bound of one connection attempt, from [`Output::OpenTransport`] to the namespace's
    /// answer.
    pub connect_timeout: Duration,
    /// Bound of a request, from the call to its completion (token, connection and
    /// acknowledgement included); also bounds each re-listen after a reconnection.
    pub request_timeout: Duration,
    /// Seed of the backoff jitter (the driver passes a random number; tests a fixed one).
    pub seed: u64,
}

/// Names one `connect`, `listen` or `remove` call; its [`Output::Complete`] carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

/// Names one token fetch; the driver answers it with [`Session::token_ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FetchId(u64);

/// Names one transport (one WebSocket); news of an older one is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The number, for drivers that tag callbacks with it.
    pub fn get(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from [`get`](Self::get).
    pub fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
}

/// How a transport ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportEnd<D> {
    /// The server closed it (a WebSocket close frame, or the stream ended).
    Closed {
        /// The close code, if any (4008: slow consumer).
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// It could not be opened, or it broke.
    Failed {
        /// The driver's description.
        error: D,
        /// `false` when trying again cannot help (e.g. the server answered the upgrade with
        /// a refusal that will not change by itself).
        retryable: bool,
    },
}

/// The connection's state, as the application sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum State<D> {
    /// The first connection attempt is under way.
    Connecting,
    /// Connected, and every channel of the previous connection re-listened (or reported with
    /// [`Output::RelistenFailed`]).
    Connected,
    /// The connection was lost, or an attempt to restore it failed; attempt `attempt` starts
    /// after `delay`.
    Reconnecting {
        /// 1 for the first attempt after a loss.
        attempt: u32,
        /// How long until it.
        delay: Duration,
        /// Why the connection (or the previous attempt) failed.
        cause: SessionError<D>,
    },
    /// Closed: on request (`cause` is `None`), after a refused handshake, after the last
    /// allowed attempt, or when the first attempt failed (then [`Session::connect`] may be
    /// called again).
    Closed {
        /// Why, unless closed on request.
        cause: Option<SessionError<D>>,
    },
}

/// Why a channel's events were not all delivered ([`ChannelRecovery::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryReason {
    /// The server no longer retains some of the missed events (`history_expired`).
    HistoryExpired,
    /// The channel's history was lost and started again (`epoch_changed`).
    EpochChanged,
    /// The project keeps no history (`history_disabled`).
    HistoryDisabled,
    /// An event arrived whose offset is not the one after the last (`offset_gap`): events in
    /// between were not delivered.
    OffsetGap,
}

impl RecoveryReason {
    /// The wire-style name, the same in every SDK: `history_expired`, `epoch_changed`,
    /// `history_disabled`, `offset_gap`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryReason::HistoryExpired => "history_expired",
            RecoveryReason::EpochChanged => "epoch_changed",
            RecoveryReason::HistoryDisabled => "history_disabled",
            RecoveryReason::OffsetGap => "offset_gap",
        }
    }
}

impl From<RecoveryFailure> for RecoveryReason {
    fn from(f: RecoveryFailure) -> Self {
        match f {
            RecoveryFailure::HistoryExpired => RecoveryReason::HistoryExpired,
            RecoveryFailure::EpochChanged => RecoveryReason::EpochChanged,
            RecoveryFailure::HistoryDisabled => RecoveryReason::HistoryDisabled,
        }
    }
}

/// Whether a channel's stream of events is whole: after a reconnection (each re-listen), or
/// when a gap was seen live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecovery {
    /// The channel.
    pub channel: ChannelName,
    /// `true`: every event published while the connection was down was delivered (before
    /// any later one). `false`: some were not; re-sync the channel's state another way.
    pub recovered: bool,
    /// Why not, when not.
    pub reason: Option<RecoveryReason>,
}

/// What the driver must do, or hand to the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<D> {
    /// Open a new transport (dropping any previous one) and report its frames and its end
    /// with this id.
    OpenTransport(ConnId),
    /// Send this text frame on the current transport.
    Send(String),
    /// Close the current transport (any polite goodbye has been sent as [`Output::Send`]).
    CloseTransport,
    /// An event of a channel listened to.
    Event(ChannelEvent),
    /// A notice from the server.
    System(SystemMessage),
    /// A channel's recovery outcome: after each re-listen of a reconnection, and when a gap
    /// in its offsets was seen (see the module docs).
    Recovery(ChannelRecovery),
    /// A member joined or left a presence channel ([`Session::members`] has it already).
    Presence(PresenceChange),
    /// A presence channel's whole member list, from a snapshot: its listen ack, its re-listen
    /// after a reconnection, or the re-sync after a gap in its versions. Transitions not
    /// reported as [`Output::Presence`] (during a disconnection, or lost in a gap) are in it.
    PresenceSynced {
        /// The presence channel.
        channel: ChannelName,
        /// Its members, ordered by user id.
        members: Vec<Member>,
    },
    /// The state changed.
    State(State<D>),
    /// After a reconnection, `channel` could not be listened to again; it has left the set
    /// of channels to re-listen.
    RelistenFailed {
        /// The channel.
        channel: ChannelName,
        /// Why.
        error: SessionError<D>,
    },
    /// Ask the token provider for a token for `channel`, then call [`Session::token_ready`].
    FetchToken {
        /// The fetch to answer.
        fetch: FetchId,
        /// The channel.
        channel: ChannelName,
    },
    /// A request ended.
    Complete {
        /// The request.
        request: RequestId,
        /// Its result.
        result: Result<(), SessionError<D>>,
    },
}

/// The client's protocol state; `D` is the driver's error type (see [`SessionError`]).
pub struct Session<D> {
    config: Config,
    phase: Phase,
    /// Channels to (re-)listen to, with the token a `listen` was given (used again when
    /// there is no token provider), in name order.
    channels: BTreeMap<ChannelName, Option<String>>,
    /// The last position known per channel (see the module docs).
    positions: HashMap<ChannelName, StreamPosition>,
    /// The members of each presence channel listened to (or being listened to).
    presence: Rosters,
    requests: BTreeMap<RequestId, UserRequest>,
    /// Requests waiting for a connection, in call order.
    deferred: VecDeque<RequestId>,
    connect_waiters: Vec<RequestId>,
    fetches: HashMap<FetchId, Fetch>,
    outputs: VecDeque<Output<D>>,
    next_id: u64,
    /// Consecutive attempts since the last connection.
    attempt: u32,
    ever_connected: bool,
    rng: u64,
}

enum Phase {
    Idle,
    Handshake(Handshake),
    Live(Live),
    Waiting { until: Instant },
    Closed,
}

struct Handshake {
    conn: ConnId,
    decoder: Decoder,
    deadline: Instant,
    open: Option<Open>,
}

struct Live {
    conn: ConnId,
    decoder: Decoder,
    next_ack: i64,
    acks: HashMap<i64, Sent>,
    /// Re-listens not answered yet; `Connected` is announced when it reaches 0.
    relisten_left: usize,
    last_seen: Instant,
    silence_limit: Duration,
}

/// A request on the wire, and how to send it again.
struct Sent {
    purpose: Purpose,
    event: &'static str,
    body: serde_json::Value,
    resend_at: Instant,
    resend_interval: Duration,
}

enum Purpose {
    User(RequestId),
    Relisten {
        channel: ChannelName,
        deadline: Instant,
        /// Whether it carries `since`.
        since: bool,
    },
    /// A `remove` nobody waits for (undoing a re-listen of a channel removed meanwhile).
    Quiet,
    /// A `presence` query re-syncing a presence channel after a gap in its versions.
    Presence {
        channel: ChannelName,
        deadline: Instant,
    },
}

struct UserRequest {
    op: Op,
    deadline: Instant,
}

enum Op {
    Listen {
        channel: ChannelName,
        token: Option<String>,
    },
    Remove {
        channel: ChannelName,
    },
}

impl Op {
    fn describe(&self) -> String {
        match self {
            Op::Listen { channel, .. } => format!("listen {channel}"),
            Op::Remove { channel } => format!("remove {channel}"),
        }
    }
}

enum Fetch {
    ForRequest(RequestId),
    ForRelisten {
        conn: ConnId,
        channel: ChannelName,
        deadline: Instant,
    },
}

impl<D: Clone> Session<D> {
    /// A session that has not connected yet.
    pub fn new(config: Config) -> Self {
        Self {
            rng: config.seed | 1,
            config,
            phase: Phase::Idle,
            channels: BTreeMap::new(),
            positions: HashMap::new(),
            presence: Rosters::default(),
            requests: BTreeMap::new(),
            deferred: VecDeque::new(),
            connect_waiters: Vec::new(),
            fetches: HashMap::new(),
            outputs: VecDeque::new(),
            next_id: 0,
            attempt: 0,
            ever_connected: false,
        }
    }

    // --- reading ----------------------------------------------------------------------

    /// The next output, if any. Drain it after every input.
    pub fn poll_output(&mut self) -> Option<Output<D>> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next (`None`: nothing is timed).
    pub fn next_timeout(&self) -> Option<Instant> {
        let requests = self.requests.values().map(|r| r.deadline);
        let fetches = self.fetches.values().filter_map(|f| match f {
            Fetch::ForRelisten { deadline, .. } => Some(*deadline),
            Fetch::ForRequest(_) => None,
        });
        let phase = match &self.phase {
            Phase::Handshake(h) => Some(h.deadline),
            Phase::Waiting { until } => Some(*until),
            Phase::Live(live) => {
                let acks = live.acks.values().flat_map(|sent| match &sent.purpose {
                    Purpose::Quiet => [None, None],
                    Purpose::User(_) => [Some(sent.resend_at), None],
                    Purpose::Relisten { deadline, .. } | Purpose::Presence { deadline, .. } => {
                        [Some(sent.resend_at), Some(*deadline)]
                    }
                });
                acks.flatten()
                    .chain([live.last_seen + live.silence_limit])
                    .min()
            }
            Phase::Idle | Phase::Closed => None,
        };
        requests.chain(fetches).chain(phase).min()
    }

    /// The channels listened to (and re-listened after a reconnection), in name order.
    pub fn channels(&self) -> impl Iterator<Item = &ChannelName> {
        self.channels.keys()
    }

    /// The members of presence channel `channel`, ordered by user id: the last snapshot with
    /// the events applied since (empty when the channel is not listened to). While the
    /// connection is down it is the list as it was; the re-listen's snapshot replaces it.
    pub fn members(&self, channel: &ChannelName) -> Vec<Member> {
        self.presence
            .get(channel)
            .map(Roster::members)
            .unwrap_or_default()
    }

    /// Whether the session is closed for good.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    // --- the application's commands ---------------------------------------------------

    /// Connects: one attempt; reconnection starts once connected. Completes when the server
    /// accepted the handshake, or with the first attempt's error.
    pub fn connect(&mut self, now: Instant) -> RequestId {
        let id = self.next_request();
        match self.phase {
            Phase::Closed => self.complete(id, Err(SessionError::Closed)),
            Phase::Live(_) => self.complete(id, Ok(())),
            Phase::Handshake(_) | Phase::Waiting { .. } => self.connect_waiters.push(id),
            Phase::Idle => {
                self.connect_waiters.push(id);
                self.attempt = 0;
                self.push(Output::State(State::Connecting));
                self.start_attempt(now);
            }
        }
        id
    }

    /// Listens to `channel`. Without `token`, a private channel's token is fetched first
    /// ([`Output::FetchToken`]), or the request fails with
    /// [`SessionError::NoTokenProvider`] when there is no provider. While disconnected the
    /// request waits for the connection, up to its deadline.
    pub fn listen(
        &mut self,
        now: Instant,
        channel: ChannelName,
        token: Option<String>,
    ) -> RequestId {
        let id = self.next_request();
        if self.is_closed() {
            self.complete(id, Err(SessionError::Closed));
            return id;
        }
        let needs_token = token.is_none() && channel.needs_token();
        if needs_token && !self.config.has_token_provider {
            self.complete(id, Err(SessionError::NoTokenProvider(channel)));
            return id;
        }
        let deadline = now + self.config.request_timeout;
        self.requests.insert(
            id,
            UserRequest {
                op: Op::Listen {
                    channel: channel.clone(),
                    token,
                },
                deadline,
            },
        );
        if needs_token {
            let fetch = self.next_fetch();
            self.fetches.insert(fetch, Fetch::ForRequest(id));
            self.push(Output::FetchToken { fetch, channel });
        } else {
            self.dispatch(now, id);
        }
        id
    }

    /// Stops listening to `channel`, now and after reconnections. Removing a channel not
    /// listened to succeeds; while disconnected it succeeds at once (the next connection
    /// starts without the channel).
    pub fn remove(&mut self, now: Instant, channel: ChannelName) -> RequestId {
        let id = self.next_request();
        if self.is_closed() {
            self.complete(id, Err(SessionError::Closed));
            return id;
        }
        self.channels.remove(&channel);
        self.positions.remove(&channel);
        self.presence.remove(&channel);
        if !matches!(self.phase, Phase::Live(_)) {
            self.complete(id, Ok(()));
            return id;
        }
        let deadline = now + self.config.request_timeout;
        self.requests.insert(
            id,
            UserRequest {
                op: Op::Remove { channel },
                deadline,
            },
        );
        self.dispatch(now, id);
        id
    }

    /// Closes for good, politely (Socket.IO disconnect, then the transport). Every waiting
    /// request fails with [`SessionError::Closed`]. Closing twice is harmless.
    pub fn close(&mut self, _now: Instant) {
        if !self.is_closed() {
            self.finish(None);
        }
    }

    // --- the driver's news ------------------------------------------------------------

    /// A text frame arrived on transport `conn`.
    pub fn transport_frame(&mut self, now: Instant, conn: ConnId, text: &str) {
        match &mut self.phase {
            Phase::Handshake(h) if h.conn == conn => {
                let step = handshake_frame(h, &self.config.auth, text);
                match step {
                    Handshaking::Continue(frames) => {
                        for frame in frames {
                            self.push(Output::Send(frame));
                        }
                    }
                    Handshaking::Accepted(open) => self.went_live(now, open),
                    Handshaking::Failed { error, retryable } => {
                        self.push(Output::CloseTransport);
                        self.attempt_failed(now, error, retryable);
                    }
                }
            }
            Phase::Live(live) if live.conn == conn => {
                live.last_seen = now;
                // A packet this client cannot read is skipped; the connection is fine.
                if let Ok(incoming) = live.decoder.decode(text) {
                    self.live_packet(now, incoming);
                }
            }
            _ => {} // an abandoned transport
        }
    }

    /// Transport `conn` ended (or could not be opened).
    pub fn transport_closed(&mut self, now: Instant, conn: ConnId, end: TransportEnd<D>) {
        let (error, retryable) = match end {
            TransportEnd::Closed { code, reason } => {
                (SessionError::ClosedByServer { code, reason }, true)
            }
            TransportEnd::Failed { error, retryable } => (SessionError::Driver(error), retryable),
        };
        match &self.phase {
            Phase::Handshake(h) if h.conn == conn => self.attempt_failed(now, error, retryable),
            Phase::Live(live) if live.conn == conn => self.lost(now, error),
            _ => {}
        }
    }

    /// The token provider answered fetch `fetch`.
    pub fn token_ready(&mut self, now: Instant, fetch: FetchId, token: Result<String, D>) {
        match self.fetches.remove(&fetch) {
            None => {} // timed out, or its connection is gone
            Some(Fetch::ForRequest(id)) => match token {
                Err(error) => {
                    self.requests.remove(&id);
                    self.complete(id, Err(SessionError::Driver(error)));
                }
                Ok(token) => {
                    if let Some(UserRequest {
                        op: Op::Listen { token: slot, .. },
                        ..
                    }) = self.requests.get_mut(&id)
                    {
                        *slot = Some(token);
                        self.dispatch(now, id);
                    }
                }
            },
            Some(Fetch::ForRelisten { conn, channel, .. }) => {
                let Phase::Live(live) = &self.phase else {
                    return;
                };
                if live.conn != conn {
                    return;
                }
                if !self.channels.contains_key(&channel) {
                    return self.relisten_done(); // removed meanwhile
                }
                match token {
                    Ok(token) => self.send_relisten(now, channel, Some(token)),
                    Err(error) => {
                        self.relisten_failed(channel, SessionError::Driver(error));
                        self.relisten_done();
                    }
                }
            }
        }
    }

    /// Time passed: expires deadlines, sends overdue requests again, starts the next
    /// reconnection attempt. Call it when [`next_timeout`](Self::next_timeout) is reached
    /// (calling it early or often is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_requests(now);
        self.expire_relisten_fetches(now);
        match &self.phase {
            Phase::Handshake(h) if now >= h.deadline => {
                let error = SessionError::timeout_after(
                    self.config.connect_timeout,
                    "the Socket.IO handshake",
                );
                self.push(Output::CloseTransport);
                self.attempt_failed(now, error, true);
            }
            Phase::Waiting { until } if now >= *until => self.start_attempt(now),
            Phase::Live(_) => self.live_timers(now),
            _ => {}
        }
    }

    // --- connecting -------------------------------------------------------------------

    fn start_attempt(&mut self, now: Instant) {
        let conn = ConnId(self.next_id());
        self.phase = Phase::Handshake(Handshake {
            conn,
            decoder: Decoder::new(),
            deadline: now + self.config.connect_timeout,
            open: None,
        });
        self.push(Output::OpenTransport(conn));
    }

    fn attempt_failed(&mut self, now: Instant, error: SessionError<D>, retryable: bool) {
        self.phase = Phase::Idle;
        if !self.ever_connected {
            // connect() makes one attempt; reconnection starts once connected.
            for id in std::mem::take(&mut self.connect_waiters) {
                self.complete(id, Err(error.clone()));
            }
            let waiting: Vec<RequestId> = self.requests.keys().copied().collect();
            self.deferred.clear();
            self.fetches.clear();
            for id in waiting {
                self.requests.remove(&id);
                self.complete(id, Err(error.clone()));
            }
            self.push(Output::State(State::Closed { cause: Some(error) }));
        } else if !retryable || matches!(error, SessionError::Refused { .. }) {
            self.finish(Some(error));
        } else {
            self.schedule_retry(now, error);
        }
    }

    fn schedule_retry(&mut self, now: Instant, cause: SessionError<D>) {
        if self
            .config
            .max_reconnect_attempts
            .is_some_and(|max| self.attempt >= max)
        {
            return self.finish(Some(cause));
        }
        let random = self.random();
        let delay = self.config.backoff.delay(self.attempt, random);
        self.attempt = self.attempt.saturating_add(1);
        self.phase = Phase::Waiting { until: now + delay };
        self.push(Output::State(State::Reconnecting {
            attempt: self.attempt,
            delay,
            cause,
        }));
    }

    /// The namespace accepted the handshake: re-listen, then send what waited.
    fn went_live(&mut self, now: Instant, open: Open) {
        let Phase::Handshake(h) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let conn = h.conn;
        self.phase = Phase::Live(Live {
            conn,
            decoder: h.decoder,
            next_ack: 0,
            acks: HashMap::new(),
            relisten_left: 0,
            last_seen: now,
            silence_limit: open.silence_limit(),
        });
        self.attempt = 0;
        self.ever_connected = true;
        for id in std::mem::take(&mut self.connect_waiters) {
            self.complete(id, Ok(()));
        }
        let channels: Vec<(ChannelName, Option<String>)> = self
            .channels
            .iter()
            .map(|(c, t)| (c.clone(), t.clone()))
            .collect();
        let deadline = now + self.config.request_timeout;
        for (channel, token) in channels {
            if let Phase::Live(live) = &mut self.phase {
                live.relisten_left += 1;
            }
            if channel.needs_token() && self.config.has_token_provider {
                let fetch = self.next_fetch();
                self.fetches.insert(
                    fetch,
                    Fetch::ForRelisten {
                        conn,
                        channel: channel.clone(),
                        deadline,
                    },
                );
                self.push(Output::FetchToken { fetch, channel });
            } else {
                self.send_relisten(now, channel, token);
            }
        }
        if matches!(&self.phase, Phase::Live(live) if live.relisten_left == 0) {
            self.push(Output::State(State::Connected));
        }
        while let Some(id) = self.deferred.pop_front() {
            self.dispatch(now, id);
        }
    }

    /// The live connection broke: requests not answered wait for the next connection.
    fn lost(&mut self, now: Instant, error: SessionError<D>) {
        let Phase::Live(live) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        self.push(Output::CloseTransport);
        let mut unanswered: Vec<(i64, Sent)> = live.acks.into_iter().collect();
        // Unstable: the ack ids are unique, and the wasm then carries one sort algorithm, not two.
        unanswered.sort_unstable_by_key(|(ack, _)| std::cmp::Reverse(*ack));
        for (_, sent) in unanswered {
            let Purpose::User(id) = sent.purpose else {
                continue; // re-listens are redone from the channel set
            };
            match self.requests.get(&id).map(|r| &r.op) {
                Some(Op::Listen { .. }) => self.deferred.push_front(id),
                // The channel is out of the set already, and a new connection starts empty.
                Some(Op::Remove { .. }) => {
                    self.requests.remove(&id);
                    self.complete(id, Ok(()));
                }
                None => {}
            }
        }
        self.fetches
            .retain(|_, fetch| matches!(fetch, Fetch::ForRequest(_)));
        // Transitions during the disconnection are not replayed: every re-listen re-syncs.
        for roster in self.presence.values_mut() {
            roster.unsync();
        }
        self.attempt = 0;
        self.schedule_retry(now, error);
    }

    /// Closes for good: `cause` is `None` on request.
    fn finish(&mut self, cause: Option<SessionError<D>>) {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Live(_) => {
                self.push(Output::Send(DISCONNECT.to_owned()));
                self.push(Output::CloseTransport);
            }
            Phase::Handshake(_) => self.push(Output::CloseTransport),
            Phase::Idle | Phase::Waiting { .. } | Phase::Closed => {}
        }
        for id in std::mem::take(&mut self.connect_waiters) {
            self.complete(id, Err(cause.clone().unwrap_or(SessionError::Closed)));
        }
        let waiting: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in waiting {
            self.requests.remove(&id);
            self.complete(id, Err(SessionError::Closed));
        }
        self.deferred.clear();
        self.fetches.clear();
        self.presence.clear();
        self.push(Output::State(State::Closed { cause }));
    }

    // --- requests ---------------------------------------------------------------------

    /// Sends request `id` if live, else queues it for the next connection.
    fn dispatch(&mut self, now: Instant, id: RequestId) {
        let Phase::Live(_) = self.phase else {
            if !self.deferred.contains(&id) {
                self.deferred.push_back(id);
            }
            return;
        };
        let Some(request) = self.requests.get(&id) else {
            return; // timed out meanwhile
        };
        let (event, body) = match &request.op {
            Op::Listen { channel, token } => (
                LISTEN,
                serde_json::to_value(ListenRequest {
                    channel_name: channel.clone(),
                    auth_token: token.clone(),
                }),
            ),
            Op::Remove { channel } => (
                REMOVE,
                serde_json::to_value(RemoveRequest {
                    channel_name: channel.clone(),
                }),
            ),
        };
        match body {
            Ok(body) => self.send_request(now, Purpose::User(id), event, body),
            Err(e) => {
                self.requests.remove(&id);
                self.complete(
                    id,
                    Err(SessionError::Protocol(format!("encoding {event}: {e}"))),
                );
            }
        }
    }

    fn send_relisten(&mut self, now: Instant, channel: ChannelName, token: Option<String>) {
        let since = self.positions.get(&channel).cloned();
        let body = serde_json::to_value(ListenRequest {
            channel_name: channel.clone(),
            auth_token: token,
        })
        .map(|mut body| {
            if let (Some(since), Some(obj)) = (&since, body.as_object_mut()) {
                obj.insert(
                    "since".to_owned(),
                    serde_json::json!({ "offset": since.offset.get(), "epoch": since.epoch.as_str() }),
                );
            }
            body
        });
        let deadline = now + self.config.request_timeout;
        match body {
            Ok(body) => self.send_request(
                now,
                Purpose::Relisten {
                    channel,
                    deadline,
                    since: since.is_some(),
                },
                LISTEN,
                body,
            ),
            Err(e) => {
                self.relisten_failed(
                    channel,
                    SessionError::Protocol(format!("encoding listen: {e}")),
                );
                self.relisten_done();
            }
        }
    }

    fn send_quiet_remove(&mut self, now: Instant, channel: ChannelName) {
        if let Ok(body) = serde_json::to_value(RemoveRequest {
            channel_name: channel,
        }) {
            self.send_request(now, Purpose::Quiet, REMOVE, body);
        }
    }

    fn send_request(
        &mut self,
        now: Instant,
        purpose: Purpose,
        event: &'static str,
        body: serde_json::Value,
    ) {
        self.send_sent(Sent {
            purpose,
            event,
            body,
            resend_at: now + FIRST_RESEND,
            resend_interval: FIRST_RESEND,
        });
    }

    /// Puts `sent` on the wire under a fresh ack id.
    fn send_sent(&mut self, sent: Sent) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        let ack = live.next_ack;
        live.next_ack += 1;
        match codec::encode_event(sent.event, &sent.body, ack) {
            Ok(frame) => {
                live.acks.insert(ack, sent);
                self.push(Output::Send(frame));
            }
            Err(e) => {
                let error =
                    SessionError::Protocol(format!("encoding {}: {}", sent.event, e.message()));
                match sent.purpose {
                    Purpose::User(id) => {
                        self.requests.remove(&id);
                        self.complete(id, Err(error));
                    }
                    Purpose::Relisten { channel, .. } => {
                        self.relisten_failed(channel, error);
                        self.relisten_done();
                    }
                    Purpose::Presence { channel, .. } => self.presence_query_dropped(&channel),
                    Purpose::Quiet => {}
                }
            }
        }
    }

    fn live_packet(&mut self, now: Instant, incoming: Incoming) {
        match incoming {
            Incoming::Ping(pong) => self.push(Output::Send(pong)),
            Incoming::Close | Incoming::Disconnect => self.lost(
                now,
                SessionError::ClosedByServer {
                    code: None,
                    reason: String::new(),
                },
            ),
            Incoming::Event(event) => self.event(event),
            Incoming::System(message) => self.system_message(now, message),
            Incoming::Ack(ack, answer, listen, presence) => {
                self.ack(now, ack, answer, listen, presence)
            }
            Incoming::Presence(Some(event)) => self.presence_event(now, event),
            Incoming::Presence(None)
            | Incoming::Open(_)
            | Incoming::Connected
            | Incoming::ConnectError(_)
            | Incoming::Ignored => {}
        }
    }

    fn system_message(&mut self, now: Instant, message: SystemMessage) {
        let slow = message.code == SystemMessageCode::Error
            && error_code(&message) == Some(ErrorCode::SlowConsumer);
        if message.code == SystemMessageCode::RemovedFromChannel {
            for channel in removed_channels(&message) {
                self.channels.remove(&channel);
                self.positions.remove(&channel);
                self.presence.remove(&channel);
            }
        }
        let text = message.message.clone();
        self.push(Output::System(message));
        if slow {
            // The server is closing this socket (code 4008) and dropped what was queued:
            // reconnect now rather than wait for the close to arrive.
            self.lost(
                now,
                SessionError::Refused {
                    code: ErrorCode::SlowConsumer,
                    message: text,
                },
            );
        }
    }

    /// An event: moves the channel's position, reports a gap (module docs), hands it on.
    fn event(&mut self, event: ChannelEvent) {
        if let (Some(offset), Some(epoch)) = (event.offset, event.epoch.clone()) {
            let channel = &event.channel_name;
            let gap = match self.positions.get(channel) {
                Some(p) if p.epoch == epoch => offset.get() > p.offset.get().saturating_add(1),
                Some(_) => offset.get() > 1,
                None => false,
            };
            if gap && !self.listen_pending(channel) {
                self.push(Output::Recovery(ChannelRecovery {
                    channel: channel.clone(),
                    recovered: false,
                    reason: Some(RecoveryReason::OffsetGap),
                }));
            }
            self.advance_position(channel, StreamPosition { offset, epoch });
        }
        self.push(Output::Event(event));
    }

    /// Moves `channel`'s position to `to`, never back within one epoch.
    fn advance_position(&mut self, channel: &ChannelName, to: StreamPosition) {
        match self.positions.get_mut(channel) {
            Some(p) if p.epoch == to.epoch => p.offset = p.offset.max(to.offset),
            Some(p) => *p = to,
            None => {
                self.positions.insert(channel.clone(), to);
            }
        }
    }

    /// A listen ack's position (a recovery's or a plain listen's): taken unless the session
    /// is already at or past it in the same epoch (events sent after it may arrive first).
    fn ack_position(&mut self, channel: &ChannelName, listen: &Option<ListenAnswer>) {
        let to = match listen {
            Some(ListenAnswer::Position(p)) => Some(p.clone()),
            Some(ListenAnswer::Recovery(r)) => match (&r.epoch, r.offset) {
                (Some(epoch), Some(offset)) => Some(StreamPosition {
                    offset,
                    epoch: epoch.clone(),
                }),
                _ => None,
            },
            None => None,
        };
        match to {
            Some(to) => match self.positions.get(channel) {
                Some(p) if p.epoch == to.epoch && p.offset >= to.offset => {}
                _ => {
                    self.positions.insert(channel.clone(), to);
                }
            },
            // History off (or no position answered): an old position means nothing now.
            None => {
                if !matches!(listen, Some(ListenAnswer::Recovery(r)) if r.recovered) {
                    self.positions.remove(channel);
                }
            }
        }
    }

    /// Whether a `listen` of `channel` is on the wire, unanswered.
    fn listen_pending(&self, channel: &ChannelName) -> bool {
        let Phase::Live(live) = &self.phase else {
            return false;
        };
        live.acks.values().any(|sent| match &sent.purpose {
            Purpose::Relisten { channel: c, .. } => c == channel,
            Purpose::User(id) => matches!(
                self.requests.get(id).map(|r| &r.op),
                Some(Op::Listen { channel: c, .. }) if c == channel
            ),
            Purpose::Quiet | Purpose::Presence { .. } => false,
        })
    }

    fn ack(
        &mut self,
        now: Instant,
        ack: i64,
        answer: Ack,
        listen: Option<ListenAnswer>,
        presence: Option<PresenceSnapshot>,
    ) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        let Some(sent) = live.acks.remove(&ack) else {
            return; // a late answer to a request sent again
        };
        match sent.purpose {
            Purpose::Quiet => {}
            Purpose::Presence { channel, .. } => {
                self.presence_answer(now, channel, answer, presence)
            }
            Purpose::User(id) => {
                let Some(request) = self.requests.remove(&id) else {
                    return;
                };
                let result = match answer {
                    Ack::Ok => {
                        if let Op::Listen { channel, token } = request.op {
                            self.ack_position(&channel, &listen);
                            self.presence_snapshot(now, &channel, presence);
                            self.channels.insert(channel, token);
                        }
                        Ok(())
                    }
                    Ack::Refused(r) => {
                        if let Op::Listen { channel, .. } = &request.op
                            && !self.channels.contains_key(channel)
                        {
                            self.positions.remove(channel);
                            self.presence.remove(channel);
                        }
                        Err(SessionError::refused(r))
                    }
                };
                self.complete(id, result);
            }
            Purpose::Relisten { channel, since, .. } => {
                match answer {
                    // Removed while the re-listen was on its way: undo it.
                    Ack::Ok if !self.channels.contains_key(&channel) => {
                        self.send_quiet_remove(now, channel);
                    }
                    Ack::Ok => {
                        let outcome = relisten_outcome(since, &listen);
                        self.ack_position(&channel, &listen);
                        self.push(Output::Recovery(ChannelRecovery {
                            channel: channel.clone(),
                            recovered: outcome.is_none(),
                            reason: outcome,
                        }));
                        self.presence_snapshot(now, &channel, presence);
                    }
                    Ack::Refused(r) => self.relisten_failed(channel, SessionError::refused(r)),
                }
                self.relisten_done();
            }
        }
    }

    // --- presence ---------------------------------------------------------------------

    /// A `presence` event: applied by the version rule, buffered while the channel's listen
    /// is unanswered, ignored for a channel not listened to.
    fn presence_event(&mut self, now: Instant, event: PresenceEvent) {
        let channel = event.channel_name.clone();
        if !self.presence.contains_key(&channel) {
            if !channel.is_presence() || !self.listen_pending(&channel) {
                return;
            }
            self.presence.get_or_new(&channel);
        }
        self.apply_presence(now, &channel, event);
    }

    fn apply_presence(&mut self, now: Instant, channel: &ChannelName, event: PresenceEvent) {
        let Some(roster) = self.presence.get_mut(channel) else {
            return;
        };
        let change = PresenceChange {
            channel: channel.clone(),
            action: event.action,
            member: event.member.clone(),
        };
        match roster.event(event) {
            Applied::No => {}
            Applied::Yes => self.push(Output::Presence(change)),
            Applied::Gap => {
                self.push(Output::Presence(change));
                self.resync_presence(now, channel);
            }
        }
    }

    /// A listen ack's snapshot (or a query's): the whole list, then the events buffered
    /// before it that are newer.
    fn presence_snapshot(
        &mut self,
        now: Instant,
        channel: &ChannelName,
        snapshot: Option<PresenceSnapshot>,
    ) {
        let Some(snapshot) = snapshot else {
            return; // not a presence channel (or a server without presence)
        };
        let roster = self.presence.get_or_new(channel);
        let (taken, buffered) = roster.snapshot(snapshot);
        if !taken {
            return;
        }
        let members = roster.members();
        self.push(Output::PresenceSynced {
            channel: channel.clone(),
            members,
        });
        for event in buffered {
            self.apply_presence(now, channel, event);
        }
    }

    /// Asks for a fresh snapshot of `channel` (once at a time; a gap seen while one is on its
    /// way asks again after it).
    fn resync_presence(&mut self, now: Instant, channel: &ChannelName) {
        let Some(roster) = self.presence.get_mut(channel) else {
            return;
        };
        match roster.query {
            Query::Pending | Query::PendingAgain => {
                roster.query = Query::PendingAgain;
                return;
            }
            Query::Idle => roster.query = Query::Pending,
        }
        let body = serde_json::json!({ "channelName": channel.as_str() });
        let deadline = now + self.config.request_timeout;
        let purpose = Purpose::Presence {
            channel: channel.clone(),
            deadline,
        };
        self.send_request(now, purpose, PRESENCE, body);
    }

    /// The answer to a `presence` query.
    fn presence_answer(
        &mut self,
        now: Instant,
        channel: ChannelName,
        answer: Ack,
        snapshot: Option<PresenceSnapshot>,
    ) {
        let Some(roster) = self.presence.get_mut(&channel) else {
            return; // removed meanwhile
        };
        let again = roster.query == Query::PendingAgain;
        roster.query = Query::Idle;
        if !roster.synced() {
            return; // the connection was lost meanwhile: the re-listen re-syncs
        }
        // A refusal (`not_joined`, `unavailable`) leaves the list as the events made it.
        if answer == Ack::Ok {
            self.presence_snapshot(now, &channel, snapshot);
        }
        if again {
            self.resync_presence(now, &channel);
        }
    }

    /// A query that failed or timed out: the next gap asks again.
    fn presence_query_dropped(&mut self, channel: &ChannelName) {
        if let Some(roster) = self.presence.get_mut(channel) {
            roster.query = Query::Idle;
        }
    }

    fn relisten_failed(&mut self, channel: ChannelName, error: SessionError<D>) {
        self.channels.remove(&channel);
        self.positions.remove(&channel);
        self.presence.remove(&channel);
        self.push(Output::RelistenFailed { channel, error });
    }

    fn relisten_done(&mut self) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if live.relisten_left == 0 {
            return;
        }
        live.relisten_left -= 1;
        if live.relisten_left == 0 {
            self.push(Output::State(State::Connected));
        }
    }

    // --- timers -----------------------------------------------------------------------

    fn expire_requests(&mut self, now: Instant) {
        let expired: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(request) = self.requests.remove(&id) else {
                continue;
            };
            self.deferred.retain(|d| *d != id);
            self.fetches
                .retain(|_, f| !matches!(f, Fetch::ForRequest(r) if *r == id));
            if let Phase::Live(live) = &mut self.phase {
                live.acks
                    .retain(|_, sent| !matches!(sent.purpose, Purpose::User(r) if r == id));
            }
            if let Op::Listen { channel, .. } = &request.op
                && !self.channels.contains_key(channel)
            {
                self.presence.remove(channel); // events buffered for it
            }
            let error =
                SessionError::timeout_after(self.config.request_timeout, request.op.describe());
            self.complete(id, Err(error));
        }
    }

    fn expire_relisten_fetches(&mut self, now: Instant) {
        let expired: Vec<FetchId> = self
            .fetches
            .iter()
            .filter(|(_, f)| matches!(f, Fetch::ForRelisten { deadline, .. } if *deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        for fetch in expired {
            if let Some(Fetch::ForRelisten { channel, .. }) = self.fetches.remove(&fetch) {
                let error = SessionError::timeout_after(
                    self.config.request_timeout,
                    format!("the token provider for {channel}"),
                );
                self.relisten_failed(channel, error);
                self.relisten_done();
            }
        }
    }

    fn live_timers(&mut self, now: Instant) {
        let Phase::Live(live) = &mut self.phase else {
            return;
        };
        if now.saturating_since(live.last_seen) > live.silence_limit {
            let error = SessionError::Timeout(format!(
                "no heartbeat from the server for {} ms",
                crate::error::millis(live.silence_limit)
            ));
            return self.lost(now, error);
        }
        let expired: Vec<i64> = live
            .acks
            .iter()
            .filter(
                |(_, s)| matches!(s.purpose, Purpose::Relisten { deadline, .. } if deadline <= now),
            )
            .map(|(ack, _)| *ack)
            .collect();
        let mut failed = Vec::new();
        for ack in expired {
            if let Some(Sent {
                purpose: Purpose::Relisten { channel, .. },
                ..
            }) = live.acks.remove(&ack)
            {
                failed.push(channel);
            }
        }
        let queries: Vec<i64> = live
            .acks
            .iter()
            .filter(
                |(_, s)| matches!(s.purpose, Purpose::Presence { deadline, .. } if deadline <= now),
            )
            .map(|(ack, _)| *ack)
            .collect();
        let mut dropped = Vec::new();
        for ack in queries {
            if let Some(Sent {
                purpose: Purpose::Presence { channel, .. },
                ..
            }) = live.acks.remove(&ack)
            {
                dropped.push(channel);
            }
        }
        let mut overdue: Vec<i64> = live
            .acks
            .iter()
            .filter(|(_, s)| s.resend_at <= now && !matches!(s.purpose, Purpose::Quiet))
            .map(|(ack, _)| *ack)
            .collect();
        overdue.sort_unstable();
        let mut again = Vec::new();
        for ack in overdue {
            if let Some(mut sent) = live.acks.remove(&ack) {
                sent.resend_interval = (sent.resend_interval * 2).min(MAX_RESEND);
                sent.resend_at = now + sent.resend_interval;
                again.push(sent);
            }
        }
        for sent in again {
            self.send_sent(sent);
        }
        for channel in dropped {
            self.presence_query_dropped(&channel);
        }
        for channel in failed {
            let error = SessionError::timeout_after(
                self.config.request_timeout,
                format!("the server to accept listen {channel}"),
            );
            self.relisten_failed(channel, error);
            self.relisten_done();
        }
    }

    // --- plumbing ---------------------------------------------------------------------

    fn push(&mut self, output: Output<D>) {
        self.outputs.push_back(output);
    }

    fn complete(&mut self, request: RequestId, result: Result<(), SessionError<D>>) {
        self.push(Output::Complete { request, result });
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn next_request(&mut self) -> RequestId {
        RequestId(self.next_id())
    }

    fn next_fetch(&mut self) -> FetchId {
        FetchId(self.next_id())
    }

    /// xorshift64*: jitter only, not security.
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let value = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (value >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One handshake step.
enum Handshaking<D> {
    /// Frames to send; the handshake goes on.
    Continue(Vec<String>),
    /// The namespace accepted.
    Accepted(Open),
    Failed {
        error: SessionError<D>,
        retryable: bool,
    },
}

fn handshake_frame<D>(h: &mut Handshake, auth: &HandshakeAuth, text: &str) -> Handshaking<D> {
    let protocol = |message: &str| Handshaking::Failed {
        error: SessionError::Protocol(message.to_owned()),
        retryable: true,
    };
    let incoming = match h.decoder.decode(text) {
        Ok(incoming) => incoming,
        Err(e) => return protocol(e.message()),
    };
    match incoming {
        Incoming::Open(open) => match codec::encode_connect(auth) {
            Ok(connect) => {
                h.open = Some(open);
                Handshaking::Continue(vec![connect])
            }
            Err(e) => protocol(e.message()),
        },
        Incoming::Ping(pong) => Handshaking::Continue(vec![pong]),
        Incoming::Connected => Handshaking::Accepted(h.open.unwrap_or(DEFAULT_OPEN)),
        Incoming::ConnectError(ConnectError::Refused(r)) => Handshaking::Failed {
            error: SessionError::refused(r),
            retryable: false,
        },
        Incoming::ConnectError(ConnectError::Other(message)) => Handshaking::Failed {
            error: SessionError::Protocol(format!("connection refused: {message}")),
            retryable: false,
        },
        Incoming::Close | Incoming::Disconnect => Handshaking::Failed {
            error: SessionError::ClosedByServer {
                code: None,
                reason: String::new(),
            },
            retryable: true,
        },
        _ => Handshaking::Continue(Vec::new()),
    }
}

/// Why a successful re-listen did not recover (`None`: it did); `since`: whether it carried
/// a position.
fn relisten_outcome(since: bool, listen: &Option<ListenAnswer>) -> Option<RecoveryReason> {
    match listen {
        Some(ListenAnswer::Recovery(r)) if r.recovered => None,
        Some(ListenAnswer::Recovery(r)) => {
            Some(r.reason.map_or(RecoveryReason::HistoryExpired, Into::into))
        }
        // `since` sent, but not answered (a server without history): nothing was replayed.
        _ if since => Some(RecoveryReason::HistoryDisabled),
        Some(ListenAnswer::Position(_)) => Some(RecoveryReason::EpochChanged),
        None => Some(RecoveryReason::HistoryDisabled),
    }
}

/// The `data.errorCode` of a system message.
fn error_code(message: &SystemMessage) -> Option<ErrorCode> {
    let code = message.data.as_ref()?.get("errorCode")?.as_str()?;
    ErrorCode::ALL.iter().copied().find(|c| c.as_str() == code)
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
mod tests;
