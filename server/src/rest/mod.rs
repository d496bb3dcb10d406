//! The REST API: publisher endpoints ([`publisher`]), operator endpoints ([`admin`],
//! [`webhooks`]) and the
//! plumbing they share: JSON error responses, body limits, credential headers.

pub mod admin;
pub mod publisher;
pub mod tasks;
pub mod webhooks;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_protocol::{ErrorBody, ErrorCode, Refusal};

/// An error answered as `{ "error": { "code", "message" } }` with the code's HTTP status.
#[derive(Debug)]
pub struct ApiError(pub Refusal);

impl ApiError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Refusal::new(code, message))
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        Self(r)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::new(self.0.code, self.0.message))).into_response()
    }
}

/// Unwraps a body extracted under the router's body limit, mapping the limit to 413 and the
/// body read timeout ([`crate::listen::timeouts::BodyTimeout`]) to 408.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if crate::listen::timeouts::BodyTimeout::is_in(&rejection) {
            ApiError::new(
                ErrorCode::RequestTimeout,
                "the request body did not arrive within the body read timeout",
            )
        } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body is larger than the configured limit",
            )
        } else {
            ApiError::new(ErrorCode::InvalidBody, rejection.body_text())
        }
    })
}

/// The bearer token of `Authorization: Bearer <token>`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Parses a JSON body into `serde_json::Value`, answering `invalid_body` on failure.
pub fn json_value(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidBody, format!("invalid JSON: {e}")))
}

/// 404 for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// 405 for known routes with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}
