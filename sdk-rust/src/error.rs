//! The one error type of the SDK.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::{ChannelKind, ChannelName, ErrorCode, NameError};

/// A shareable, type-erased error cause.
pub(crate) type Cause = Arc<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in the SDK.
///
/// Errors Herald answered with keep the server's [`ErrorCode`] (and, on REST, the HTTP
/// status), so you can match on the code rather than on message text:
///
/// ```
/// use herald_sdk::{Error, ErrorCode};
///
/// fn explain(err: &Error) -> &'static str {
///     match err.code() {
///         Some(ErrorCode::MissingScope) => "the API key lacks a scope",
///         Some(ErrorCode::UnknownApiKey) => "the API key is wrong or was deleted",
///         Some(ErrorCode::InvalidChannelName) => "bad channel name (caught before sending)",
///         _ if err.is_retryable() => "transient, try again later",
///         _ => "something else",
///     }
/// }
/// # let _ = explain;
/// ```
///
/// Errors are cheap to clone, so they can travel in [`SubscriberEvent`](crate::SubscriberEvent)s.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing or wrong: an unparseable URL, a malformed API key, an unset
    /// environment variable, an unreadable key file. Raised before any network traffic.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A channel name or project id breaks Herald's naming rules. Raised before any request
    /// is sent, with the same rules the server applies.
    #[error(transparent)]
    InvalidName(#[from] NameError),

    /// A public channel name was given where a private one was expected, or the reverse
    /// (`build_private_channel("orders")`, `build_channel("private-u1")`).
    #[error("{channel} is not a {expected} channel", expected = kind_name(*.expected))]
    WrongChannelKind {
        /// The name that was given.
        channel: ChannelName,
        /// The kind the call needed.
        expected: ChannelKind,
    },

    /// A presence member's `userId` or `userInfo` breaks its rule
    /// ([`invalid_user_id`](ErrorCode::InvalidUserId),
    /// [`presence_info_too_large`](ErrorCode::PresenceInfoTooLarge), or
    /// [`invalid_body`](ErrorCode::InvalidBody) for info that is not a JSON object). Raised
    /// before the request is sent, with the rules the server applies.
    #[error("{message}")]
    InvalidMember {
        /// The code the server would answer.
        code: ErrorCode,
        /// What is wrong.
        message: String,
    },

    /// The payload's JSON is larger than the limit configured with
    /// [`PublisherBuilder::max_payload_bytes`](crate::PublisherBuilder::max_payload_bytes).
    /// Raised before the request is sent.
    #[error("payload is {size} bytes of JSON; the limit is {limit}")]
    PayloadTooLarge {
        /// The payload's JSON size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The payload could not be serialized to JSON.
    #[error("payload cannot be encoded as JSON: {0}")]
    Encode(Arc<serde_json::Error>),

    /// Herald's REST API answered with an error body `{"error": {"code", "message"}}`.
    #[error("Herald answered HTTP {status} {code}: {message}")]
    Api {
        /// The HTTP status, e.g. 403.
        status: u16,
        /// The server's error code, e.g. [`ErrorCode::MissingScope`].
        code: ErrorCode,
        /// The server's human-readable explanation.
        message: String,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },

    /// An HTTP error without a Herald error body (a proxy or load balancer answered, or the
    /// server sent a code this SDK version does not know).
    #[error("HTTP {status}: {body}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },

    /// Herald refused a socket request: the connection itself (a Socket.IO `connect_error`,
    /// e.g. [`ErrorCode::UnknownProject`]) or a `listen` / `remove` (a failed ack, e.g.
    /// [`ErrorCode::TokenExpired`]).
    #[error("Herald refused: {code}: {message}")]
    Refused {
        /// The server's error code.
        code: ErrorCode,
        /// The server's human-readable explanation.
        message: String,
    },

    /// Herald could not be reached or the connection broke (DNS, TCP, TLS, WebSocket).
    #[error("{context}: {cause}")]
    Transport {
        /// What the SDK was doing.
        context: String,
        /// The underlying error.
        #[source]
        cause: Cause,
    },

    /// A request or an acknowledgement did not arrive in time.
    #[error("timed out {0}")]
    Timeout(String),

    /// The server sent something this SDK does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// `listen` on a private channel, but the subscriber has no
    /// [token provider](crate::SubscriberBuilder::token_provider). Raised locally, without a
    /// round trip; its [`code`](Error::code) is [`ErrorCode::TokenMissing`], the code the
    /// server would answer. Use [`Subscriber::listen_with_token`](crate::Subscriber::listen_with_token)
    /// or configure a provider.
    #[error("{0} is private: configure a token provider or use listen_with_token")]
    NoTokenProvider(ChannelName),

    /// The subscriber's token provider failed.
    #[error("token provider failed for {channel}: {cause}")]
    TokenProvider {
        /// The channel a token was asked for.
        channel: ChannelName,
        /// The provider's error.
        #[source]
        cause: Cause,
    },

    /// The subscriber is closed (by [`close`](crate::Subscriber::close), or for good after a
    /// refused reconnection).
    #[error("the subscriber is closed")]
    Closed,
}

fn kind_name(kind: ChannelKind) -> &'static str {
    kind.as_str()
}

impl Error {
    /// The Herald error code: the server's, or, for errors raised locally before sending, the
    /// code the server would have answered with.
    ///
    /// ```
    /// use herald_sdk::{Error, ErrorCode, Publisher};
    ///
    /// let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
    /// let publisher = Publisher::builder("http://127.0.0.1:8080", key).build()?;
    /// let err = publisher.build_channel("not valid!").unwrap_err();
    /// assert_eq!(err.code(), Some(ErrorCode::InvalidChannelName));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::InvalidName(e) => Some(e.code()),
            Error::WrongChannelKind {
                expected: ChannelKind::Private,
                ..
            } => Some(ErrorCode::ChannelNotPrivate),
            Error::WrongChannelKind {
                expected: ChannelKind::Presence,
                ..
            } => Some(ErrorCode::NotPresenceChannel),
            Error::InvalidMember { code, .. } => Some(*code),
            Error::PayloadTooLarge { .. } => Some(ErrorCode::PayloadTooLarge),
            Error::Api { code, .. } | Error::Refused { code, .. } => Some(*code),
            Error::NoTokenProvider(_) => Some(ErrorCode::TokenMissing),
            _ => None,
        }
    }

    /// The HTTP status of a REST error.
    ///
    /// ```
    /// # use herald_sdk::Error;
    /// # fn check(err: Error) {
    /// if err.status() == Some(403) {
    ///     eprintln!("forbidden: {err}");
    /// }
    /// # }
    /// ```
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: connection failures, timeouts, HTTP 429 and
    /// 5xx, and socket refusals with a server-side code. Never true for a client mistake.
    ///
    /// ```
    /// # use herald_sdk::Error;
    /// assert!(Error::Timeout("waiting".into()).is_retryable());
    /// assert!(!Error::Config("no URL".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Timeout(_) => true,
            Error::Api { status, .. } | Error::Http { status, .. } => {
                *status == 429 || *status >= 500
            }
            Error::Refused { code, .. } => code.http_status() >= 500,
            _ => false,
        }
    }

    /// The `Retry-After` the server sent with this error, if any.
    ///
    /// ```
    /// # use herald_sdk::Error;
    /// # fn check(err: Error) {
    /// if let Some(wait) = err.retry_after() {
    ///     eprintln!("rate limited; retry in {wait:?}");
    /// }
    /// # }
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } | Error::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A transport error whose cause is `cause` with its whole source chain as text (the
    /// transport crates are not part of this crate's API).
    pub(crate) fn transport(context: impl Into<String>, cause: &(dyn StdError + 'static)) -> Self {
        Error::Transport {
            context: context.into(),
            cause: Arc::new(Message(chain(cause))),
        }
    }
}

/// A plain-text error cause.
#[derive(Debug)]
pub(crate) struct Message(pub String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Message {}

/// Formats an error with its chain of sources: `a: b: c`.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
