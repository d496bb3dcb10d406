//! WebSocket framing (RFC 6455) for the direct transport: server frames are encoded once into
//! `Bytes` and shared by every socket they go to; client frames are parsed from a read buffer.
//!
//! Only what Engine.IO needs: text frames (fragmented or not), ping/pong, close. Binary data
//! frames are refused (Herald's protocol is JSON), as are frames above the size limit.

use std::io::Cursor;

use bytes::Bytes;
use tungstenite::protocol::frame::FrameHeader;

/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const BINARY: u8 = 0x2;
/// Opcode of a continuation frame.
pub const CONTINUATION: u8 = 0x0;
/// Opcode of a close frame.
pub const CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const PONG: u8 = 0xA;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: data the server does not accept (binary frames).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close code: policy violation (heartbeat or connect timeout).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: a message above the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the server met an unexpected condition.
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code (application range): the client did not read fast enough and its queue filled.
pub const CLOSE_SLOW_CONSUMER: u16 = herald_protocol::messages::close_codes::SLOW_CONSUMER;

/// Encodes one unmasked server frame with the FIN bit set.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = Vec::with_capacity(len + 10);
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A server text frame.
pub fn text(payload: &str) -> Bytes {
    encode(TEXT, payload.as_bytes())
}

/// A close frame with a code and a reason (truncated to the 123 bytes a control frame allows).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(CLOSE, &payload)
}

/// One client frame, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit: the last frame of a message.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

/// Why a client's bytes are not a frame Herald accepts; the connection closes with `code`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct FrameError {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
}

/// Parses the first frame of `buf`: `Ok(None)` when more bytes are needed, else the frame and
/// the number of bytes it used. Client frames must be masked; a payload above `max_len` is an
/// error before any of it is buffered. The header is read by tungstenite's `FrameHeader`
/// (the parser under socketioxide's WebSocket transport); Herald adds only its own rules and
/// the unmasking. Panic-free for any input (fuzzed: `server/fuzz`).
pub fn parse(buf: &[u8], max_len: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let mut cursor = Cursor::new(buf);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(protocol_error("unknown opcode")),
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(protocol_error(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    let Some(mask) = header.mask else {
        return Err(protocol_error("client frames must be masked"));
    };
    let opcode = u8::from(header.opcode);
    if opcode >= 0x8 && (len > 125 || !header.is_final) {
        return Err(protocol_error("invalid control frame"));
    }
    if len > max_len as u64 {
        return Err(FrameError {
            code: CLOSE_TOO_BIG,
            reason: "message too big",
        });
    }
    // Both fit in usize: the header is at most 14 bytes and `len` is at most `max_len`.
    let start = cursor.position() as usize;
    let Some(end) = start.checked_add(len as usize) else {
        return Err(FrameError {
            code: CLOSE_TOO_BIG,
            reason: "message too big",
        });
    };
    let Some(masked) = buf.get(start..end) else {
        return Ok(None);
    };
    let payload = masked
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect();
    Ok(Some((
        Frame {
            fin: header.is_final,
            opcode,
            payload,
        },
        end,
    )))
}

fn protocol_error(reason: &'static str) -> FrameError {
    FrameError {
        code: CLOSE_PROTOCOL_ERROR,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn server_frames_use_the_shortest_length_form() {
        assert_eq!(&text("2")[..], &[0x81, 1, b'2']);
        let mid = text(&"x".repeat(300));
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        let big = text(&"x".repeat(70_000));
        assert_eq!(big[1], 127);
        assert_eq!(big.len(), 70_000 + 10);
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let f = close(CLOSE_SLOW_CONSUMER, "slow_consumer");
        assert_eq!(f[0], 0x88);
        assert_eq!(&f[2..4], &4008u16.to_be_bytes());
        assert_eq!(&f[4..], b"slow_consumer");
        let long = close(CLOSE_NORMAL, &"é".repeat(100));
        assert!(long.len() <= 2 + 125);
    }

    #[test]
    fn parses_masked_frames_of_every_length_form() {
        for n in [0, 5, 125, 126, 300, 65_535, 65_536] {
            let bytes = masked(TEXT, true, &vec![b'a'; n]);
            let (frame, used) = parse(&bytes, 1 << 20).expect("valid").expect("complete");
            assert_eq!(used, bytes.len());
            assert_eq!(frame.payload.len(), n);
            assert!(frame.fin);
            // Every prefix is incomplete, never an error.
            for cut in [1, 2, bytes.len() - 1] {
                assert_eq!(parse(&bytes[..cut.min(bytes.len() - 1)], 1 << 20), Ok(None));
            }
        }
    }

    #[test]
    fn refuses_unmasked_oversized_and_bad_control_frames() {
        let mut unmasked = masked(TEXT, true, b"hi");
        unmasked[1] &= 0x7f;
        assert_eq!(
            parse(&unmasked, 100).map_err(|e| e.code),
            Err(CLOSE_PROTOCOL_ERROR)
        );
        let big = masked(TEXT, true, &[b'a'; 200]);
        assert_eq!(parse(&big, 100).map_err(|e| e.code), Err(CLOSE_TOO_BIG));
        let ping = masked(PING, false, b"x");
        assert_eq!(
            parse(&ping, 100).map_err(|e| e.code),
            Err(CLOSE_PROTOCOL_ERROR)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_a_frame_more_needed_or_an_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(Some((f, used))) = parse(&bytes, 200) {
                proptest::prop_assert!(used <= bytes.len() && f.payload.len() <= 200);
            }
        }

        #[test]
        fn masked_frames_round_trip_and_prefixes_wait(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1_000),
            fin in proptest::prelude::any::<bool>(),
        ) {
            let bytes = masked(TEXT, fin, &payload);
            let (frame, used) = parse(&bytes, 1 << 20).expect("valid").expect("complete");
            proptest::prop_assert_eq!(used, bytes.len());
            proptest::prop_assert_eq!(frame.fin, fin);
            proptest::prop_assert_eq!(frame.payload, payload);
            proptest::prop_assert_eq!(parse(&bytes[..bytes.len() - 1], 1 << 20), Ok(None));
        }
    }
}
