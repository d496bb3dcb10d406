//! Per-channel history: what lets a client that was away get the events it missed.
//!
//! The [`History`] trait is narrow (append, read): every published event of a project whose
//! history is on is appended to its channel's stream, which allocates its offset in the same
//! atomic step; a `listen` with `since` and the history endpoint read it back. Two
//! implementations run the same contract tests ([`contract`]):
//!
//! * [`memory::MemoryHistory`] (embedded mode): in this process's memory, bounded server-wide
//!   by `--history-max-bytes` (oldest events evicted first, counted). Nothing survives a
//!   restart: every channel stream starts under a new epoch (a random per-process prefix and
//!   a counter), so a client presenting an offset of the previous process is told
//!   `epoch_changed`, never handed wrong events.
//! * [`redis::RedisHistory`] (Redis mode): a Redis Stream per channel whose entry ids are the
//!   offsets, plus a small meta hash (epoch, latest offset); one Lua script appends and
//!   allocates. Shared by every instance, so a client recovers wherever it reconnects.
//!
//! Retention is the project's [`HistorySettings`]: `size` events per channel, each at most
//! `ttlSecs` seconds.
//!
//! [`Sequencer`] closes the race between a socket joining a room and reading its history on
//! this instance (see [`Sequencer`]).

pub mod memory;
pub mod redis;

#[cfg(test)]
pub(crate) mod contract;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_protocol::history::{ChannelOffset, Epoch, HistorySettings};
use herald_protocol::{ProjectId, RoomName};
use parking_lot::Mutex;

use crate::store::Store;

/// Where an appended event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Its offset in the channel.
    pub offset: ChannelOffset,
    /// The epoch of the channel's stream.
    pub epoch: Epoch,
}

/// One retained event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its offset.
    pub offset: ChannelOffset,
    /// The message id the publish answered.
    pub id: String,
    /// The payload JSON, as the publisher sent it.
    pub payload: String,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// The stream's epoch; `None` when the channel has no stream (never published to, or its
    /// history is gone with its epoch).
    pub epoch: Option<Epoch>,
    /// The stream's latest offset (0 when none).
    pub top: ChannelOffset,
    /// The retained events after the requested offset, oldest first, at most the limit.
    pub events: Vec<StoredEvent>,
    /// The oldest retained offset of the stream, if any is retained.
    pub first: Option<ChannelOffset>,
}

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The backend (Redis) is unreachable; the caller may retry.
    #[error("history unavailable: {0}")]
    Unavailable(String),
    /// The backend failed or holds data Herald cannot read.
    #[error("history failure: {0}")]
    Backend(String),
}

/// A channel-history backend.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Appends the event (`id`, raw `payload` JSON) to `room`'s stream, allocating its offset
    /// in the same atomic step, and trims the stream to `settings`.
    async fn append(
        &self,
        room: &RoomName,
        settings: HistorySettings,
        id: &str,
        payload: &str,
    ) -> Result<Position, HistoryError>;

    /// The retained events of `room` with an offset above `after`, oldest first, at most
    /// `limit`; events older than `settings.ttl_secs` are not retained.
    async fn read(
        &self,
        room: &RoomName,
        settings: HistorySettings,
        after: ChannelOffset,
        limit: usize,
    ) -> Result<Slice, HistoryError>;

    /// The stream's epoch and latest offset (`None`, 0: no stream), without reading events:
    /// where a socket that joins now starts.
    async fn head(
        &self,
        room: &RoomName,
        settings: HistorySettings,
    ) -> Result<(Option<Epoch>, ChannelOffset), HistoryError> {
        let slice = self
            .read(
                room,
                settings,
                ChannelOffset(herald_protocol::history::MAX_OFFSET),
                0,
            )
            .await?;
        Ok((slice.epoch, slice.top))
    }

    /// `room`'s epoch and latest offset, starting its stream (offset 0 under a new epoch)
    /// when it has none: what a plain `listen` answers, so that a client that has seen no
    /// event yet still holds a position it can recover from later.
    async fn position(&self, room: &RoomName) -> Result<Position, HistoryError>;
}

/// A new epoch string: 12 random hex characters and a counter (unique within the process,
/// distinct across processes with overwhelming probability).
pub fn new_epoch() -> Epoch {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROCESS: LazyLock<String> = LazyLock::new(|| hex::encode(rand::random::<[u8; 6]>()));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let s = format!("{}-{n}", *PROCESS);
    match Epoch::parse(&s) {
        Ok(e) => e,
        // Hex, '-' and digits within 64 bytes: always valid.
        Err(_) => unreachable!("generated epoch {s} is valid"),
    }
}

/// The outcome of a recovery decision ([`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Deliver these events: they are exactly the ones after `since`.
    Recovered(Vec<StoredEvent>),
    /// The events cannot be recovered.
    Lost(herald_protocol::RecoveryFailure),
}

/// Decides a `listen` with `since` from what a read after `since.offset` found.
pub fn decide(since: &herald_protocol::StreamPosition, slice: Slice) -> Decision {
    use herald_protocol::RecoveryFailure::{EpochChanged, HistoryExpired};
    let Some(epoch) = &slice.epoch else {
        return Decision::Lost(EpochChanged);
    };
    if *epoch != since.epoch {
        return Decision::Lost(EpochChanged);
    }
    if since.offset >= slice.top {
        // Nothing published since (or a client ahead of the stream: nothing to give).
        return Decision::Recovered(Vec::new());
    }
    match slice.events.first() {
        Some(e) if e.offset.get() == since.offset.get() + 1 => Decision::Recovered(slice.events),
        _ => Decision::Lost(HistoryExpired),
    }
}

/// Per-room ordering on this instance ([`Fanout::sequencer`](crate::fanout::Fanout::sequencer)):
/// a publish holds its room's lock from the append to the local delivery (and the queueing
/// on the bus), an event from another instance holds it while it is delivered locally, and a
/// `listen` with `since` holds it from joining the room to sending the replayed events. So
/// every event of the room this instance delivers is either in what the listen read
/// (appended before) or delivered live after the replay: no gap. An event another instance
/// appended before the read but whose bus message comes after it is not delivered twice:
/// the recovered socket's floor ([`Fanout::hold_floor`](crate::fanout::Fanout::hold_floor))
/// skips it. The locks are sharded by room, a fixed number of them.
pub struct Sequencer {
    shards: Vec<tokio::sync::Mutex<()>>,
}

const SEQUENCER_SHARDS: usize = 256;

impl Default for Sequencer {
    fn default() -> Self {
        Self {
            shards: (0..SEQUENCER_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }
}

impl Sequencer {
    /// Waits for `room`'s lock.
    pub async fn lock(&self, room: &RoomName) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        static SEED: std::sync::LazyLock<std::collections::hash_map::RandomState> =
            std::sync::LazyLock::new(Default::default);
        let i = (SEED.hash_one(room.as_str()) as usize) % self.shards.len();
        self.shards[i].lock().await
    }
}

/// How long a project's history settings are cached: a PATCH takes effect on every instance
/// within this time.
pub const SETTINGS_CACHE_TTL: Duration = Duration::from_secs(1);

/// The history backend and a short cache of projects' settings.
pub struct Histories {
    /// The backend.
    pub backend: Arc<dyn History>,
    settings: Mutex<HashMap<ProjectId, (HistorySettings, Instant)>>,
}

impl Histories {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn History>) -> Self {
        Self {
            backend,
            settings: Mutex::new(HashMap::new()),
        }
    }

    /// A project's history settings (cached for [`SETTINGS_CACHE_TTL`]); the defaults when
    /// the store cannot say (unknown project, store down: keeping history is the safe side).
    pub async fn settings(&self, store: &dyn Store, project: &ProjectId) -> HistorySettings {
        let now = Instant::now();
        if let Some((s, at)) = self.settings.lock().get(project)
            && now.duration_since(*at) < SETTINGS_CACHE_TTL
        {
            return *s;
        }
        let settings = match store.project(project).await {
            Ok(Some(p)) => p.history,
            Ok(None) | Err(_) => HistorySettings::default(),
        };
        let mut cache = self.settings.lock();
        if cache.len() > 10_000 {
            cache.retain(|_, (_, at)| now.duration_since(*at) < SETTINGS_CACHE_TTL);
        }
        cache.insert(project.clone(), (settings, now));
        settings
    }

    /// Forgets a project's cached settings (after a PATCH on this instance).
    pub fn forget(&self, project: &ProjectId) {
        self.settings.lock().remove(project);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::{RecoveryFailure, StreamPosition};

    fn ev(o: u64) -> StoredEvent {
        StoredEvent {
            offset: ChannelOffset(o),
            id: format!("m{o}"),
            payload: "1".into(),
        }
    }

    #[test]
    fn decisions() {
        let e = Epoch::parse("e").expect("valid");
        let since = |o| StreamPosition {
            offset: ChannelOffset(o),
            epoch: e.clone(),
        };
        let slice = |top, events: Vec<StoredEvent>| Slice {
            epoch: Some(e.clone()),
            top: ChannelOffset(top),
            first: events.first().map(|x| x.offset),
            events,
        };
        assert_eq!(
            decide(&since(2), slice(4, vec![ev(3), ev(4)])),
            Decision::Recovered(vec![ev(3), ev(4)])
        );
        assert_eq!(
            decide(&since(1), slice(4, vec![ev(3), ev(4)])),
            Decision::Lost(RecoveryFailure::HistoryExpired)
        );
        assert_eq!(
            decide(&since(1), slice(4, vec![])),
            Decision::Lost(RecoveryFailure::HistoryExpired)
        );
        assert_eq!(
            decide(&since(4), slice(4, vec![])),
            Decision::Recovered(vec![])
        );
        let other = StreamPosition {
            offset: ChannelOffset(2),
            epoch: Epoch::parse("f").expect("valid"),
        };
        assert_eq!(
            decide(&other, slice(4, vec![ev(3)])),
            Decision::Lost(RecoveryFailure::EpochChanged)
        );
        let none = Slice {
            epoch: None,
            top: ChannelOffset(0),
            events: vec![],
            first: None,
        };
        assert_eq!(
            decide(&since(0), none),
            Decision::Lost(RecoveryFailure::EpochChanged)
        );
    }

    #[test]
    fn epochs_are_distinct() {
        assert_ne!(new_epoch(), new_epoch());
    }
}
