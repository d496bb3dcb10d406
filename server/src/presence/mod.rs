//! Presence: which users are in a presence channel, across every instance.
//!
//! A member is a user, not a socket: a [`PresenceManager`] counts a user's sockets per room and
//! reports a transition only when the first joins ([`Joined::Added`]) or the last leaves
//! ([`leave`](PresenceManager::leave) answers the member). Every transition bumps the room's
//! version, so a client holding a snapshot at version `v` applies exactly the events after `v`.
//!
//! Two implementations: [`memory`] (embedded mode: one process) and `redis` (Redis mode: every
//! instance's members in one place, transitions decided by scripts so each is announced once,
//! members of a dead instance reaped by the heartbeat sweep within the instance TTL).

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use herald_protocol::RoomName;
use herald_protocol::presence::Member;

/// A transition to announce: who, and the room's version after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The member who joined or left.
    pub member: Member,
    /// The room's presence version after the transition.
    pub version: u64,
}

/// What a join did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The user's first socket: announce `member_added`.
    Added(Transition),
    /// Another socket of a user already present, or the same socket again: nothing to
    /// announce.
    AlreadyPresent,
    /// The room has as many members as allowed and this user is not one of them.
    Full,
}

/// The members of a room and the version they are at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Every member, ordered by user id.
    pub members: Vec<Member>,
    /// The room's presence version.
    pub version: u64,
}

/// Why a presence operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The backend is unreachable.
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed or returned data Herald cannot read.
    #[error("presence store failure: {0}")]
    Backend(String),
}

/// Presence membership of rooms, keyed by socket id.
#[async_trait]
pub trait PresenceManager: Send + Sync + 'static {
    /// Adds `socket_id` as `member` of `room`, unless the room already has `max_members`
    /// other users. Idempotent per socket: a socket already present changes nothing.
    async fn join(
        &self,
        room: &RoomName,
        socket_id: &str,
        member: &Member,
        max_members: usize,
    ) -> Result<Joined, PresenceError>;

    /// Removes `socket_id` from `room`; answers the member when it was the user's last socket
    /// there (announce `member_removed`), `None` otherwise (also when it was not present).
    async fn leave(
        &self,
        room: &RoomName,
        socket_id: &str,
    ) -> Result<Option<Transition>, PresenceError>;

    /// The room's members.
    async fn members(&self, room: &RoomName) -> Result<Members, PresenceError>;

    /// How many members (users) the room has.
    async fn count(&self, room: &RoomName) -> Result<u64, PresenceError>;
}

#[cfg(test)]
pub(crate) mod contract {
    //! The contract every [`PresenceManager`] must meet.
    use super::*;
    use crate::tracking::contract::room;
    use herald_protocol::presence::UserId;

    fn member(u: &str) -> Member {
        Member {
            user_id: UserId::parse(u).expect("valid"),
            info: None,
        }
    }

    /// Runs every rule against `p`.
    pub async fn run(p: &dyn PresenceManager) {
        let r = room("presence-contract");
        let (ada, bob) = (member("ada"), member("bob"));

        // First socket of a user adds the member; a second socket does not.
        let Ok(Joined::Added(t1)) = p.join(&r, "s1", &ada, 2).await else {
            panic!("first socket adds the member");
        };
        assert_eq!(t1.member, ada);
        assert_eq!(
            p.join(&r, "s2", &ada, 2).await.ok(),
            Some(Joined::AlreadyPresent)
        );
        assert_eq!(
            p.join(&r, "s1", &ada, 2).await.ok(),
            Some(Joined::AlreadyPresent)
        );
        let Ok(Joined::Added(t2)) = p.join(&r, "s3", &bob, 2).await else {
            panic!("another user is added");
        };
        assert!(t2.version > t1.version, "versions grow");

        // Full: a third user is refused, a present user's new socket is not.
        assert_eq!(
            p.join(&r, "s4", &member("cy"), 2).await.ok(),
            Some(Joined::Full)
        );
        assert_eq!(
            p.join(&r, "s5", &bob, 2).await.ok(),
            Some(Joined::AlreadyPresent)
        );

        let m = p.members(&r).await.expect("members");
        assert_eq!(m.members, vec![ada.clone(), bob.clone()]);
        assert_eq!(m.version, t2.version);
        assert_eq!(p.count(&r).await.expect("count"), 2);

        // Leaving: only the last socket of a user removes the member.
        assert_eq!(p.leave(&r, "s1").await.expect("leave"), None);
        let removed = p
            .leave(&r, "s2")
            .await
            .expect("leave")
            .expect("last socket");
        assert_eq!(removed.member, ada);
        assert!(removed.version > t2.version);
        assert_eq!(p.leave(&r, "s2").await.expect("leave again"), None);
        assert_eq!(p.leave(&r, "never").await.expect("unknown socket"), None);
        assert_eq!(p.count(&r).await.expect("count"), 1);

        // Another room is separate.
        assert_eq!(p.count(&room("presence-other")).await.expect("count"), 0);

        p.leave(&r, "s3").await.expect("leave");
        p.leave(&r, "s5").await.expect("leave");
        assert_eq!(p.members(&r).await.expect("members").members, vec![]);
    }
}
