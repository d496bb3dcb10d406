//! # herald-server
//!
//! The Herald gateway: backend services publish events to channels over REST; clients hold a
//! Socket.IO connection and receive the events of the channels they listen to.
//!
//! * [`app`]: state, router, serve loop; [`gateway`]: Socket.IO handlers;
//!   [`rest`]: publisher and admin endpoints;
//! * [`store`]: projects and keys behind the [`store::Store`] trait;
//!   [`history`]: per-channel event history behind [`history::History`];
//!   [`tracking`]: socket ↔ (room, key) index behind [`tracking::ConnectionTracker`];
//! * [`channel_token`]: private-channel tokens; [`keys`]: API key and admin token secrets;
//! * [`config`]: `herald serve` flags; [`cli`]: the `herald admin` / `herald publish` client.
//!
//! The wire contract lives in `herald-protocol`; see `docs/PROTOCOL.md`.
#![warn(missing_docs)]

pub mod app;
pub mod channel_token;
pub mod cli;
pub mod config;
pub mod csr;
pub mod direct;
pub mod fanout;
pub mod gateway;
pub mod history;
pub mod keys;
pub mod listen;
pub mod log_throttle;
pub mod metrics;
pub mod occupancy;
pub mod openapi;
pub mod presence;
pub mod redis;
pub mod rest;
pub mod revocation;
pub mod sse;
pub mod store;
pub mod supervise;
pub mod tracking;
pub mod webhooks;

#[cfg(test)]
mod redis_test_server;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::Backends;
use crate::config::ServeConfig;
use crate::keys::{AdminToken, AdminTokenSource};
use crate::revocation::embedded::EmbeddedQueue;
use crate::store::embedded::EmbeddedStore;
use crate::tracking::memory::MemoryTracker;

/// An embedded-mode server, built but not yet serving.
pub struct EmbeddedServer {
    /// Shared state.
    pub state: app::AppState,
    /// The complete router.
    pub router: axum::Router,
    /// The connection tracker (tests read the indexes through it).
    pub tracker: Arc<dyn tracking::ConnectionTracker>,
}

/// Builds the embedded mode: redb store and revocation queue under `config.data_dir`, in-memory
/// tracking, local Socket.IO adapter, revocation tasks. Serve `router` with [`app::serve`].
pub fn build_embedded(config: &ServeConfig, admin: AdminToken) -> anyhow::Result<EmbeddedServer> {
    let store = Arc::new(EmbeddedStore::open(&config.data_dir).with_context(|| {
        format!(
            "opening the embedded store in {}",
            config.data_dir.display()
        )
    })?);
    let queue =
        Arc::new(EmbeddedQueue::open(store.database()).context("opening the revocation queue")?);
    let tracker = Arc::new(MemoryTracker::new());
    let (webhook_events, webhook_intake) = webhooks::WebhookEvents::channel();
    let backends = Backends {
        webhook_events: webhook_events.clone(),
        store: store.clone(),
        tracker: tracker.clone(),
        revocations: queue.clone(),
        history: Arc::new(history::memory::MemoryHistory::new(
            config.history_max_bytes,
        )),
        sessions: Arc::new(csr::MemorySessions::default()),
        presence: Arc::new(presence::memory::MemoryPresence::new()),
    };
    let gateway = app::gateway(config, backends)?;
    let (io_layer, io) = app::socket_io(config, &gateway).build_layer();
    gateway::register(&io);
    gateway.fanout.attach_sio(io.clone());
    let local: Arc<dyn revocation::LocalSockets> =
        Arc::new(gateway::GatewaySockets::new(io, &gateway));
    let health = Arc::new(app::Health::new(true));
    let webhook_settings = config.webhook_settings();
    gateway.occupancy.start(
        Arc::new(occupancy::memory::MemoryOccupancy::new()),
        webhook_events.clone(),
        webhook_settings.vacated_delay,
        health.tasks(),
    );
    let webhooks = webhooks::Webhooks::start(
        Arc::new(
            webhooks::embedded::EmbeddedWebhooks::open(store.database())
                .context("opening the webhook outbox")?,
        ),
        webhook_settings,
        webhook_intake,
        webhook_events.clone(),
        store.clone(),
        health.tasks(),
    )?;
    let revocation = revocation::start(
        queue,
        store,
        tracker.clone(),
        local.clone(),
        Arc::new(revocation::LocalNotifier(local)),
        config.revocation_settings("embedded"),
        Arc::default(),
        webhook_events,
        health.tasks(),
    );
    let state = app::AppState::new(config, gateway, admin, health, revocation, webhooks);
    let router = app::router(config, state.clone(), io_layer);
    Ok(EmbeddedServer {
        state,
        router,
        tracker,
    })
}

/// Runs `herald serve` until ctrl-c or SIGTERM. Prints `herald listening on http://ADDR` on
/// stdout once the socket is bound (tests and scripts wait for that line).
pub async fn run_serve(config: ServeConfig) -> anyhow::Result<()> {
    config.validate().context("invalid configuration")?;
    let (admin, source) =
        AdminToken::load_or_generate(config.admin_token.as_deref(), &config.data_dir)
            .with_context(|| {
                format!(
                    "reading or writing the admin token in {}",
                    config.data_dir.display()
                )
            })?;
    match &source {
        AdminTokenSource::Configured => {
            tracing::info!("admin token: from --admin-token / HERALD_ADMIN_TOKEN")
        }
        AdminTokenSource::File(p) => {
            tracing::info!(path = %p.display(), "admin token: read from file")
        }
        AdminTokenSource::Generated(p) => {
            tracing::warn!(path = %p.display(), "admin token generated; read it from this file")
        }
    }
    if let Some(metrics_addr) = config.metrics_bind {
        let handle = metrics::install()?;
        let bound = metrics::serve(metrics_addr, handle).await?;
        tracing::info!(%bound, "metrics listener started");
        println!("herald metrics on http://{bound}/metrics");
    }
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    let (state, router, redis_mode) = match config.redis_url.clone() {
        None => {
            let EmbeddedServer { state, router, .. } = build_embedded(&config, admin)?;
            tracing::info!(%addr, data_dir = %config.data_dir.display(), "herald started (embedded mode)");
            (state, router, None)
        }
        Some(url) => {
            let (state, router, mode) = redis::start(&config, &url, admin)?;
            tracing::info!(%addr, "herald started (redis mode)");
            (state, router, Some(mode))
        }
    };
    // Signal handlers first: whoever reads the next line may send SIGTERM at once.
    let shutdown = app::shutdown_signal();
    println!("herald listening on http://{addr}");
    let tasks = state.health().tasks().clone();
    let limits = listen::Limits::new(&config.http_limits(), listen::raise_open_file_limit());
    app::serve_with_limits(
        listener,
        state,
        router,
        shutdown,
        std::time::Duration::from_millis(config.shutdown_grace_ms),
        std::time::Duration::from_secs(config.shutdown_timeout_secs),
        limits,
    )
    .await?;
    match redis_mode {
        Some(mode) => mode.shutdown().await,
        None => tasks.shutdown(),
    }
    tracing::info!("herald stopped");
    Ok(())
}
