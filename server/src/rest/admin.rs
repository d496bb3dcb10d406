//! Operator endpoints under `/v1/admin`, authenticated by the admin token.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use herald_protocol::ErrorBody;
use herald_protocol::api::{
    ApiKeyInfo, CreateApiKeyRequest, CreateProjectRequest, CreatedApiKey, Project,
};
use herald_protocol::api::{parse_display_name, parse_rfc3339};
use herald_protocol::{ApiKeyId, ApiKeyScope, ErrorCode, HistorySettings, ProjectId, RoomName};
use serde_json::Value;
use time::OffsetDateTime;

use super::{ApiError, bearer, body_bytes, json_value};
use crate::app::AppState;
use crate::channel_token::store_refusal;
use crate::keys::generate_api_key;
use crate::revocation::RevocationReason;
use crate::store::{ApiKeyRecord, ProjectRecord, SigningSecret, StoreError};

/// Checks the admin token.
pub fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => ErrorCode::MissingAdminToken.as_str())
            .increment(1);
        ApiError::new(
            ErrorCode::MissingAdminToken,
            "send the admin token as Authorization: Bearer <token>",
        )
    })?;
    if state.admin_token().matches(token) {
        Ok(())
    } else {
        metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => ErrorCode::InvalidAdminToken.as_str())
            .increment(1);
        Err(ApiError::new(
            ErrorCode::InvalidAdminToken,
            "admin token is not valid",
        ))
    }
}

pub(crate) fn project_id(raw: &str) -> Result<ProjectId, ApiError> {
    Ok(ProjectId::parse(raw).map_err(herald_protocol::Refusal::from)?)
}

fn display_name(v: &Value) -> Result<String, ApiError> {
    let raw = v.get("name").and_then(Value::as_str).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidBody,
            "\"name\" must be a non-empty string",
        )
    })?;
    Ok(parse_display_name(raw)?)
}

/// The body as a JSON object (every admin body is one).
pub(crate) fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let v = json_value(&body_bytes(body)?)?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidBody,
            "the body must be a JSON object",
        ))
    }
}

fn generated_project_id() -> ProjectId {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let id: String = rand::random::<[u8; 12]>()
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    ProjectId::parse(&id).unwrap_or_else(|_| unreachable!("alphabet is valid"))
}

pub(crate) async fn existing_project(
    state: &AppState,
    id: &ProjectId,
) -> Result<ProjectRecord, ApiError> {
    state
        .store()
        .project(id)
        .await
        .map_err(store_refusal)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ProjectNotFound,
                format!("project {id} does not exist"),
            )
        })
}

/// `POST /v1/admin/projects` `{ "id"?, "name" }`.
#[utoipa::path(post, path = "/v1/admin/projects", tag = "admin", request_body = CreateProjectRequest, security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created", body = Project),
        (status = 400, description = "`invalid_body`, `invalid_project_id`: not a JSON object, no valid `name`, an `id` that breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 409, description = "`project_exists`: the id is taken", body = ErrorBody)))]
pub async fn create_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    authorize(&state, &headers)?;
    let v = json_object(body)?;
    let name = display_name(&v)?;
    let id = match v.get("id") {
        None | Some(Value::Null) => generated_project_id(),
        Some(Value::String(s)) => project_id(s)?,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "\"id\" must be a string",
            ));
        }
    };
    let record = ProjectRecord {
        id,
        name,
        created_at: now_seconds(),
        signing_secret: SigningSecret::generate(),
        history: HistorySettings::default(),
    };
    match state.store().create_project(&record).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            return Err(ApiError::new(
                ErrorCode::ProjectExists,
                format!("project {} exists already", record.id),
            ));
        }
        Err(e) => return Err(store_refusal(e).into()),
    }
    tracing::info!(project_id = %record.id, "project created");
    Ok((StatusCode::CREATED, Json(record.to_api())))
}

/// `GET /v1/admin/projects`.
#[utoipa::path(get, path = "/v1/admin/projects", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "All projects", body = [Project]),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody)))]
pub async fn list_projects(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Project>>, ApiError> {
    authorize(&state, &headers)?;
    let projects = state.store().projects().await.map_err(store_refusal)?;
    Ok(Json(projects.iter().map(ProjectRecord::to_api).collect()))
}

/// `GET /v1/admin/projects/{id}`.
#[utoipa::path(get, path = "/v1/admin/projects/{id}", tag = "admin", params(("id" = ProjectId, Path, description = "Project id")), security(("admin_token" = [])),
    responses(
        (status = 200, description = "The project", body = Project),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`", body = ErrorBody)))]
pub async fn get_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Project>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(
        existing_project(&state, &project_id(&id)?).await?.to_api(),
    ))
}

/// `PATCH /v1/admin/projects/{id}` `{ "history": { "size"?, "ttlSecs"? } }`: changes the
/// project's history retention. Every instance applies it within a second; retained events
/// beyond the new bounds are no longer served.
#[utoipa::path(patch, path = "/v1/admin/projects/{id}", tag = "admin", params(("id" = ProjectId, Path, description = "Project id")), request_body = crate::openapi::UpdateProjectBody, security(("admin_token" = [])),
    responses(
        (status = 200, description = "The updated project", body = Project),
        (status = 400, description = "`invalid_project_id`, `invalid_body`: a bad project id, not a JSON object, a `history` out of its limits", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`", body = ErrorBody)))]
pub async fn update_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Project>, ApiError> {
    authorize(&state, &headers)?;
    let id = project_id(&id)?;
    let v = json_object(body)?;
    let mut record = existing_project(&state, &id).await?;
    if let Some(h) = v.get("history") {
        record.history = record.history.patch(h)?;
        match state.store().set_history(&id, record.history).await {
            Ok(()) => {}
            Err(StoreError::ProjectNotFound) => {
                return Err(ApiError::new(
                    ErrorCode::ProjectNotFound,
                    format!("project {id} does not exist"),
                ));
            }
            Err(e) => return Err(store_refusal(e).into()),
        }
        state.histories().forget(&id);
        tracing::info!(project_id = %id, size = record.history.size, ttl_secs = record.history.ttl_secs, "project history settings changed");
    }
    Ok(Json(record.to_api()))
}

/// `DELETE /v1/admin/projects/{id}`: deletes the project and its keys, disconnects its sockets.
#[utoipa::path(delete, path = "/v1/admin/projects/{id}", tag = "admin", params(("id" = ProjectId, Path, description = "Project id")), security(("admin_token" = [])),
    responses(
        (status = 204, description = "Deleted with its keys; its sockets disconnected"),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`", body = ErrorBody)))]
pub async fn delete_project(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    let id = project_id(&id)?;
    let keys = state
        .store()
        .delete_project(&id)
        .await
        .map_err(store_refusal)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ProjectNotFound,
                format!("project {id} does not exist"),
            )
        })?;
    if let Err(e) = state.webhooks().backend.delete_project_webhooks(&id).await {
        tracing::warn!(project_id = %id, error = %e, "deleting a deleted project's webhooks failed");
    }
    state.webhooks().forget(&id);
    if let Err(e) = state.fanout().disconnect(RoomName::project(&id)).await {
        tracing::warn!(project_id = %id, error = %e, "disconnecting a deleted project's sockets failed");
    }
    tracing::info!(project_id = %id, deleted_keys = keys.len(), "project deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/admin/projects/{id}/rotate-secret`: new signing secret; old tokens stop verifying
/// and the sockets that joined private channels with them leave those channels.
#[utoipa::path(post, path = "/v1/admin/projects/{id}/rotate-secret", tag = "admin", params(("id" = ProjectId, Path, description = "Project id")), security(("admin_token" = [])),
    responses(
        (status = 204, description = "New signing secret; older tokens stop verifying and the sockets that joined private channels with them are removed from those channels"),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`", body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    let id = project_id(&id)?;
    match state
        .store()
        .rotate_secret(&id, SigningSecret::generate())
        .await
    {
        Ok(()) => {
            // The old secret was what a leak exposed: sockets that joined private channels
            // with its tokens leave them now, on every instance.
            let removed = state.revocation().secret_rotated(&id).await;
            tracing::info!(project_id = %id, local_sockets_removed = removed, "signing secret rotated");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(StoreError::ProjectNotFound) => Err(ApiError::new(
            ErrorCode::ProjectNotFound,
            format!("project {id} does not exist"),
        )),
        Err(e) => Err(store_refusal(e).into()),
    }
}

/// `POST /v1/admin/projects/{id}/api-keys` `{ "name", "scopes", "expiresAt"? }`.
#[utoipa::path(post, path = "/v1/admin/projects/{id}/api-keys", tag = "admin", params(("id" = ProjectId, Path, description = "Project id")),
    request_body = CreateApiKeyRequest, security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created; `key` is shown this once", body = CreatedApiKey),
        (status = 400, description = "`invalid_project_id`, `invalid_body`, `invalid_expiry`: a bad project id, not a JSON object, no valid `name` or `scopes`, an `expiresAt` that is not an RFC 3339 time or not in the future", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`", body = ErrorBody)))]
pub async fn create_api_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    authorize(&state, &headers)?;
    let project = project_id(&id)?;
    let v = json_object(body)?;
    let name = display_name(&v)?;
    // Without `scopes`, a key may do everything a publisher does.
    let scopes = match v.get("scopes") {
        None => ApiKeyScope::ALL.to_vec(),
        Some(s) => parse_scopes(s)?,
    };
    let now = now_seconds();
    let expires_at = match v.get("expiresAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = parse_rfc3339(s).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidBody,
                    "\"expiresAt\" must be an RFC 3339 time",
                )
            })?;
            if t <= OffsetDateTime::now_utc() {
                return Err(ApiError::new(
                    ErrorCode::InvalidExpiry,
                    "\"expiresAt\" must be in the future",
                ));
            }
            Some(t)
        }
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "\"expiresAt\" must be an RFC 3339 string",
            ));
        }
    };
    let (token, secret_hash) = generate_api_key();
    let record = ApiKeyRecord {
        id: token.id().clone(),
        project_id: project.clone(),
        name,
        scopes,
        created_at: now,
        expires_at,
        secret_hash,
    };
    match state.store().create_api_key(&record).await {
        Ok(()) => {}
        Err(StoreError::ProjectNotFound) => {
            return Err(ApiError::new(
                ErrorCode::ProjectNotFound,
                format!("project {project} does not exist"),
            ));
        }
        Err(e) => return Err(store_refusal(e).into()),
    }
    tracing::info!(project_id = %project, api_key_id = %record.id, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            info: record.to_api(),
            key: token.expose(),
        }),
    ))
}

/// `GET /v1/admin/projects/{id}/api-keys`.
#[utoipa::path(get, path = "/v1/admin/projects/{id}/api-keys", tag = "admin", params(("id" = ProjectId, Path, description = "Project id")), security(("admin_token" = [])),
    responses(
        (status = 200, description = "Keys without secrets", body = [ApiKeyInfo]),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`", body = ErrorBody)))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<ApiKeyInfo>>, ApiError> {
    authorize(&state, &headers)?;
    let project = project_id(&id)?;
    existing_project(&state, &project).await?;
    let keys = state
        .store()
        .api_keys(&project)
        .await
        .map_err(store_refusal)?;
    Ok(Json(keys.iter().map(ApiKeyRecord::to_api).collect()))
}

/// `PATCH /v1/admin/projects/{id}/api-keys/{keyId}` `{ "name"?, "scopes"? }`: rename a key or
/// change its scopes. Narrowing takes effect at once: a key that loses `sign_token` no longer
/// opens private channels with the tokens it signed.
#[utoipa::path(patch, path = "/v1/admin/projects/{id}/api-keys/{key_id}", tag = "admin", params(("id" = ProjectId, Path, description = "Project id"), ("key_id" = ApiKeyId, Path, description = "API key id")),
    request_body = crate::openapi::UpdateApiKeyBody, security(("admin_token" = [])),
    responses(
        (status = 200, description = "Updated", body = ApiKeyInfo),
        (status = 400, description = "`invalid_project_id`, `invalid_body`: a bad project id, not a JSON object, an invalid `name` or `scopes`", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`, `api_key_not_found` (also for a malformed key id)", body = ErrorBody)))]
pub async fn update_api_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, key_id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApiKeyInfo>, ApiError> {
    authorize(&state, &headers)?;
    let project = project_id(&id)?;
    let not_found = || {
        ApiError::new(
            ErrorCode::ApiKeyNotFound,
            format!("no API key {key_id} in project {project}"),
        )
    };
    let parsed_id = ApiKeyId::parse(&key_id).map_err(|_| not_found())?;
    let v = json_object(body)?;
    let mut record = state
        .store()
        .api_key(&parsed_id)
        .await
        .map_err(store_refusal)?
        .filter(|k| k.project_id == project)
        .ok_or_else(not_found)?;
    if v.get("name").is_some() {
        record.name = display_name(&v)?;
    }
    if let Some(scopes) = v.get("scopes") {
        record.scopes = parse_scopes(scopes)?;
    }
    if !state
        .store()
        .update_api_key(&record)
        .await
        .map_err(store_refusal)?
    {
        return Err(not_found());
    }
    tracing::info!(project_id = %project, api_key_id = %record.id, scopes = ?record.scopes, "API key updated");
    Ok(Json(record.to_api()))
}

fn parse_scopes(v: &Value) -> Result<Vec<ApiKeyScope>, ApiError> {
    let mut scopes: Vec<ApiKeyScope> = serde_json::from_value(v.clone()).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidBody,
            "\"scopes\" must be a list of \"publish_event\", \"sign_token\" and/or \"read_history\"",
        )
    })?;
    if scopes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "\"scopes\" must not be empty",
        ));
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// `DELETE /v1/admin/projects/{id}/api-keys/{keyId}`.
#[utoipa::path(delete, path = "/v1/admin/projects/{id}/api-keys/{key_id}", tag = "admin", params(("id" = ProjectId, Path, description = "Project id"), ("key_id" = ApiKeyId, Path, description = "API key id")), security(("admin_token" = [])),
    responses(
        (status = 204, description = "Deleted; its sockets leave their private channels"),
        (status = 400, description = "`invalid_project_id`: the project id in the path breaks the rule", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody),
        (status = 404, description = "`project_not_found`, `api_key_not_found` (also for a malformed key id)", body = ErrorBody)))]
pub async fn delete_api_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers)?;
    let project = project_id(&id)?;
    let not_found = || {
        ApiError::new(
            ErrorCode::ApiKeyNotFound,
            format!("no API key {key_id} in project {project}"),
        )
    };
    let key_id = ApiKeyId::parse(&key_id).map_err(|_| not_found())?;
    let deleted = state
        .store()
        .delete_api_key(&project, &key_id)
        .await
        .map_err(store_refusal)?;
    if deleted.is_none() {
        return Err(not_found());
    }
    tracing::info!(project_id = %project, api_key_id = %key_id, "API key deleted");
    if let Err(e) = state
        .revocation()
        .trigger(&project, &key_id, RevocationReason::Deleted, false)
        .await
    {
        // The key is gone, so no new listen passes; the reconciler removes its sockets.
        tracing::warn!(api_key_id = %key_id, error = %e, "revocation job not queued; the reconciler will remove the key's sockets");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Now, truncated to whole seconds so stored and listed times compare equal.
pub(crate) fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}
