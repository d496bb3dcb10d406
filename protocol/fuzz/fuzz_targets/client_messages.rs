//! What a socket client sends as JSON: the handshake `auth` (with socket.io-client's recovery
//! `pid` and `offset`), `listen` (with its `since`
//! position), `remove` and client `event` bodies, every name inside them, a project's
//! history settings patch, and an SSE stream's query and resume cursor (`Last-Event-ID`). Parsing must refuse, never panic; whatever is
//! accepted is valid (names round-trip through their own parser).
#![no_main]

use herald_protocol::history::{Epoch, HistorySettings, MAX_HISTORY_SIZE, MAX_HISTORY_TTL_SECS};
use herald_protocol::messages::{ClientEvent, HandshakeAuth, ListenRequest, RemoveRequest};
use herald_protocol::{ChannelName, ProjectId, RoomName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = ProjectId::parse(text) {
            assert_eq!(ProjectId::parse(p.as_str()).ok(), Some(p));
        }
        if let Ok(c) = ChannelName::parse(text) {
            assert_eq!(ChannelName::parse(c.as_str()).ok(), Some(c));
        }
        let _ = herald_protocol::ApiKeyToken::parse(text);
        let _ = RoomName::parse(text);
        let _ = RoomName::parse_channel(text);
        if let Some((offset, channel)) = herald_protocol::csr::parse_marker(text) {
            let again = herald_protocol::csr::marker(offset, &channel);
            assert_eq!(herald_protocol::csr::parse_marker(&again), Some((offset, channel)));
        }
        if let Some(pid) = herald_protocol::csr::Pid::parse(text) {
            assert_eq!(pid.as_str(), text);
        }
        if let Ok(e) = Epoch::parse(text) {
            assert_eq!(Epoch::parse(e.as_str()).ok(), Some(e));
        }
        if let Ok(cursor) = herald_protocol::sse::Cursor::parse(text) {
            assert_eq!(herald_protocol::sse::Cursor::parse(&cursor.encode()), Ok(cursor));
        }
        if let Ok(q) = herald_protocol::sse::SseQuery::parse(text, 8) {
            assert!(q.channels.len() + q.tokens.len() <= 8);
            assert!(!q.channels.is_empty() || !q.tokens.is_empty());
        }
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = HandshakeAuth::parse(Some(&value));
    if let Some(resume) = herald_protocol::csr::ResumeAuth::parse(Some(&value)) {
        if let Some(pid) = resume.pid {
            assert_eq!(pid.as_str().len(), herald_protocol::csr::PID_LEN);
        }
    }
    let _ = ListenRequest::parse(&value);
    let _ = RemoveRequest::parse(&value);
    let _ = ClientEvent::parse(&value);
    if let Ok(Some(since)) = ListenRequest::parse_since(&value) {
        assert_eq!(Epoch::parse(since.epoch.as_str()).ok(), Some(since.epoch));
    }
    if let Ok(settings) = HistorySettings::default().patch(&value) {
        assert!(settings.size <= MAX_HISTORY_SIZE);
        assert!((1..=MAX_HISTORY_TTL_SECS).contains(&settings.ttl_secs));
    }
});
