//! Every publisher and admin error is answered with its status and code, and none logs a
//! secret.

use herald_e2e::Herald;
use reqwest::Method;
use serde_json::json;

const PUBLISH: &str = "/v1/publishers/events/publish";
const SIGN: &str = "/v1/publishers/sign";

fn body(v: serde_json::Value) -> Option<Vec<u8>> {
    Some(v.to_string().into_bytes())
}

#[tokio::test]
async fn publisher_and_admin_errors_have_status_and_code() -> anyhow::Result<()> {
    let h = Herald::start(&["--max-payload-bytes", "1024"]).await?;
    h.create_project("errs").await?;
    let full = h
        .create_key("errs", &["publish_event", "sign_token"], None)
        .await?;
    let key = full["key"].as_str().unwrap_or_default().to_owned();
    let sign_only = h.create_key("errs", &["sign_token"], None).await?;
    let sign_only = sign_only["key"].as_str().unwrap_or_default().to_owned();
    let ok = json!({"channelName": "orders", "payload": {"n": 1}});

    let mut secrets = vec![key.clone(), sign_only.clone(), h.admin_token.clone()];

    // Missing, unknown and forged keys.
    let a = h
        .request(Method::POST, PUBLISH, None, body(ok.clone()), &[])
        .await?;
    assert_eq!((a.status, a.code()), (401, "missing_api_key"));
    let a = h
        .request(
            Method::POST,
            PUBLISH,
            Some("not-a-key"),
            body(ok.clone()),
            &[],
        )
        .await?;
    assert_eq!((a.status, a.code()), (401, "unknown_api_key"));
    let forged = format!("{}{}", &key[..key.len() - 4], "0000");
    let a = h
        .request(Method::POST, PUBLISH, Some(&forged), body(ok.clone()), &[])
        .await?;
    assert_eq!((a.status, a.code()), (401, "unknown_api_key"));
    let a = h
        .request(
            Method::POST,
            PUBLISH,
            None,
            body(ok.clone()),
            &[("x-api-key", &key)],
        )
        .await?;
    assert_eq!(a.status, 200, "X-API-Key works too: {a:?}");
    assert!(a.body["id"].is_string());

    // Scope.
    let a = h
        .request(
            Method::POST,
            PUBLISH,
            Some(&sign_only),
            body(ok.clone()),
            &[],
        )
        .await?;
    assert_eq!((a.status, a.code()), (403, "missing_scope"));
    let publish_only = h.create_key("errs", &["publish_event"], None).await?;
    let publish_only = publish_only["key"].as_str().unwrap_or_default().to_owned();
    secrets.push(publish_only.clone());
    let a = h
        .request(
            Method::POST,
            SIGN,
            Some(&publish_only),
            body(json!({"channelName": "private-a"})),
            &[],
        )
        .await?;
    assert_eq!((a.status, a.code()), (403, "missing_scope"));

    // Bodies and names.
    let a = h
        .request(
            Method::POST,
            PUBLISH,
            Some(&key),
            Some(b"{not json".to_vec()),
            &[],
        )
        .await?;
    assert_eq!((a.status, a.code()), (400, "invalid_body"));
    let a = h
        .request(
            Method::POST,
            PUBLISH,
            Some(&key),
            body(json!({"payload": 1})),
            &[],
        )
        .await?;
    assert_eq!((a.status, a.code()), (400, "invalid_body"));
    let a = h
        .request(
            Method::POST,
            PUBLISH,
            Some(&key),
            body(json!({"channelName": "orders"})),
            &[],
        )
        .await?;
    assert_eq!((a.status, a.code()), (400, "invalid_body"));
    for bad in ["", "a b", "acme:orders", &"x".repeat(165)] {
        let a = h
            .request(
                Method::POST,
                PUBLISH,
                Some(&key),
                body(json!({"channelName": bad, "payload": 1})),
                &[],
            )
            .await?;
        assert_eq!(
            (a.status, a.code()),
            (400, "invalid_channel_name"),
            "{bad:?}"
        );
    }
    for ambiguous in ["private", "privateer", "Private-x", "private-"] {
        let a = h
            .request(
                Method::POST,
                PUBLISH,
                Some(&key),
                body(json!({"channelName": ambiguous, "payload": 1})),
                &[],
            )
            .await?;
        assert_eq!(
            (a.status, a.code()),
            (400, "ambiguous_channel_name"),
            "{ambiguous:?}"
        );
    }
    let a = h
        .request(
            Method::POST,
            SIGN,
            Some(&key),
            body(json!({"channelName": "orders"})),
            &[],
        )
        .await?;
    assert_eq!((a.status, a.code()), (400, "channel_not_private"));

    // Presence channels: the token names the member; each mistake has its own code.
    let info_over = json!({ "pad": "x".repeat(1100) });
    let long_user = "u".repeat(129);
    for (req, want) in [
        (
            json!({"channelName": "presence-room"}),
            (400, "presence_user_missing"),
        ),
        (
            json!({"channelName": "presence-room", "userId": long_user}),
            (400, "invalid_user_id"),
        ),
        (
            json!({"channelName": "presence-room", "userId": "u1", "userInfo": info_over}),
            (400, "presence_info_too_large"),
        ),
        (
            json!({"channelName": "presence-room", "userId": "caf\u{e9}"}),
            (400, "invalid_user_id"),
        ),
        (
            json!({"channelName": "Presence-room", "userId": "u1"}),
            (400, "ambiguous_channel_name"),
        ),
    ] {
        let a = h
            .request(Method::POST, SIGN, Some(&key), body(req.clone()), &[])
            .await?;
        assert_eq!((a.status, a.code()), want, "{req}");
    }
    let a = h
        .request(
            Method::POST,
            SIGN,
            Some(&key),
            body(json!({"channelName": "presence-room", "userId": "u1", "userInfo": {"name": "Ada"}})),
            &[],
        )
        .await?;
    assert_eq!(a.status, 200, "{a:?}");

    // Payload limit: 1024 bytes of payload pass, 1025 do not; a body far over the limit is
    // cut off by the body limit with the same code.
    let at_limit = "x".repeat(1022); // plus two quotes = 1024 bytes of JSON
    let a = h.publish(&key, "orders", json!(at_limit)).await?;
    assert_eq!(a.status, 200, "{a:?}");
    let over = "x".repeat(1023);
    let a = h.publish(&key, "orders", json!(over)).await?;
    assert_eq!((a.status, a.code()), (413, "payload_too_large"));
    let huge = "x".repeat(1_000_000);
    let a = h.publish(&key, "orders", json!(huge)).await?;
    assert_eq!((a.status, a.code()), (413, "payload_too_large"));

    // Admin token.
    let a = h
        .request(Method::GET, "/v1/admin/projects", None, None, &[])
        .await?;
    assert_eq!((a.status, a.code()), (401, "missing_admin_token"));
    let a = h
        .request(Method::GET, "/v1/admin/projects", Some("wrong"), None, &[])
        .await?;
    assert_eq!((a.status, a.code()), (401, "invalid_admin_token"));
    let a = h
        .request(Method::GET, "/v1/admin/projects", Some(&key), None, &[])
        .await?;
    assert_eq!(
        (a.status, a.code()),
        (401, "invalid_admin_token"),
        "an API key is not an admin token"
    );

    // Admin input validation and resources.
    let a = h
        .admin(
            Method::POST,
            "/v1/admin/projects",
            Some(json!({"id": "Bad_Id", "name": "x"})),
        )
        .await?;
    assert_eq!((a.status, a.code()), (400, "invalid_project_id"));
    let a = h
        .admin(
            Method::POST,
            "/v1/admin/projects",
            Some(json!({"id": "errs", "name": "x"})),
        )
        .await?;
    assert_eq!((a.status, a.code()), (409, "project_exists"));
    let a = h
        .admin(
            Method::POST,
            "/v1/admin/projects",
            Some(json!({"id": "ok-id"})),
        )
        .await?;
    assert_eq!((a.status, a.code()), (400, "invalid_body"));
    let a = h
        .admin(
            Method::POST,
            "/v1/admin/projects",
            Some(json!({"name": "generated"})),
        )
        .await?;
    assert_eq!(a.status, 201);
    assert!(herald_protocol::ProjectId::parse(a.body["id"].as_str().unwrap_or("")).is_ok());
    let a = h
        .admin(
            Method::POST,
            "/v1/admin/projects/errs/api-keys",
            Some(json!({"name": "k", "scopes": ["admin"]})),
        )
        .await?;
    assert_eq!((a.status, a.code()), (400, "invalid_body"));
    let a = h
        .admin(
            Method::POST,
            "/v1/admin/projects/errs/api-keys",
            Some(json!({"name": "k", "scopes": []})),
        )
        .await?;
    assert_eq!((a.status, a.code()), (400, "invalid_body"));
    let a = h
        .admin(
            Method::POST,
            "/v1/admin/projects/errs/api-keys",
            Some(json!({"name": "k", "scopes": ["publish_event"], "expiresAt": "2001-01-01T00:00:00Z"})),
        )
        .await?;
    assert_eq!((a.status, a.code()), (400, "invalid_expiry"));
    let a = h
        .admin(
            Method::POST,
            "/v1/admin/projects/nope/api-keys",
            Some(json!({"name": "k", "scopes": ["publish_event"]})),
        )
        .await?;
    assert_eq!((a.status, a.code()), (404, "project_not_found"));
    let a = h
        .admin(
            Method::DELETE,
            "/v1/admin/projects/errs/api-keys/0123456789abcdef",
            None,
        )
        .await?;
    assert_eq!((a.status, a.code()), (404, "api_key_not_found"));
    let a = h
        .admin(Method::DELETE, "/v1/admin/projects/nope", None)
        .await?;
    assert_eq!((a.status, a.code()), (404, "project_not_found"));
    let a = h.admin(Method::GET, "/v1/admin/nothing-here", None).await?;
    assert_eq!((a.status, a.code()), (404, "not_found"));
    let a = h.admin(Method::PUT, "/v1/admin/projects", None).await?;
    assert_eq!((a.status, a.code()), (405, "method_not_allowed"));

    // Listing never shows a secret or a hash.
    let a = h
        .admin(Method::GET, "/v1/admin/projects/errs/api-keys", None)
        .await?;
    assert_eq!(a.status, 200);
    let listed = a.body.to_string();
    assert!(
        !listed.contains("key\"") && !listed.contains("hash"),
        "{listed}"
    );
    for s in &secrets {
        let secret_part = s.rsplit('_').next().unwrap_or(s);
        assert!(!listed.contains(secret_part));
    }

    // Nothing above was logged with a secret.
    let logs = h.logs();
    assert!(
        logs.contains("published"),
        "debug logs are on, so the log is not empty"
    );
    for s in &secrets {
        let secret_part = s.rsplit('_').next().unwrap_or(s);
        assert!(!logs.contains(secret_part), "a secret appeared in the logs");
    }
    h.stop().await?;
    Ok(())
}

#[tokio::test]
async fn expired_key_is_refused() -> anyhow::Result<()> {
    let h = Herald::start(&[]).await?;
    h.create_project("exp").await?;
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let soon = soon.format(&time::format_description::well_known::Rfc3339)?;
    let key = h.create_key("exp", &["publish_event"], Some(&soon)).await?;
    let key = key["key"].as_str().unwrap_or_default().to_owned();
    let a = h.publish(&key, "orders", json!(1)).await?;
    assert_eq!(a.status, 200, "valid before expiry: {a:?}");
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    let a = h.publish(&key, "orders", json!(1)).await?;
    assert_eq!((a.status, a.code()), (401, "expired_api_key"));
    h.stop().await?;
    Ok(())
}

/// Admin bodies follow the rules `/openapi.json` states: a JSON object (PATCH included), display
/// names of at most 200 characters (not bytes) with something besides ASCII whitespace,
/// `expiresAt` in RFC 3339 with `T` between date and time.
#[tokio::test]
async fn admin_bodies_follow_the_documented_rules() -> anyhow::Result<()> {
    let h = Herald::start(&[]).await?;
    h.create_project("rules").await?;
    let key = h.create_key("rules", &["publish_event"], None).await?;
    let key_path = format!(
        "/v1/admin/projects/rules/api-keys/{}",
        key["id"].as_str().unwrap_or_default()
    );
    for (patch, expected) in [
        (json!([]), (400, "invalid_body")),
        (json!("name"), (400, "invalid_body")),
        (json!({"name": null}), (400, "invalid_body")),
        (json!({"scopes": null}), (400, "invalid_body")),
        (json!({"name": " \t "}), (400, "invalid_body")),
        (json!({"name": "é".repeat(201)}), (400, "invalid_body")),
    ] {
        let a = h
            .admin(Method::PATCH, &key_path, Some(patch.clone()))
            .await?;
        assert_eq!((a.status, a.code()), expected, "PATCH {patch}: {a:?}");
    }
    let a = h
        .admin(
            Method::PATCH,
            &key_path,
            Some(json!({"name": "é".repeat(200)})),
        )
        .await?;
    assert_eq!(
        a.status, 200,
        "200 characters (400 bytes) is a valid name: {a:?}"
    );
    let a = h
        .admin(
            Method::PATCH,
            &key_path,
            Some(json!({"name": " \u{3000}billing\n"})),
        )
        .await?;
    assert_eq!(
        a.body["name"], "\u{3000}billing",
        "ASCII whitespace trimmed: {a:?}"
    );
    let a = h.admin(Method::PATCH, &key_path, Some(json!({}))).await?;
    assert_eq!(
        (a.status, &a.body["name"]),
        (200, &json!("\u{3000}billing")),
        "an empty object changes nothing"
    );

    let create =
        |expires: &str| json!({"name": "k", "scopes": ["publish_event"], "expiresAt": expires});
    for (expires, expected) in [
        ("2999-01-02 03:04:05Z", (400, "invalid_body")),
        ("2999-01-02T03:04:60Z", (400, "invalid_body")),
        ("2999-02-30T03:04:05Z", (400, "invalid_body")),
        ("", (400, "invalid_body")),
    ] {
        let a = h
            .admin(
                Method::POST,
                "/v1/admin/projects/rules/api-keys",
                Some(create(expires)),
            )
            .await?;
        assert_eq!(
            (a.status, a.code()),
            expected,
            "expiresAt {expires:?}: {a:?}"
        );
    }
    let a = h
        .admin(
            Method::POST,
            "/v1/admin/projects/rules/api-keys",
            Some(create("2999-01-02t03:04:05.5z")),
        )
        .await?;
    assert_eq!(a.status, 201, "{a:?}");
    h.stop().await?;
    Ok(())
}
