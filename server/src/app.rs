//! Wiring: shared state, the HTTP router (REST + Socket.IO + health), and the server loop with
//! graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::serve::ListenerExt;
use herald_protocol::ErrorCode;
use socketioxide::{ParserConfig, SocketIo};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::channel_token::ChannelTokens;
use crate::config::ServeConfig;
use crate::gateway::{self, Gateway, GatewayInner};
use crate::keys::AdminToken;
use crate::rest::{self, ApiError, admin, publisher};
use crate::store::Store;
use crate::tracking::ConnectionTracker;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// Contents of [`AppState`].
pub struct AppInner {
    gateway: Gateway,
    io: SocketIo,
    admin_token: AdminToken,
    max_payload_bytes: usize,
    ready: AtomicBool,
}

impl AppState {
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
    /// The Socket.IO handle.
    pub fn io(&self) -> &SocketIo {
        &self.0.io
    }
    /// The admin token.
    pub fn admin_token(&self) -> &AdminToken {
        &self.0.admin_token
    }
    /// Largest payload.
    pub fn max_payload_bytes(&self) -> usize {
        self.0.max_payload_bytes
    }
    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }
    /// Flips readiness (false first thing on shutdown).
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }
}

/// The backends a server runs on.
pub struct Backends {
    /// Projects and keys.
    pub store: Arc<dyn Store>,
    /// Connection tracking.
    pub tracker: Arc<dyn ConnectionTracker>,
}

/// Builds the state and the complete router for `config` on `backends`.
pub fn build(
    config: &ServeConfig,
    backends: Backends,
    admin_token: AdminToken,
) -> (AppState, Router) {
    let gateway = Gateway::new(GatewayInner {
        store: backends.store,
        tracker: backends.tracker,
        tokens: ChannelTokens::new(
            config.channel_auth_audience.clone(),
            Duration::from_secs(config.channel_token_ttl_secs),
        ),
        max_channels_per_socket: config.max_channels_per_socket,
        max_payload_bytes: config.max_payload_bytes,
    });
    let max_message = config.max_message_bytes();
    let (io_layer, io) = SocketIo::builder()
        .with_state(gateway.clone())
        .max_payload(max_message as u64)
        .ws_max_message_size(max_message)
        .ws_max_frame_size(max_message)
        .max_buffer_size(config.socket_buffer)
        .connect_timeout(config.connect_timeout())
        .with_parser(
            // Herald's protocol is JSON only: a packet with binary attachments closes the socket.
            ParserConfig::common()
                .max_incoming_binaries(0)
                .max_incoming_binary_buf_size(0),
        )
        .build_layer();
    gateway::register(&io);

    let state = AppState(Arc::new(AppInner {
        gateway,
        io,
        admin_token,
        max_payload_bytes: config.max_payload_bytes,
        ready: AtomicBool::new(true),
    }));

    let api = Router::new()
        .route("/v1/publishers/events/publish", post(publisher::publish))
        .route("/v1/publishers/sign", post(publisher::sign))
        .route(
            "/v1/admin/projects",
            post(admin::create_project).get(admin::list_projects),
        )
        .route(
            "/v1/admin/projects/{id}",
            get(admin::get_project).delete(admin::delete_project),
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
        .route("/healthz", get(livez))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .fallback(rest::not_found)
        .method_not_allowed_fallback(rest::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_message))
        .with_state(state.clone());

    let origins = Arc::new(config.allowed_origins.clone());
    let router = api
        .layer(io_layer)
        .layer(cors_layer(&config.allowed_origins))
        .layer(middleware::from_fn_with_state(origins, check_origin));
    (state, router)
}

async fn livez() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "not_ready" })),
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

/// Refuses requests (REST and the Socket.IO handshake/upgrade alike) whose `Origin` is not in
/// the allowlist. Requests without `Origin` (servers, CLIs) pass: browsers always send it.
async fn check_origin(
    State(allowed): State<Arc<Vec<String>>>,
    req: Request,
    next: Next,
) -> Response {
    if !allowed.is_empty()
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let ok = origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a.trim() == o));
        if !ok {
            return ApiError::new(
                ErrorCode::OriginNotAllowed,
                "this origin is not in the server's allowlist",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Serves `router` on `listener` until `shutdown` resolves, then: readiness false, every
/// socket closed, in-flight requests drained, all bounded by `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        // Nagle would hold small frames back by up to 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_state = state.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: readiness off, closing sockets");
        signal_state.set_ready(false);
        signal_state.io().close().await;
        let _ = drained_tx.send(());
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(signal);
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

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
