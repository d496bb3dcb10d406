//! The OpenAPI 3.1 document of the REST API, generated from the handlers' annotations and the
//! protocol crate's schemas, served at `GET /openapi.json`.

use herald_protocol::api::{
    ApiKeyEvent, ApiKeyEventType, ApiKeyInfo, CreateApiKeyRequest, CreateProjectRequest,
    CreatedApiKey, Project, PublishResponse, RevocationAccepted, SignRequest, SignResponse,
};
use herald_protocol::{
    ApiKeyId, ApiKeyScope, ChannelName, ErrorBody, ErrorCode, ErrorDetail, ProjectId,
};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// Body of `POST /v1/publishers/events/publish` (the payload is any JSON).
#[derive(ToSchema)]
#[schema(as = PublishRequest)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct PublishBody {
    /// Channel to publish to.
    channel_name: ChannelName,
    /// Any JSON value (object, array, string, number, boolean or null), delivered byte for
    /// byte; at most `--max-payload-bytes` of JSON (413 beyond).
    #[schema(schema_with = any_json)]
    payload: serde_json::Value,
}

fn any_json() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .description(Some("Any JSON value, delivered byte for byte."))
        .build()
        .into()
}

/// Body of `PATCH /v1/admin/projects/{id}/api-keys/{key_id}`: a JSON object; fields left out
/// keep their value (`null` is not a value).
#[derive(ToSchema)]
#[schema(as = UpdateApiKeyRequest)]
#[allow(dead_code)]
pub struct UpdateApiKeyBody {
    /// New display name.
    #[schema(schema_with = herald_protocol::openapi::display_name)]
    name: Option<String>,
    /// New scopes (at least one).
    #[schema(schema_with = herald_protocol::openapi::scopes)]
    scopes: Option<Vec<ApiKeyScope>>,
}

/// Body of `PATCH /v1/admin/projects/{id}`: a JSON object; fields left out keep their value.
#[derive(ToSchema)]
#[schema(as = UpdateProjectRequest)]
#[allow(dead_code)]
pub struct UpdateProjectBody {
    /// New history retention; fields left out keep their value.
    #[schema(required = false)]
    history: UpdateHistoryBody,
}

/// The `history` of [`UpdateProjectBody`].
#[derive(ToSchema)]
#[schema(as = UpdateHistoryRequest)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct UpdateHistoryBody {
    /// Events kept per channel (0: history off).
    #[schema(required = false, minimum = 0, maximum = 10000)]
    size: u32,
    /// Seconds an event is kept.
    #[schema(required = false, minimum = 1, maximum = 86400)]
    ttl_secs: u32,
}

/// `GET /`: the index of a running server.
#[derive(ToSchema, serde::Serialize)]
pub struct Index {
    /// `herald`.
    name: &'static str,
    /// The server's version.
    version: &'static str,
    /// One line on what Herald is.
    description: &'static str,
    /// Entry points on this listener.
    links: IndexLinks,
    /// Where Prometheus metrics are, when `--metrics-bind` is set (on that listener, not this
    /// one); `null` otherwise.
    metrics: Option<&'static str>,
    /// Where the documentation is.
    docs: &'static str,
}

/// The entry points `GET /` lists (paths on this listener).
#[derive(ToSchema, serde::Serialize)]
pub struct IndexLinks {
    /// The live demo page.
    demo: &'static str,
    /// This document (OpenAPI 3.1).
    openapi: &'static str,
    /// Liveness.
    livez: &'static str,
    /// Liveness (older name).
    healthz: &'static str,
    /// Readiness.
    readyz: &'static str,
    /// The Socket.IO endpoint clients connect to.
    socketio: &'static str,
}

impl Index {
    /// The index; `metrics_enabled` when a `--metrics-bind` listener runs.
    pub fn new(metrics_enabled: bool) -> Self {
        Self {
            name: "herald",
            version: env!("CARGO_PKG_VERSION"),
            description: "Real-time channel pub/sub gateway: publish over REST, receive over Socket.IO.",
            links: IndexLinks {
                demo: "/demo",
                openapi: "/openapi.json",
                livez: "/livez",
                healthz: "/healthz",
                readyz: "/readyz",
                socketio: "/socket.io/",
            },
            metrics: metrics_enabled.then_some("/metrics on the --metrics-bind listener"),
            docs: "README.md and docs/PROTOCOL.md in the source tree; `herald --help` for the flags",
        }
    }
}

/// Health answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct HealthStatus {
    /// `ok`, `ready` or `not_ready`.
    #[schema(schema_with = health_status)]
    status: String,
    /// `/readyz` only: each background task's state (`running`, `restarting`, `done`,
    /// `stopped`) by task name.
    #[schema(required = false)]
    tasks: Option<std::collections::BTreeMap<String, String>>,
}

fn health_status() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["ok", "ready", "not_ready"]))
        .build()
        .into()
}

/// The security schemes, and the answers every route shares (added where a route's own
/// annotation does not list them):
///
/// * 403 `origin_not_allowed` on every route: the Origin check runs before routing;
/// * 408 `request_timeout` and 413 `payload_too_large` on every route that takes a body: the
///   body read timeout and the body limit;
/// * 429 `too_many_connections` and 503 `at_capacity` on every route but health: the connection
///   caps (`crate::listen`), over which only health is answered as usual;
/// * 500 `internal` and 503 `unavailable` on every route that reads the store (all but health
///   and `meta`, the index).
struct Common;

const ORIGIN_REFUSED: &str =
    "`origin_not_allowed`: the request's `Origin` is not in `--allowed-origins`";

impl Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("API key `hk_…` as `Authorization: Bearer hk_…`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key_header",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                crate::rest::publisher::API_KEY_HEADER,
                "API key `hk_…` in `X-API-Key` (when there is no `Authorization` bearer)",
            ))),
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
        let error = || {
            ContentBuilder::new()
                .schema(Some(ErrorBody::schema_ref()))
                .build()
        };
        let answer = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content("application/json", error())
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for op in operations(item) {
                let tagged =
                    |tag: &str| op.tags.as_ref().is_some_and(|t| t.iter().any(|t| t == tag));
                let health = tagged("health");
                let meta = tagged("meta");
                let responses = &mut op.responses.responses;
                match responses.get_mut("403") {
                    Some(RefOr::T(own)) => {
                        own.description = format!("{}; or {ORIGIN_REFUSED}", own.description);
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        responses.insert("403".into(), RefOr::T(answer(ORIGIN_REFUSED)));
                    }
                }
                if op.request_body.is_some() {
                    responses.entry("408".into()).or_insert_with(|| {
                        RefOr::T(answer(
                            "`request_timeout`: the body took longer than `--body-read-timeout-secs`",
                        ))
                    });
                    responses.entry("413".into()).or_insert_with(|| {
                        RefOr::T(answer(
                            "`payload_too_large`: the body is over the limit (`--max-payload-bytes` + 1 KiB)",
                        ))
                    });
                }
                if !health {
                    // Over a connection cap only health is answered as usual.
                    responses.entry("429".into()).or_insert_with(|| {
                        RefOr::T(answer(
                            "`too_many_connections`: this client address holds `--max-connections-per-ip` connections",
                        ))
                    });
                    let at_capacity =
                        "`at_capacity`: the server holds `--max-connections` connections";
                    if meta {
                        // Reads no store: only the connection cap's 503.
                        responses
                            .entry("503".into())
                            .or_insert_with(|| RefOr::T(answer(at_capacity)));
                        continue;
                    }
                    responses.entry("500".into()).or_insert_with(|| {
                        RefOr::T(answer("`internal`: a server fault, never a client mistake"))
                    });
                    match responses.get_mut("503") {
                        Some(RefOr::T(own)) => {
                            own.description = format!("{}; or {at_capacity}", own.description);
                        }
                        Some(RefOr::Ref(_)) => {}
                        None => {
                            responses.insert(
                                "503".into(),
                                RefOr::T(answer(&format!(
                                    "`unavailable`: a backend (Redis) is unreachable, retry later; or {at_capacity}"
                                ))),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

trait SchemaRef {
    fn schema_ref() -> RefOr<Schema>;
}

impl<T: ToSchema> SchemaRef for T {
    fn schema_ref() -> RefOr<Schema> {
        RefOr::Ref(Ref::from_schema_name(T::name()))
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Publisher and admin REST API of the Herald gateway. The Socket.IO contract is in docs/PROTOCOL.md."),
    paths(
        crate::rest::publisher::publish,
        crate::rest::publisher::sign,
        crate::rest::publisher::history,
        crate::rest::publisher::presence,
        crate::rest::publisher::presence_count,
        crate::rest::admin::create_project,
        crate::rest::admin::list_projects,
        crate::rest::admin::get_project,
        crate::rest::admin::update_project,
        crate::rest::admin::delete_project,
        crate::rest::admin::rotate_secret,
        crate::rest::admin::create_api_key,
        crate::rest::admin::list_api_keys,
        crate::rest::admin::update_api_key,
        crate::rest::admin::delete_api_key,
        crate::rest::webhooks::create,
        crate::rest::webhooks::list,
        crate::rest::webhooks::get,
        crate::rest::webhooks::update,
        crate::rest::webhooks::delete,
        crate::rest::webhooks::rotate_secret,
        crate::rest::webhooks::deliveries,
        crate::rest::webhooks::retry,
        crate::rest::tasks::api_key_event,
        crate::app::livez,
        crate::app::healthz,
        crate::app::readyz,
        crate::app::index,
    ),
    components(schemas(
        PublishBody, PublishResponse, SignRequest, SignResponse, CreateProjectRequest, Project,
        CreateApiKeyRequest, ApiKeyInfo, CreatedApiKey, UpdateApiKeyBody, ApiKeyScope, ApiKeyId,
        ProjectId, ChannelName, ErrorBody, ErrorDetail, ErrorCode, ApiKeyEvent, ApiKeyEventType,
        RevocationAccepted, HealthStatus, Index, IndexLinks, UpdateProjectBody, UpdateHistoryBody,
        herald_protocol::history::HistoryPage, herald_protocol::history::HistoryEvent,
        herald_protocol::presence::PresenceMembers, herald_protocol::presence::PresenceCount,
        herald_protocol::presence::Member, herald_protocol::openapi::PresenceChannelName,
        herald_protocol::HistorySettings, herald_protocol::ChannelOffset, herald_protocol::Epoch,
        herald_protocol::webhook::CreateWebhookRequest, herald_protocol::webhook::UpdateWebhookRequest,
        herald_protocol::webhook::Webhook, herald_protocol::webhook::CreatedWebhook,
        herald_protocol::webhook::WebhookDelivery, herald_protocol::webhook::DeliveryAttempt,
        herald_protocol::webhook::DeliveryStatus, herald_protocol::webhook::WebhookEventType,
        herald_protocol::webhook::WebhookPayload,
    )),
    modifiers(&Common),
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

    /// Every operation documents the answers every route can give: 403 (the Origin check),
    /// and, but for health, 401, 429, 500 and 503; every operation with a body 400, 408 and 413;
    /// every operation with a path parameter 400 or 404 for a malformed one.
    #[test]
    fn every_operation_documents_what_every_route_can_answer() {
        let json = serde_json::to_value(ApiDoc::openapi()).expect("serializes");
        let mut checked = 0;
        for (path, ops) in json["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("path item") {
                let statuses: Vec<&str> = op["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .map(String::as_str)
                    .collect();
                let health = op["tags"][0] == "health";
                let meta = op["tags"][0] == "meta";
                let mut expected = vec!["403"];
                if meta {
                    expected.extend(["429", "503"]);
                } else if !health {
                    expected.extend(["401", "429", "500", "503"]);
                }
                if op.get("requestBody").is_some() {
                    expected.extend(["400", "408", "413"]);
                }
                if path.contains("{id}") {
                    expected.extend(["400", "404"]);
                }
                for status in expected {
                    assert!(
                        statuses.contains(&status),
                        "{method} {path} does not document {status}: {statuses:?}"
                    );
                }
                for (status, answer) in op["responses"].as_object().expect("responses") {
                    if !status.starts_with('2') && !health {
                        assert_eq!(
                            answer["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 28);
    }

    /// The history endpoint's query bounds are the protocol's (`since` up to
    /// `MAX_OFFSET`, `limit` 1 to `MAX_HISTORY_PAGE`).
    #[test]
    fn history_query_bounds_are_the_protocol_constants() {
        use herald_protocol::history::{MAX_HISTORY_PAGE, MAX_OFFSET};
        let json = serde_json::to_value(ApiDoc::openapi()).expect("serializes");
        let params =
            json["paths"]["/v1/publishers/channels/{channelName}/history"]["get"]["parameters"]
                .as_array()
                .expect("parameters")
                .clone();
        let schema = |name: &str| {
            params
                .iter()
                .find(|p| p["name"] == name)
                .map(|p| p["schema"].clone())
                .unwrap_or_else(|| panic!("no parameter {name}"))
        };
        assert_eq!(schema("since")["maximum"], MAX_OFFSET);
        assert_eq!(schema("since")["minimum"], 0);
        assert_eq!(schema("limit")["maximum"], MAX_HISTORY_PAGE);
        assert_eq!(schema("limit")["minimum"], 1);
    }

    /// The schemas carry the protocol's rules, from the protocol's own constants.
    #[test]
    fn schemas_carry_the_protocol_rules() {
        use herald_protocol::names::{
            MAX_CHANNEL_NAME_BYTES, MAX_PROJECT_ID_BYTES, channel_name_pattern, project_id_pattern,
            token_channel_name_pattern,
        };
        let json = serde_json::to_value(ApiDoc::openapi()).expect("serializes");
        let schemas = &json["components"]["schemas"];
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(schemas["ErrorCode"]["enum"], serde_json::json!(codes));
        assert_eq!(schemas["ChannelName"]["pattern"], channel_name_pattern());
        assert_eq!(schemas["ChannelName"]["maxLength"], MAX_CHANNEL_NAME_BYTES);
        assert_eq!(schemas["ProjectId"]["pattern"], project_id_pattern());
        assert_eq!(schemas["ProjectId"]["maxLength"], MAX_PROJECT_ID_BYTES);
        // The sign body is one of a private and a presence shape; together their channel
        // patterns accept exactly the names a token is for.
        let shapes = schemas["SignRequest"]["oneOf"]
            .as_array()
            .expect("SignRequest is a oneOf");
        let patterns: Vec<String> = shapes
            .iter()
            .map(|s| {
                let p = s["properties"]["channelName"]["pattern"]
                    .as_str()
                    .expect("pattern");
                p.trim_start_matches('^').trim_end_matches('$').to_owned()
            })
            .collect();
        assert_eq!(
            format!("^(?:{})$", patterns.join("|")),
            token_channel_name_pattern()
        );
        assert_eq!(
            shapes[1]["required"],
            serde_json::json!(["channelName", "userId"])
        );
        for body in ["CreateApiKeyRequest", "UpdateApiKeyRequest"] {
            assert_eq!(
                schemas[body]["properties"]["scopes"]["minItems"], 1,
                "{body}"
            );
            assert_eq!(
                schemas[body]["properties"]["name"]["maxLength"],
                herald_protocol::limits::MAX_DISPLAY_NAME_CHARS,
                "{body}"
            );
        }
        // PATCH takes leaving a field out, not `null`.
        for field in ["name", "scopes"] {
            let schema = &schemas["UpdateApiKeyRequest"]["properties"][field];
            assert!(
                !schema.to_string().contains("null"),
                "{field} is not nullable: {schema}"
            );
        }
        assert!(schemas["UpdateApiKeyRequest"].get("required").is_none());
        for field in ["size", "ttlSecs"] {
            let schema = &schemas["UpdateHistoryRequest"]["properties"][field];
            assert!(
                !schema.to_string().contains("null"),
                "{field} is not nullable: {schema}"
            );
        }
        assert!(schemas["UpdateHistoryRequest"].get("required").is_none());
        assert!(schemas["UpdateProjectRequest"].get("required").is_none());
        assert!(
            !schemas["UpdateProjectRequest"]["properties"]["history"]
                .to_string()
                .contains("null")
        );
        // History bounds: schema attributes take literals, so each is held to its constant.
        use herald_protocol::history::{MAX_HISTORY_SIZE, MAX_HISTORY_TTL_SECS};
        for body in ["UpdateHistoryRequest", "HistorySettings"] {
            let props = &schemas[body]["properties"];
            assert_eq!(props["size"]["maximum"], MAX_HISTORY_SIZE, "{body}");
            assert_eq!(props["size"]["minimum"], 0, "{body}");
            assert_eq!(props["ttlSecs"]["maximum"], MAX_HISTORY_TTL_SECS, "{body}");
            assert_eq!(props["ttlSecs"]["minimum"], 1, "{body}");
        }
        // The payload is any JSON, not only an object.
        assert!(
            schemas["PublishRequest"]["properties"]["payload"]
                .get("type")
                .is_none()
        );
    }
}
