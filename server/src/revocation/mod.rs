//! API key revocation: when a key is deleted or expires, every socket that a token from that
//! key let into a private channel leaves those channels, on every instance, and is told why.
//!
//! Triggers (all end in [`Revocation::trigger`]):
//! * `DELETE /v1/admin/projects/{id}/api-keys/{keyId}` (`ApiKeyDeleted`);
//! * the expiry [scheduler](Revocation::run_scheduler): every instance looks for expired,
//!   not yet revoked keys every second; the atomic "mark revoked + enqueue" makes it fire once
//!   across the cluster, and also on start for keys that expired while nothing ran;
//! * `POST /v1/tasks/api-key-events` from an external access service.
//!
//! A trigger atomically records the key id as revoked (stored state: from that moment `listen`
//! refuses the key's tokens) and enqueues a durable [`RevocationJob`] ([`RevocationQueue`]:
//! redb in embedded mode, a Redis Stream consumer group in Redis mode). Any instance's
//! [worker](Revocation::run_worker) takes the job and runs it:
//!
//! 1. tell every instance to revoke the key locally ([`RevokeNotifier`]): each instance walks
//!    its own sockets ([`LocalSockets`]) and, per socket, removes the key's private channels,
//!    sends one `RemovedFromChannel` naming them, and cleans both tracking indexes;
//! 2. repeat the notice every second until the key's tracking index is empty (dead instances'
//!    entries are swept by the heartbeat sweeper), or give up after a timeout;
//! 3. acknowledge. A failure is retried with exponential backoff; after `max_attempts` the job
//!    goes to the dead-letter record. A crashed worker's job is reclaimed by another instance.
//!
//! The job is idempotent: removal happens under each socket's own lock, so a second run (or
//! the reconciler below) finds nothing left and sends nothing.
//!
//! Convergence: notices are fire-and-forget pub/sub. Every instance also
//! [reconciles](Revocation::run_reconciler) its own sockets against the stored state every
//! `reconcile_interval` (and right after its Redis link comes back): any private channel held
//! through a revoked, deleted, expired or scope-less key is removed the same way. No revoked
//! socket stays inside longer than that interval after its instance can read Redis again.
//!
//! The worker, the scheduler and the reconciler run under the instance's
//! [`Supervisor`]: one that panics is logged, counted and restarted, so the bound above holds
//! even across a failure in a pass.
//!
//! Secret rotation uses the same machinery without a job: each socket remembers which project
//! secret verified each of its private channels ([`crate::store::SecretId`]);
//! [`Revocation::secret_rotated`] removes this instance's holders of an older secret at once
//! and notices the other instances ([`RevokeNotifier::notify_rotated`]); the reconciler
//! compares every held secret with the project's current one, so a missed notice is caught up
//! within the same interval. No job is needed because the stored state (the current secret)
//! is all any instance needs to decide.

pub mod embedded;
pub mod redis;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{ApiKeyId, ProjectId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::channel_token::check_signing_key;
use crate::store::{SecretId, Store};
use crate::supervise::Supervisor;
use crate::tracking::ConnectionTracker;

/// Why a key is being revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevocationReason {
    /// The key was deleted.
    Deleted,
    /// The key expired.
    Expired,
    /// The key no longer allows signing (found by the reconciler).
    NoLongerValid,
    /// The project's signing secret was rotated: tokens verified by the old one no longer
    /// hold their channels.
    SecretRotated,
}

/// What a revocation job found the key holding when it began, on every instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Distinct sockets.
    pub sockets: usize,
    /// (socket, channel) subscriptions.
    pub channels: usize,
}

impl RevocationReason {
    /// The reason as the `api_key_revoked` webhook names it.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Deleted => "deleted",
            RevocationReason::Expired => "expired",
            RevocationReason::NoLongerValid => "no_longer_valid",
            RevocationReason::SecretRotated => "secret_rotated",
        }
    }

    /// The human text of the `RemovedFromChannel` message.
    pub fn message(self) -> &'static str {
        match self {
            RevocationReason::Deleted => {
                "removed from private channels: the API key that authorised them was deleted"
            }
            RevocationReason::Expired => {
                "removed from private channels: the API key that authorised them expired"
            }
            RevocationReason::NoLongerValid => {
                "removed from private channels: the API key that authorised them is no longer valid"
            }
            RevocationReason::SecretRotated => {
                "removed from private channels: the project's signing secret was rotated; sign new tokens"
            }
        }
    }
}

/// One durable unit of revocation work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationJob {
    /// Job id (UUIDv7).
    pub id: String,
    /// The key's project.
    pub project_id: ProjectId,
    /// The key.
    pub api_key_id: ApiKeyId,
    /// Why.
    pub reason: RevocationReason,
    /// 0 on the first run, then incremented by each retry.
    pub attempt: u32,
}

impl RevocationJob {
    /// A new job.
    pub fn new(project_id: ProjectId, api_key_id: ApiKeyId, reason: RevocationReason) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            project_id,
            api_key_id,
            reason,
            attempt: 0,
        }
    }
}

/// A job taken by a worker, with the backend's handle to acknowledge it.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job.
    pub job: RevocationJob,
    /// Backend handle (stream entry id, or row key).
    pub handle: String,
}

/// A job that failed `max_attempts` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The job.
    pub job: RevocationJob,
    /// The last error.
    pub error: String,
    /// When it was given up.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend is unreachable.
    #[error("job queue unavailable: {0}")]
    Unavailable(String),
    /// The backend failed.
    #[error("job queue failure: {0}")]
    Backend(String),
}

/// Durable, at-least-once job queue plus the revoked-key set.
#[async_trait]
pub trait RevocationQueue: Send + Sync + 'static {
    /// Records the job's key as revoked and enqueues the job, atomically. With `only_if_new`,
    /// does neither when the key was already revoked and returns `false`.
    async fn enqueue(&self, job: &RevocationJob, only_if_new: bool) -> Result<bool, QueueError>;

    /// Whether `key` was revoked.
    async fn is_revoked(&self, key: &ApiKeyId) -> Result<bool, QueueError>;

    /// Takes the next due job for `consumer`: a retry whose delay passed, a job another
    /// consumer took and stopped touching (crashed), or a new one.
    async fn claim(&self, consumer: &str) -> Result<Option<Claimed>, QueueError>;

    /// Tells the queue the job is still being worked on (so it is not reclaimed).
    async fn touch(&self, claimed: &Claimed, consumer: &str) -> Result<(), QueueError>;

    /// Acknowledges a finished job.
    async fn complete(&self, claimed: &Claimed) -> Result<(), QueueError>;

    /// Puts the job back to run again after `delay`, with `attempt + 1`.
    async fn retry_later(&self, claimed: &Claimed, delay: Duration) -> Result<(), QueueError>;

    /// Moves the job to the dead-letter record.
    async fn dead_letter(&self, claimed: &Claimed, error: &str) -> Result<(), QueueError>;

    /// The dead-letter record.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError>;
}

/// The sockets of this instance.
#[async_trait]
pub trait LocalSockets: Send + Sync + 'static {
    /// Removes every local socket from the private channels it holds through `key`, sends each
    /// affected socket one `RemovedFromChannel`, cleans tracking. Returns the sockets affected.
    async fn revoke_key(&self, key: &ApiKeyId, reason: RevocationReason) -> usize;

    /// The keys through which local sockets hold private channels.
    fn keys_in_use(&self) -> HashSet<ApiKeyId>;

    /// Removes every local socket of `project` from the private channels it holds through a
    /// token that a secret other than `current` verified, sends each affected socket one
    /// `RemovedFromChannel`, cleans tracking. Returns the sockets affected.
    async fn revoke_secret(&self, project: &ProjectId, current: SecretId) -> usize;

    /// Per project, the secrets whose tokens hold the private channels of local sockets.
    fn secrets_in_use(&self) -> HashMap<ProjectId, HashSet<SecretId>>;
}

/// Tells every instance (this one included) to revoke a key locally.
#[async_trait]
pub trait RevokeNotifier: Send + Sync + 'static {
    /// Sends the notice; fire-and-forget.
    async fn notify(&self, key: &ApiKeyId, reason: RevocationReason);

    /// Tells the other instances that `project`'s secret was rotated (each then checks its
    /// own sockets, [`Revocation::check_project_secret`]); fire-and-forget.
    async fn notify_rotated(&self, project: &ProjectId);
}

/// Embedded mode: the only instance is this one.
pub struct LocalNotifier(pub Arc<dyn LocalSockets>);

#[async_trait]
impl RevokeNotifier for LocalNotifier {
    async fn notify(&self, key: &ApiKeyId, reason: RevocationReason) {
        self.0.revoke_key(key, reason).await;
    }

    /// Nothing to tell: [`Revocation::secret_rotated`] already checked this, the only
    /// instance.
    async fn notify_rotated(&self, _project: &ProjectId) {}
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct RevocationSettings {
    /// This worker's consumer name (the instance id).
    pub consumer: String,
    /// How long one run waits for the key's tracking index to empty.
    pub run_timeout: Duration,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// Runs before a job is dead-lettered.
    pub max_attempts: u32,
    /// Period of the reconciler.
    pub reconcile_interval: Duration,
    /// Period of the expiry scheduler.
    pub schedule_interval: Duration,
    /// Fault injection for tests: sleep this long after claiming a job.
    pub job_delay: Duration,
}

impl RevocationSettings {
    /// Herald's defaults for `consumer`.
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            run_timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            max_attempts: 5,
            reconcile_interval: Duration::from_secs(5),
            schedule_interval: Duration::from_secs(1),
            job_delay: Duration::ZERO,
        }
    }
}

/// Counters an operator reads (logged; exported as metrics by the operations layer).
#[derive(Debug, Default)]
pub struct RevocationStats {
    /// Jobs enqueued by this instance.
    pub queued: AtomicU64,
    /// Jobs completed by this instance.
    pub done: AtomicU64,
    /// Retries scheduled by this instance.
    pub retried: AtomicU64,
    /// Jobs dead-lettered by this instance.
    pub dead: AtomicU64,
    /// Sockets removed from channels on this instance (jobs and reconciler).
    pub sockets_removed: AtomicU64,
}

/// Builds the workflow and starts its worker (`revocation_worker`), expiry scheduler
/// (`expiry_scheduler`) and reconciler (`reconciler`) under `tasks`. `kick` makes the
/// reconciler run at once (Redis mode fires it when the Redis link comes back).
#[allow(clippy::too_many_arguments)]
pub fn start(
    queue: Arc<dyn RevocationQueue>,
    store: Arc<dyn Store>,
    tracker: Arc<dyn ConnectionTracker>,
    local: Arc<dyn LocalSockets>,
    notifier: Arc<dyn RevokeNotifier>,
    settings: RevocationSettings,
    kick: Arc<Notify>,
    webhooks: crate::webhooks::WebhookEvents,
    tasks: &Supervisor,
) -> Arc<Revocation> {
    let revocation = Arc::new(Revocation {
        webhooks,
        queue,
        store,
        tracker,
        local,
        notifier,
        settings,
        stats: Arc::default(),
        wake: Arc::default(),
    });
    let r = revocation.clone();
    tasks.spawn("revocation_worker", move || r.clone().run_worker());
    let r = revocation.clone();
    tasks.spawn("expiry_scheduler", move || r.clone().run_scheduler());
    let r = revocation.clone();
    tasks.spawn("reconciler", move || r.clone().run_reconciler(kick.clone()));
    revocation
}

/// The revocation workflow of one instance.
pub struct Revocation {
    /// The `api_key_revoked` webhook, sent by the worker that completed the job.
    pub webhooks: crate::webhooks::WebhookEvents,
    /// Queue and revoked set.
    pub queue: Arc<dyn RevocationQueue>,
    /// Keys and projects.
    pub store: Arc<dyn Store>,
    /// Socket ↔ key index.
    pub tracker: Arc<dyn ConnectionTracker>,
    /// This instance's sockets.
    pub local: Arc<dyn LocalSockets>,
    /// Cluster-wide notices.
    pub notifier: Arc<dyn RevokeNotifier>,
    /// Tunables.
    pub settings: RevocationSettings,
    /// Counters.
    pub stats: Arc<RevocationStats>,
    /// Wakes the worker when this instance enqueued something.
    pub wake: Arc<Notify>,
}

impl Revocation {
    /// Records `key` as revoked and enqueues its job. With `only_if_new`, nothing happens when
    /// it was revoked before. Returns the job id when a job was enqueued.
    pub async fn trigger(
        &self,
        project: &ProjectId,
        key: &ApiKeyId,
        reason: RevocationReason,
        only_if_new: bool,
    ) -> Result<Option<String>, QueueError> {
        let job = RevocationJob::new(project.clone(), key.clone(), reason);
        if !self.queue.enqueue(&job, only_if_new).await? {
            return Ok(None);
        }
        let queued = self.stats.queued.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!(crate::metrics::REVOCATION_JOBS, "event" => "queued").increment(1);
        tracing::info!(job_id = %job.id, project_id = %project, api_key_id = %key, ?reason, queued_total = queued, "revocation job queued");
        self.wake.notify_one();
        Ok(Some(job.id))
    }

    /// Whether a token signed by `key` may (still) open a private channel: the key is not
    /// revoked, exists, has not expired and keeps `sign_token`.
    pub async fn key_allows_channels(&self, key: &ApiKeyId) -> bool {
        if self.queue.is_revoked(key).await.unwrap_or(false) {
            return false;
        }
        match self.store.api_key(key).await {
            Ok(record) => check_signing_key(record.as_ref(), OffsetDateTime::now_utc()).is_ok(),
            // Unknown state: keep the socket; the next pass decides.
            Err(_) => true,
        }
    }

    /// After `project`'s signing secret was rotated: removes this instance's sockets that hold
    /// its private channels through tokens of an older secret, then tells the other instances
    /// to do the same. Returns the local sockets removed. A missed notice is caught up by
    /// every instance's reconciler.
    pub async fn secret_rotated(&self, project: &ProjectId) -> usize {
        let removed = self.check_project_secret(project).await;
        self.notifier.notify_rotated(project).await;
        removed
    }

    /// Removes this instance's sockets that hold `project`'s private channels through a
    /// secret other than its current one. Returns the sockets removed.
    pub async fn check_project_secret(&self, project: &ProjectId) -> usize {
        match self.store.project(project).await {
            Ok(Some(record)) => {
                let n = self
                    .local
                    .revoke_secret(project, record.signing_secret.id())
                    .await;
                if n > 0 {
                    self.stats
                        .sockets_removed
                        .fetch_add(n as u64, Ordering::Relaxed);
                    tracing::info!(project_id = %project, sockets = n, "removed sockets holding tokens of a rotated secret");
                }
                n
            }
            // A deleted project's sockets are disconnected by the deletion itself; an
            // unreachable store decides nothing (the next pass retries).
            Ok(None) => 0,
            Err(e) => {
                tracing::debug!(project_id = %project, error = %e, "cannot check the project's secret");
                0
            }
        }
    }

    /// One run of a job: notify until the key's tracking index is empty. Answers the rounds
    /// and what the key held when the run began (sockets, channel subscriptions), cluster-wide.
    async fn run(&self, claimed: &Claimed) -> Result<(usize, Removed), String> {
        let job = &claimed.job;
        let deadline = tokio::time::Instant::now() + self.settings.run_timeout;
        let removed = match self.tracker.by_api_key(&job.api_key_id).await {
            Ok(held) => Removed {
                sockets: held
                    .iter()
                    .map(|a| a.socket_id.as_str())
                    .collect::<HashSet<_>>()
                    .len(),
                channels: held.len(),
            },
            Err(_) => Removed::default(),
        };
        let mut rounds = 0usize;
        loop {
            self.notifier.notify(&job.api_key_id, job.reason).await;
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(if rounds == 1 { 50 } else { 1000 })).await;
            match self.tracker.by_api_key(&job.api_key_id).await {
                Ok(left) if left.is_empty() => return Ok((rounds, removed)),
                Ok(left) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "{} socket(s) still tracked after {:?}",
                            left.len(),
                            self.settings.run_timeout
                        ));
                    }
                }
                Err(e) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(e.to_string());
                    }
                }
            }
            let _ = self.queue.touch(claimed, &self.settings.consumer).await;
        }
    }

    /// Takes and runs jobs until the process ends (run it under a [`Supervisor`]).
    pub async fn run_worker(self: Arc<Self>) {
        loop {
            let claimed = match self.queue.claim(&self.settings.consumer).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    let _ = tokio::time::timeout(Duration::from_millis(250), self.wake.notified())
                        .await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot claim revocation jobs");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let job = &claimed.job;
            tracing::info!(job_id = %job.id, api_key_id = %job.api_key_id, attempt = job.attempt, consumer = %self.settings.consumer, "revocation job claimed");
            if !self.settings.job_delay.is_zero() {
                let end = tokio::time::Instant::now() + self.settings.job_delay;
                while tokio::time::Instant::now() < end {
                    let _ = self.queue.touch(&claimed, &self.settings.consumer).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let started = std::time::Instant::now();
            match self.run(&claimed).await {
                Ok((rounds, removed)) => {
                    if let Err(e) = self.queue.complete(&claimed).await {
                        tracing::warn!(job_id = %job.id, error = %e, "could not acknowledge revocation job; it will run again");
                        continue;
                    }
                    self.webhooks.emit(
                        &job.project_id,
                        crate::webhooks::WebhookEventType::ApiKeyRevoked,
                        serde_json::json!({
                            "apiKeyId": job.api_key_id.to_string(),
                            "reason": job.reason.as_str(),
                            "socketsRemoved": removed.sockets,
                            "channelsRemoved": removed.channels,
                        }),
                    );
                    let done = self.stats.done.fetch_add(1, Ordering::Relaxed) + 1;
                    metrics::counter!(crate::metrics::REVOCATION_JOBS, "event" => "done")
                        .increment(1);
                    tracing::info!(job_id = %job.id, api_key_id = %job.api_key_id, rounds, elapsed_ms = started.elapsed().as_millis() as u64, done_total = done, "revocation job done");
                }
                Err(error) if job.attempt + 1 >= self.settings.max_attempts => {
                    let dead = self.stats.dead.fetch_add(1, Ordering::Relaxed) + 1;
                    metrics::counter!(crate::metrics::REVOCATION_JOBS, "event" => "dead")
                        .increment(1);
                    tracing::error!(job_id = %job.id, api_key_id = %job.api_key_id, %error, dead_total = dead, "revocation job dead-lettered");
                    let _ = self.queue.dead_letter(&claimed, &error).await;
                }
                Err(error) => {
                    let delay = self.settings.retry_base * 2u32.saturating_pow(job.attempt);
                    let retried = self.stats.retried.fetch_add(1, Ordering::Relaxed) + 1;
                    metrics::counter!(crate::metrics::REVOCATION_JOBS, "event" => "retried")
                        .increment(1);
                    tracing::warn!(job_id = %job.id, api_key_id = %job.api_key_id, %error, retry_in_ms = delay.as_millis() as u64, retried_total = retried, "revocation job failed; retrying");
                    let _ = self.queue.retry_later(&claimed, delay).await;
                }
            }
        }
    }

    /// Fires `ApiKeyExpired` for keys past their expiry, once per key across the cluster (run
    /// it under a [`Supervisor`]).
    pub async fn run_scheduler(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.schedule_interval);
        loop {
            tick.tick().await;
            let now = OffsetDateTime::now_utc();
            let keys = match self.store.all_api_keys().await {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::debug!(error = %e, "expiry scheduler cannot list keys");
                    continue;
                }
            };
            for key in keys.iter().filter(|k| k.is_expired_at(now)) {
                if let Err(e) = self
                    .trigger(&key.project_id, &key.id, RevocationReason::Expired, true)
                    .await
                {
                    tracing::debug!(api_key_id = %key.id, error = %e, "expiry trigger failed; next tick retries");
                }
            }
        }
    }

    /// Re-checks this instance's private-channel sockets against the stored state (their keys,
    /// and the project secrets that verified their tokens) every `reconcile_interval`, and at once when `kick` is notified (Redis link back). Run it
    /// under a [`Supervisor`].
    pub async fn run_reconciler(self: Arc<Self>, kick: Arc<Notify>) {
        loop {
            let _ = tokio::time::timeout(self.settings.reconcile_interval, kick.notified()).await;
            self.reconcile_once().await;
        }
    }

    /// One reconciliation pass; returns the sockets removed.
    pub async fn reconcile_once(&self) -> usize {
        let mut removed = 0;
        for key in self.local.keys_in_use() {
            if !self.key_allows_channels(&key).await {
                let reason = match self.store.api_key(&key).await {
                    Ok(None) => RevocationReason::Deleted,
                    Ok(Some(k)) if k.is_expired_at(OffsetDateTime::now_utc()) => {
                        RevocationReason::Expired
                    }
                    _ => RevocationReason::NoLongerValid,
                };
                let n = self.local.revoke_key(&key, reason).await;
                if n > 0 {
                    tracing::info!(api_key_id = %key, sockets = n, "reconciler removed sockets of a revoked key");
                }
                removed += n;
            }
        }
        for (project, secrets) in self.local.secrets_in_use() {
            let current = match self.store.project(&project).await {
                Ok(Some(record)) => record.signing_secret.id(),
                _ => continue,
            };
            if secrets.iter().any(|s| *s != current) {
                removed += self.local.revoke_secret(&project, current).await;
            }
        }
        removed
    }
}
