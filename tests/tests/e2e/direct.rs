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
        anyhow::ensure!(ack == r#"431[{"ok":true}]"#, "ack: {ack}");
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
