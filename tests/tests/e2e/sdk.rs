//! Cross-crate tests: the Rust SDK against an in-process server whose connection-tracking
//! indexes the test reads through the `ConnectionTracker` trait, and the Rust `Subscriber`
//! side by side with the official JS client.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use herald_protocol::{ApiKeyId, ChannelName, ProjectId, RoomName};
use herald_sdk::{Publisher, Subscriber, SubscriberEvent};
use herald_server::config::ServeConfig;
use herald_server::keys::AdminToken;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeConfig,
}

/// An in-process embedded server on a free port; returns its URL and tracker.
async fn in_process(
    dir: &std::path::Path,
) -> anyhow::Result<(
    String,
    std::sync::Arc<dyn herald_server::tracking::ConnectionTracker>,
)> {
    let args = Args::parse_from([
        "herald",
        "--data-dir",
        dir.to_str().context("utf-8 path")?,
        "--admin-token",
        "admin",
    ]);
    let server = herald_server::build_embedded(&args.serve, AdminToken::new("admin"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let tracker = server.tracker.clone();
    tokio::spawn(herald_server::app::serve(
        listener,
        server.state,
        server.router,
        std::future::pending(),
        Duration::ZERO,
        Duration::from_secs(1),
    ));
    Ok((url, tracker))
}

async fn admin_post(
    url: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth("admin")
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    Ok(r.json().await?)
}

type Entries = BTreeSet<(String, String)>;

async fn by_key(
    t: &dyn herald_server::tracking::ConnectionTracker,
    key: &ApiKeyId,
) -> anyhow::Result<Entries> {
    Ok(t.by_api_key(key)
        .await?
        .into_iter()
        .map(|a| (a.socket_id, a.room.into_string()))
        .collect())
}

async fn by_socket(
    t: &dyn herald_server::tracking::ConnectionTracker,
    sid: &str,
) -> anyhow::Result<Entries> {
    Ok(t.by_socket(sid)
        .await?
        .into_iter()
        .map(|a| (a.room.into_string(), a.api_key_id.to_string()))
        .collect())
}

/// Polls until `f` yields `expected` (tracking clean-up on disconnect is asynchronous).
async fn eventually<F, Fut>(expected: Entries, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Entries>>,
{
    let mut last = Entries::new();
    for _ in 0..100 {
        last = f().await?;
        if last == expected {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("expected {expected:?}, index holds {last:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_indexes_hold_exactly_the_live_associations() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (url, tracker) = in_process(dir.path()).await?;
    admin_post(
        &url,
        "/v1/admin/projects",
        json!({"id": "track", "name": "t"}),
    )
    .await?;
    let key = admin_post(
        &url,
        "/v1/admin/projects/track/api-keys",
        json!({"name": "k", "scopes": ["publish_event", "sign_token"]}),
    )
    .await?;
    let key_id = ApiKeyId::parse(key["id"].as_str().unwrap_or_default())?;
    let publisher = Publisher::builder(&url, key["key"].as_str().unwrap_or_default()).build()?;
    let token = |c: &'static str| {
        let publisher = publisher.clone();
        async move {
            anyhow::Ok(
                publisher
                    .build_private_channel(c)?
                    .get_client_auth_token()
                    .await?
                    .token,
            )
        }
    };
    let project = ProjectId::parse("track")?;
    let room = |c: &str| -> anyhow::Result<String> {
        Ok(RoomName::channel(&project, &ChannelName::parse(c)?).into_string())
    };

    let a = Subscriber::builder(&url, "track").connect().await?;
    a.listen_with_token("private-x", token("private-x").await?)
        .await?;
    a.listen("public").await?; // public channels are not tracked
    let entries = by_key(tracker.as_ref(), &key_id).await?;
    let sid_a = entries
        .iter()
        .next()
        .map(|(s, _)| s.clone())
        .context("a tracked")?;
    assert_eq!(
        entries,
        Entries::from([(sid_a.clone(), room("private-x")?)])
    );

    let b = Subscriber::builder(&url, "track").connect().await?;
    b.listen_with_token("private-x", token("private-x").await?)
        .await?;
    a.listen_with_token("private-y", token("private-y").await?)
        .await?;
    let entries = by_key(tracker.as_ref(), &key_id).await?;
    assert_eq!(entries.len(), 3);
    let sid_b = entries
        .iter()
        .map(|(s, _)| s.clone())
        .find(|s| *s != sid_a)
        .context("b tracked")?;
    assert_eq!(
        by_socket(tracker.as_ref(), &sid_a).await?,
        Entries::from([
            (room("private-x")?, key_id.to_string()),
            (room("private-y")?, key_id.to_string())
        ])
    );

    // remove: both directions forget exactly that association.
    a.remove("private-y").await?;
    assert_eq!(
        by_socket(tracker.as_ref(), &sid_a).await?,
        Entries::from([(room("private-x")?, key_id.to_string())])
    );
    assert_eq!(
        by_key(tracker.as_ref(), &key_id).await?,
        Entries::from([
            (sid_a.clone(), room("private-x")?),
            (sid_b.clone(), room("private-x")?)
        ])
    );

    // disconnect: everything of that socket goes.
    b.close().await;
    eventually(Entries::from([(sid_a.clone(), room("private-x")?)]), || {
        by_key(tracker.as_ref(), &key_id)
    })
    .await?;
    assert!(by_socket(tracker.as_ref(), &sid_b).await?.is_empty());
    a.close().await;
    eventually(Entries::new(), || by_key(tracker.as_ref(), &key_id)).await?;
    assert!(by_socket(tracker.as_ref(), &sid_a).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_subscriber_and_official_js_client_receive_the_same_events() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (url, _) = in_process(dir.path()).await?;
    admin_post(
        &url,
        "/v1/admin/projects",
        json!({"id": "interop", "name": "i"}),
    )
    .await?;
    let key = admin_post(
        &url,
        "/v1/admin/projects/interop/api-keys",
        json!({"name": "k", "scopes": ["publish_event"]}),
    )
    .await?;
    let publisher = Publisher::builder(&url, key["key"].as_str().unwrap_or_default()).build()?;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("js/interop-listen.mjs");
    let mut js = tokio::process::Command::new("node")
        .arg(&script)
        .args([url.as_str(), "interop", "news", "3"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running node (npm ci in tests/js first)")?;
    let stdout = js.stdout.take().context("stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let ready = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await??
        .context("node exited early")?;
    // `{"ok":true,"epoch":…,"offset":0}`: the project keeps history by default.
    assert!(
        ready.starts_with(r#"ready {"ok":true,"offset":0,"epoch":"#),
        "{ready}"
    );

    let rust = Subscriber::builder(&url, "interop").connect().await?;
    rust.listen("news").await?;
    let channel = publisher.build_channel("news")?;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            channel
                .publish_message(&json!({"n": i, "text": "héllo"}))
                .await?,
        );
    }

    let mut rust_seen = Vec::new();
    while rust_seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), rust.next()).await? {
            Some(SubscriberEvent::Event(e)) => {
                rust_seen.push((e.id.unwrap_or_default(), e.payload))
            }
            Some(_) => {}
            None => anyhow::bail!("subscriber stream ended"),
        }
    }
    let mut js_seen = Vec::new();
    while js_seen.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await??
            .context("node exited early")?;
        let e: serde_json::Value = serde_json::from_str(&line)?;
        js_seen.push((
            e["id"].as_str().unwrap_or_default().to_owned(),
            e["payload"].clone(),
        ));
    }
    assert_eq!(
        rust_seen, js_seen,
        "both clients saw the same events in the same order"
    );
    assert_eq!(
        rust_seen
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    rust.close().await;
    Ok(())
}
