//! The `herald` command line as a user types it, against the real binary: serve flags without
//! the `serve` word, connection flags after the subcommand, `--payload` refused unless it is
//! JSON (exit 2, nothing published) and `--text` for strings, the missing admin token error,
//! `--help` naming the environment variables, logs in a file without colour codes, `GET /`.
//!
//! One server for the commands that talk to one (started as `herald --bind …`, logs to a file).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use herald_e2e::{Herald, herald_bin};
use herald_sdk::{Subscriber, SubscriberEvent};
use serde_json::{Value, json};

/// Runs `herald args…` to completion, with no `HERALD_*` variable of the test's environment
/// (every setting comes from the line).
async fn herald(args: &[&str]) -> anyhow::Result<Output> {
    herald_with_env(args, &[]).await
}

/// [`herald`] with these environment variables set.
async fn herald_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(herald_bin());
    command.args(args).kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERALD_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .with_context(|| format!("herald {args:?} did not finish within 30 s"))?
        .with_context(|| format!("running herald {args:?}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed and print JSON; returns the JSON.
async fn herald_json(args: &[&str]) -> anyhow::Result<Value> {
    let out = herald(args).await?;
    anyhow::ensure!(
        out.status.success(),
        "herald {args:?}: {}\nstderr: {}",
        out.status,
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("herald {args:?} printed no JSON: {}", stdout(&out)))
}

/// The next event a subscriber receives, skipping notices.
async fn next_event(sub: &Subscriber) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .context("no event within 10 s")?
        {
            Some(SubscriberEvent::Event(e)) => return Ok(e.payload),
            Some(_) => {}
            None => anyhow::bail!("subscriber stream ended"),
        }
    }
}

fn has_esc(path: &Path) -> anyhow::Result<(bool, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((
        bytes.contains(&0x1b),
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}

/// `herald --bind …` serves (no `serve` word); `GET /` answers the JSON index; `admin`,
/// `publish` and `sign` take their connection flags after the subcommand; `--payload '{oops'`
/// is refused with exit 2, a message naming the flag and the position, and publishes nothing;
/// `--text` publishes the string as is; the log file holds no ESC byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_as_a_user_types_it() -> anyhow::Result<()> {
    let logs = tempfile::tempdir()?;
    let log_file = logs.path().join("herald.log");
    let h = Herald::start_without_serve_word(&log_file, &[]).await?;
    let url = h.url.as_str();
    let token = h.admin_token.as_str();

    // GET /: the index, as JSON, whose links answer.
    let http = reqwest::Client::new();
    let index = http.get(format!("{url}/")).send().await?;
    assert_eq!(index.status(), 200);
    assert_eq!(
        index
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let index: Value = index.json().await?;
    assert_eq!(index["name"], "herald", "{index}");
    assert_eq!(index["version"], env!("CARGO_PKG_VERSION"), "{index}");
    assert_eq!(index["links"]["demo"], "/demo", "{index}");
    assert_eq!(index["metrics"], Value::Null, "no --metrics-bind: {index}");
    for link in ["openapi", "livez", "healthz", "readyz"] {
        let path = index["links"][link]
            .as_str()
            .with_context(|| format!("no {link} link: {index}"))?;
        let answer = http.get(format!("{url}{path}")).send().await?;
        assert_eq!(answer.status(), 200, "{link}: GET {path}");
    }

    // admin: connection flags after the subcommand, anywhere on the line.
    let project = herald_json(&[
        "admin",
        "project",
        "create",
        "--id",
        "acme",
        "--name",
        "Acme",
        "--url",
        url,
        "--admin-token",
        token,
    ])
    .await?;
    assert_eq!(project["id"], "acme");
    let key = herald_json(&[
        "admin",
        "key",
        "create",
        "--url",
        url,
        "--project",
        "acme",
        "--admin-token",
        token,
        "--name",
        "cli",
    ])
    .await?;
    let api_key = key["key"].as_str().context("no key printed")?.to_owned();
    let keys = herald_json(&[
        "admin",
        "key",
        "list",
        "--project",
        "acme",
        "--url",
        url,
        "--admin-token",
        token,
    ])
    .await?;
    assert_eq!(keys[0]["id"], key["id"], "{keys}");

    let sub = Subscriber::builder(url, "acme").connect().await?;
    sub.listen("orders").await?;

    // --payload that is not JSON: usage error, nothing sent.
    let refused = herald(&[
        "publish",
        "--channel",
        "orders",
        "--payload",
        "{oops",
        "--url",
        url,
        "--api-key",
        &api_key,
    ])
    .await?;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(message.contains("--payload"), "names the flag: {message}");
    assert!(
        message.contains("line 1 column 2"),
        "names where parsing stops: {message}"
    );
    assert!(message.contains("--text"), "points at --text: {message}");
    assert_eq!(stdout(&refused), "", "no answer printed");

    // --text sends the string as is; it is the first event the channel sees, so the refused
    // call published nothing.
    herald_json(&[
        "publish",
        "--channel",
        "orders",
        "--text",
        "{not json}",
        "--url",
        url,
        "--api-key",
        &api_key,
    ])
    .await?;
    assert_eq!(next_event(&sub).await?, json!("{not json}"));
    herald_json(&[
        "publish",
        "--url",
        url,
        "--channel",
        "orders",
        "--payload",
        r#"{"orderId": 42}"#,
        "--api-key",
        &api_key,
    ])
    .await?;
    assert_eq!(next_event(&sub).await?, json!({"orderId": 42}));

    let signed = herald_json(&[
        "sign",
        "--channel",
        "private-user-42",
        "--url",
        url,
        "--api-key",
        &api_key,
    ])
    .await?;
    assert!(signed["token"].is_string(), "{signed}");

    sub.close().await;
    h.stop().await?;
    let (esc, text) = has_esc(&log_file)?;
    assert!(
        text.contains("herald started"),
        "the logs went there: {text}"
    );
    assert!(!esc, "no colour codes in a log file: {text:?}");
    Ok(())
}

/// `--log-format color` colours even a file (so the test above shows the TTY check, not an
/// absence of colour support).
#[tokio::test]
async fn log_format_color_colours_a_file() -> anyhow::Result<()> {
    let logs = tempfile::tempdir()?;
    let log_file = logs.path().join("herald.log");
    let h = Herald::start_without_serve_word(&log_file, &["--log-format", "color"]).await?;
    h.create_project("colour").await?;
    h.stop().await?;
    let (esc, text) = has_esc(&log_file)?;
    assert!(esc, "{text:?}");
    Ok(())
}

/// No admin token anywhere: the error names the flag, the variable and the file it tried.
/// (A serve variable the client commands do not take, even a malformed one, is not read.)
#[tokio::test]
async fn missing_admin_token_says_where_it_was_looked_for() -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    let data_dir = empty.path().to_str().context("utf-8 temp dir")?;
    let out = herald_with_env(
        &[
            "admin",
            "project",
            "list",
            "--url",
            "http://127.0.0.1:9",
            "--data-dir",
            data_dir,
        ],
        &[("HERALD_BIND", "not-an-address")],
    )
    .await?;
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    for place in [
        "--admin-token",
        "HERALD_ADMIN_TOKEN",
        "--data-dir",
        &format!("{data_dir}/admin-token"),
    ] {
        assert!(message.contains(place), "names {place}: {message}");
    }
    Ok(())
}

/// `--help` shows the environment variable of every connection flag, on the subcommand that
/// takes it (`admin key list --help` lists the `admin` flags too).
#[tokio::test]
async fn help_names_the_environment_variables() -> anyhow::Result<()> {
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["admin", "key", "list", "--help"],
            &[
                "[env: HERALD_URL",
                "[env: HERALD_ADMIN_TOKEN]",
                "[env: HERALD_DATA_DIR",
                "[env: HERALD_PROJECT",
            ],
        ),
        (
            &["publish", "--help"],
            &["[env: HERALD_URL", "[env: HERALD_API_KEY]", "--text"],
        ),
        (
            &["sign", "--help"],
            &["[env: HERALD_URL", "[env: HERALD_API_KEY]"],
        ),
    ];
    for (args, expected) in cases {
        let out = herald(args).await?;
        assert!(out.status.success(), "{args:?}");
        let help = stdout(&out);
        for e in expected {
            assert!(help.contains(e), "{args:?} shows {e}:\n{help}");
        }
    }
    // Serve flags come first or after `serve`, never before another subcommand.
    let out = herald(&["--bind", "127.0.0.1:0", "admin", "project", "list"]).await?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    Ok(())
}
