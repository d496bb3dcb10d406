#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod error;
mod publisher;
mod secret;
mod subscriber;

pub use error::Error;
pub use publisher::{
    Channel, ChannelToken, PresenceChannel, PrivateChannel, Publisher, PublisherBuilder,
};
pub use subscriber::{ConnectionState, Subscriber, SubscriberBuilder, SubscriberEvent};

pub use herald_client_core::{ChannelRecovery, PresenceChange, RecoveryReason};

pub use herald_protocol;
pub use herald_protocol::presence::{Member, MemberInfo, PresenceAction, UserId};
pub use herald_protocol::{
    ChannelEvent, ChannelKind, ChannelName, ErrorCode, NameError, ProjectId, SystemMessage,
    SystemMessageCode,
};
