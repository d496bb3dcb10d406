//! Herald's socketioxide-redis [`Driver`] on fred, replacing the stock fred driver.
//!
//! Why not the stock one: it drops a message without a count when the adapter's queue is full
//! (`try_send` + a log line), ignores fred's broadcast lag, and never re-subscribes after a
//! reconnect. This driver
//!
//! * counts every message it could not hand over ([`DriverStats`]), so a drop is visible on
//!   `/metrics`-style counters and in logs, never silent;
//! * keeps its own list of shard channels and re-subscribes all of them after every reconnect
//!   and whenever the pub/sub probe ([`super::probe`]) finds the link deaf;
//! * also carries Herald's own probe channel through the same subscriber connection, so the
//!   probe tests exactly the path cross-instance events take.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Message;
use parking_lot::RwLock;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{broadcast, mpsc};

use crate::supervise::Supervisor;

/// Counters of the driver's hand-over from Redis to the adapter.
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Messages received from Redis and handed to the adapter.
    pub delivered: AtomicU64,
    /// Messages dropped because the adapter's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Messages lost because fred's broadcast channel lagged.
    pub dropped_lagged: AtomicU64,
    /// Re-subscriptions performed (after reconnects or probe repairs).
    pub resubscriptions: AtomicU64,
}

type Handlers = HashMap<String, mpsc::Sender<ChanItem>>;

/// The driver. Cheap to clone.
#[derive(Clone)]
pub struct HeraldDriver {
    conn: SubscriberClient,
    handlers: Arc<RwLock<Handlers>>,
    /// Herald-internal channels (the probe) and where their messages go.
    internal: Arc<RwLock<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>>,
    stats: Arc<DriverStats>,
    /// Set while the subscriptions are being re-established (after a reconnect, or a repair
    /// by the probe) until every one of them succeeded.
    resubscribing: Arc<AtomicBool>,
}

/// The driver's error: fred's.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DriverError(#[from] fred::error::Error);

impl HeraldDriver {
    /// Wraps a subscriber client (configured with RESP3, reconnect policy and timeouts) and
    /// starts its dispatcher (`redis_dispatch`) and re-subscription (`redis_resubscribe`)
    /// tasks under `tasks`. Does not wait for Redis: the client connects (and reconnects) in
    /// the background.
    pub fn new(conn: SubscriberClient, tasks: &Supervisor) -> Self {
        let driver = Self {
            conn,
            handlers: Arc::default(),
            internal: Arc::default(),
            stats: Arc::default(),
            resubscribing: Arc::default(),
        };
        let d = driver.clone();
        tasks.spawn("redis_dispatch", move || {
            dispatch(
                d.conn.message_rx(),
                d.handlers.clone(),
                d.internal.clone(),
                d.stats.clone(),
            )
        });
        let d = driver.clone();
        tasks.spawn("redis_resubscribe", move || {
            resubscribe_on_reconnect(d.clone())
        });
        driver
    }

    /// The hand-over counters.
    pub fn stats(&self) -> &Arc<DriverStats> {
        &self.stats
    }

    /// The subscriber connection (for health checks).
    pub fn client(&self) -> &SubscriberClient {
        &self.conn
    }

    /// Whether this instance knows it may be missing messages: the subscriber connection is
    /// down, or its subscriptions are being re-established.
    pub fn is_resubscribing(&self) -> bool {
        !self.conn.is_connected() || self.resubscribing.load(Ordering::Acquire)
    }

    /// Whether a re-subscription began and none succeeded since: the probe retries it
    /// ([`super::probe`]).
    pub fn resubscribe_pending(&self) -> bool {
        self.resubscribing.load(Ordering::Acquire)
    }

    /// Subscribes every known channel again. Errors are logged; the probe tries again while
    /// [`Self::resubscribe_pending`]. [`Self::is_resubscribing`] holds from the call until one
    /// succeeds.
    pub async fn resubscribe_all(&self) {
        self.resubscribing.store(true, Ordering::Release);
        let mut channels: Vec<String> = self.handlers.read().keys().cloned().collect();
        channels.extend(self.internal.read().keys().cloned());
        for chan in channels {
            if let Err(e) = self.conn.ssubscribe(chan.as_str()).await {
                tracing::warn!(channel = %chan, error = %e, "re-subscription failed");
                // Also after a concurrent success: a needless retry, never a missed one.
                self.resubscribing.store(true, Ordering::Release);
                return;
            }
        }
        self.resubscribing.store(false, Ordering::Release);
        self.stats.resubscriptions.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribes a Herald-internal channel; its raw messages arrive on the returned receiver.
    pub async fn subscribe_internal(
        &self,
        chan: String,
    ) -> Result<mpsc::UnboundedReceiver<Vec<u8>>, DriverError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.internal.write().insert(chan.clone(), tx);
        self.conn.ssubscribe(chan.as_str()).await?;
        Ok(rx)
    }
}

/// Re-subscribes every channel after each reconnect of the subscriber connection.
async fn resubscribe_on_reconnect(driver: HeraldDriver) {
    let mut reconnects = driver.conn.reconnect_rx();
    loop {
        match reconnects.recv().await {
            Ok(server) => {
                driver.resubscribing.store(true, Ordering::Release);
                metrics::counter!(crate::metrics::REDIS_RECONNECTS).increment(1);
                tracing::info!(%server, "redis subscriber reconnected; re-subscribing");
                driver.resubscribe_all().await;
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                driver.resubscribe_all().await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn dispatch(
    mut rx: broadcast::Receiver<Message>,
    handlers: Arc<RwLock<Handlers>>,
    internal: Arc<RwLock<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>>,
    stats: Arc<DriverStats>,
) {
    loop {
        match rx.recv().await {
            Ok(msg) => {
                let chan = msg.channel.to_string();
                let Some(data) = msg.value.into_owned_bytes() else {
                    continue;
                };
                if let Some(tx) = internal.read().get(&chan) {
                    let _ = tx.send(data);
                    continue;
                }
                let tx = handlers.read().get(&chan).cloned();
                match tx {
                    Some(tx) => match tx.try_send((chan, data)) {
                        Ok(()) => {
                            stats.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Full((chan, _))) => {
                            let n = stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed) + 1;
                            metrics::counter!(crate::metrics::REDIS_DROPPED, "reason" => "queue_full").increment(1);
                            tracing::error!(channel = %chan, dropped_total = n, "cross-instance message dropped: adapter queue full");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    },
                    None => {
                        tracing::debug!(channel = %chan, "message on a channel without handler")
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let total = stats.dropped_lagged.fetch_add(n, Ordering::Relaxed) + n;
                metrics::counter!(crate::metrics::REDIS_DROPPED, "reason" => "lagged").increment(n);
                tracing::error!(
                    lost = n,
                    lost_total = total,
                    "cross-instance messages lost: redis message channel lagged"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Driver for HeraldDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.conn.spublish::<u16, _, _>(chan, val).await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        // Registered before SSUBSCRIBE so no message is lost between the two, and kept even
        // when SSUBSCRIBE fails: the next reconnect re-subscribes it.
        self.handlers.write().insert(chan.clone(), tx);
        self.conn.ssubscribe(chan.as_str()).await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers.write().remove(&chan);
        self.conn.sunsubscribe(chan).await?;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, num): (String, u16) = self.conn.pubsub_shardnumsub(chan).await?;
        Ok(num)
    }
}

/// Whether the subscriber connection is up.
pub fn is_connected(driver: &HeraldDriver) -> bool {
    driver.conn.is_connected()
}
