//! Operations: configuration reference vs `--help`, readiness during shutdown.

use std::time::Duration;

use herald_e2e::{Herald, herald_bin};
use reqwest::Method;

#[tokio::test]
async fn configuration_reference_matches_serve_help() -> anyhow::Result<()> {
    let help = std::process::Command::new(herald_bin())
        .args(["serve", "--help"])
        .output()?;
    let help = String::from_utf8(help.stdout)?;
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )?;
    let generated = std::process::Command::new(herald_bin())
        .arg("config-docs")
        .output()?;
    assert_eq!(
        String::from_utf8(generated.stdout)?,
        doc,
        "docs/configuration.md is stale"
    );
    let documented: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `--"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert!(documented.len() >= 15, "{documented:?}");
    for flag in &documented {
        assert!(
            help.contains(&format!("--{flag}")),
            "--{flag} documented but not in --help"
        );
    }
    for line in help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--"))
    {
        let flag = line
            .trim_start_matches("--")
            .split([' ', '<'])
            .next()
            .unwrap_or("");
        if flag != "help" {
            assert!(
                documented.contains(&flag),
                "--{flag} in --help but not documented"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn readiness_turns_false_first_on_shutdown() -> anyhow::Result<()> {
    let h = Herald::start(&["--shutdown-grace-ms", "1500"]).await?;
    let ready = h.request(Method::GET, "/readyz", None, None, &[]).await?;
    assert_eq!(ready.status, 200);
    // Embedded mode's background tasks, all running.
    for task in ["revocation_worker", "expiry_scheduler", "reconciler"] {
        assert_eq!(
            ready.body["tasks"][task], "running",
            "{task}: {}",
            ready.body
        );
    }
    let pid = h.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = h.request(Method::GET, "/readyz", None, None, &[]).await?;
    assert_eq!(ready.status, 503, "not ready while draining");
    assert_eq!(ready.body["status"], "not_ready");
    let live = h.request(Method::GET, "/livez", None, None, &[]).await?;
    assert_eq!(live.status, 200, "alive while draining");
    let started = std::time::Instant::now();
    h.stop().await?; // waits for the exit the SIGTERM started
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited within the drain bound"
    );
    Ok(())
}

/// Every `$ref` in `v` points at an existing component.
fn refs_resolve(v: &serde_json::Value, doc: &serde_json::Value, missing: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                let target = r
                    .trim_start_matches("#/")
                    .split('/')
                    .try_fold(doc, |node, part| node.get(part));
                if target.is_none() {
                    missing.push(r.to_owned());
                }
            }
            for child in map.values() {
                refs_resolve(child, doc, missing);
            }
        }
        serde_json::Value::Array(items) => {
            for child in items {
                refs_resolve(child, doc, missing);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_is_served_valid_and_every_route_answers() -> anyhow::Result<()> {
    let h = Herald::start(&[]).await?;
    h.create_project("docs").await?;
    let key = h
        .create_key("docs", &["publish_event", "sign_token"], None)
        .await?;
    let api_key = key["key"].as_str().unwrap_or_default().to_owned();
    let key_id = key["id"].as_str().unwrap_or_default().to_owned();

    let doc = h
        .request(Method::GET, "/openapi.json", None, None, &[])
        .await?;
    assert_eq!(doc.status, 200);
    let doc = doc.body;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut missing = Vec::new();
    refs_resolve(&doc, &doc, &mut missing);
    assert!(missing.is_empty(), "unresolved $refs: {missing:?}");

    let paths = doc["paths"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("no paths"))?;
    let mut checked = 0;
    for (path, ops) in paths {
        let ops = ops
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("bad path item"))?;
        for (method, op) in ops {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            // Run destructive calls against throwaway resources.
            let concrete = if m == Method::DELETE {
                h.create_project("docs-tmp").await.ok();
                let tmp = h.create_key("docs-tmp", &["sign_token"], None).await?;
                path.replace("{id}", "docs-tmp")
                    .replace("{key_id}", tmp["id"].as_str().unwrap_or_default())
            } else {
                path.replace("{id}", "docs").replace("{key_id}", &key_id)
            };
            let security = op["security"][0]
                .as_object()
                .and_then(|s| s.keys().next().cloned());
            let bearer = match security.as_deref() {
                Some("api_key") => Some(api_key.clone()),
                Some("admin_token") => Some(h.admin_token.clone()),
                _ => None,
            };
            let body = op.get("requestBody").map(|_| b"{}".to_vec());
            let a = h
                .request(m.clone(), &concrete, bearer.as_deref(), body, &[])
                .await?;
            assert!(
                a.status != 404 && a.status != 405
                    // A resource's own 404 (not the router's `not_found`) proves the route.
                    || ["project_not_found", "webhook_not_found", "delivery_not_found"]
                        .contains(&a.body["error"]["code"].as_str().unwrap_or_default()),
                "{method} {concrete} answered {}: {}",
                a.status,
                a.body
            );
            assert!(
                a.status < 500 || a.status == 503,
                "{method} {concrete}: {}",
                a.status
            );
            checked += 1;
        }
    }
    assert!(checked >= 14, "checked {checked} operations");
    h.stop().await?;
    Ok(())
}

/// The document's `ErrorCode` schema is the set of wire strings, so a client generated from
/// `/openapi.json` decodes every error the server sends; its name schemas carry the rules the
/// server enforces, from the protocol crate's own constants.
#[tokio::test]
async fn openapi_error_codes_and_name_rules_are_the_wire_ones() -> anyhow::Result<()> {
    use herald_protocol::ErrorCode;
    use herald_protocol::names::{
        MAX_CHANNEL_NAME_BYTES, MAX_PROJECT_ID_BYTES, channel_name_pattern, project_id_pattern,
    };

    let h = Herald::start(&[]).await?;
    let doc = h
        .request(Method::GET, "/openapi.json", None, None, &[])
        .await?
        .body;
    let schemas = &doc["components"]["schemas"];
    let documented: Vec<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("ErrorCode has no enum: {}", schemas["ErrorCode"]))?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let wire: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    for code in &wire {
        assert!(
            documented.contains(code),
            "{code} is sent but not in the document's ErrorCode enum {documented:?}"
        );
    }
    assert_eq!(documented, wire, "the enum is exactly the wire strings");

    // Errors the server answers decode with the documented enum.
    let answers = [
        h.request(Method::GET, "/v1/admin/projects", None, None, &[])
            .await?,
        h.request(
            Method::GET,
            "/v1/admin/projects/Bad_Id",
            Some(&h.admin_token),
            None,
            &[],
        )
        .await?,
        h.request(Method::POST, "/v1/publishers/sign", None, None, &[])
            .await?,
        h.request(Method::GET, "/nowhere", None, None, &[]).await?,
    ];
    for a in &answers {
        assert!(a.status >= 400, "{a:?}");
        assert!(documented.contains(&a.code()), "{a:?}");
    }

    assert_eq!(schemas["ChannelName"]["pattern"], channel_name_pattern());
    assert_eq!(schemas["ChannelName"]["minLength"], 1);
    assert_eq!(schemas["ChannelName"]["maxLength"], MAX_CHANNEL_NAME_BYTES);
    assert_eq!(schemas["ProjectId"]["pattern"], project_id_pattern());
    assert_eq!(schemas["ProjectId"]["maxLength"], MAX_PROJECT_ID_BYTES);
    assert_eq!(
        schemas["CreateApiKeyRequest"]["properties"]["scopes"]["minItems"],
        1
    );
    h.stop().await?;
    Ok(())
}
