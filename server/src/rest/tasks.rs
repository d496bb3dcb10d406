//! `POST /v1/tasks/api-key-events`: an external access service that owns keys reports a key
//! deleted or expired; Herald runs the same revocation workflow as for its own triggers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use herald_protocol::api::{ApiKeyEvent, ApiKeyEventType, RevocationAccepted};
use herald_protocol::{ErrorBody, ErrorCode};
use time::OffsetDateTime;

use super::{ApiError, admin, body_bytes};
use crate::app::AppState;
use crate::channel_token::store_refusal;
use crate::revocation::{QueueError, RevocationReason};

/// Handles a key event: `ApiKeyDeleted` deletes the key from Herald's store (if present),
/// `ApiKeyExpired` ends its validity now; both revoke it and queue the removal job.
#[utoipa::path(post, path = "/v1/tasks/api-key-events", tag = "tasks", request_body = ApiKeyEvent,
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Revocation queued", body = RevocationAccepted),
        (status = 400, description = "`invalid_body`: not the event JSON (an unknown `type`, a bad `projectId` or `apiKeyId`)", body = ErrorBody),
        (status = 401, description = "`missing_admin_token`, `invalid_admin_token`: no or wrong admin token", body = ErrorBody)))]
pub async fn api_key_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RevocationAccepted>), ApiError> {
    admin::authorize(&state, &headers)?;
    let body = body_bytes(body)?;
    let event: ApiKeyEvent = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                "expected {{ \"type\": \"ApiKeyDeleted\" | \"ApiKeyExpired\", \"projectId\", \"apiKeyId\" }}: {e}"
            ),
        )
    })?;
    let reason = match event.kind {
        ApiKeyEventType::ApiKeyDeleted => {
            state
                .store()
                .delete_api_key(&event.project_id, &event.api_key_id)
                .await
                .map_err(store_refusal)?;
            RevocationReason::Deleted
        }
        ApiKeyEventType::ApiKeyExpired => {
            if let Some(mut key) = state
                .store()
                .api_key(&event.api_key_id)
                .await
                .map_err(store_refusal)?
                .filter(|k| k.project_id == event.project_id)
            {
                let now = OffsetDateTime::now_utc();
                if !key.is_expired_at(now) {
                    key.expires_at = Some(now);
                    state
                        .store()
                        .update_api_key(&key)
                        .await
                        .map_err(store_refusal)?;
                }
            }
            RevocationReason::Expired
        }
    };
    let job = state
        .revocation()
        .trigger(&event.project_id, &event.api_key_id, reason, false)
        .await
        .map_err(|e| match e {
            QueueError::Unavailable(_) => ApiError::new(
                ErrorCode::Unavailable,
                "job queue unavailable, try again shortly",
            ),
            QueueError::Backend(_) => ApiError::new(ErrorCode::Internal, "job queue failure"),
        })?;
    tracing::info!(project_id = %event.project_id, api_key_id = %event.api_key_id, kind = ?event.kind, "external key event accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(RevocationAccepted {
            job_id: job.unwrap_or_default(),
        }),
    ))
}
