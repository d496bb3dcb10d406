//! Herald's event bus between instances: one Redis shard channel (`{prefix}:events`) carrying
//! batches of [`crate::fanout::BusMessage`]s through the subscriber connection Herald's driver
//! manages (re-subscribed after reconnects, checked by the probe, nothing dropped on the way
//! in).
//!
//! Every instance delivers to its own sockets first and then publishes here; the others
//! deliver to theirs. Local subscribers never wait on Redis. Under load, messages waiting
//! while a `SPUBLISH` is in flight leave together in the next one (one Redis round trip, one
//! message to parse on each instance, for up to [`MAX_BATCH`] events).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::PubsubInterface;
use tokio::sync::{mpsc, oneshot};

use super::driver::HeraldDriver;
use crate::fanout::{Bus, Fanout, FanoutError, encode_batch};

/// Most messages in one batch.
pub const MAX_BATCH: usize = 256;

type Pending = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// The Redis side of [`Bus`].
pub struct RedisBus {
    origin: String,
    queue: mpsc::UnboundedSender<Pending>,
}

impl RedisBus {
    /// A bus on `channel`, sending as `origin` (the instance id); starts its batching task.
    pub fn new(client: fred::clients::Client, channel: String, origin: String) -> Arc<Self> {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(client, channel, origin.clone(), rx));
        Arc::new(Self { origin, queue })
    }

    /// Receives the other instances' batches on `channel` (retrying the subscription until
    /// Redis answers) and applies them to this instance's sockets, in order.
    pub async fn listen(channel: String, driver: HeraldDriver, fanout: Arc<Fanout>) {
        let mut rx = loop {
            match driver.subscribe_internal(channel.clone()).await {
                Ok(rx) => break rx,
                Err(e) => {
                    tracing::debug!(error = %e, "event bus subscription failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        while let Some(raw) = rx.recv().await {
            fanout.on_bus_batch(&raw).await;
        }
    }
}

async fn send_batches(
    client: fred::clients::Client,
    channel: String,
    origin: String,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
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
        let batch = encode_batch(&origin, &messages);
        messages.clear();
        let result = client
            .spublish::<u64, _, _>(channel.as_str(), batch)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        for done in waiters.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn origin(&self) -> &str {
        &self.origin
    }

    async fn publish(&self, message: Vec<u8>) -> Result<(), FanoutError> {
        let (done, result) = oneshot::channel();
        self.queue
            .send((message, done))
            .map_err(|_| FanoutError::Unavailable("event bus stopped".into()))?;
        match result.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(FanoutError::Unavailable(e)),
            Err(_) => Err(FanoutError::Unavailable("event bus stopped".into())),
        }
    }
}
