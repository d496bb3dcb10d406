//! [`MemoryHistory`]: channel history in this process's memory (embedded mode).
//!
//! Each channel's stream is a queue of its retained events plus its epoch and latest offset.
//! Appending trims the stream to `size` and drops events older than `ttlSecs`; reads skip
//! expired events. The whole history is bounded by a byte budget (`--history-max-bytes`):
//! when an append goes over it, the oldest events of any channel are evicted first (counted in
//! `herald_history_evictions_total`; `herald_history_bytes` reports the size). An evicted event
//! is simply not retained any more: a client that needed it is told `history_expired`.
//!
//! A stream with no event left keeps its epoch and latest offset (so offsets continue) until
//! it has been idle for [`IDLE_STREAM_SECS`] or the byte budget needs its room; after that the
//! channel's next event starts a new stream, at offset 1 under a new epoch.
//!
//! A plain `listen` starts an empty stream (offset 0, new epoch) for a channel that has none
//! ([`History::position`]), under the same byte budget and idle sweep.
//!
//! Nothing survives a restart: every stream of a new process has a new epoch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_protocol::RoomName;
use herald_protocol::history::{ChannelOffset, Epoch, HistorySettings};
use parking_lot::Mutex;

use super::{History, HistoryError, Position, Slice, StoredEvent, new_epoch};
use crate::metrics as m;

/// Seconds a stream with no retained event keeps its epoch and offset.
pub const IDLE_STREAM_SECS: u64 = 3600;

/// What one event costs besides its id and payload (queue slot, bookkeeping), in bytes.
const EVENT_OVERHEAD: usize = 64;
/// What one stream costs besides its room name.
const STREAM_OVERHEAD: usize = 128;

struct Entry {
    event: StoredEvent,
    at: Instant,
    /// Global append order: the eviction index key.
    seq: u64,
    bytes: usize,
}

struct Stream {
    epoch: Epoch,
    top: u64,
    events: VecDeque<Entry>,
    last_append: Instant,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<RoomName, Stream>,
    /// The `seq` of each non-empty stream's oldest event → its room: the globally oldest
    /// event is the first entry.
    oldest: BTreeMap<u64, RoomName>,
    bytes: usize,
    seq: u64,
    appends: u64,
}

impl Inner {
    /// Removes `room`'s oldest event; keeps the index right.
    fn pop_front(&mut self, room: &RoomName) -> bool {
        let Some(stream) = self.streams.get_mut(room) else {
            return false;
        };
        let Some(entry) = stream.events.pop_front() else {
            return false;
        };
        self.oldest.remove(&entry.seq);
        if let Some(next) = stream.events.front() {
            self.oldest.insert(next.seq, room.clone());
        }
        self.bytes = self.bytes.saturating_sub(entry.bytes);
        true
    }

    /// Drops `room`'s events beyond `size` or older than `ttl`.
    fn trim(&mut self, room: &RoomName, size: usize, ttl: Duration, now: Instant) {
        loop {
            let over = match self.streams.get(room) {
                Some(s) => {
                    s.events.len() > size
                        || s.events
                            .front()
                            .is_some_and(|e| now.duration_since(e.at) >= ttl)
                }
                None => false,
            };
            if !over || !self.pop_front(room) {
                break;
            }
        }
    }

    fn remove_stream(&mut self, room: &RoomName) {
        while self.pop_front(room) {}
        if self.streams.remove(room).is_some() {
            self.bytes = self
                .bytes
                .saturating_sub(STREAM_OVERHEAD + room.as_str().len());
        }
    }

    /// Evicts the oldest events (then idle empty streams) until the budget holds; returns
    /// how many events went.
    fn evict(&mut self, max_bytes: usize, keep: &RoomName) -> u64 {
        let mut evicted = 0;
        while self.bytes > max_bytes {
            let Some(room) = self.oldest.values().next().cloned() else {
                break;
            };
            if self.pop_front(&room) {
                evicted += 1;
            }
        }
        if self.bytes > max_bytes {
            let empty: Vec<RoomName> = self
                .streams
                .iter()
                .filter(|(r, s)| s.events.is_empty() && *r != keep)
                .map(|(r, _)| r.clone())
                .collect();
            for room in empty {
                if self.bytes <= max_bytes {
                    break;
                }
                self.remove_stream(&room);
            }
        }
        evicted
    }

    fn sweep_idle(&mut self, now: Instant) {
        let idle = Duration::from_secs(IDLE_STREAM_SECS);
        let gone: Vec<RoomName> = self
            .streams
            .iter()
            .filter(|(_, s)| s.events.is_empty() && now.duration_since(s.last_append) >= idle)
            .map(|(r, _)| r.clone())
            .collect();
        for room in gone {
            self.remove_stream(&room);
        }
    }
}

/// Channel history in memory, bounded by a byte budget.
pub struct MemoryHistory {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

impl MemoryHistory {
    /// An empty history holding at most about `max_bytes` (ids, payloads and bookkeeping).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_bytes,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    fn position_at(&self, room: &RoomName, now: Instant) -> Position {
        let mut inner = self.inner.lock();
        if let Some(s) = inner.streams.get(room) {
            return Position {
                offset: ChannelOffset(s.top),
                epoch: s.epoch.clone(),
            };
        }
        let epoch = new_epoch();
        inner.bytes += STREAM_OVERHEAD + room.as_str().len();
        inner.streams.insert(
            room.clone(),
            Stream {
                epoch: epoch.clone(),
                top: 0,
                events: VecDeque::new(),
                last_append: now,
            },
        );
        // An empty stream is the first thing the budget drops (and the idle sweep after
        // IDLE_STREAM_SECS): a client holding its epoch is then told `epoch_changed`.
        let evicted = inner.evict(self.max_bytes, room);
        if evicted > 0 {
            metrics::counter!(m::HISTORY_EVICTIONS).increment(evicted);
        }
        metrics::gauge!(m::HISTORY_BYTES).set(inner.bytes as f64);
        Position {
            offset: ChannelOffset(0),
            epoch,
        }
    }

    fn append_at(
        &self,
        room: &RoomName,
        settings: HistorySettings,
        id: &str,
        payload: &str,
        now: Instant,
    ) -> Position {
        let mut inner = self.inner.lock();
        inner.appends += 1;
        if inner.appends.is_multiple_of(4096) {
            inner.sweep_idle(now);
        }
        if !inner.streams.contains_key(room) {
            inner.bytes += STREAM_OVERHEAD + room.as_str().len();
            inner.streams.insert(
                room.clone(),
                Stream {
                    epoch: new_epoch(),
                    top: 0,
                    events: VecDeque::new(),
                    last_append: now,
                },
            );
        }
        inner.seq += 1;
        let seq = inner.seq;
        let bytes = EVENT_OVERHEAD + id.len() + payload.len();
        let (position, first) = {
            let Some(stream) = inner.streams.get_mut(room) else {
                unreachable!("inserted above")
            };
            stream.top += 1;
            stream.last_append = now;
            let offset = ChannelOffset(stream.top);
            let first = stream.events.is_empty();
            stream.events.push_back(Entry {
                event: StoredEvent {
                    offset,
                    id: id.to_owned(),
                    payload: payload.to_owned(),
                },
                at: now,
                seq,
                bytes,
            });
            (
                Position {
                    offset,
                    epoch: stream.epoch.clone(),
                },
                first,
            )
        };
        if first {
            inner.oldest.insert(seq, room.clone());
        }
        inner.bytes += bytes;
        inner.trim(
            room,
            settings.size as usize,
            Duration::from_secs(settings.ttl_secs.into()),
            now,
        );
        let evicted = inner.evict(self.max_bytes, room);
        if evicted > 0 {
            metrics::counter!(m::HISTORY_EVICTIONS).increment(evicted);
        }
        metrics::gauge!(m::HISTORY_BYTES).set(inner.bytes as f64);
        position
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn append(
        &self,
        room: &RoomName,
        settings: HistorySettings,
        id: &str,
        payload: &str,
    ) -> Result<Position, HistoryError> {
        Ok(self.append_at(room, settings, id, payload, Instant::now()))
    }

    async fn read(
        &self,
        room: &RoomName,
        settings: HistorySettings,
        after: ChannelOffset,
        limit: usize,
    ) -> Result<Slice, HistoryError> {
        let now = Instant::now();
        let ttl = Duration::from_secs(settings.ttl_secs.into());
        let inner = self.inner.lock();
        let Some(stream) = inner.streams.get(room) else {
            return Ok(Slice {
                epoch: None,
                top: ChannelOffset(0),
                events: Vec::new(),
                first: None,
            });
        };
        // Retained: within the last `size` and younger than the ttl (a smaller `size` set
        // since the last append counts at once).
        let skip = stream.events.len().saturating_sub(settings.size as usize);
        let retained = stream
            .events
            .iter()
            .skip(skip)
            .filter(|e| now.duration_since(e.at) < ttl);
        let mut first = None;
        let mut events = Vec::new();
        for e in retained {
            first.get_or_insert(e.event.offset);
            if e.event.offset > after && events.len() < limit {
                events.push(e.event.clone());
            }
        }
        Ok(Slice {
            epoch: Some(stream.epoch.clone()),
            top: ChannelOffset(stream.top),
            events,
            first,
        })
    }

    async fn position(&self, room: &RoomName) -> Result<Position, HistoryError> {
        Ok(self.position_at(room, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::{ChannelName, ProjectId};

    fn room(c: &str) -> RoomName {
        RoomName::channel(
            &ProjectId::parse("p").expect("valid"),
            &ChannelName::parse(c).expect("valid"),
        )
    }

    #[tokio::test]
    async fn memory_history_contract() {
        super::super::contract::run(&MemoryHistory::new(1 << 20)).await;
    }

    #[tokio::test]
    async fn the_byte_budget_evicts_the_oldest_events_of_any_channel() {
        let payload = "x".repeat(1000);
        let h = MemoryHistory::new(20_000);
        let settings = HistorySettings::default();
        for i in 0..100 {
            let r = room(&format!("c{}", i % 10));
            h.append(&r, settings, "id", &payload)
                .await
                .expect("append");
            assert!(h.bytes() <= 20_000, "over budget: {}", h.bytes());
        }
        // The newest events are still there; the oldest of every channel are gone.
        let last = h
            .read(&room("c9"), settings, ChannelOffset(0), 100)
            .await
            .expect("read");
        assert_eq!(last.top, ChannelOffset(10));
        assert_eq!(
            last.events.last().map(|e| e.offset),
            Some(ChannelOffset(10))
        );
        let first = last.first.expect("something retained");
        assert!(first > ChannelOffset(1), "oldest kept: {first}");
        // Offsets continue, under the same epoch, after the evictions.
        let epoch = last.epoch.clone();
        let p = h
            .append(&room("c9"), settings, "id", "1")
            .await
            .expect("append");
        assert_eq!((Some(p.epoch), p.offset), (epoch, ChannelOffset(11)));
    }
}
