//! What travels over the Socket.IO connection, in both directions.
//!
//! | direction | event name | body |
//! |---|---|---|
//! | handshake | (CONNECT `auth`) | [`HandshakeAuth`] |
//! | client → server | `listen` | [`ListenRequest`], optional ack [`Ack`] |
//! | client → server | `remove` | [`RemoveRequest`], optional ack [`Ack`] |
//! | client → server | `event` | [`ClientEvent`] (private channels only), optional ack [`Ack`] |
//! | server → client | `event` | [`ChannelEvent`] |
//! | server → client | `system_message` | [`SystemMessage`] |
//!
//! The `parse` functions turn untrusted JSON into validated values or a [`Refusal`] with the
//! exact [`ErrorCode`] the server answers with.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorCode, Refusal};
use crate::history::{ChannelOffset, Epoch, StreamPosition};
use crate::names::{ChannelName, ProjectId};

/// Socket.IO event names.
pub mod event_names {
    /// Client → server: subscribe to a channel.
    pub const LISTEN: &str = "listen";
    /// Client → server: unsubscribe from a channel.
    pub const REMOVE: &str = "remove";
    /// Both ways: a channel event (server → client: [`ChannelEvent`](super::ChannelEvent);
    /// client → server: [`ClientEvent`](super::ClientEvent)).
    pub const EVENT: &str = "event";
    /// Server → client: a [`SystemMessage`](super::SystemMessage).
    pub const SYSTEM_MESSAGE: &str = "system_message";
    /// Server → client: a [`PresenceEvent`](crate::presence::PresenceEvent); client → server
    /// (with an ack): a [`PresenceRequest`](crate::presence::PresenceRequest).
    pub const PRESENCE: &str = "presence";
}

/// WebSocket close codes of Herald's own (the application range 4000–4999).
pub mod close_codes {
    /// The client did not read fast enough and its queue filled: sent after a
    /// `system_message` with `errorCode` `slow_consumer`. Reconnect and listen again.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// The `auth` object of the Socket.IO handshake: `{ "projectId": "acme" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandshakeAuth {
    /// The project whose channels this socket may listen to.
    pub project_id: ProjectId,
}

impl HandshakeAuth {
    /// Parses the handshake `auth` value a client sent (`None` when it sent none).
    ///
    /// ```
    /// use herald_protocol::{ErrorCode, HandshakeAuth};
    /// use serde_json::json;
    /// assert!(HandshakeAuth::parse(Some(&json!({"projectId": "acme"}))).is_ok());
    /// assert_eq!(HandshakeAuth::parse(None).unwrap_err().code, ErrorCode::MissingProjectId);
    /// ```
    pub fn parse(auth: Option<&Value>) -> Result<Self, Refusal> {
        if let Some(auth) = auth {
            crate::depth::check_depth(crate::depth::value_depth(auth), "handshake auth")?;
        }
        let missing = || {
            Refusal::new(
                ErrorCode::MissingProjectId,
                "handshake auth must be an object with a \"projectId\" string, e.g. { \"projectId\": \"acme\" }",
            )
        };
        let id = auth
            .and_then(|a| a.get("projectId"))
            .and_then(Value::as_str)
            .ok_or_else(missing)?;
        Ok(Self {
            project_id: ProjectId::parse(id)?,
        })
    }
}

/// `listen`: subscribe to a channel. `authToken` is required for private channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenRequest {
    /// The channel to listen to.
    pub channel_name: ChannelName,
    /// A channel token from `POST /v1/publishers/sign`, for private channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
}

impl ListenRequest {
    /// Validates an untrusted `listen` body.
    pub fn parse(body: &Value) -> Result<Self, Refusal> {
        let channel_name = channel_field(body)?;
        let auth_token = match body.get("authToken") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidBody,
                    "\"authToken\" must be a string",
                ));
            }
        };
        Ok(Self {
            channel_name,
            auth_token,
        })
    }

    /// The optional `since: { offset, epoch }` of an untrusted `listen` body: the last event
    /// the client received on the channel. The server then delivers the events after it
    /// first and says in the ack whether it could ([`crate::history::Recovery`]).
    ///
    /// (A function of its own rather than a field, so that code building a `ListenRequest`
    /// literally keeps compiling; the field joins the struct with the client core.)
    pub fn parse_since(body: &Value) -> Result<Option<StreamPosition>, Refusal> {
        match body.get("since") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => StreamPosition::parse(v).map(Some),
        }
    }
}

/// `remove`: unsubscribe from a channel. Removing a channel the socket does not listen to
/// succeeds (it is idempotent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveRequest {
    /// The channel to leave.
    pub channel_name: ChannelName,
}

impl RemoveRequest {
    /// Validates an untrusted `remove` body.
    pub fn parse(body: &Value) -> Result<Self, Refusal> {
        Ok(Self {
            channel_name: channel_field(body)?,
        })
    }
}

/// Client → server `event`: a message a member of a private channel sends to the channel's
/// other members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientEvent {
    /// The private channel the sender has joined.
    pub channel_name: ChannelName,
    /// Any JSON.
    pub payload: Value,
}

impl ClientEvent {
    /// Validates an untrusted client `event` body.
    pub fn parse(body: &Value) -> Result<Self, Refusal> {
        let channel_name = channel_field(body)?;
        let payload = body
            .get("payload")
            .cloned()
            .ok_or_else(|| Refusal::new(ErrorCode::InvalidBody, "missing \"payload\""))?;
        crate::depth::check_depth(crate::depth::value_depth(&payload), "payload")?;
        Ok(Self {
            channel_name,
            payload,
        })
    }
}

/// Server → client `event`: `{ "id", "channelName", "payload", "offset"?, "epoch"? }`.
/// `offset` and `epoch` are there when the channel's project keeps history.
///
/// `P` is the payload type: clients read a [`serde_json::Value`]; the server writes the raw
/// JSON the publisher sent without re-parsing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelEvent<P = Value> {
    /// The message id the publish call answered with (absent on client-to-client events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The channel the event was published to.
    pub channel_name: ChannelName,
    /// The publisher's JSON, byte for byte.
    pub payload: P,
    /// The event's position in its channel (published events of a project with history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<ChannelOffset>,
    /// The epoch of `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// The code of a [`SystemMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SystemMessageCode {
    /// A `listen` or `remove` succeeded.
    Success,
    /// The socket was removed from channels because the API key behind its tokens was deleted
    /// or expired. `data.channels` lists them.
    RemovedFromChannel,
    /// A request failed. `data.errorCode` holds the [`ErrorCode`].
    Error,
}

/// Server → client `system_message`: `{ "code", "message", "data"? }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemMessage {
    /// What kind of notice this is.
    pub code: SystemMessageCode,
    /// Human-readable text.
    pub message: String,
    /// Context: `channelName` for `listen`/`remove` results, `errorCode` for errors,
    /// `channels` for removals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl SystemMessage {
    /// `Success` for an operation on `channel`.
    pub fn success(message: impl Into<String>, channel: &ChannelName) -> Self {
        Self {
            code: SystemMessageCode::Success,
            message: message.into(),
            data: Some(serde_json::json!({ "channelName": channel })),
        }
    }

    /// `Error` for a refused request, optionally about `channel`.
    pub fn error(refusal: &Refusal, channel: Option<&ChannelName>) -> Self {
        let mut data = serde_json::Map::new();
        data.insert("errorCode".into(), Value::from(refusal.code.as_str()));
        if let Some(c) = channel {
            data.insert("channelName".into(), Value::from(c.as_str()));
        }
        Self {
            code: SystemMessageCode::Error,
            message: refusal.message.clone(),
            data: Some(Value::Object(data)),
        }
    }

    /// `RemovedFromChannel` naming every channel the socket lost.
    pub fn removed_from_channels(message: impl Into<String>, channels: &[ChannelName]) -> Self {
        Self {
            code: SystemMessageCode::RemovedFromChannel,
            message: message.into(),
            data: Some(serde_json::json!({ "channels": channels })),
        }
    }
}

/// The acknowledgement of `listen`, `remove` and client `event`:
/// `{ "ok": true }` or `{ "ok": false, "code", "message" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// The request succeeded.
    Ok,
    /// The request was refused.
    Refused(Refusal),
}

#[derive(Serialize, Deserialize)]
struct AckWire {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl Serialize for Ack {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ack::Ok => AckWire {
                ok: true,
                code: None,
                message: None,
            },
            Ack::Refused(r) => AckWire {
                ok: false,
                code: Some(r.code),
                message: Some(r.message.clone()),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Ack {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = AckWire::deserialize(d)?;
        if wire.ok {
            return Ok(Ack::Ok);
        }
        let code = wire
            .code
            .ok_or_else(|| serde::de::Error::missing_field("code"))?;
        Ok(Ack::Refused(Refusal::new(
            code,
            wire.message.unwrap_or_default(),
        )))
    }
}

impl From<Result<(), Refusal>> for Ack {
    fn from(r: Result<(), Refusal>) -> Self {
        match r {
            Ok(()) => Ack::Ok,
            Err(e) => Ack::Refused(e),
        }
    }
}

/// Reads and validates the `channelName` field of an untrusted body.
pub fn channel_field(body: &Value) -> Result<ChannelName, Refusal> {
    let obj = body.as_object().ok_or_else(|| {
        Refusal::new(
            ErrorCode::InvalidBody,
            "expected a JSON object with a \"channelName\" string",
        )
    })?;
    let name = obj
        .get("channelName")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new(ErrorCode::InvalidBody, "missing \"channelName\" string"))?;
    Ok(ChannelName::parse(name)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listen_parse() {
        let ok = ListenRequest::parse(&json!({"channelName": "orders"})).expect("valid");
        assert_eq!(ok.channel_name.as_str(), "orders");
        assert_eq!(ok.auth_token, None);
        assert_eq!(
            ListenRequest::parse_since(&json!({"channelName": "orders"})),
            Ok(None)
        );
        let since = ListenRequest::parse_since(
            &json!({"channelName": "orders", "since": {"offset": 4, "epoch": "e"}}),
        )
        .expect("valid");
        assert_eq!(since.map(|p| p.offset.get()), Some(4));
        assert_eq!(
            ListenRequest::parse_since(&json!({"channelName": "orders", "since": {"offset": "4"}}))
                .map_err(|e| e.code),
            Err(ErrorCode::InvalidBody)
        );
        let with_token =
            ListenRequest::parse(&json!({"channelName": "private-a", "authToken": "t"}))
                .expect("valid");
        assert_eq!(with_token.auth_token.as_deref(), Some("t"));
        let code = |v: Value| ListenRequest::parse(&v).map_err(|e| e.code);
        assert_eq!(code(json!("orders")), Err(ErrorCode::InvalidBody));
        assert_eq!(code(json!({})), Err(ErrorCode::InvalidBody));
        assert_eq!(code(json!({"channelName": 3})), Err(ErrorCode::InvalidBody));
        assert_eq!(
            code(json!({"channelName": "a:b"})),
            Err(ErrorCode::InvalidChannelName)
        );
        assert_eq!(
            code(json!({"channelName": "privatex"})),
            Err(ErrorCode::AmbiguousChannelName)
        );
        assert_eq!(
            code(json!({"channelName": "private-a", "authToken": 1})),
            Err(ErrorCode::InvalidBody)
        );
    }

    #[test]
    fn ack_wire_format() {
        assert_eq!(
            serde_json::to_value(Ack::Ok).expect("ser"),
            json!({"ok": true})
        );
        let refused = Ack::Refused(Refusal::new(ErrorCode::TokenExpired, "expired"));
        let v = serde_json::to_value(&refused).expect("ser");
        assert_eq!(
            v,
            json!({"ok": false, "code": "token_expired", "message": "expired"})
        );
        assert_eq!(serde_json::from_value::<Ack>(v).expect("de"), refused);
    }

    #[test]
    fn system_messages() {
        let c = ChannelName::parse("orders").expect("valid");
        let v = serde_json::to_value(SystemMessage::success("listening", &c)).expect("ser");
        assert_eq!(
            v,
            json!({"code": "Success", "message": "listening", "data": {"channelName": "orders"}})
        );
        let err =
            SystemMessage::error(&Refusal::new(ErrorCode::TokenMissing, "no token"), Some(&c));
        assert_eq!(
            serde_json::to_value(err).expect("ser"),
            json!({"code": "Error", "message": "no token", "data": {"errorCode": "token_missing", "channelName": "orders"}})
        );
    }

    #[test]
    fn handshake() {
        let code = |v: Option<Value>| HandshakeAuth::parse(v.as_ref()).map_err(|e| e.code);
        assert_eq!(code(None), Err(ErrorCode::MissingProjectId));
        assert_eq!(code(Some(json!({}))), Err(ErrorCode::MissingProjectId));
        assert_eq!(
            code(Some(json!({"projectId": "A B"}))),
            Err(ErrorCode::InvalidProjectId)
        );
        assert!(code(Some(json!({"projectId": "acme"}))).is_ok());
    }
}
