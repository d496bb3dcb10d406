//! # herald-protocol
//!
//! The one source of truth for Herald's wire contract. The server, the Rust SDK, the browser
//! client and the mobile bindings all use these types; none of them re-states a rule.
//!
//! * [`names`]: validated [`ProjectId`], [`ChannelName`] (public or private) and [`RoomName`].
//! * [`messages`]: what travels over the Socket.IO connection (`listen`, `remove`, `event`,
//!   `system_message`, acks, handshake auth).
//! * [`api`]: the publisher and admin REST bodies, [`ApiKeyScope`] and the API key format.
//! * [`claims`]: the claims of a private-channel token.
//! * [`history`]: per-channel offsets and epochs, retention settings, recovery on `listen`.
//! * [`presence`]: members of `presence-` channels, their events, snapshots and queries.
//! * [`sse`]: the Server-Sent Events transport (subscribe query, framing, resume cursor).
//! * [`csr`]: Socket.IO connection state recovery for the official `socket.io-client` (pid,
//!   event markers, the resume `auth`).
//! * [`error`]: every [`ErrorCode`] Herald answers with, and its HTTP status.
//! * [`limits`]: default limits shared by server and clients; [`depth`]: the JSON nesting
//!   bound of payloads.
//! * `openapi` (feature `openapi`): the OpenAPI schemas of codes and names, built from the
//!   rules above.
//! * `codec` (feature `codec`): the client side of the Socket.IO / Engine.IO framing, shared
//!   by the Rust subscriber and the browser client.
//!
//! ```
//! use herald_protocol::{ChannelName, ChannelKind, ProjectId, RoomName};
//!
//! let project = ProjectId::parse("acme")?;
//! let channel = ChannelName::parse("private-user-42")?;
//! assert_eq!(channel.kind(), ChannelKind::Private);
//! assert_eq!(RoomName::channel(&project, &channel).as_str(), "acme:private-user-42");
//! assert!(ChannelName::parse("privateer").is_err()); // ambiguous: looks private, is not
//! # Ok::<(), herald_protocol::NameError>(())
//! ```
#![warn(missing_docs)]

pub mod api;
pub mod claims;
#[cfg(feature = "codec")]
pub mod codec;
pub mod csr;
pub mod depth;
pub mod error;
pub mod history;
pub mod limits;
pub mod messages;
pub mod names;
pub mod numbers;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod presence;
pub mod sse;
pub mod webhook;

pub use api::{ApiKeyId, ApiKeyScope, ApiKeyToken};
pub use claims::ChannelTokenClaims;
pub use error::{ErrorBody, ErrorCode, ErrorDetail, Refusal};
pub use history::{
    ChannelOffset, Epoch, HistorySettings, ListenAck, ListenAnswer, MissedEventsReason, Recovery,
    RecoveryFailure, StreamPosition,
};
pub use messages::{
    Ack, ChannelEvent, ClientEvent, HandshakeAuth, ListenRequest, RemoveRequest, SystemMessage,
    SystemMessageCode,
};
pub use names::{ChannelKind, ChannelName, NameError, ProjectId, RoomName};
