//! Pub/sub liveness probe and readiness.
//!
//! A subscriber connection can be up yet deaf (its subscriptions lost, e.g. after
//! `CLIENT KILL TYPE pubsub` raced a reconnect). Every `interval` each instance publishes a
//! numbered probe on its own probe shard channel through its *command* connection; the
//! message must come back through the *subscriber* connection, the path cross-instance events
//! take. No probe back for 3 intervals: re-subscribe everything; still nothing 3 intervals
//! later: force the subscriber to reconnect. A re-subscription that failed is retried every
//! interval until one succeeds (meanwhile the event bus does not confirm deliveries).
//!
//! Readiness (`/readyz`) is the conjunction of: namespace initialised on the adapter, command
//! connection answering `PING`, subscriber connected, and the probe seen recently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::{ClientLike, PubsubInterface};
use parking_lot::Mutex;

use super::driver::HeraldDriver;
use crate::app::Health;
use crate::supervise::AbortOnDrop;

/// Probe counters.
#[derive(Debug, Default)]
pub struct ProbeStats {
    /// Probes published.
    pub sent: AtomicU64,
    /// Probes that came back.
    pub received: AtomicU64,
    /// Repairs (re-subscriptions or forced reconnects) the probe triggered.
    pub repairs: AtomicU64,
}

/// Inputs of the readiness loop.
#[derive(Clone)]
pub struct Probe {
    /// The command connection.
    pub client: Client,
    /// The adapter's driver (subscriber connection).
    pub driver: HeraldDriver,
    /// This instance's probe channel.
    pub channel: String,
    /// Probe period.
    pub interval: Duration,
    /// Set once the Socket.IO namespace is initialised on the adapter.
    pub namespace_ready: Arc<AtomicBool>,
    /// Where readiness is reported.
    pub health: Arc<Health>,
    /// Counters.
    pub stats: Arc<ProbeStats>,
}

impl Probe {
    /// Runs forever (run it under a [`crate::supervise::Supervisor`]); returns when its
    /// receiving side ended, so that the supervisor starts both again.
    pub async fn run(self) {
        let last_seen = Arc::new(Mutex::new(None::<Instant>));
        // Receiving side: subscribe (retrying until Redis is there) and record arrivals.
        let rx_task = {
            let driver = self.driver.clone();
            let channel = self.channel.clone();
            let last_seen = last_seen.clone();
            let stats = self.stats.clone();
            AbortOnDrop(tokio::spawn(async move {
                let mut rx = loop {
                    match driver.subscribe_internal(channel.clone()).await {
                        Ok(rx) => break rx,
                        Err(e) => {
                            tracing::debug!(error = %e, "probe subscription failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                };
                while rx.recv().await.is_some() {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    *last_seen.lock() = Some(Instant::now());
                }
            }))
        };

        let started = Instant::now();
        let mut ticker = tokio::time::interval(self.interval);
        let mut repaired_at: Option<Instant> = None;
        let mut seq: u64 = 0;
        loop {
            ticker.tick().await;
            seq += 1;
            if self
                .client
                .spublish::<u64, _, _>(self.channel.as_str(), seq.to_string())
                .await
                .is_ok()
            {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            let stale_after = self.interval * 3;
            let seen = *last_seen.lock();
            let deaf = match seen {
                Some(t) => t.elapsed() > stale_after,
                None => started.elapsed() > stale_after,
            };
            let sub_up = self.driver.client().is_connected();
            if deaf && sub_up {
                match repaired_at {
                    Some(t) if t.elapsed() < stale_after => {}
                    Some(_) => {
                        tracing::error!(
                            "pub/sub still deaf after re-subscribing; forcing the subscriber to reconnect"
                        );
                        self.stats.repairs.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(crate::metrics::REDIS_PROBE_REPAIRS).increment(1);
                        let _ = self.driver.client().force_reconnection().await;
                        repaired_at = Some(Instant::now());
                    }
                    None => {
                        tracing::warn!("pub/sub probe not received; re-subscribing all channels");
                        self.stats.repairs.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(crate::metrics::REDIS_PROBE_REPAIRS).increment(1);
                        self.driver.resubscribe_all().await;
                        repaired_at = Some(Instant::now());
                    }
                }
            } else if !deaf {
                repaired_at = None;
                if sub_up && self.driver.resubscribe_pending() {
                    // A re-subscription failed (Redis paused, say) though the link works:
                    // until one succeeds the event bus answers 503, so try again.
                    tracing::info!("retrying a failed re-subscription");
                    self.driver.resubscribe_all().await;
                }
            }
            let ping_ok = tokio::time::timeout(self.interval, self.client.ping::<String>(None))
                .await
                .is_ok_and(|r| r.is_ok());
            let ready = self.namespace_ready.load(Ordering::Acquire) && ping_ok && sub_up && !deaf;
            let was = self.health.is_backend_ready();
            if ready != was {
                if ready {
                    tracing::info!("redis backends ready");
                } else {
                    tracing::warn!(
                        ping_ok,
                        subscriber_connected = sub_up,
                        probe_deaf = deaf,
                        "redis backends not ready"
                    );
                }
            }
            self.health.set_backend_ready(ready);
            if rx_task.is_finished() {
                tracing::error!("probe receiver ended");
                return;
            }
        }
    }
}
