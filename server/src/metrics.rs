//! Prometheus metrics: names, labels and the exporter listener (`--metrics-bind`).
//!
//! Every metric Herald records is declared here, so the list below is the whole catalogue.
//! Labels are bounded: error codes and outcomes are closed enums, API key ids are bounded by
//! the keys an operator creates, never secrets; no per-project or per-channel labels.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `herald_sockets_connected` | gauge | |
//! | `herald_subscriptions` | gauge | `kind` = public / private / presence |
//! | `herald_presence_sockets` | gauge | (this instance's sockets counted as members of presence channels) |
//! | `herald_presence_transitions_total` | counter | `action` = member_added / member_removed (announced by this instance) |
//! | `herald_connect_refusals_total` | counter | `code` |
//! | `herald_listen_refusals_total` | counter | `code` |
//! | `herald_auth_failures_total` | counter | `reason` (error code: API key, admin token, channel token) |
//! | `herald_publishes_total` | counter | `outcome` = ok / refused / unavailable / error |
//! | `herald_publish_duration_seconds` | histogram | |
//! | `herald_deliveries_total` | counter | `outcome` = queued / not_queued (this instance's sockets, events published anywhere) |
//! | `herald_slow_consumers_total` | counter | |
//! | `herald_api_key_requests_total` | counter | `api_key_id`, `operation` = publish / sign |
//! | `herald_client_events_total` | counter | |
//! | `herald_revocation_jobs_total` | counter | `event` = queued / done / retried / dead |
//! | `herald_revocation_sockets_removed_total` | counter | |
//! | `herald_store_errors_total` | counter | `kind` = unavailable / backend |
//! | `herald_redis_reconnects_total` | counter | |
//! | `herald_redis_dropped_messages_total` | counter | `reason` = queue_full / lagged |
//! | `herald_redis_probe_repairs_total` | counter | |
//! | `herald_log_lines_suppressed_total` | counter | `site` (which rate-limited log line) |
//! | `herald_bus_unconfirmed_total` | counter | |
//! | `herald_bus_refused_total` | counter | |
//! | `herald_bus_replays_skipped_total` | counter | |
//! | `herald_bus_gaps_total` | counter | `outcome` = recovered / notified |
//! | `herald_bus_duplicates_skipped_total` | counter | |
//! | `herald_task_alive` | gauge | `task` (a background task's fixed name, see [`crate::supervise`]) |
//! | `herald_task_restarts_total` | counter | `task` |
//! | `herald_connections_open` | gauge | (connections on `--bind` served normally, upgraded ones included) |
//! | `herald_connections_refused_total` | counter | `reason` = per_ip / capacity (answered 429 / 503, health still answered) |
//! | `herald_connection_timeouts_total` | counter | `phase` = header / body / idle |
//! | `herald_accept_errors_total` | counter | (e.g. out of file descriptors; accepting backs off) |
//! | `herald_unread_bodies_total` | counter | `outcome` = drained / abandoned (request bodies a handler answered without reading to the end) |

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Gauge: sockets connected to this instance.
pub const SOCKETS_CONNECTED: &str = "herald_sockets_connected";
/// Gauge: SSE streams open on this instance (they count in `herald_sockets_connected` too).
pub const SSE_STREAMS: &str = "herald_sse_streams";
/// Gauge: channel subscriptions held by this instance's sockets, by kind.
pub const SUBSCRIPTIONS: &str = "herald_subscriptions";
/// Counter: refused handshakes, by code.
pub const CONNECT_REFUSALS: &str = "herald_connect_refusals_total";
/// Counter: refused `listen` requests, by code.
pub const LISTEN_REFUSALS: &str = "herald_listen_refusals_total";
/// Counter: authentication failures (API keys, admin token, channel tokens), by reason.
pub const AUTH_FAILURES: &str = "herald_auth_failures_total";
/// Counter: publish calls, by outcome.
pub const PUBLISHES: &str = "herald_publishes_total";
/// Histogram: publish handling time, authentication to fan-out hand-off.
pub const PUBLISH_DURATION: &str = "herald_publish_duration_seconds";
/// Counter: deliveries to this instance's sockets (events published on any instance), by
/// outcome.
pub const DELIVERIES: &str = "herald_deliveries_total";
/// Counter: sockets closed because their send queue filled (slow consumers).
pub const SLOW_CONSUMERS: &str = "herald_slow_consumers_total";
/// Counter: authenticated publisher calls per API key id and operation.
pub const API_KEY_REQUESTS: &str = "herald_api_key_requests_total";
/// Gauge: this instance's sockets that are members of a presence channel (one per socket and
/// channel).
pub const PRESENCE_SOCKETS: &str = "herald_presence_sockets";
/// Counter: presence transitions this instance announced (each transition is announced by
/// exactly one instance).
pub const PRESENCE_TRANSITIONS: &str = "herald_presence_transitions_total";
/// Counter: client-to-client events relayed.
pub const CLIENT_EVENTS: &str = "herald_client_events_total";
/// Counter: revocation job lifecycle events.
pub const REVOCATION_JOBS: &str = "herald_revocation_jobs_total";
/// Counter: sockets removed from private channels by revocation on this instance.
pub const REVOCATION_SOCKETS_REMOVED: &str = "herald_revocation_sockets_removed_total";
/// Counter: failed store operations.
pub const STORE_ERRORS: &str = "herald_store_errors_total";
/// Counter: Redis subscriber reconnects.
pub const REDIS_RECONNECTS: &str = "herald_redis_reconnects_total";
/// Counter: cross-instance messages the Redis driver could not hand over.
pub const REDIS_DROPPED: &str = "herald_redis_dropped_messages_total";
/// Counter: pub/sub repairs triggered by the probe.
pub const REDIS_PROBE_REPAIRS: &str = "herald_redis_probe_repairs_total";
/// Counter: log lines a [`crate::log_throttle::LogThrottle`] held back, by site.
pub const LOG_LINES_SUPPRESSED: &str = "herald_log_lines_suppressed_total";
/// Counter: events the event bus could not confirm every instance took (answered 503, or
/// 200 when history repairs it: see `PROTOCOL.md`).
pub const BUS_UNCONFIRMED: &str = "herald_bus_unconfirmed_total";
/// Counter: events refused because the event bus's queue was full (answered 503).
pub const BUS_REFUSED: &str = "herald_bus_refused_total";
/// Counter: bus batches received again (a re-sent command) and skipped.
pub const BUS_REPLAYS_SKIPPED: &str = "herald_bus_replays_skipped_total";
/// Counter: rooms whose events this instance's bus subscription missed (Redis mode), by
/// outcome: `recovered` (delivered from history), `notified` (told `missed_events`).
pub const BUS_GAPS: &str = "herald_bus_gaps_total";
/// Counter: bus events skipped because this instance had delivered them from history.
pub const BUS_DUPLICATES_SKIPPED: &str = "herald_bus_duplicates_skipped_total";
/// Gauge: 1 while a supervised background task runs, 0 while it is restarting or stopped.
pub const TASK_ALIVE: &str = "herald_task_alive";
/// Counter: restarts of a supervised background task after it panicked or returned.
pub const TASK_RESTARTS: &str = "herald_task_restarts_total";

/// Gauge: connections on the public listener served normally (upgraded ones included).
pub const CONNECTIONS_OPEN: &str = "herald_connections_open";
/// Counter: connections refused at accept, by reason.
pub const CONNECTIONS_REFUSED: &str = "herald_connections_refused_total";
/// Counter: connections closed (or requests answered 408) by a read timeout, by phase.
pub const CONNECTION_TIMEOUTS: &str = "herald_connection_timeouts_total";
/// Counter: failed `accept()` calls other than a peer's early reset.
pub const ACCEPT_ERRORS: &str = "herald_accept_errors_total";
/// Counter: request bodies answered before they were read to the end, by `outcome`: `drained`
/// (read and discarded, the connection kept) or `abandoned` (over the drain cap or failed, the
/// connection closed after the answer).
pub const UNREAD_BODIES: &str = "herald_unread_bodies_total";
/// Gauge: bytes the embedded (in-memory) channel history holds, against `--history-max-bytes`.
pub const HISTORY_BYTES: &str = "herald_history_bytes";
/// Counter: history events evicted before their time to keep `--history-max-bytes`.
pub const HISTORY_EVICTIONS: &str = "herald_history_evictions_total";
/// Counter: `listen` requests with `since`, by outcome (`recovered`, or the reason it failed).
pub const HISTORY_RECOVERIES: &str = "herald_history_recoveries_total";
/// Counter: socket.io-client reconnects that presented a recovery `pid`, by `outcome`
/// (`recovered`, `unknown_session`, `project_mismatch`, `ambiguous`, `revoked`, `history_lost`,
/// `unavailable`).
pub const CSR_RESUMES: &str = "herald_csr_resumes_total";
/// Counter: disconnected sessions kept for recovery.
pub const CSR_SESSIONS_SAVED: &str = "herald_csr_sessions_saved_total";
/// Counter: disconnected sessions not kept (store full or unreachable): their client will not
/// recover.
pub const CSR_SESSIONS_REFUSED: &str = "herald_csr_sessions_refused_total";
/// Counter: history appends that failed (the publish is answered `unavailable`).
pub const HISTORY_ERRORS: &str = "herald_history_errors_total";
/// Counter: webhook events not recorded, by `reason`: `intake_full` (the in-memory hand-over
/// to the outbox, 16,384 events, was full), `outbox_full` (the endpoint has
/// `--webhook-max-pending` pending deliveries), `unavailable` (the outbox could not be written).
pub const WEBHOOK_REFUSED: &str = "herald_webhook_events_refused_total";
/// Counter: webhook deliveries recorded in the outbox (one per event per endpoint).
pub const WEBHOOK_QUEUED: &str = "herald_webhook_deliveries_queued_total";
/// Counter: webhook attempts by `outcome`: `delivered` (2xx), `retry` (failed, another attempt
/// is due), `failed` (failed, no attempt left: dead-lettered).
pub const WEBHOOK_ATTEMPTS: &str = "herald_webhook_attempts_total";
/// Histogram: duration of one webhook attempt, in seconds.
pub const WEBHOOK_ATTEMPT_DURATION: &str = "herald_webhook_attempt_duration_seconds";
/// Gauge: webhook attempts in flight on this instance.
pub const WEBHOOK_IN_FLIGHT: &str = "herald_webhook_attempts_in_flight";

/// Installs the global Prometheus recorder (once per process) and returns its handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(PUBLISH_DURATION.to_owned()),
            &[
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0,
            ],
        )
        .context("configuring histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full(WEBHOOK_ATTEMPT_DURATION.to_owned()),
            &[0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )
        .context("configuring histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Serves `GET /metrics` on `addr` (a listener separate from the public one). Returns the
/// bound address.
pub async fn serve(addr: SocketAddr, handle: PrometheusHandle) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(bound)
}
