//! `herald admin …` and `herald publish …`: a small client of a running server's REST API, so
//! nobody needs hand-written curl. Prints the JSON answer on stdout; on an error prints the
//! server's code and message on stderr and exits non-zero.
//!
//! The connection flags (`--url`, `--admin-token`, `--data-dir`, `--api-key`) are global: they
//! go anywhere after the subcommand word (`herald admin key list --project p --url …`), and
//! each has a `HERALD_*` environment variable. Arguments clap refuses (a `--payload` that is
//! not JSON, a missing flag) exit with clap's usage-error code, 2; a failed call exits 1.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use herald_protocol::{ApiKeyScope, ErrorBody, ErrorCode};
use reqwest::Method;
use serde_json::{Value, json};

use crate::keys::ADMIN_TOKEN_FILE;

/// Where the server is.
#[derive(Debug, Clone, Args)]
pub struct ServerUrl {
    /// Base URL of the Herald server.
    #[arg(
        long,
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
}

/// `herald admin`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    server: ServerUrl,
    /// Admin token; when unset, read from `<data-dir>/admin-token`.
    #[arg(
        long,
        env = "HERALD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    /// Data dir of a local server, to find a generated admin token.
    #[arg(
        long,
        env = "HERALD_DATA_DIR",
        default_value = "./herald-data",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: AdminCommand,
}

/// Admin operations.
#[derive(Debug, Clone, Subcommand)]
enum AdminCommand {
    /// Projects (tenants).
    #[command(subcommand)]
    Project(ProjectCommand),
    /// API keys of a project.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Webhook endpoints of a project and their deliveries.
    #[command(subcommand)]
    Webhook(WebhookCommand),
}

#[derive(Debug, Clone, Subcommand)]
enum WebhookCommand {
    /// Create an endpoint; prints its signing secret once.
    Create {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
        /// Where events are posted (http:// or https://).
        #[arg(long)]
        url: String,
        /// Event types (repeat or comma-separate): channel_occupied, channel_vacated,
        /// member_added, member_removed, client_event, api_key_revoked, api_key_expiring.
        #[arg(long = "event", value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Create it paused.
        #[arg(long)]
        disabled: bool,
    },
    /// List a project's endpoints (no secrets).
    List {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
    },
    /// Show one endpoint.
    Get {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
        /// Webhook id (`wh_…`).
        webhook_id: String,
    },
    /// Change an endpoint's URL, event types, or pause/resume it.
    Update {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
        /// Webhook id (`wh_…`).
        webhook_id: String,
        /// A new URL.
        #[arg(long)]
        url: Option<String>,
        /// A new list of event types (replaces the old one).
        #[arg(long = "event", value_delimiter = ',')]
        events: Vec<String>,
        /// Pause (`false`) or resume (`true`).
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Delete an endpoint and its delivery log.
    Delete {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
        /// Webhook id (`wh_…`).
        webhook_id: String,
    },
    /// New signing secret (printed once); the old one keeps signing for the overlap window.
    RotateSecret {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
        /// Webhook id (`wh_…`).
        webhook_id: String,
    },
    /// The endpoint's recent deliveries with their attempts.
    Deliveries {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
        /// Webhook id (`wh_…`).
        webhook_id: String,
    },
    /// Send one delivery again now (a failed one gets a new series of attempts).
    Retry {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
        /// Webhook id (`wh_…`).
        webhook_id: String,
        /// Delivery id (`msg_…`).
        delivery_id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum ProjectCommand {
    /// Create a project.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Project id (`[a-z0-9][a-z0-9-]{0,62}`); generated when absent.
        #[arg(long)]
        id: Option<String>,
    },
    /// List projects.
    List,
    /// Delete a project, its keys, and disconnect its clients.
    Delete {
        /// Project id.
        id: String,
    },
    /// Replace the project's token signing secret: outstanding channel tokens stop working and
    /// the sockets that joined private channels with them are removed from those channels.
    RotateSecret {
        /// Project id.
        id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum KeyCommand {
    /// Create an API key; prints the key once.
    Create {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
        /// Display name (who holds the key).
        #[arg(long)]
        name: String,
        /// Scopes (repeat or comma-separate): publish_event, sign_token, read_history.
        #[arg(long = "scope", value_delimiter = ',', default_values = ["publish_event", "sign_token", "read_history"])]
        scopes: Vec<ApiKeyScope>,
        /// Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List a project's keys (no secrets).
    List {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
    },
    /// Delete (revoke) a key.
    Delete {
        /// Project id.
        #[arg(long, env = "HERALD_PROJECT")]
        project: String,
        /// Key id.
        key_id: String,
    },
}

/// `herald publish`.
#[derive(Debug, Clone, Args)]
#[group(id = "payload_or_text", required = true, multiple = false, args = ["payload", "text"])]
pub struct PublishArgs {
    #[command(flatten)]
    server: ServerUrl,
    /// API key with the publish_event scope.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Channel to publish to.
    #[arg(long)]
    channel: String,
    /// Payload, as JSON (`'{"orderId": 42}'`, `'"a string"'`, `42`); refused unless it parses.
    #[arg(
        long,
        value_name = "JSON",
        value_parser = parse_json_payload,
        allow_hyphen_values = true
    )]
    payload: Option<Value>,
    /// Payload, a string sent as is (as a JSON string), instead of `--payload`.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    text: Option<String>,
}

/// `--payload`'s parser: JSON or a usage error naming where it stops parsing.
fn parse_json_payload(raw: &str) -> Result<Value, String> {
    serde_json::from_str(raw)
        .map_err(|e| format!("not valid JSON: {e} (to send a string as is, use --text)"))
}

/// `herald sign`.
#[derive(Debug, Clone, Args)]
pub struct SignArgs {
    #[command(flatten)]
    server: ServerUrl,
    /// API key with the sign_token scope.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Private channel (`private-…`) the token opens.
    #[arg(long)]
    channel: String,
}

async fn call(
    url: &str,
    method: Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, format!("{}{path}", url.trim_end_matches('/')))
        .bearer_auth(bearer);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if status.is_success() {
        if text.is_empty() {
            return Ok(json!({ "status": status.as_u16() }));
        }
        return Ok(serde_json::from_str(&text)?);
    }
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(e) => bail!(
            "{} ({}): {}",
            e.error.code,
            status.as_u16(),
            e.error.message
        ),
        Err(_) => bail!("HTTP {}: {text}", status.as_u16()),
    }
}

fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The admin token of `herald admin`, and where it came from (for error messages): the flag
/// or `HERALD_ADMIN_TOKEN`, else `<data-dir>/admin-token`. The error when neither gives one
/// names all three places and the file path it tried.
fn admin_token(
    flag: Option<String>,
    data_dir: &std::path::Path,
) -> anyhow::Result<(String, String)> {
    if let Some(t) = flag.filter(|t| !t.is_empty()) {
        return Ok((t, "--admin-token / HERALD_ADMIN_TOKEN".to_owned()));
    }
    let path = std::path::absolute(data_dir.join(ADMIN_TOKEN_FILE))
        .unwrap_or_else(|_| data_dir.join(ADMIN_TOKEN_FILE));
    let looked = "no admin token: pass --admin-token, set HERALD_ADMIN_TOKEN, or point --data-dir \
                  (HERALD_DATA_DIR) at the server's data dir, whose admin-token file a server \
                  started without a token writes";
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("{looked}; tried {}", path.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        bail!("{looked}; {} is empty", path.display());
    }
    Ok((token, path.display().to_string()))
}

/// Runs `herald admin …`.
pub async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    let (token, source) = admin_token(args.admin_token, &args.data_dir)?;
    let url = &args.server.url;
    let answer = admin_call(url, &token, args.command).await;
    let v = answer.map_err(|e| {
        if e.to_string()
            .starts_with(ErrorCode::InvalidAdminToken.as_str())
        {
            e.context(format!("the server refused the admin token from {source}"))
        } else {
            e
        }
    })?;
    print(&v)
}

async fn admin_call(url: &str, token: &str, command: AdminCommand) -> anyhow::Result<Value> {
    let token = token.to_owned();
    Ok(match command {
        AdminCommand::Project(ProjectCommand::Create { name, id }) => {
            let mut body = json!({ "name": name });
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            call(url, Method::POST, "/v1/admin/projects", &token, Some(body)).await?
        }
        AdminCommand::Project(ProjectCommand::List) => {
            call(url, Method::GET, "/v1/admin/projects", &token, None).await?
        }
        AdminCommand::Project(ProjectCommand::Delete { id }) => {
            call(
                url,
                Method::DELETE,
                &format!("/v1/admin/projects/{id}"),
                &token,
                None,
            )
            .await?
        }
        AdminCommand::Project(ProjectCommand::RotateSecret { id }) => {
            call(
                url,
                Method::POST,
                &format!("/v1/admin/projects/{id}/rotate-secret"),
                &token,
                None,
            )
            .await?
        }
        AdminCommand::Key(KeyCommand::Create {
            project,
            name,
            scopes,
            expires_at,
        }) => {
            let mut body = json!({ "name": name, "scopes": scopes });
            if let Some(e) = expires_at {
                body["expiresAt"] = json!(e);
            }
            call(
                url,
                Method::POST,
                &format!("/v1/admin/projects/{project}/api-keys"),
                &token,
                Some(body),
            )
            .await?
        }
        AdminCommand::Key(KeyCommand::List { project }) => {
            call(
                url,
                Method::GET,
                &format!("/v1/admin/projects/{project}/api-keys"),
                &token,
                None,
            )
            .await?
        }
        AdminCommand::Webhook(command) => webhook_call(url, &token, command).await?,
        AdminCommand::Key(KeyCommand::Delete { project, key_id }) => {
            call(
                url,
                Method::DELETE,
                &format!("/v1/admin/projects/{project}/api-keys/{key_id}"),
                &token,
                None,
            )
            .await?
        }
    })
}

async fn webhook_call(url: &str, token: &str, command: WebhookCommand) -> anyhow::Result<Value> {
    let base = |project: &str| format!("/v1/admin/projects/{project}/webhooks");
    let (method, path, body) = match command {
        WebhookCommand::Create {
            project,
            url: target,
            events,
            disabled,
        } => (
            Method::POST,
            base(&project),
            Some(json!({ "url": target, "events": events, "enabled": !disabled })),
        ),
        WebhookCommand::List { project } => (Method::GET, base(&project), None),
        WebhookCommand::Get {
            project,
            webhook_id,
        } => (
            Method::GET,
            format!("{}/{webhook_id}", base(&project)),
            None,
        ),
        WebhookCommand::Update {
            project,
            webhook_id,
            url: target,
            events,
            enabled,
        } => {
            let mut body = json!({});
            if let Some(target) = target {
                body["url"] = json!(target);
            }
            if !events.is_empty() {
                body["events"] = json!(events);
            }
            if let Some(enabled) = enabled {
                body["enabled"] = json!(enabled);
            }
            (
                Method::PATCH,
                format!("{}/{webhook_id}", base(&project)),
                Some(body),
            )
        }
        WebhookCommand::Delete {
            project,
            webhook_id,
        } => (
            Method::DELETE,
            format!("{}/{webhook_id}", base(&project)),
            None,
        ),
        WebhookCommand::RotateSecret {
            project,
            webhook_id,
        } => (
            Method::POST,
            format!("{}/{webhook_id}/rotate-secret", base(&project)),
            None,
        ),
        WebhookCommand::Deliveries {
            project,
            webhook_id,
        } => (
            Method::GET,
            format!("{}/{webhook_id}/deliveries", base(&project)),
            None,
        ),
        WebhookCommand::Retry {
            project,
            webhook_id,
            delivery_id,
        } => (
            Method::POST,
            format!(
                "{}/{webhook_id}/deliveries/{delivery_id}/retry",
                base(&project)
            ),
            None,
        ),
    };
    call(url, method, &path, token, body).await
}

/// Runs `herald publish`.
pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let payload = match (args.payload, args.text) {
        (Some(json), _) => json,
        (None, Some(text)) => Value::String(text),
        (None, None) => bail!("one of --payload or --text is required"),
    };
    let body = json!({ "channelName": args.channel, "payload": payload });
    let v = call(
        &args.server.url,
        Method::POST,
        "/v1/publishers/events/publish",
        &args.api_key,
        Some(body),
    )
    .await?;
    print(&v)
}

/// Runs `herald sign`.
pub async fn sign(args: SignArgs) -> anyhow::Result<()> {
    let body = json!({ "channelName": args.channel });
    let v = call(
        &args.server.url,
        Method::POST,
        "/v1/publishers/sign",
        &args.api_key,
        Some(body),
    )
    .await?;
    print(&v)
}
