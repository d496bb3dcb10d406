//! Claims of a private-channel token (an HS256 JWT signed with the project's secret).
//!
//! Herald's server signs these in `POST /v1/publishers/sign` and checks them on `listen`.
//! Clients treat the token as opaque.

use serde::{Deserialize, Serialize};

use crate::api::ApiKeyId;
use crate::names::{ChannelName, ProjectId};
use crate::presence::{MemberInfo, UserId};

/// The one signing algorithm Herald issues and accepts.
pub const CHANNEL_TOKEN_ALGORITHM: &str = "HS256";

/// The `iss` claim of every channel token Herald signs.
pub const CHANNEL_TOKEN_ISSUER: &str = "herald";

/// The claims of a channel token.
///
/// ```
/// use herald_protocol::{ApiKeyId, ChannelName, ChannelTokenClaims, ProjectId};
/// let claims = ChannelTokenClaims {
///     aud: "herald-channel".into(),
///     iss: "herald".into(),
///     iat: 1_700_000_000,
///     nbf: None,
///     exp: 1_700_000_600,
///     channel_name: ChannelName::parse("private-u1")?,
///     project_id: ProjectId::parse("acme")?,
///     api_key_id: ApiKeyId::parse("0123456789abcdef")?,
///     sub: None,
///     info: None,
/// };
/// let json = serde_json::to_value(&claims).unwrap();
/// assert_eq!(json["channelName"], "private-u1");
/// assert_eq!(json["apiKeyId"], "0123456789abcdef");
/// # Ok::<(), herald_protocol::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelTokenClaims {
    /// Audience: the server's configured channel audience (default `herald-channel`).
    pub aud: String,
    /// Issuer: always [`CHANNEL_TOKEN_ISSUER`].
    pub iss: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Not before, seconds since the Unix epoch (Herald does not set it; honoured if present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The one private or presence channel this token opens.
    pub channel_name: ChannelName,
    /// The project the channel belongs to.
    pub project_id: ProjectId,
    /// The API key that signed: the token dies with it.
    pub api_key_id: ApiKeyId,
    /// Presence channels: the member's user id (required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<UserId>,
    /// Presence channels: the member's info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<MemberInfo>,
}
