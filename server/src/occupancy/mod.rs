//! Channel occupancy: whether a channel has subscribers anywhere in the cluster, for the
//! `channel_occupied` and `channel_vacated` webhooks.
//!
//! Two layers:
//!
//! * [`Occupancy`], this instance's count of subscriptions per room, moved by the gateway at
//!   the same points as the `herald_subscriptions` gauge (a socket's channel entering or
//!   leaving its session, whatever the transport). It is synchronous and exact; when a room's
//!   local count goes from 0 to 1 or back, the room is marked dirty and the `occupancy` task
//!   woken.
//! * An [`OccupancyBackend`] that knows which instances have a room: [`memory`] (embedded,
//!   the only instance) or [`redis`] (a set of instance ids per room, one script per change,
//!   so the transition of the whole cluster is seen by exactly one instance). The task tells
//!   it where each dirty room stands now (level, not edge: a burst of joins and leaves is one
//!   call, and a failed call is simply retried with the room's state at that time).
//!
//! Debounce: a room that becomes empty cluster-wide is *vacating* until
//! `--webhook-vacated-delay-ms` later; a subscriber arriving meanwhile cancels it (no
//! `channel_vacated`, no second `channel_occupied`); otherwise the sweep ([`OccupancyBackend::due_vacated`],
//! one claim per room across the cluster) sends `channel_vacated`.
//!
//! In Redis mode a dead instance's rooms are removed by the heartbeat sweep
//! ([`redis::RedisOccupancy::reap_dead_instances`]), which may start their vacating; after a
//! reconnect of its command link an instance re-asserts its rooms (a Redis that lost its data
//! sees them occupied again: at least once, as every webhook).

pub mod memory;
pub mod redis;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::RoomName;
use herald_protocol::webhook::WebhookEventType;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::log_throttle::backend_faults;
use crate::supervise::Supervisor;
use crate::webhooks::{WebhookEvents, now_ms};

/// Why an occupancy backend call failed.
#[derive(Debug, thiserror::Error)]
#[error("occupancy backend: {0}")]
pub struct OccupancyError(pub String);

/// What a change of this instance's occupancy of a room did to the cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterChange {
    /// The room had no subscriber anywhere and was not vacating: send `channel_occupied`.
    Occupied,
    /// Nothing to tell (other instances still have it, it was vacating and is refilled, or it
    /// just started vacating).
    Nothing,
}

/// Which instances have subscribers of a room.
#[async_trait]
pub trait OccupancyBackend: Send + Sync + 'static {
    /// This instance has (`occupied`) or no longer has subscribers of `room`. When the room
    /// becomes empty cluster-wide it starts vacating, due at `vacate_due_ms`.
    async fn set(
        &self,
        room: &RoomName,
        occupied: bool,
        vacate_due_ms: i64,
    ) -> Result<ClusterChange, OccupancyError>;

    /// Takes the rooms whose vacating is due at `now_ms` and that are still empty: each is
    /// answered to one caller only.
    async fn due_vacated(&self, now_ms: i64) -> Result<Vec<RoomName>, OccupancyError>;
}

/// This instance's subscriptions per room, and the task that tells the backend.
pub struct Occupancy {
    counts: Mutex<HashMap<RoomName, usize>>,
    dirty: Mutex<HashSet<RoomName>>,
    wake: Notify,
}

impl Default for Occupancy {
    fn default() -> Self {
        Self::new()
    }
}

impl Occupancy {
    /// Empty.
    pub fn new() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        }
    }

    /// A socket's subscription to `room` began.
    pub fn joined(&self, room: &RoomName) {
        let first = {
            let mut counts = self.counts.lock();
            let n = counts.entry(room.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.mark(room);
        }
    }

    /// A socket's subscription to `room` ended.
    pub fn left(&self, room: &RoomName) {
        let last = {
            let mut counts = self.counts.lock();
            match counts.get_mut(room) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    counts.remove(room);
                    true
                }
                None => false,
            }
        };
        if last {
            self.mark(room);
        }
    }

    /// Whether this instance has subscribers of `room`.
    pub fn is_occupied_here(&self, room: &RoomName) -> bool {
        self.counts.lock().contains_key(room)
    }

    /// Marks every room of this instance dirty (after Redis came back: it may have lost them).
    pub fn reassert(&self) {
        let rooms: Vec<RoomName> = self.counts.lock().keys().cloned().collect();
        self.dirty.lock().extend(rooms);
        self.wake.notify_one();
    }

    fn mark(&self, room: &RoomName) {
        self.dirty.lock().insert(room.clone());
        self.wake.notify_one();
    }

    /// Starts `occupancy_sync` (dirty rooms to the backend, `channel_occupied`) and
    /// `occupancy_vacated` (the due sweep, `channel_vacated`) under `tasks`.
    pub fn start(
        self: &Arc<Self>,
        backend: Arc<dyn OccupancyBackend>,
        events: WebhookEvents,
        vacated_delay: Duration,
        tasks: &Supervisor,
    ) {
        let (o, b, e) = (self.clone(), backend.clone(), events.clone());
        tasks.spawn("occupancy_sync", move || {
            o.clone().run_sync(b.clone(), e.clone(), vacated_delay)
        });
        let sweep =
            (vacated_delay / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
        tasks.spawn("occupancy_vacated", move || {
            run_vacated(backend.clone(), events.clone(), sweep)
        });
    }

    async fn run_sync(
        self: Arc<Self>,
        backend: Arc<dyn OccupancyBackend>,
        events: WebhookEvents,
        vacated_delay: Duration,
    ) {
        loop {
            let rooms: Vec<RoomName> = self.dirty.lock().drain().collect();
            if rooms.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let mut failed = false;
            for room in rooms {
                let occupied = self.is_occupied_here(&room);
                let due = now_ms() + vacated_delay.as_millis() as i64;
                match backend.set(&room, occupied, due).await {
                    Ok(ClusterChange::Occupied) => {
                        emit(&events, &room, WebhookEventType::ChannelOccupied)
                    }
                    Ok(ClusterChange::Nothing) => {}
                    Err(e) => {
                        if let Some(p) = backend_faults().check(&"occupancy_set") {
                            tracing::warn!(room = %room, error = %e, suppressed = p.suppressed, "occupancy not recorded; retrying");
                        }
                        self.dirty.lock().insert(room);
                        failed = true;
                    }
                }
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn run_vacated(backend: Arc<dyn OccupancyBackend>, events: WebhookEvents, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match backend.due_vacated(now_ms()).await {
            Ok(rooms) => {
                for room in rooms {
                    emit(&events, &room, WebhookEventType::ChannelVacated);
                }
            }
            Err(e) => tracing::debug!(error = %e, "occupancy sweep failed; next tick retries"),
        }
    }
}

fn emit(events: &WebhookEvents, room: &RoomName, event_type: WebhookEventType) {
    let Ok((project, channel)) = RoomName::parse_channel(room.as_str()) else {
        return;
    };
    events.emit(
        &project,
        event_type,
        serde_json::json!({ "channelName": channel.as_str() }),
    );
}

#[cfg(test)]
pub(crate) mod contract {
    //! The contract every [`OccupancyBackend`] meets; `other` is a second instance on the same
    //! state (the memory backend passes itself: it is the only instance).
    use super::*;
    use crate::tracking::contract::room;

    pub(crate) async fn run(a: &dyn OccupancyBackend, b: Option<&dyn OccupancyBackend>) {
        let r = room("occupancy-contract");
        let t0 = 1_000_000;
        assert_eq!(
            a.set(&r, true, 0).await.expect("set"),
            ClusterChange::Occupied
        );
        assert_eq!(
            a.set(&r, true, 0).await.expect("set"),
            ClusterChange::Nothing,
            "idempotent"
        );
        // Empty, then refilled within the delay: nothing either way.
        assert_eq!(
            a.set(&r, false, t0 + 100).await.expect("set"),
            ClusterChange::Nothing
        );
        assert!(
            a.due_vacated(t0 + 50).await.expect("due").is_empty(),
            "not yet due"
        );
        assert_eq!(
            a.set(&r, true, 0).await.expect("set"),
            ClusterChange::Nothing,
            "refilled while vacating"
        );
        assert!(
            a.due_vacated(t0 + 200).await.expect("due").is_empty(),
            "refilled: not vacated"
        );
        // Stays empty: vacated once.
        assert_eq!(
            a.set(&r, false, t0 + 100).await.expect("set"),
            ClusterChange::Nothing
        );
        assert_eq!(a.due_vacated(t0 + 100).await.expect("due"), vec![r.clone()]);
        assert!(
            a.due_vacated(t0 + 200).await.expect("due").is_empty(),
            "once"
        );
        // Occupied again after being vacated: a new occupied.
        assert_eq!(
            a.set(&r, true, 0).await.expect("set"),
            ClusterChange::Occupied
        );
        assert_eq!(
            a.set(&r, false, t0).await.expect("set"),
            ClusterChange::Nothing
        );
        assert_eq!(a.due_vacated(t0).await.expect("due"), vec![r.clone()]);
        if let Some(b) = b {
            // Two instances: the room stays occupied while either has it.
            assert_eq!(
                a.set(&r, true, 0).await.expect("set"),
                ClusterChange::Occupied
            );
            assert_eq!(
                b.set(&r, true, 0).await.expect("set"),
                ClusterChange::Nothing
            );
            assert_eq!(
                a.set(&r, false, t0).await.expect("set"),
                ClusterChange::Nothing
            );
            assert!(a.due_vacated(t0 + 10).await.expect("due").is_empty());
            assert!(b.due_vacated(t0 + 10).await.expect("due").is_empty());
            assert_eq!(
                b.set(&r, false, t0).await.expect("set"),
                ClusterChange::Nothing
            );
            let (x, y) = (
                a.due_vacated(t0 + 10).await.expect("due"),
                b.due_vacated(t0 + 10).await.expect("due"),
            );
            assert_eq!(x.len() + y.len(), 1, "vacated by exactly one instance");
        }
    }

    #[tokio::test]
    async fn local_counts_mark_only_transitions() {
        let o = Occupancy::new();
        let r = room("occupancy-local");
        o.joined(&r);
        o.joined(&r);
        assert_eq!(o.dirty.lock().drain().count(), 1, "0 → 1 only");
        o.left(&r);
        assert!(o.dirty.lock().is_empty(), "2 → 1 is no transition");
        assert!(o.is_occupied_here(&r));
        o.left(&r);
        assert!(!o.is_occupied_here(&r));
        assert_eq!(o.dirty.lock().drain().count(), 1, "1 → 0");
        o.left(&r);
        assert!(o.dirty.lock().is_empty(), "a leave too many is ignored");
    }
}
