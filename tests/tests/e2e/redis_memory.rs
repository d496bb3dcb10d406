//! Redis mode's fixed memory (issue 24): an idle Redis-mode instance holds at most twice the
//! embedded mode's RSS plus 10 MB. Both run side by side in the same test, so the comparison
//! is against a peer on the same machine and build, never against a fixed figure.
//!
//! Needs `redis-server` on `PATH`; fails (never skips) without it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use herald_e2e::Herald;
use reqwest::Method;

/// A throwaway `redis-server` without persistence, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> anyhow::Result<Self> {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server (is it installed?)")?;
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Ok(Self { child, port });
                }
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break; // the port was taken meanwhile: try another
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("redis-server did not start")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of `pid` in KB.
fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Waits until `/readyz` answers 200 (Redis connected, pub/sub probe back).
async fn wait_ready(h: &Herald) -> anyhow::Result<()> {
    for _ in 0..400 {
        if h.request(Method::GET, "/readyz", None, None, &[])
            .await?
            .status
            == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("not ready; logs:\n{}", h.logs())
}

#[tokio::test]
async fn an_idle_redis_mode_instance_holds_no_more_than_twice_embedded_plus_10_mb()
-> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let embedded = Herald::start(&[]).await?;
    let clustered = Herald::start(&["--redis-url", &redis.url()]).await?;
    wait_ready(&embedded).await?;
    wait_ready(&clustered).await?;
    let e = rss_kb(embedded.pid().context("embedded pid")?)?;
    let r = rss_kb(clustered.pid().context("redis-mode pid")?)?;
    let limit = 2 * e + 10 * 1024;
    assert!(
        r <= limit,
        "idle RSS: Redis mode {r} KB, embedded {e} KB; the limit is 2 × embedded + 10 MB = {limit} KB"
    );
    clustered.stop().await?;
    embedded.stop().await?;
    Ok(())
}
