//! Starting and stopping the servers under test: Herald, the three peers, and redis-server.
//!
//! Every server process runs under `taskset -c 0` (when pinning is on); the load generator
//! runs on core 1. A server prints `… listening on http://ADDR` on stdout when ready; its
//! stderr goes to a log file in the run's work directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::Method;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::publisher;

/// The servers the benchmark knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `target/release/herald`.
    Herald,
    /// `herald-bench peer raw`: pre-encoded frames, coalesced writes.
    Raw,
    /// `herald-bench peer socketioxide`: plain socketioxide.
    Socketioxide,
    /// `bench/peers/node-socketio`: Node socket.io 4.8 + Redis adapter.
    Node,
}

impl Kind {
    /// Short name used on the command line, in JSON and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Herald => "herald",
            Kind::Raw => "raw",
            Kind::Socketioxide => "socketioxide",
            Kind::Node => "node",
        }
    }
    /// Parses a short name.
    pub fn parse(s: &str) -> Option<Self> {
        [Kind::Herald, Kind::Raw, Kind::Socketioxide, Kind::Node]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

/// Where the binaries are and where runs keep their files.
#[derive(Debug, Clone)]
pub struct Env {
    /// The `herald` binary.
    pub herald: PathBuf,
    /// This binary (runs the Rust peers as `peer raw|socketioxide`).
    pub me: PathBuf,
    /// `bench/peers/node-socketio`.
    pub node_dir: PathBuf,
    /// Scratch directory (data dirs, logs).
    pub work: PathBuf,
    /// Pin servers to core 0.
    pub pin: bool,
    /// Attach `perf record -e cpu-clock -g` to every server and write `<dir>/<name>.data`.
    pub perf: Option<PathBuf>,
}

/// A running redis-server.
pub struct Redis {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its pid.
    pub pid: u32,
}

impl Redis {
    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    /// Stops it.
    pub async fn stop(mut self) {
        terminate(&mut self.child, self.pid).await;
    }
}

/// A running server under test.
pub struct Server {
    /// What it is.
    pub kind: Kind,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its pid.
    pub pid: u32,
    /// `Authorization` header for publishing (Herald's API key).
    pub auth: Option<String>,
    /// Its stderr.
    pub log: PathBuf,
    /// The redis-server it owns (Node peer).
    pub redis: Option<Redis>,
    child: Child,
    perf: Option<Child>,
}

impl Server {
    /// Pids whose CPU counts as the server's: the process and the redis-server it owns.
    pub fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.pid];
        if let Some(r) = &self.redis {
            v.push(r.pid);
        }
        v
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it (SIGTERM, then SIGKILL after 5 s) and its redis-server.
    pub async fn stop(mut self) {
        if let Some(mut perf) = self.perf.take()
            && let Some(pid) = perf.id()
        {
            // SIGINT makes perf write its data file and exit.
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            let _ = tokio::time::timeout(Duration::from_secs(30), perf.wait()).await;
        }
        terminate(&mut self.child, self.pid).await;
        if let Some(r) = self.redis.take() {
            r.stop().await;
        }
    }

    /// Packets the server could not queue for a socket (full queue), as far as it tells:
    /// the peers' `/stats`, Herald's `not_queued` log lines.
    pub async fn not_queued(&self) -> Option<u64> {
        match self.kind {
            Kind::Herald => {
                let log = std::fs::read_to_string(&self.log).ok()?;
                Some(
                    log.lines()
                        .filter_map(|l| {
                            let i = l.find("not_queued")?;
                            let digits: String = l[i + 10..]
                                .trim_start_matches(['"', '=', ':', ' '])
                                .chars()
                                .take_while(char::is_ascii_digit)
                                .collect();
                            digits.parse::<u64>().ok()
                        })
                        .sum(),
                )
            }
            Kind::Raw | Kind::Socketioxide => {
                let (_, body) = publisher::call(self.addr, Method::GET, "/stats", &[], None)
                    .await
                    .ok()?;
                let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
                v["notQueued"].as_u64()
            }
            Kind::Node => None,
        }
    }
}

async fn terminate(child: &mut Child, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// A server command: `[taskset -c 0] [$HERALD_BENCH_WRAP …] program` (the wrapper, e.g.
/// `valgrind --tool=dhat`, is for profiling runs; it must exec the program in its own process).
fn command(env: &Env, program: &Path) -> Command {
    let mut words: Vec<std::ffi::OsString> = Vec::new();
    if env.pin {
        words.extend(["taskset", "-c", "0"].map(Into::into));
    }
    if program != Path::new("redis-server")
        && let Ok(wrap) = std::env::var("HERALD_BENCH_WRAP")
    {
        words.extend(wrap.split_whitespace().map(Into::into));
    }
    words.push(program.as_os_str().to_owned());
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..]);
    cmd.kill_on_drop(true).stdin(Stdio::null());
    cmd
}

/// `perf record` options: `HERALD_BENCH_PERF_ARGS` (whitespace-separated), default
/// `-e cpu-clock -F 2999 -g` (`--call-graph dwarf` gives usable Rust stacks, at a cost).
fn perf_args() -> Vec<String> {
    std::env::var("HERALD_BENCH_PERF_ARGS")
        .unwrap_or_else(|_| "-e cpu-clock -F 2999 -g".to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a redis-server on a free port (no persistence).
pub async fn start_redis(env: &Env) -> anyhow::Result<Redis> {
    let port = free_port()?;
    let mut child = command(env, Path::new("redis-server"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (is it installed?)")?;
    let pid = child.id().context("redis-server has no pid")?;
    for _ in 0..100 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut buf = [0u8; 16];
            if s.write_all(b"PING\r\n").await.is_ok()
                && let Ok(n) = s.read(&mut buf).await
                && buf[..n].starts_with(b"+PONG")
            {
                return Ok(Redis { child, port, pid });
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("redis-server exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("redis-server did not answer PING on port {port}")
}

/// How to start one server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Herald: Redis mode with this URL; Node: use this Redis instead of its own.
    pub redis_url: Option<String>,
    /// Herald: skip creating the project and key (a second instance sharing Redis).
    pub skip_setup: bool,
    /// Extra flags: Herald's `serve` flags, or the Rust peers' (see `herald-bench peer …
    /// --help`); from `HERALD_BENCH_<KIND>_ARGS` when the scenario sets none.
    pub extra: Vec<String>,
    /// Suffix making the work files of concurrent servers distinct.
    pub tag: String,
    /// Scenario name (names the perf data file).
    pub scenario: String,
}

/// The project every client connects with.
pub const PROJECT: &str = "bench";
/// The admin token every Herald is started with.
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// Starts `kind` and prepares it (Herald: project `bench` and a publish key).
pub async fn start(kind: Kind, env: &Env, opts: &Options) -> anyhow::Result<Server> {
    let mut opts = opts.clone();
    if opts.extra.is_empty()
        && let Ok(extra) =
            std::env::var(format!("HERALD_BENCH_{}_ARGS", kind.name().to_uppercase()))
    {
        opts.extra = extra.split_whitespace().map(str::to_owned).collect();
    }
    let opts = &opts;
    let tag = format!("{}{}", kind.name(), opts.tag);
    let log = env.work.join(format!("{tag}.log"));
    let stderr = std::fs::File::create(&log)?;
    let mut redis = None;
    let mut cmd = match kind {
        Kind::Herald => {
            let data = env.work.join(format!("{tag}-data"));
            let _ = std::fs::remove_dir_all(&data);
            std::fs::create_dir_all(&data)?;
            let mut c = command(env, &env.herald);
            c.args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--admin-token",
                ADMIN_TOKEN,
            ])
            .args(["--log-format", "json"])
            // Every simulated client connects from 127.0.0.1: no per-address cap here, as
            // behind a proxy.
            .args(["--max-connections-per-ip", "0"])
            .env("NO_COLOR", "1")
            .arg("--data-dir")
            .arg(&data)
            .args(&opts.extra);
            if let Some(url) = &opts.redis_url {
                c.args(["--redis-url", url]);
            }
            c
        }
        Kind::Raw | Kind::Socketioxide => {
            let mut c = command(env, &env.me);
            c.args(["peer", kind.name(), "--bind", "127.0.0.1:0"])
                .args(&opts.extra);
            c
        }
        Kind::Node => {
            let url = match &opts.redis_url {
                Some(u) => u.clone(),
                None => {
                    let r = start_redis(env).await?;
                    let u = r.url();
                    redis = Some(r);
                    u
                }
            };
            if !env.node_dir.join("node_modules/socket.io").exists() {
                bail!(
                    "{}/node_modules missing: run `npm ci` there",
                    env.node_dir.display()
                );
            }
            let mut c = command(env, Path::new("node"));
            c.arg("server.mjs")
                .current_dir(&env.node_dir)
                .env("PORT", "0")
                .env("REDIS_URL", url);
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .with_context(|| format!("starting {}", kind.name()))?;
    let pid = child.id().context("server has no pid")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(i) = line.find("listening on http://") {
                let rest = line[i + 20..].trim();
                let addr: SocketAddr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .with_context(|| format!("bad address in {line:?}"))?;
                return Ok(addr);
            }
        }
        bail!("{} exited before listening", kind.name())
    })
    .await
    .with_context(|| format!("{} did not start within 30 s", kind.name()))?
    .with_context(|| {
        format!(
            "{} log:\n{}",
            kind.name(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let perf = match &env.perf {
        Some(dir) => {
            let data = dir.join(format!(
                "{}-{}{}.data",
                opts.scenario,
                kind.name(),
                opts.tag
            ));
            Some(
                Command::new("perf")
                    .arg("record")
                    .args(perf_args())
                    .arg("-p")
                    .arg(pid.to_string())
                    .arg("-o")
                    .arg(&data)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting perf record")?,
            )
        }
        None => None,
    };
    let mut server = Server {
        kind,
        addr,
        pid,
        auth: None,
        log,
        redis,
        child,
        perf,
    };
    if kind == Kind::Herald {
        if opts.redis_url.is_some() {
            wait_ready(addr).await?;
        }
        if !opts.skip_setup {
            server.auth = Some(herald_setup(addr).await?);
        }
    }
    Ok(server)
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok((200, _)) = publisher::call(addr, Method::GET, "/readyz", &[], None).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("herald at {addr} not ready after 10 s")
}

/// Creates project `bench` and a `publish_event` key; returns `Bearer <key>`.
async fn herald_setup(addr: SocketAddr) -> anyhow::Result<String> {
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("authorization", admin.as_str())];
    let body = serde_json::json!({"id": PROJECT, "name": "benchmark"}).to_string();
    let (status, answer) = publisher::call(
        addr,
        Method::POST,
        "/v1/admin/projects",
        &headers,
        Some(body.into_bytes()),
    )
    .await?;
    if status != 201 && status != 409 {
        bail!(
            "creating project: HTTP {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let body = serde_json::json!({"name": "bench", "scopes": ["publish_event"]}).to_string();
    let (status, answer) = publisher::call(
        addr,
        Method::POST,
        &format!("/v1/admin/projects/{PROJECT}/api-keys"),
        &headers,
        Some(body.into_bytes()),
    )
    .await?;
    if status != 201 {
        bail!(
            "creating key: HTTP {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&answer)?;
    let key = v["key"].as_str().context("no key in the answer")?;
    Ok(format!("Bearer {key}"))
}
