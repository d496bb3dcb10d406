//! `herald-bench peer raw`: the practical limit Herald is measured against.
//!
//! A WebSocket broadcast server with nothing on the hot path but the bytes: each published
//! event becomes one pre-encoded WebSocket frame (`Bytes`, shared by reference count), queued
//! on every subscriber's bounded queue; one writer task per socket drains its queue and
//! coalesces everything waiting into a single `write`.
//!
//! It speaks just enough Engine.IO v4 / Socket.IO v5 for `herald-bench`'s client (and any
//! Socket.IO client using the WebSocket transport directly): the `0{…}` open packet, the
//! namespace CONNECT (`40{"projectId":…}` → `40{"sid":…}`), `listen {channelName}` with the
//! ack `[{"ok":true}]`, Engine.IO ping/pong, close. Rooms are `{projectId}:{channelName}` as in
//! Herald. `POST /v1/publishers/events/publish {channelName, payload}` emits
//! `event {id, channelName, payload}` (UUIDv7 id, payload byte-for-byte) to the room of the
//! project given by `--project`; there are no API keys. No HTTP long-polling, no server
//! heartbeat, no acks beyond `listen`. `GET /stats` answers `{"notQueued":N}`: packets dropped
//! because a socket's queue (`--buffer`, 1024 like Herald's `--socket-buffer`) was full.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Raw WebSocket broadcast server (benchmark peer).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Project whose rooms REST publishes reach.
    #[arg(long, default_value = "bench")]
    project: String,
    /// Packets queued per socket before new ones are dropped (and counted).
    #[arg(long, default_value_t = 1024)]
    buffer: usize,
    /// Fault injection (to check that the suite notices losses): silently drop every Nth
    /// delivery. 0: never.
    #[arg(long, default_value_t = 0, hide = true)]
    drop_every: u64,
}

type Members = Vec<(u64, mpsc::Sender<Bytes>)>;

struct Shared {
    rooms: Mutex<HashMap<String, Members>>,
    project: String,
    buffer: usize,
    next_id: AtomicU64,
    not_queued: AtomicU64,
    drop_every: u64,
    deliveries: AtomicU64,
}

const COALESCE_BYTES: usize = 64 * 1024;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Runs the peer until the process is killed (one thread: a current-thread tokio runtime).
pub fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.bind).await?;
    let shared = Arc::new(Shared {
        rooms: Mutex::new(HashMap::new()),
        project: args.project,
        buffer: args.buffer.max(1),
        next_id: AtomicU64::new(1),
        not_queued: AtomicU64::new(0),
        drop_every: args.drop_every,
        deliveries: AtomicU64::new(0),
    });
    println!("peer listening on http://{}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, shared).await;
                });
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

enum Head {
    Upgrade { key: String },
    Publish { content_length: usize },
    Stats,
    Other,
}

fn parse_head(buf: &[u8]) -> io::Result<Option<(usize, Head)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let path = req.path.unwrap_or("");
    let head = match req.method {
        Some("GET") if path.starts_with("/socket.io/") => match header("sec-websocket-key") {
            Some(key) => Head::Upgrade {
                key: key.trim().to_owned(),
            },
            None => Head::Other,
        },
        Some("GET") if path == "/stats" => Head::Stats,
        Some("POST") if path == "/v1/publishers/events/publish" => Head::Publish {
            content_length: header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        },
        _ => Head::Other,
    };
    Ok(Some((len, head)))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(8192);
    stream.read_buf(buf).await
}

fn http_response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn handle(mut stream: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (head_len, head) = loop {
            if let Some(parsed) = parse_head(&buf)? {
                break parsed;
            }
            if buf.len() > 64 * 1024 || read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        match head {
            Head::Upgrade { key } => {
                buf.drain(..head_len);
                return websocket(stream, buf, &key, shared).await;
            }
            Head::Publish { content_length } => {
                while buf.len() < head_len + content_length {
                    if read_more(&mut stream, &mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                let response = publish(&shared, &buf[head_len..head_len + content_length]);
                stream.write_all(&response).await?;
                buf.drain(..head_len + content_length);
            }
            Head::Stats => {
                let body = format!(
                    "{{\"notQueued\":{}}}",
                    shared.not_queued.load(Ordering::Relaxed)
                );
                stream.write_all(&http_response("200 OK", &body)).await?;
                buf.drain(..head_len);
            }
            Head::Other => {
                stream
                    .write_all(&http_response(
                        "404 Not Found",
                        r#"{"error":{"code":"not_found"}}"#,
                    ))
                    .await?;
                return Ok(());
            }
        }
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(rename = "channelName")]
    channel_name: String,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// A server-to-client (unmasked) text frame.
fn ws_frame(text: &[u8]) -> Vec<u8> {
    let len = text.len();
    let mut out = Vec::with_capacity(len + 10);
    out.push(0x81);
    if len < 126 {
        out.push(len as u8);
    } else if len < 65536 {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(text);
    out
}

fn publish(shared: &Shared, body: &[u8]) -> Vec<u8> {
    let Ok(req) = serde_json::from_slice::<PublishBody<'_>>(body) else {
        return http_response("400 Bad Request", r#"{"error":{"code":"invalid_body"}}"#);
    };
    let id = uuid::Uuid::now_v7().to_string();
    let channel_json = serde_json::to_string(&req.channel_name).unwrap_or_default();
    let text = format!(
        r#"42["event",{{"id":"{id}","channelName":{channel_json},"payload":{}}}]"#,
        req.payload.get()
    );
    let frame = Bytes::from(ws_frame(text.as_bytes()));
    let room = format!("{}:{}", shared.project, req.channel_name);
    let mut dropped = 0;
    if let Ok(rooms) = shared.rooms.lock()
        && let Some(members) = rooms.get(&room)
    {
        for (_, tx) in members {
            if shared.drop_every > 0
                && shared.deliveries.fetch_add(1, Ordering::Relaxed) % shared.drop_every
                    == shared.drop_every - 1
            {
                continue;
            }
            if tx.try_send(frame.clone()).is_err() {
                dropped += 1;
            }
        }
    }
    if dropped > 0 {
        shared.not_queued.fetch_add(dropped, Ordering::Relaxed);
    }
    http_response("200 OK", &format!(r#"{{"id":"{id}"}}"#))
}

/// One client frame: opcode and unmasked payload, and how many bytes it used.
fn client_frame(buf: &[u8]) -> io::Result<Option<(u8, Vec<u8>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if len > 1 << 20 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too big"));
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        m
    } else {
        [0; 4]
    };
    if buf.len() < pos + len {
        return Ok(None);
    }
    let payload = buf[pos..pos + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Ok(Some((opcode, payload, pos + len)))
}

async fn writer(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(first) = rx.recv().await {
        let result = match rx.try_recv() {
            // One frame waiting: write it as it is, no copy.
            Err(_) => wr.write_all(&first).await,
            // More: coalesce up to 64 KiB into one write. The buffer lives only while there
            // is a backlog, so an idle socket holds no write buffer at all.
            Ok(second) => {
                let mut out = Vec::with_capacity(COALESCE_BYTES.min(16 * first.len()));
                out.extend_from_slice(&first);
                out.extend_from_slice(&second);
                while out.len() < COALESCE_BYTES {
                    match rx.try_recv() {
                        Ok(b) => out.extend_from_slice(&b),
                        Err(_) => break,
                    }
                }
                wr.write_all(&out).await
            }
        };
        if result.is_err() {
            break;
        }
    }
}

async fn websocket(
    stream: TcpStream,
    mut buf: Vec<u8>,
    key: &str,
    shared: Arc<Shared>,
) -> io::Result<()> {
    let accept = base64::engine::general_purpose::STANDARD
        .encode(Sha1::digest(format!("{key}{WS_GUID}").as_bytes()));
    let (mut rd, mut wr) = stream.into_split();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut hello = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    hello.extend(ws_frame(
        format!(r#"0{{"sid":"r{id}","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}}"#)
            .as_bytes(),
    ));
    wr.write_all(&hello).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(shared.buffer);
    let writer = tokio::spawn(writer(wr, rx));
    // The handshake buffer was sized for HTTP heads; a socket keeps only what it needs.
    buf.shrink_to_fit();
    let mut chunk = [0u8; 512];
    let mut project = String::new();
    let mut joined: Vec<String> = Vec::new();
    let result: io::Result<()> = async {
        loop {
            while let Some((opcode, payload, used)) = client_frame(&buf)? {
                buf.drain(..used);
                match opcode {
                    0x1 => {
                        let text = String::from_utf8_lossy(&payload);
                        let reply = on_text(&text, id, &mut project, &mut joined, &shared, &tx);
                        match reply {
                            Reply::None => {}
                            Reply::Send(frame) => {
                                if tx.send(Bytes::from(frame)).await.is_err() {
                                    return Ok(());
                                }
                            }
                            Reply::Close => return Ok(()),
                        }
                    }
                    0x8 => return Ok(()),
                    0x9 => {
                        let mut pong = vec![0x8a, payload.len() as u8];
                        pong.extend_from_slice(&payload);
                        let _ = tx.send(Bytes::from(pong)).await;
                    }
                    _ => {}
                }
            }
            if buf.is_empty() {
                // Nothing pending: drop the allocation (idle sockets hold no read buffer).
                buf = Vec::new();
            }
            let n = rd.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    .await;
    if let Ok(mut rooms) = shared.rooms.lock() {
        for room in &joined {
            if let Some(members) = rooms.get_mut(room) {
                members.retain(|(m, _)| *m != id);
                if members.is_empty() {
                    rooms.remove(room);
                }
            }
        }
    }
    drop(tx);
    writer.abort();
    result
}

enum Reply {
    None,
    Send(Vec<u8>),
    Close,
}

fn on_text(
    text: &str,
    id: u64,
    project: &mut String,
    joined: &mut Vec<String>,
    shared: &Shared,
    tx: &mpsc::Sender<Bytes>,
) -> Reply {
    if text == "2" {
        return Reply::Send(ws_frame(b"3"));
    }
    if text == "1" || text.starts_with("41") {
        return Reply::Close;
    }
    if let Some(auth) = text.strip_prefix("40") {
        let auth: serde_json::Value = serde_json::from_str(auth).unwrap_or_default();
        match auth.get("projectId").and_then(|p| p.as_str()) {
            Some(p) if !p.is_empty() => *project = p.to_owned(),
            _ => {
                return Reply::Send(ws_frame(
                    br#"44{"message":"missing_project_id: auth.projectId is required"}"#,
                ));
            }
        }
        return Reply::Send(ws_frame(format!(r#"40{{"sid":"r{id}"}}"#).as_bytes()));
    }
    if let Some(rest) = text.strip_prefix("42") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (ack_id, json) = rest.split_at(digits);
        let Ok(serde_json::Value::Array(args)) = serde_json::from_str(json) else {
            return Reply::None;
        };
        let channel = args
            .get(1)
            .and_then(|b| b.get("channelName"))
            .and_then(|c| c.as_str());
        let ok = match (args.first().and_then(|e| e.as_str()), channel) {
            (Some("listen"), Some(channel)) if !project.is_empty() => {
                let room = format!("{project}:{channel}");
                if !joined.contains(&room) {
                    if let Ok(mut rooms) = shared.rooms.lock() {
                        rooms
                            .entry(room.clone())
                            .or_default()
                            .push((id, tx.clone()));
                    }
                    joined.push(room);
                }
                true
            }
            _ => false,
        };
        if ack_id.is_empty() {
            return Reply::None;
        }
        let body = if ok {
            r#"[{"ok":true}]"#
        } else {
            r#"[{"ok":false,"code":"unknown_event","message":"the raw peer only knows listen"}]"#
        };
        return Reply::Send(ws_frame(format!("43{ack_id}{body}").as_bytes()));
    }
    Reply::None
}
