//! The Server-Sent Events transport's wire contract: the subscribe URL's query
//! (`GET /v1/sse?projectId=…&channel=…&token=…`), the stream's framing, and the resume cursor
//! that every event's `id:` line carries (a reconnecting `EventSource` sends it back as
//! `Last-Event-ID`).
//!
//! A stream is `text/event-stream` (UTF-8): `retry:` first, then messages of the form
//! `event: <name>` + one `data:` line per line of the JSON (a payload published with raw line
//! breaks between its tokens stays one JSON text: the client joins the lines with `\n`) +
//! optionally `id: <cursor>`, each ended by a blank line; `: heartbeat` comments in between.
//! Names are the Socket.IO events' (`event`, `system_message`), the JSON the same.
//!
//! The cursor names, for every channel of the stream whose project keeps history, the epoch
//! and the offset the stream has delivered up to: `v1|<channel>:<epoch>:<offset>|…`. Channel
//! names and epochs never contain `|` or `:` ([`crate::names`], [`Epoch`]), so it needs no
//! escaping. Any instance can resume from it: it is the whole state.
//!
//! ```
//! use herald_protocol::sse::{Cursor, SseQuery};
//! use herald_protocol::{ChannelName, ChannelOffset, Epoch};
//!
//! let q = SseQuery::parse("projectId=acme&channel=news&channel=sports&token=abc", 8)?;
//! assert_eq!(q.project_id.as_str(), "acme");
//! assert_eq!(q.channels.len(), 2);
//! assert_eq!(q.tokens, ["abc"]);
//!
//! let mut cursor = Cursor::default();
//! cursor.set(&ChannelName::parse("news")?, &Epoch::parse("e1")?, ChannelOffset(7));
//! assert_eq!(cursor.encode(), "v1|news:e1:7");
//! assert_eq!(Cursor::parse("v1|news:e1:7")?, cursor);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::history::{ChannelOffset, Epoch, StreamPosition};
use crate::{ChannelName, ErrorCode, ProjectId, Refusal};

/// The path of the SSE endpoint.
pub const SSE_PATH: &str = "/v1/sse";

/// The `retry:` hint (milliseconds) a stream starts with: how long an `EventSource` waits
/// before it reconnects.
pub const RETRY_MS: u64 = 2_000;

/// Default seconds between heartbeat comments (`--sse-heartbeat-secs`).
pub const DEFAULT_HEARTBEAT_SECS: u64 = 15;

/// Longest cursor accepted back (`Last-Event-ID` or `lastEventId`), in bytes.
pub const MAX_CURSOR_BYTES: usize = 64 * 1024;

/// Most `token` parameters one stream may carry (each opens one private channel; the
/// channel count is bounded by the server's channels-per-socket limit as well).
pub const MAX_TOKENS: usize = 128;

/// Longest `token` parameter, in bytes (a channel token is a few hundred).
pub const MAX_TOKEN_BYTES: usize = 4096;

const CURSOR_VERSION: &str = "v1";

/// What a subscribe URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseQuery {
    /// `projectId`.
    pub project_id: ProjectId,
    /// `channel` parameters (public channels), in order, each once.
    pub channels: Vec<ChannelName>,
    /// `token` parameters: channel tokens, each naming the private channel it opens.
    pub tokens: Vec<String>,
    /// `lastEventId`: a cursor, for clients that cannot send the `Last-Event-ID` header.
    pub last_event_id: Option<String>,
}

impl SseQuery {
    /// Parses an untrusted query string (without `?`). At most `max_channels` channels
    /// (`channel` and `token` parameters together); other parameters are ignored.
    pub fn parse(query: &str, max_channels: usize) -> Result<Self, Refusal> {
        let mut project_id = None;
        let mut channels: Vec<ChannelName> = Vec::new();
        let mut tokens = Vec::new();
        let mut last_event_id = None;
        let too_many = || {
            Refusal::new(
                ErrorCode::TooManyChannels,
                format!("a stream may carry at most {max_channels} channels"),
            )
        };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "projectId" => {
                    if project_id.is_some() {
                        return Err(Refusal::new(
                            ErrorCode::InvalidBody,
                            "\"projectId\" must be given once",
                        ));
                    }
                    project_id = Some(ProjectId::parse(&value).map_err(Refusal::from)?);
                }
                "channel" => {
                    let channel = ChannelName::parse(&value).map_err(Refusal::from)?;
                    if !channels.contains(&channel) {
                        if channels.len() + tokens.len() >= max_channels {
                            return Err(too_many());
                        }
                        channels.push(channel);
                    }
                }
                "token" => {
                    if value.is_empty() || value.len() > MAX_TOKEN_BYTES {
                        return Err(Refusal::new(
                            ErrorCode::TokenMalformed,
                            format!("a \"token\" must be 1 to {MAX_TOKEN_BYTES} bytes"),
                        ));
                    }
                    if tokens.len() >= MAX_TOKENS || channels.len() + tokens.len() >= max_channels {
                        return Err(too_many());
                    }
                    tokens.push(value.into_owned());
                }
                "lastEventId" => {
                    if value.len() > MAX_CURSOR_BYTES {
                        return Err(cursor_refusal());
                    }
                    last_event_id = Some(value.into_owned());
                }
                _ => {}
            }
        }
        let project_id = project_id.ok_or_else(|| {
            Refusal::new(
                ErrorCode::MissingProjectId,
                "the stream needs \"projectId\" in its query",
            )
        })?;
        if channels.is_empty() && tokens.is_empty() {
            return Err(Refusal::new(
                ErrorCode::InvalidBody,
                "the stream needs at least one \"channel\" or \"token\"",
            ));
        }
        Ok(Self {
            project_id,
            channels,
            tokens,
            last_event_id,
        })
    }
}

fn cursor_refusal() -> Refusal {
    Refusal::new(
        ErrorCode::InvalidBody,
        "Last-Event-ID is not a cursor this server issued (clear it to start afresh)",
    )
}

/// Where a stream is in each of its channels with history: the resume cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    entries: Vec<(ChannelName, Epoch, ChannelOffset)>,
}

impl Cursor {
    /// Notes that the stream has `channel` up to `offset` under `epoch`.
    pub fn set(&mut self, channel: &ChannelName, epoch: &Epoch, offset: ChannelOffset) {
        match self.entries.iter_mut().find(|(c, _, _)| c == channel) {
            Some(entry) => {
                if entry.1 != *epoch {
                    entry.1 = epoch.clone();
                }
                entry.2 = offset;
            }
            None => self.entries.push((channel.clone(), epoch.clone(), offset)),
        }
    }

    /// Forgets `channel` (it left the stream).
    pub fn remove(&mut self, channel: &ChannelName) {
        self.entries.retain(|(c, _, _)| c != channel);
    }

    /// Where the stream is in `channel`, if it noted it.
    pub fn get(&self, channel: &ChannelName) -> Option<StreamPosition> {
        self.entries
            .iter()
            .find(|(c, _, _)| c == channel)
            .map(|(_, epoch, offset)| StreamPosition {
                offset: *offset,
                epoch: epoch.clone(),
            })
    }

    /// The cursor's text (what `id:` carries).
    pub fn encode(&self) -> String {
        let mut out = String::from(CURSOR_VERSION);
        for (channel, epoch, offset) in &self.entries {
            out.push('|');
            out.push_str(channel.as_str());
            out.push(':');
            out.push_str(epoch.as_str());
            out.push(':');
            out.push_str(&offset.get().to_string());
        }
        out
    }

    /// Parses an untrusted cursor (from `Last-Event-ID`): refused unless it is one
    /// [`Cursor::encode`] could have written.
    pub fn parse(text: &str) -> Result<Self, Refusal> {
        if text.len() > MAX_CURSOR_BYTES {
            return Err(cursor_refusal());
        }
        let mut parts = text.split('|');
        if parts.next() != Some(CURSOR_VERSION) {
            return Err(cursor_refusal());
        }
        let mut cursor = Cursor::default();
        for part in parts {
            let mut fields = part.split(':');
            let (Some(channel), Some(epoch), Some(offset), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(cursor_refusal());
            };
            let channel = ChannelName::parse(channel).map_err(|_| cursor_refusal())?;
            let epoch = Epoch::parse(epoch).map_err(|_| cursor_refusal())?;
            let offset = decimal(offset).ok_or_else(cursor_refusal)?;
            if cursor.get(&channel).is_some() {
                return Err(cursor_refusal());
            }
            cursor.set(&channel, &epoch, ChannelOffset(offset));
        }
        Ok(cursor)
    }
}

/// A canonical decimal `u64` (what `to_string` writes: digits only, no leading zero).
fn decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// Appends one message to `out`: `event: <event>`, the JSON `data` as one `data:` line per
/// line, `id: <id>` when given, and the blank line that ends it.
pub fn message(out: &mut String, event: &str, data: &str, id: Option<&str>) {
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    // A line ends at CR, LF or CRLF (the SSE grammar); JSON has them only as whitespace.
    for line in data.split('\n') {
        for piece in line.split('\r') {
            out.push_str("data: ");
            out.push_str(piece);
            out.push('\n');
        }
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    out.push('\n');
}

/// The `event:` and `data:` lines of a message, without its end: shared by every stream that
/// gets it, each adding its own [`id_and_end`].
pub fn message_head(event: &str, data: &str) -> String {
    let mut out = String::with_capacity(event.len() + data.len() + 16);
    message(&mut out, event, data, None);
    out.pop();
    out
}

/// What ends a message started by [`message_head`]: its `id:` line, if any, and the blank
/// line.
pub fn id_and_end(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("id: {id}\n\n"),
        None => "\n".to_owned(),
    }
}

/// What a stream starts with: the reconnection delay hint.
pub fn preamble() -> String {
    format!("retry: {RETRY_MS}\n\n")
}

/// A heartbeat comment (ignored by clients, keeps proxies from closing an idle stream).
pub const HEARTBEAT: &str = ": heartbeat\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_refusals_have_their_codes() {
        let code = |q: &str| SseQuery::parse(q, 2).map(|_| ()).map_err(|r| r.code);
        assert_eq!(code("channel=a"), Err(ErrorCode::MissingProjectId));
        assert_eq!(code("projectId=acme"), Err(ErrorCode::InvalidBody));
        assert_eq!(
            code("projectId=Bad%20Id&channel=a"),
            Err(ErrorCode::InvalidProjectId)
        );
        assert_eq!(
            code("projectId=acme&channel=a%20b"),
            Err(ErrorCode::InvalidChannelName)
        );
        assert_eq!(
            code("projectId=acme&channel=privateer"),
            Err(ErrorCode::AmbiguousChannelName)
        );
        assert_eq!(
            code("projectId=acme&channel=a&channel=b&channel=c"),
            Err(ErrorCode::TooManyChannels)
        );
        assert_eq!(
            code("projectId=acme&channel=a&token=x&token=y"),
            Err(ErrorCode::TooManyChannels)
        );
        assert_eq!(
            code("projectId=acme&projectId=acme&channel=a"),
            Err(ErrorCode::InvalidBody)
        );
        assert_eq!(
            code("projectId=acme&token="),
            Err(ErrorCode::TokenMalformed)
        );
        // The same channel twice is one channel.
        assert_eq!(code("projectId=acme&channel=a&channel=a&channel=b"), Ok(()));
    }

    #[test]
    fn cursor_round_trips_and_refuses_what_it_did_not_write() {
        let mut c = Cursor::default();
        let (a, b) = (
            ChannelName::parse("a.b,c;d=e@f").expect("valid"),
            ChannelName::parse("z").expect("valid"),
        );
        c.set(&a, &Epoch::parse("E-1_x").expect("valid"), ChannelOffset(3));
        c.set(
            &b,
            &Epoch::parse("f").expect("valid"),
            ChannelOffset(u64::MAX),
        );
        c.set(&a, &Epoch::parse("E-1_x").expect("valid"), ChannelOffset(4));
        assert_eq!(Cursor::parse(&c.encode()), Ok(c.clone()));
        assert_eq!(Cursor::parse("v1"), Ok(Cursor::default()));
        for bad in [
            "",
            "v2|a:e:1",
            "v1|a:e",
            "v1|a:e:1:2",
            "v1|a:e:-1",
            "v1|a:e:01x",
            "v1|a b:e:1",
            "v1|a:e:1|a:e:2",
            "v1|",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?} accepted");
        }
        c.remove(&a);
        assert_eq!(c.encode(), format!("v1|z:f:{}", u64::MAX));
    }

    #[test]
    fn data_with_line_breaks_stays_one_message() {
        let mut out = String::new();
        message(&mut out, "event", "{\"a\":\r\n1,\r\"b\":\n2}", Some("v1"));
        assert_eq!(
            out,
            "event: event\ndata: {\"a\":\ndata: \ndata: 1,\ndata: \"b\":\ndata: 2}\nid: v1\n\n"
        );
        assert_eq!(
            message_head("e", "{}") + &id_and_end(None),
            "event: e\ndata: {}\n\n"
        );
    }
}
