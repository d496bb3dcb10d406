//! Herald's event bus between instances: one Redis shard channel (`{prefix}:events`) carrying
//! batches of [`crate::fanout::BusMessage`]s through the subscriber connection Herald's driver
//! manages (re-subscribed after reconnects, checked by the probe, nothing dropped on the way
//! in).
//!
//! Every instance delivers to its own sockets first and then publishes here; the others
//! deliver to theirs. Local subscribers never wait on Redis. Under load, messages waiting
//! while a `SPUBLISH` is in flight leave together in the next one (one Redis round trip, one
//! message to parse on each instance, for up to [`MAX_BATCH`] events).
//!
//! ## What `Ok` means
//!
//! Every instance subscribes to the channel, so `SPUBLISH` answers how many instances took a
//! batch. A publish resolves `Ok` only when that number is what the [`PeerView`] expects (this
//! instance and every peer believed alive; see [`Expected::is_met_by`]) and this instance's
//! own subscription is not being re-established. When Redis fails or the queue is full it
//! resolves [`FanoutError::Unavailable`]; when Redis took the batch but fewer instances than
//! expected were subscribed, [`FanoutError::Unconfirmed`]: an instance whose subscription is
//! down catches up from history once it is back ([`super::gap`]), so the publish answers
//! `200` for a project with history on and `503 unavailable` otherwise.
//!
//! ## Exactly once
//!
//! fred may write a command again after a reconnect (`max_command_attempts`), and a command
//! that timed out may still run later, so one batch can reach Redis twice. Batches are
//! numbered per sender and a receiver applies only batches numbered above the last one it
//! applied from that sender. A batch answered `Ok` is never skipped this way: the sender
//! sends the next batch only after the previous one's reply.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::interfaces::PubsubInterface;
use tokio::sync::{mpsc, oneshot};

use super::driver::HeraldDriver;
use super::peers::{Expected, PeerView};
use crate::fanout::{
    BatchBody, Bus, Fanout, FanoutError, decode_batch, encode_batch, encode_leave,
};
use crate::metrics as m;
use crate::supervise::Supervisor;

/// Most messages in one batch.
pub const MAX_BATCH: usize = 256;

/// Most messages waiting for the sender; a publish beyond it is refused (`503`) and counted.
pub const QUEUE_CAPACITY: usize = 16_384;

/// Most senders whose last batch number a receiver remembers; beyond it, those not heard
/// from for [`ORIGIN_MEMORY`] are forgotten.
const MAX_ORIGINS: usize = 1_024;
const ORIGIN_MEMORY: Duration = Duration::from_secs(3_600);

/// Longest wait for the leave notice on shutdown (Redis answers one in a millisecond).
pub const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);

type Pending = (Vec<u8>, oneshot::Sender<Result<(), Unconfirmed>>);

/// Why a batch is not confirmed.
#[derive(Debug, Clone)]
enum Unconfirmed {
    /// Redis did not answer the `SPUBLISH` (or the bus stopped): the batch may have reached
    /// no instance, and none knows it missed it.
    Failed(String),
    /// Redis ran the `SPUBLISH` and handed the batch to every instance subscribed at that
    /// moment, but that is not every instance expected: one whose subscription is down or
    /// being re-established (which catches up from history once it is back, see
    /// [`super::gap`]), or one not yet in the peer view.
    Short(String),
}

/// The Redis side of [`Bus`].
pub struct RedisBus {
    origin: String,
    queue: mpsc::Sender<Pending>,
    client: fred::clients::Client,
    channel: String,
}

impl RedisBus {
    /// A bus on `channel`, sending as `origin` (the instance id), checking each batch's reach
    /// against `peers` and `driver`'s subscription state; starts its batching task
    /// (`bus_sender`) under `tasks`. A restarted sender takes over the same queue and goes on
    /// numbering batches where the last run stopped, so no other instance skips its batches
    /// as replays.
    pub fn new(
        client: fred::clients::Client,
        channel: String,
        origin: String,
        peers: Arc<PeerView>,
        driver: HeraldDriver,
        tasks: &Supervisor,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let sender = Sender {
            client: client.clone(),
            channel: channel.clone(),
            origin: origin.clone(),
            peers,
            driver,
            seq: Arc::default(),
        };
        tasks.spawn("bus_sender", move || {
            let (sender, rx) = (sender.clone(), rx.clone());
            async move { sender.run(&mut *rx.lock().await).await }
        });
        Arc::new(Self {
            origin,
            queue,
            client,
            channel,
        })
    }

    /// Tells the other instances this one is shutting down cleanly, so that they stop
    /// requiring it ([`PeerView::left`]). Best effort, bounded by [`LEAVE_TIMEOUT`] so a
    /// shutdown with Redis down is not held up: an instance that misses it stops requiring
    /// this one an instance TTL after its last heartbeat.
    pub async fn leave(&self) {
        let notice = self
            .client
            .spublish::<u64, _, _>(self.channel.as_str(), encode_leave(&self.origin));
        match tokio::time::timeout(LEAVE_TIMEOUT, notice).await {
            Ok(Ok(_)) => tracing::debug!("left the event bus"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not announce leaving the event bus"),
            Err(_) => tracing::warn!("could not announce leaving the event bus: timed out"),
        }
    }

    /// Receives the other instances' batches on `channel` (retrying the subscription until
    /// Redis answers) and applies them to this instance's sockets, in order, each once.
    pub async fn listen(
        channel: String,
        origin: String,
        driver: HeraldDriver,
        fanout: Arc<Fanout>,
        peers: Arc<PeerView>,
    ) {
        let mut rx = loop {
            match driver.subscribe_internal(channel.clone()).await {
                Ok(rx) => break rx,
                Err(e) => {
                    tracing::debug!(error = %e, "event bus subscription failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let mut applied = Applied::default();
        while let Some(raw) = rx.recv().await {
            let Some(batch) = decode_batch(&raw) else {
                tracing::warn!("malformed bus batch ignored");
                continue;
            };
            if batch.origin == origin {
                continue;
            }
            match batch.body {
                BatchBody::Leave => {
                    tracing::info!(instance = %batch.origin, "an instance left the event bus");
                    peers.left(batch.origin, Instant::now());
                }
                BatchBody::Messages { seq, messages } => {
                    if let Some(seq) = seq
                        && !applied.first_time(batch.origin, seq, Instant::now())
                    {
                        metrics::counter!(m::BUS_REPLAYS_SKIPPED).increment(1);
                        tracing::debug!(instance = %batch.origin, seq, "bus batch already applied; skipped");
                        continue;
                    }
                    fanout.on_bus_messages(&messages).await;
                }
            }
        }
    }
}

/// The last batch number applied from each sender.
#[derive(Default)]
struct Applied {
    last: HashMap<String, (u64, Instant)>,
}

impl Applied {
    /// Whether batch `seq` of `origin` is to be applied (numbered above the last one applied),
    /// remembering it if so.
    fn first_time(&mut self, origin: &str, seq: u64, now: Instant) -> bool {
        if let Some((last, seen)) = self.last.get_mut(origin) {
            if seq <= *last {
                return false;
            }
            *last = seq;
            *seen = now;
            return true;
        }
        if self.last.len() >= MAX_ORIGINS {
            self.last
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < ORIGIN_MEMORY);
        }
        if self.last.len() < MAX_ORIGINS {
            self.last.insert(origin.to_owned(), (seq, now));
        }
        true
    }
}

#[derive(Clone)]
struct Sender {
    client: fred::clients::Client,
    channel: String,
    origin: String,
    peers: Arc<PeerView>,
    driver: HeraldDriver,
    /// The last batch number sent (kept across restarts of the task).
    seq: Arc<AtomicU64>,
}

impl Sender {
    async fn run(self, rx: &mut mpsc::Receiver<Pending>) {
        let mut messages = Vec::new();
        let mut waiters = Vec::new();
        while let Some((first, done)) = rx.recv().await {
            messages.push(first);
            waiters.push(done);
            while messages.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok((m, done)) => {
                        messages.push(m);
                        waiters.push(done);
                    }
                    Err(_) => break,
                }
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let batch = encode_batch(&self.origin, seq, &messages);
            messages.clear();
            let reply = self
                .client
                .spublish::<i64, _, _>(self.channel.as_str(), batch)
                .await;
            let result = self.judge(reply);
            if let Err(reason) = &result {
                metrics::counter!(m::BUS_UNCONFIRMED).increment(waiters.len() as u64);
                tracing::debug!(?reason, events = waiters.len(), "bus batch not confirmed");
            }
            for done in waiters.drain(..) {
                let _ = done.send(result.clone());
            }
        }
    }

    /// Whether a batch's `SPUBLISH` reply confirms that every instance took it.
    fn judge(&self, reply: Result<i64, fred::error::Error>) -> Result<(), Unconfirmed> {
        let reached = reply.map_err(|e| Unconfirmed::Failed(e.to_string()))?;
        let reached = usize::try_from(reached).unwrap_or(0);
        if self.driver.is_resubscribing() {
            return Err(Unconfirmed::Short(
                "this instance's bus subscription is being re-established".into(),
            ));
        }
        let expected: Expected = self.peers.expected(Instant::now());
        if expected.is_met_by(reached) {
            return Ok(());
        }
        if reached > expected.max {
            // A new instance not yet in the view, or a foreign subscriber: look again now.
            self.peers.request_refresh();
            return Err(Unconfirmed::Short(format!(
                "the event bus has {reached} subscribers but {} instances are known; \
                 cannot confirm every instance took the event",
                expected.max
            )));
        }
        Err(Unconfirmed::Short(format!(
            "the event reached {reached} of {} instances",
            expected.min
        )))
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn origin(&self) -> &str {
        &self.origin
    }

    async fn publish(&self, message: Vec<u8>) -> Result<(), FanoutError> {
        let (done, result) = oneshot::channel();
        self.queue.try_send((message, done)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!(m::BUS_REFUSED).increment(1);
                FanoutError::Unavailable("event bus queue full".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                FanoutError::Unavailable("event bus stopped".into())
            }
        })?;
        match result.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Unconfirmed::Failed(e))) => Err(FanoutError::Unavailable(e)),
            Ok(Err(Unconfirmed::Short(e))) => Err(FanoutError::Unconfirmed(e)),
            Err(_) => Err(FanoutError::Unavailable("event bus stopped".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_applied_once_and_never_after_a_later_one() {
        let mut applied = Applied::default();
        let now = Instant::now();
        assert!(applied.first_time("a", 1, now));
        assert!(!applied.first_time("a", 1, now), "the same batch again");
        assert!(applied.first_time("a", 3, now));
        assert!(
            !applied.first_time("a", 2, now),
            "an earlier batch run late"
        );
        assert!(applied.first_time("b", 1, now), "numbers are per sender");
    }

    #[test]
    fn the_memory_of_senders_is_bounded() {
        let mut applied = Applied::default();
        let t0 = Instant::now();
        for i in 0..MAX_ORIGINS {
            assert!(applied.first_time(&format!("old-{i}"), 1, t0));
        }
        let later = t0 + ORIGIN_MEMORY + Duration::from_secs(1);
        assert!(applied.first_time("new", 1, later));
        assert_eq!(
            applied.last.len(),
            1,
            "senders silent for an hour forgotten"
        );
        assert!(!applied.first_time("new", 1, later));
    }
}
