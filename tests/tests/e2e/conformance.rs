//! The conformance suite's Rust runner: an interpreter of `tests/conformance/scenarios.json`
//! driving `herald_sdk::Subscriber` (its public API only) against the real binary, which
//! `tests/conformance/conductor.mjs` starts and drives (server steps are written once there).
//!
//! One test runs every scenario, prints each by name and writes
//! `target/conformance/rust.json` (`[{name, passed, error?}]`), which
//! `tests/conformance/check.mjs` compares with the spec and the other platforms' reports.
//! Step kinds: `tests/conformance/README.md`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use herald_sdk::{ChannelName, ConnectionState, Subscriber, SubscriberEvent};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// How long an `expect` step waits for what it expects.
const EXPECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one conductor step may take (a flood or a restart included).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The conductor process and its control URL.
struct Conductor {
    child: Child,
    control: String,
    http: reqwest::Client,
}

impl Conductor {
    async fn start() -> anyhow::Result<Self> {
        let script = repo_root().join("tests/conformance/conductor.mjs");
        let mut child = Command::new("node")
            .arg(&script)
            .env("HERALD_BIN", herald_e2e::herald_bin())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // No kill_on_drop: a SIGKILL would leave Herald behind. Dropping the child closes
            // the conductor's stdin instead, and it stops Herald and exits by itself.
            .spawn()
            .with_context(|| format!("spawning node {}", script.display()))?;
        let stdout = child.stdout.take().context("conductor stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the conductor did not start within 30 s")??
            .context("the conductor exited before it was ready")?;
        let ready: Value = serde_json::from_str(&line)
            .with_context(|| format!("conductor's first line: {line}"))?;
        let control = ready["control"]
            .as_str()
            .context("no control URL")?
            .to_owned();
        Ok(Self {
            child,
            control,
            http: reqwest::Client::builder()
                .timeout(STEP_TIMEOUT)
                .build()
                .context("HTTP client")?,
        })
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let res = self
            .http
            .post(format!("{}{path}", self.control))
            .json(body)
            .send()
            .await
            .with_context(|| format!("conductor {path}"))?;
        let status = res.status();
        let body: Value = res.json().await.context("conductor answer")?;
        if !status.is_success() {
            bail!(
                "{}",
                body["error"].as_str().unwrap_or("conductor step failed")
            );
        }
        Ok(body)
    }

    async fn stop(mut self) {
        let _ = self.post("/stop", &json!({})).await;
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A connected subscriber and everything it yielded, read by a pump task that the `pause`
/// step stops (so the subscriber's buffer fills and it stops reading its socket).
struct Client {
    subscriber: Arc<Subscriber>,
    heard: Arc<Mutex<Vec<Value>>>,
    notify: Arc<Notify>,
    paused: watch::Sender<bool>,
    pump: JoinHandle<()>,
}

fn record(event: SubscriberEvent) -> Value {
    match event {
        SubscriberEvent::Event(e) => json!({
            "kind": "event", "channel": e.channel_name.as_str(), "id": e.id, "payload": e.payload,
            "offset": e.offset.map(|o| o.get()),
        }),
        SubscriberEvent::Recovery(r) => json!({
            "kind": "recovery", "channel": r.channel.as_str(), "recovered": r.recovered,
            "reason": r.reason.map(|r| r.as_str()),
        }),
        SubscriberEvent::System(m) => json!({
            "kind": "system", "code": m.code, "message": m.message, "data": m.data,
        }),
        SubscriberEvent::State(state) => {
            let name = match state {
                ConnectionState::Connected => "connected",
                ConnectionState::Reconnecting { .. } => "reconnecting",
                ConnectionState::Closed { .. } => "closed",
                _ => "other",
            };
            json!({"kind": "state", "state": name, "detail": format!("{state:?}")})
        }
        SubscriberEvent::Presence(change) => json!({
            "kind": "presence", "channel": change.channel.as_str(),
            "action": change.action.as_str(), "user": change.member.user_id.as_str(),
            "info": change.member.info.map(|i| i.to_value()),
        }),
        SubscriberEvent::PresenceSynced { channel, members } => json!({
            "kind": "presence_synced", "channel": channel.as_str(),
            "users": members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
        }),
        SubscriberEvent::RelistenFailed { channel, error } => json!({
            "kind": "relisten_failed", "channel": channel.as_str(), "error": error.to_string(),
        }),
        other => json!({"kind": "other", "detail": format!("{other:?}")}),
    }
}

impl Client {
    async fn connect(
        herald: &str,
        project: &str,
        conductor: &Conductor,
    ) -> Result<Self, herald_sdk::Error> {
        let http = conductor.http.clone();
        let token_url = format!("{}/token", conductor.control);
        let subscriber = Subscriber::builder(herald, project)
            .token_provider(move |channel: ChannelName| {
                let http = http.clone();
                let url = token_url.clone();
                async move {
                    let answer: Value = http
                        .post(url)
                        .json(&json!({"channel": channel.as_str()}))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    answer["token"]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow!("the backend answered no token: {answer}"))
                }
            })
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
            .connect()
            .await?;
        let subscriber = Arc::new(subscriber);
        let heard = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let (paused, mut paused_rx) = watch::channel(false);
        let pump = tokio::spawn({
            let (subscriber, heard, notify) = (subscriber.clone(), heard.clone(), notify.clone());
            async move {
                loop {
                    if paused_rx.wait_for(|paused| !*paused).await.is_err() {
                        return;
                    }
                    let Some(event) = subscriber.next().await else {
                        return;
                    };
                    if let Ok(mut heard) = heard.lock() {
                        heard.push(record(event));
                    }
                    notify.notify_waiters();
                }
            }
        });
        Ok(Self {
            subscriber,
            heard,
            notify,
            paused,
            pump,
        })
    }

    fn heard_from(&self, cursor: usize) -> Vec<Value> {
        self.heard
            .lock()
            .map(|h| h.get(cursor..).map(<[Value]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits for the first entry at or after `cursor` that `matches`; returns its index.
    async fn wait_for(
        &self,
        cursor: usize,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + EXPECT_TIMEOUT;
        loop {
            let notified = self.notify.notified();
            if let Some(i) = self.heard_from(cursor).iter().position(&matches) {
                return Ok(cursor + i);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!(
                    "timed out after {EXPECT_TIMEOUT:?} waiting for {what}; heard since the last match: {}",
                    summary(&self.heard_from(cursor))
                );
            }
        }
    }

    async fn close(self) {
        self.paused.send_replace(false);
        let _ = tokio::time::timeout(Duration::from_secs(15), self.subscriber.close()).await;
        let _ = tokio::time::timeout(Duration::from_secs(15), self.pump).await;
    }
}

/// What was heard, with large payloads shortened (a flood is thousands of 32 KiB events).
fn summary(heard: &[Value]) -> String {
    let shown: Vec<String> = heard
        .iter()
        .take(40)
        .map(|v| {
            let s = v.to_string();
            if s.len() > 300 {
                format!("{}…", s.chars().take(300).collect::<String>())
            } else {
                s
            }
        })
        .collect();
    let more = heard.len().saturating_sub(shown.len());
    format!(
        "[{}]{}",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

fn field<'a>(step: &'a Value, name: &str) -> anyhow::Result<&'a str> {
    step[name]
        .as_str()
        .with_context(|| format!("the step has no string {name:?}"))
}

/// One scenario's run: its client, cursor in the client's log, and saved values.
struct Run<'a> {
    conductor: &'a Conductor,
    herald: String,
    project: String,
    client: Option<Client>,
    cursor: usize,
    saved: Map<String, Value>,
}

impl Run<'_> {
    fn client(&self) -> anyhow::Result<&Client> {
        self.client.as_ref().context("no client: connect first")
    }

    /// A client call's outcome against the step's `error` (expected code) if any.
    fn outcome(step: &Value, result: Result<(), herald_sdk::Error>) -> anyhow::Result<()> {
        match (step.get("error").and_then(Value::as_str), result) {
            (None, Ok(())) => Ok(()),
            (None, Err(e)) => bail!("failed: {e}"),
            (Some(code), Ok(())) => bail!("succeeded, expected the error {code}"),
            (Some(code), Err(e)) => {
                let got = e.code().map(|c| c.as_str().to_owned());
                ensure!(
                    got.as_deref() == Some(code),
                    "failed with {got:?} ({e}), expected {code}"
                );
                Ok(())
            }
        }
    }

    async fn step(&mut self, step: &Value) -> anyhow::Result<()> {
        if step.get("server").is_some() {
            let answer = self.conductor.post("/step", step).await?;
            if let Some(name) = step.get("save").and_then(Value::as_str) {
                self.saved.insert(name.to_owned(), answer["id"].clone());
            }
            return Ok(());
        }
        if let Some(action) = step.get("do").and_then(Value::as_str) {
            return match action {
                "connect" => {
                    match Client::connect(&self.herald, &self.project, self.conductor).await {
                        Ok(client) => {
                            self.client = Some(client);
                            Self::outcome(step, Ok(()))
                        }
                        Err(e) => Self::outcome(step, Err(e)),
                    }
                }
                "listen" => {
                    let channel = field(step, "channel")?;
                    let result = self.client()?.subscriber.listen(channel).await;
                    Self::outcome(step, result)
                }
                "remove" => {
                    let channel = field(step, "channel")?;
                    let result = self.client()?.subscriber.remove(channel).await;
                    Self::outcome(step, result)
                }
                "pause" => {
                    self.client()?.paused.send_replace(true);
                    Ok(())
                }
                "resume" => {
                    self.client()?.paused.send_replace(false);
                    Ok(())
                }
                "close" => {
                    self.client()?.subscriber.close().await;
                    Ok(())
                }
                other => bail!("unknown do step {other:?}"),
            };
        }
        let expect = field(step, "expect")?;
        let client = self.client()?;
        match expect {
            "state" => {
                let state = field(step, "state")?;
                let at = client
                    .wait_for(self.cursor, &format!("state {state}"), |h| {
                        h["kind"] == "state" && h["state"] == state
                    })
                    .await?;
                self.cursor = at + 1;
            }
            "event" => {
                let channel = field(step, "channel")?;
                let payload = step.get("payload");
                let id = match step.get("id_of").and_then(Value::as_str) {
                    Some(name) => Some(self.saved.get(name).cloned().context("no such saved id")?),
                    None => None,
                };
                let at = client
                    .wait_for(
                        self.cursor,
                        &format!("an event on {channel} {payload:?}"),
                        |h| {
                            h["kind"] == "event"
                                && h["channel"] == channel
                                && payload.is_none_or(|p| &h["payload"] == p)
                                && id.as_ref().is_none_or(|id| &h["id"] == id)
                        },
                    )
                    .await?;
                self.cursor = at + 1;
            }
            "system" => {
                let code = field(step, "code")?;
                let channels = step.get("channels");
                let error_code = step.get("error_code");
                let at = client
                    .wait_for(self.cursor, &format!("system_message {code}"), |h| {
                        h["kind"] == "system"
                            && h["code"] == code
                            && channels.is_none_or(|c| &h["data"]["channels"] == c)
                            && error_code.is_none_or(|c| &h["data"]["errorCode"] == c)
                    })
                    .await?;
                self.cursor = at + 1;
            }
            "no_event" => {
                let channel = step.get("channel").and_then(Value::as_str);
                let ms = step.get("ms").and_then(Value::as_u64).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let leaked: Vec<Value> = client
                    .heard_from(self.cursor)
                    .into_iter()
                    .filter(|h| h["kind"] == "event" && channel.is_none_or(|c| h["channel"] == c))
                    .collect();
                ensure!(leaked.is_empty(), "unexpected events: {}", summary(&leaked));
            }
            "recovery" => {
                let channel = field(step, "channel")?;
                let recovered = step["recovered"]
                    .as_bool()
                    .context("the step has no boolean \"recovered\"")?;
                let reason = step.get("reason");
                let at = client
                    .wait_for(
                        self.cursor,
                        &format!("recovery of {channel}: {recovered} {reason:?}"),
                        |h| {
                            h["kind"] == "recovery"
                                && h["channel"] == channel
                                && h["recovered"] == recovered
                                && reason.is_none_or(|r| &h["reason"] == r)
                        },
                    )
                    .await?;
                self.cursor = at + 1;
            }
            "offsets" => {
                let channel = field(step, "channel")?;
                let offsets: Vec<Value> = client
                    .heard_from(0)
                    .into_iter()
                    .filter(|h| h["kind"] == "event" && h["channel"] == channel)
                    .map(|h| h["offset"].clone())
                    .collect();
                let n = offsets.len() as u64;
                let expected: Vec<Value> = (1..=n).map(Value::from).collect();
                ensure!(
                    offsets == expected,
                    "offsets on {channel} are not 1..{n} in order: {offsets:?}"
                );
                if let Some(count) = step.get("count").and_then(Value::as_u64) {
                    ensure!(n == count, "{n} events on {channel}, expected {count}");
                }
            }
            "presence" => {
                let channel = field(step, "channel")?;
                let action = field(step, "action")?;
                let user = field(step, "user")?;
                let info = step.get("info");
                let at = client
                    .wait_for(
                        self.cursor,
                        &format!("presence {action} {user} on {channel}"),
                        |h| {
                            h["kind"] == "presence"
                                && h["channel"] == channel
                                && h["action"] == action
                                && h["user"] == user
                                && info.is_none_or(|i| &h["info"] == i)
                        },
                    )
                    .await?;
                self.cursor = at + 1;
            }
            "presence_synced" => {
                let channel = field(step, "channel")?;
                let users = &step["users"];
                let at = client
                    .wait_for(
                        self.cursor,
                        &format!("presence synced on {channel}: {users}"),
                        |h| {
                            h["kind"] == "presence_synced"
                                && h["channel"] == channel
                                && &h["users"] == users
                        },
                    )
                    .await?;
                self.cursor = at + 1;
            }
            "members" => {
                let channel = field(step, "channel")?;
                let users: Vec<String> = client
                    .subscriber
                    .members(channel)
                    .into_iter()
                    .map(|m| m.user_id.as_str().to_owned())
                    .collect();
                ensure!(
                    json!(users) == step["users"],
                    "members of {channel} are {users:?}, expected {}",
                    step["users"]
                );
            }
            other => bail!("unknown expect step {other:?}"),
        }
        Ok(())
    }
}

async fn run_scenario(conductor: &Conductor, scenario: &Value) -> anyhow::Result<()> {
    let fresh = conductor.post("/scenario", &json!({})).await?;
    let mut run = Run {
        conductor,
        herald: field(&fresh, "herald")?.to_owned(),
        project: field(&fresh, "project")?.to_owned(),
        client: None,
        cursor: 0,
        saved: Map::new(),
    };
    let steps = scenario["steps"].as_array().context("no steps")?;
    let mut outcome = Ok(());
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = run.step(step).await {
            outcome = Err(e.context(format!("step {} {step}", i + 1)));
            break;
        }
    }
    if let Some(client) = run.client.take() {
        client.close().await;
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario() -> anyhow::Result<()> {
    let spec_path = repo_root().join("tests/conformance/scenarios.json");
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(&spec_path)
            .with_context(|| format!("reading {}", spec_path.display()))?,
    )?;
    let scenarios = spec["scenarios"].as_array().context("no scenarios")?;
    let conductor = Conductor::start().await?;
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for scenario in scenarios {
        let name = field(scenario, "name")?;
        let started = std::time::Instant::now();
        let outcome = run_scenario(&conductor, scenario).await;
        let took = started.elapsed();
        match outcome {
            Ok(()) => {
                eprintln!("conformance rust: {name} ... ok ({took:.1?})");
                report.push(json!({"name": name, "passed": true}));
            }
            Err(e) => {
                eprintln!("conformance rust: {name} ... FAILED ({took:.1?}): {e:#}");
                report.push(json!({"name": name, "passed": false, "error": format!("{e:#}")}));
                failed.push(name.to_owned());
            }
        }
    }
    conductor.stop().await;
    let dir = repo_root().join("target/conformance");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("rust.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    ensure!(failed.is_empty(), "scenarios failed: {failed:?}");
    Ok(())
}
