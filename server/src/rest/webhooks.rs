//! Webhook endpoints of a project under `/v1/admin/projects/{id}/webhooks`, authenticated by
//! the admin token: create (the secret shown once), list, get, update, delete, rotate the
//! secret (the old one keeps signing for `--webhook-secret-overlap-secs`), the delivery log
//! and the retry of one delivery. The wire types are in `herald_protocol::webhook`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use herald_protocol::webhook::{
    CreatedWebhook, DeliveryId, DeliveryStatus, MAX_LISTED_DELIVERIES, MAX_WEBHOOKS_PER_PROJECT,
    WEBHOOK_ID_RANDOM_CHARS, Webhook, WebhookDelivery, WebhookEventType, WebhookId, WebhookUrl,
};
use herald_protocol::{ErrorBody, ErrorCode, ProjectId};
use serde_json::Value;

use super::ApiError;
use super::admin::{authorize, existing_project, json_object, now_seconds, project_id};
use crate::app::AppState;
use crate::webhooks::{PreviousSecret, WebhookRecord, WebhookSecret, WebhookStoreError, now_ms};

fn storage_error(e: WebhookStoreError) -> ApiError {
    match e {
        WebhookStoreError::TooMany => ApiError::new(
            ErrorCode::TooManyWebhooks,
            format!("a project may have {MAX_WEBHOOKS_PER_PROJECT} webhooks; delete one first"),
        ),
        WebhookStoreError::Unavailable(_) => ApiError::new(
            ErrorCode::Unavailable,
            "webhook storage is unavailable, try again shortly",
        ),
        other => {
            tracing::error!(error = %other, "webhook storage failed");
            ApiError::new(ErrorCode::Internal, "webhook storage failed")
        }
    }
}

fn webhook_not_found(project: &ProjectId, raw: &str) -> ApiError {
    ApiError::new(
        ErrorCode::WebhookNotFound,
        format!(
            "no webhook {:?} in project {project}",
            raw.chars().take(80).collect::<String>()
        ),
    )
}

fn url_field(v: &Value) -> Result<WebhookUrl, ApiError> {
    match v.get("url") {
        Some(Value::String(s)) => Ok(WebhookUrl::parse(s)?),
        _ => Err(ApiError::new(
            ErrorCode::InvalidWebhookUrl,
            "\"url\" must be an http:// or https:// URL string",
        )),
    }
}

fn enabled_field(v: &Value) -> Result<Option<bool>, ApiError> {
    match v.get("enabled") {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidBody,
            "\"enabled\" must be true or false",
        )),
    }
}

/// The project (checked to exist) and the webhook of the path.
async fn existing_webhook(
    state: &AppState,
    id: &str,
    webhook_id: &str,
) -> Result<WebhookRecord, ApiError> {
    let project = project_id(id)?;
    existing_project(state, &project).await?;
    let wid =
        WebhookId::parse(webhook_id).ok_or_else(|| webhook_not_found(&project, webhook_id))?;
    state
        .webhooks()
        .backend
        .webhook(&project, &wid)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| webhook_not_found(&project, webhook_id))
}

/// `POST /v1/admin/projects/{id}/webhooks` `{ "url", "events", "enabled"? }`.
#[utoipa::path(post, path = "/v1/admin/projects/{id}/webhooks", tag = "webhooks", params(("id" = ProjectId, Path, description = "Project id")),
    request_body = herald_protocol::webhook::CreateWebhookRequest, security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created; `secret` is shown this once", body = CreatedWebhook),
        (status = 400, description = "`invalid_project_id`, `invalid_body`, `invalid_webhook_url`, `invalid_webhook_events`: a bad project id, not a JSON object, a bad `url`, `events` or `enabled`", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`", body = ErrorBody),
        (status = 409, description = "`too_many_webhooks`: the project has the most webhooks allowed", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    authorize(&state, &headers)?;
    let project = project_id(&id)?;
    let v = json_object(body)?;
    let url = url_field(&v)?;
    let events = WebhookEventType::parse_list(v.get("events").unwrap_or(&Value::Null))?;
    let enabled = enabled_field(&v)?.unwrap_or(true);
    existing_project(&state, &project).await?;
    let record = WebhookRecord {
        id: WebhookId::generate(rand::random::<[u8; WEBHOOK_ID_RANDOM_CHARS]>()),
        project_id: project.clone(),
        url,
        events,
        enabled,
        created_at: now_seconds(),
        secret: WebhookSecret::generate(),
        previous: None,
    };
    state
        .webhooks()
        .backend
        .create_webhook(&record, MAX_WEBHOOKS_PER_PROJECT)
        .await
        .map_err(storage_error)?;
    state.webhooks().forget(&project);
    tracing::info!(project_id = %project, webhook_id = %record.id, events = ?record.events, "webhook created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook: record.to_api(),
            secret: record.secret.expose(),
        }),
    ))
}

/// `GET /v1/admin/projects/{id}/webhooks`.
#[utoipa::path(get, path = "/v1/admin/projects/{id}/webhooks", tag = "webhooks", params(("id" = ProjectId, Path, description = "Project id")), security(("admin_token" = [])),
    responses(
        (status = 200, description = "The project's webhooks, without secrets", body = [Webhook]),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<Webhook>>, ApiError> {
    authorize(&state, &headers)?;
    let project = project_id(&id)?;
    existing_project(&state, &project).await?;
    let list = state
        .webhooks()
        .backend
        .webhooks(&project)
        .await
        .map_err(storage_error)?;
    Ok(Json(list.iter().map(WebhookRecord::to_api).collect()))
}

/// `GET /v1/admin/projects/{id}/webhooks/{webhook_id}`.
#[utoipa::path(get, path = "/v1/admin/projects/{id}/webhooks/{webhook_id}", tag = "webhooks", params(("id" = ProjectId, Path, description = "Project id"), ("webhook_id" = String, Path, description = "Webhook id")), security(("admin_token" = [])),
    responses(
        (status = 200, description = "The webhook, without its secret", body = Webhook),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`, `webhook_not_found` (also for a malformed id)", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, webhook_id)): Path<(String, String)>,
) -> Result<Json<Webhook>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(
        existing_webhook(&state, &id, &webhook_id).await?.to_api(),
    ))
}

/// `PATCH /v1/admin/projects/{id}/webhooks/{webhook_id}` `{ "url"?, "events"?, "enabled"? }`.
#[utoipa::path(patch, path = "/v1/admin/projects/{id}/webhooks/{webhook_id}", tag = "webhooks", params(("id" = ProjectId, Path, description = "Project id"), ("webhook_id" = String, Path, description = "Webhook id")),
    request_body = herald_protocol::webhook::UpdateWebhookRequest, security(("admin_token" = [])),
    responses(
        (status = 200, description = "The updated webhook", body = Webhook),
        (status = 400, description = "`invalid_project_id`, `invalid_body`, `invalid_webhook_url`, `invalid_webhook_events`: a bad project id, not a JSON object, a bad `url`, `events` or `enabled`", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`, `webhook_not_found` (also for a malformed id)", body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, webhook_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Webhook>, ApiError> {
    authorize(&state, &headers)?;
    let project = project_id(&id)?;
    let v = json_object(body)?;
    let url = match v.get("url") {
        None => None,
        Some(_) => Some(url_field(&v)?),
    };
    let events = match v.get("events") {
        None => None,
        Some(list) => Some(WebhookEventType::parse_list(list)?),
    };
    let enabled = enabled_field(&v)?;
    let mut record = existing_webhook(&state, &id, &webhook_id).await?;
    if let Some(url) = url {
        record.url = url;
    }
    if let Some(events) = events {
        record.events = events;
    }
    if let Some(enabled) = enabled {
        record.enabled = enabled;
    }
    if !state
        .webhooks()
        .backend
        .update_webhook(&record)
        .await
        .map_err(storage_error)?
    {
        return Err(webhook_not_found(&project, &webhook_id));
    }
    state.webhooks().forget(&project);
    tracing::info!(project_id = %project, webhook_id = %record.id, enabled = record.enabled, events = ?record.events, "webhook updated");
    Ok(Json(record.to_api()))
}

/// `DELETE /v1/admin/projects/{id}/webhooks/{webhook_id}`.
#[utoipa::path(delete, path = "/v1/admin/projects/{id}/webhooks/{webhook_id}", tag = "webhooks", params(("id" = ProjectId, Path, description = "Project id"), ("webhook_id" = String, Path, description = "Webhook id")), security(("admin_token" = [])),
    responses(
        (status = 204, description = "Deleted with its delivery log; its pending deliveries are dropped"),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`, `webhook_not_found` (also for a malformed id)", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, webhook_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    let record = existing_webhook(&state, &id, &webhook_id).await?;
    if !state
        .webhooks()
        .backend
        .delete_webhook(&record.project_id, &record.id)
        .await
        .map_err(storage_error)?
    {
        return Err(webhook_not_found(&record.project_id, &webhook_id));
    }
    state.webhooks().forget(&record.project_id);
    tracing::info!(project_id = %record.project_id, webhook_id = %record.id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/admin/projects/{id}/webhooks/{webhook_id}/rotate-secret`.
#[utoipa::path(post, path = "/v1/admin/projects/{id}/webhooks/{webhook_id}/rotate-secret", tag = "webhooks", params(("id" = ProjectId, Path, description = "Project id"), ("webhook_id" = String, Path, description = "Webhook id")), security(("admin_token" = [])),
    responses(
        (status = 200, description = "A new secret, shown this once; the old one keeps signing (a second signature in `webhook-signature`) until `previousSecretExpiresAt`", body = CreatedWebhook),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`, `webhook_not_found` (also for a malformed id)", body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, webhook_id)): Path<(String, String)>,
) -> Result<Json<CreatedWebhook>, ApiError> {
    authorize(&state, &headers)?;
    let mut record = existing_webhook(&state, &id, &webhook_id).await?;
    let overlap = state.webhooks().settings.secret_overlap;
    let old = std::mem::replace(&mut record.secret, WebhookSecret::generate());
    record.previous = (!overlap.is_zero()).then(|| PreviousSecret {
        secret: old,
        until: now_seconds() + overlap,
    });
    if !state
        .webhooks()
        .backend
        .update_webhook(&record)
        .await
        .map_err(storage_error)?
    {
        return Err(webhook_not_found(&record.project_id, &webhook_id));
    }
    state.webhooks().forget(&record.project_id);
    tracing::info!(project_id = %record.project_id, webhook_id = %record.id, overlap_secs = overlap.as_secs(), "webhook secret rotated");
    Ok(Json(CreatedWebhook {
        webhook: record.to_api(),
        secret: record.secret.expose(),
    }))
}

/// `GET /v1/admin/projects/{id}/webhooks/{webhook_id}/deliveries`.
#[utoipa::path(get, path = "/v1/admin/projects/{id}/webhooks/{webhook_id}/deliveries", tag = "webhooks", params(("id" = ProjectId, Path, description = "Project id"), ("webhook_id" = String, Path, description = "Webhook id")), security(("admin_token" = [])),
    responses(
        (status = 200, description = "The webhook's most recent deliveries (at most 100), newest first, each with its attempts and, while pending, its next attempt", body = [WebhookDelivery]),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`, `webhook_not_found` (also for a malformed id)", body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, webhook_id)): Path<(String, String)>,
) -> Result<Json<Vec<WebhookDelivery>>, ApiError> {
    authorize(&state, &headers)?;
    let record = existing_webhook(&state, &id, &webhook_id).await?;
    let list = state
        .webhooks()
        .backend
        .deliveries(&record.id, MAX_LISTED_DELIVERIES)
        .await
        .map_err(storage_error)?;
    Ok(Json(list.iter().map(|d| d.to_api()).collect()))
}

/// `POST /v1/admin/projects/{id}/webhooks/{webhook_id}/deliveries/{delivery_id}/retry`.
#[utoipa::path(post, path = "/v1/admin/projects/{id}/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(("id" = ProjectId, Path, description = "Project id"), ("webhook_id" = String, Path, description = "Webhook id"), ("delivery_id" = String, Path, description = "Delivery id (`msg_…`)")),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Queued again, due now, with a new series of attempts (a pending one is just made due now)", body = WebhookDelivery),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`, `webhook_not_found`, `delivery_not_found` (also for malformed ids)", body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, webhook_id, delivery_id)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<WebhookDelivery>), ApiError> {
    authorize(&state, &headers)?;
    let record = existing_webhook(&state, &id, &webhook_id).await?;
    let not_found = || {
        ApiError::new(
            ErrorCode::DeliveryNotFound,
            format!(
                "no delivery {:?} of webhook {}",
                delivery_id.chars().take(80).collect::<String>(),
                record.id
            ),
        )
    };
    let did = DeliveryId::parse(&delivery_id).ok_or_else(not_found)?;
    let mut delivery = state
        .webhooks()
        .backend
        .delivery(&record.id, &did)
        .await
        .map_err(storage_error)?
        .ok_or_else(not_found)?;
    delivery.status = DeliveryStatus::Pending;
    delivery.series_attempts = 0;
    delivery.due_ms = Some(now_ms());
    state
        .webhooks()
        .backend
        .record_attempt(&delivery)
        .await
        .map_err(storage_error)?;
    state.webhooks().wake.notify_one();
    tracing::info!(webhook_id = %record.id, delivery_id = %did, "webhook delivery queued again by hand");
    Ok((StatusCode::ACCEPTED, Json(delivery.to_api())))
}
