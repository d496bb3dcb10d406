//! # herald-sdk
//!
//! The Rust SDK for [Herald](https://example.invalid/herald), a real-time channel pub/sub
//! gateway: backend services **publish** events to channels over REST; clients hold a
//! Socket.IO connection and **subscribe** to the channels they listen to.
//!
//! * [`Publisher`]: publish to public and private channels, sign private-channel tokens.
//! * [`Subscriber`]: listen to channels over Socket.IO (WebSocket), with automatic
//!   reconnection that listens again to every channel.
//! * [`Error`]: one error type that keeps the server's [`ErrorCode`] and HTTP status.
//!
//! Names, messages and error codes come from [`herald_protocol`], the same crate the server
//! uses, so a name this SDK accepts is a name the server accepts.
//!
//! ## Publishing
//!
//! A publisher needs the server URL and an API key with the `publish_event` scope (and
//! `sign_token` to sign tokens), created with `herald admin key create`.
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_sdk::Error> {
//! use herald_sdk::Publisher;
//!
//! let publisher = Publisher::builder("http://127.0.0.1:8080", std::env::var("KEY").unwrap_or_default())
//!     .build()?;
//! let orders = publisher.build_channel("orders")?; // name checked here, before any request
//! let message_id = orders
//!     .publish_message(&serde_json::json!({"order": 42, "status": "shipped"}))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Payloads are anything `Serialize`; subscribers receive them as JSON, byte for byte, with
//! the message id as `event.id`.
//!
//! ### Configuration from the environment
//!
//! [`Publisher::from_env`] reads `HERALD_URL` and the key from `HERALD_API_KEY` or, for a
//! mounted secret, from the file named by `HERALD_API_KEY_FILE` (whitespace trimmed). The key
//! is held in a secret type: it never appears in `Debug` output or error messages.
//!
//! ```no_run
//! let publisher = herald_sdk::Publisher::from_env()?;
//! # Ok::<(), herald_sdk::Error>(())
//! ```
//!
//! ### Retries
//!
//! Failed calls are retried with jittered exponential backoff on connection errors,
//! timeouts, HTTP 429 (waiting for its `Retry-After`) and 5xx, never on another 4xx: a client
//! mistake does not fix itself. Token signing is retried by default. **Publishing is not
//! retried by default**, because it is not idempotent: after a timeout or a 5xx the event may
//! already have been delivered, and a retry would deliver it twice. Turn it on with
//! [`PublisherBuilder::retry_publish`] when your subscribers tolerate duplicates.
//!
//! ## Private channels
//!
//! Channels named `private-…` need a token to listen to. Your backend signs one per client
//! and channel; the token names the channel, the project and the signing key, and expires
//! (10 minutes by default).
//!
//! ```no_run
//! # async fn run(publisher: herald_sdk::Publisher) -> Result<(), herald_sdk::Error> {
//! let inbox = publisher.build_private_channel("private-user-42")?;
//! let token = inbox.get_client_auth_token().await?; // needs the sign_token scope
//! // … hand token.token to user 42's client, then:
//! inbox.publish_message(&serde_json::json!({"text": "hello"})).await?;
//! # Ok(()) }
//! ```
//!
//! ## Subscribing
//!
//! A subscriber connects to one project and listens to channels. Events, server notices and
//! connection changes arrive on one stream of [`SubscriberEvent`]s.
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_sdk::Error> {
//! use herald_sdk::{Subscriber, SubscriberEvent};
//!
//! let subscriber = Subscriber::builder("http://127.0.0.1:8080", "acme").connect().await?;
//! subscriber.listen("orders").await?;
//! while let Some(event) = subscriber.next().await {
//!     match event {
//!         SubscriberEvent::Event(e) => println!("{} {:?}: {}", e.channel_name, e.id, e.payload),
//!         SubscriberEvent::System(m) => println!("server says: {}", m.message),
//!         SubscriberEvent::State(s) => println!("connection: {s:?}"),
//!         SubscriberEvent::RelistenFailed { channel, error } => eprintln!("lost {channel}: {error}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! For private channels, give the subscriber a **token provider**: an async callback asked
//! for a token on [`Subscriber::listen`] and again after each reconnection. Without one,
//! `listen` on a private channel fails at once with [`Error::NoTokenProvider`] (code
//! `token_missing`); [`Subscriber::listen_with_token`] takes a token you already have.
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_sdk::Error> {
//! use herald_sdk::{ChannelName, Subscriber};
//!
//! async fn token_from_my_backend(channel: &str) -> Result<String, std::io::Error> {
//!     // e.g. an authenticated HTTP call to your backend, which signs with a Publisher
//! #   Ok(channel.to_owned())
//! }
//!
//! let subscriber = Subscriber::builder("http://127.0.0.1:8080", "acme")
//!     .token_provider(|channel: ChannelName| async move {
//!         token_from_my_backend(channel.as_str()).await
//!     })
//!     .connect()
//!     .await?;
//! subscriber.listen("private-user-42").await?;
//! # Ok(()) }
//! ```
//!
//! ### Reconnection
//!
//! When the connection drops (server restart, network change, missed heartbeats) the
//! subscriber yields [`ConnectionState::Reconnecting`] and tries again with jittered
//! exponential backoff ([`SubscriberBuilder::reconnect_backoff`]). Once connected it listens
//! again to every channel, with fresh tokens from the provider, then yields
//! [`ConnectionState::Connected`]; a channel that cannot be re-listened is reported as
//! [`SubscriberEvent::RelistenFailed`] and dropped. A `RemovedFromChannel` system message
//! (the API key behind a token was deleted) drops its channels too. A refused handshake (the
//! project was deleted) or [`SubscriberBuilder::max_reconnect_attempts`] failures end in
//! [`ConnectionState::Closed`]. Events published while disconnected are not replayed.
//!
//! ## Errors
//!
//! Every failure is an [`Error`]. Server refusals keep their code: REST errors are
//! [`Error::Api`] (code and HTTP status), socket refusals [`Error::Refused`]. Mistakes the
//! SDK can see (a bad channel name, a public name given as private, an oversized payload) fail
//! before any request, and [`Error::code`] still gives the code the server would have used.
//!
//! ```no_run
//! # async fn run(publisher: herald_sdk::Publisher) {
//! use herald_sdk::{Error, ErrorCode};
//!
//! match publisher.build_channel("orders") {
//!     Ok(orders) => match orders.publish_message("hi").await {
//!         Ok(id) => println!("sent {id}"),
//!         Err(Error::Api { code: ErrorCode::MissingScope, .. }) => eprintln!("key cannot publish"),
//!         Err(e) if e.is_retryable() => eprintln!("try again later: {e}"),
//!         Err(e) => eprintln!("failed: {e}"),
//!     },
//!     Err(e) => eprintln!("bad channel: {e}"),
//! }
//! # }
//! ```
#![warn(missing_docs)]

mod backoff;
mod error;
mod publisher;
mod secret;
mod subscriber;

pub use error::Error;
pub use publisher::{Channel, ChannelToken, PrivateChannel, Publisher, PublisherBuilder};
pub use subscriber::{ConnectionState, Subscriber, SubscriberBuilder, SubscriberEvent};

pub use herald_protocol;
pub use herald_protocol::{
    ChannelEvent, ChannelKind, ChannelName, ErrorCode, NameError, ProjectId, SystemMessage,
    SystemMessageCode,
};
