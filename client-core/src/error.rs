//! The session's error type: what the application learns when a request fails, a
//! connection is lost, or the client gives up.

use std::time::Duration;

use herald_protocol::messages::close_codes::SLOW_CONSUMER as SLOW_CONSUMER_CLOSE;
use herald_protocol::{ChannelName, ErrorCode, Refusal};

/// Why a request failed or a connection ended. `D` is the driver's own error (a transport
/// failure or a failed token provider, as the driver's platform describes it); the session
/// only stores and returns it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError<D> {
    /// Herald refused: the handshake (e.g. `unknown_project`), a `listen` (e.g.
    /// `token_expired`) or a `remove`, or it closed the socket as a slow consumer.
    #[error("Herald refused: {code}: {message}")]
    Refused {
        /// The server's code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// No answer in time: the handshake, an acknowledgement, the token provider, a
    /// connection that did not come back, or the server's heartbeat.
    #[error("timed out {0}")]
    Timeout(String),
    /// The server closed the connection (Socket.IO or Engine.IO close, or a WebSocket close
    /// frame with its code).
    #[error("{}", closed_text(*code, reason))]
    ClosedByServer {
        /// The WebSocket close code, when there was one (4008: slow consumer).
        code: Option<u16>,
        /// The reason the server gave.
        reason: String,
    },
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// `listen` on a private channel with no token and no token provider.
    #[error("{0} is private: configure a token provider or pass a token")]
    NoTokenProvider(ChannelName),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The driver's error: the transport failed, or the token provider did.
    #[error(transparent)]
    Driver(D),
}

fn closed_text(code: Option<u16>, reason: &str) -> String {
    match (code, reason.is_empty()) {
        (None, true) => "connection: closed by the server".to_owned(),
        (None, false) => format!("connection: closed by the server ({reason})"),
        (Some(code), true) => format!("connection: closed by the server (code {code})"),
        (Some(code), false) => format!("connection: closed by the server (code {code}: {reason})"),
    }
}

/// A duration in whole milliseconds, for messages. Not `{:?}` of the `Duration`: that is
/// decimal formatting of its own, which the browser client would ship only for these texts
/// (and a `u64`, not `as_millis`'s `u128`, whose formatting is code of its own too).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<D> SessionError<D> {
    pub(crate) fn refused(refusal: Refusal) -> Self {
        SessionError::Refused {
            code: refusal.code,
            message: refusal.message,
        }
    }

    pub(crate) fn timeout_after(timeout: Duration, what: impl std::fmt::Display) -> Self {
        SessionError::Timeout(format!("after {} ms waiting for {what}", millis(timeout)))
    }

    /// The server's code, for refusals (and `token_missing` for [`NoTokenProvider`],
    /// `slow_consumer` for a close with code 4008).
    ///
    /// [`NoTokenProvider`]: SessionError::NoTokenProvider
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            SessionError::Refused { code, .. } => Some(*code),
            SessionError::NoTokenProvider(_) => Some(ErrorCode::TokenMissing),
            SessionError::ClosedByServer {
                code: Some(SLOW_CONSUMER_CLOSE),
                ..
            } => Some(ErrorCode::SlowConsumer),
            _ => None,
        }
    }

    /// Maps the driver's error type.
    pub fn map_driver<E>(self, f: impl FnOnce(D) -> E) -> SessionError<E> {
        match self {
            SessionError::Refused { code, message } => SessionError::Refused { code, message },
            SessionError::Timeout(t) => SessionError::Timeout(t),
            SessionError::ClosedByServer { code, reason } => {
                SessionError::ClosedByServer { code, reason }
            }
            SessionError::Protocol(p) => SessionError::Protocol(p),
            SessionError::NoTokenProvider(c) => SessionError::NoTokenProvider(c),
            SessionError::Closed => SessionError::Closed,
            SessionError::Driver(d) => SessionError::Driver(f(d)),
        }
    }
}
