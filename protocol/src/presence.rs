//! Presence: who is in a `presence-` channel.
//!
//! * A member is a user ([`UserId`], with optional [`MemberInfo`]), not a socket: the token
//!   that opens a presence channel carries both (claims `sub` and `info`, set by
//!   `POST /v1/publishers/sign` from `userId` and `userInfo`). Two sockets of one user are one
//!   member.
//! * The `listen` ack of a presence channel adds the current members and the channel's
//!   presence version ([`PresenceSnapshot`]).
//! * Transitions reach the channel's other sockets as the Socket.IO event `presence`
//!   ([`PresenceEvent`]): `member_added` when a user's first socket joins, `member_removed`
//!   when its last one leaves (remove, disconnect, revocation, instance death).
//! * Every transition increments the channel's version; a client applies an event only when
//!   its `version` is above the snapshot it holds (an event can overtake the ack that
//!   answered a concurrent `listen`). The version starts again from 0 when the channel has
//!   no member left.
//! * A socket in the channel asks for the members with the client event `presence`
//!   `{ "channelName" }` ([`PresenceRequest`]); the ack is a [`PresenceSnapshot`] with `ok`.
//!   The REST API answers [`PresenceMembers`] and [`PresenceCount`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{ErrorCode, Refusal};
use crate::names::ChannelName;

/// Longest user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;

/// Largest member info (its JSON text), in bytes.
pub const MAX_MEMBER_INFO_BYTES: usize = 1024;

/// Default cap on the members of one presence channel (`--max-presence-members`).
pub const DEFAULT_MAX_PRESENCE_MEMBERS: usize = 1000;

/// Whether `c` may appear in a [`UserId`]: printable ASCII, space to `~`.
pub fn is_user_id_char(c: char) -> bool {
    matches!(c, ' '..='~')
}

/// A member's user id: 1 to [`MAX_USER_ID_BYTES`] printable ASCII characters
/// ([`is_user_id_char`]), so that the OpenAPI schema states the rule exactly (JSON Schema
/// counts characters, not bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Validates a user id.
    pub fn parse(s: &str) -> Result<Self, Refusal> {
        if s.is_empty() || s.len() > MAX_USER_ID_BYTES || !s.chars().all(is_user_id_char) {
            return Err(Refusal::new(
                ErrorCode::InvalidUserId,
                format!("a user id is 1 to {MAX_USER_ID_BYTES} printable ASCII characters"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserId::parse(&s).map_err(|r| serde::de::Error::custom(r.message))
    }
}

/// A member's info: a JSON object of at most [`MAX_MEMBER_INFO_BYTES`] (its compact text),
/// kept as that text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo(String);

impl MemberInfo {
    /// Checks a JSON value: an object, at most [`MAX_MEMBER_INFO_BYTES`] once encoded.
    pub fn from_value(v: &Value) -> Result<Self, Refusal> {
        if !v.is_object() {
            return Err(Refusal::new(
                ErrorCode::InvalidBody,
                "userInfo must be a JSON object",
            ));
        }
        let text = serde_json::to_string(v)
            .map_err(|e| Refusal::new(ErrorCode::InvalidBody, format!("userInfo: {e}")))?;
        Self::checked(text)
    }

    /// Checks JSON text (as stored by a backend): an object within the size limit.
    pub fn from_json(text: &str) -> Result<Self, Refusal> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Refusal::new(ErrorCode::InvalidBody, format!("userInfo: {e}")))?;
        Self::from_value(&v)
    }

    fn checked(text: String) -> Result<Self, Refusal> {
        if text.len() > MAX_MEMBER_INFO_BYTES {
            return Err(Refusal::new(
                ErrorCode::PresenceInfoTooLarge,
                format!(
                    "userInfo is {} bytes as JSON; the limit is {MAX_MEMBER_INFO_BYTES}",
                    text.len()
                ),
            ));
        }
        Ok(Self(text))
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The info as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

impl Serialize for MemberInfo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match RawValue::from_string(self.0.clone()) {
            Ok(raw) => raw.serialize(s),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

impl<'de> Deserialize<'de> for MemberInfo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        MemberInfo::from_value(&v).map_err(|r| serde::de::Error::custom(r.message))
    }
}

/// A member of a presence channel: `{ "userId", "info" }` (`info` `null` when the token had
/// none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    /// The user.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::user_id_schema))]
    pub user_id: UserId,
    /// What the backend said about the user when it signed the token.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub info: Option<MemberInfo>,
}

impl Member {
    /// Reads a member from JSON by hand (clients: no derived deserializer in the wasm).
    pub fn from_value(v: &Value) -> Option<Self> {
        let user_id = UserId::parse(v.get("userId")?.as_str()?).ok()?;
        let info = match v.get("info") {
            None | Some(Value::Null) => None,
            Some(info) => Some(MemberInfo::from_value(info).ok()?),
        };
        Some(Self { user_id, info })
    }
}

/// What happened to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceAction {
    /// The user's first socket joined the channel.
    MemberAdded,
    /// The user's last socket left the channel.
    MemberRemoved,
}

impl PresenceAction {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceAction::MemberAdded => "member_added",
            PresenceAction::MemberRemoved => "member_removed",
        }
    }
}

/// The Socket.IO event `presence`, server → client:
/// `{ "channelName", "action", "member": { "userId", "info" }, "version" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEvent {
    /// The presence channel.
    pub channel_name: ChannelName,
    /// Joined or left.
    pub action: PresenceAction,
    /// Who.
    pub member: Member,
    /// The channel's presence version after this transition.
    pub version: u64,
}

impl PresenceEvent {
    /// Reads the event by hand (clients).
    pub fn from_value(v: &Value) -> Option<Self> {
        let channel_name = ChannelName::parse(v.get("channelName")?.as_str()?).ok()?;
        let action = match v.get("action")?.as_str()? {
            "member_added" => PresenceAction::MemberAdded,
            "member_removed" => PresenceAction::MemberRemoved,
            _ => return None,
        };
        let member = Member::from_value(v.get("member")?)?;
        let version = v.get("version")?.as_u64()?;
        Some(Self {
            channel_name,
            action,
            member,
            version,
        })
    }
}

/// The members of a presence channel and its version: added to the `listen` ack of a
/// presence channel, and the ack of a `presence` query (with `ok: true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceSnapshot {
    /// Every member, ordered by user id.
    pub members: Vec<Member>,
    /// The channel's presence version the list is at.
    pub presence_version: u64,
}

impl PresenceSnapshot {
    /// Reads the snapshot part of an ack by hand (clients); `None` when it has none.
    pub fn from_ack(ack: &Value) -> Option<Self> {
        let members = ack
            .get("members")?
            .as_array()?
            .iter()
            .map(Member::from_value)
            .collect::<Option<Vec<_>>>()?;
        let presence_version = ack.get("presenceVersion")?.as_u64()?;
        Some(Self {
            members,
            presence_version,
        })
    }
}

/// The client event `presence` `{ "channelName" }`: the members of a presence channel this
/// socket listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRequest {
    /// The channel.
    pub channel_name: ChannelName,
}

impl PresenceRequest {
    /// Parses an untrusted request body.
    pub fn parse(body: &Value) -> Result<Self, Refusal> {
        Ok(Self {
            channel_name: crate::messages::channel_field(body)?,
        })
    }
}

/// `GET /v1/publishers/channels/{channelName}/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceMembers {
    /// The channel.
    pub channel_name: ChannelName,
    /// Its members, ordered by user id.
    pub members: Vec<Member>,
}

/// `GET /v1/publishers/channels/{channelName}/presence/count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceCount {
    /// The channel.
    pub channel_name: ChannelName,
    /// How many members (users) it has.
    pub count: u64,
}

/// The refusal of a presence query or REST call on a channel that is not `presence-`.
pub fn not_presence_channel(channel: &ChannelName) -> Refusal {
    Refusal::new(
        ErrorCode::NotPresenceChannel,
        format!(
            "{channel} is not a presence channel; presence is for channels starting with \"presence-\""
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_ids_are_bounded() {
        assert!(UserId::parse("u-1").is_ok());
        assert!(UserId::parse(&"x".repeat(MAX_USER_ID_BYTES)).is_ok());
        for bad in [
            String::new(),
            "x".repeat(MAX_USER_ID_BYTES + 1),
            "a\nb".into(),
        ] {
            assert_eq!(
                UserId::parse(&bad).expect_err("refused").code,
                ErrorCode::InvalidUserId
            );
        }
    }

    #[test]
    fn info_is_an_object_within_the_limit() {
        assert!(MemberInfo::from_value(&json!({"name": "Ann"})).is_ok());
        assert_eq!(
            MemberInfo::from_value(&json!([1]))
                .expect_err("refused")
                .code,
            ErrorCode::InvalidBody
        );
        let big = json!({ "n": "x".repeat(MAX_MEMBER_INFO_BYTES) });
        assert_eq!(
            MemberInfo::from_value(&big).expect_err("refused").code,
            ErrorCode::PresenceInfoTooLarge
        );
    }

    #[test]
    fn events_and_snapshots_read_back() {
        let member = Member {
            user_id: UserId::parse("ann").expect("valid"),
            info: Some(MemberInfo::from_value(&json!({"name": "Ann"})).expect("valid")),
        };
        let event = PresenceEvent {
            channel_name: ChannelName::parse("presence-room").expect("valid"),
            action: PresenceAction::MemberAdded,
            member: member.clone(),
            version: 3,
        };
        let wire = serde_json::to_value(&event).expect("valid");
        assert_eq!(
            wire,
            json!({"channelName": "presence-room", "action": "member_added",
                   "member": {"userId": "ann", "info": {"name": "Ann"}}, "version": 3})
        );
        assert_eq!(PresenceEvent::from_value(&wire), Some(event));
        let snapshot = PresenceSnapshot {
            members: vec![member],
            presence_version: 3,
        };
        let mut ack = serde_json::to_value(&snapshot).expect("valid");
        ack["ok"] = json!(true);
        assert_eq!(PresenceSnapshot::from_ack(&ack), Some(snapshot));
        assert_eq!(PresenceSnapshot::from_ack(&json!({"ok": true})), None);
        let bare: Member = serde_json::from_value(json!({"userId": "bob"})).expect("valid");
        assert_eq!(
            serde_json::to_value(&bare).expect("valid"),
            json!({"userId": "bob", "info": null})
        );
    }
}
