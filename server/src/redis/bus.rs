//! Herald's event bus between instances: one Redis shard channel (`{prefix}:events`) carrying
//! [`crate::fanout::BusMessage`]s through the subscriber connection Herald's driver manages
//! (re-subscribed after reconnects, checked by the probe, nothing dropped on the way in).
//!
//! Every instance delivers to its own sockets first and then publishes here; the others
//! deliver to theirs. Local subscribers never wait on Redis.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::PubsubInterface;

use super::driver::HeraldDriver;
use crate::fanout::{Bus, Fanout, FanoutError};

/// The Redis side of [`Bus`].
pub struct RedisBus {
    client: fred::clients::Client,
    channel: String,
    origin: String,
}

impl RedisBus {
    /// A bus on `channel`, sending as `origin` (the instance id).
    pub fn new(client: fred::clients::Client, channel: String, origin: String) -> Self {
        Self {
            client,
            channel,
            origin,
        }
    }

    /// Receives the other instances' messages (retrying the subscription until Redis
    /// answers) and applies them to this instance's sockets, in order.
    pub async fn listen(self: Arc<Self>, driver: HeraldDriver, fanout: Arc<Fanout>) {
        let mut rx = loop {
            match driver.subscribe_internal(self.channel.clone()).await {
                Ok(rx) => break rx,
                Err(e) => {
                    tracing::debug!(error = %e, "event bus subscription failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        while let Some(raw) = rx.recv().await {
            fanout.on_bus_message(&raw).await;
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn origin(&self) -> &str {
        &self.origin
    }

    async fn publish(&self, message: Vec<u8>) -> Result<(), FanoutError> {
        self.client
            .spublish::<u64, _, _>(self.channel.as_str(), message)
            .await
            .map(|_| ())
            .map_err(|e| FanoutError::Unavailable(e.to_string()))
    }
}
