//! Every error code Herald answers with, on the REST API (in [`ErrorBody`]) and on the socket
//! (in a failed [`Ack`](crate::Ack), an `Error` system message, or a connect error).
//!
//! Codes are stable `snake_case` strings: clients match on them, messages are for humans and
//! may change.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $wire:literal => $status:literal,)*) => {
        /// A machine-readable error code.
        ///
        /// Its OpenAPI schema (feature `openapi`) is written by hand in `openapi.rs` from
        /// [`ErrorCode::ALL`] and [`ErrorCode::as_str`], so it lists exactly the wire strings.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* #[serde(rename = $wire)] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The HTTP status a REST response with this code carries.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// The code as its wire string, e.g. `"missing_scope"`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $wire,)* }
            }
        }
    };
}

error_codes! {

    // --- request shape -----------------------------------------------------------------
    /// The body is not JSON, or not the JSON this endpoint or event takes.
    InvalidBody = "invalid_body" => 400,
    /// A channel name breaks the naming rules.
    InvalidChannelName = "invalid_channel_name" => 400,
    /// A channel name starts like a private channel without being one (see
    /// [`ChannelName`](crate::ChannelName)).
    AmbiguousChannelName = "ambiguous_channel_name" => 400,
    /// A project id breaks the naming rules.
    InvalidProjectId = "invalid_project_id" => 400,
    /// The payload (or the whole body) is larger than the configured limit.
    PayloadTooLarge = "payload_too_large" => 413,
    /// The payload (or the handshake `auth`) nests arrays and objects deeper than
    /// [`MAX_JSON_DEPTH`](crate::limits::MAX_JSON_DEPTH).
    PayloadTooDeep = "payload_too_deep" => 400,
    /// A webhook `url` that is not an `http://` or `https://` URL Herald accepts
    /// ([`WebhookUrl`](crate::webhook::WebhookUrl)).
    InvalidWebhookUrl = "invalid_webhook_url" => 400,
    /// A webhook `events` list that is empty or names an unknown type.
    InvalidWebhookEvents = "invalid_webhook_events" => 400,
    /// An `expiresAt` that is not in the future.
    InvalidExpiry = "invalid_expiry" => 400,
    /// A token was requested for a public channel (tokens are for `private-` and `presence-`
    /// channels).
    ChannelNotPrivate = "channel_not_private" => 400,
    /// A presence call (`presence` query, REST presence) on a channel that is not `presence-`.
    NotPresenceChannel = "not_presence_channel" => 400,
    /// A `userId` that is empty, longer than 128 characters or not printable ASCII.
    InvalidUserId = "invalid_user_id" => 400,
    /// A `userInfo` larger than 1 KiB as JSON (or a token whose `info` claim is).
    PresenceInfoTooLarge = "presence_info_too_large" => 400,
    /// The request's body did not arrive within the body read timeout
    /// (`--body-read-timeout-secs`); the connection is closed after this answer.
    RequestTimeout = "request_timeout" => 408,

    // --- publisher authentication ------------------------------------------------------
    /// No API key in `Authorization: Bearer` or `X-API-Key`.
    MissingApiKey = "missing_api_key" => 401,
    /// The API key is malformed, unknown, or its secret does not match.
    UnknownApiKey = "unknown_api_key" => 401,
    /// The API key has passed its `expiresAt`.
    ExpiredApiKey = "expired_api_key" => 401,
    /// The API key lacks the scope this endpoint needs.
    MissingScope = "missing_scope" => 403,

    // --- admin authentication ----------------------------------------------------------
    /// No admin token in `Authorization: Bearer`.
    MissingAdminToken = "missing_admin_token" => 401,
    /// The admin token does not match.
    InvalidAdminToken = "invalid_admin_token" => 401,

    // --- resources ---------------------------------------------------------------------
    /// The project does not exist.
    ProjectNotFound = "project_not_found" => 404,
    /// A project with this id exists already.
    ProjectExists = "project_exists" => 409,
    /// The API key does not exist in this project.
    ApiKeyNotFound = "api_key_not_found" => 404,
    /// No such route.
    NotFound = "not_found" => 404,
    /// No webhook with that id in the project (also for a malformed id).
    WebhookNotFound = "webhook_not_found" => 404,
    /// No delivery with that id for the webhook (also for a malformed id).
    DeliveryNotFound = "delivery_not_found" => 404,
    /// The project has [`MAX_WEBHOOKS_PER_PROJECT`](crate::webhook::MAX_WEBHOOKS_PER_PROJECT)
    /// webhooks already; delete one first.
    TooManyWebhooks = "too_many_webhooks" => 409,
    /// The route exists but not for this method.
    MethodNotAllowed = "method_not_allowed" => 405,
    /// The request's `Origin` is not in the allowlist.
    OriginNotAllowed = "origin_not_allowed" => 403,
    /// The endpoint is not available in this build or configuration.
    NotImplemented = "not_implemented" => 501,

    // --- socket connection -------------------------------------------------------------
    /// The handshake `auth` has no `projectId`.
    MissingProjectId = "missing_project_id" => 400,
    /// The handshake names a project that does not exist.
    UnknownProject = "unknown_project" => 404,
    /// The socket already listens to the maximum number of channels.
    TooManyChannels = "too_many_channels" => 400,
    /// An event name the server does not handle.
    UnknownEvent = "unknown_event" => 400,
    /// A client `event` on a channel the socket has not joined.
    NotJoined = "not_joined" => 403,
    /// A client `event` on a public channel (client events are for private channels only).
    ClientEventNotAllowed = "client_event_not_allowed" => 403,
    /// The socket did not read its events fast enough: its send queue filled, and the server
    /// closed it (WebSocket close code 4008) after this message. Reconnect and listen again.
    SlowConsumer = "slow_consumer" => 429,

    // --- private channel tokens, in the order they are checked --------------------------
    /// `listen` on a private channel without `authToken`.
    TokenMissing = "token_missing" => 401,
    /// The token is not a JWT at all (wrong shape, bad base64, bad JSON).
    TokenMalformed = "token_malformed" => 401,
    /// The token's signature does not verify with the project's current secret.
    TokenBadSignature = "token_bad_signature" => 401,
    /// The token's `alg` is not exactly `HS256`.
    TokenBadAlgorithm = "token_bad_algorithm" => 401,
    /// The token's `aud` is not Herald's channel audience.
    TokenWrongAudience = "token_wrong_audience" => 401,
    /// The token is past its `exp` (or before its `nbf`).
    TokenExpired = "token_expired" => 401,
    /// The token lives longer than the server accepts: `exp - iat` or `exp - now` is over the
    /// server's `--max-token-ttl-secs`, or `iat` is in the future.
    TokenLifetimeExceeded = "token_lifetime_exceeded" => 401,
    /// The token was signed for another channel.
    TokenChannelMismatch = "token_channel_mismatch" => 401,
    /// The token was signed for another project.
    TokenProjectMismatch = "token_project_mismatch" => 401,
    /// The API key that signed the token has been deleted.
    TokenKeyRevoked = "token_key_revoked" => 401,
    /// The API key that signed the token has expired.
    TokenKeyExpired = "token_key_expired" => 401,
    /// The API key that signed the token no longer has the `sign_token` scope.
    TokenKeyScope = "token_key_scope" => 401,
    /// A token for a presence channel without the member's user id (claim `sub`), or a sign
    /// request for one without `userId`: sign it with `userId`.
    PresenceUserMissing = "presence_user_missing" => 400,
    /// The presence channel has as many members as the server allows
    /// (`--max-presence-members`); another user may join once one leaves.
    PresenceFull = "presence_full" => 403,

    // --- server side -------------------------------------------------------------------
    /// The client's address holds as many connections as `--max-connections-per-ip` allows;
    /// the connection is answered with this and closed. Close idle connections or retry later.
    TooManyConnections = "too_many_connections" => 429,
    /// The server holds as many connections as it may (`--max-connections`); the connection is
    /// answered with this (health endpoints still answer normally) and closed. Retry later,
    /// preferably on another instance.
    AtCapacity = "at_capacity" => 503,
    /// A backend Herald depends on (Redis) is unavailable; retry later.
    Unavailable = "unavailable" => 503,
    /// Sent to sockets only (`system_message`, never a REST answer): events of
    /// `data.channelName` published while this server's link to the other servers (Redis mode)
    /// was down could not be delivered, and history could not fill the gap (`data.reason`:
    /// `history_expired`, `epoch_changed`, `history_disabled`, `unavailable`,
    /// `unknown_position`). Listen again with `since` to recover what can be.
    MissedEvents = "missed_events" => 503,
    /// A server fault. Never used for a client mistake.
    Internal = "internal" => 500,
}

impl ErrorCode {
    /// Whether this code refuses a private-channel token (`token_*`): an authentication
    /// failure, as opposed to a malformed request.
    pub fn is_token_refusal(self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            TokenMissing
                | TokenMalformed
                | TokenBadSignature
                | TokenBadAlgorithm
                | TokenWrongAudience
                | TokenExpired
                | TokenLifetimeExceeded
                | TokenChannelMismatch
                | TokenProjectMismatch
                | TokenKeyRevoked
                | TokenKeyExpired
                | TokenKeyScope
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every REST error: `{ "error": { "code", "message" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and human-readable message of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation. Never holds a secret.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_strings() {
        assert_eq!(ErrorCode::MissingScope.as_str(), "missing_scope");
        assert_eq!(
            ErrorCode::TokenBadAlgorithm.to_string(),
            "token_bad_algorithm"
        );
        let body = ErrorBody::new(ErrorCode::PayloadTooLarge, "too big");
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            serde_json::json!({"error": {"code": "payload_too_large", "message": "too big"}})
        );
    }

    #[test]
    fn token_refusals_are_exactly_the_token_codes() {
        for code in ErrorCode::ALL {
            assert_eq!(
                code.is_token_refusal(),
                code.as_str().starts_with("token_"),
                "{code}"
            );
        }
    }

    #[test]
    fn client_mistakes_are_never_5xx() {
        use ErrorCode::*;
        for code in [
            InvalidBody,
            InvalidChannelName,
            AmbiguousChannelName,
            PayloadTooLarge,
            MissingApiKey,
            UnknownApiKey,
            ExpiredApiKey,
            MissingScope,
        ] {
            assert!(code.http_status() < 500, "{code}");
        }
    }
}

/// A refused request: the code and message Herald answers with, on any transport.
///
/// The parsing functions of this crate return it, so the server maps a bad request to the same
/// code whether it came over REST or the socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl Refusal {
    /// Builds a refusal.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The REST body for this refusal.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }
}

impl From<crate::NameError> for Refusal {
    fn from(e: crate::NameError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    #[test]
    fn wire_strings_match_serde_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let via_serde = serde_json::to_value(code).expect("serializes");
            assert_eq!(via_serde, serde_json::Value::String(code.as_str().into()));
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            let back: ErrorCode = serde_json::from_value(via_serde).expect("deserializes");
            assert_eq!(back, *code);
        }
    }
}
