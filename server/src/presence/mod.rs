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
//!
//! [`Presences`] is what the gateway, the revocation pass and the REST API use: a manager, the
//! channel limit, and the announcement of each transition it reports (the `presence` event,
//! to the room on every instance through [`Fanout::emit_presence`]).

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::presence::{Member, PresenceAction, PresenceEvent};
use herald_protocol::{ChannelName, ErrorCode, Refusal, RoomName};
use socketioxide::socket::Sid;

use crate::fanout::Fanout;
use crate::log_throttle::backend_faults;
use crate::metrics as m;

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

/// Presence as the rest of the server uses it: membership changes with their announcements.
pub struct Presences {
    /// Where the members are kept.
    pub manager: Arc<dyn PresenceManager>,
    /// Where announcements go.
    fanout: Arc<Fanout>,
    /// `--max-presence-members`: users per presence channel.
    pub max_members: usize,
    /// The `member_added` / `member_removed` webhooks.
    webhooks: crate::webhooks::WebhookEvents,
}

impl Presences {
    /// Presence over `manager`, announcing through `fanout`.
    pub fn new(
        manager: Arc<dyn PresenceManager>,
        fanout: Arc<Fanout>,
        max_members: usize,
        webhooks: crate::webhooks::WebhookEvents,
    ) -> Self {
        Self {
            manager,
            fanout,
            max_members,
            webhooks,
        }
    }

    /// Makes socket `sid` a member of `channel`'s `room` as `member`, announcing
    /// `member_added` to the room's other sockets when it is the user's first, then answers the
    /// members (read after the join: the joiner is among them, and every transition after
    /// their version reaches the socket, which is in the room already). Refusals:
    /// `presence_full`, `unavailable`; on a refusal after the join (the read failed) the
    /// socket is a member still and the caller undoes it with [`Presences::leave`].
    pub async fn join(
        &self,
        room: &RoomName,
        channel: &ChannelName,
        sid: Sid,
        member: &Member,
    ) -> Result<Members, Refusal> {
        let joined = self
            .manager
            .join(room, sid.as_str(), member, self.max_members)
            .await
            .map_err(|e| unavailable("presence_join", &e))?;
        match joined {
            Joined::Full => {
                return Err(Refusal::new(
                    ErrorCode::PresenceFull,
                    format!(
                        "{channel} has {} members, the most a presence channel may have",
                        self.max_members
                    ),
                ));
            }
            Joined::Added(t) => {
                metrics::gauge!(m::PRESENCE_SOCKETS).increment(1.0);
                self.announce(room, channel, PresenceAction::MemberAdded, t, Some(sid))
                    .await;
            }
            Joined::AlreadyPresent => metrics::gauge!(m::PRESENCE_SOCKETS).increment(1.0),
        }
        self.manager
            .members(room)
            .await
            .map_err(|e| unavailable("presence_members", &e))
    }

    /// Removes socket `sid` from `channel`'s `room`, announcing `member_removed` when it was
    /// the user's last socket there. A backend failure is logged: the entry is then left to
    /// the instance's death (Redis mode reaps it) or the next leave.
    pub async fn leave(&self, room: &RoomName, channel: &ChannelName, sid: Sid) {
        match self.manager.leave(room, sid.as_str()).await {
            Ok(gone) => {
                metrics::gauge!(m::PRESENCE_SOCKETS).decrement(1.0);
                if let Some(t) = gone {
                    self.announce(room, channel, PresenceAction::MemberRemoved, t, None)
                        .await;
                }
            }
            Err(e) => {
                if let Some(p) = backend_faults().check(&"presence_leave") {
                    tracing::warn!(socket_id = %sid, error = %e, suppressed = p.suppressed, "presence leave failed");
                }
            }
        }
    }

    /// Makes sure socket `sid`, a member of `room` on this instance, is one in the backend too
    /// (after the Redis link came back: a Redis restarted without persistence lost every
    /// member). Idempotent; a socket the backend had lost is added again and announced, as
    /// a join, to the room's other sockets.
    pub async fn reassert(
        &self,
        room: &RoomName,
        channel: &ChannelName,
        sid: Sid,
        member: &Member,
    ) -> Result<(), PresenceError> {
        match self
            .manager
            .join(room, sid.as_str(), member, self.max_members)
            .await?
        {
            Joined::Added(t) => {
                self.announce(room, channel, PresenceAction::MemberAdded, t, Some(sid))
                    .await
            }
            Joined::AlreadyPresent => {}
            Joined::Full => {
                tracing::warn!(socket_id = %sid, room = %room, "presence channel filled up while its members were lost; this socket is not counted");
            }
        }
        Ok(())
    }

    /// Announces the removal of members another instance left behind (Redis mode's reap of a
    /// dead instance): `member_removed` to each room, on every instance.
    pub async fn announce_reaped(&self, reaped: Vec<(RoomName, Transition)>) {
        for (room, t) in reaped {
            let Ok((_, channel)) = RoomName::parse_channel(room.as_str()) else {
                continue;
            };
            self.announce(&room, &channel, PresenceAction::MemberRemoved, t, None)
                .await;
        }
    }

    /// Sends the `presence` event of one transition to `room` (all instances; not to
    /// `except`).
    async fn announce(
        &self,
        room: &RoomName,
        channel: &ChannelName,
        action: PresenceAction,
        t: Transition,
        except: Option<Sid>,
    ) {
        metrics::counter!(m::PRESENCE_TRANSITIONS, "action" => action.as_str()).increment(1);
        if let Ok((project, _)) = RoomName::parse_channel(room.as_str()) {
            let mut data = match serde_json::to_value(&t.member) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            };
            data.insert("channelName".into(), channel.as_str().into());
            let event_type = match action {
                PresenceAction::MemberAdded => {
                    herald_protocol::webhook::WebhookEventType::MemberAdded
                }
                PresenceAction::MemberRemoved => {
                    herald_protocol::webhook::WebhookEventType::MemberRemoved
                }
            };
            self.webhooks
                .emit(&project, event_type, serde_json::Value::Object(data));
        }
        let event = PresenceEvent {
            channel_name: channel.clone(),
            action,
            member: t.member,
            version: t.version,
        };
        let sent = match serde_json::value::to_raw_value(&event) {
            Ok(raw) => self
                .fanout
                .emit_presence(room, &raw, except)
                .await
                .map(|_| ()),
            Err(e) => {
                tracing::error!(error = %e, "presence event not encodable");
                return;
            }
        };
        if let Err(e) = sent
            && let Some(p) = backend_faults().check(&"presence_announce")
        {
            tracing::warn!(room = %room, error = %e, suppressed = p.suppressed, "presence event not delivered everywhere");
        }
    }
}

fn unavailable(site: &'static str, e: &PresenceError) -> Refusal {
    if let Some(p) = backend_faults().check(&site) {
        tracing::warn!(error = %e, suppressed = p.suppressed, "presence store failed");
    }
    Refusal::new(
        ErrorCode::Unavailable,
        "presence is unavailable, try again shortly",
    )
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
        let last = p
            .leave(&r, "s5")
            .await
            .expect("leave")
            .expect("the last member");
        assert_eq!(p.members(&r).await.expect("members").members, vec![]);

        // A room that emptied and starts again never goes back to a version a client of its
        // earlier life may hold.
        let Joined::Added(again) = p.join(&r, "s6", &ada, 3).await.expect("join") else {
            panic!("a new first member is added");
        };
        assert!(again.version > last.version, "{again:?} after {last:?}");
        p.leave(&r, "s6").await.expect("leave");
    }
}
