//! The direct WebSocket transport seen from a client that controls every byte: a slow consumer
//! is told why and closed while the others keep receiving; malformed input ends in a clear
//! close code, never a hang. (The Socket.IO contract over this transport is the JS suite's:
//! `tests/js/` connects with `transports: ["websocket"]`.)

use std::time::Duration;

use anyhow::{Context, bail};
use herald_e2e::Herald;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A frame from the server.
#[derive(Debug)]
enum Frame {
    Text(String),
    Close(u16, String),
    Other(u8),
}

/// A minimal WebSocket client speaking raw Engine.IO / Socket.IO.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, "").await
    }

    /// Upgrades with `extra` header lines (each ending in `\r\n`).
    async fn connect_with(url: &str, extra: &str) -> anyhow::Result<Self> {
        let addr = url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!(
                    "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\n\
                     Upgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed during the upgrade");
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        anyhow::ensure!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "wrong accept: {head}"
        );
        buf.drain(..end);
        Ok(Self { stream, buf })
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await?;
        Ok(())
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    async fn next(&mut self) -> anyhow::Result<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let (len, header) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= header + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload: Vec<u8> = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Ok(match opcode {
                        0x1 => Frame::Text(String::from_utf8(payload)?),
                        0x8 => Frame::Close(
                            u16::from_be_bytes([payload[0], payload[1]]),
                            String::from_utf8_lossy(&payload[2..]).to_string(),
                        ),
                        op => Frame::Other(op),
                    });
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("EOF");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn next_text(&mut self) -> anyhow::Result<String> {
        match timeout(Duration::from_secs(10), self.next()).await?? {
            Frame::Text(t) => Ok(t),
            other => bail!("expected text, got {other:?}"),
        }
    }

    /// Open packet, CONNECT with `project`, `listen` to `channel` (ack 1).
    async fn join(url: &str, project: &str, channel: &str) -> anyhow::Result<Self> {
        let mut c = Self::connect(url).await?;
        let open = c.next_text().await?;
        anyhow::ensure!(open.starts_with("0{"), "open packet: {open}");
        c.send(&format!(r#"40{{"projectId":"{project}"}}"#)).await?;
        let connected = c.next_text().await?;
        anyhow::ensure!(connected.starts_with("40{\"sid\""), "{connected}");
        c.send(&format!(r#"421["listen",{{"channelName":"{channel}"}}]"#))
            .await?;
        let ack = c.next_text().await?;
        // `{"ok":true,"epoch":…,"offset":…}`: the project keeps history by default.
        anyhow::ensure!(ack.starts_with(r#"431[{"ok":true,"#), "ack: {ack}");
        let system = c.next_text().await?;
        anyhow::ensure!(system.contains("\"Success\""), "{system}");
        Ok(c)
    }
}

#[tokio::test]
async fn a_slow_consumer_is_told_and_closed_while_others_receive_everything() -> anyhow::Result<()>
{
    let h = Herald::start(&["--socket-buffer", "8"]).await?;
    h.create_project("slow").await?;
    let key = h.create_key("slow", &["publish_event"], None).await?;
    let key = key["key"].as_str().context("key")?.to_owned();
    let mut reader = RawClient::join(&h.url, "slow", "feed").await?;
    let mut stalled = RawClient::join(&h.url, "slow", "feed").await?;

    // The stalled client reads nothing while ~24 MB are published: kernel buffers and its
    // 8-frame queue fill, and the server gives up on it.
    let big = "x".repeat(60_000);
    let count = 400;
    let reading = tokio::spawn(async move {
        let mut got = 0;
        while got < count {
            match reader.next_text().await {
                Ok(t) if t.starts_with("42[\"event\"") => got += 1,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    });
    for i in 0..count {
        let a = h.publish(&key, "feed", json!({"i": i, "pad": big})).await?;
        assert_eq!(a.status, 200, "{a:?}");
    }
    assert_eq!(
        timeout(Duration::from_secs(60), reading).await???,
        count,
        "the reading client got every event"
    );

    // Now it reads: some events, then the reason, then the close.
    let mut events = 0;
    let mut told = None;
    let close = loop {
        match timeout(Duration::from_secs(10), stalled.next()).await?? {
            Frame::Text(t) if t.starts_with("42[\"event\"") => events += 1,
            Frame::Text(t) if t.starts_with("42[\"system_message\"") => told = Some(t),
            Frame::Text(t) => bail!("unexpected {t}"),
            Frame::Close(code, reason) => break (code, reason),
            Frame::Other(op) => bail!("unexpected opcode {op}"),
        }
    };
    assert!(events < count, "it cannot have got all {count} events");
    let told = told.context("no system_message before the close")?;
    let told: serde_json::Value = serde_json::from_str(&told[2..])?;
    assert_eq!(told[1]["code"], "Error", "{told}");
    assert_eq!(told[1]["data"]["errorCode"], "slow_consumer", "{told}");
    assert_eq!(close, (4008, "slow_consumer".to_owned()));
    h.stop().await?;
    Ok(())
}

#[tokio::test]
async fn direct_handshake_refusals_and_protocol_errors_are_explicit() -> anyhow::Result<()> {
    let h = Herald::start(&[]).await?;
    h.create_project("proto").await?;

    // Unknown project: CONNECT_ERROR with the error code, the connection stays usable.
    let mut c = RawClient::connect(&h.url).await?;
    let open = c.next_text().await?;
    let open: serde_json::Value = serde_json::from_str(&open[1..])?;
    assert_eq!(open["upgrades"], json!([]));
    assert!(open["pingInterval"].as_u64().is_some());
    c.send(r#"40{"projectId":"nope"}"#).await?;
    let refused = c.next_text().await?;
    assert!(refused.starts_with("44{"), "{refused}");
    assert!(refused.contains("unknown_project"), "{refused}");
    c.send("40/admin,").await?;
    assert_eq!(
        c.next_text().await?,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
    c.send(r#"40{"projectId":"proto"}"#).await?;
    assert!(c.next_text().await?.starts_with("40{\"sid\""));

    // Unknown events are refused through the ack and a system_message.
    c.send(r#"427["shout",{}]"#).await?;
    let ack = c.next_text().await?;
    assert!(ack.starts_with("437[{\"ok\":false"), "{ack}");
    assert!(ack.contains("unknown_event"), "{ack}");
    assert!(c.next_text().await?.contains("unknown_event"));

    // A binary message closes with 1003.
    c.send_frame(0x2, b"\x01\x02").await?;
    match timeout(Duration::from_secs(5), c.next()).await?? {
        Frame::Close(code, _) => assert_eq!(code, 1003),
        other => bail!("expected close, got {other:?}"),
    }

    // Garbage text closes with 1002 and says why.
    let mut c = RawClient::connect(&h.url).await?;
    c.next_text().await?;
    c.send("hello").await?;
    match timeout(Duration::from_secs(5), c.next()).await?? {
        Frame::Close(code, reason) => {
            assert_eq!(code, 1002);
            assert!(
                reason.contains("malformed") || reason.contains("unknown"),
                "{reason}"
            );
        }
        other => bail!("expected close, got {other:?}"),
    }

    // WebSocket pings are answered.
    let mut c = RawClient::connect(&h.url).await?;
    c.next_text().await?;
    c.send_frame(0x9, b"hi").await?;
    match timeout(Duration::from_secs(5), c.next()).await?? {
        Frame::Other(op) => assert_eq!(op, 0xA),
        other => bail!("expected pong, got {other:?}"),
    }
    h.stop().await?;
    Ok(())
}

#[tokio::test]
async fn origin_allowlist_and_request_ids_cover_the_direct_handshake() -> anyhow::Result<()> {
    let h = Herald::start(&["--allowed-origins", "https://good.example"]).await?;
    h.create_project("edge").await?;

    let refused = RawClient::connect_with(&h.url, "Origin: https://evil.example\r\n").await;
    let refused = refused.err().context("a foreign origin was upgraded")?;
    assert!(refused.to_string().contains("403"), "{refused}");
    let mut c = RawClient::connect_with(&h.url, "Origin: https://good.example\r\n").await?;
    assert!(c.next_text().await?.starts_with("0{"));

    // Every answer carries a request id: the caller's, or a new one.
    let http = reqwest::Client::new();
    let echoed = http
        .get(format!("{}/livez", h.url))
        .header("x-request-id", "trace-42")
        .send()
        .await?;
    assert_eq!(echoed.headers()["x-request-id"], "trace-42");
    let a = http.get(format!("{}/livez", h.url)).send().await?;
    let b = http.get(format!("{}/livez", h.url)).send().await?;
    let (a, b) = (&a.headers()["x-request-id"], &b.headers()["x-request-id"]);
    assert!(!a.is_empty() && a != b, "{a:?} {b:?}");
    h.stop().await?;
    Ok(())
}

/// Open file descriptors of a process (Linux `/proc`).
fn fd_count(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The value of an unlabelled gauge in a Prometheus scrape (0 when absent).
async fn gauge(metrics_url: &str, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(metrics_url).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Client bytes a stranger can send: every Engine.IO and Socket.IO packet type followed by
/// multibyte UTF-8 (the byte after a packet type is not always a character boundary), broken
/// Socket.IO framing, and WebSocket frames RFC 6455 forbids.
fn malformed_texts() -> Vec<String> {
    let mut texts = Vec::new();
    for tail in ["é", "€", "😀", "\u{0}", "ø/,[", ""] {
        for eio in '0'..='9' {
            texts.push(format!("{eio}{tail}"));
        }
        for sio in '0'..='9' {
            texts.push(format!("4{sio}{tail}"));
            texts.push(format!("4{sio}/{tail}"));
            texts.push(format!("4{sio}/{tail},"));
            texts.push(format!("4{sio}/x,{tail}"));
            texts.push(format!("4{sio}1{tail}"));
            texts.push(format!("4{sio}99999999999999999999999{tail}[\"listen\"]"));
            texts.push(format!("4{sio}1-{tail}"));
        }
        texts.push(format!("4{tail}"));
        texts.push(format!("é4{tail}"));
    }
    texts.extend(
        [
            r#"42["listen","not an object"]"#,
            r#"42["listen",{"channelName":"é"}]"#,
            r#"421["listen",{"channelName":"private-x","authToken":"é.é.é"}]"#,
            r#"421["listen",{"channelName":"private-x","authToken":"a.b"}]"#,
            r#"42[{"not":"a name"}]"#,
            r#"42[null]"#,
            r#"42"just a string""#,
            r#"40["not","auth"]"#,
            r#"40{"projectId":"é"}"#,
            r#"40{"projectId":{"nested":[[[[]]]]}}"#,
        ]
        .map(str::to_owned),
    );
    texts
}

/// Raw WebSocket frames (already masked where a client must mask).
fn malformed_frames() -> Vec<Vec<u8>> {
    let masked = |first: u8, payload: &[u8]| {
        let mut f = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    };
    vec![
        vec![0x81, 0x02, b'4', b'2'],            // unmasked
        masked(0xC1, b"42"),                     // RSV1 without an extension
        masked(0x83, b"x"),                      // reserved opcode
        masked(0x09, b"ping"),                   // fragmented control frame
        masked(0x80, b"orphan continuation"),    // continuation with nothing to continue
        masked(0x81, &[0xff, 0xfe, 0x34, 0x32]), // text that is not UTF-8
        masked(0x01, &[b'4', b'2', 0xc3]),       // a character split across fragments...
        masked(0x88, &[0x03]),                   // close with a 1-byte payload
        vec![
            0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ], // 2^63 bytes
        vec![0x81, 0xfe, 0xff, 0xff],            // 64 KiB announced, never sent
        [masked(0x01, b"42[\"li"), masked(0x81, &[0xe9])].concat(), // invalid UTF-8 at the seam
    ]
}

#[tokio::test]
async fn malformed_input_never_leaks_a_socket_or_kills_a_task() -> anyhow::Result<()> {
    let h = Herald::start(&["--metrics-bind", "127.0.0.1:0"]).await?;
    let metrics_url = h.metrics_url().context("no metrics URL")?;
    h.create_project("fuzz").await?;
    let key = h.create_key("fuzz", &["publish_event"], None).await?;
    let key = key["key"].as_str().context("key")?.to_owned();
    let pid = h.pid().context("pid")?;
    let baseline = fd_count(pid)?;

    // Each input on its own connection, once before the namespace CONNECT and once after;
    // 32 connections at a time.
    let inputs: Vec<(bool, Vec<u8>, bool)> = [false, true]
        .into_iter()
        .flat_map(|connect_first| {
            let texts = malformed_texts()
                .into_iter()
                .map(move |t| (connect_first, t.into_bytes(), true));
            let frames = malformed_frames()
                .into_iter()
                .map(move |f| (connect_first, f, false));
            texts.chain(frames)
        })
        .collect();
    let sent = inputs.len();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for (connect_first, bytes, is_text) in inputs {
        let (url, limit) = (h.url.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let mut c = RawClient::connect(&url).await?;
            c.next_text().await?;
            if connect_first {
                c.send(r#"40{"projectId":"fuzz"}"#).await?;
                c.next_text().await?;
            }
            if is_text {
                c.send_frame(0x1, &bytes).await?;
            } else {
                c.stream.write_all(&bytes).await?;
            }
            // Whatever the server answers (or not), the client hangs up after a moment.
            let _ = timeout(Duration::from_millis(100), c.next()).await;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    assert!(sent > 1000, "{sent} inputs");

    // Every connection is gone again: counted sockets and file descriptors back to baseline.
    let settled = timeout(Duration::from_secs(20), async {
        loop {
            let sockets = gauge(&metrics_url, "herald_sockets_connected").await?;
            let fds = fd_count(pid)?;
            if sockets == 0.0 && fds <= baseline {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let logs = h.logs();
    assert!(
        !logs.contains("panicked"),
        "a task panicked:\n{}",
        logs.lines()
            .filter(|l| l.contains("panicked"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    settled.with_context(|| {
        format!(
            "sockets or fds not back to baseline ({baseline} fds): now {} fds",
            fd_count(pid).unwrap_or(0)
        )
    })??;

    // And a normal client is still served.
    let mut c = RawClient::join(&h.url, "fuzz", "news").await?;
    let a = h.publish(&key, "news", json!({"after": "fuzz"})).await?;
    assert_eq!(a.status, 200, "{a:?}");
    let event = c.next_text().await?;
    assert!(event.contains(r#""after":"fuzz""#), "{event}");
    h.stop().await?;
    Ok(())
}
