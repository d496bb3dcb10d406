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
//!
//! ## Memory: the hand-over queue
//!
//! fred delivers messages on a `tokio::sync::broadcast` channel, which allocates (and writes)
//! every slot when it is created, and fred sizes all eight of each client's event channels
//! (messages, reconnects, errors, keyspace events, …) with the same capacity. Sized for bursts
//! (65 536 slots), that was about 40 MB per client, 80 MB for Herald's two, before a single
//! message. So fred's channels stay small ([`super::client::FRED_BROADCAST_CAPACITY`]) and
//! messages do not wait there: a [`Handoff`] moves each one, as fred sends it, into a bounded
//! `mpsc` queue of [`MESSAGE_QUEUE_CAPACITY`] messages, which allocates blocks as messages
//! arrive and frees them as the dispatcher takes them. The bound and its counter
//! (`dropped_lagged`) are the ones fred's broadcast had: a message that finds the queue full is
//! dropped and counted.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Message;
use parking_lot::{Mutex, RwLock};
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
    /// Messages lost on the way from fred to the dispatcher: the hand-over queue
    /// ([`MESSAGE_QUEUE_CAPACITY`]) was full, or fred's broadcast channel lagged.
    pub dropped_lagged: AtomicU64,
    /// Re-subscriptions performed (after reconnects or probe repairs).
    pub resubscriptions: AtomicU64,
}

type Handlers = HashMap<String, mpsc::Sender<ChanItem>>;

/// Most messages from Redis waiting for the dispatcher; one more is dropped and counted in
/// [`DriverStats::dropped_lagged`]. Room for bursts of cross-instance messages; the queue
/// holds memory only for the messages in it.
pub const MESSAGE_QUEUE_CAPACITY: usize = 65_536;

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
    /// Counts the re-subscriptions that succeeded: after each, rooms catch up on what the
    /// subscription missed ([`super::gap`]).
    resubscribed: Arc<tokio::sync::watch::Sender<u64>>,
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
            resubscribed: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        let d = driver.clone();
        tasks.spawn("redis_dispatch", move || {
            let queue = Handoff::start(d.conn.message_rx(), d.stats.clone());
            dispatch(
                queue,
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
        self.resubscribed.send_modify(|n| *n += 1);
    }

    /// Changes after every successful re-subscription ([`Self::resubscribe_all`]): the
    /// subscription may have missed messages before it.
    pub fn resubscriptions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.resubscribed.subscribe()
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

/// The receiving side of a [`Handoff`]; stops the hand-over when dropped.
pub(crate) struct HandoffQueue {
    rx: mpsc::Receiver<Message>,
    handoff: Arc<Handoff>,
}

impl HandoffQueue {
    /// The next message; `None` once fred's channel closed.
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Drop for HandoffQueue {
    fn drop(&mut self) {
        // Unregisters the waker from fred's channel (it holds the hand-off: a cycle).
        *self.handoff.state.lock() = HandoffState::default();
    }
}

type RecvFuture = Pin<
    Box<
        dyn Future<
                Output = (
                    Result<Message, broadcast::error::RecvError>,
                    broadcast::Receiver<Message>,
                ),
            > + Send,
    >,
>;

fn recv_future(mut rx: broadcast::Receiver<Message>) -> RecvFuture {
    // Unconstrained: polled from fred's task (see `Handoff`), it must not spend that task's
    // cooperative budget, whose exhaustion would wake the hand-off again at once.
    Box::pin(tokio::task::unconstrained(async move {
        let r = rx.recv().await;
        (r, rx)
    }))
}

#[derive(Default)]
struct HandoffState {
    /// Waiting on fred's broadcast channel (registered with the hand-off as waker).
    recv: Option<RecvFuture>,
    /// Where messages go; `None` once fred's channel closed or the receiver went away.
    tx: Option<mpsc::Sender<Message>>,
}

/// Moves messages from fred's broadcast channel into a bounded `mpsc` queue as fred sends
/// them: the hand-off is the waker of its own receive, and fred's `send` wakes it
/// synchronously (tokio wakes receivers after releasing the channel's locks), so a message
/// spends no time in fred's ring and the ring can stay small. The queue grows block by block
/// up to [`MESSAGE_QUEUE_CAPACITY`] and frees them as they are read.
pub(crate) struct Handoff {
    state: Mutex<HandoffState>,
    /// Set by every wake; whoever holds `state` drains again until it stays clear.
    dirty: AtomicBool,
    stats: Arc<DriverStats>,
}

impl Handoff {
    /// Starts moving `rx`'s messages; they arrive on the returned queue.
    pub(crate) fn start(rx: broadcast::Receiver<Message>, stats: Arc<DriverStats>) -> HandoffQueue {
        Self::with_capacity(rx, stats, MESSAGE_QUEUE_CAPACITY)
    }

    fn with_capacity(
        rx: broadcast::Receiver<Message>,
        stats: Arc<DriverStats>,
        capacity: usize,
    ) -> HandoffQueue {
        let (tx, out) = mpsc::channel(capacity);
        let handoff = Arc::new(Self {
            state: Mutex::new(HandoffState {
                recv: Some(recv_future(rx)),
                tx: Some(tx),
            }),
            dirty: AtomicBool::new(false),
            stats,
        });
        handoff.drain();
        HandoffQueue { rx: out, handoff }
    }

    /// Moves every message waiting in fred's channel, then registers for the next one.
    fn drain(self: &Arc<Self>) {
        self.dirty.store(true, Ordering::SeqCst);
        while self.dirty.load(Ordering::SeqCst) {
            // Held elsewhere: that holder sees `dirty` and drains again.
            let Some(mut state) = self.state.try_lock() else {
                return;
            };
            self.dirty.store(false, Ordering::SeqCst);
            self.drain_locked(&mut state);
        }
    }

    fn drain_locked(self: &Arc<Self>, state: &mut HandoffState) {
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            let Some(recv) = state.recv.as_mut() else {
                return;
            };
            let (mut next, mut rx) = match recv.as_mut().poll(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(ready) => ready,
            };
            loop {
                match next {
                    Ok(msg) => {
                        if !self.forward(state, msg) {
                            *state = HandoffState::default();
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => self.lost(n),
                    Err(broadcast::error::RecvError::Closed) => {
                        *state = HandoffState::default();
                        return;
                    }
                }
                next = match rx.try_recv() {
                    Ok(msg) => Ok(msg),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                    Err(broadcast::error::TryRecvError::Empty) => break,
                };
            }
            state.recv = Some(recv_future(rx));
        }
    }

    /// Queues `msg`; `false` when nobody reads the queue any more.
    fn forward(&self, state: &HandoffState, msg: Message) -> bool {
        let Some(tx) = &state.tx else {
            return false;
        };
        match tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lost(1);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn lost(&self, n: u64) {
        self.stats.dropped_lagged.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(crate::metrics::REDIS_DROPPED, "reason" => "lagged").increment(n);
    }
}

impl Wake for Handoff {
    fn wake(self: Arc<Self>) {
        self.drain();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.drain();
    }
}

async fn dispatch(
    mut queue: HandoffQueue,
    handlers: Arc<RwLock<Handlers>>,
    internal: Arc<RwLock<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>>,
    stats: Arc<DriverStats>,
) {
    // Losses are counted where they happen (`Handoff`) and logged here, once per run of them.
    let mut logged_lost = stats.dropped_lagged.load(Ordering::Relaxed);
    while let Some(msg) = queue.recv().await {
        let total = stats.dropped_lagged.load(Ordering::Relaxed);
        if total > logged_lost {
            tracing::error!(
                lost = total - logged_lost,
                lost_total = total,
                "cross-instance messages lost: the queue of messages from redis was full"
            );
            logged_lost = total;
        }
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
                    metrics::counter!(crate::metrics::REDIS_DROPPED, "reason" => "queue_full")
                        .increment(1);
                    tracing::error!(channel = %chan, dropped_total = n, "cross-instance message dropped: adapter queue full");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            },
            None => {
                tracing::debug!(channel = %chan, "message on a channel without handler")
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::config::Server;
    use fred::types::{MessageKind, Value};

    fn message(i: usize) -> Message {
        Message {
            channel: "chan".into(),
            value: Value::from(i.to_string()),
            kind: MessageKind::SMessage,
            server: Server::new("127.0.0.1", 6379),
        }
    }

    /// Sends `n` messages on a broadcast channel of `ring` slots without yielding (as fred's
    /// reader does within one read) into a hand-off of `queue` messages; returns what the
    /// queue got, in order, and the messages counted lost.
    async fn burst(ring: usize, queue: usize, n: usize) -> (Vec<String>, u64) {
        let (tx, rx) = broadcast::channel(ring);
        let stats = Arc::new(DriverStats::default());
        let mut out = Handoff::with_capacity(rx, stats.clone(), queue);
        for i in 0..n {
            let _ = tx.send(message(i));
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(m) = out.recv().await {
            got.push(m.value.as_string().unwrap_or_default());
        }
        (got, stats.dropped_lagged.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_burst_far_beyond_freds_ring_arrives_whole_and_in_order() {
        let (got, lost) = burst(4, 10_000, 5_000).await;
        assert_eq!(lost, 0);
        let want: Vec<String> = (0..5_000).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn beyond_the_queue_bound_messages_are_dropped_and_counted() {
        let (got, lost) = burst(4, 100, 250).await;
        assert_eq!(got.len(), 100, "the bound holds");
        assert_eq!(lost, 150, "every message beyond it is counted");
        assert_eq!(got.first().map(String::as_str), Some("0"));
    }

    #[tokio::test]
    async fn messages_keep_flowing_while_the_reader_runs_on_other_threads() {
        let (tx, rx) = broadcast::channel(4);
        let stats = Arc::new(DriverStats::default());
        let mut out = Handoff::with_capacity(rx, stats.clone(), 100_000);
        let sender = std::thread::spawn(move || {
            for i in 0..20_000 {
                let _ = tx.send(message(i));
            }
        });
        let mut n = 0;
        while out.recv().await.is_some() {
            n += 1;
        }
        let _ = sender.join();
        assert_eq!(n, 20_000);
        assert_eq!(stats.dropped_lagged.load(Ordering::Relaxed), 0);
    }
}
