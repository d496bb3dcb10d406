//! Default limits. The server makes each one configurable; clients use them to fail early.

/// Largest event payload (the JSON `payload` value, in bytes) the publisher API and the socket
/// accept by default: 64 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Extra room allowed on top of the payload for the envelope around it (`channelName`, keys,
/// framing). Body and frame limits are `max payload + ENVELOPE_ALLOWANCE_BYTES`.
pub const ENVELOPE_ALLOWANCE_BYTES: usize = 1024;

/// How many channels one socket may listen to at once by default.
pub const DEFAULT_MAX_CHANNELS_PER_SOCKET: usize = 128;

/// Seconds a socket may stay connected at the Engine.IO level without joining the namespace
/// (sending the Socket.IO CONNECT packet) before it is closed.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;

/// Default lifetime of a private-channel token: 10 minutes.
pub const DEFAULT_CHANNEL_TOKEN_TTL_SECS: u64 = 600;

/// Default cap on a private-channel token's lifetime: 1 hour. A token whose `exp - iat`, or
/// whose `exp - now`, is longer is refused (`token_lifetime_exceeded`), whoever signed it; the
/// server's signing lifetime may not exceed it.
pub const DEFAULT_MAX_CHANNEL_TOKEN_TTL_SECS: u64 = 3600;

/// Default `aud` claim of private-channel tokens.
pub const DEFAULT_CHANNEL_AUTH_AUDIENCE: &str = "herald-channel";

/// Clock skew tolerated when checking `exp` and `nbf` of a channel token, in seconds.
pub const CHANNEL_TOKEN_LEEWAY_SECS: u64 = 5;

/// Longest accepted API key or project display name, in characters (Unicode scalar values, as
/// JSON Schema's `maxLength` counts them), before trimming.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;

/// Deepest nesting of arrays and objects accepted in an event payload (REST publish, client
/// `event`) and in the handshake `auth`: 32 levels. Deeper is refused with `payload_too_deep`.
/// See [`crate::depth`].
pub const MAX_JSON_DEPTH: usize = 32;

/// Seconds a client may take to send a complete request head, from the moment the connection
/// is accepted or, on a kept-alive connection, from the first byte of the next request.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;

/// Seconds a client may take to send a whole request body, from the end of the request head.
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 30;

/// Bytes of a request body a server reads and discards after refusing it unread (e.g. `413`),
/// so the client gets the answer rather than a connection reset; a larger rest is not read and
/// the connection closes after the answer.
pub const UNREAD_BODY_DRAIN_BYTES: usize = 4 * 1024 * 1024;

/// Seconds a kept-alive HTTP connection may wait for its next request (no request in flight,
/// no byte received) before the server closes it: 75 s, above the 60 s idle timeout load
/// balancers commonly use towards their backends, so that the balancer closes an idle pooled
/// connection first and never sends a request into a connection Herald is closing.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 75;

/// Connections one client address (an IPv4 address, or an IPv6 /64) may hold open at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;
