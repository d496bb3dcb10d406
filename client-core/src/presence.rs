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

use std::collections::BTreeMap;

use herald_protocol::ChannelName;
use herald_protocol::presence::{Member, PresenceAction, PresenceEvent, PresenceSnapshot, UserId};

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
#[derive(Debug, Clone)]
pub(crate) struct Roster {
    members: BTreeMap<UserId, Member>,
    /// The version held; `None` until a snapshot came (events are buffered meanwhile).
    version: Option<u64>,
    buffered: Vec<PresenceEvent>,
    pub(crate) query: Query,
}

impl Roster {
    /// A roster waiting for its first snapshot.
    pub(crate) fn new() -> Self {
        Self {
            members: BTreeMap::new(),
            version: None,
            buffered: Vec::new(),
            query: Query::Idle,
        }
    }

    /// The members, ordered by user id.
    pub(crate) fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
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
            self.buffered.push(event);
            return Applied::No;
        };
        if event.version <= held {
            return Applied::No;
        }
        let gap = event.version > held.saturating_add(1);
        self.version = Some(event.version);
        match event.action {
            PresenceAction::MemberAdded => {
                self.members
                    .insert(event.member.user_id.clone(), event.member);
            }
            PresenceAction::MemberRemoved => {
                self.members.remove(&event.member.user_id);
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
        self.members = snapshot
            .members
            .into_iter()
            .map(|m| (m.user_id.clone(), m))
            .collect();
        self.version = Some(snapshot.presence_version);
        let mut buffered = std::mem::take(&mut self.buffered);
        // Unstable (one sort algorithm in the wasm): equal versions are the same transition.
        buffered.sort_unstable_by_key(|e| e.version);
        (true, buffered)
    }
}
