//! Engine.IO v4 / Socket.IO v5 packets as the direct transport reads and writes them: one
//! Engine.IO packet per WebSocket text message, Socket.IO packets inside `4` (message).

use serde_json::Value;
use socketioxide_core::packet::PacketData;
use socketioxide_core::parser::{Parse, ParseConfig, ParseError, ParserState};
use socketioxide_core::{Str, Value as SioValue};
use socketioxide_parser_common::CommonParser;

/// What a client's text message is.
#[derive(Debug, PartialEq)]
pub enum ClientPacket {
    /// Engine.IO `3`: the answer to the server's ping.
    Pong,
    /// Engine.IO `2`: a ping from the client (Engine.IO v3 habit), answered with a pong.
    Ping,
    /// Engine.IO `1`: the client closes.
    Close,
    /// Engine.IO `6`: nothing.
    Noop,
    /// Socket.IO CONNECT to a namespace, with the handshake `auth` if any.
    Connect {
        /// Namespace path (`/` for the default one).
        namespace: String,
        /// The `auth` object.
        auth: Option<Value>,
    },
    /// Socket.IO DISCONNECT from a namespace.
    Disconnect {
        /// Namespace path.
        namespace: String,
    },
    /// Socket.IO EVENT: `[name, ...args]`, with an ack id when the client wants an answer.
    Event {
        /// Namespace path.
        namespace: String,
        /// Ack id.
        ack: Option<u64>,
        /// Event name.
        name: String,
        /// First argument (Herald's events carry one object).
        data: Option<Value>,
    },
    /// Socket.IO ACK of a server emit (Herald asks for none): ignored.
    Ack,
    /// Socket.IO packets with binary attachments: Herald's protocol is JSON only.
    Binary,
}

/// A client message that is not an Engine.IO / Socket.IO packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed packet: {0}")]
pub struct PacketError(pub &'static str);

/// Parses one client text message. Panic-free for any input (fuzzed: `server/fuzz`): the
/// Engine.IO type is split off by `char`, never by byte index, and the Socket.IO packet inside
/// a message is decoded by socketioxide's common parser, the one its polling transport uses, so
/// both transports read a packet the same way.
pub fn parse(text: &str) -> Result<ClientPacket, PacketError> {
    let mut chars = text.chars();
    let kind = chars.next();
    let rest = chars.as_str();
    match kind {
        Some('1') => Ok(ClientPacket::Close),
        Some('2') => Ok(ClientPacket::Ping),
        Some('3') => Ok(ClientPacket::Pong),
        Some('6') => Ok(ClientPacket::Noop),
        Some('4') => parse_socketio(rest),
        _ => Err(PacketError("unknown engine.io packet type")),
    }
}

/// Decodes the Socket.IO packet inside an Engine.IO message.
fn parse_socketio(sio: &str) -> Result<ClientPacket, PacketError> {
    match sio.as_bytes().first() {
        None => return Err(PacketError("empty socket.io packet")),
        // Attachments are never buffered: Herald's protocol is JSON only.
        Some(b'5' | b'6') => return Ok(ClientPacket::Binary),
        Some(_) => {}
    }
    let config = ParseConfig {
        max_incoming_binaries: 0,
        max_incoming_binary_buf_size: 0,
        ..ParseConfig::default()
    };
    let packet = CommonParser
        .decode_str(&config, &ParserState::default(), Str::copy_from_slice(sio))
        .map_err(|e| match e {
            ParseError::InvalidPacketType => PacketError("unknown socket.io packet type"),
            _ => PacketError("malformed socket.io packet"),
        })?;
    let namespace = packet.ns.as_str().to_owned();
    match packet.inner {
        PacketData::Connect(None) => Ok(ClientPacket::Connect {
            namespace,
            auth: None,
        }),
        PacketData::Connect(Some(value)) => {
            let auth = serde_json::from_str(json_of(&value)?)
                .map_err(|_| PacketError("auth is not JSON"))?;
            Ok(ClientPacket::Connect {
                namespace,
                auth: Some(auth),
            })
        }
        PacketData::Disconnect => Ok(ClientPacket::Disconnect { namespace }),
        PacketData::Event(value, ack) => {
            let ack = ack
                .map(u64::try_from)
                .transpose()
                .map_err(|_| PacketError("ack id out of range"))?;
            let Ok(Value::Array(mut args)) = serde_json::from_str::<Value>(json_of(&value)?) else {
                return Err(PacketError("event arguments are not a JSON array"));
            };
            if args.is_empty() {
                return Err(PacketError("event without a name"));
            }
            let data = (args.len() > 1).then(|| args.swap_remove(1));
            let Value::String(name) = args.swap_remove(0) else {
                return Err(PacketError("event name is not a string"));
            };
            Ok(ClientPacket::Event {
                namespace,
                ack,
                name,
                data,
            })
        }
        PacketData::EventAck(..) => Ok(ClientPacket::Ack),
        PacketData::BinaryEvent(..) | PacketData::BinaryAck(..) => Ok(ClientPacket::Binary),
        PacketData::ConnectError(_) => Err(PacketError("unknown socket.io packet type")),
    }
}

/// The JSON text of a decoded packet's data (the common parser keeps it undecoded).
fn json_of(value: &SioValue) -> Result<&str, PacketError> {
    match value {
        SioValue::Str(s, _) => Ok(s.as_str()),
        SioValue::Bytes(_) => Err(PacketError("binary data in a text packet")),
    }
}

/// Engine.IO open packet for a WebSocket-only session.
pub fn open(sid: &str, ping_interval_ms: u64, ping_timeout_ms: u64, max_payload: usize) -> String {
    format!(
        r#"0{{"sid":"{sid}","upgrades":[],"pingInterval":{ping_interval_ms},"pingTimeout":{ping_timeout_ms},"maxPayload":{max_payload}}}"#
    )
}

/// Socket.IO CONNECT answer for the default namespace.
pub fn connected(sid: &str) -> String {
    format!(r#"40{{"sid":"{sid}"}}"#)
}

/// Socket.IO CONNECT for the default namespace, with the connection state recovery `pid`
/// ([`herald_protocol::csr`]).
pub fn connected_with_pid(sid: &str, pid: &herald_protocol::csr::Pid) -> String {
    format!(r#"40{{"sid":"{sid}","pid":"{pid}"}}"#)
}

/// Socket.IO CONNECT_ERROR with a `message`, for `namespace`.
pub fn connect_error(namespace: &str, message: &str) -> String {
    let body = serde_json::json!({ "message": message }).to_string();
    if namespace == "/" {
        format!("44{body}")
    } else {
        format!("44{namespace},{body}")
    }
}

/// Socket.IO EVENT `[name, data]` on the default namespace, `data` already JSON.
pub fn event(name: &str, data_json: &str) -> String {
    let mut out = String::with_capacity(data_json.len() + name.len() + 8);
    out.push_str("42[\"");
    out.push_str(name);
    out.push_str("\",");
    out.push_str(data_json);
    out.push(']');
    out
}

/// Socket.IO EVENT `[name, data, marker]`: an event with its recovery marker as last argument
/// ([`herald_protocol::csr::marker`], a string Herald builds from digits and a channel name).
pub fn event_marked(name: &str, data_json: &str, marker: &str) -> String {
    let mut out = String::with_capacity(data_json.len() + name.len() + marker.len() + 12);
    out.push_str("42[\"");
    out.push_str(name);
    out.push_str("\",");
    out.push_str(data_json);
    out.push_str(",\"");
    out.push_str(marker);
    out.push_str("\"]");
    out
}

/// Socket.IO ACK `[data]` for `ack`.
pub fn ack(ack: u64, data_json: &str) -> String {
    format!("43{ack}[{data_json}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_socket_io_clients_send() {
        assert_eq!(parse("3"), Ok(ClientPacket::Pong));
        assert_eq!(
            parse(r#"40{"projectId":"p"}"#),
            Ok(ClientPacket::Connect {
                namespace: "/".into(),
                auth: Some(json!({"projectId": "p"}))
            })
        );
        assert_eq!(
            parse("40"),
            Ok(ClientPacket::Connect {
                namespace: "/".into(),
                auth: None
            })
        );
        assert_eq!(
            parse(r#"40/admin,{"a":1}"#),
            Ok(ClientPacket::Connect {
                namespace: "/admin".into(),
                auth: Some(json!({"a": 1}))
            })
        );
        assert_eq!(
            parse(r#"4212["listen",{"channelName":"news"}]"#),
            Ok(ClientPacket::Event {
                namespace: "/".into(),
                ack: Some(12),
                name: "listen".into(),
                data: Some(json!({"channelName": "news"}))
            })
        );
        assert_eq!(
            parse(r#"42["remove"]"#),
            Ok(ClientPacket::Event {
                namespace: "/".into(),
                ack: None,
                name: "remove".into(),
                data: None
            })
        );
        assert_eq!(
            parse("41"),
            Ok(ClientPacket::Disconnect {
                namespace: "/".into()
            })
        );
        assert_eq!(
            parse(r#"451-["x",{"_placeholder":true,"num":0}]"#),
            Ok(ClientPacket::Binary)
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        for bad in [
            "", "9", "4", "42", "42{}", "42[]", "42[1]", "40{nope", "4é", "42é", "0é", "é",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_packets() {
        assert_eq!(event("event", r#"{"a":1}"#), r#"42["event",{"a":1}]"#);
        assert_eq!(ack(3, r#"{"ok":true}"#), r#"433[{"ok":true}]"#);
        assert_eq!(connect_error("/", "x: y"), r#"44{"message":"x: y"}"#);
        assert_eq!(
            connect_error("/admin", "Invalid namespace"),
            r#"44/admin,{"message":"Invalid namespace"}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_packet_or_an_error(text in "\\PC*") {
            let _ = parse(&text);
            let _ = parse(&format!("4{text}"));
            let _ = parse(&format!("42{text}"));
        }

        #[test]
        fn events_round_trip(
            ack in proptest::option::of(0u64..=i64::MAX as u64),
            name in "\\PC*",
            n in proptest::prelude::any::<i64>(),
            text in "\\PC*",
        ) {
            let data = json!({ "n": n, "text": text });
            let ack_digits = ack.map(|a| a.to_string()).unwrap_or_default();
            let wire = format!("42{ack_digits}{}", json!([name, data]));
            proptest::prop_assert_eq!(
                parse(&wire),
                Ok(ClientPacket::Event { namespace: "/".into(), ack, name, data: Some(data) })
            );
        }
    }
}
