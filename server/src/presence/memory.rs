//! The in-memory [`PresenceManager`] (embedded mode): members live as long as the process,
//! like their sockets.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use herald_protocol::RoomName;
use herald_protocol::presence::{Member, UserId};
use parking_lot::Mutex;

use super::{Joined, Members, PresenceError, PresenceManager, Transition};

/// One room: each socket's user, each user's member and socket count, the version.
#[derive(Debug, Default)]
struct Room {
    sockets: HashMap<String, UserId>,
    users: BTreeMap<UserId, (Member, usize)>,
    version: u64,
}

/// The version after `v`; a room's first is the clock in microseconds, so a room that
/// empties and starts again never answers a version a client already holds (as in Redis).
fn next_version(v: u64) -> u64 {
    if v > 0 {
        return v + 1;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1)
}

/// Presence in this process.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    rooms: Mutex<HashMap<RoomName, Room>>,
}

impl MemoryPresence {
    /// No members anywhere.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PresenceManager for MemoryPresence {
    async fn join(
        &self,
        room: &RoomName,
        socket_id: &str,
        member: &Member,
        max_members: usize,
    ) -> Result<Joined, PresenceError> {
        let mut rooms = self.rooms.lock();
        let r = rooms.entry(room.clone()).or_default();
        if r.sockets.contains_key(socket_id) {
            return Ok(Joined::AlreadyPresent);
        }
        if let Some((_, n)) = r.users.get_mut(&member.user_id) {
            *n += 1;
            r.sockets
                .insert(socket_id.to_owned(), member.user_id.clone());
            return Ok(Joined::AlreadyPresent);
        }
        if r.users.len() >= max_members {
            if r.sockets.is_empty() {
                rooms.remove(room);
            }
            return Ok(Joined::Full);
        }
        r.sockets
            .insert(socket_id.to_owned(), member.user_id.clone());
        r.users.insert(member.user_id.clone(), (member.clone(), 1));
        r.version = next_version(r.version);
        Ok(Joined::Added(Transition {
            member: member.clone(),
            version: r.version,
        }))
    }

    async fn leave(
        &self,
        room: &RoomName,
        socket_id: &str,
    ) -> Result<Option<Transition>, PresenceError> {
        let mut rooms = self.rooms.lock();
        let Some(r) = rooms.get_mut(room) else {
            return Ok(None);
        };
        let Some(user) = r.sockets.remove(socket_id) else {
            return Ok(None);
        };
        let last = match r.users.get_mut(&user) {
            Some((_, n)) if *n > 1 => {
                *n -= 1;
                None
            }
            Some(_) => r.users.remove(&user).map(|(m, _)| m),
            None => None,
        };
        let out = last.map(|member| {
            r.version = next_version(r.version);
            Transition {
                member,
                version: r.version,
            }
        });
        if r.sockets.is_empty() {
            rooms.remove(room);
        }
        Ok(out)
    }

    async fn members(&self, room: &RoomName) -> Result<Members, PresenceError> {
        let rooms = self.rooms.lock();
        Ok(rooms
            .get(room)
            .map(|r| Members {
                members: r.users.values().map(|(m, _)| m.clone()).collect(),
                version: r.version,
            })
            .unwrap_or_default())
    }

    async fn count(&self, room: &RoomName) -> Result<u64, PresenceError> {
        let rooms = self.rooms.lock();
        Ok(rooms.get(room).map_or(0, |r| r.users.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn meets_the_contract() {
        super::super::contract::run(&MemoryPresence::new()).await;
    }
}
