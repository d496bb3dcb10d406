//! Test plumbing for Herald's end-to-end tests: start the real `herald` binary on a free port
//! with a fresh data dir, and talk to its admin and publisher APIs.
//!
//! The binary is `target/debug/herald` (build it first: `cargo build -p herald-server`), or the
//! path in `HERALD_BIN`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Path of the `herald` binary under test.
pub fn herald_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("herald")
}

/// How [`Herald::spawn`] starts the binary.
struct Launch<'a> {
    /// A command to run `herald` under (empty: none).
    wrapper: &'a [&'a str],
    /// Whether `serve` precedes the flags.
    serve_word: bool,
    /// Where stderr goes (`None`: a pipe read into [`Herald::logs`]).
    stderr_file: Option<&'a Path>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Self {
            wrapper: &[],
            serve_word: true,
            stderr_file: None,
        }
    }
}

/// A running `herald serve` process.
pub struct Herald {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin token it was started with.
    pub admin_token: String,
    /// Its data dir (kept alive by `_dir` when the harness made it).
    pub data_dir: PathBuf,
    _dir: Option<Arc<tempfile::TempDir>>,
    logs: Arc<Mutex<String>>,
    http: reqwest::Client,
}

/// An HTTP answer: status and JSON body (`Value::Null` when empty).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub body: Value,
}

impl Answer {
    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Herald {
    /// Starts a server with a fresh data dir.
    pub async fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = Arc::new(tempfile::tempdir()?);
        let data_dir = dir.path().to_path_buf();
        let token = format!("admin-{}", rand::random::<u64>());
        Self::start_with(&data_dir, Some(dir), &token, "127.0.0.1:0", extra_args).await
    }

    /// Starts a server with a fresh data dir under a wrapper command (`wrapper` then the
    /// `herald` path and its arguments), e.g. `["prlimit", "--nofile=256:256", "--"]`.
    pub async fn start_wrapped(wrapper: &[&str], extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = Arc::new(tempfile::tempdir()?);
        let data_dir = dir.path().to_path_buf();
        let token = format!("admin-{}", rand::random::<u64>());
        let launch = Launch {
            wrapper,
            ..Launch::default()
        };
        Self::spawn(
            &launch,
            &data_dir,
            Some(dir),
            &token,
            "127.0.0.1:0",
            extra_args,
        )
        .await
    }

    /// Starts a server with a fresh data dir as a user would type it without the `serve`
    /// word (`herald --bind … --data-dir …`), its stderr (the logs) written to `log_file`.
    pub async fn start_without_serve_word(
        log_file: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = Arc::new(tempfile::tempdir()?);
        let data_dir = dir.path().to_path_buf();
        let token = format!("admin-{}", rand::random::<u64>());
        let launch = Launch {
            serve_word: false,
            stderr_file: Some(log_file),
            ..Launch::default()
        };
        Self::spawn(
            &launch,
            &data_dir,
            Some(dir),
            &token,
            "127.0.0.1:0",
            extra_args,
        )
        .await
    }

    /// Starts a server on `data_dir` and `bind`.
    pub async fn start_with(
        data_dir: &Path,
        keep: Option<Arc<tempfile::TempDir>>,
        admin_token: &str,
        bind: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(
            &Launch::default(),
            data_dir,
            keep,
            admin_token,
            bind,
            extra_args,
        )
        .await
    }

    async fn spawn(
        launch: &Launch<'_>,
        data_dir: &Path,
        keep: Option<Arc<tempfile::TempDir>>,
        admin_token: &str,
        bind: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let bin = herald_bin();
        if !bin.exists() {
            bail!(
                "{} not found: run `cargo build -p herald-server` first",
                bin.display()
            );
        }
        let mut command = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        if launch.serve_word {
            command.arg("serve");
        }
        let stderr = match launch.stderr_file {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            None => Stdio::piped(),
        };
        let mut child = command
            .args(["--bind", bind])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--admin-token", admin_token])
            .args(extra_args)
            .env("HERALD_LOG", "debug,socketioxide=info,engineioxide=info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let logs = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut l) = sink.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let stdout_sink = logs.clone();
        let url = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if let Ok(mut l) = stdout_sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if let Some(url) = line.strip_prefix("herald listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("herald exited before listening")
        })
        .await
        .context("herald did not start within 20 s")?
        .with_context(|| {
            format!(
                "stderr:\n{}",
                logs.lock().map(|l| l.clone()).unwrap_or_default()
            )
        })?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child: Some(child),
            url,
            admin_token: admin_token.to_owned(),
            data_dir: data_dir.to_path_buf(),
            _dir: keep,
            logs,
            // No connection reuse: after answering 413 without reading a huge body the server
            // closes the connection, and a pooled request racing that close would fail.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .context("building the HTTP client")?,
        })
    }

    /// Stops with SIGTERM and waits for exit; returns the data dir handle for a restart.
    pub async fn stop(mut self) -> anyhow::Result<Option<Arc<tempfile::TempDir>>> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .context("herald did not exit within 15 s of SIGTERM")??;
            if !status.success() {
                bail!("herald exited with {status}");
            }
        }
        Ok(self._dir.take())
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Everything the server logged so far (stderr, unless it goes to a file, and stdout up to
    /// the listening line).
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The Prometheus endpoint, when the server was started with `--metrics-bind`.
    pub fn metrics_url(&self) -> Option<String> {
        self.logs()
            .lines()
            .find_map(|l| Some(l.strip_prefix("herald metrics on ")?.trim().to_owned()))
    }

    /// A raw request with optional bearer token and body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok(Answer { status, body })
    }

    /// An admin call with the right token.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        let token = self.admin_token.clone();
        self.request(
            method,
            path,
            Some(&token),
            body.map(|b| b.to_string().into_bytes()),
            &[],
        )
        .await
    }

    /// Creates project `id`.
    pub async fn create_project(&self, id: &str) -> anyhow::Result<()> {
        let a = self
            .admin(
                reqwest::Method::POST,
                "/v1/admin/projects",
                Some(json!({"id": id, "name": id})),
            )
            .await?;
        if a.status != 201 {
            bail!("create project {id}: {a:?}");
        }
        Ok(())
    }

    /// Creates a key in `project` with `scopes`; returns the created-key body (`key`, `id`).
    pub async fn create_key(
        &self,
        project: &str,
        scopes: &[&str],
        expires_at: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut body = json!({"name": "test", "scopes": scopes});
        if let Some(e) = expires_at {
            body["expiresAt"] = json!(e);
        }
        let a = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/admin/projects/{project}/api-keys"),
                Some(body),
            )
            .await?;
        if a.status != 201 {
            bail!("create key in {project}: {a:?}");
        }
        Ok(a.body)
    }

    /// Publishes with `key`.
    pub async fn publish(
        &self,
        key: &str,
        channel: &str,
        payload: Value,
    ) -> anyhow::Result<Answer> {
        let body = json!({"channelName": channel, "payload": payload})
            .to_string()
            .into_bytes();
        self.request(
            reqwest::Method::POST,
            "/v1/publishers/events/publish",
            Some(key),
            Some(body),
            &[],
        )
        .await
    }
}
