//! The OpenAPI 3.1 document of the REST API, generated from the handlers' annotations and the
//! protocol crate's schemas, served at `GET /openapi.json`.

use herald_protocol::api::{
    ApiKeyEvent, ApiKeyEventType, ApiKeyInfo, CreateApiKeyRequest, CreateProjectRequest,
    CreatedApiKey, Project, PublishResponse, RevocationAccepted, SignRequest, SignResponse,
};
use herald_protocol::{
    ApiKeyId, ApiKeyScope, ChannelName, ErrorBody, ErrorCode, ErrorDetail, ProjectId,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Body of `POST /v1/publishers/events/publish` (the payload is any JSON).
#[derive(ToSchema)]
#[schema(as = PublishRequest)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct PublishBody {
    /// Channel to publish to.
    channel_name: ChannelName,
    /// Any JSON, delivered byte for byte.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
}

/// Body of `PATCH /v1/admin/projects/{id}/api-keys/{key_id}`.
#[derive(ToSchema)]
#[schema(as = UpdateApiKeyRequest)]
#[allow(dead_code)]
pub struct UpdateApiKeyBody {
    /// New display name.
    name: Option<String>,
    /// New scopes (non-empty).
    scopes: Option<Vec<ApiKeyScope>>,
}

/// Health answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct HealthStatus {
    /// `ok`, `ready` or `not_ready`.
    status: String,
    /// `/readyz` only: each background task's state (`running`, `restarting`, `done`,
    /// `stopped`) by task name.
    #[schema(required = false)]
    tasks: Option<std::collections::BTreeMap<String, String>>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("API key `hk_…` (also accepted as `X-API-Key`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator's admin token"))
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Publisher and admin REST API of the Herald gateway. The Socket.IO contract is in docs/PROTOCOL.md."),
    paths(
        crate::rest::publisher::publish,
        crate::rest::publisher::sign,
        crate::rest::admin::create_project,
        crate::rest::admin::list_projects,
        crate::rest::admin::get_project,
        crate::rest::admin::delete_project,
        crate::rest::admin::rotate_secret,
        crate::rest::admin::create_api_key,
        crate::rest::admin::list_api_keys,
        crate::rest::admin::update_api_key,
        crate::rest::admin::delete_api_key,
        crate::rest::tasks::api_key_event,
        crate::app::livez,
        crate::app::healthz,
        crate::app::readyz,
    ),
    components(schemas(
        PublishBody, PublishResponse, SignRequest, SignResponse, CreateProjectRequest, Project,
        CreateApiKeyRequest, ApiKeyInfo, CreatedApiKey, UpdateApiKeyBody, ApiKeyScope, ApiKeyId,
        ProjectId, ChannelName, ErrorBody, ErrorDetail, ErrorCode, ApiKeyEvent, ApiKeyEventType,
        RevocationAccepted, HealthStatus,
    )),
    modifiers(&Security),
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves is documented and every documented route is served:
    /// compares the document with the `.route(...)` calls of `app.rs`.
    #[test]
    fn every_route_is_documented() {
        let doc = ApiDoc::openapi();
        let documented: std::collections::BTreeSet<String> =
            doc.paths.paths.keys().cloned().collect();
        let source = include_str!("app.rs");
        let routed: std::collections::BTreeSet<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .filter(|p| p != "/openapi.json")
            .collect();
        assert!(routed.len() >= 10, "{routed:?}");
        assert_eq!(documented, routed);
        let json = serde_json::to_value(&doc).expect("serializes");
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
    }
}
