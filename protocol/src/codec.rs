//! The client side of the wire (feature `codec`): Engine.IO v4 framing over WebSocket, with
//! Socket.IO v5 packets inside, encoded and decoded by socketioxide's common parser (the
//! codec the server uses). Shared by the Rust subscriber (`herald-sdk`) and the browser client
//! (`herald-wasm`); it does no I/O.
//!
//! One WebSocket text frame carries one Engine.IO packet: a type digit and its data.
//!
//! | Engine.IO | meaning |
//! |---|---|
//! | `0{json}` | open: `sid`, `pingInterval`, `pingTimeout` (ms) |
//! | `1` | close |
//! | `2` / `3` | ping (server) / pong (client answer) |
//! | `4<socket.io packet>` | message |
//! | `6` | noop |
//!
//! Socket.IO packets inside a message: `0{json}` connect(ed), `1` disconnect, `2[...]` event,
//! `3<id>[...]` ack, `4{"message"}` connect error.
//!
//! ```
//! use herald_protocol::codec::{encode_connect, Decoder, Incoming};
//! use herald_protocol::{HandshakeAuth, ProjectId};
//!
//! let auth = HandshakeAuth { project_id: ProjectId::parse("acme")? };
//! assert_eq!(encode_connect(&auth)?, r#"40{"projectId":"acme"}"#);
//! let decoder = Decoder::new();
//! assert!(matches!(decoder.decode(r#"40{"sid":"x"}"#)?, Incoming::Connected));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use socketioxide_core::packet::{Packet, PacketData};
use socketioxide_core::parser::{Parse, ParseConfig, ParserState};
use socketioxide_core::{Str, Value};
use socketioxide_parser_common::CommonParser;

use crate::error::{ErrorCode, Refusal};
use crate::history::ListenAnswer;
use crate::messages::event_names::{EVENT, PRESENCE, SYSTEM_MESSAGE};
use crate::messages::{Ack, ChannelEvent, HandshakeAuth, SystemMessage};
use crate::presence::{PresenceEvent, PresenceSnapshot};

/// The Socket.IO namespace Herald serves.
pub const NAMESPACE: &str = "/";

/// The Engine.IO path under the server's base URL.
pub const SOCKET_PATH: &str = "socket.io/";

/// The query string of an Engine.IO v4 WebSocket connection.
pub const WEBSOCKET_QUERY: &str = "EIO=4&transport=websocket";

/// Engine.IO pong, the answer to the server's ping `2`.
pub const PONG: char = '3';

/// Socket.IO DISCONNECT of the default namespace, inside an Engine.IO message.
pub const DISCONNECT: &str = "41";

/// Parameters from the Engine.IO open packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long the server waits for a pong (and a client, past the interval, for a ping).
    pub ping_timeout: Duration,
}

impl Open {
    /// The silence after which a client counts the connection as dead: interval + timeout.
    pub fn silence_limit(&self) -> Duration {
        self.ping_interval + self.ping_timeout
    }
}

/// A frame that could not be decoded, or a value that could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

impl CodecError {
    /// What went wrong, with the start of the offending frame.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// Why the server refused the Socket.IO handshake (a CONNECT_ERROR packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Herald's `"<code>: <text>"`, with a known code.
    Refused(Refusal),
    /// Any other message (not from Herald, or a code this version does not know).
    Other(String),
}

/// One decoded text frame.
#[derive(Debug)]
pub enum Incoming {
    /// Engine.IO open.
    Open(Open),
    /// Engine.IO close.
    Close,
    /// Engine.IO ping; the pong to send back.
    Ping(String),
    /// Socket.IO CONNECT answer: the namespace accepted the handshake.
    Connected,
    /// Socket.IO CONNECT_ERROR: the handshake was refused.
    ConnectError(ConnectError),
    /// Socket.IO DISCONNECT: the server closed the session.
    Disconnect,
    /// A channel `event`.
    Event(ChannelEvent),
    /// A `system_message`.
    System(SystemMessage),
    /// The answer to a request sent with an ack id, what a successful `listen` adds to it
    /// (its recovery, or the channel's position), when anything, and the members a presence
    /// channel's `listen` ack or `presence` query ack carries.
    Ack(i64, Ack, Option<ListenAnswer>, Option<PresenceSnapshot>),
    /// A `presence` event (a member joined or left a presence channel); `None` when its body
    /// could not be read.
    Presence(Option<PresenceEvent>),
    /// Something Herald's clients have no use for (noop, pong, an unknown event name, another
    /// namespace, binary packets).
    Ignored,
}

/// A decoder for one connection (the parser keeps state for binary attachments, which Herald
/// never sends: binary packets are refused rather than buffered).
pub struct Decoder {
    config: ParseConfig,
    state: ParserState,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder that accepts no binary attachments.
    pub fn new() -> Self {
        Self {
            config: ParseConfig {
                max_incoming_binaries: 0,
                max_incoming_binary_buf_size: 0,
                ..ParseConfig::default()
            },
            state: ParserState::default(),
        }
    }

    /// Decodes one WebSocket text frame.
    pub fn decode(&self, frame: &str) -> Result<Incoming, CodecError> {
        let mut chars = frame.chars();
        let kind = chars.next();
        let data = chars.as_str();
        match kind {
            Some('0') => decode_open(data).map(Incoming::Open),
            Some('1') => Ok(Incoming::Close),
            Some('2') => Ok(Incoming::Ping(format!("{PONG}{data}"))),
            Some('3' | '6') => Ok(Incoming::Ignored),
            Some('4') => self.decode_socketio(data),
            _ => Err(error("unknown Engine.IO packet", frame)),
        }
    }

    fn decode_socketio(&self, packet: &str) -> Result<Incoming, CodecError> {
        // The common parser decodes what a server receives; CONNECT_ERROR only ever travels
        // to clients, so it is decoded here.
        if let Some(rest) = packet.strip_prefix('4') {
            let (ns, body) = split_namespace(rest);
            if ns != NAMESPACE {
                return Ok(Incoming::Ignored);
            }
            return Ok(Incoming::ConnectError(connect_error(body)));
        }
        let packet = CommonParser
            .decode_str(&self.config, &self.state, Str::from(packet.to_owned()))
            .map_err(|e| error(&format!("bad Socket.IO packet ({e})"), packet))?;
        if packet.ns != NAMESPACE {
            return Ok(Incoming::Ignored);
        }
        match packet.inner {
            PacketData::Connect(_) => Ok(Incoming::Connected),
            PacketData::Disconnect => Ok(Incoming::Disconnect),
            PacketData::Event(mut value, _) => {
                let name = CommonParser
                    .read_event(&value)
                    .map_err(|e| {
                        error(&format!("event without a name ({e})"), packet_text(&value))
                    })?
                    .to_owned();
                match name.as_str() {
                    EVENT => decode_data(&mut value, true, "event").map(Incoming::Event),
                    SYSTEM_MESSAGE => {
                        decode_data(&mut value, true, "system_message").map(Incoming::System)
                    }
                    // Read by hand (no derived deserializer in the browser client's wasm).
                    PRESENCE => decode_data::<serde_json::Value>(&mut value, true, "presence")
                        .map(|body| Incoming::Presence(PresenceEvent::from_value(&body))),
                    _ => Ok(Incoming::Ignored),
                }
            }
            PacketData::EventAck(mut value, id) => {
                let body: serde_json::Value = decode_data(&mut value, false, "ack")?;
                let listen = ListenAnswer::from_ack(&body);
                let presence = PresenceSnapshot::from_ack(&body);
                serde_json::from_value::<Ack>(body)
                    .map(|ack| Incoming::Ack(id, ack, listen, presence))
                    .map_err(|e| error(&format!("bad ack body ({e})"), packet_text(&value)))
            }
            PacketData::BinaryEvent(..) | PacketData::BinaryAck(..) => Ok(Incoming::Ignored),
            PacketData::ConnectError(message) => {
                Ok(Incoming::ConnectError(connect_error_text(&message)))
            }
        }
    }
}

fn decode_data<T: serde::de::DeserializeOwned>(
    value: &mut Value,
    with_event: bool,
    what: &str,
) -> Result<T, CodecError> {
    let text = packet_text(value).to_owned();
    CommonParser
        .decode_value(value, with_event)
        .map_err(|e| error(&format!("bad {what} body ({e})"), &text))
}

fn packet_text(value: &Value) -> &str {
    value.as_str().map(|s| s.as_str()).unwrap_or("<binary>")
}

/// Splits `/ns,rest` into the namespace and the rest; no leading `/` means the default one.
fn split_namespace(packet: &str) -> (&str, &str) {
    if packet.starts_with('/') {
        match packet.split_once(',') {
            Some((ns, rest)) => (ns, rest),
            None => (packet, ""),
        }
    } else {
        (NAMESPACE, packet)
    }
}

fn decode_open(data: &str) -> Result<Open, CodecError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        ping_interval: u64,
        ping_timeout: u64,
    }
    let wire: Wire = serde_json::from_str(data)
        .map_err(|e| error(&format!("bad Engine.IO open packet ({e})"), data))?;
    Ok(Open {
        ping_interval: Duration::from_millis(wire.ping_interval),
        ping_timeout: Duration::from_millis(wire.ping_timeout),
    })
}

/// The CONNECT_ERROR body: `{"message": "..."}` (Socket.IO v5) or a bare string (v4).
fn connect_error(body: &str) -> ConnectError {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        V5 { message: String },
        V4(String),
    }
    match serde_json::from_str::<Wire>(body) {
        Ok(Wire::V5 { message } | Wire::V4(message)) => connect_error_text(&message),
        Err(_) => connect_error_text(body),
    }
}

/// Herald's connect errors read `"<code>: <text>"`; a known code becomes a [`Refusal`].
///
/// ```
/// use herald_protocol::codec::{connect_error_text, ConnectError};
/// use herald_protocol::ErrorCode;
/// let ConnectError::Refused(r) = connect_error_text("unknown_project: no project x") else {
///     panic!()
/// };
/// assert_eq!((r.code, r.message.as_str()), (ErrorCode::UnknownProject, "no project x"));
/// ```
pub fn connect_error_text(message: &str) -> ConnectError {
    let parsed = message.split_once(": ").and_then(|(code, text)| {
        serde_json::from_value::<ErrorCode>(serde_json::Value::String(code.to_owned()))
            .ok()
            .map(|code| Refusal::new(code, text))
    });
    match parsed {
        Some(refusal) => ConnectError::Refused(refusal),
        None => ConnectError::Other(message.to_owned()),
    }
}

/// `40{auth}`: Socket.IO CONNECT to the default namespace with the handshake `auth`.
pub fn encode_connect(auth: &HandshakeAuth) -> Result<String, CodecError> {
    let auth = CommonParser
        .encode_default(auth)
        .map_err(|e| CodecError(format!("encoding the handshake: {e}")))?;
    encode(Packet::connect(NAMESPACE, Some(auth)))
}

/// `42<ack>["event", data]`: an event asking for an acknowledgement.
pub fn encode_event<T: Serialize>(event: &str, data: &T, ack: i64) -> Result<String, CodecError> {
    let value = CommonParser
        .encode_value(data, Some(event))
        .map_err(|e| CodecError(format!("encoding {event}: {e}")))?;
    let mut packet = Packet::event(NAMESPACE, value);
    packet.inner.set_ack_id(ack);
    encode(packet)
}

fn encode(packet: Packet) -> Result<String, CodecError> {
    match CommonParser.encode(packet) {
        Value::Str(s, None) => Ok(format!("4{s}")),
        _ => Err(CodecError("a packet encoded with binary parts".into())),
    }
}

fn error(what: &str, frame: &str) -> CodecError {
    const MAX: usize = 200;
    let shown: String = frame.chars().take(MAX).collect();
    let more = if frame.chars().nth(MAX).is_some() {
        "…"
    } else {
        ""
    };
    CodecError(format!("{what}: {shown:?}{more}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelName, ListenRequest, ProjectId, SystemMessageCode};
    use serde_json::json;

    fn decode(frame: &str) -> Incoming {
        match Decoder::new().decode(frame) {
            Ok(i) => i,
            Err(e) => panic!("{frame}: {e}"),
        }
    }

    #[test]
    fn engine_io_packets() {
        let open = decode(
            r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":100000}"#,
        );
        assert!(matches!(
            open,
            Incoming::Open(o @ Open { ping_interval, ping_timeout })
                if ping_interval == Duration::from_secs(25)
                    && ping_timeout == Duration::from_secs(20)
                    && o.silence_limit() == Duration::from_secs(45)
        ));
        assert!(matches!(decode("2"), Incoming::Ping(p) if p == "3"));
        assert!(matches!(decode("2probe"), Incoming::Ping(p) if p == "3probe"));
        assert!(matches!(decode("1"), Incoming::Close));
        assert!(matches!(decode("6"), Incoming::Ignored));
        assert!(Decoder::new().decode("").is_err());
        assert!(Decoder::new().decode("9").is_err());
        assert!(Decoder::new().decode("0{").is_err());
    }

    #[test]
    fn socket_io_packets() {
        assert!(matches!(decode(r#"40{"sid":"x"}"#), Incoming::Connected));
        assert!(matches!(decode("41"), Incoming::Disconnect));
        let ev = decode(r#"42["event",{"id":"m1","channelName":"orders","payload":{"a":[1,2]}}]"#);
        match ev {
            Incoming::Event(e) => {
                assert_eq!(e.id.as_deref(), Some("m1"));
                assert_eq!(e.channel_name.as_str(), "orders");
                assert_eq!(e.payload, json!({"a": [1, 2]}));
            }
            other => panic!("{other:?}"),
        }
        let sys = decode(
            r#"42["system_message",{"code":"RemovedFromChannel","message":"bye","data":{"channels":["private-a"]}}]"#,
        );
        assert!(
            matches!(sys, Incoming::System(m) if m.code == SystemMessageCode::RemovedFromChannel)
        );
        assert!(matches!(
            decode(r#"4312[{"ok":true}]"#),
            Incoming::Ack(12, Ack::Ok, None, None)
        ));
        match decode(r#"433[{"ok":true,"epoch":"e","offset":4}]"#) {
            Incoming::Ack(3, Ack::Ok, Some(ListenAnswer::Position(p)), None) => {
                assert_eq!((p.epoch.as_str(), p.offset.get()), ("e", 4));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"434[{"ok":true,"recovered":false,"reason":"epoch_changed","epoch":"f","offset":0}]"#),
            Incoming::Ack(4, Ack::Ok, Some(ListenAnswer::Recovery(r)), None) if !r.recovered
        ));
        let refused = decode(r#"430[{"ok":false,"code":"token_expired","message":"old"}]"#);
        assert!(matches!(
            refused,
            Incoming::Ack(
                0,
                Ack::Refused(Refusal {
                    code: ErrorCode::TokenExpired,
                    ..
                }),
                None,
                None
            )
        ));
        // Presence: a listen ack with members, and the `presence` event.
        match decode(
            r#"435[{"ok":true,"members":[{"userId":"ann","info":{"n":1}},{"userId":"bob","info":null}],"presenceVersion":7}]"#,
        ) {
            Incoming::Ack(5, Ack::Ok, None, Some(snapshot)) => {
                assert_eq!(snapshot.presence_version, 7);
                let ids: Vec<&str> = snapshot
                    .members
                    .iter()
                    .map(|m| m.user_id.as_str())
                    .collect();
                assert_eq!(ids, ["ann", "bob"]);
            }
            other => panic!("{other:?}"),
        }
        match decode(
            r#"42["presence",{"channelName":"presence-r","action":"member_removed","member":{"userId":"ann","info":null},"version":8}]"#,
        ) {
            Incoming::Presence(Some(e)) => {
                assert_eq!(e.action, crate::presence::PresenceAction::MemberRemoved);
                assert_eq!((e.member.user_id.as_str(), e.version), ("ann", 8));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"42["presence",{"channelName":"presence-r","action":"joined"}]"#),
            Incoming::Presence(None)
        ));
        // A trailing extra argument (Socket.IO's recovery offset, for socket.io-client) is
        // not part of Herald's event: ignored.
        match decode(
            r#"42["event",{"channelName":"orders","payload":1,"offset":17,"epoch":"e"},"17:orders"]"#,
        ) {
            Incoming::Event(e) => {
                assert_eq!(e.offset.map(|o| o.get()), Some(17));
                assert_eq!(e.payload, json!(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(r#"42["other",1]"#), Incoming::Ignored));
        assert!(matches!(
            decode(r#"42/admin,["event",{}]"#),
            Incoming::Ignored
        ));
        // A known event with a body that is not what the protocol says.
        assert!(
            Decoder::new()
                .decode(r#"42["event",{"channelName":"a b"}]"#)
                .is_err()
        );
        assert!(Decoder::new().decode("4x").is_err());
    }

    /// Event frames carry a last argument for socket.io-client's connection state recovery
    /// (`herald_protocol::csr::marker`): Herald's own clients read the event and ignore it.
    #[test]
    fn event_frames_with_a_recovery_marker_decode() {
        let ev = decode(
            r#"42["event",{"id":"m1","channelName":"orders","payload":{"a":1},"offset":17,"epoch":"e1"},"17:orders"]"#,
        );
        match ev {
            Incoming::Event(e) => {
                assert_eq!(e.channel_name.as_str(), "orders");
                assert_eq!(e.payload, json!({"a": 1}));
                assert_eq!(e.offset, Some(crate::ChannelOffset(17)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binary_packets_are_ignored_not_buffered() {
        let d = Decoder::new();
        assert!(
            d.decode(r#"451-["event",{"_placeholder":true,"num":0}]"#)
                .is_err()
        );
        // The decoder is not stuck waiting for the attachment.
        assert!(matches!(
            d.decode(r#"40{"sid":"x"}"#),
            Ok(Incoming::Connected)
        ));
    }

    #[test]
    fn connect_errors_keep_the_code() {
        match decode(r#"44{"message":"unknown_project: project x does not exist"}"#) {
            Incoming::ConnectError(ConnectError::Refused(r)) => {
                assert_eq!(r.code, ErrorCode::UnknownProject);
                assert_eq!(r.message, "project x does not exist");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"44{"message":"something else"}"#),
            Incoming::ConnectError(ConnectError::Other(m)) if m == "something else"
        ));
        assert!(matches!(
            decode(r#"44"missing_project_id: no auth""#),
            Incoming::ConnectError(ConnectError::Refused(Refusal {
                code: ErrorCode::MissingProjectId,
                ..
            }))
        ));
        assert!(matches!(
            decode(r#"44/admin,{"message":"unknown_project: x"}"#),
            Incoming::Ignored
        ));
    }

    #[test]
    fn encoding() -> Result<(), Box<dyn std::error::Error>> {
        let auth = HandshakeAuth {
            project_id: ProjectId::parse("acme")?,
        };
        assert_eq!(encode_connect(&auth)?, r#"40{"projectId":"acme"}"#);
        let listen = ListenRequest {
            channel_name: ChannelName::parse("private-a")?,
            auth_token: Some("t".into()),
        };
        assert_eq!(
            encode_event("listen", &listen, 7)?,
            r#"427["listen",{"channelName":"private-a","authToken":"t"}]"#
        );
        Ok(())
    }

    #[test]
    fn long_frames_are_cut_in_errors() {
        let frame = format!("9{}", "x".repeat(500));
        let e = Decoder::new().decode(&frame).expect_err("unknown packet");
        assert!(e.message().len() < 300 && e.message().ends_with('…'), "{e}");
    }
}
