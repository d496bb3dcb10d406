//! One direct connection's life: the Engine.IO open packet, the namespace CONNECT (the same
//! handshake check as socketioxide's path), requests answered through the gateway's handlers,
//! the heartbeat, and the writer task that drains the socket's queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::messages::event_names::{EVENT, LISTEN, REMOVE};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::packet::{self, ClientPacket};
use super::{CloseReason, DirectConn, DirectTransport, frame, wire};
use crate::gateway::{self, Outcome, Peer, Session};
use crate::metrics as m;

/// Largest write when a backlog is coalesced.
const COALESCE_BYTES: usize = 64 * 1024;

/// Serves one upgraded connection until it closes: reads through `io` (hyper's upgraded
/// stream, which holds any bytes already read), writes to `wire` (the same socket).
pub async fn run<IO>(io: IO, wire: Arc<TcpStream>, transport: DirectTransport)
where
    IO: AsyncRead + Send + Unpin + 'static,
{
    let settings = transport.settings.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(settings.socket_buffer.max(2));
    let rooms = transport.gateway.direct().clone();
    let conn = rooms.register(wire, tx, settings.close_timeout);
    let open = packet::open(
        &conn.sid.to_string(),
        settings.ping_interval.as_millis() as u64,
        settings.ping_timeout.as_millis() as u64,
        settings.max_message_bytes,
    );
    conn.send(frame::text(&open));
    let mut writer = tokio::spawn(write_loop(rx, conn.clone()));
    let _ = conn.writer.set(writer.abort_handle());

    let mut reader = Reader {
        conn: conn.clone(),
        transport,
        buf: Vec::new(),
        message: None,
        awaiting_pong: None,
        next_ping: Instant::now() + settings.ping_interval,
        connect_deadline: Some(Instant::now() + settings.connect_timeout),
    };
    let reason = reader.read_loop(io, &mut writer).await;
    conn.close(reason);
    // The writer ends after the goodbye frames; one that cannot deliver them in time (the
    // client reads nothing) is aborted.
    if !writer.is_finished()
        && tokio::time::timeout(settings.close_timeout, &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
    rooms.unregister(&conn);
    if let Some(session) = conn.session.get() {
        gateway::disconnected(
            &reader.transport.gateway,
            conn.sid,
            Some(session.clone()),
            &format!("{reason:?}"),
        )
        .await;
    }
}

/// Writes what [`DirectConn::send`] queued because the socket was busy: a lone frame as it is,
/// a backlog coalesced into writes of up to 64 KiB. Once the queue is empty the connection is
/// marked idle again (direct writes resume). Ends with the goodbye frames once closing.
async fn write_loop(mut rx: mpsc::Receiver<Bytes>, conn: Arc<DirectConn>) {
    let tcp = conn.wire.clone();
    let mut out: Vec<u8> = Vec::new();
    while let Some(first) = rx.recv().await {
        if conn.closing().is_some() {
            break;
        }
        let result = match rx.try_recv() {
            Err(_) if first.is_empty() => Ok(()),
            Err(_) => wire::write_all(&tcp, &first).await,
            Ok(second) => {
                // The buffer lives only while there is a backlog: an idle socket holds none.
                out.reserve(COALESCE_BYTES.min(16 * (first.len() + second.len())));
                out.extend_from_slice(&first);
                out.extend_from_slice(&second);
                while out.len() < COALESCE_BYTES {
                    match rx.try_recv() {
                        Ok(b) => out.extend_from_slice(&b),
                        Err(_) => break,
                    }
                }
                let r = wire::write_all(&tcp, &out).await;
                out = Vec::new();
                r
            }
        };
        if result.is_err() {
            conn.close(CloseReason::Client);
            return;
        }
        // Under the lock a sender either still sees `busy` (and queues: we receive it next)
        // or sees the socket idle after we cleared it (and writes directly, after us).
        let mut state = conn.wire_state.lock();
        state.last_write = std::time::Instant::now();
        if rx.is_empty() && conn.closing().is_none() {
            state.busy = false;
        }
    }
    // Closing: what is still queued is dropped, the client gets the reason.
    rx.close();
    while rx.try_recv().is_ok() {}
    if let Some(reason) = conn.closing() {
        for f in reason.goodbye() {
            if wire::write_all(&tcp, &f).await.is_err() {
                return;
            }
        }
    }
    let _ = wire::shutdown_write(&tcp);
}

struct Reader {
    conn: Arc<DirectConn>,
    transport: DirectTransport,
    /// Bytes read but not parsed yet (empty, without allocation, when idle).
    buf: Vec<u8>,
    /// A fragmented text message being assembled.
    message: Option<Vec<u8>>,
    awaiting_pong: Option<Instant>,
    next_ping: Instant,
    connect_deadline: Option<Instant>,
}

impl Reader {
    fn deadline(&self) -> Instant {
        let mut d = self.next_ping;
        if let Some(p) = self.awaiting_pong {
            d = d.min(p);
        }
        if let Some(c) = self.connect_deadline {
            d = d.min(c);
        }
        d
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        mut rd: R,
        writer: &mut tokio::task::JoinHandle<()>,
    ) -> CloseReason {
        let settings = self.transport.settings.clone();
        let mut chunk = [0u8; 512];
        loop {
            let timer = tokio::time::sleep_until(self.deadline());
            tokio::select! {
                read = rd.read(&mut chunk) => {
                    let n = match read {
                        Ok(0) | Err(_) => return CloseReason::Client,
                        Ok(n) => n,
                    };
                    self.buf.extend_from_slice(&chunk[..n]);
                    if let Some(reason) = self.process().await {
                        return reason;
                    }
                    if self.buf.is_empty() {
                        self.buf = Vec::new();
                    }
                }
                _ = timer => {
                    let now = Instant::now();
                    if self.connect_deadline.is_some_and(|d| d <= now) {
                        return CloseReason::ConnectTimeout;
                    }
                    if self.awaiting_pong.is_some_and(|d| d <= now) {
                        return CloseReason::HeartbeatTimeout;
                    }
                    if self.next_ping <= now {
                        self.conn.send(frame::text("2"));
                        if self.awaiting_pong.is_none() {
                            self.awaiting_pong = Some(now + settings.ping_timeout);
                        }
                        self.next_ping = now + settings.ping_interval;
                    }
                }
                _ = &mut *writer => {
                    return self.conn.closing().unwrap_or(CloseReason::Client);
                }
            }
        }
    }

    /// Handles every complete frame in the buffer.
    async fn process(&mut self) -> Option<CloseReason> {
        let max = self.transport.settings.max_message_bytes;
        loop {
            let (f, used) = match frame::parse(&self.buf, max) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return None,
                Err(e) => return Some(CloseReason::Protocol(e.code, e.reason)),
            };
            self.buf.drain(..used);
            match f.opcode {
                frame::TEXT | frame::CONTINUATION => {
                    let text = match (f.opcode, self.message.take()) {
                        (frame::TEXT, None) => f.payload,
                        (frame::CONTINUATION, Some(mut head)) => {
                            head.extend_from_slice(&f.payload);
                            head
                        }
                        _ => {
                            return Some(CloseReason::Protocol(
                                frame::CLOSE_PROTOCOL_ERROR,
                                "unexpected continuation",
                            ));
                        }
                    };
                    if text.len() > max {
                        return Some(CloseReason::Protocol(
                            frame::CLOSE_TOO_BIG,
                            "message too big",
                        ));
                    }
                    if !f.fin {
                        self.message = Some(text);
                        continue;
                    }
                    let Ok(text) = String::from_utf8(text) else {
                        return Some(CloseReason::Protocol(
                            frame::CLOSE_PROTOCOL_ERROR,
                            "text frame is not UTF-8",
                        ));
                    };
                    if let Some(reason) = self.on_text(&text).await {
                        return Some(reason);
                    }
                }
                frame::BINARY => {
                    return Some(CloseReason::Protocol(
                        frame::CLOSE_UNSUPPORTED,
                        "binary messages are not supported",
                    ));
                }
                frame::CLOSE => return Some(CloseReason::Client),
                frame::PING => {
                    self.conn.send(frame::encode(frame::PONG, &f.payload));
                }
                frame::PONG => {}
                _ => {
                    return Some(CloseReason::Protocol(
                        frame::CLOSE_PROTOCOL_ERROR,
                        "unknown opcode",
                    ));
                }
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        let packet = match packet::parse(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(socket_id = %self.conn.sid, error = %e, "malformed packet; closing");
                return Some(CloseReason::Protocol(frame::CLOSE_PROTOCOL_ERROR, e.0));
            }
        };
        match packet {
            ClientPacket::Pong => self.awaiting_pong = None,
            ClientPacket::Ping => {
                self.conn.send(frame::text("3"));
            }
            ClientPacket::Noop | ClientPacket::Ack => {}
            ClientPacket::Close => return Some(CloseReason::Client),
            ClientPacket::Binary => {
                return Some(CloseReason::Protocol(
                    frame::CLOSE_UNSUPPORTED,
                    "binary attachments are not supported",
                ));
            }
            ClientPacket::Connect { namespace, auth } => self.on_connect(&namespace, auth).await,
            ClientPacket::Disconnect { namespace } => {
                if namespace == "/" {
                    return Some(CloseReason::Client);
                }
            }
            ClientPacket::Event {
                namespace,
                ack,
                name,
                data,
            } => {
                if namespace == "/" && self.conn.session.get().is_some() {
                    self.on_event(ack, &name, data).await;
                } else {
                    tracing::debug!(socket_id = %self.conn.sid, namespace, "event before CONNECT ignored");
                }
            }
        }
        None
    }

    async fn on_connect(&mut self, namespace: &str, auth: Option<Value>) {
        let conn = &self.conn;
        let sid = conn.sid.to_string();
        if namespace != "/" {
            conn.send(frame::text(&packet::connect_error(
                namespace,
                "Invalid namespace",
            )));
            return;
        }
        if conn.session.get().is_some() {
            conn.send(frame::text(&packet::connected(&sid)));
            return;
        }
        match gateway::check_handshake(&self.transport.gateway, conn.sid, auth.as_ref()).await {
            Ok(project) => {
                let room = herald_protocol::RoomName::project(&project);
                let _ = conn.session.set(Arc::new(Session::new(project)));
                conn.join(&room);
                self.connect_deadline = None;
                metrics::gauge!(m::SOCKETS_CONNECTED).increment(1.0);
                tracing::debug!(socket_id = %sid, project_id = %room, transport = "direct websocket", "socket connected");
                conn.send(frame::text(&packet::connected(&sid)));
            }
            Err(refusal) => {
                conn.send(frame::text(&packet::connect_error(
                    "/",
                    &refusal.to_string(),
                )));
            }
        }
    }

    async fn on_event(&mut self, ack: Option<u64>, name: &str, data: Option<Value>) {
        let gw = &self.transport.gateway;
        let conn = self.conn.as_ref();
        let result: Outcome = match name {
            LISTEN => {
                let r = gateway::listen(conn, gw, data).await;
                gateway::count_listen(&r);
                r
            }
            REMOVE => gateway::remove(conn, gw, data).await,
            EVENT => gateway::client_event(conn, gw, data).await,
            other => gateway::unknown_event(other),
        };
        let (ack_body, message) = gateway::answer(result);
        // The ack and the system_message leave in one write, so a client sees both at once.
        let mut reply = Vec::new();
        if let Some(id) = ack {
            match serde_json::to_string(&ack_body) {
                Ok(json) => reply.extend_from_slice(&frame::text(&packet::ack(id, &json))),
                Err(e) => tracing::error!(error = %e, "ack not encodable"),
            }
        }
        match serde_json::to_string(&message) {
            Ok(json) => reply.extend_from_slice(&frame::text(&packet::event(
                herald_protocol::messages::event_names::SYSTEM_MESSAGE,
                &json,
            ))),
            Err(e) => tracing::error!(error = %e, "system message not encodable"),
        }
        if !reply.is_empty() {
            conn.send(Bytes::from(reply));
        }
    }
}

/// How long `close` waits for a writer to deliver the goodbye frames by default.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
