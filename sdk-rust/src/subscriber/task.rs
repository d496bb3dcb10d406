//! The background task behind a [`Subscriber`](super::Subscriber): one WebSocket at a time,
//! heartbeats, acknowledgements, reconnection and re-listening.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_protocol::messages::event_names::{LISTEN, REMOVE};
use herald_protocol::{
    Ack, ChannelName, HandshakeAuth, ListenRequest, RemoveRequest, SystemMessage, SystemMessageCode,
};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::wire::{self, Decoder, Incoming, Open};
use super::{ConnectionState, SubscriberEvent, TokenProvider};
use crate::backoff::Backoff;
use crate::error::{Error, Message as Text};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How often timers (heartbeat, re-listen deadlines) are checked.
const TICK: Duration = Duration::from_millis(250);
/// How long a polite close may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a request waits for its acknowledgement before it is sent again; the wait then
/// doubles, up to [`MAX_RESEND`].
const FIRST_RESEND: Duration = Duration::from_secs(1);
const MAX_RESEND: Duration = Duration::from_secs(4);

/// What the task needs to (re)connect.
pub(crate) struct Config {
    pub(crate) url: Url,
    pub(crate) auth: HandshakeAuth,
    pub(crate) token_provider: Option<TokenProvider>,
    pub(crate) backoff: Backoff,
    pub(crate) max_reconnect_attempts: Option<u32>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

/// The answer to a command.
pub(crate) type Reply = oneshot::Sender<Result<(), Error>>;

/// A request from the [`Subscriber`](super::Subscriber) handle.
pub(crate) enum Command {
    Listen {
        channel: ChannelName,
        token: Option<String>,
        reply: Reply,
    },
    Remove {
        channel: ChannelName,
        reply: Reply,
    },
}

/// An established connection: Engine.IO opened and the Socket.IO namespace joined.
pub(crate) struct Connection {
    ws: Ws,
    open: Open,
    decoder: Decoder,
}

/// Asks `provider` for a token for `channel`.
pub(crate) async fn fetch_token(
    provider: &TokenProvider,
    channel: &ChannelName,
) -> Result<String, Error> {
    provider(channel.clone())
        .await
        .map_err(|cause| Error::TokenProvider {
            channel: channel.clone(),
            cause,
        })
}

/// One connection attempt, bounded by the connect timeout.
pub(crate) async fn connect(config: &Config) -> Result<Connection, Error> {
    tokio::time::timeout(config.connect_timeout, handshake(config))
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "after {:?} connecting to {}",
                config.connect_timeout, config.url
            ))
        })?
}

async fn handshake(config: &Config) -> Result<Connection, Error> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(config.url.as_str(), None, true)
        .await
        .map_err(|e| upgrade_error(&config.url, e))?;
    let decoder = Decoder::new();
    let open = loop {
        match decoder.decode(&next_text(&mut ws).await?)? {
            Incoming::Open(open) => break open,
            Incoming::Ignored => {}
            other => {
                return Err(Error::Protocol(format!(
                    "expected the Engine.IO open packet, got {other:?}"
                )));
            }
        }
    };
    send(&mut ws, wire::encode_connect(&config.auth)?).await?;
    loop {
        match decoder.decode(&next_text(&mut ws).await?)? {
            Incoming::Connected => return Ok(Connection { ws, open, decoder }),
            Incoming::ConnectError(e) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
                return Err(wire::connect_error(e));
            }
            Incoming::Ping(pong) => send(&mut ws, pong).await?,
            Incoming::Close | Incoming::Disconnect => return Err(closed_by_server()),
            _ => {}
        }
    }
}

/// A failed WebSocket upgrade: an HTTP answer keeps its status and Herald error code.
fn upgrade_error(url: &Url, e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            crate::publisher::http_error(response.status().as_u16(), body, None)
        }
        other => Error::transport(format!("connecting to {url}"), &other),
    }
}

/// The next text frame, skipping WebSocket control and binary frames.
async fn next_text(ws: &mut Ws) -> Result<String, Error> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => return Err(closed_by_server()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Error::transport("reading from the socket", &e)),
        }
    }
}

async fn send(ws: &mut Ws, frame: String) -> Result<(), Error> {
    ws.send(Message::text(frame))
        .await
        .map_err(|e| Error::transport("writing to the socket", &e))
}

fn closed_by_server() -> Error {
    Error::Transport {
        context: "connection".into(),
        cause: Arc::new(Text("closed by the server".into())),
    }
}

/// The subscriber shut down (close, or the handle was dropped).
struct Shutdown;

/// Why a session ended.
enum End {
    Shutdown,
    Lost(Error),
}

impl From<Shutdown> for End {
    fn from(_: Shutdown) -> Self {
        End::Shutdown
    }
}

/// A request awaiting its acknowledgement.
enum Pending {
    /// A user's `listen`.
    Listen {
        channel: ChannelName,
        token: Option<String>,
        reply: Reply,
    },
    /// A user's `remove`.
    Remove { reply: Reply },
    /// A `listen` re-sent after a reconnection.
    Relisten {
        channel: ChannelName,
        deadline: Instant,
    },
    /// A `remove` nobody waits for.
    Quiet,
}

/// A request sent, and how to send it again.
struct Outstanding {
    pending: Pending,
    event: &'static str,
    body: serde_json::Value,
    resend_at: Instant,
    resend_interval: Duration,
}

/// Per-connection state.
struct Session {
    ws: Ws,
    decoder: Decoder,
    next_ack: i64,
    outstanding: HashMap<i64, Outstanding>,
    /// Re-listens not yet answered; `Connected` is announced when it reaches 0.
    relisten_left: usize,
    last_seen: Instant,
    /// Silence after which the connection counts as dead: ping interval + ping timeout.
    silence_limit: Duration,
}

impl Session {
    /// Sends `event` with an ack id and records what waits for the answer.
    async fn request<T: serde::Serialize>(
        &mut self,
        event: &'static str,
        body: &T,
        pending: Pending,
    ) -> Result<(), Error> {
        let body = serde_json::to_value(body)
            .map_err(|e| Error::Protocol(format!("encoding {event}: {e}")))?;
        self.send_request(Outstanding {
            pending,
            event,
            body,
            resend_at: Instant::now() + FIRST_RESEND,
            resend_interval: FIRST_RESEND,
        })
        .await
    }

    async fn send_request(&mut self, request: Outstanding) -> Result<(), Error> {
        let id = self.next_ack;
        self.next_ack += 1;
        let frame = wire::encode_event(request.event, &request.body, id)?;
        self.outstanding.insert(id, request);
        send(&mut self.ws, frame).await
    }

    /// Sends again, under a new ack id, the requests unanswered for a while. The server
    /// (socketioxide) answers the handshake before its connect handler has registered the
    /// event handlers, so a request sent right after connecting can be dropped without an
    /// answer. `listen` and `remove` are idempotent, so sending them twice is safe; a late
    /// answer to the old id is ignored.
    async fn resend_overdue(&mut self, now: Instant) -> Result<(), Error> {
        let overdue: Vec<i64> = self
            .outstanding
            .iter()
            .filter(|(_, r)| r.resend_at <= now && !matches!(r.pending, Pending::Quiet))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            let Some(mut request) = self.outstanding.remove(&id) else {
                continue;
            };
            if let Pending::Listen { reply, .. } | Pending::Remove { reply } = &request.pending
                && reply.is_closed()
            {
                continue; // the caller gave up
            }
            request.resend_interval = (request.resend_interval * 2).min(MAX_RESEND);
            request.resend_at = now + request.resend_interval;
            self.send_request(request).await?;
        }
        Ok(())
    }
}

/// The background task.
pub(crate) struct Task {
    config: Arc<Config>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<SubscriberEvent>,
    shutdown: watch::Receiver<bool>,
    /// Channels to (re-)listen to, with the token given to `listen_with_token` (used again
    /// when there is no token provider).
    channels: HashMap<ChannelName, Option<String>>,
    /// User requests waiting for a connection.
    deferred: VecDeque<Command>,
}

impl Task {
    pub(crate) fn new(
        config: Arc<Config>,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<SubscriberEvent>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            config,
            commands,
            events,
            shutdown,
            channels: HashMap::new(),
            deferred: VecDeque::new(),
        }
    }

    /// Runs sessions and reconnections until shutdown or giving up.
    pub(crate) async fn run(mut self, mut connection: Connection) {
        loop {
            let cause = match self.session(connection).await {
                End::Shutdown => return self.finish(None).await,
                End::Lost(cause) => cause,
            };
            connection = match self.reconnect(cause).await {
                Ok(c) => c,
                Err(cause) => return self.finish(cause).await,
            };
        }
    }

    /// Reconnects with backoff. `Err(None)` on shutdown, `Err(Some(e))` when giving up.
    async fn reconnect(&mut self, mut cause: Error) -> Result<Connection, Option<Error>> {
        let mut attempt = 0u32;
        loop {
            if self
                .config
                .max_reconnect_attempts
                .is_some_and(|max| attempt >= max)
            {
                return Err(Some(cause));
            }
            let delay = self.config.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            let state = ConnectionState::Reconnecting {
                attempt,
                delay,
                cause: cause.clone(),
            };
            self.emit(SubscriberEvent::State(state))
                .await
                .map_err(|Shutdown| None)?;
            self.idle(tokio::time::sleep(delay))
                .await
                .map_err(|Shutdown| None)?;
            let config = Arc::clone(&self.config);
            match self.idle(connect(&config)).await {
                Err(Shutdown) => return Err(None),
                Ok(Ok(connection)) => return Ok(connection),
                // A refusal that will not change by itself (e.g. the project was deleted).
                Ok(Err(e)) if !e.is_retryable() => return Err(Some(e)),
                Ok(Err(e)) => cause = e,
            }
        }
    }

    /// Runs `work` while there is no connection: requests wait for the next connection
    /// (`remove` needs none: the next connection will not listen to the channel).
    async fn idle<F: Future>(&mut self, work: F) -> Result<F::Output, Shutdown> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                _ = self.shutdown.changed() => return Err(Shutdown),
                command = self.commands.recv() => match command {
                    None => return Err(Shutdown),
                    Some(Command::Remove { channel, reply }) => {
                        self.channels.remove(&channel);
                        let _ = reply.send(Ok(()));
                    }
                    Some(listen) => self.deferred.push_back(listen),
                },
            }
        }
    }

    /// Sends an event to the subscriber, waiting for buffer space unless shut down.
    async fn emit(&mut self, event: SubscriberEvent) -> Result<(), Shutdown> {
        tokio::select! {
            sent = self.events.send(event) => sent.map_err(|_| Shutdown),
            _ = self.shutdown.changed() => Err(Shutdown),
        }
    }

    /// Fails every waiting request and announces the end.
    async fn finish(mut self, cause: Option<Error>) {
        self.commands.close();
        let waiting = self.deferred.drain(..).collect::<Vec<_>>();
        let queued = std::iter::from_fn(|| self.commands.try_recv().ok()).collect::<Vec<_>>();
        for command in waiting.into_iter().chain(queued) {
            let (Command::Listen { reply, .. } | Command::Remove { reply, .. }) = command;
            let _ = reply.send(Err(Error::Closed));
        }
        let closed = SubscriberEvent::State(ConnectionState::Closed {
            cause: cause.clone(),
        });
        if cause.is_some() {
            // Giving up: make sure the reader learns why.
            let _ = self.emit(closed).await;
        } else {
            let _ = self.events.try_send(closed);
        }
    }

    /// One connection's life: re-listen, then serve until the connection is lost or the
    /// subscriber shuts down.
    async fn session(&mut self, connection: Connection) -> End {
        let Connection { ws, open, decoder } = connection;
        let mut s = Session {
            ws,
            decoder,
            next_ack: 0,
            outstanding: HashMap::new(),
            relisten_left: 0,
            last_seen: Instant::now(),
            silence_limit: open.ping_interval.saturating_add(open.ping_timeout),
        };
        let (tokens_tx, mut tokens) = mpsc::unbounded_channel();
        let end = match self.start(&mut s, &tokens_tx).await {
            Ok(()) => self.serve(&mut s, &mut tokens).await,
            Err(end) => end,
        };
        match &end {
            End::Shutdown => {
                for request in s.outstanding.into_values() {
                    if let Pending::Listen { reply, .. } | Pending::Remove { reply } =
                        request.pending
                    {
                        let _ = reply.send(Err(Error::Closed));
                    }
                }
                let polite = async {
                    let _ = send(&mut s.ws, wire::DISCONNECT.to_owned()).await;
                    let _ = s.ws.close(None).await;
                };
                let _ = tokio::time::timeout(CLOSE_GRACE, polite).await;
            }
            End::Lost(_) => {
                // Unanswered user requests go to the next connection, in their order.
                let mut unanswered: Vec<_> = s.outstanding.into_iter().collect();
                unanswered.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
                for (_, request) in unanswered {
                    match request.pending {
                        Pending::Listen {
                            channel,
                            token,
                            reply,
                        } => self.deferred.push_front(Command::Listen {
                            channel,
                            token,
                            reply,
                        }),
                        Pending::Remove { reply } => {
                            let _ = reply.send(Ok(()));
                        }
                        Pending::Relisten { .. } | Pending::Quiet => {}
                    }
                }
            }
        }
        end
    }

    /// Re-listens to every channel, then sends the requests that waited for a connection.
    async fn start(
        &mut self,
        s: &mut Session,
        tokens_tx: &mpsc::UnboundedSender<(ChannelName, Result<String, Error>)>,
    ) -> Result<(), End> {
        let channels: Vec<_> = self
            .channels
            .iter()
            .map(|(c, t)| (c.clone(), t.clone()))
            .collect();
        for (channel, token) in channels {
            s.relisten_left += 1;
            match (&self.config.token_provider, channel.is_private()) {
                (Some(provider), true) => {
                    let (provider, tokens_tx) = (Arc::clone(provider), tokens_tx.clone());
                    let timeout = self.config.request_timeout;
                    tokio::spawn(async move {
                        let token = tokio::time::timeout(timeout, fetch_token(&provider, &channel))
                            .await
                            .unwrap_or_else(|_| {
                                Err(Error::Timeout(format!(
                                    "after {timeout:?} waiting for the token provider for {channel}"
                                )))
                            });
                        // The session may be over; then nobody needs the token.
                        let _ = tokens_tx.send((channel, token));
                    });
                }
                _ => self.relisten(s, channel, token).await?,
            }
        }
        if s.relisten_left == 0 {
            self.emit(SubscriberEvent::State(ConnectionState::Connected))
                .await?;
        }
        while let Some(command) = self.deferred.pop_front() {
            self.command(s, command).await?;
        }
        Ok(())
    }

    async fn relisten(
        &mut self,
        s: &mut Session,
        channel: ChannelName,
        token: Option<String>,
    ) -> Result<(), End> {
        let body = ListenRequest {
            channel_name: channel.clone(),
            auth_token: token,
        };
        let deadline = Instant::now() + self.config.request_timeout;
        s.request(LISTEN, &body, Pending::Relisten { channel, deadline })
            .await
            .map_err(End::Lost)
    }

    async fn serve(
        &mut self,
        s: &mut Session,
        tokens: &mut mpsc::UnboundedReceiver<(ChannelName, Result<String, Error>)>,
    ) -> End {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                _ = self.shutdown.changed() => Err(End::Shutdown),
                frame = s.ws.next() => self.frame(s, frame).await,
                command = self.commands.recv() => match command {
                    Some(command) => self.command(s, command).await,
                    None => Err(End::Shutdown),
                },
                Some((channel, token)) = tokens.recv() => self.relisten_token(s, channel, token).await,
                _ = tick.tick() => self.check_timers(s).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn command(&mut self, s: &mut Session, command: Command) -> Result<(), End> {
        match command {
            Command::Listen {
                channel,
                token,
                reply,
            } => {
                if reply.is_closed() {
                    return Ok(()); // the caller gave up (timeout) before it was sent
                }
                let body = ListenRequest {
                    channel_name: channel.clone(),
                    auth_token: token.clone(),
                };
                let pending = Pending::Listen {
                    channel,
                    token,
                    reply,
                };
                s.request(LISTEN, &body, pending).await.map_err(End::Lost)
            }
            Command::Remove { channel, reply } => {
                self.channels.remove(&channel);
                let body = RemoveRequest {
                    channel_name: channel,
                };
                s.request(REMOVE, &body, Pending::Remove { reply })
                    .await
                    .map_err(End::Lost)
            }
        }
    }

    async fn frame(
        &mut self,
        s: &mut Session,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), End> {
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => return Err(End::Lost(closed_by_server())),
            Some(Ok(_)) => {
                s.last_seen = Instant::now();
                return Ok(());
            }
            Some(Err(e)) => {
                return Err(End::Lost(Error::transport("reading from the socket", &e)));
            }
        };
        s.last_seen = Instant::now();
        // A packet this client cannot read is skipped; the connection itself is fine.
        let Ok(incoming) = s.decoder.decode(text.as_str()) else {
            return Ok(());
        };
        match incoming {
            Incoming::Ping(pong) => send(&mut s.ws, pong).await.map_err(End::Lost)?,
            Incoming::Close | Incoming::Disconnect => return Err(End::Lost(closed_by_server())),
            Incoming::Event(event) => self.emit(SubscriberEvent::Event(event)).await?,
            Incoming::System(message) => {
                if message.code == SystemMessageCode::RemovedFromChannel {
                    for channel in removed_channels(&message) {
                        self.channels.remove(&channel);
                    }
                }
                self.emit(SubscriberEvent::System(message)).await?;
            }
            Incoming::Ack(id, ack) => self.ack(s, id, ack).await?,
            Incoming::Open(_)
            | Incoming::Connected
            | Incoming::ConnectError(_)
            | Incoming::Ignored => {}
        }
        Ok(())
    }

    async fn ack(&mut self, s: &mut Session, id: i64, ack: Ack) -> Result<(), End> {
        let refused = |r: herald_protocol::Refusal| Error::Refused {
            code: r.code,
            message: r.message,
        };
        match s.outstanding.remove(&id).map(|r| r.pending) {
            None | Some(Pending::Quiet) => {}
            Some(Pending::Listen {
                channel,
                token,
                reply,
            }) => {
                let result = match ack {
                    Ack::Ok => {
                        self.channels.insert(channel, token);
                        Ok(())
                    }
                    Ack::Refused(r) => Err(refused(r)),
                };
                let _ = reply.send(result);
            }
            Some(Pending::Remove { reply }) => {
                let _ = reply.send(match ack {
                    Ack::Ok => Ok(()),
                    Ack::Refused(r) => Err(refused(r)),
                });
            }
            Some(Pending::Relisten { channel, .. }) => {
                match ack {
                    Ack::Ok if !self.channels.contains_key(&channel) => {
                        // Removed while the re-listen was on its way: undo it.
                        let body = RemoveRequest {
                            channel_name: channel,
                        };
                        s.request(REMOVE, &body, Pending::Quiet)
                            .await
                            .map_err(End::Lost)?;
                    }
                    Ack::Ok => {}
                    Ack::Refused(r) => self.relisten_failed(channel, refused(r)).await?,
                }
                self.relisten_done(s).await?;
            }
        }
        Ok(())
    }

    async fn relisten_token(
        &mut self,
        s: &mut Session,
        channel: ChannelName,
        token: Result<String, Error>,
    ) -> Result<(), End> {
        if !self.channels.contains_key(&channel) {
            // Removed meanwhile.
            return Ok(self.relisten_done(s).await?);
        }
        match token {
            Ok(token) => self.relisten(s, channel, Some(token)).await,
            Err(e) => {
                self.relisten_failed(channel, e).await?;
                Ok(self.relisten_done(s).await?)
            }
        }
    }

    async fn relisten_failed(
        &mut self,
        channel: ChannelName,
        error: Error,
    ) -> Result<(), Shutdown> {
        self.channels.remove(&channel);
        self.emit(SubscriberEvent::RelistenFailed { channel, error })
            .await
    }

    async fn relisten_done(&mut self, s: &mut Session) -> Result<(), Shutdown> {
        s.relisten_left = s.relisten_left.saturating_sub(1);
        if s.relisten_left == 0 {
            self.emit(SubscriberEvent::State(ConnectionState::Connected))
                .await?;
        }
        Ok(())
    }

    async fn check_timers(&mut self, s: &mut Session) -> Result<(), End> {
        if s.last_seen.elapsed() > s.silence_limit {
            return Err(End::Lost(Error::Timeout(format!(
                "no heartbeat from the server for {:?}",
                s.silence_limit
            ))));
        }
        let now = Instant::now();
        let expired: Vec<i64> = s
            .outstanding
            .iter()
            .filter(
                |(_, r)| matches!(r.pending, Pending::Relisten { deadline, .. } if deadline <= now),
            )
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(Pending::Relisten { channel, .. }) =
                s.outstanding.remove(&id).map(|r| r.pending)
            {
                let error = Error::Timeout(format!(
                    "after {:?} waiting for the server to accept listen {channel}",
                    self.config.request_timeout
                ));
                self.relisten_failed(channel, error).await?;
                self.relisten_done(s).await?;
            }
        }
        s.resend_overdue(now).await.map_err(End::Lost)
    }
}

/// The `data.channels` of a `RemovedFromChannel` message (invalid names are skipped).
fn removed_channels(message: &SystemMessage) -> Vec<ChannelName> {
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
