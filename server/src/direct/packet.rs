//! Engine.IO v4 / Socket.IO v5 packets as the direct transport reads and writes them: one
//! Engine.IO packet per WebSocket text message, Socket.IO packets inside `4` (message).

use serde_json::Value;

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

/// Parses one client text message.
pub fn parse(text: &str) -> Result<ClientPacket, PacketError> {
    let mut chars = text.char_indices();
    match chars.next().map(|(_, c)| c) {
        Some('1') => return Ok(ClientPacket::Close),
        Some('2') => return Ok(ClientPacket::Ping),
        Some('3') => return Ok(ClientPacket::Pong),
        Some('6') => return Ok(ClientPacket::Noop),
        Some('4') => {}
        _ => return Err(PacketError("unknown engine.io packet type")),
    }
    let sio = &text[1..];
    let kind = sio
        .as_bytes()
        .first()
        .ok_or(PacketError("empty socket.io packet"))?;
    let rest = &sio[1..];
    if matches!(kind, b'5' | b'6') {
        return Ok(ClientPacket::Binary);
    }
    let (namespace, rest) = match rest.strip_prefix('/') {
        Some(_) => match rest.find(',') {
            Some(i) => (rest[..i].to_owned(), &rest[i + 1..]),
            None => (rest.to_owned(), ""),
        },
        None => ("/".to_owned(), rest),
    };
    match kind {
        b'0' => {
            let auth = if rest.is_empty() {
                None
            } else {
                Some(serde_json::from_str(rest).map_err(|_| PacketError("auth is not JSON"))?)
            };
            Ok(ClientPacket::Connect { namespace, auth })
        }
        b'1' => Ok(ClientPacket::Disconnect { namespace }),
        b'2' => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (ack, json) = rest.split_at(digits);
            let ack = if ack.is_empty() {
                None
            } else {
                Some(
                    ack.parse()
                        .map_err(|_| PacketError("ack id out of range"))?,
                )
            };
            let Ok(Value::Array(mut args)) = serde_json::from_str::<Value>(json) else {
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
        b'3' => Ok(ClientPacket::Ack),
        _ => Err(PacketError("unknown socket.io packet type")),
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
            "",
            "9",
            "4",
            "42",
            "42{}",
            "42[]",
            "42[1]",
            "40{nope",
            "4299999999999999999999[\"x\"]",
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
}
