//! In-memory [`ConnectionTracker`] for the embedded mode.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use herald_protocol::{ApiKeyId, RoomName};
use parking_lot::Mutex;

use super::{Association, ConnectionTracker, TrackerError};

#[derive(Default)]
struct Indexes {
    by_socket: HashMap<String, HashMap<RoomName, ApiKeyId>>,
    by_key: HashMap<ApiKeyId, HashSet<(String, RoomName)>>,
}

impl Indexes {
    fn unlink_key(&mut self, key: &ApiKeyId, socket_id: &str, room: &RoomName) {
        if let Some(set) = self.by_key.get_mut(key) {
            set.remove(&(socket_id.to_owned(), room.clone()));
            if set.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}

/// Both indexes behind one lock, so they never disagree.
#[derive(Default)]
pub struct MemoryTracker {
    inner: Mutex<Indexes>,
}

impl MemoryTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ConnectionTracker for MemoryTracker {
    async fn add(
        &self,
        socket_id: &str,
        room: &RoomName,
        api_key_id: &ApiKeyId,
    ) -> Result<(), TrackerError> {
        let mut ix = self.inner.lock();
        let previous = ix
            .by_socket
            .entry(socket_id.to_owned())
            .or_default()
            .insert(room.clone(), api_key_id.clone());
        if let Some(prev) = previous {
            ix.unlink_key(&prev, socket_id, room);
        }
        ix.by_key
            .entry(api_key_id.clone())
            .or_default()
            .insert((socket_id.to_owned(), room.clone()));
        Ok(())
    }

    async fn remove(&self, socket_id: &str, room: &RoomName) -> Result<(), TrackerError> {
        let mut ix = self.inner.lock();
        let Some(rooms) = ix.by_socket.get_mut(socket_id) else {
            return Ok(());
        };
        let removed = rooms.remove(room);
        if rooms.is_empty() {
            ix.by_socket.remove(socket_id);
        }
        if let Some(key) = removed {
            ix.unlink_key(&key, socket_id, room);
        }
        Ok(())
    }

    async fn remove_socket(&self, socket_id: &str) -> Result<Vec<Association>, TrackerError> {
        let mut ix = self.inner.lock();
        let rooms = ix.by_socket.remove(socket_id).unwrap_or_default();
        let mut out = Vec::with_capacity(rooms.len());
        for (room, key) in rooms {
            ix.unlink_key(&key, socket_id, &room);
            out.push(Association {
                socket_id: socket_id.to_owned(),
                room,
                api_key_id: key,
            });
        }
        Ok(out)
    }

    async fn by_socket(&self, socket_id: &str) -> Result<Vec<Association>, TrackerError> {
        let ix = self.inner.lock();
        Ok(ix
            .by_socket
            .get(socket_id)
            .map(|rooms| {
                rooms
                    .iter()
                    .map(|(room, key)| Association {
                        socket_id: socket_id.to_owned(),
                        room: room.clone(),
                        api_key_id: key.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn by_api_key(&self, api_key_id: &ApiKeyId) -> Result<Vec<Association>, TrackerError> {
        let ix = self.inner.lock();
        Ok(ix
            .by_key
            .get(api_key_id)
            .map(|set| {
                set.iter()
                    .map(|(socket_id, room)| Association {
                        socket_id: socket_id.clone(),
                        room: room.clone(),
                        api_key_id: api_key_id.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_tracker_contract() {
        super::super::contract::run(&super::MemoryTracker::new()).await;
    }
}
