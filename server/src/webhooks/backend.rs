//! What webhooks keep durably, and the narrow interface both backends implement
//! ([`WebhookBackend`]): endpoints ([`WebhookRecord`]) and the outbox of deliveries
//! ([`DeliveryRecord`]). [`super::embedded`] keeps them in the store's redb file, [`super::redis`]
//! in Redis; both run the contract in `contract.rs`.
//!
//! The outbox is a lease queue: every delivery not yet finished has a due time. [`claim`]
//! takes due deliveries and pushes their due time a lease ahead, so a worker that dies
//! mid-attempt (a crash, a restart) leaves them to be taken again once the lease runs out:
//! at-least-once, with no separate reclaim step. [`record_attempt`] writes the delivery back
//! with its new attempt: pending again at its next due time, or finished (delivered, failed).
//!
//! [`claim`]: WebhookBackend::claim
//! [`record_attempt`]: WebhookBackend::record_attempt

use async_trait::async_trait;
use base64::Engine;
use herald_protocol::ProjectId;
use herald_protocol::webhook::{
    DeliveryAttempt, DeliveryId, DeliveryStatus, WEBHOOK_SECRET_PREFIX, Webhook, WebhookDelivery,
    WebhookEventType, WebhookId, WebhookUrl,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A webhook signing key: 32 random bytes, shown to the operator as `whsec_<base64>`. It
/// must stay usable (HMAC), so it is stored as it is, like a project's signing secret; it is
/// shown once (create, rotate), never listed, never logged (`Debug` is redacted).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSecret(#[serde(with = "b64")] pub [u8; 32]);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The Standard Webhooks form `whsec_<base64>`: what the operator gives receivers.
    pub fn expose(&self) -> String {
        format!(
            "{WEBHOOK_SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let raw = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| serde::de::Error::custom("not a 32-byte base64 secret"))
    }
}

/// The secret before the last rotation, which keeps signing (next to the new one) until
/// `until`, so receivers can switch without losing a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// The old secret.
    pub secret: WebhookSecret,
    /// When it stops signing.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRecord {
    /// Its id.
    pub id: WebhookId,
    /// Its project.
    pub project_id: ProjectId,
    /// Where events are posted.
    pub url: WebhookUrl,
    /// What it wants (sorted, no repeats).
    pub events: Vec<WebhookEventType>,
    /// Whether events are recorded and sent.
    pub enabled: bool,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The signing secret.
    pub secret: WebhookSecret,
    /// The secret before the last rotation, while it overlaps.
    #[serde(default)]
    pub previous: Option<PreviousSecret>,
}

impl WebhookRecord {
    /// The public view (no secret).
    pub fn to_api(&self) -> Webhook {
        Webhook {
            id: self.id.clone(),
            project_id: self.project_id.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            enabled: self.enabled,
            created_at: self.created_at,
            previous_secret_expires_at: self.previous.as_ref().map(|p| p.until),
        }
    }

    /// Whether this endpoint takes events of `event_type` now.
    pub fn wants(&self, event_type: WebhookEventType) -> bool {
        self.enabled && self.events.contains(&event_type)
    }
}

/// One event for one endpoint, with its attempts: an entry of the outbox and of the delivery
/// log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// Its id, the `webhook-id` header of every attempt.
    pub id: DeliveryId,
    /// The endpoint.
    pub webhook_id: WebhookId,
    /// The endpoint's project.
    pub project_id: ProjectId,
    /// The event type.
    pub event_type: WebhookEventType,
    /// The request body exactly as signed and sent (a [`herald_protocol::webhook::WebhookPayload`]).
    pub body: String,
    /// When the event happened.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    /// Attempts since it was last queued (a manual retry starts a new series).
    #[serde(default)]
    pub series_attempts: u32,
    /// `Pending`: when the next attempt is due (Unix ms).
    pub due_ms: Option<i64>,
}

impl DeliveryRecord {
    /// A new pending delivery, due now.
    pub fn new(
        webhook: &WebhookRecord,
        event_type: WebhookEventType,
        body: String,
        created_at: OffsetDateTime,
        now_ms: i64,
    ) -> Self {
        let id = DeliveryId::from_uuid_simple(&uuid::Uuid::now_v7().simple().to_string())
            .unwrap_or_else(|| unreachable!("a UUID's simple form is 32 hex digits"));
        Self {
            id,
            webhook_id: webhook.id.clone(),
            project_id: webhook.project_id.clone(),
            event_type,
            body,
            created_at,
            status: DeliveryStatus::Pending,
            attempts: Vec::new(),
            series_attempts: 0,
            due_ms: Some(now_ms),
        }
    }

    /// The public view.
    pub fn to_api(&self) -> WebhookDelivery {
        WebhookDelivery {
            id: self.id.clone(),
            webhook_id: self.webhook_id.clone(),
            event_type: self.event_type,
            status: self.status,
            created_at: self.created_at,
            attempts: self.attempts.clone(),
            next_attempt_at: match (self.status, self.due_ms) {
                (DeliveryStatus::Pending, Some(ms)) => {
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                }
                _ => None,
            },
        }
    }
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookStoreError {
    /// The backend is unreachable.
    #[error("webhook storage unavailable: {0}")]
    Unavailable(String),
    /// The backend failed.
    #[error("webhook storage failure: {0}")]
    Backend(String),
    /// The project has as many endpoints as allowed.
    #[error("the project has the most webhooks allowed")]
    TooMany,
    /// The endpoint has as many pending deliveries as allowed
    /// (`--webhook-max-pending`): the delivery is refused (and counted).
    #[error("the webhook's outbox is full")]
    OutboxFull,
}

/// Endpoints and the outbox.
#[async_trait]
pub trait WebhookBackend: Send + Sync + 'static {
    /// Stores a new endpoint; [`WebhookStoreError::TooMany`] when its project already has
    /// `max_per_project`.
    async fn create_webhook(
        &self,
        webhook: &WebhookRecord,
        max_per_project: usize,
    ) -> Result<(), WebhookStoreError>;

    /// A project's endpoints, oldest first.
    async fn webhooks(&self, project: &ProjectId) -> Result<Vec<WebhookRecord>, WebhookStoreError>;

    /// One endpoint of a project.
    async fn webhook(
        &self,
        project: &ProjectId,
        id: &WebhookId,
    ) -> Result<Option<WebhookRecord>, WebhookStoreError>;

    /// Replaces an existing endpoint (same project and id); `false` when there is none.
    async fn update_webhook(&self, webhook: &WebhookRecord) -> Result<bool, WebhookStoreError>;

    /// Deletes an endpoint and its delivery log; `false` when there was none. Its pending
    /// deliveries are dropped when next claimed.
    async fn delete_webhook(
        &self,
        project: &ProjectId,
        id: &WebhookId,
    ) -> Result<bool, WebhookStoreError>;

    /// Deletes every endpoint of a deleted project.
    async fn delete_project_webhooks(&self, project: &ProjectId) -> Result<(), WebhookStoreError>;

    /// Adds pending deliveries (each due at its `due_ms`) and notes them in their endpoint's
    /// log (the newest [`MAX_LISTED_DELIVERIES`](herald_protocol::webhook::MAX_LISTED_DELIVERIES)
    /// are kept there). A delivery whose endpoint already has `max_pending` pending ones is
    /// not added; the answer says, per delivery in order, whether it was.
    async fn enqueue(
        &self,
        deliveries: &[DeliveryRecord],
        max_pending: usize,
    ) -> Result<Vec<bool>, WebhookStoreError>;

    /// Takes up to `max` due deliveries (due at or before `now_ms`), oldest due first, at most
    /// one per endpoint, skipping those of the endpoints in `busy`; each taken one is due again at
    /// `now_ms + lease_ms` unless [`WebhookBackend::record_attempt`] moves it first.
    async fn claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
        busy: &[WebhookId],
    ) -> Result<Vec<DeliveryRecord>, WebhookStoreError>;

    /// Writes a delivery back (after an attempt, or a manual retry): `Pending` is in the
    /// outbox, due at its `due_ms` (added again if it had left, without the `max_pending`
    /// check: an operator asked for it); `Delivered` and `Failed` leave the outbox (the log
    /// keeps them while they are among the newest).
    async fn record_attempt(&self, delivery: &DeliveryRecord) -> Result<(), WebhookStoreError>;

    /// Drops a delivery from the outbox without an attempt (its endpoint was deleted).
    async fn discard(&self, delivery: &DeliveryRecord) -> Result<(), WebhookStoreError>;

    /// The endpoint's logged deliveries, newest first, at most `limit`.
    async fn deliveries(
        &self,
        webhook: &WebhookId,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, WebhookStoreError>;

    /// One logged delivery of the endpoint.
    async fn delivery(
        &self,
        webhook: &WebhookId,
        id: &DeliveryId,
    ) -> Result<Option<DeliveryRecord>, WebhookStoreError>;

    /// Whether `key` was not marked before; marks it (for `ttl_secs`) either way. Once across
    /// the cluster: one instance of many gets `true`.
    async fn mark_once(&self, key: &str, ttl_secs: u64) -> Result<bool, WebhookStoreError>;
}
