//! Projects and keys survive a restart of the embedded mode.

use herald_e2e::Herald;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn projects_and_keys_survive_restart() -> anyhow::Result<()> {
    let h = Herald::start(&[]).await?;
    h.create_project("durable").await?;
    let key = h
        .create_key("durable", &["publish_event", "sign_token"], None)
        .await?;
    let secret = key["key"].as_str().unwrap_or_default().to_owned();
    let revoked = h.create_key("durable", &["publish_event"], None).await?;
    let a = h
        .admin(
            Method::DELETE,
            &format!(
                "/v1/admin/projects/durable/api-keys/{}",
                revoked["id"].as_str().unwrap_or("")
            ),
            None,
        )
        .await?;
    assert_eq!(a.status, 204);
    let (url, token, data_dir) = (h.url.clone(), h.admin_token.clone(), h.data_dir.clone());
    let bind = url.trim_start_matches("http://").to_owned();
    let keep = h.stop().await?;

    let h = Herald::start_with(&data_dir, keep, &token, &bind, &[]).await?;
    let a = h
        .publish(&secret, "orders", json!({"after": "restart"}))
        .await?;
    assert_eq!(
        a.status, 200,
        "key created before the restart still works: {a:?}"
    );
    let revoked_secret = revoked["key"].as_str().unwrap_or_default();
    let a = h.publish(revoked_secret, "orders", json!(1)).await?;
    assert_eq!(
        (a.status, a.code()),
        (401, "unknown_api_key"),
        "a deleted key stays deleted"
    );
    let a = h.admin(Method::GET, "/v1/admin/projects", None).await?;
    assert!(
        a.body
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["id"] == "durable"))
    );
    let a = h
        .admin(Method::GET, "/v1/admin/projects/durable/api-keys", None)
        .await?;
    assert_eq!(a.body.as_array().map(Vec::len), Some(1));
    let a = h
        .request(
            Method::POST,
            "/v1/publishers/sign",
            Some(&secret),
            Some(
                json!({"channelName": "private-u1"})
                    .to_string()
                    .into_bytes(),
            ),
            &[],
        )
        .await?;
    assert_eq!(a.status, 200, "signing works after restart: {a:?}");
    h.stop().await?;
    Ok(())
}

#[tokio::test]
async fn generated_admin_token_is_stored_not_logged() -> anyhow::Result<()> {
    // No --admin-token: the server generates one into the data dir.
    let dir = tempfile::tempdir()?;
    let bin = herald_e2e::herald_bin();
    let mut child = tokio::process::Command::new(bin)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("HERALD_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let url = loop {
        let line = lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow::anyhow!("exited"))?;
        if let Some(u) = line.strip_prefix("herald listening on ") {
            break u.to_owned();
        }
    };
    let token = std::fs::read_to_string(dir.path().join("admin-token"))?;
    let token = token.trim();
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{url}/v1/admin/projects"))
        .bearer_auth(token)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    child.kill().await?;
    let out = child.wait_with_output().await?;
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("admin-token"),
        "the log says where the token is: {logs}"
    );
    assert!(!logs.contains(token), "the token itself is never logged");
    Ok(())
}
