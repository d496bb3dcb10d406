//! Redis mode (`--redis-url`): many Herald instances behind a load balancer.
//!
//! * fan-out: socketioxide-redis adapter on Herald's fred driver ([`driver`]);
//! * projects, keys, secrets: [`crate::store::redis::RedisStore`];
//! * connection tracking with instance ownership: [`crate::tracking::redis::RedisTracker`],
//!   kept alive by a heartbeat; a surviving instance sweeps a dead one's entries;
//! * events between instances: [`bus`], which answers `Ok` only for batches every instance
//!   in the [`peers`] view took;
//! * health: [`probe`] checks the pub/sub path end to end and drives `/readyz`.
//!
//! Herald starts even when Redis is down: clients reconnect in the background, `/readyz` says
//! not-ready, publish answers `503 unavailable`, and everything resumes when Redis is back.
//! An instance whose subscription was down catches its sockets up from history once it is
//! back, or tells them they missed events ([`gap`]).

pub mod bus;
pub mod client;
pub mod driver;
pub mod gap;
pub mod peers;
pub mod probe;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use socketioxide::adapter::Emitter;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

use crate::app::{self, AppState, Backends, Health};
use crate::config::ServeConfig;
use crate::gateway;
use crate::keys::AdminToken;
use crate::occupancy::redis::RedisOccupancy;
use crate::presence::Presences;
use crate::presence::redis::RedisPresence;
use crate::revocation::redis::RedisQueue;
use crate::revocation::{self, LocalSockets, Revocation, RevocationReason, RevokeNotifier};
use crate::store::redis::RedisStore;
use crate::supervise::Supervisor;
use crate::tracking::redis::RedisTracker;
use client::RedisSettings;
use driver::HeraldDriver;
use fred::clients::SubscriberClient;
use fred::interfaces::EventInterface;
use herald_protocol::{ApiKeyId, ProjectId};
use socketioxide::SocketIo;
use tokio::sync::{Notify, broadcast};

/// The Socket.IO adapter of Redis mode.
pub type HeraldAdapter = CustomRedisAdapter<Emitter, HeraldDriver>;

/// Heartbeat timing derived from `--instance-ttl-secs` (`ttl`): the heartbeat key lives `ttl`
/// and is refreshed every `ttl / 3`; every instance sweeps every `ttl / 2`. A dead instance's
/// sockets leave the tracking indexes at most `1.5 × ttl` after its last heartbeat.
fn heartbeat_timing(ttl: Duration) -> (Duration, Duration) {
    (ttl / 3, ttl / 2)
}
/// Pub/sub probe period.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Revocation notices over a Redis shard channel: `{ "key", "reason" }` (a key's
/// revocation) or `{ "rotated" }` (a project's secret rotation) JSON.
pub struct RedisNotifier {
    client: fred::clients::Client,
    channel: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Notice {
    Key {
        key: ApiKeyId,
        reason: RevocationReason,
    },
    Rotated {
        rotated: ProjectId,
    },
}

#[async_trait::async_trait]
impl RevokeNotifier for RedisNotifier {
    async fn notify(&self, key: &ApiKeyId, reason: RevocationReason) {
        self.publish(&Notice::Key {
            key: key.clone(),
            reason,
        })
        .await;
    }

    async fn notify_rotated(&self, project: &ProjectId) {
        self.publish(&Notice::Rotated {
            rotated: project.clone(),
        })
        .await;
    }
}

impl RedisNotifier {
    async fn publish(&self, notice: &Notice) {
        use fred::interfaces::PubsubInterface;
        let Ok(body) = serde_json::to_string(notice) else {
            return;
        };
        if let Err(e) = self
            .client
            .spublish::<u64, _, _>(self.channel.as_str(), body)
            .await
        {
            tracing::warn!(error = %e, "revocation notice not published; the reconciler catches up");
        }
    }

    /// Receives notices (retrying the subscription until Redis answers) and revokes locally.
    async fn listen(self: Arc<Self>, driver: HeraldDriver, revocation: Arc<Revocation>) {
        let mut rx = loop {
            match driver.subscribe_internal(self.channel.clone()).await {
                Ok(rx) => break rx,
                Err(e) => {
                    tracing::debug!(error = %e, "revocation channel subscription failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        while let Some(raw) = rx.recv().await {
            match serde_json::from_slice::<Notice>(&raw) {
                Ok(Notice::Key { key, reason }) => {
                    revocation.local.revoke_key(&key, reason).await;
                }
                Ok(Notice::Rotated { rotated }) => {
                    revocation.check_project_secret(&rotated).await;
                }
                Err(e) => tracing::warn!(error = %e, "malformed revocation notice"),
            }
        }
    }
}

/// Handles that must outlive the server loop.
pub struct RedisMode {
    tracker: Arc<RedisTracker>,
    bus: Arc<bus::RedisBus>,
    tasks: Supervisor,
}

impl RedisMode {
    /// Clean shutdown: tell the other instances to stop expecting this one on the event bus,
    /// stop background tasks and remove this instance's tracking entries.
    pub async fn shutdown(self) {
        self.bus.leave().await;
        self.tasks.shutdown();
        self.tracker.forget_instance().await;
    }
}

/// Builds state, router and background tasks for Redis mode.
pub fn start(
    config: &ServeConfig,
    url: &str,
    admin: AdminToken,
) -> anyhow::Result<(AppState, Router, RedisMode)> {
    let settings = RedisSettings::new(url);
    let client = settings
        .command_client()
        .context("configuring the redis client")?;
    let subscriber = settings
        .subscriber_client()
        .context("configuring the redis subscriber")?;
    let instance_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = config.redis_prefix.as_str();
    tracing::info!(instance_id = %instance_id, prefix, "redis mode");

    let store = Arc::new(RedisStore::new(client.clone(), prefix));
    let tracker = Arc::new(RedisTracker::new(
        client.clone(),
        prefix,
        instance_id.clone(),
    ));
    let presence = Arc::new(RedisPresence::new(
        client.clone(),
        prefix,
        instance_id.clone(),
    ));
    let queue = Arc::new(RedisQueue::new(
        client.clone(),
        prefix,
        Duration::from_secs(config.revocation_stale_secs.max(1)),
    ));
    let (webhook_events, webhook_intake) = crate::webhooks::WebhookEvents::channel();
    let gateway = app::gateway(
        config,
        Backends {
            webhook_events: webhook_events.clone(),
            store: store.clone(),
            tracker: tracker.clone(),
            revocations: queue.clone(),
            history: Arc::new(crate::history::redis::RedisHistory::new(
                client.clone(),
                prefix,
            )),
            sessions: Arc::new(crate::csr::RedisSessions::new(client.clone(), prefix)),
            presence: presence.clone(),
        },
    )?;

    // Every background task below runs under this supervisor: restarted when it fails, listed
    // by `/readyz`, stopped by `RedisMode::shutdown`.
    let health = Arc::new(Health::new(false));
    let tasks = health.tasks().clone();
    let driver = HeraldDriver::new(subscriber, &tasks);
    let adapter = RedisAdapterCtr::new_with_driver(
        driver.clone(),
        RedisAdapterConfig::new()
            .with_prefix(format!("{prefix}:sio"))
            .with_request_timeout(Duration::from_secs(2))
            .with_stream_buffer(65_536),
    );
    let (io_layer, io) = app::socket_io(config, &gateway)
        .with_adapter::<HeraldAdapter>(adapter)
        .build_layer();
    gateway.fanout.attach_sio(io.clone());
    let bus_channel = format!("{prefix}:events");
    let instance_ttl = Duration::from_secs(config.instance_ttl_secs.max(1));
    let peers = Arc::new(peers::PeerView::new(instance_id.clone(), instance_ttl));
    let bus = bus::RedisBus::new(
        client.clone(),
        bus_channel.clone(),
        instance_id.clone(),
        peers.clone(),
        driver.clone(),
        &tasks,
    );
    gateway.fanout.attach_bus(bus.clone());
    gateway
        .fanout
        .attach_history(gateway.histories.clone(), gateway.store.clone());

    let namespace_ready = Arc::new(AtomicBool::new(false));
    {
        let (io, ready) = (io.clone(), namespace_ready.clone());
        tasks.spawn_until_done("namespace", move || {
            register_namespace(io.clone(), ready.clone())
        });
    }
    {
        let probe = probe::Probe {
            client: client.clone(),
            driver: driver.clone(),
            channel: format!("{prefix}:probe#{instance_id}"),
            interval: PROBE_INTERVAL,
            namespace_ready,
            health: health.clone(),
            stats: Arc::default(),
        };
        tasks.spawn("probe", move || probe.clone().run());
    }
    let webhook_settings = config.webhook_settings();
    let occupancy_backend = Arc::new(RedisOccupancy::new(
        client.clone(),
        prefix,
        instance_id.clone(),
    ));
    gateway.occupancy.start(
        occupancy_backend.clone(),
        webhook_events.clone(),
        webhook_settings.vacated_delay,
        &tasks,
    );
    {
        let (tracker, presences) = (tracker.clone(), gateway.presence.clone());
        let ttl = Duration::from_secs(config.instance_ttl_secs.max(1));
        let delay = webhook_settings.vacated_delay;
        tasks.spawn("heartbeat", move || {
            heartbeat(
                tracker.clone(),
                presence.clone(),
                presences.clone(),
                occupancy_backend.clone(),
                delay,
                ttl,
            )
        });
    }

    // Revocation: notices travel on `{prefix}:revoke` through the subscriber connection; the
    // reconciler runs at once whenever that connection comes back.
    {
        let (origin, driver, fanout) =
            (instance_id.clone(), driver.clone(), gateway.fanout.clone());
        let peers = peers.clone();
        tasks.spawn("bus_listener", move || {
            bus::RedisBus::listen(
                bus_channel.clone(),
                origin.clone(),
                driver.clone(),
                fanout.clone(),
                peers.clone(),
            )
        });
    }
    {
        let (peers, tracker) = (peers.clone(), tracker.clone());
        tasks.spawn("bus_peers", move || peers.clone().run(tracker.clone()));
    }
    {
        let (driver, fanout) = (driver.clone(), gateway.fanout.clone());
        tasks.spawn("bus_catch_up", move || {
            catch_up_on_resubscribe(driver.clone(), fanout.clone())
        });
    }
    let sockets = Arc::new(gateway::GatewaySockets::new(io, &gateway));
    {
        let (client, sockets) = (client.clone(), sockets.clone());
        let occupancy = gateway.occupancy.clone();
        tasks.spawn("presence_reassert", move || {
            reassert_presence_on_reconnect(client.clone(), sockets.clone(), occupancy.clone())
        });
    }
    let local: Arc<dyn LocalSockets> = sockets;
    let notifier = Arc::new(RedisNotifier {
        client: client.clone(),
        channel: format!("{prefix}:revoke"),
    });
    let kick = Arc::new(Notify::new());
    let revocation = revocation::start(
        queue,
        store,
        tracker.clone(),
        local.clone(),
        notifier.clone(),
        config.revocation_settings(&instance_id),
        kick.clone(),
        webhook_events.clone(),
        &tasks,
    );
    let webhooks = crate::webhooks::Webhooks::start(
        Arc::new(crate::webhooks::redis::RedisWebhooks::new(
            client.clone(),
            prefix,
        )),
        webhook_settings,
        webhook_intake,
        webhook_events,
        gateway.store.clone(),
        &tasks,
    )?;
    {
        let driver = driver.clone();
        let revocation = revocation.clone();
        tasks.spawn("revocation_notices", move || {
            notifier.clone().listen(driver.clone(), revocation.clone())
        });
    }
    {
        let client = driver.client().clone();
        tasks.spawn("redis_reconnect_kick", move || {
            kick_on_reconnect(client.clone(), kick.clone())
        });
    }

    let state = AppState::new(config, gateway, admin, health, revocation, webhooks);
    let router = app::router(config, state.clone(), io_layer);
    Ok((
        state,
        router,
        RedisMode {
            tracker,
            bus,
            tasks,
        },
    ))
}

/// Registers the gateway on the adapter's default namespace. The namespace exists only once
/// the adapter subscribed its channels: retries until Redis answers. Until then socketioxide
/// has no default namespace, and every use of `io` (gateway, fan-out) finds none and skips the
/// socketioxide side ([`crate::fanout::default_namespace`]).
async fn register_namespace(io: SocketIo<HeraldAdapter>, ready: Arc<AtomicBool>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match gateway::register(&io).await {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tracing::info!("socket.io namespace ready on the redis adapter");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "adapter init failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Keeps this instance's heartbeat key alive and sweeps dead instances' tracking entries,
/// presence members (announcing each member removed) and channel occupancy.
async fn heartbeat(
    tracker: Arc<RedisTracker>,
    presence: Arc<RedisPresence>,
    presences: Arc<Presences>,
    occupancy: Arc<RedisOccupancy>,
    vacated_delay: Duration,
    ttl: Duration,
) {
    let (beat_every, sweep_every) = heartbeat_timing(ttl);
    let mut beat = tokio::time::interval(beat_every);
    let mut sweep = tokio::time::interval(sweep_every);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if let Err(e) = tracker.heartbeat(ttl).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
            _ = sweep.tick() => {
                match tracker.sweep_dead_instances().await {
                    Ok(removed) if !removed.is_empty() => {
                        tracing::info!(removed = removed.len(), "removed a dead instance's tracking entries");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "sweep failed"),
                }
                match presence.reap_dead_instances().await {
                    Ok(reaped) if !reaped.is_empty() => {
                        tracing::info!(members = reaped.len(), "removed a dead instance's presence members");
                        presences.announce_reaped(reaped).await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "presence reap failed"),
                }
                let due = crate::webhooks::now_ms() + vacated_delay.as_millis() as i64;
                if let Err(e) = occupancy.reap_dead_instances(due).await {
                    tracing::debug!(error = %e, "occupancy reap failed");
                }
            }
        }
    }
}

/// After every successful re-subscription of the subscriber connection, catches this
/// instance's rooms up on the events the subscription missed ([`gap`]).
async fn catch_up_on_resubscribe(driver: HeraldDriver, fanout: Arc<crate::fanout::Fanout>) {
    let mut resubscribed = driver.resubscriptions();
    while resubscribed.changed().await.is_ok() {
        fanout.catch_up().await;
    }
}

/// After every reconnect of the command connection, re-asserts this instance's presence
/// members and occupied rooms (a Redis restarted without persistence forgot them); retried
/// while Redis is still loading or away.
async fn reassert_presence_on_reconnect(
    client: fred::clients::Client,
    sockets: Arc<gateway::GatewaySockets<HeraldAdapter>>,
    occupancy: Arc<crate::occupancy::Occupancy>,
) {
    let mut reconnects = client.reconnect_rx();
    loop {
        match reconnects.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                occupancy.reassert();
                let mut delay = Duration::from_millis(200);
                loop {
                    match sockets.reassert_presence().await {
                        Ok(n) => {
                            tracing::debug!(
                                memberships = n,
                                "presence re-asserted after a reconnect"
                            );
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "presence re-assert failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Runs the reconciler at once whenever the subscriber connection comes back.
async fn kick_on_reconnect(client: SubscriberClient, kick: Arc<Notify>) {
    let mut reconnects = client.reconnect_rx();
    loop {
        match reconnects.recv().await {
            // Lagged: reconnects were missed; one pass covers them all.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => kick.notify_one(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
