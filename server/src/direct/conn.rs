//! One direct connection's life: the Engine.IO open packet, the namespace CONNECT (the same
//! handshake check as socketioxide's path), requests answered through the gateway's handlers,
//! the heartbeat, and the writer task that drains the socket's queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::messages::event_names::{EVENT, LISTEN, PRESENCE, REMOVE};
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
    let registration = Registration {
        conn: rooms.register(wire, tx, settings.close_timeout),
        rooms,
        gateway: transport.gateway.clone(),
    };
    let conn = registration.conn.clone();
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
    // Clean-up is `registration`'s drop: here, and on every other way out of this function,
    // a panic in a request handler included.
    drop(registration);
}

/// Owns one registered connection. Dropping it, however the connection's task ends (return or
/// panic), removes the connection from its rooms and the connection list, makes sure its
/// writer stops (a connection that was not closing yet is closed with 1011, and its writer
/// aborted after the close timeout), and runs the gateway's disconnect clean-up (gauges,
/// tracking entries) in a task of its own.
struct Registration {
    conn: Arc<DirectConn>,
    rooms: Arc<super::DirectRooms>,
    gateway: gateway::Gateway,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A no-op when the connection already closes for a reason of its own.
        self.conn.close(CloseReason::Internal);
        self.rooms.unregister(&self.conn);
        let Some(session) = self.conn.session.get().cloned() else {
            return;
        };
        let reason = format!("{:?}", self.conn.closing().unwrap_or(CloseReason::Internal));
        let (gateway, sid) = (self.gateway.clone(), self.conn.sid);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    gateway::disconnected(&gateway, sid, Some(session), &reason).await;
                });
            }
            Err(_) => {
                tracing::debug!(socket_id = %sid, "no runtime left for the disconnect clean-up")
            }
        }
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
        if let Some(session) = conn.session.get() {
            conn.send(frame::text(&connected(&sid, session)));
            return;
        }
        let gw = &self.transport.gateway;
        match gateway::check_handshake(gw, conn.sid, auth.as_ref()).await {
            Ok(project) => {
                let room = herald_protocol::RoomName::project(&project);
                let (session, resume) = gateway::connect_session(gw, project, auth.as_ref());
                let _ = conn.session.set(Arc::new(session));
                conn.join(&room);
                self.connect_deadline = None;
                metrics::gauge!(m::SOCKETS_CONNECTED).increment(1.0);
                if let Some(resume) = resume {
                    // The replayed and live events sent meanwhile precede the CONNECT reply:
                    // socket.io-client buffers them and hands them over once connected.
                    if let Err((_, joined)) = gateway::resume(conn.as_ref(), gw, &resume).await
                        && joined
                    {
                        // Half-resumed: a fresh session must have no rooms, and what was sent
                        // cannot be taken back. The client reconnects and starts afresh.
                        conn.close(CloseReason::Internal);
                        return;
                    }
                }
                tracing::debug!(socket_id = %sid, project_id = %room, transport = "direct websocket", "socket connected");
                if let Some(session) = conn.session.get() {
                    conn.send(frame::text(&connected(&sid, session)));
                }
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
        let (result, extras): (Outcome, _) = match name {
            LISTEN => {
                let (r, extras) = gateway::listen(conn, gw, data).await;
                gateway::count_listen(&r);
                (r, extras)
            }
            REMOVE => (gateway::remove(conn, gw, data).await, Default::default()),
            EVENT => (
                gateway::client_event(conn, gw, data).await,
                Default::default(),
            ),
            PRESENCE => gateway::presence_query(conn, gw, data).await,
            other => (gateway::unknown_event(other), Default::default()),
        };
        let (ack_body, message) = gateway::answer_with(result, extras);
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

/// The CONNECT reply: with the session's pid when it is recoverable.
fn connected(sid: &str, session: &Session) -> String {
    match &session.csr {
        Some(csr) => packet::connected_with_pid(sid, &csr.pid.lock()),
        None => packet::connected(sid),
    }
}

/// How long `close` waits for a writer to deliver the goodbye frames by default.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    //! The direct transport's invariants on real loopback sockets: frame order across direct
    //! and queued writes, and clean-up on every way a connection ends.
    use super::*;
    use crate::channel_token::ChannelTokens;
    use crate::direct::{DirectRooms, DirectSettings, Sent};
    use crate::fanout::Fanout;
    use crate::gateway::{Gateway, GatewayInner};
    use crate::revocation::embedded::EmbeddedQueue;
    use crate::store::embedded::EmbeddedStore;
    use crate::tracking::ConnectionTracker;
    use crate::tracking::memory::MemoryTracker;
    use herald_protocol::{ApiKeyId, ChannelName, ProjectId, RoomName};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    struct Fixture {
        transport: DirectTransport,
        tracker: Arc<MemoryTracker>,
        _dir: tempfile::TempDir,
    }

    fn fixture(settings: DirectSettings) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let queue = Arc::new(EmbeddedQueue::open(store.database()).expect("queue"));
        let tracker = Arc::new(MemoryTracker::new());
        let fanout = Arc::new(Fanout::new(Arc::new(DirectRooms::new())));
        let webhooks = crate::webhooks::WebhookEvents::channel().0;
        let gateway = Gateway::new(GatewayInner {
            presence: Arc::new(crate::presence::Presences::new(
                Arc::new(crate::presence::memory::MemoryPresence::new()),
                fanout.clone(),
                1000,
                webhooks.clone(),
            )),
            occupancy: Arc::new(crate::occupancy::Occupancy::new()),
            webhooks,
            store,
            tracker: tracker.clone(),
            tokens: ChannelTokens::new(
                "herald",
                Duration::from_secs(600),
                Duration::from_secs(3600),
            )
            .expect("ttl within the cap"),
            max_channels_per_socket: 10,
            max_payload_bytes: 1024,
            revocations: queue,
            fanout,
            histories: Arc::new(crate::history::Histories::new(Arc::new(
                crate::history::memory::MemoryHistory::new(1 << 20),
            ))),
            recovery: None,
        });
        Fixture {
            transport: DirectTransport {
                gateway,
                settings: Arc::new(settings),
            },
            tracker,
            _dir: dir,
        }
    }

    fn settings() -> DirectSettings {
        DirectSettings {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(20),
            max_message_bytes: 4096,
            socket_buffer: 64,
            close_timeout: Duration::from_millis(500),
        }
    }

    /// A connected pair: (server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (accepted.expect("accept").0, client.expect("connect"))
    }

    fn masked_text(text: &str) -> Vec<u8> {
        let mut out = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// Reads server frames' text payloads until EOF (small unmasked frames only).
    async fn read_texts(mut client: TcpStream) -> Vec<String> {
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut bytes)).await;
        let mut texts = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 2 {
            let (len, header) = match rest[1] {
                126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                n => (n as usize, 2),
            };
            if rest.len() < header + len {
                break;
            }
            if rest[0] & 0x0f == frame::TEXT {
                texts.push(String::from_utf8_lossy(&rest[header..header + len]).into_owned());
            }
            rest = &rest[header + len..];
        }
        texts
    }

    #[tokio::test]
    async fn frames_reach_the_wire_in_send_order_across_direct_and_queued_writes() {
        let f = fixture(settings());
        let (server, client) = pair().await;
        let (tx, rx) = mpsc::channel(100_000);
        let rooms = f.transport.gateway.direct().clone();
        let conn = rooms.register(Arc::new(server), tx, Duration::from_secs(1));
        let writer = tokio::spawn(write_loop(rx, conn.clone()));
        let reading = tokio::spawn(read_texts(client));
        let mut outcomes = Vec::new();
        for i in 0..5_000u32 {
            outcomes.push(conn.send(frame::text(&i.to_string())));
            // Now and then a pause longer than the coalescing window: direct writes resume.
            if i % 500 == 0 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        assert!(outcomes.contains(&Sent::Written) && outcomes.contains(&Sent::Queued));
        // Closing drops what is still queued: wait until the writer drained the queue.
        tokio::time::timeout(Duration::from_secs(10), async {
            while conn.wire_state.lock().busy {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("queue drained");
        conn.close(CloseReason::Client);
        writer.await.expect("writer");
        let texts = reading.await.expect("reader");
        let expected: Vec<String> = (0..5_000u32).map(|i| i.to_string()).collect();
        let first_wrong = texts.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(first_wrong, None, "frames out of order");
        assert_eq!(
            texts.len(),
            expected.len(),
            "frames lost: {:?}",
            texts.last()
        );
    }

    #[tokio::test]
    async fn a_panicking_connection_task_still_cleans_up() {
        let f = fixture(settings());
        let rooms = f.transport.gateway.direct().clone();
        let (server, _client) = pair().await;
        let (tx, rx) = mpsc::channel(8);
        let conn = rooms.register(Arc::new(server), tx, Duration::from_millis(200));
        let writer = tokio::spawn(write_loop(rx, conn.clone()));
        let _ = conn.writer.set(writer.abort_handle());
        let project = ProjectId::parse("p").expect("project");
        let room = RoomName::channel(&project, &ChannelName::parse("news").expect("channel"));
        let _ = conn.session.set(Arc::new(Session::new(project.clone())));
        conn.join(&RoomName::project(&project));
        let sid = conn.sid.to_string();
        f.tracker
            .add(
                &sid,
                &room,
                &ApiKeyId::parse(&"a".repeat(herald_protocol::api::API_KEY_ID_HEX_LEN))
                    .expect("key id"),
            )
            .await
            .expect("tracked");
        let registration = Registration {
            conn: conn.clone(),
            rooms: rooms.clone(),
            gateway: f.transport.gateway.clone(),
        };
        let task = tokio::spawn(async move {
            let _registration = registration;
            panic!("a handler bug");
        });
        assert!(task.await.is_err(), "the task panicked");
        assert!(rooms.connections().is_empty(), "still registered");
        assert_eq!(conn.closing(), Some(CloseReason::Internal));
        // The writer says goodbye (or is aborted) and lets go of the socket.
        tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .expect("writer stopped")
            .ok();
        let untracked = tokio::time::timeout(Duration::from_secs(2), async {
            while !f.tracker.by_socket(&sid).await.expect("tracker").is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(untracked.is_ok(), "tracking entries left behind");
        assert_eq!(
            Arc::strong_count(&conn),
            1,
            "something still holds the connection"
        );
    }

    #[tokio::test]
    async fn every_way_a_connection_ends_unregisters_it() {
        let mut quick = settings();
        quick.connect_timeout = Duration::from_millis(300);
        quick.ping_interval = Duration::from_millis(200);
        quick.ping_timeout = Duration::from_millis(200);
        let f = fixture(quick);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("client EOF", vec![]),
            ("malformed packet", masked_text("4é")),
            ("unknown engine.io type", masked_text("9")),
            ("binary frame", vec![0x82, 0x80, 0, 0, 0, 0]),
            ("unmasked frame", vec![0x81, 0x01, b'2']),
            ("oversized", vec![0x81, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0]),
            ("close frame", vec![0x88, 0x80, 0, 0, 0, 0]),
            ("connect timeout", b"wait".to_vec()),
        ];
        for (case, bytes) in cases {
            let rooms = f.transport.gateway.direct().clone();
            let (server, mut client) = pair().await;
            let server = Arc::new(server);
            let io = wire::SharedTcp(server.clone());
            let served = tokio::spawn(run(io, server, f.transport.clone()));
            if bytes == b"wait" {
                // Never CONNECTs: closed by the connect timeout (pings answered or not).
            } else if bytes.is_empty() {
                client.shutdown().await.expect("shutdown");
            } else {
                client.write_all(&bytes).await.expect("write");
            }
            tokio::time::timeout(Duration::from_secs(5), served)
                .await
                .unwrap_or_else(|_| panic!("{case}: connection never ended"))
                .expect("no panic");
            assert!(rooms.connections().is_empty(), "{case}: still registered");
            // The server closed its side: the client reads to EOF.
            let mut rest = Vec::new();
            let eof = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut rest));
            assert!(eof.await.is_ok(), "{case}: socket not closed");
        }
    }
}
