//! Smaller hardening points of issue 14, against the real binary: a socket that never reads
//! does not flood the log, and a configuration that would sign tokens the server refuses does
//! not start.

use std::time::Duration;

use anyhow::Context;
use herald_e2e::{Herald, herald_bin};
use serde_json::json;

/// A long-polling Socket.IO client made of plain HTTP requests, so the test decides when (and
/// whether) it reads.
struct Polling {
    http: reqwest::Client,
    url: String,
}

impl Polling {
    async fn open(h: &Herald, project: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let base = format!("{}/socket.io/?EIO=4&transport=polling", h.url);
        let open = http.get(&base).send().await?.text().await?;
        let handshake: serde_json::Value =
            serde_json::from_str(open.strip_prefix('0').context("open packet")?)?;
        let sid = handshake["sid"].as_str().context("sid")?;
        let s = Self {
            http,
            url: format!("{base}&sid={sid}"),
        };
        s.send(&format!("40{}", json!({ "projectId": project })))
            .await?;
        s.read_until("40").await?;
        Ok(s)
    }

    async fn send(&self, packet: &str) -> anyhow::Result<()> {
        let status = self
            .http
            .post(&self.url)
            .body(packet.to_owned())
            .send()
            .await?
            .status();
        anyhow::ensure!(status.is_success(), "POST answered {status}");
        Ok(())
    }

    /// Polls until a packet starting with `prefix` arrives (a payload holds packets separated
    /// by 0x1e; pings may come first and are answered).
    async fn read_until(&self, prefix: &str) -> anyhow::Result<String> {
        for _ in 0..10 {
            let payload = self.read().await?;
            for packet in payload.split('\u{1e}') {
                if packet.starts_with(prefix) {
                    return Ok(packet.to_owned());
                }
                if packet == "2" {
                    self.send("3").await?;
                }
            }
        }
        anyhow::bail!("no packet starting with {prefix:?}")
    }

    async fn read(&self) -> anyhow::Result<String> {
        Ok(tokio::time::timeout(
            Duration::from_secs(10),
            self.http.get(&self.url).send().await?.text(),
        )
        .await??)
    }
}

fn count(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

/// A polling socket that joined a channel and then never polls again makes every event of
/// that channel fail to queue for it: the server says so once per room per 10 s, with the
/// count of what it held back, instead of once per event.
#[tokio::test]
async fn a_socket_that_never_reads_does_not_flood_the_log() -> anyhow::Result<()> {
    let h = Herald::start(&["--socket-buffer", "4"]).await?;
    h.create_project("quiet").await?;
    let key = h.create_key("quiet", &["publish_event"], None).await?;
    let key = key["key"].as_str().context("key")?.to_owned();

    let stuck = Polling::open(&h, "quiet").await?;
    stuck
        .send(r#"42["listen",{"channelName":"flood"}]"#)
        .await?;
    let answer = stuck.read_until(r#"42["system_message""#).await?;
    assert!(answer.contains("listening to flood"), "{answer}");
    // From here on the socket never polls again.

    const EVENTS: usize = 300;
    for n in 0..EVENTS {
        let a = h.publish(&key, "flood", json!({ "n": n })).await?;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    let line = "event not queued for some sockets";
    // Bounded wait for the log pipe to deliver what was written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while count(&h.logs(), line) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = h.logs();
    // Far more than the socket's buffer of 4 could not be queued, and all of that within the
    // 10 s interval: one line.
    assert_eq!(count(&logs, line), 1, "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains(line) && l.contains("quiet:flood") && l.contains("suppressed")),
        "the line names the room: {logs}"
    );
    drop(stuck);
    h.stop().await?;
    Ok(())
}

/// `--channel-token-ttl-secs` above `--max-token-ttl-secs` would sign tokens the server
/// refuses: Herald exits at once with a message naming both flags.
#[tokio::test]
async fn signing_lifetime_over_the_cap_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(herald_bin())
            .args(["serve", "--bind", "127.0.0.1:0", "--admin-token", "admin-x"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--channel-token-ttl-secs", "7200"])
            .env("HERALD_LOG", "info")
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("herald listening on"), "{stdout}");
    assert!(
        stderr.contains("--channel-token-ttl-secs (7200) exceeds --max-token-ttl-secs (3600)"),
        "{stderr}"
    );

    // Raising the cap with it is accepted.
    let h = Herald::start(&[
        "--channel-token-ttl-secs",
        "7200",
        "--max-token-ttl-secs",
        "7200",
    ])
    .await?;
    // (A request first: SIGTERM in the instant after "listening" kills the process before its
    // signal handler exists.)
    h.create_project("cap").await?;
    h.stop().await?;
    Ok(())
}
