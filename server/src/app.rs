//! Wiring: shared state, the HTTP router (REST + Socket.IO + health), and the shutdown
//! sequence around the serve loop ([`crate::listen`]: caps, timeouts, graceful drain).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use herald_protocol::ErrorCode;
use socketioxide::adapter::Adapter;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{ParserConfig, SocketIo, SocketIoBuilder};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// `/demo`: the live demo page (files in `server/demo/`).
#[path = "../demo/demo.rs"]
mod demo;

use crate::channel_token::ChannelTokens;
use crate::config::ServeConfig;
use crate::direct::{DirectRooms, DirectSettings, DirectTransport};
use crate::fanout::Fanout;
use crate::gateway::{Gateway, GatewayInner};
use crate::keys::AdminToken;
use crate::rest::{self, ApiError, admin, publisher, tasks, webhooks};
use crate::revocation::{Revocation, RevocationQueue};
use crate::store::Store;
use crate::supervise::Supervisor;
use crate::tracking::ConnectionTracker;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// Contents of [`AppState`].
pub struct AppInner {
    gateway: Gateway,
    admin_token: AdminToken,
    max_payload_bytes: usize,
    health: Arc<Health>,
    revocation: Arc<Revocation>,
    webhooks: Arc<crate::webhooks::Webhooks>,
    metrics_enabled: bool,
}

/// Readiness inputs: `/readyz` is 200 only when the backends are usable and no shutdown began.
/// It also reports the state of every supervised background task ([`Health::tasks`]).
#[derive(Debug)]
pub struct Health {
    shutting_down: AtomicBool,
    backend_ready: AtomicBool,
    tasks: Supervisor,
}

impl Health {
    /// Backends start as `backend_ready` (embedded mode) or not (Redis mode, until connected).
    pub fn new(backend_ready: bool) -> Self {
        Self {
            shutting_down: AtomicBool::new(false),
            backend_ready: AtomicBool::new(backend_ready),
            tasks: Supervisor::default(),
        }
    }
    /// The supervisor of this server's background tasks.
    pub fn tasks(&self) -> &Supervisor {
        &self.tasks
    }
    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire) && self.backend_ready.load(Ordering::Acquire)
    }
    /// Whether the backends were last reported usable.
    pub fn is_backend_ready(&self) -> bool {
        self.backend_ready.load(Ordering::Acquire)
    }
    /// Marks the backends usable or not.
    pub fn set_backend_ready(&self, ready: bool) {
        self.backend_ready.store(ready, Ordering::Release);
    }
    /// Turns readiness off for good (first step of shutdown).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}

impl AppState {
    /// Assembles the state.
    pub fn new(
        config: &ServeConfig,
        gateway: Gateway,
        admin_token: AdminToken,
        health: Arc<Health>,
        revocation: Arc<Revocation>,
        webhooks: Arc<crate::webhooks::Webhooks>,
    ) -> Self {
        Self(Arc::new(AppInner {
            gateway,
            admin_token,
            max_payload_bytes: config.max_payload_bytes,
            health,
            revocation,
            webhooks,
            metrics_enabled: config.metrics_bind.is_some(),
        }))
    }
    /// The key revocation workflow.
    pub fn revocation(&self) -> &Revocation {
        &self.0.revocation
    }
    /// The webhook service (endpoints, outbox).
    pub fn webhooks(&self) -> &crate::webhooks::Webhooks {
        &self.0.webhooks
    }
    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.0.gateway.store.as_ref()
    }
    /// The connection tracker.
    pub fn tracker(&self) -> &dyn ConnectionTracker {
        self.0.gateway.tracker.as_ref()
    }
    /// Channel token signer/verifier.
    pub fn tokens(&self) -> &ChannelTokens {
        &self.0.gateway.tokens
    }
    /// Channel history, its per-room sequencer and the projects' settings.
    pub fn histories(&self) -> &crate::history::Histories {
        &self.0.gateway.histories
    }
    /// Presence channels' members.
    pub fn presence(&self) -> &crate::presence::Presences {
        &self.0.gateway.presence
    }
    /// Room broadcasts.
    pub fn fanout(&self) -> &Fanout {
        &self.0.gateway.fanout
    }
    /// The admin token.
    pub fn admin_token(&self) -> &AdminToken {
        &self.0.admin_token
    }
    /// Largest payload.
    pub fn max_payload_bytes(&self) -> usize {
        self.0.max_payload_bytes
    }
    /// Readiness.
    pub fn health(&self) -> &Health {
        &self.0.health
    }
}

/// The backends a server runs on.
pub struct Backends {
    /// Projects and keys.
    pub store: Arc<dyn Store>,
    /// Connection tracking.
    pub tracker: Arc<dyn ConnectionTracker>,
    /// Revocation job queue and revoked-key set.
    pub revocations: Arc<dyn RevocationQueue>,
    /// Channel history.
    pub history: Arc<dyn crate::history::History>,
    /// Disconnected sessions awaiting their socket.io-client (connection state recovery).
    pub sessions: Arc<dyn crate::csr::SessionStore>,
    /// Members of presence channels.
    pub presence: Arc<dyn crate::presence::PresenceManager>,
    /// Where webhook events are handed over (the writer takes the other end).
    pub webhook_events: crate::webhooks::WebhookEvents,
}

/// The shared part of every request handler, both transports.
/// Fails on a configuration Herald refuses to run with (see [`ServeConfig::channel_tokens`]).
pub fn gateway(config: &ServeConfig, backends: Backends) -> anyhow::Result<Gateway> {
    let fanout = Arc::new(Fanout::new(Arc::new(DirectRooms::new())));
    Ok(Gateway::new(GatewayInner {
        presence: Arc::new(crate::presence::Presences::new(
            backends.presence,
            fanout.clone(),
            config.max_presence_members.max(1),
            backends.webhook_events.clone(),
        )),
        occupancy: Arc::new(crate::occupancy::Occupancy::new()),
        webhooks: backends.webhook_events,
        fanout,
        store: backends.store,
        tracker: backends.tracker,
        tokens: config.channel_tokens()?,
        max_channels_per_socket: config.max_channels_per_socket,
        max_payload_bytes: config.max_payload_bytes,
        revocations: backends.revocations,
        histories: Arc::new(crate::history::Histories::new(backends.history)),
        recovery: (config.recovery_window_secs > 0).then(|| {
            Arc::new(crate::csr::Recovery {
                window: std::time::Duration::from_secs(config.recovery_window_secs),
                store: backends.sessions,
            })
        }),
    }))
}

/// A Socket.IO builder with Herald's limits and the gateway state; embedded mode builds it as
/// is, Redis mode adds its adapter.
pub fn socket_io(config: &ServeConfig, gateway: &Gateway) -> SocketIoBuilder {
    let max_message = config.max_message_bytes();
    SocketIo::builder()
        .with_state(gateway.clone())
        .max_payload(max_message as u64)
        .ws_max_message_size(max_message)
        .ws_max_frame_size(max_message)
        .max_buffer_size(config.socket_buffer)
        // Read in 1 KiB chunks: most client frames are small, and the buffer lives as long as
        // the socket (measured: -3 KB RSS per idle socket against the 4 KiB default).
        .ws_read_buffer_size(1024)
        .connect_timeout(config.connect_timeout())
        .with_parser(
            // Herald's protocol is JSON only: a packet with binary attachments closes the socket.
            ParserConfig::common()
                .max_incoming_binaries(0)
                .max_incoming_binary_buf_size(0),
        )
}

/// The direct transport's settings (socketioxide's heartbeat defaults, Herald's limits).
pub fn direct_settings(config: &ServeConfig) -> DirectSettings {
    DirectSettings {
        ping_interval: Duration::from_secs(25),
        ping_timeout: Duration::from_secs(20),
        connect_timeout: config.connect_timeout(),
        max_message_bytes: config.max_message_bytes(),
        socket_buffer: config.socket_buffer,
        close_timeout: crate::direct::conn::DEFAULT_CLOSE_TIMEOUT,
    }
}

/// The complete HTTP router: REST API, health, the direct WebSocket transport, the Socket.IO
/// layer, CORS and the Origin check.
pub fn router<A: Adapter>(
    config: &ServeConfig,
    state: AppState,
    io_layer: SocketIoLayer<A>,
) -> Router {
    let direct = DirectTransport {
        gateway: state.0.gateway.clone(),
        settings: Arc::new(direct_settings(config)),
    };
    let sse = crate::sse::SseTransport {
        gateway: state.0.gateway.clone(),
        settings: Arc::new(crate::sse::SseSettings {
            heartbeat: Duration::from_secs(config.sse_heartbeat_secs),
            socket_buffer: config.socket_buffer,
            close_timeout: crate::direct::conn::DEFAULT_CLOSE_TIMEOUT,
        }),
    };
    let sse = Router::new()
        .route(herald_protocol::sse::SSE_PATH, get(crate::sse::subscribe))
        .with_state(sse);
    let api = Router::new()
        .merge(sse)
        .route("/v1/publishers/events/publish", post(publisher::publish))
        .route("/v1/publishers/sign", post(publisher::sign))
        .route(
            "/v1/publishers/channels/{channelName}/history",
            get(publisher::history),
        )
        .route(
            "/v1/publishers/channels/{channelName}/presence",
            get(publisher::presence),
        )
        .route(
            "/v1/publishers/channels/{channelName}/presence/count",
            get(publisher::presence_count),
        )
        .route(
            "/v1/admin/projects",
            post(admin::create_project).get(admin::list_projects),
        )
        .route(
            "/v1/admin/projects/{id}",
            get(admin::get_project)
                .delete(admin::delete_project)
                .patch(admin::update_project),
        )
        .route(
            "/v1/admin/projects/{id}/rotate-secret",
            post(admin::rotate_secret),
        )
        .route(
            "/v1/admin/projects/{id}/api-keys",
            post(admin::create_api_key).get(admin::list_api_keys),
        )
        .route(
            "/v1/admin/projects/{id}/api-keys/{key_id}",
            delete(admin::delete_api_key).patch(admin::update_api_key),
        )
        .route(
            "/v1/admin/projects/{id}/webhooks",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/v1/admin/projects/{id}/webhooks/{webhook_id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/v1/admin/projects/{id}/webhooks/{webhook_id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route(
            "/v1/admin/projects/{id}/webhooks/{webhook_id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/v1/admin/projects/{id}/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
            post(webhooks::retry),
        )
        .route("/v1/tasks/api-key-events", post(tasks::api_key_event))
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .nest_service("/demo", demo::routes())
        .fallback(rest::not_found)
        .method_not_allowed_fallback(rest::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_message_bytes()))
        .with_state(state);

    let origins = Arc::new(config.allowed_origins.clone());
    api.layer(io_layer)
        .layer(cors_layer(&config.allowed_origins))
        .layer(EdgeLayer {
            origins,
            direct,
            request_ids: SequentialRequestId::new(),
        })
}

/// `GET /`: what this server is and where to go next, for a person or a tool that opens the
/// bare URL (instead of a 404).
#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 200, description = "Name, version and the server's entry points", body = crate::openapi::Index)))]
pub async fn index(State(state): State<AppState>) -> axum::Json<crate::openapi::Index> {
    axum::Json(crate::openapi::Index::new(state.0.metrics_enabled))
}

/// `GET /livez`: the process serves requests.
#[utoipa::path(get, path = "/livez", tag = "health",
    responses((status = 200, description = "Alive", body = crate::openapi::HealthStatus)))]
pub async fn livez() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /healthz`: same as `/livez` (kept for tools that expect the name).
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = crate::openapi::HealthStatus)))]
pub async fn healthz() -> impl IntoResponse {
    livez().await
}

/// `GET /readyz`: backends usable and no shutdown under way. The body also names every
/// background task and its state (`running`, `restarting`, `done`, `stopped`); the status code
/// depends on readiness alone.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready", body = crate::openapi::HealthStatus),
        (status = 503, description = "Not ready (Redis down, starting, or shutting down)", body = crate::openapi::HealthStatus)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let health = state.health();
    let tasks = health.tasks().tasks();
    if health.is_ready() {
        axum::Json(serde_json::json!({ "status": "ready", "tasks": tasks })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "not_ready", "tasks": tasks })),
        )
            .into_response()
    }
}

fn cors_layer(allowed: &[String]) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static(publisher::API_KEY_HEADER),
        ])
        .max_age(Duration::from_secs(600));
    if allowed.is_empty() {
        // Any origin, never with credentials (tower-http refuses that combination anyway).
        base.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = allowed
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
            .collect();
        base.allow_origin(AllowOrigin::list(list))
    }
}

/// The first thing every request meets, in one hand-written service (no boxed service clone
/// per request, unlike a stack of `from_fn` and `tower-http` layers):
///
/// 1. a request id: the caller's `x-request-id`, or a new one; echoed on the response;
/// 2. a `request` span with the id, method and path (never the query) around everything
///    that handles the request, so every log line carries the id;
/// 3. the Origin check;
/// 4. direct WebSocket handshakes taken off to [`crate::direct`]; everything else goes on to
///    CORS, socketioxide and the router.
#[derive(Clone)]
struct EdgeLayer {
    origins: Arc<Vec<String>>,
    direct: DirectTransport,
    request_ids: SequentialRequestId,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Edge<S> {
    inner: S,
    layer: EdgeLayer,
}

const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

impl<S> tower::Service<Request> for Edge<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        use tracing::Instrument;
        let request_id = match req.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.layer.request_ids.next();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = tracing::info_span!(
            "request",
            request_id = request_id.to_str().unwrap_or("-"),
            method = %req.method(),
            path = req.uri().path()
        );
        let started = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        let answer = move |mut res: Response, request_id: HeaderValue| {
            res.headers_mut().insert(REQUEST_ID, request_id);
            if let Some(started) = started {
                tracing::debug!(
                    status = res.status().as_u16(),
                    latency_us = started.elapsed().as_micros() as u64,
                    "response"
                );
            }
            Ok(res)
        };
        let _entered = span.enter();
        if !origin_allowed(&self.layer.origins, &req) {
            let res = ApiError::new(
                ErrorCode::OriginNotAllowed,
                "this origin is not in the server's allowlist",
            )
            .into_response();
            return Box::pin(std::future::ready(answer(res, request_id)));
        }
        if crate::direct::is_direct(&req) {
            let res = crate::direct::upgrade(req, &self.layer.direct);
            return Box::pin(std::future::ready(answer(res, request_id)));
        }
        let inner = self.inner.call(req);
        drop(_entered);
        Box::pin(
            async move {
                let Ok(res) = inner.await;
                answer(res, request_id)
            }
            .instrument(span),
        )
    }
}

/// Refuses requests (REST and the Socket.IO handshake/upgrade alike) whose `Origin` is not in
/// the allowlist. Requests without `Origin` (servers, CLIs) pass: browsers always send it.
fn origin_allowed(allowed: &[String], req: &Request) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match req.headers().get(header::ORIGIN) {
        None => true,
        Some(origin) => origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a.trim() == o)),
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then: readiness false, `grace`
/// later every socket closed (clients see a server disconnect and reconnect elsewhere),
/// in-flight requests drained, the drain bounded by `drain_timeout`. Default limits
/// ([`crate::listen::HttpLimits::default`], caps fitted to the open-file limit).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let limits = crate::listen::Limits::new(
        &crate::listen::HttpLimits::default(),
        crate::listen::open_file_limit(),
    );
    serve_with_limits(
        listener,
        state,
        router,
        shutdown,
        grace,
        drain_timeout,
        limits,
    )
    .await
}

/// [`serve`] with the listener's timeouts and connection caps ([`crate::listen`]).
pub async fn serve_with_limits(
    listener: TcpListener,
    state: AppState,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    drain_timeout: Duration,
    limits: crate::listen::Limits,
) -> std::io::Result<()> {
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_state = state.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: readiness off, closing sockets");
        signal_state.health().begin_shutdown();
        tokio::time::sleep(grace).await;
        signal_state.fanout().close().await;
        let _ = drained_tx.send(());
    };
    let server = crate::listen::serve(listener, router, limits, signal);
    tokio::select! {
        r = server => r,
        _ = async {
            let _ = drained_rx.await;
            tokio::time::sleep(drain_timeout).await;
        } => {
            tracing::warn!("drain timeout reached; exiting with requests in flight");
            Ok(())
        }
    }
}

/// Resolves on ctrl-c or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a signal that arrives between "herald listening" and the serve
/// loop's first poll starts a graceful shutdown instead of killing the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        #[cfg(unix)]
        let term = async move {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
}

/// Request ids `{instance}-{n}`: a random per-process prefix and a counter. Unique across
/// instances in practice, and far cheaper per request than a UUIDv4 (no RNG call).
#[derive(Clone)]
struct SequentialRequestId {
    prefix: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl SequentialRequestId {
    fn new() -> Self {
        Self {
            prefix: hex::encode(rand::random::<[u8; 4]>()).into(),
            next: Arc::default(),
        }
    }

    /// The next id.
    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n}", self.prefix))
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}
