//! Integration tests of herald-sdk.
//!
//! * Against the real `herald` server binary (built with `cargo build -p herald-server`, or
//!   the binary named by `HERALD_BIN`): publishing, receiving, tokens, typed errors and
//!   reconnection across a server restart. Set `HERALD_TEST_LOG=1` to see the server's logs.
//! * Against tiny local HTTP servers: the publisher's retry policy.
//! * Against a scripted fake Socket.IO server: heartbeats and `RemovedFromChannel`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use herald_sdk::{
    ChannelEvent, ChannelName, ConnectionState, Error, ErrorCode, Publisher, Subscriber,
    SubscriberEvent,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for something that should happen promptly.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The real server
// ---------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The `herald` binary: `HERALD_BIN`, or built once per test run.
fn herald_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("HERALD_BIN") {
            return Ok(PathBuf::from(bin));
        }
        let root = workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("debug").join("herald");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "-p", "herald-server", "--bin", "herald"])
            .current_dir(&root);
        // `cargo test` gives this process the variables of the herald-sdk package. Some build
        // scripts (ring's) re-run when those change, so a nested build seeing them would
        // rebuild what a plain `cargo build -p herald-server` built, and the other way round.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let package_scoped = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*name);
            if package_scoped {
                build.env_remove(&*name);
            }
        }
        let built = build.status();
        match built {
            Ok(s) if s.success() => Ok(bin),
            // Keep testing against the last good build if the server does not build now.
            _ if bin.exists() => {
                eprintln!(
                    "warning: building herald-server failed; using {}",
                    bin.display()
                );
                Ok(bin)
            }
            other => Err(format!("cannot build herald-server: {other:?}")),
        }
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A running `herald serve` with its own data directory and admin token.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: tempfile::TempDir,
    admin_token: String,
    http: reqwest::Client,
}

impl Server {
    async fn start() -> anyhow::Result<Server> {
        let data_dir = tempfile::tempdir()?;
        let admin_token = format!("admin-{:032x}", rand::random::<u128>());
        let (child, addr) = spawn_herald(data_dir.path(), "127.0.0.1:0", &admin_token).await?;
        Ok(Server {
            child: Some(child),
            addr,
            data_dir,
            admin_token,
            http: reqwest::Client::new(),
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the server (no graceful shutdown: connections just break).
    async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data directory.
    async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        let bind = self.addr.to_string();
        // The port was just released; retry briefly in case the OS is slow to free it.
        let mut last = None;
        for _ in 0..20 {
            match spawn_herald(self.data_dir.path(), &bind, &self.admin_token).await {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("restart failed")))
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        Ok((status, value))
    }

    async fn create_project(&self, id: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/v1/admin/projects",
                Some(json!({"id": id, "name": id})),
            )
            .await?;
        anyhow::ensure!(status == 201, "create project: {status} {body}");
        Ok(())
    }

    /// Creates an API key; returns its id and the full key.
    async fn create_key(&self, project: &str, scopes: &[&str]) -> anyhow::Result<(String, String)> {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/admin/projects/{project}/api-keys"),
                Some(json!({"name": "test", "scopes": scopes})),
            )
            .await?;
        anyhow::ensure!(status == 201, "create key: {status} {body}");
        let id = body["id"].as_str().context("key id")?.to_owned();
        let key = body["key"].as_str().context("key")?.to_owned();
        Ok((id, key))
    }

    async fn delete_key(&self, project: &str, key_id: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .admin(
                reqwest::Method::DELETE,
                &format!("/v1/admin/projects/{project}/api-keys/{key_id}"),
                None,
            )
            .await?;
        anyhow::ensure!(status == 204, "delete key: {status} {body}");
        Ok(())
    }

    /// A project and a publisher whose key has both scopes.
    async fn project_with_publisher(&self, project: &str) -> anyhow::Result<Publisher> {
        self.create_project(project).await?;
        let (_, key) = self
            .create_key(project, &["publish_event", "sign_token"])
            .await?;
        Ok(Publisher::builder(self.url(), key).build()?)
    }
}

async fn spawn_herald(
    data_dir: &std::path::Path,
    bind: &str,
    admin_token: &str,
) -> anyhow::Result<(Child, SocketAddr)> {
    let log = std::env::var_os("HERALD_TEST_LOG").is_some();
    let mut child = Command::new(herald_bin()?)
        .arg("serve")
        .args(["--bind", bind])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--admin-token", admin_token])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if log { Stdio::inherit() } else { Stdio::null() })
        .kill_on_drop(true)
        .spawn()
        .context("starting herald")?;
    let stdout = child.stdout.take().context("herald stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.trim().strip_prefix("herald listening on http://") {
                return Ok::<_, anyhow::Error>(Some(url.parse::<SocketAddr>()?));
            }
        }
        Ok(None)
    })
    .await;
    let addr = match ready {
        Ok(Ok(Some(addr))) => addr,
        other => {
            let _ = child.kill().await;
            bail!("herald did not start on {bind}: {other:?}");
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

/// Reads events until `pick` returns something, or fails after [`WAIT`].
async fn wait_for<T>(
    subscriber: &Subscriber,
    what: &str,
    mut pick: impl FnMut(&SubscriberEvent) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, subscriber.next()).await {
            Err(_) => bail!("timed out waiting for {what}"),
            Ok(None) => bail!("subscriber ended while waiting for {what}"),
            Ok(Some(event)) => {
                if let Some(found) = pick(&event) {
                    return Ok(found);
                }
            }
        }
    }
}

/// Waits for the event with message id `id`.
async fn wait_for_event(subscriber: &Subscriber, id: &str) -> anyhow::Result<ChannelEvent> {
    wait_for(subscriber, &format!("event {id}"), |e| match e {
        SubscriberEvent::Event(ev) if ev.id.as_deref() == Some(id) => Some(ev.clone()),
        _ => None,
    })
    .await
}

/// A token provider that signs with `publisher` and counts its calls.
fn counting_provider(
    publisher: &Publisher,
    calls: &Arc<AtomicUsize>,
) -> impl Fn(ChannelName) -> std::pin::Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>
+ Send
+ Sync
+ 'static {
    let publisher = publisher.clone();
    let calls = Arc::clone(calls);
    move |channel: ChannelName| {
        calls.fetch_add(1, Ordering::SeqCst);
        let publisher = publisher.clone();
        Box::pin(async move {
            let token = publisher
                .build_private_channel(&channel)?
                .get_client_auth_token()
                .await?;
            Ok(token.token)
        })
    }
}

#[tokio::test]
async fn publish_and_receive_on_public_and_private_channels() -> anyhow::Result<()> {
    let server = Server::start().await?;
    let publisher = server.project_with_publisher("acme").await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let subscriber = Subscriber::builder(server.url(), "acme")
        .token_provider(counting_provider(&publisher, &calls))
        .connect()
        .await?;
    assert_eq!(subscriber.project_id().as_str(), "acme");
    wait_for(&subscriber, "Connected", |e| {
        matches!(e, SubscriberEvent::State(ConnectionState::Connected)).then_some(())
    })
    .await?;

    subscriber.listen("orders").await?;
    subscriber.listen("private-u1").await?;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one token for one private channel"
    );

    // Public channel: any Serialize payload arrives as JSON, with the publish call's id.
    #[derive(serde::Serialize)]
    struct Order {
        order: u32,
        items: Vec<&'static str>,
    }
    let orders = publisher.build_channel("orders")?;
    let id = orders
        .publish_message(&Order {
            order: 42,
            items: vec!["tea", "cake"],
        })
        .await?;
    let event = wait_for_event(&subscriber, &id).await?;
    assert_eq!(event.channel_name.as_str(), "orders");
    assert_eq!(
        event.payload,
        json!({"order": 42, "items": ["tea", "cake"]})
    );

    // Private channel, through the token provider.
    let inbox = publisher.build_private_channel("private-u1")?;
    let id = inbox.publish_message("hello u1").await?;
    let event = wait_for_event(&subscriber, &id).await?;
    assert_eq!(event.channel_name.as_str(), "private-u1");
    assert_eq!(event.payload, json!("hello u1"));

    // Private channel, with a token signed separately.
    let token = publisher
        .build_private_channel("private-u2")?
        .get_client_auth_token()
        .await?;
    assert!(token.expires_at > time::OffsetDateTime::now_utc());
    assert!(!format!("{token:?}").contains(&token.token));
    subscriber
        .listen_with_token("private-u2", token.token)
        .await?;
    let id = publisher
        .build_private_channel("private-u2")?
        .publish_message(&json!({"n": 2}))
        .await?;
    assert_eq!(
        wait_for_event(&subscriber, &id).await?.payload,
        json!({"n": 2})
    );

    // After remove, nothing more arrives from the channel.
    subscriber.remove("orders").await?;
    let gone = orders.publish_message(&json!("unheard")).await?;
    let marker = inbox.publish_message(&json!("marker")).await?;
    let unheard = wait_for(&subscriber, "marker", |e| match e {
        SubscriberEvent::Event(ev) if ev.id.as_deref() == Some(gone.as_str()) => Some(true),
        SubscriberEvent::Event(ev) if ev.id.as_deref() == Some(marker.as_str()) => Some(false),
        _ => None,
    })
    .await?;
    assert!(!unheard, "an event of a removed channel arrived");

    subscriber.close().await;
    assert!(matches!(
        subscriber.listen("orders").await,
        Err(Error::Closed)
    ));
    // The stream ends after Closed.
    let mut saw_closed = false;
    while let Some(event) = tokio::time::timeout(WAIT, subscriber.next()).await? {
        saw_closed |= matches!(
            event,
            SubscriberEvent::State(ConnectionState::Closed { cause: None })
        );
    }
    assert!(saw_closed);
    Ok(())
}

#[tokio::test]
async fn server_errors_surface_as_typed_errors() -> anyhow::Result<()> {
    let server = Server::start().await?;
    server.create_project("acme").await?;
    let (_, publish_only) = server.create_key("acme", &["publish_event"]).await?;
    let (_, sign_only) = server.create_key("acme", &["sign_token"]).await?;
    let (both_id, both) = server
        .create_key("acme", &["publish_event", "sign_token"])
        .await?;

    // Missing scope, both ways.
    let p = Publisher::builder(server.url(), &publish_only).build()?;
    let err = p
        .build_private_channel("private-u1")?
        .get_client_auth_token()
        .await
        .err()
        .context("sign without sign_token")?;
    assert!(
        matches!(
            err,
            Error::Api {
                status: 403,
                code: ErrorCode::MissingScope,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        (err.code(), err.status()),
        (Some(ErrorCode::MissingScope), Some(403))
    );
    let p = Publisher::builder(server.url(), &sign_only).build()?;
    let err = p
        .build_channel("orders")?
        .publish_message(&1)
        .await
        .err()
        .context("publish")?;
    assert!(
        matches!(
            err,
            Error::Api {
                status: 403,
                code: ErrorCode::MissingScope,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // Unknown key: well-formed, but the server has never seen it.
    let unknown = format!(
        "hk_{:016x}_{:064x}",
        rand::random::<u64>(),
        rand::random::<u128>()
    );
    let p = Publisher::builder(server.url(), unknown).build()?;
    let err = p
        .build_channel("orders")?
        .publish_message(&1)
        .await
        .err()
        .context("unknown key")?;
    assert!(
        matches!(
            err,
            Error::Api {
                status: 401,
                code: ErrorCode::UnknownApiKey,
                ..
            }
        ),
        "{err:?}"
    );

    // A deleted key is unknown too.
    let p = Publisher::builder(server.url(), &both).build()?;
    p.build_channel("orders")?.publish_message(&1).await?;
    server.delete_key("acme", &both_id).await?;
    let err = p
        .build_channel("orders")?
        .publish_message(&1)
        .await
        .err()
        .context("deleted key")?;
    assert_eq!(err.code(), Some(ErrorCode::UnknownApiKey));

    // Invalid names and kinds are caught before any request: point the publisher at a port
    // where nothing listens, so a request would fail differently.
    let nowhere = Publisher::builder("http://127.0.0.1:9", &publish_only).build()?;
    for (name, code) in [
        ("a b", ErrorCode::InvalidChannelName),
        ("acme:orders", ErrorCode::InvalidChannelName),
        ("privateer", ErrorCode::AmbiguousChannelName),
        ("", ErrorCode::InvalidChannelName),
    ] {
        let err = nowhere.build_channel(name).err().context("invalid name")?;
        assert!(matches!(err, Error::InvalidName(_)), "{name}: {err:?}");
        assert_eq!(err.code(), Some(code), "{name}");
    }
    assert!(matches!(
        nowhere.build_private_channel("orders"),
        Err(Error::WrongChannelKind { .. })
    ));
    assert!(matches!(
        nowhere.build_channel("private-u1"),
        Err(Error::WrongChannelKind { .. })
    ));
    let big = "x".repeat(herald_sdk::herald_protocol::limits::DEFAULT_MAX_PAYLOAD_BYTES);
    let err = nowhere
        .build_channel("orders")?
        .publish_message(&big)
        .await
        .err()
        .context("big")?;
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err:?}");
    // With the local limit raised, the server's own limit answers.
    let p = Publisher::builder(server.url(), &publish_only)
        .max_payload_bytes(1 << 20)
        .build()?;
    let err = p
        .build_channel("orders")?
        .publish_message(&big)
        .await
        .err()
        .context("big")?;
    assert!(
        matches!(
            err,
            Error::Api {
                status: 413,
                code: ErrorCode::PayloadTooLarge,
                ..
            }
        ),
        "{err:?}"
    );

    // Socket: unknown project refused at the handshake, with the server's code.
    let err = Subscriber::builder(server.url(), "nope")
        .connect()
        .await
        .err()
        .context("connect")?;
    assert!(
        matches!(
            err,
            Error::Refused {
                code: ErrorCode::UnknownProject,
                ..
            }
        ),
        "{err:?}"
    );
    let err = Subscriber::builder(server.url(), "Not A Project")
        .connect()
        .await
        .err()
        .context("id")?;
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    let err = Subscriber::builder("http://127.0.0.1:9", "acme")
        .connect()
        .await
        .err()
        .context("down")?;
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");

    // Socket: private listen refusals.
    let subscriber = Subscriber::builder(server.url(), "acme").connect().await?;
    let err = subscriber
        .listen("private-u1")
        .await
        .err()
        .context("no provider")?;
    assert!(matches!(err, Error::NoTokenProvider(_)), "{err:?}");
    assert_eq!(err.code(), Some(ErrorCode::TokenMissing));
    let err = subscriber
        .listen_with_token("private-u1", "not-a-jwt")
        .await
        .err()
        .context("bad")?;
    assert!(
        matches!(
            err,
            Error::Refused {
                code: ErrorCode::TokenMalformed,
                ..
            }
        ),
        "{err:?}"
    );
    let signer = Publisher::builder(server.url(), &sign_only).build()?;
    let other = signer
        .build_private_channel("private-other")?
        .get_client_auth_token()
        .await?;
    let err = subscriber
        .listen_with_token("private-u1", other.token)
        .await
        .err()
        .context("mismatch")?;
    assert_eq!(err.code(), Some(ErrorCode::TokenChannelMismatch));
    let err = subscriber.listen("no spaces").await.err().context("name")?;
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    // The subscriber still works after refusals.
    subscriber.listen("orders").await?;
    subscriber.close().await;
    Ok(())
}

#[tokio::test]
async fn reconnects_after_restart_and_relistens_with_fresh_tokens() -> anyhow::Result<()> {
    let mut server = Server::start().await?;
    let publisher = server.project_with_publisher("acme").await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let subscriber = Subscriber::builder(server.url(), "acme")
        .token_provider(counting_provider(&publisher, &calls))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(300))
        .connect()
        .await?;
    subscriber.listen("orders").await?;
    subscriber.listen("private-u1").await?;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    server.kill().await?;
    wait_for(&subscriber, "Reconnecting", |e| {
        matches!(
            e,
            SubscriberEvent::State(ConnectionState::Reconnecting { .. })
        )
        .then_some(())
    })
    .await?;
    server.restart().await?;
    wait_for(&subscriber, "Connected after restart", |e| match e {
        SubscriberEvent::State(ConnectionState::Connected) => Some(()),
        SubscriberEvent::RelistenFailed { channel, error } => {
            panic!("re-listen of {channel} failed: {error}")
        }
        _ => None,
    })
    .await?;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a fresh token for the re-listen"
    );

    let id = publisher
        .build_channel("orders")?
        .publish_message(&json!("after"))
        .await?;
    assert_eq!(
        wait_for_event(&subscriber, &id).await?.payload,
        json!("after")
    );
    let id = publisher
        .build_private_channel("private-u1")?
        .publish_message(&json!("private after"))
        .await?;
    assert_eq!(
        wait_for_event(&subscriber, &id).await?.payload,
        json!("private after")
    );

    // Deleting the project makes the next reconnection fail for good.
    let (status, _) = server
        .admin(reqwest::Method::DELETE, "/v1/admin/projects/acme", None)
        .await?;
    assert_eq!(status, 204);
    let cause = wait_for(&subscriber, "Closed", |e| match e {
        SubscriberEvent::State(ConnectionState::Closed { cause }) => Some(cause.clone()),
        _ => None,
    })
    .await?;
    assert_eq!(
        cause.and_then(|c| c.code()),
        Some(ErrorCode::UnknownProject)
    );
    assert!(matches!(
        subscriber.listen("orders").await,
        Err(Error::Closed)
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Retry policy, against a scripted HTTP server
// ---------------------------------------------------------------------------------------------

/// One scripted answer: status, Retry-After, JSON body.
type Answer = (u16, Option<&'static str>, Value);

/// An HTTP server answering from `script` (the last answer repeats) and counting requests.
struct Scripted {
    url: String,
    requests: Arc<AtomicUsize>,
}

async fn scripted(script: Vec<Answer>) -> anyhow::Result<Scripted> {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::IntoResponse;

    let requests = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let counter = Arc::clone(&requests);
    let handler = move || {
        let counter = Arc::clone(&counter);
        let script = Arc::clone(&script);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let (status, retry_after, body) = {
                let mut s = script.lock().unwrap_or_else(|p| p.into_inner());
                if s.len() > 1 {
                    s.pop_front()
                } else {
                    s.front().cloned()
                }
            }
            .unwrap_or((500, None, Value::Null));
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, axum::Json(body)).into_response();
            if let Some(ra) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(ra));
            }
            response
        }
    };
    let app = axum::Router::new()
        .route(
            "/v1/publishers/events/publish",
            axum::routing::post(handler.clone()),
        )
        .route("/v1/publishers/sign", axum::routing::post(handler));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Scripted { url, requests })
}

fn error_body(code: &str) -> Value {
    json!({"error": {"code": code, "message": format!("scripted {code}")}})
}

fn test_key() -> String {
    format!("hk_{:016x}_{}", 1u64, "ab".repeat(32))
}

fn fast_retries(url: &str) -> herald_sdk::PublisherBuilder {
    Publisher::builder(url, test_key())
        .retry_backoff(Duration::from_millis(10), Duration::from_secs(2))
}

#[tokio::test]
async fn retries_503_then_succeeds_when_publish_retries_are_on() -> anyhow::Result<()> {
    let server = scripted(vec![
        (503, None, error_body("unavailable")),
        (200, None, json!({"id": "m-1"})),
    ])
    .await?;
    let publisher = fast_retries(&server.url).retry_publish(true).build()?;
    let id = publisher
        .build_channel("orders")?
        .publish_message(&1)
        .await?;
    assert_eq!(id, "m-1");
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test]
async fn publish_is_not_retried_by_default_but_sign_is() -> anyhow::Result<()> {
    let server = scripted(vec![
        (503, None, error_body("unavailable")),
        (200, None, json!({"id": "m-1"})),
    ])
    .await?;
    let publisher = fast_retries(&server.url).build()?;
    let err = publisher
        .build_channel("orders")?
        .publish_message(&1)
        .await
        .err()
        .context("503")?;
    assert!(
        matches!(
            err,
            Error::Api {
                status: 503,
                code: ErrorCode::Unavailable,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    let expires = "2030-01-01T00:00:00Z";
    let server = scripted(vec![
        (502, None, json!("bad gateway")),
        (503, None, error_body("unavailable")),
        (200, None, json!({"token": "t.o.k", "expiresAt": expires})),
    ])
    .await?;
    let publisher = fast_retries(&server.url).build()?;
    let token = publisher
        .build_private_channel("private-u1")?
        .get_client_auth_token()
        .await?;
    assert_eq!(token.token, "t.o.k");
    assert_eq!(token.expires_at.year(), 2030);
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    Ok(())
}

#[tokio::test]
async fn client_errors_are_never_retried() -> anyhow::Result<()> {
    let server = scripted(vec![
        (400, None, error_body("invalid_body")),
        (200, None, json!({"id": "m-1"})),
    ])
    .await?;
    let publisher = fast_retries(&server.url).retry_publish(true).build()?;
    let err = publisher
        .build_channel("orders")?
        .publish_message(&1)
        .await
        .err()
        .context("400")?;
    assert!(
        matches!(
            err,
            Error::Api {
                status: 400,
                code: ErrorCode::InvalidBody,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    // Same for sign, which retries by default.
    let server = scripted(vec![(401, None, error_body("unknown_api_key"))]).await?;
    let publisher = fast_retries(&server.url).build()?;
    let err = publisher
        .build_private_channel("private-u1")?
        .get_client_auth_token()
        .await
        .err()
        .context("401")?;
    assert_eq!(
        (err.code(), err.status()),
        (Some(ErrorCode::UnknownApiKey), Some(401))
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn honours_retry_after_on_429() -> anyhow::Result<()> {
    let server = scripted(vec![
        (429, Some("1"), json!({"error": "slow down"})),
        (200, None, json!({"id": "m-1"})),
    ])
    .await?;
    let publisher = fast_retries(&server.url).retry_publish(true).build()?;
    let started = Instant::now();
    let id = publisher
        .build_channel("orders")?
        .publish_message(&1)
        .await?;
    assert_eq!(id, "m-1");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);

    // A Retry-After beyond the backoff ceiling ends the retries; the error carries it.
    let server = scripted(vec![(429, Some("60"), json!({"error": "slow down"}))]).await?;
    let publisher = fast_retries(&server.url).retry_publish(true).build()?;
    let err = publisher
        .build_channel("orders")?
        .publish_message(&1)
        .await
        .err()
        .context("429")?;
    assert!(matches!(err, Error::Http { status: 429, .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn retries_stop_after_max_retries() -> anyhow::Result<()> {
    let server = scripted(vec![(500, None, error_body("internal"))]).await?;
    let publisher = fast_retries(&server.url).max_retries(2).build()?;
    let err = publisher
        .build_private_channel("private-u1")?
        .get_client_auth_token()
        .await
        .err()
        .context("500")?;
    assert_eq!(err.code(), Some(ErrorCode::Internal));
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        3,
        "1 try + 2 retries"
    );

    // Connection refused is retried too, and ends as a transport error.
    let closed = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let publisher = fast_retries(&url)
        .max_retries(2)
        .retry_publish(true)
        .build()?;
    let err = publisher
        .build_channel("orders")?
        .publish_message(&1)
        .await
        .err()
        .context("refused")?;
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");

    // A server that never answers in time.
    let silent = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", silent.local_addr()?);
    let publisher = fast_retries(&url)
        .timeout(Duration::from_millis(200))
        .max_retries(0)
        .build()?;
    let err = publisher
        .build_channel("orders")?
        .publish_message(&1)
        .await
        .err()
        .context("slow")?;
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    drop(silent);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A scripted Socket.IO server, for what the real one cannot be made to do on demand
// ---------------------------------------------------------------------------------------------

type FakeWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Accepts a WebSocket and runs the Engine.IO / Socket.IO handshake; `ping_ms` is the
/// announced ping interval (and timeout).
async fn fake_accept(listener: &TcpListener, ping_ms: u64) -> anyhow::Result<FakeWs> {
    let (tcp, _) = listener.accept().await?;
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let open = format!(
        r#"0{{"sid":"fake","upgrades":[],"pingInterval":{ping_ms},"pingTimeout":{ping_ms},"maxPayload":100000}}"#
    );
    ws.send(Message::text(open)).await?;
    let connect = fake_recv(&mut ws).await?;
    anyhow::ensure!(
        connect == r#"40{"projectId":"acme"}"#,
        "handshake: {connect}"
    );
    ws.send(Message::text(r#"40{"sid":"s"}"#)).await?;
    Ok(ws)
}

async fn fake_recv(ws: &mut FakeWs) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await?
            .context("closed")??
        {
            Message::Text(t) => return Ok(t.as_str().to_owned()),
            Message::Close(_) => bail!("closed"),
            _ => {}
        }
    }
}

/// Reads a `42<ack>["listen", body]` frame; returns the ack id and the body.
async fn fake_listen(ws: &mut FakeWs) -> anyhow::Result<(u64, Value)> {
    let frame = fake_recv(ws).await?;
    let rest = frame.strip_prefix("42").context("not an event")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let array: Value = serde_json::from_str(&rest[digits.len()..])?;
    anyhow::ensure!(array[0] == "listen", "{frame}");
    Ok((digits.parse()?, array[1].clone()))
}

#[tokio::test]
async fn removed_channels_are_not_relistened_and_silence_means_reconnect() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let calls = Arc::new(AtomicUsize::new(0));
    let provider_calls = Arc::clone(&calls);
    let connecting = Subscriber::builder(&url, "acme")
        .token_provider(move |channel: ChannelName| {
            let n = provider_calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::io::Error>(format!("token-{n}-{channel}")) }
        })
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .connect();
    let (subscriber, ws) = tokio::join!(connecting, fake_accept(&listener, 1000));
    let (subscriber, mut ws) = (subscriber?, ws?);

    // The fake acks two listens.
    let listens = async {
        subscriber.listen("orders").await?;
        subscriber.listen("private-a").await?;
        Ok::<_, Error>(())
    };
    let acks = async {
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let (ack, body) = fake_listen(&mut ws).await?;
            ws.send(Message::text(format!(r#"43{ack}[{{"ok":true}}]"#)))
                .await?;
            bodies.push(body);
        }
        Ok::<_, anyhow::Error>(bodies)
    };
    let (listened, bodies) = tokio::join!(listens, acks);
    listened?;
    let bodies = bodies?;
    assert_eq!(bodies[0], json!({"channelName": "orders"}));
    assert_eq!(
        bodies[1],
        json!({"channelName": "private-a", "authToken": "token-0-private-a"})
    );

    // Heartbeat: the subscriber answers pings.
    ws.send(Message::text("2")).await?;
    assert_eq!(fake_recv(&mut ws).await?, "3");

    // The server takes private-a away, then the connection drops.
    ws.send(Message::text(
        r#"42["system_message",{"code":"RemovedFromChannel","message":"key deleted","data":{"channels":["private-a"]}}]"#,
    ))
    .await?;
    wait_for(&subscriber, "RemovedFromChannel", |e| match e {
        SubscriberEvent::System(m) if m.message == "key deleted" => Some(()),
        _ => None,
    })
    .await?;
    drop(ws);

    // Second connection: only `orders` is listened to again.
    let mut ws = fake_accept(&listener, 1000).await?;
    let (ack, body) = fake_listen(&mut ws).await?;
    assert_eq!(body, json!({"channelName": "orders"}));
    ws.send(Message::text(format!(r#"43{ack}[{{"ok":true}}]"#)))
        .await?;
    wait_for(&subscriber, "Connected", |e| {
        matches!(e, SubscriberEvent::State(ConnectionState::Connected)).then_some(())
    })
    .await?;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no token asked for the removed channel"
    );

    // Events are delivered; then the fake goes silent (no pings) and the subscriber gives up
    // on this connection after pingInterval + pingTimeout, and comes back.
    ws.send(Message::text(
        r#"42["event",{"id":"m-9","channelName":"orders","payload":{"k":"v"}}]"#,
    ))
    .await?;
    assert_eq!(
        wait_for_event(&subscriber, "m-9").await?.payload,
        json!({"k": "v"})
    );
    let silent_since = Instant::now();
    let (reconnecting, third) = tokio::join!(
        wait_for(&subscriber, "Reconnecting after silence", |e| match e {
            SubscriberEvent::State(ConnectionState::Reconnecting { cause, .. }) => {
                Some(cause.clone())
            }
            _ => None,
        }),
        fake_accept(&listener, 1000)
    );
    assert!(matches!(reconnecting?, Error::Timeout(_)));
    assert!(silent_since.elapsed() >= Duration::from_millis(2000));
    let mut ws3 = third?;
    let (_, body) = fake_listen(&mut ws3).await?;
    assert_eq!(body, json!({"channelName": "orders"}));
    drop(ws);

    subscriber.close().await;
    Ok(())
}
