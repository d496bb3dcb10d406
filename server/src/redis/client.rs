//! fred clients configured deliberately: RESP3 (socketioxide-redis needs it), reconnect
//! forever with exponential backoff, and timeouts on every command so a dead Redis turns into
//! quick `unavailable` answers instead of hung requests.

use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
use fred::types::RespVersion;

/// Slots of each of fred's event broadcast channels (pub/sub messages, reconnects, errors,
/// …; eight per client). tokio allocates and initialises every slot when a channel is
/// created, so 65 536 slots cost about 40 MB per client before any traffic. The driver's
/// hand-off takes each pub/sub message out of the channel as fred sends it
/// ([`super::driver`]), so a few slots are enough; reconnect notices come one at a time.
pub const FRED_BROADCAST_CAPACITY: usize = 256;

/// How Herald talks to Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Timeout of any single command.
    pub command_timeout: Duration,
    /// Timeout of establishing a connection.
    pub connect_timeout: Duration,
    /// Reconnect backoff: first delay.
    pub reconnect_min: Duration,
    /// Reconnect backoff: largest delay.
    pub reconnect_max: Duration,
}

impl RedisSettings {
    /// Settings for `url` with Herald's defaults (2 s commands, 2 s connect, 100 ms → 5 s backoff).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }

    fn builder(&self) -> Result<Builder, fred::error::Error> {
        let mut config = Config::from_url(&self.url)?;
        // fred does not read `?protocol=resp3` from the URL.
        config.version = RespVersion::RESP3;
        // Start even when Redis is down; the reconnect policy applies to the first connection.
        config.fail_fast = false;
        let mut builder = Builder::from_config(config);
        let (command_timeout, connect_timeout) = (self.command_timeout, self.connect_timeout);
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = command_timeout;
                // Every slot of fred's event channels is allocated up front: keep them small.
                // Messages do not wait there; the driver's hand-over queue is the room for
                // bursts ([`super::driver::MESSAGE_QUEUE_CAPACITY`]).
                p.broadcast_channel_capacity = FRED_BROADCAST_CAPACITY;
            })
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = command_timeout;
                c.max_command_attempts = 2;
            })
            .set_policy(ReconnectPolicy::new_exponential(
                0, // retry forever
                u32::try_from(self.reconnect_min.as_millis()).unwrap_or(100),
                u32::try_from(self.reconnect_max.as_millis()).unwrap_or(5_000),
                2,
            ));
        Ok(builder)
    }

    /// A command client; it connects in the background.
    pub fn command_client(&self) -> Result<Client, fred::error::Error> {
        let client = self.builder()?.build()?;
        client.connect();
        Ok(client)
    }

    /// A subscriber client (for the Socket.IO adapter); it connects in the background.
    pub fn subscriber_client(&self) -> Result<SubscriberClient, fred::error::Error> {
        let client = self.builder()?.build_subscriber_client()?;
        client.connect();
        Ok(client)
    }
}
