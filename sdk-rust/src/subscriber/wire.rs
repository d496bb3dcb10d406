//! The wire format: Engine.IO v4 framing over WebSocket with Socket.IO v5 packets inside. The
//! codec itself is [`herald_protocol::codec`] (shared with the browser client); this module
//! turns its errors into the SDK's [`Error`].

use herald_protocol::HandshakeAuth;
use herald_protocol::codec::{self, CodecError, ConnectError};
use serde::Serialize;

use crate::error::Error;

pub(crate) use codec::{DISCONNECT, Incoming, Open};

/// A decoder for one connection.
pub(crate) struct Decoder(codec::Decoder);

impl Decoder {
    pub(crate) fn new() -> Self {
        Self(codec::Decoder::new())
    }

    /// Decodes one WebSocket text frame. Errors are [`Error::Protocol`].
    pub(crate) fn decode(&self, frame: &str) -> Result<Incoming, Error> {
        self.0.decode(frame).map_err(protocol)
    }
}

/// A refused handshake: Herald's `"<code>: <text>"` becomes [`Error::Refused`].
pub(crate) fn connect_error(e: ConnectError) -> Error {
    match e {
        ConnectError::Refused(r) => Error::Refused {
            code: r.code,
            message: r.message,
        },
        ConnectError::Other(message) => Error::Protocol(format!("connection refused: {message}")),
    }
}

/// `40{auth}`: Socket.IO CONNECT to the default namespace with the handshake `auth`.
pub(crate) fn encode_connect(auth: &HandshakeAuth) -> Result<String, Error> {
    codec::encode_connect(auth).map_err(protocol)
}

/// `42<ack>["event", data]`: an event asking for an acknowledgement.
pub(crate) fn encode_event<T: Serialize>(event: &str, data: &T, ack: i64) -> Result<String, Error> {
    codec::encode_event(event, data, ack).map_err(protocol)
}

fn protocol(e: CodecError) -> Error {
    Error::Protocol(e.message().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::ErrorCode;

    #[test]
    fn connect_errors_keep_the_code() {
        let d = Decoder::new();
        let refused = match d.decode(r#"44{"message":"unknown_project: project x does not exist"}"#)
        {
            Ok(Incoming::ConnectError(e)) => connect_error(e),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            refused,
            Error::Refused { code: ErrorCode::UnknownProject, ref message } if message == "project x does not exist"
        ));
        let other = match d.decode(r#"44{"message":"something else"}"#) {
            Ok(Incoming::ConnectError(e)) => connect_error(e),
            other => panic!("{other:?}"),
        };
        assert!(matches!(other, Error::Protocol(m) if m == "connection refused: something else"));
    }

    #[test]
    fn decode_errors_are_protocol_errors() {
        assert!(matches!(
            Decoder::new().decode("9"),
            Err(Error::Protocol(_))
        ));
    }
}
