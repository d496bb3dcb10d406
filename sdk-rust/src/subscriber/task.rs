//! The background task behind a [`Subscriber`](super::Subscriber): the tokio driver of
//! [`herald_client_core::Session`]. It moves bytes (one WebSocket at a time, through
//! tokio-tungstenite), time (one sleep until the session's next timeout) and tokens (the
//! provider's futures); every protocol decision is the session's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_client_core::{
    ConnId, FetchId, Instant, Output, RequestId, Session, SessionError, State, TransportEnd,
};
use herald_protocol::ChannelName;
use reqwest::Url;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{ConnectionState, MembersMap, SubscriberEvent, TokenProvider};
use crate::error::{Error, Message as Text};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Opening = Pin<Box<dyn Future<Output = Result<Ws, Error>> + Send>>;

/// How long a polite close may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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

/// The one transport, if any.
enum Transport {
    None,
    Opening(ConnId, Opening),
    Open(ConnId, Box<Ws>),
}

/// What the transport reported.
enum News {
    Opened(ConnId, Box<Ws>),
    Frame(ConnId, String),
    Ended(ConnId, TransportEnd<Error>),
    /// A frame the session has no use for (binary, WebSocket ping/pong).
    Nothing,
}

/// The background task.
pub(crate) struct Task {
    session: Session<Error>,
    url: Url,
    token_provider: Option<TokenProvider>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<SubscriberEvent>,
    shutdown: watch::Receiver<bool>,
    shutting_down: bool,
    replies: HashMap<RequestId, Reply>,
    /// The first `connect`: answered to the builder, and the task ends if it fails.
    connect: Option<(RequestId, oneshot::Sender<Result<(), Error>>)>,
    transport: Transport,
    tokens_tx: mpsc::UnboundedSender<(FetchId, Result<String, Error>)>,
    tokens: mpsc::UnboundedReceiver<(FetchId, Result<String, Error>)>,
    origin: tokio::time::Instant,
    ended: bool,
    members: MembersMap,
}

/// What the task shares with the [`Subscriber`](super::Subscriber) handle.
pub(crate) struct Handle {
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) events: mpsc::Sender<SubscriberEvent>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Gets the first attempt's result.
    pub(crate) connected: oneshot::Sender<Result<(), Error>>,
    pub(crate) members: MembersMap,
}

impl Task {
    /// A task that starts connecting at once.
    pub(crate) fn new(
        config: herald_client_core::Config,
        url: Url,
        token_provider: Option<TokenProvider>,
        handle: Handle,
    ) -> Self {
        let Handle {
            commands,
            events,
            shutdown,
            connected,
            members,
        } = handle;
        let (tokens_tx, tokens) = mpsc::unbounded_channel();
        let origin = tokio::time::Instant::now();
        let mut session = Session::new(config);
        let id = session.connect(Instant::default());
        Self {
            session,
            url,
            token_provider,
            commands,
            events,
            shutdown,
            shutting_down: false,
            replies: HashMap::new(),
            connect: Some((id, connected)),
            transport: Transport::None,
            tokens_tx,
            tokens,
            origin,
            ended: false,
            members,
        }
    }

    /// Copies the session's members of `channel` (every presence channel's when `None`) to
    /// what [`Subscriber::members`](super::Subscriber::members) reads.
    fn share_members(&self, channel: Option<&ChannelName>) {
        let mut map = match self.members.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        let update = |channel: &ChannelName, map: &mut HashMap<ChannelName, _>| {
            let members = self.session.members(channel);
            if members.is_empty() {
                map.remove(channel);
            } else {
                map.insert(channel.clone(), members);
            }
        };
        match channel {
            Some(channel) => update(channel, &mut map),
            None => {
                let channels: Vec<ChannelName> = map.keys().cloned().collect();
                for channel in &channels {
                    update(channel, &mut map);
                }
            }
        }
    }

    fn now(&self) -> Instant {
        Instant::from_duration(self.origin.elapsed())
    }

    /// Feeds the session until it is closed (or the first attempt failed).
    pub(crate) async fn run(mut self) {
        loop {
            self.drain().await;
            if self.ended {
                break;
            }
            let deadline = self
                .session
                .next_timeout()
                .map(|t| self.origin + t.since_origin());
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.changed(), if !self.shutting_down => self.shut_down(),
                command = self.commands.recv(), if !self.shutting_down => match command {
                    Some(command) => self.command(command),
                    None => self.shut_down(),
                },
                news = next_news(&mut self.transport) => self.news(news),
                Some((fetch, token)) = self.tokens.recv() => {
                    let now = self.now();
                    self.session.token_ready(now, fetch, token);
                }
                () = sleep => {
                    let now = self.now();
                    self.session.handle_timeout(now);
                }
            }
        }
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            let (Command::Listen { reply, .. } | Command::Remove { reply, .. }) = command;
            let _ = reply.send(Err(Error::Closed));
        }
    }

    fn shut_down(&mut self) {
        self.shutting_down = true;
        let now = self.now();
        self.session.close(now);
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        let (id, reply) = match command {
            Command::Listen {
                channel,
                token,
                reply,
            } => (self.session.listen(now, channel, token), reply),
            Command::Remove { channel, reply } => (self.session.remove(now, channel), reply),
        };
        self.replies.insert(id, reply);
    }

    fn news(&mut self, news: News) {
        let now = self.now();
        match news {
            News::Opened(conn, ws) => self.transport = Transport::Open(conn, ws),
            News::Frame(conn, text) => self.session.transport_frame(now, conn, &text),
            News::Ended(conn, end) => {
                self.transport = Transport::None;
                self.session.transport_closed(now, conn, end);
            }
            News::Nothing => {}
        }
    }

    /// Carries out what the session asked for.
    async fn drain(&mut self) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::OpenTransport(conn) => {
                    let url = self.url.clone();
                    self.transport = Transport::Opening(conn, Box::pin(open(url)));
                }
                Output::Send(frame) => self.send(frame).await,
                Output::CloseTransport => {
                    if let Transport::Open(_, mut ws) =
                        std::mem::replace(&mut self.transport, Transport::None)
                    {
                        let _ = tokio::time::timeout(
                            CLOSE_GRACE,
                            WebSocketStream::close(&mut *ws, None),
                        )
                        .await;
                    }
                }
                Output::Event(event) => self.emit(SubscriberEvent::Event(event)).await,
                Output::System(message) => {
                    self.share_members(None); // RemovedFromChannel drops channels
                    self.emit(SubscriberEvent::System(message)).await;
                }
                Output::Recovery(recovery) => self.emit(SubscriberEvent::Recovery(recovery)).await,
                Output::RelistenFailed { channel, error } => {
                    self.share_members(Some(&channel));
                    let error = into_error(error);
                    self.emit(SubscriberEvent::RelistenFailed { channel, error })
                        .await;
                }
                Output::State(state) => self.state(state).await,
                Output::Presence(change) => {
                    self.share_members(Some(&change.channel));
                    self.emit(SubscriberEvent::Presence(change)).await;
                }
                Output::PresenceSynced { channel, members } => {
                    self.share_members(Some(&channel));
                    self.emit(SubscriberEvent::PresenceSynced { channel, members })
                        .await;
                }
                Output::FetchToken { fetch, channel } => self.fetch_token(fetch, channel),
                Output::Complete { request, result } => {
                    self.share_members(None); // a remove drops its channel
                    let result = result.map_err(into_error);
                    match self.connect.take() {
                        Some((id, connected)) if id == request => {
                            if result.is_err() {
                                self.ended = true; // no subscriber was handed out
                            }
                            let _ = connected.send(result);
                        }
                        other => {
                            self.connect = other;
                            if let Some(reply) = self.replies.remove(&request) {
                                let _ = reply.send(result);
                            }
                        }
                    }
                }
            }
        }
    }

    async fn send(&mut self, frame: String) {
        let Transport::Open(conn, ws) = &mut self.transport else {
            return;
        };
        let conn = *conn;
        if let Err(e) = ws.send(Message::text(frame)).await {
            self.transport = Transport::None;
            let end = TransportEnd::Failed {
                error: Error::transport("writing to the socket", &e),
                retryable: true,
            };
            let now = self.now();
            self.session.transport_closed(now, conn, end);
        }
    }

    async fn state(&mut self, state: State<Error>) {
        let state = match state {
            State::Connecting => return,
            State::Connected => ConnectionState::Connected,
            State::Reconnecting {
                attempt,
                delay,
                cause,
            } => ConnectionState::Reconnecting {
                attempt,
                delay,
                cause: into_error(cause),
            },
            State::Closed { cause } => {
                self.ended = true;
                if self.connect.is_some() {
                    return; // the first attempt failed: the builder gets the error
                }
                let cause = cause.map(into_error);
                let giving_up = cause.is_some();
                let closed = SubscriberEvent::State(ConnectionState::Closed { cause });
                if giving_up && !self.shutting_down {
                    // Make sure the reader learns why.
                    self.emit(closed).await;
                } else {
                    let _ = self.events.try_send(closed);
                }
                return;
            }
        };
        self.emit(SubscriberEvent::State(state)).await;
    }

    /// Hands an event to the application, waiting for buffer space (so the socket is not
    /// read meanwhile) unless shutting down.
    async fn emit(&mut self, event: SubscriberEvent) {
        if self.shutting_down {
            return;
        }
        tokio::select! {
            sent = self.events.send(event) => {
                if sent.is_err() {
                    self.shut_down(); // nobody reads any more
                }
            }
            _ = self.shutdown.changed() => self.shut_down(),
        }
    }

    fn fetch_token(&self, fetch: FetchId, channel: ChannelName) {
        let tokens = self.tokens_tx.clone();
        let Some(provider) = self.token_provider.clone() else {
            let _ = tokens.send((fetch, Err(Error::NoTokenProvider(channel))));
            return;
        };
        tokio::spawn(async move {
            let token = fetch_token(&provider, &channel).await;
            // The session may not need it any more; then it is ignored.
            let _ = tokens.send((fetch, token));
        });
    }
}

/// Asks `provider` for a token for `channel`.
async fn fetch_token(provider: &TokenProvider, channel: &ChannelName) -> Result<String, Error> {
    provider(channel.clone())
        .await
        .map_err(|cause| Error::TokenProvider {
            channel: channel.clone(),
            cause,
        })
}

/// The WebSocket upgrade.
async fn open(url: Url) -> Result<Ws, Error> {
    tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| upgrade_error(&url, e))
}

/// Waits for the transport's next news (forever when there is no transport).
async fn next_news(transport: &mut Transport) -> News {
    match transport {
        Transport::None => std::future::pending().await,
        Transport::Opening(conn, opening) => {
            let conn = *conn;
            match opening.await {
                Ok(ws) => News::Opened(conn, Box::new(ws)),
                Err(error) => {
                    let retryable = error.is_retryable();
                    News::Ended(conn, TransportEnd::Failed { error, retryable })
                }
            }
        }
        Transport::Open(conn, ws) => {
            let conn = *conn;
            match ws.next().await {
                Some(Ok(Message::Text(text))) => News::Frame(conn, text.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => News::Ended(
                    conn,
                    TransportEnd::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame
                            .map(|f| f.reason.as_str().to_owned())
                            .unwrap_or_default(),
                    },
                ),
                None => News::Ended(
                    conn,
                    TransportEnd::Closed {
                        code: None,
                        reason: String::new(),
                    },
                ),
                Some(Ok(_)) => News::Nothing,
                Some(Err(e)) => News::Ended(
                    conn,
                    TransportEnd::Failed {
                        error: Error::transport("reading from the socket", &e),
                        retryable: true,
                    },
                ),
            }
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

/// The session's error as the SDK's.
pub(crate) fn into_error(e: SessionError<Error>) -> Error {
    match e {
        SessionError::Refused { code, message } => Error::Refused { code, message },
        SessionError::Timeout(what) => Error::Timeout(what),
        closed @ SessionError::ClosedByServer { .. } => {
            let text = closed.to_string();
            let cause = text
                .strip_prefix("connection: ")
                .unwrap_or(&text)
                .to_owned();
            Error::Transport {
                context: "connection".into(),
                cause: Arc::new(Text(cause)),
            }
        }
        SessionError::Protocol(what) => Error::Protocol(what),
        SessionError::NoTokenProvider(channel) => Error::NoTokenProvider(channel),
        SessionError::Closed => Error::Closed,
        SessionError::Driver(e) => e,
    }
}
