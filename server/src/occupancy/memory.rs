//! The embedded [`OccupancyBackend`]: this process is the whole cluster, so the occupied and
//! vacating rooms are two maps in memory.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use herald_protocol::RoomName;
use parking_lot::Mutex;

use super::{ClusterChange, OccupancyBackend, OccupancyError};

/// Occupied rooms and vacating rooms with their due time.
#[derive(Default)]
pub struct MemoryOccupancy {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    occupied: HashSet<RoomName>,
    vacating: HashMap<RoomName, i64>,
}

impl MemoryOccupancy {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl OccupancyBackend for MemoryOccupancy {
    async fn set(
        &self,
        room: &RoomName,
        occupied: bool,
        vacate_due_ms: i64,
    ) -> Result<ClusterChange, OccupancyError> {
        let mut s = self.state.lock();
        if occupied {
            if !s.occupied.insert(room.clone()) {
                return Ok(ClusterChange::Nothing);
            }
            if s.vacating.remove(room).is_some() {
                return Ok(ClusterChange::Nothing);
            }
            Ok(ClusterChange::Occupied)
        } else {
            if s.occupied.remove(room) {
                s.vacating.insert(room.clone(), vacate_due_ms);
            }
            Ok(ClusterChange::Nothing)
        }
    }

    async fn due_vacated(&self, now_ms: i64) -> Result<Vec<RoomName>, OccupancyError> {
        let mut s = self.state.lock();
        let due: Vec<RoomName> = s
            .vacating
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(r, _)| r.clone())
            .collect();
        for r in &due {
            s.vacating.remove(r);
        }
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn meets_the_contract() {
        super::super::contract::run(&MemoryOccupancy::new(), None).await;
    }
}
