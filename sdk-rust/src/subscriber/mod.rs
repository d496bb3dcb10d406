//! The socket side: [`Subscriber`] receives the events of the channels it listens to.

mod task;

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use herald_protocol::presence::Member;
use herald_protocol::{ChannelEvent, ChannelName, HandshakeAuth, ProjectId, SystemMessage};
use reqwest::Url;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use herald_client_core::Backoff;

use crate::error::{Cause, Error};
use task::{Command, Task};

/// How many events wait in the subscriber's buffer before it stops reading from the socket.
const EVENT_BUFFER: usize = 1024;

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, Cause>> + Send>>;
type TokenProvider = Arc<dyn Fn(ChannelName) -> TokenFuture + Send + Sync>;

/// The members of each presence channel, as the task last saw them (before it hands the
/// event that changed them to the application).
pub(crate) type MembersMap = Arc<std::sync::Mutex<HashMap<ChannelName, Vec<Member>>>>;

/// Settings of a [`Subscriber`]; made by [`Subscriber::builder`].
///
/// | setting | default |
/// |---|---|
/// | [`token_provider`](Self::token_provider) | none: private channels need [`Subscriber::listen_with_token`] |
/// | [`reconnect_backoff`](Self::reconnect_backoff) | 500 ms doubling up to 30 s, jittered |
/// | [`max_reconnect_attempts`](Self::max_reconnect_attempts) | unlimited |
/// | [`connect_timeout`](Self::connect_timeout) | 10 s |
/// | [`request_timeout`](Self::request_timeout) | 10 s |
///
/// ```no_run
/// # async fn run() -> Result<(), herald_sdk::Error> {
/// use std::time::Duration;
/// use herald_sdk::Subscriber;
///
/// let subscriber = Subscriber::builder("http://127.0.0.1:8080", "acme")
///     .reconnect_backoff(Duration::from_millis(200), Duration::from_secs(10))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
pub struct SubscriberBuilder {
    url: String,
    project_id: String,
    token_provider: Option<TokenProvider>,
    backoff: Backoff,
    max_reconnect_attempts: Option<u32>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl fmt::Debug for SubscriberBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberBuilder")
            .field("url", &self.url)
            .field("project_id", &self.project_id)
            .field("token_provider", &self.token_provider.is_some())
            .field("backoff", &self.backoff)
            .field("max_reconnect_attempts", &self.max_reconnect_attempts)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl SubscriberBuilder {
    /// The async callback that fetches a token for a private channel: on
    /// [`Subscriber::listen`] and again on every reconnection, so re-listened channels get
    /// fresh tokens. Typically it asks your backend, which calls
    /// [`PrivateChannel::get_client_auth_token`](crate::PrivateChannel::get_client_auth_token).
    /// Any error type that converts into `Box<dyn Error + Send + Sync>` will do; failures
    /// surface as [`Error::TokenProvider`].
    ///
    /// ```no_run
    /// # async fn run(publisher: herald_sdk::Publisher) -> Result<(), herald_sdk::Error> {
    /// use herald_sdk::{ChannelName, Subscriber};
    ///
    /// let subscriber = Subscriber::builder("http://127.0.0.1:8080", "acme")
    ///     .token_provider(move |channel: ChannelName| {
    ///         let publisher = publisher.clone();
    ///         async move {
    ///             let token = publisher
    ///                 .build_private_channel(&channel)?
    ///                 .get_client_auth_token()
    ///                 .await?;
    ///             Ok::<_, herald_sdk::Error>(token.token)
    ///         }
    ///     })
    ///     .connect()
    ///     .await?;
    /// subscriber.listen("private-user-42").await?;
    /// # Ok(()) }
    /// ```
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn(ChannelName) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.token_provider = Some(Arc::new(move |channel| -> TokenFuture {
            let token = provider(channel);
            Box::pin(async move { token.await.map_err(|e| Cause::from(e.into())) })
        }));
        self
    }

    /// Delay before the first reconnection attempt and the longest delay between attempts.
    /// Delays double from one attempt to the next, with random jitter (between half and all of
    /// the delay), so clients dropped together do not come back together.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = herald_sdk::Subscriber::builder("http://127.0.0.1:8080", "acme")
    ///     .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5));
    /// ```
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(initial, max);
        self
    }

    /// Consecutive failed reconnection attempts after which the subscriber gives up and
    /// closes ([`ConnectionState::Closed`] with the last error). Unlimited by default.
    ///
    /// ```
    /// let builder = herald_sdk::Subscriber::builder("http://127.0.0.1:8080", "acme")
    ///     .max_reconnect_attempts(20);
    /// ```
    pub fn max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.max_reconnect_attempts = Some(attempts);
        self
    }

    /// Timeout of one connection attempt: TCP, TLS, WebSocket and Socket.IO handshakes.
    ///
    /// ```
    /// let builder = herald_sdk::Subscriber::builder("http://127.0.0.1:8080", "acme")
    ///     .connect_timeout(std::time::Duration::from_secs(3));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Timeout of [`listen`](Subscriber::listen) and [`remove`](Subscriber::remove),
    /// including the token provider and waiting for a reconnection; also bounds each token
    /// fetch and acknowledgement when channels are re-listened after a reconnection.
    ///
    /// ```
    /// let builder = herald_sdk::Subscriber::builder("http://127.0.0.1:8080", "acme")
    ///     .request_timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Connects (one attempt; automatic reconnection starts once connected).
    ///
    /// Fails with [`Error::InvalidName`] for a bad project id, [`Error::Config`] for a bad
    /// URL, [`Error::Refused`] when Herald refuses the handshake (for example
    /// [`ErrorCode::UnknownProject`](crate::ErrorCode::UnknownProject)), and
    /// [`Error::Transport`] / [`Error::Timeout`] when it cannot be reached.
    ///
    /// ```no_run
    /// # async fn run() {
    /// use herald_sdk::{Error, ErrorCode, Subscriber};
    ///
    /// match Subscriber::builder("http://127.0.0.1:8080", "nope").connect().await {
    ///     Err(e) if e.code() == Some(ErrorCode::UnknownProject) => eprintln!("no such project"),
    ///     Err(e) => eprintln!("cannot connect: {e}"),
    ///     Ok(subscriber) => { /* listen … */ }
    /// }
    /// # }
    /// ```
    pub async fn connect(self) -> Result<Subscriber, Error> {
        let project = ProjectId::parse(&self.project_id)?;
        let config = herald_client_core::Config {
            auth: HandshakeAuth {
                project_id: project.clone(),
            },
            has_token_provider: self.token_provider.is_some(),
            backoff: self.backoff,
            max_reconnect_attempts: self.max_reconnect_attempts,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            seed: rand::random(),
        };
        let url = socket_url(&self.url)?;
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (connected_tx, connected) = oneshot::channel();
        let members = MembersMap::default();
        let task = Task::new(
            config,
            url,
            self.token_provider,
            task::Handle {
                commands: commands_rx,
                events: events_tx,
                shutdown: shutdown_rx,
                connected: connected_tx,
                members: members.clone(),
            },
        );
        let handle = tokio::spawn(task.run());
        connected.await.map_err(|_| Error::Closed)??;
        Ok(Subscriber {
            commands: commands_tx,
            events: tokio::sync::Mutex::new(events_rx),
            shutdown: shutdown_tx,
            task: std::sync::Mutex::new(Some(handle)),
            request_timeout: self.request_timeout,
            project,
            members,
        })
    }
}

/// The server's Engine.IO WebSocket URL ([`herald_client_core::socket_url`]), parsed.
fn socket_url(raw: &str) -> Result<Url, Error> {
    let url = herald_client_core::socket_url(raw).map_err(Error::Config)?;
    Url::parse(&url).map_err(|e| Error::Config(format!("invalid URL {raw:?}: {e}")))
}

/// What a [`Subscriber`] yields.
///
/// ```no_run
/// # async fn run(subscriber: herald_sdk::Subscriber) {
/// use herald_sdk::{SubscriberEvent, SystemMessageCode};
///
/// while let Some(event) = subscriber.next().await {
///     match event {
///         SubscriberEvent::Event(e) => {
///             let order: Result<u64, _> = serde_json::from_value(e.payload);
///             println!("{}: {order:?}", e.channel_name);
///         }
///         SubscriberEvent::System(m) if m.code == SystemMessageCode::RemovedFromChannel => {
///             eprintln!("access revoked: {}", m.message);
///         }
///         SubscriberEvent::RelistenFailed { channel, error } => {
///             eprintln!("no longer listening to {channel}: {error}");
///         }
///         SubscriberEvent::Recovery(r) if !r.recovered => {
///             let why = r.reason.map_or("", |reason| reason.as_str());
///             eprintln!("{}: events were missed ({why}); reload its state", r.channel);
///         }
///         _ => {}
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SubscriberEvent {
    /// An event published to a channel this subscriber listens to.
    Event(ChannelEvent),
    /// A notice from the server: the result of a `listen` / `remove` (`Success` / `Error`), or
    /// `RemovedFromChannel` when the API key behind a private channel's token was deleted or
    /// expired (those channels are dropped from the re-listen set too).
    System(SystemMessage),
    /// The connection changed state.
    State(ConnectionState),
    /// After a reconnection, a channel could not be listened to again (the token provider
    /// failed, the server refused, or no answer came in time). It has been dropped from the
    /// set of channels to re-listen; call [`Subscriber::listen`] to try again.
    RelistenFailed {
        /// The channel.
        channel: ChannelName,
        /// Why.
        error: Error,
    },
    /// Whether a channel's events are whole: after each reconnection, one per re-listened
    /// channel (before [`ConnectionState::Connected`]), and when a gap in its offsets was
    /// seen. The subscriber remembers each channel's last position (epoch, offset) and
    /// re-listens with it, so the server first delivers the events published while the
    /// connection was down: `recovered: true`. `recovered: false` means some were not
    /// delivered: [`RecoveryReason`](crate::RecoveryReason) `HistoryExpired`, `EpochChanged`
    /// (e.g. the server restarted without its history), `HistoryDisabled` (the project keeps
    /// none), or `OffsetGap` (a gap seen live); re-sync that channel's state another way.
    Recovery(crate::ChannelRecovery),
    /// A member joined (`MemberAdded`: the user's first client) or left (`MemberRemoved`: its
    /// last) a presence channel this subscriber listens to. Events are applied in the order
    /// of the channel's presence version: a stale one is dropped, and after a missed one the
    /// subscriber re-syncs the channel by itself ([`SubscriberEvent::PresenceSynced`]).
    /// [`Subscriber::members`] already includes the change.
    Presence(crate::PresenceChange),
    /// A presence channel's whole member list (this subscriber's own member included): from
    /// the server's answer to `listen`, after every reconnection (joins and leaves while the
    /// connection was down are never replayed: compare with the list you had), and after a
    /// re-sync. Replace what you show with it.
    PresenceSynced {
        /// The presence channel.
        channel: ChannelName,
        /// Its members, ordered by user id.
        members: Vec<Member>,
    },
}

/// The state of a [`Subscriber`]'s connection.
///
/// ```no_run
/// # async fn run(subscriber: herald_sdk::Subscriber) {
/// use herald_sdk::{ConnectionState, SubscriberEvent};
///
/// while let Some(event) = subscriber.next().await {
///     match event {
///         SubscriberEvent::State(ConnectionState::Reconnecting { attempt, delay, cause }) => {
///             eprintln!("connection lost ({cause}); attempt {attempt} in {delay:?}");
///         }
///         SubscriberEvent::State(ConnectionState::Connected) => eprintln!("back online"),
///         SubscriberEvent::State(ConnectionState::Closed { cause: Some(cause) }) => {
///             eprintln!("gave up: {cause}");
///         }
///         _ => {}
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected, and every channel of the previous connection re-listened (or reported with
    /// [`SubscriberEvent::RelistenFailed`]). Also the first event after
    /// [`connect`](SubscriberBuilder::connect).
    Connected,
    /// The connection was lost (or an attempt to restore it failed); attempt number
    /// `attempt` starts after `delay`.
    Reconnecting {
        /// 1 for the first attempt after a loss.
        attempt: u32,
        /// How long until this attempt.
        delay: Duration,
        /// Why the connection (or the previous attempt) failed.
        cause: Error,
    },
    /// Closed for good; the stream ends after this. `cause` is `None` after
    /// [`Subscriber::close`], otherwise the error that stopped reconnection: a refused
    /// handshake (for example the project was deleted) or the last failure once
    /// [`max_reconnect_attempts`](SubscriberBuilder::max_reconnect_attempts) is reached.
    Closed {
        /// Why, unless closed on request.
        cause: Option<Error>,
    },
}

/// A connection to Herald's client gateway: listens to channels and yields their events.
///
/// The connection runs in a background task: it answers the server's heartbeats, and when the
/// connection drops it reconnects with backoff and listens again to every channel (asking the
/// [token provider](SubscriberBuilder::token_provider) for fresh tokens for private ones).
///
/// Read events with [`next`](Self::next), or use the subscriber as a
/// [`Stream`](futures_util::Stream). Every method takes `&self`, so one task can read events
/// while others call [`listen`](Self::listen) (share it in an `Arc`). Read promptly: when
/// 1024 events are waiting, the subscriber stops reading from the socket, and the server
/// eventually drops it as a slow consumer (it then reconnects).
///
/// Dropping the subscriber closes the connection; [`close`](Self::close) does so and waits.
///
/// ```no_run
/// # async fn run() -> Result<(), herald_sdk::Error> {
/// use herald_sdk::{Subscriber, SubscriberEvent};
///
/// let subscriber = Subscriber::builder("http://127.0.0.1:8080", "acme").connect().await?;
/// subscriber.listen("orders").await?;
/// while let Some(event) = subscriber.next().await {
///     match event {
///         SubscriberEvent::Event(e) => println!("{}: {}", e.channel_name, e.payload),
///         SubscriberEvent::State(state) => eprintln!("connection: {state:?}"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Subscriber {
    commands: mpsc::UnboundedSender<Command>,
    events: tokio::sync::Mutex<mpsc::Receiver<SubscriberEvent>>,
    shutdown: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    request_timeout: Duration,
    project: ProjectId,
    members: MembersMap,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("project", &self.project)
            .field("closed", &self.commands.is_closed())
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Starts configuring a subscriber for the server at `url` (`http(s)://` or `ws(s)://`,
    /// optionally with a path prefix) and the project `project_id`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), herald_sdk::Error> {
    /// let subscriber = herald_sdk::Subscriber::builder("https://herald.example.com", "acme")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: impl Into<String>, project_id: impl Into<String>) -> SubscriberBuilder {
        SubscriberBuilder {
            url: url.into(),
            project_id: project_id.into(),
            token_provider: None,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            max_reconnect_attempts: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// The project this subscriber is connected to.
    ///
    /// ```no_run
    /// # async fn run(subscriber: herald_sdk::Subscriber) {
    /// println!("connected to {}", subscriber.project_id());
    /// # }
    /// ```
    pub fn project_id(&self) -> &ProjectId {
        &self.project
    }

    /// Listens to `channel` and returns once the server accepted.
    ///
    /// For a private channel the [token provider](SubscriberBuilder::token_provider) is asked
    /// for a token first; without one this fails at once with [`Error::NoTokenProvider`]
    /// (whose [`code`](Error::code) is `token_missing`), or use
    /// [`listen_with_token`](Self::listen_with_token). The name is checked locally
    /// ([`Error::InvalidName`]); a server refusal is [`Error::Refused`] with its code (for
    /// example `token_expired`, `too_many_channels`).
    ///
    /// The channel is listened to again after every reconnection, until
    /// [`remove`](Self::remove)d. Called while reconnecting, it waits for the connection (up
    /// to the [request timeout](SubscriberBuilder::request_timeout)).
    ///
    /// ```no_run
    /// # async fn run(subscriber: herald_sdk::Subscriber) -> Result<(), herald_sdk::Error> {
    /// subscriber.listen("orders").await?;
    /// # Ok(()) }
    /// ```
    pub async fn listen(&self, channel: impl AsRef<str>) -> Result<(), Error> {
        let channel = ChannelName::parse(channel.as_ref())?;
        self.with_timeout("listen", &channel, async {
            self.request(|reply| Command::Listen {
                channel: channel.clone(),
                token: None,
                reply,
            })
            .await
        })
        .await
    }

    /// Listens to `channel` with a token you already have (from
    /// [`PrivateChannel::get_client_auth_token`](crate::PrivateChannel::get_client_auth_token)
    /// or your backend). On reconnection the token provider is asked for a fresh token if
    /// there is one; otherwise this token is used again (and refused once expired, reported
    /// as [`SubscriberEvent::RelistenFailed`]).
    ///
    /// ```no_run
    /// # async fn run(subscriber: herald_sdk::Subscriber, token: String) -> Result<(), herald_sdk::Error> {
    /// subscriber.listen_with_token("private-user-42", token).await?;
    /// # Ok(()) }
    /// ```
    pub async fn listen_with_token(
        &self,
        channel: impl AsRef<str>,
        token: impl Into<String>,
    ) -> Result<(), Error> {
        let channel = ChannelName::parse(channel.as_ref())?;
        let token = token.into();
        self.with_timeout("listen", &channel, async {
            self.request(|reply| Command::Listen {
                channel: channel.clone(),
                token: Some(token),
                reply,
            })
            .await
        })
        .await
    }

    /// Stops listening to `channel` (also after reconnections). Removing a channel that is
    /// not listened to succeeds.
    ///
    /// ```no_run
    /// # async fn run(subscriber: herald_sdk::Subscriber) -> Result<(), herald_sdk::Error> {
    /// subscriber.remove("orders").await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove(&self, channel: impl AsRef<str>) -> Result<(), Error> {
        let channel = ChannelName::parse(channel.as_ref())?;
        self.with_timeout("remove", &channel, async {
            self.request(|reply| Command::Remove {
                channel: channel.clone(),
                reply,
            })
            .await
        })
        .await
    }

    /// The members of the presence channel `channel`, ordered by user id: the server's list
    /// at `listen` with every [`SubscriberEvent::Presence`] since (also those not read yet).
    /// Empty for a channel that is not a presence channel listened to. While reconnecting it
    /// is the list from before the loss, until the [`SubscriberEvent::PresenceSynced`] of the
    /// re-listen.
    ///
    /// ```no_run
    /// # async fn run(subscriber: herald_sdk::Subscriber, token: String) -> Result<(), herald_sdk::Error> {
    /// subscriber.listen_with_token("presence-room-7", token).await?;
    /// for member in subscriber.members("presence-room-7") {
    ///     println!("{} is here", member.user_id);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn members(&self, channel: impl AsRef<str>) -> Vec<Member> {
        let Ok(channel) = ChannelName::parse(channel.as_ref()) else {
            return Vec::new();
        };
        let members = match self.members.lock() {
            Ok(map) => map.get(&channel).cloned(),
            Err(poisoned) => poisoned.into_inner().get(&channel).cloned(),
        };
        members.unwrap_or_default()
    }

    /// The next event; `None` once the subscriber is closed and every buffered event has been
    /// read.
    ///
    /// ```no_run
    /// # async fn run(subscriber: herald_sdk::Subscriber) {
    /// use herald_sdk::SubscriberEvent;
    /// while let Some(event) = subscriber.next().await {
    ///     if let SubscriberEvent::Event(e) = event {
    ///         println!("{:?} on {}: {}", e.id, e.channel_name, e.payload);
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn next(&self) -> Option<SubscriberEvent> {
        self.events.lock().await.recv().await
    }

    /// Closes the connection (politely: Socket.IO disconnect, then WebSocket close) and waits
    /// for the background task to end. Pending and later calls fail with [`Error::Closed`];
    /// the stream yields [`ConnectionState::Closed`] and ends. Closing twice is harmless.
    ///
    /// ```no_run
    /// # async fn run(subscriber: herald_sdk::Subscriber) {
    /// subscriber.close().await;
    /// # }
    /// ```
    pub async fn close(&self) {
        self.shutdown.send_replace(true);
        let handle = match self.task.lock() {
            Ok(mut task) => task.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            // The task never panics by design; if it did, there is nothing left to close.
            let _ = handle.await;
        }
    }

    /// The session times requests out itself; this bound (a second later) only covers a task
    /// that cannot run the session, e.g. while it waits for the application to read events.
    async fn with_timeout(
        &self,
        what: &str,
        channel: &ChannelName,
        request: impl Future<Output = Result<(), Error>>,
    ) -> Result<(), Error> {
        let slack = Duration::from_secs(1);
        tokio::time::timeout(self.request_timeout + slack, request)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "after {:?} waiting for {what} {channel}",
                    self.request_timeout
                ))
            })?
    }

    async fn request(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), Error>>) -> Command,
    ) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

impl Stream for Subscriber {
    type Item = SubscriberEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubscriberEvent>> {
        self.get_mut().events.get_mut().poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls() -> Result<(), Error> {
        let cases = [
            (
                "http://127.0.0.1:8080",
                "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket",
            ),
            (
                "https://example.com/herald",
                "wss://example.com/herald/socket.io/?EIO=4&transport=websocket",
            ),
            (
                "ws://example.com/?x=1",
                "ws://example.com/socket.io/?EIO=4&transport=websocket",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(socket_url(input)?.as_str(), expected);
        }
        assert!(matches!(socket_url("ftp://x"), Err(Error::Config(_))));
        assert!(matches!(socket_url("nope"), Err(Error::Config(_))));
        Ok(())
    }
}
