//! # herald-client-core
//!
//! The client side of Herald's protocol, written once and without I/O: a [`Session`] is a
//! state machine that the Rust client (`herald-sdk`, with tokio), the browser client
//! (`herald-wasm`, with the JavaScript event loop) and, through `herald-sdk`, the mobile
//! bindings drive. It owns every protocol decision: the Engine.IO / Socket.IO handshake, the
//! request table and acknowledgement matching, resending and timing out requests, heartbeats,
//! reconnection with jittered backoff, re-listening every channel after a reconnection (asking
//! for fresh tokens for private ones, and recovering the missed events from the position it
//! remembers per channel, reported as [`Output::Recovery`]), `RemovedFromChannel` and `slow_consumer`,
//! and the members of presence channels ([`Session::members`], [`Output::Presence`],
//! [`Output::PresenceSynced`]) with the ordering rule of their versions (re-synced after a gap
//! and after every reconnection).
//!
//! A driver only moves bytes and time:
//!
//! * it feeds inputs: the application's commands ([`Session::connect`], [`Session::listen`],
//!   [`Session::remove`], [`Session::close`]), transport news ([`Session::transport_frame`],
//!   [`Session::transport_closed`]), tokens ([`Session::token_ready`]) and the clock
//!   ([`Session::handle_timeout`] once [`Session::next_timeout`] is reached);
//! * after each input it drains [`Session::poll_output`]: frames to send, a transport to open
//!   or close, a token to fetch, events, system messages and state changes for the
//!   application, and requests to complete.
//!
//! Time is an [`Instant`] on the driver's monotonic clock and randomness (backoff jitter) is
//! a seed, so the unit tests run whole reconnection stories in microseconds with a fake clock.
//! The crate has no platform dependency and builds for `wasm32-unknown-unknown`.

mod backoff;
mod error;
mod presence;
mod session;
mod time;
mod url;

pub use backoff::Backoff;
pub use error::SessionError;
pub use presence::PresenceChange;
pub use session::{
    ChannelRecovery, Config, ConnId, FetchId, Output, RecoveryReason, RequestId, Session, State,
    TransportEnd,
};
pub use time::Instant;
pub use url::socket_url;
