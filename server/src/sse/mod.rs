//! The Server-Sent Events transport: `GET /v1/sse?projectId=…&channel=…&token=…` answers a
//! `text/event-stream` of the channels' events, for clients with nothing but HTTP (a browser
//! `EventSource`, `curl -N`, an IoT device). The wire format (query, framing, resume cursor)
//! is [`herald_protocol::sse`]; PROTOCOL.md § Server-Sent Events says it for users.
//!
//! A stream is a [`Peer`](crate::gateway::Peer) like a socket: every channel goes through the
//! gateway's own `listen` (the same checks, error codes, tracking, revocation and recovery
//! from history), so nothing here re-states a rule. Everything is checked before the response
//! starts: a refusal is an HTTP error with the JSON error body. A reconnecting `EventSource`
//! sends the cursor of the last message it got as `Last-Event-ID`; each channel it names is
//! listened to with `since`, and the stream starts with the replays and one `Success`
//! `system_message` per channel saying whether it recovered.
//!
//! The fan-out builds an event's `event:`/`data:` lines once per broadcast for every stream
//! of the room ([`SseRooms::emit`]); each stream adds its own `id:` line.

mod conn;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_protocol::sse::{Cursor, SseQuery};
use herald_protocol::{
    ChannelName, ErrorCode, ListenAck, ListenAnswer, Refusal, RoomName, SystemMessage,
};
use serde_json::{Value, json};

pub use conn::{SseClose, SseConn, SseRooms};

use crate::gateway::{self, Gateway, Peer, Session};
use crate::rest::ApiError;

/// Settings of the SSE transport (from `herald serve`'s flags).
#[derive(Debug, Clone)]
pub struct SseSettings {
    /// How long a stream may stay silent before a heartbeat comment.
    pub heartbeat: Duration,
    /// Messages queued per stream before it counts as a slow consumer.
    pub socket_buffer: usize,
    /// How long a closing stream may take to deliver its end.
    pub close_timeout: Duration,
}

/// What the SSE handler needs.
#[derive(Clone)]
pub struct SseTransport {
    /// The gateway (store, tokens, fan-out, history).
    pub gateway: Gateway,
    /// The settings.
    pub settings: Arc<SseSettings>,
}

/// `GET /v1/sse`: checks everything, then answers the stream; a refusal is the usual JSON
/// error with its HTTP status.
pub async fn subscribe(State(t): State<SseTransport>, req: Request) -> Response {
    // What the stream needs of the request (the request itself is not `Sync`).
    let asked = Asked {
        query: req.uri().query().unwrap_or("").to_owned(),
        last_event_id: req
            .headers()
            .get("last-event-id")
            .map(|v| v.to_str().map(str::to_owned).map_err(|_| ())),
        wire: crate::direct::wire_of(&req),
    };
    drop(req);
    match open(&t, asked).await {
        Ok(response) => response,
        Err(refusal) => {
            metrics::counter!(crate::metrics::CONNECT_REFUSALS, "code" => refusal.code.as_str())
                .increment(1);
            ApiError::from(refusal).into_response()
        }
    }
}

/// The parts of the subscribe request the stream uses.
struct Asked {
    query: String,
    /// The `Last-Event-ID` header (`Err`: not visible ASCII).
    last_event_id: Option<Result<String, ()>>,
    wire: Option<Arc<tokio::net::TcpStream>>,
}

async fn open(t: &SseTransport, asked: Asked) -> Result<Response, Refusal> {
    let gw = &t.gateway;
    let query = SseQuery::parse(&asked.query, gw.max_channels_per_socket)?;
    let last_event_id = match asked.last_event_id {
        Some(Ok(v)) => Some(v),
        Some(Err(())) => {
            return Err(Refusal::new(
                ErrorCode::InvalidBody,
                "Last-Event-ID is not text",
            ));
        }
        None => query.last_event_id.clone(),
    };
    // An empty Last-Event-ID is what a client sends to start afresh.
    let cursor = match last_event_id.as_deref() {
        None | Some("") => None,
        Some(text) => Some(Cursor::parse(text)?),
    };
    // Every channel of the stream, with the token that opens it (private ones).
    let mut wanted: Vec<(ChannelName, Option<&str>)> =
        query.channels.iter().map(|c| (c.clone(), None)).collect();
    for token in &query.tokens {
        let channel = crate::channel_token::peek_channel(token)?;
        if wanted.iter().any(|(c, _)| c == &channel) {
            return Err(Refusal::new(
                ErrorCode::InvalidBody,
                format!(
                    "channel {channel} is named twice (a \"channel\" and a \"token\", or two tokens)"
                ),
            ));
        }
        wanted.push((channel, Some(token)));
    }

    let (conn, rx) = gw.fanout.sse().register(
        t.settings.socket_buffer,
        asked.wire,
        t.settings.close_timeout,
    );
    let registration = conn::Registration::new(conn.clone(), gw.clone());
    let auth = json!({ "projectId": query.project_id });
    let project = gateway::check_handshake(gw, conn.id(), Some(&auth))
        .await
        .map_err(|r| r.0)?;
    conn.set_session(Session::new(project.clone()));
    metrics::gauge!(crate::metrics::SOCKETS_CONNECTED).increment(1.0);
    conn.join(&RoomName::project(&project));

    for (channel, token) in &wanted {
        let since = cursor.as_ref().and_then(|c| c.get(channel));
        let mut body = json!({ "channelName": channel });
        if let Some(token) = token {
            body["authToken"] = Value::from(*token);
        }
        if let Some(since) = &since {
            body["since"] = json!({ "offset": since.offset, "epoch": since.epoch });
        }
        let (result, answer) = gateway::listen(conn.as_ref(), gw, Some(body)).await;
        gateway::count_listen(&result);
        let message = match result {
            Ok(message) => message,
            // Dropping the registration undoes what the earlier channels did.
            Err((refusal, _)) => return Err(refusal),
        };
        let message = with_answer(message, channel, answer.answer.as_ref(), &conn);
        conn.send_system(&with_presence(message, answer.presence));
    }
    let first = conn.finish_setup();
    tracing::debug!(stream_id = %conn.id(), project_id = %project, channels = wanted.len(), "SSE stream opened");

    let mut response = conn::body(registration, rx, first, t.settings.heartbeat).into_response();
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer responses (nginx) would hold the events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The `Success` of a presence channel's listen with its members (`members`,
/// `presenceVersion`), as a socket's ack has them.
fn with_presence(
    mut message: SystemMessage,
    presence: Option<herald_protocol::presence::PresenceSnapshot>,
) -> SystemMessage {
    if let (Some(presence), Some(Value::Object(data))) = (presence, message.data.as_mut())
        && let Ok(Value::Object(fields)) = serde_json::to_value(presence)
    {
        data.extend(fields);
    }
    message
}

/// The `Success` of a channel's listen with what the socket's ack would add (`recovered`,
/// `reason`, `epoch`, `offset`), and the stream's cursor noted at the answered position.
fn with_answer(
    mut message: SystemMessage,
    channel: &ChannelName,
    answer: Option<&ListenAnswer>,
    conn: &SseConn,
) -> SystemMessage {
    let Some(answer) = answer else {
        return message;
    };
    let position = match answer {
        ListenAnswer::Position(p) => Some((&p.epoch, p.offset)),
        ListenAnswer::Recovery(r) => r.epoch.as_ref().zip(r.offset),
    };
    if let Some((epoch, offset)) = position {
        conn.note_position(channel, epoch, offset.get());
    }
    let ack = serde_json::to_value(ListenAck {
        ok: true,
        answer: answer.clone(),
    });
    if let (Ok(Value::Object(fields)), Some(Value::Object(data))) = (ack, message.data.as_mut()) {
        for (k, v) in fields {
            if k != "ok" {
                data.insert(k, v);
            }
        }
    }
    message
}
