//! Webhooks: signed, retried, durable notifications of channel, presence and key events to a
//! project's backend.
//!
//! The path of one event:
//!
//! 1. Where it happens (the occupancy task, [`crate::presence::Presences`], the gateway's
//!    client events, the revocation worker, the expiring-key scheduler) calls
//!    [`WebhookEvents::emit`]: a `try_send` into a bounded hand-over queue
//!    ([`INTAKE_CAPACITY`]); nothing on a socket's or a publish's path waits for webhooks. A
//!    full queue refuses the event and counts it (`herald_webhook_events_refused_total`,
//!    throttled log line).
//! 2. The `webhook_writer` task turns each event into one [`DeliveryRecord`] per endpoint of
//!    the project that wants its type (endpoints cached for a second, forgotten at once on
//!    this instance when the admin API changes them) and writes them to the durable outbox
//!    ([`WebhookBackend::enqueue`]: redb, or Redis). From here nothing is lost: a restart, a
//!    crash, a receiver down for an hour.
//! 3. The `webhook_dispatcher` task ([`dispatch`]) claims due deliveries under a lease, at most
//!    one in flight per endpoint and `--webhook-concurrency` in all, signs each attempt
//!    ([`sign`]), posts it with a per-attempt timeout, and writes the outcome back: delivered,
//!    due again after a backoff (or the receiver's `Retry-After`), or failed after
//!    `--webhook-max-attempts` (kept in the delivery log, retried by hand with
//!    `POST …/deliveries/{id}/retry`).
//!
//! Delivery is at least once: an instance that dies between a receiver's `2xx` and writing
//! the outcome leaves the delivery to be sent again when its lease runs out; the `webhook-id`
//! header (the delivery id) lets a receiver drop the repeat.

pub mod backend;
pub mod dispatch;
pub mod embedded;
pub mod redis;
pub mod sign;

#[cfg(test)]
pub(crate) mod contract;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::ProjectId;
pub use herald_protocol::webhook::WebhookEventType;
use herald_protocol::webhook::WebhookPayload;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};

pub use backend::{
    DeliveryRecord, PreviousSecret, WebhookBackend, WebhookRecord, WebhookSecret, WebhookStoreError,
};

use crate::log_throttle::backend_faults;
use crate::metrics as m;
use crate::store::Store;
use crate::supervise::Supervisor;

/// Events the hand-over queue holds before it refuses more.
pub const INTAKE_CAPACITY: usize = 16_384;

/// How long a project's endpoints are cached by the writer and the dispatcher.
const ENDPOINTS_TTL: Duration = Duration::from_secs(1);

/// Tunables (`--webhook-*` flags).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// How long a channel must stay empty before `channel_vacated` is sent.
    pub vacated_delay: Duration,
    /// One attempt's limit, connection to the end of the answer.
    pub attempt_timeout: Duration,
    /// Attempts per delivery before it is failed.
    pub max_attempts: u32,
    /// The first retry's delay; each next one is 4 times longer, up to `retry_max`.
    pub retry_base: Duration,
    /// The longest delay between attempts (a receiver's `Retry-After` included).
    pub retry_max: Duration,
    /// How long the secret before a rotation keeps signing.
    pub secret_overlap: Duration,
    /// How long before a key's expiry `api_key_expiring` is sent.
    pub key_expiring: Duration,
    /// Pending deliveries one endpoint may have; further events for it are refused (counted).
    pub max_pending: usize,
    /// Attempts in flight on this instance.
    pub concurrency: usize,
}

impl Default for WebhookSettings {
    /// 8 attempts over about an hour: 4 s, 16 s, 64 s, 4¼ min, 17 min, 20 min, 20 min.
    fn default() -> Self {
        Self {
            vacated_delay: Duration::from_millis(3_000),
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 8,
            retry_base: Duration::from_secs(4),
            retry_max: Duration::from_secs(20 * 60),
            secret_overlap: Duration::from_secs(24 * 3600),
            key_expiring: Duration::from_secs(24 * 3600),
            max_pending: 10_000,
            concurrency: 32,
        }
    }
}

impl WebhookSettings {
    /// How long a claimed delivery stays away from other workers: longer than any attempt.
    pub fn lease(&self) -> Duration {
        self.attempt_timeout * 2 + Duration::from_secs(10)
    }
}

/// One event on its way to the outbox.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    /// Whose.
    pub project: ProjectId,
    /// What.
    pub event_type: WebhookEventType,
    /// When it happened.
    pub timestamp: OffsetDateTime,
    /// `data` without `projectId` (added when the body is built).
    pub data: Map<String, Value>,
}

impl WebhookEvent {
    /// The request body: `{ "type", "timestamp", "data": { "projectId", … } }`.
    pub fn body(&self) -> String {
        let mut data = Map::with_capacity(self.data.len() + 1);
        data.insert("projectId".into(), Value::String(self.project.to_string()));
        data.extend(self.data.clone());
        let payload = WebhookPayload {
            event_type: self.event_type,
            timestamp: self.timestamp,
            data: Value::Object(data),
        };
        serde_json::to_string(&payload).unwrap_or_else(|_| {
            unreachable!("a payload of strings, numbers and JSON values always encodes")
        })
    }
}

/// Where events are handed over: cheap to clone, never blocks.
#[derive(Clone)]
pub struct WebhookEvents {
    tx: mpsc::Sender<WebhookEvent>,
}

impl WebhookEvents {
    /// A hand-over queue of [`INTAKE_CAPACITY`] and its receiving end (for [`Webhooks::start`]).
    pub fn channel() -> (Self, mpsc::Receiver<WebhookEvent>) {
        let (tx, rx) = mpsc::channel(INTAKE_CAPACITY);
        (Self { tx }, rx)
    }

    /// Hands an event over; a full queue refuses it (counted, throttled log line).
    pub fn emit(&self, project: &ProjectId, event_type: WebhookEventType, data: Value) {
        let data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let event = WebhookEvent {
            project: project.clone(),
            event_type,
            timestamp: OffsetDateTime::now_utc(),
            data,
        };
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                metrics::counter!(m::WEBHOOK_REFUSED, "reason" => "intake_full").increment(1);
                if let Some(p) = backend_faults().check(&"webhook_intake_full") {
                    tracing::warn!(project_id = %event.project, event_type = %event.event_type, suppressed = p.suppressed, "webhook event refused: the hand-over queue is full");
                }
            }
            // Only without a writer (tests that build a gateway alone, or shutdown).
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// A project's endpoints and when they were read.
type CachedEndpoints = (Instant, Arc<Vec<WebhookRecord>>);

/// The webhook service of one instance: the writer and the dispatcher over one backend.
pub struct Webhooks {
    /// Endpoints and outbox.
    pub backend: Arc<dyn WebhookBackend>,
    /// Tunables.
    pub settings: WebhookSettings,
    cache: Mutex<HashMap<ProjectId, CachedEndpoints>>,
    /// Wakes the dispatcher (new deliveries, a manual retry).
    pub(crate) wake: Notify,
    client: reqwest::Client,
}

impl Webhooks {
    /// Builds the service and starts `webhook_writer` (draining `intake`),
    /// `webhook_dispatcher` and `webhook_key_expiry` (`api_key_expiring` for the keys of
    /// `store`) under `tasks`.
    pub fn start(
        backend: Arc<dyn WebhookBackend>,
        settings: WebhookSettings,
        intake: mpsc::Receiver<WebhookEvent>,
        events: WebhookEvents,
        store: Arc<dyn Store>,
        tasks: &Supervisor,
    ) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.attempt_timeout)
            .connect_timeout(settings.attempt_timeout)
            .user_agent(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(2)
            .build()?;
        let service = Arc::new(Self {
            backend,
            settings,
            cache: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            client,
        });
        // The receiver outlives a restarted run of the writer.
        let intake = Arc::new(tokio::sync::Mutex::new(intake));
        let s = service.clone();
        tasks.spawn("webhook_writer", move || {
            s.clone().run_writer(intake.clone())
        });
        let s = service.clone();
        tasks.spawn("webhook_dispatcher", move || dispatch::run(s.clone()));
        let s = service.clone();
        tasks.spawn("webhook_key_expiry", move || {
            s.clone().run_key_expiry(store.clone(), events.clone())
        });
        Ok(service)
    }

    /// Forgets the cached endpoints of `project` (after an admin change on this instance;
    /// other instances see it within [`ENDPOINTS_TTL`]).
    pub fn forget(&self, project: &ProjectId) {
        self.cache.lock().remove(project);
    }

    /// The endpoints of `project`, cached for [`ENDPOINTS_TTL`].
    pub async fn endpoints(
        &self,
        project: &ProjectId,
    ) -> Result<Arc<Vec<WebhookRecord>>, WebhookStoreError> {
        if let Some((at, list)) = self.cache.lock().get(project)
            && at.elapsed() < ENDPOINTS_TTL
        {
            return Ok(list.clone());
        }
        let list = Arc::new(self.backend.webhooks(project).await?);
        let mut cache = self.cache.lock();
        if cache.len() >= 10_000 {
            cache.retain(|_, (at, _)| at.elapsed() < ENDPOINTS_TTL);
        }
        cache.insert(project.clone(), (Instant::now(), list.clone()));
        Ok(list)
    }

    /// The HTTP client of attempts (no redirects, per-attempt timeout).
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Moves handed-over events into the outbox, a batch at a time. A batch the outbox cannot
    /// take (backend down) is retried with backoff while the hand-over queue buffers (and, once
    /// full, refuses and counts).
    async fn run_writer(
        self: Arc<Self>,
        intake: Arc<tokio::sync::Mutex<mpsc::Receiver<WebhookEvent>>>,
    ) {
        let mut intake = intake.lock().await;
        let mut batch = Vec::with_capacity(256);
        loop {
            if intake.recv_many(&mut batch, 256).await == 0 {
                // Every sender is gone: shutdown.
                std::future::pending::<()>().await;
            }
            let mut delay = Duration::from_millis(100);
            loop {
                match self.write(&batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        if let Some(p) = backend_faults().check(&"webhook_outbox_write") {
                            tracing::warn!(error = %e, events = batch.len(), suppressed = p.suppressed, "webhook outbox unavailable; retrying");
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            batch.clear();
        }
    }

    /// One batch of events into the outbox.
    async fn write(&self, batch: &[WebhookEvent]) -> Result<(), WebhookStoreError> {
        let now_ms = now_ms();
        let mut deliveries = Vec::new();
        for event in batch {
            let endpoints = self.endpoints(&event.project).await?;
            let mut body = None;
            for endpoint in endpoints.iter().filter(|e| e.wants(event.event_type)) {
                let body = body.get_or_insert_with(|| event.body()).clone();
                deliveries.push(DeliveryRecord::new(
                    endpoint,
                    event.event_type,
                    body,
                    event.timestamp,
                    now_ms,
                ));
            }
        }
        if deliveries.is_empty() {
            return Ok(());
        }
        let taken = self
            .backend
            .enqueue(&deliveries, self.settings.max_pending)
            .await?;
        for (d, ok) in deliveries.iter().zip(taken) {
            if ok {
                metrics::counter!(m::WEBHOOK_QUEUED).increment(1);
            } else {
                metrics::counter!(m::WEBHOOK_REFUSED, "reason" => "outbox_full").increment(1);
                if let Some(p) = backend_faults().check(&"webhook_outbox_full") {
                    tracing::warn!(webhook_id = %d.webhook_id, event_type = %d.event_type, max_pending = self.settings.max_pending, suppressed = p.suppressed, "webhook delivery refused: the endpoint has too many pending deliveries");
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Sends `api_key_expiring` once per key and expiry (across the cluster) when a key's
    /// `expiresAt` is within `--webhook-key-expiring-secs`.
    async fn run_key_expiry(self: Arc<Self>, store: Arc<dyn Store>, events: WebhookEvents) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let keys = match store.all_api_keys().await {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::debug!(error = %e, "expiring-key scheduler cannot list keys");
                    continue;
                }
            };
            let now = OffsetDateTime::now_utc();
            for key in keys {
                let Some(expires_at) = key.expires_at else {
                    continue;
                };
                if expires_at <= now || expires_at - now > self.settings.key_expiring {
                    continue;
                }
                let Ok(endpoints) = self.endpoints(&key.project_id).await else {
                    continue;
                };
                if !endpoints
                    .iter()
                    .any(|e| e.wants(WebhookEventType::ApiKeyExpiring))
                {
                    continue;
                }
                let mark = format!("expiring:{}:{}", key.id, expires_at.unix_timestamp());
                let ttl = self.settings.key_expiring.as_secs() + 24 * 3600;
                match self.backend.mark_once(&mark, ttl).await {
                    Ok(true) => events.emit(
                        &key.project_id,
                        WebhookEventType::ApiKeyExpiring,
                        serde_json::json!({
                            "apiKeyId": key.id.to_string(),
                            "expiresAt": expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                        }),
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "expiring-key mark failed; next tick retries"),
                }
            }
        }
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
