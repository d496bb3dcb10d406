//! Subscription gaps in Redis mode: what an instance remembers so that an event its bus
//! subscription missed (Redis restarted or paused, the subscriber connection killed, a
//! message dropped) reaches its sockets anyway, from history, or they are told they missed it.
//!
//! [`Positions`] holds, per room with members on this instance, the epoch and offset of the
//! last event of that room delivered here (by a local publish or from the bus). Every
//! positioned event is then one of ([`Positions::classify`]):
//!
//! * the next one (or the first one, or one of a new epoch): delivered;
//! * one delivered already (a bus message arriving after history served it): skipped;
//! * one after a gap: the missing events are read from history and delivered first, in order
//!   ([`crate::fanout::Fanout::deliver_positioned`]).
//!
//! After every re-subscription of the subscriber connection, each room with members here is
//! caught up the same way even if no further event comes ([`crate::fanout::Fanout::catch_up`]).
//! Where history cannot serve, the room's sockets get
//! [`herald_protocol::history::missed_events`]. All of it runs under
//! the room's [`Sequencer`](crate::history::Sequencer) lock, like every other delivery.

use std::collections::HashMap;

use herald_protocol::RoomName;
use herald_protocol::history::Epoch;
use parking_lot::Mutex;

/// What to do with a positioned event ([`Positions::classify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Deliver it: it follows the last one, or nothing is known of the room, or its epoch is
    /// a new one.
    Deliver,
    /// Delivered already: skip it.
    Duplicate,
    /// Events between `after` and it were not delivered here: read them from history first.
    Gap {
        /// The epoch of the last delivered event.
        epoch: Epoch,
        /// Its offset.
        after: u64,
    },
}

/// Per room, the epoch and offset of the last event delivered on this instance.
#[derive(Default)]
pub struct Positions {
    rooms: Mutex<HashMap<RoomName, (Epoch, u64)>>,
}

impl Positions {
    /// What to do with the event `offset` of `epoch` in `room`.
    pub fn classify(&self, room: &RoomName, epoch: &str, offset: u64) -> Next {
        match self.rooms.lock().get(room) {
            Some((e, last)) if e.as_str() == epoch => {
                if offset <= *last {
                    Next::Duplicate
                } else if offset == *last + 1 {
                    Next::Deliver
                } else {
                    Next::Gap {
                        epoch: e.clone(),
                        after: *last,
                    }
                }
            }
            _ => Next::Deliver,
        }
    }

    /// `room`'s last delivered event, if known.
    pub fn get(&self, room: &RoomName) -> Option<(Epoch, u64)> {
        self.rooms.lock().get(room).cloned()
    }

    /// The event `offset` of `epoch` was delivered to `room`'s members here (`members`: it
    /// had any; a room without members is forgotten, its position would only go stale).
    pub fn delivered(&self, room: &RoomName, epoch: &str, offset: u64, members: bool) {
        let mut rooms = self.rooms.lock();
        if !members {
            rooms.remove(room);
            return;
        }
        match rooms.get_mut(room) {
            Some((e, last)) if e.as_str() == epoch => *last = (*last).max(offset),
            _ => {
                if let Ok(e) = Epoch::parse(epoch) {
                    rooms.insert(room.clone(), (e, offset));
                }
            }
        }
    }

    /// A socket joined `room` at `offset` of `epoch` (what its listen answered, read under the
    /// room's sequencer lock): the room's position when none is known yet, so a catch-up
    /// knows where the room's sockets stand even before a first event reached them here.
    /// A known position is kept: the room's other sockets may still be waiting for events
    /// up to it.
    pub fn joined(&self, room: &RoomName, epoch: &Epoch, offset: u64) {
        self.rooms
            .lock()
            .entry(room.clone())
            .or_insert_with(|| (epoch.clone(), offset));
    }

    /// Sets `room`'s position (after a catch-up).
    pub fn set(&self, room: &RoomName, epoch: Epoch, offset: u64) {
        self.rooms.lock().insert(room.clone(), (epoch, offset));
    }

    /// Forgets `room`.
    pub fn forget(&self, room: &RoomName) {
        self.rooms.lock().remove(room);
    }

    /// Keeps only the rooms `keep` says yes to.
    pub fn retain(&self, keep: impl Fn(&RoomName) -> bool) {
        self.rooms.lock().retain(|room, _| keep(room));
    }

    /// How many rooms are remembered.
    pub fn len(&self) -> usize {
        self.rooms.lock().len()
    }

    /// Whether no room is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomName {
        RoomName::parse("p:c").expect("valid")
    }

    #[test]
    fn a_join_sets_an_unknown_position_only() {
        let p = Positions::default();
        let (r, e) = (room(), Epoch::parse("e").expect("valid"));
        p.joined(&r, &e, 4);
        assert_eq!(p.get(&r), Some((e.clone(), 4)));
        assert_eq!(p.classify(&r, "e", 4), Next::Duplicate, "before the join");
        assert_eq!(p.classify(&r, "e", 5), Next::Deliver);
        p.joined(&r, &e, 9);
        assert_eq!(
            p.get(&r),
            Some((e, 4)),
            "the room's earlier sockets still wait for 5..9"
        );
    }

    #[test]
    fn events_are_next_duplicate_or_after_a_gap() {
        let p = Positions::default();
        let r = room();
        assert_eq!(p.classify(&r, "e", 7), Next::Deliver, "unknown room");
        p.delivered(&r, "e", 7, true);
        assert_eq!(p.classify(&r, "e", 8), Next::Deliver);
        assert_eq!(p.classify(&r, "e", 7), Next::Duplicate);
        assert_eq!(p.classify(&r, "e", 3), Next::Duplicate);
        assert_eq!(
            p.classify(&r, "e", 10),
            Next::Gap {
                epoch: Epoch::parse("e").expect("valid"),
                after: 7
            }
        );
        assert_eq!(p.classify(&r, "f", 1), Next::Deliver, "a new epoch");
        p.delivered(&r, "e", 5, true);
        assert_eq!(p.get(&r).map(|x| x.1), Some(7), "never moves back");
        p.delivered(&r, "f", 1, true);
        assert_eq!(p.get(&r).map(|x| x.1), Some(1), "a new epoch starts over");
        p.delivered(&r, "f", 2, false);
        assert!(p.is_empty(), "a room without members is forgotten");
    }
}
