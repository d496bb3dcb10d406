//! Test-only: a throwaway `redis-server` child process on a free local port, and a fred
//! client configured the way Herald's Redis mode expects (RESP3, command timeout, reconnects).
//!
//! Tests that need Redis fail (never skip) when `redis-server` is not installed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use fred::types::RespVersion;

/// How long [`connect`]'s client waits for any command before failing it with a timeout.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process, killed on drop.
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port without persistence and waits until it answers
    /// `PING`. Panics when it cannot (`redis-server` not installed, or it does not start).
    pub(crate) fn start() -> Self {
        let mut last_log = String::new();
        // A port found free may be taken before redis-server binds it: retry a few times.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir for redis-server");
            let log = dir.path().join("redis.log");
            let mut child = spawn(port, dir.path(), &log);
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if ping(port) {
                    return Self {
                        child: Some(child),
                        port,
                        _dir: dir,
                    };
                }
                let exited = matches!(child.try_wait(), Ok(Some(_)));
                if exited || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start; its log:\n{last_log}");
    }

    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server now (to test behaviour while Redis is down).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(port: u16, dir: &Path, log: &Path) -> Child {
    let result = Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match result {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`redis-server` is not installed (or not on PATH); the Redis-mode tests need it: \
             apt-get install redis-server"
        ),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Whether a server on `port` answers `PING` with `PONG` (not `-LOADING`).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A connected RESP3 client for `url`, with a [`COMMAND_TIMEOUT`] on every command and
/// unlimited reconnection attempts every 100 ms.
pub(crate) async fn connect(url: &str) -> fred::clients::Client {
    let mut config = Config::from_url(url).expect("valid Redis URL");
    config.version = RespVersion::RESP3;
    let perf = PerformanceConfig {
        default_command_timeout: COMMAND_TIMEOUT,
        ..Default::default()
    };
    let connection = ConnectionConfig {
        connection_timeout: Duration::from_secs(1),
        internal_command_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let client = fred::clients::Client::new(
        config,
        Some(perf),
        Some(connection),
        Some(ReconnectPolicy::new_constant(0, 100)),
    );
    client.init().await.expect("connect to the test Redis");
    client
}

/// A key prefix no other test uses.
pub(crate) fn unique_prefix() -> String {
    format!("herald-test-{}", hex::encode(rand::random::<[u8; 6]>()))
}

mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_answers_and_stops() {
        let mut server = RedisServer::start();
        assert!(server.url().ends_with(&server.port().to_string()));
        let client = connect(&server.url()).await;
        let pong: String = client.ping(None).await.expect("ping");
        assert_eq!(pong, "PONG");
        server.stop();
        assert!(!ping(server.port()));
    }
}
