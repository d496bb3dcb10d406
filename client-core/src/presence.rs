//! Presence on the client: the members of one presence channel ([`Roster`]) and the ordering
//! rule every client follows (the [`Session`](crate::Session) owns one roster per presence
//! channel it listens to).
//!
//! The roster holds the channel's presence `version` from the last snapshot (a `listen` ack,
//! or the ack of a `presence` query). A `presence` event with
//!
//! * `version <= held` is stale (the snapshot or an earlier event already has it): ignored;
//! * `version == held + 1` is the next transition: applied;
//! * `version > held + 1` skipped at least one transition (events from different instances
//!   may arrive out of order): applied, and the session asks for a fresh snapshot (a
//!   `presence` query) to re-sync.
//!
//! Until a snapshot is held (the channel's `listen` is unanswered, or the connection was lost
//! and the re-listen is on its way) events are buffered, then filtered by the snapshot's
//! version and applied in version order. A lost connection drops the version: the transitions
//! during the disconnection are never replayed, so the re-listen's snapshot replaces the list.

use herald_protocol::ChannelName;
use herald_protocol::presence::{Member, PresenceAction, PresenceEvent, PresenceSnapshot};

/// The most events a roster holds while it waits for its snapshot; beyond, the oldest go (the
/// snapshot, read after they were decided, likely has them; if not, the gap before the next
/// event the roster applies asks for a re-sync).
pub(crate) const MAX_BUFFERED_EVENTS: usize = 1024;

/// A member joined or left a presence channel: a `presence` event the ordering rule applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The presence channel.
    pub channel: ChannelName,
    /// Joined (`member_added`: the user's first socket) or left (`member_removed`: its last).
    pub action: PresenceAction,
    /// Who.
    pub member: Member,
}

/// What [`Roster::event`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Stale, or the roster has no snapshot yet (then it was buffered): nothing to report.
    No,
    /// Applied; the list is whole.
    Yes,
    /// Applied, but at least one transition before it is missing: re-sync.
    Gap,
}

/// Whether a `presence` query is on its way for the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Query {
    Idle,
    Pending,
    /// Pending, and another gap was seen meanwhile: ask again once it is answered.
    PendingAgain,
}

/// The members of one presence channel, and the version they are at.
///
/// Plain sorted `Vec`s with binary search, not a `BTreeMap` and a sort: the browser client's
/// wasm has a size budget, and these add no new collection or sort algorithm to it.
#[derive(Debug, Clone)]
pub(crate) struct Roster {
    /// Ordered by user id, one entry per user.
    members: Vec<Member>,
    /// The version held; `None` until a snapshot came (events are buffered meanwhile).
    version: Option<u64>,
    /// Ordered by version.
    buffered: Vec<PresenceEvent>,
    pub(crate) query: Query,
}

impl Roster {
    /// A roster waiting for its first snapshot.
    pub(crate) fn new() -> Self {
        Self {
            members: Vec::new(),
            version: None,
            buffered: Vec::new(),
            query: Query::Idle,
        }
    }

    /// The members, ordered by user id.
    pub(crate) fn members(&self) -> Vec<Member> {
        self.members.clone()
    }

    /// Adds `member`, or replaces the user's entry.
    fn upsert(&mut self, member: Member) {
        match self
            .members
            .binary_search_by(|m| m.user_id.cmp(&member.user_id))
        {
            Ok(i) => self.members[i] = member,
            Err(i) => self.members.insert(i, member),
        }
    }

    /// Whether a snapshot is held.
    pub(crate) fn synced(&self) -> bool {
        self.version.is_some()
    }

    /// The connection was lost: the snapshot no longer holds (the members stay as they were
    /// until the re-listen's snapshot replaces them).
    pub(crate) fn unsync(&mut self) {
        self.version = None;
        self.buffered.clear();
        self.query = Query::Idle;
    }

    /// Applies (or buffers) one event by the ordering rule.
    pub(crate) fn event(&mut self, event: PresenceEvent) -> Applied {
        let Some(held) = self.version else {
            let at = self
                .buffered
                .partition_point(|e| e.version <= event.version);
            self.buffered.insert(at, event);
            if self.buffered.len() > MAX_BUFFERED_EVENTS {
                self.buffered.remove(0);
            }
            return Applied::No;
        };
        if event.version <= held {
            return Applied::No;
        }
        let gap = event.version > held.saturating_add(1);
        self.version = Some(event.version);
        match event.action {
            PresenceAction::MemberAdded => self.upsert(event.member),
            PresenceAction::MemberRemoved => {
                let id = &event.member.user_id;
                if let Ok(i) = self.members.binary_search_by(|m| m.user_id.cmp(id)) {
                    self.members.remove(i);
                }
            }
        }
        if gap { Applied::Gap } else { Applied::Yes }
    }

    /// Takes a snapshot, unless it is older than the version held (an answer that events
    /// already overtook); returns whether it was taken, and the buffered events (in version
    /// order) to feed to [`event`](Self::event) next.
    pub(crate) fn snapshot(&mut self, snapshot: PresenceSnapshot) -> (bool, Vec<PresenceEvent>) {
        if self
            .version
            .is_some_and(|held| snapshot.presence_version < held)
        {
            return (false, Vec::new());
        }
        self.members.clear();
        for member in snapshot.members {
            self.upsert(member); // sorted by user id, whatever order the server sent
        }
        self.version = Some(snapshot.presence_version);
        (true, std::mem::take(&mut self.buffered))
    }
}

/// The rosters of the presence channels, by channel: a `Vec` searched in order (a client
/// listens to few presence channels; a map would add a hash table's code to the wasm).
#[derive(Debug, Default)]
pub(crate) struct Rosters(Vec<(ChannelName, Roster)>);

impl Rosters {
    pub(crate) fn get(&self, channel: &ChannelName) -> Option<&Roster> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, r)| r)
    }

    pub(crate) fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Roster> {
        self.0
            .iter_mut()
            .find(|(c, _)| c == channel)
            .map(|(_, r)| r)
    }

    pub(crate) fn contains_key(&self, channel: &ChannelName) -> bool {
        self.get(channel).is_some()
    }

    /// The roster of `channel`, a new one (waiting for its snapshot) if there was none.
    pub(crate) fn get_or_new(&mut self, channel: &ChannelName) -> &mut Roster {
        let at = match self.0.iter().position(|(c, _)| c == channel) {
            Some(at) => at,
            None => {
                self.0.push((channel.clone(), Roster::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    pub(crate) fn remove(&mut self, channel: &ChannelName) {
        self.0.retain(|(c, _)| c != channel);
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Roster> {
        self.0.iter_mut().map(|(_, r)| r)
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::presence::UserId;

    fn added(user: &str, version: u64) -> PresenceEvent {
        PresenceEvent {
            channel_name: ChannelName::parse("presence-x").expect("valid"),
            action: PresenceAction::MemberAdded,
            member: Member {
                user_id: UserId::parse(user).expect("valid"),
                info: None,
            },
            version,
        }
    }

    /// A flood of events before the snapshot holds at most the bound; the oldest are dropped,
    /// and what is then missing is a gap that asks for a re-sync.
    #[test]
    fn the_buffer_before_the_snapshot_is_bounded_and_a_dropped_event_is_a_gap() {
        let mut r = Roster::new();
        let n = MAX_BUFFERED_EVENTS as u64 + 10;
        for v in 1..=n {
            assert_eq!(r.event(added(&format!("u{v}"), 10 + v)), Applied::No);
        }
        assert_eq!(r.buffered.len(), MAX_BUFFERED_EVENTS);
        let (taken, pending) = r.snapshot(PresenceSnapshot {
            members: Vec::new(),
            presence_version: 10,
        });
        assert!(taken);
        let results: Vec<Applied> = pending.into_iter().map(|e| r.event(e)).collect();
        assert_eq!(results[0], Applied::Gap, "the dropped events leave a gap");
        assert!(results[1..].iter().all(|a| *a == Applied::Yes));
        assert_eq!(r.members().len(), MAX_BUFFERED_EVENTS);
    }
}
