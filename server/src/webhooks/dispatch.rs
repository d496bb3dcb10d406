//! The `webhook_dispatcher` task: takes due deliveries from the outbox and attempts them.
//!
//! * At most one attempt per endpoint is in flight on an instance (the endpoint is `busy` for
//!   [`WebhookBackend::claim`]), and at most `--webhook-concurrency` in all: a receiver that
//!   hangs holds one slot for one timeout at a time, never the others' deliveries, and never
//!   anything on a socket's path. First attempts reach an endpoint in the order the events
//!   were recorded; a retried one may arrive after later events (each body carries its
//!   `timestamp`).
//! * An attempt: the body as recorded, signed at the attempt's time ([`super::sign`]), one
//!   `POST` with the per-attempt timeout, no redirects (a `3xx` is a failure), at most
//!   [`MAX_RESPONSE_BYTES`] of the answer read and dropped (never logged or kept).
//! * `2xx` delivers. Anything else retries after `retry_base × 4^(n−1)` (n attempts so far,
//!   up to `retry_max`, ±20 % jitter), or after the receiver's `Retry-After` when that is
//!   longer (up to `retry_max`); after `max_attempts` the delivery is failed (dead-lettered,
//!   listed, retried by hand).
//!
//! [`WebhookBackend::claim`]: super::WebhookBackend::claim

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::webhook::{DeliveryAttempt, DeliveryStatus, WebhookId};
use time::OffsetDateTime;
use tokio::task::JoinSet;

use super::{DeliveryRecord, WebhookRecord, WebhookSettings, Webhooks, now_ms, sign};
use crate::log_throttle::backend_faults;
use crate::metrics as m;

/// The most of a receiver's answer that is read (then dropped), so a connection can be kept.
pub const MAX_RESPONSE_BYTES: usize = 1024;

/// How often the dispatcher looks for due deliveries when nothing woke it.
const POLL: Duration = Duration::from_millis(200);

/// Runs the dispatcher until the process ends (under a [`crate::supervise::Supervisor`]).
pub async fn run(service: Arc<Webhooks>) {
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut busy: HashMap<tokio::task::Id, WebhookId> = HashMap::new();
    let concurrency = service.settings.concurrency.max(1);
    let lease_ms = service.settings.lease().as_millis() as i64;
    loop {
        let free = concurrency.saturating_sub(in_flight.len());
        let mut claimed_any = false;
        if free > 0 {
            let mut taken: Vec<WebhookId> = busy.values().cloned().collect();
            match service
                .backend
                .claim(now_ms(), lease_ms, free, &taken)
                .await
            {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        claimed_any = true;
                        if taken.contains(&delivery.webhook_id) {
                            // A second delivery of an endpoint in one claim: back to the
                            // outbox, due now, behind the one in flight.
                            let mut back = delivery;
                            back.due_ms = Some(now_ms());
                            let _ = service.backend.record_attempt(&back).await;
                            continue;
                        }
                        taken.push(delivery.webhook_id.clone());
                        let wid = delivery.webhook_id.clone();
                        let s = service.clone();
                        let handle = in_flight.spawn(async move { deliver(&s, delivery).await });
                        busy.insert(handle.id(), wid);
                        metrics::gauge!(m::WEBHOOK_IN_FLIGHT).set(in_flight.len() as f64);
                    }
                }
                Err(e) => {
                    if let Some(p) = backend_faults().check(&"webhook_claim") {
                        tracing::warn!(error = %e, suppressed = p.suppressed, "webhook outbox unavailable; deliveries wait");
                    }
                }
            }
        }
        if claimed_any && in_flight.len() < concurrency {
            // More may be due at once.
            tokio::task::yield_now().await;
        }
        tokio::select! {
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::error!(error = %e, "webhook attempt task failed; its delivery is retried after its lease");
                        e.id()
                    }
                };
                busy.remove(&id);
                metrics::gauge!(m::WEBHOOK_IN_FLIGHT).set(in_flight.len() as f64);
            }
            _ = service.wake.notified() => {}
            _ = tokio::time::sleep(POLL), if !claimed_any || in_flight.len() >= concurrency => {}
        }
    }
}

/// One claimed delivery: attempt it (when its endpoint still exists and is enabled) and write
/// the outcome back.
async fn deliver(service: &Webhooks, mut delivery: DeliveryRecord) {
    let endpoint = match service.endpoints(&delivery.project_id).await {
        Ok(list) => list.iter().find(|w| w.id == delivery.webhook_id).cloned(),
        Err(e) => {
            // Leave it claimed: it is due again when its lease runs out.
            tracing::debug!(error = %e, "webhook endpoints unavailable; delivery waits for its lease");
            return;
        }
    };
    let Some(endpoint) = endpoint else {
        if let Err(e) = service.backend.discard(&delivery).await {
            tracing::debug!(error = %e, "discarding a deleted webhook's delivery failed");
        }
        return;
    };
    let started_at = OffsetDateTime::now_utc();
    let started = std::time::Instant::now();
    let outcome = if endpoint.enabled {
        attempt(service, &endpoint, &delivery).await
    } else {
        Outcome::failed_without_answer("webhook_disabled")
    };
    let duration = started.elapsed();
    metrics::histogram!(m::WEBHOOK_ATTEMPT_DURATION).record(duration.as_secs_f64());
    delivery.attempts.push(DeliveryAttempt {
        at: started_at,
        duration_ms: duration.as_millis() as u64,
        status_code: outcome.status,
        error: outcome.error.clone(),
    });
    delivery.series_attempts += 1;
    let settings = &service.settings;
    let label = if outcome.delivered {
        delivery.status = DeliveryStatus::Delivered;
        delivery.due_ms = None;
        "delivered"
    } else if delivery.series_attempts >= settings.max_attempts || !endpoint.enabled {
        delivery.status = DeliveryStatus::Failed;
        delivery.due_ms = None;
        tracing::warn!(webhook_id = %delivery.webhook_id, delivery_id = %delivery.id, attempts = delivery.series_attempts, "webhook delivery failed; listed under its deliveries, retry it by hand");
        "failed"
    } else {
        let delay = retry_delay(settings, delivery.series_attempts, outcome.retry_after);
        delivery.status = DeliveryStatus::Pending;
        delivery.due_ms = Some(now_ms() + delay.as_millis() as i64);
        "retry"
    };
    metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => label).increment(1);
    tracing::debug!(webhook_id = %delivery.webhook_id, delivery_id = %delivery.id, status = ?outcome.status, error = ?outcome.error, outcome = label, "webhook attempt");
    if let Err(e) = service.backend.record_attempt(&delivery).await {
        // Not written: the lease runs out and the delivery is attempted again (at least once).
        if let Some(p) = backend_faults().check(&"webhook_record_attempt") {
            tracing::warn!(error = %e, suppressed = p.suppressed, "webhook attempt not recorded; it will be repeated");
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    delivered: bool,
    status: Option<u16>,
    error: Option<String>,
    retry_after: Option<Duration>,
}

impl Outcome {
    fn failed_without_answer(why: &str) -> Self {
        Self {
            delivered: false,
            status: None,
            error: Some(why.to_owned()),
            retry_after: None,
        }
    }
}

/// One `POST` of the delivery to the endpoint.
async fn attempt(
    service: &Webhooks,
    endpoint: &WebhookRecord,
    delivery: &DeliveryRecord,
) -> Outcome {
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    let now = OffsetDateTime::now_utc();
    let previous = endpoint
        .previous
        .as_ref()
        .filter(|p| p.until > now)
        .map(|p| &p.secret);
    let signature = sign::header(
        std::iter::once(&endpoint.secret).chain(previous),
        delivery.id.as_str(),
        timestamp,
        &delivery.body,
    );
    let request = service
        .client()
        .post(endpoint.url.as_str())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", delivery.id.as_str())
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(delivery.body.clone());
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::failed_without_answer(error_kind(&e)),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    // Read a little of the answer (so the connection can be reused), drop it.
    let mut response = response;
    let mut read = 0usize;
    while read < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    Outcome {
        delivered: status.is_success(),
        status: Some(status.as_u16()),
        error: status
            .is_redirection()
            .then(|| "redirect_not_followed".to_owned()),
        retry_after,
    }
}

/// A short, fixed description of a failed request (never the receiver's words).
fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_builder() {
        "invalid_url"
    } else if e.is_redirect() {
        "redirect_not_followed"
    } else {
        "request"
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc2822).ok()?;
    let secs = (at - OffsetDateTime::now_utc()).whole_seconds();
    Some(Duration::from_secs(secs.max(0) as u64))
}

/// The delay before the next attempt after `attempts` failed ones.
fn retry_delay(
    settings: &WebhookSettings,
    attempts: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exponent = attempts.saturating_sub(1).min(16);
    let ours = settings
        .retry_base
        .saturating_mul(4u32.saturating_pow(exponent))
        .min(settings.retry_max);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    let ours = ours.mul_f64(jitter);
    match retry_after {
        Some(theirs) if theirs > ours => theirs.min(settings.retry_max),
        _ => ours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_spans_about_an_hour() {
        let s = WebhookSettings::default();
        let total: Duration = (1..s.max_attempts)
            .map(|n| {
                s.retry_base
                    .saturating_mul(4u32.saturating_pow(n - 1))
                    .min(s.retry_max)
            })
            .sum();
        assert!(
            total > Duration::from_secs(55 * 60) && total < Duration::from_secs(70 * 60),
            "{total:?}"
        );
        // The first retry comes within seconds.
        let first = retry_delay(&s, 1, None);
        assert!(first >= Duration::from_millis(3_200) && first <= Duration::from_millis(4_800));
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap() {
        let s = WebhookSettings::default();
        assert_eq!(
            retry_delay(&s, 1, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        assert_eq!(
            retry_delay(&s, 1, Some(Duration::from_secs(86_400))),
            s.retry_max
        );
        // Shorter than ours: ours.
        assert!(retry_delay(&s, 3, Some(Duration::from_secs(1))) > Duration::from_secs(40));
        assert_eq!(parse_retry_after("30"), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
