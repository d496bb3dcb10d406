//! Connection tracking: which socket joined which private channel room with a token signed by
//! which API key, indexed both ways.
//!
//! * by socket: `clientApiKey:{socketId}` → `{room, apiKeyId}` (clean-up on disconnect);
//! * by key: `channelApiKeyRecord:{apiKeyId}` → `{socketId, room}` (revocation).
//!
//! The embedded mode keeps both in memory ([`memory`]): sockets do not outlive the process,
//! so neither should their entries. Redis mode keeps them in Redis so any instance can find
//! every socket of a key.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use herald_protocol::{ApiKeyId, RoomName};

/// One tracked association.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Association {
    /// Socket.IO socket id.
    pub socket_id: String,
    /// The private channel room.
    pub room: RoomName,
    /// The API key whose token let the socket in.
    pub api_key_id: ApiKeyId,
}

/// Why a tracking operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// The backend is unreachable.
    #[error("tracking store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed or returned data Herald cannot read.
    #[error("tracking store failure: {0}")]
    Backend(String),
}

/// The two-way index of socket ↔ (room, API key).
#[async_trait]
pub trait ConnectionTracker: Send + Sync + 'static {
    /// Records that `socket_id` joined `room` with a token from `api_key_id`, replacing any
    /// earlier association of that socket and room.
    async fn add(
        &self,
        socket_id: &str,
        room: &RoomName,
        api_key_id: &ApiKeyId,
    ) -> Result<(), TrackerError>;

    /// Forgets the association of `socket_id` and `room`, in both indexes.
    async fn remove(&self, socket_id: &str, room: &RoomName) -> Result<(), TrackerError>;

    /// Forgets everything about `socket_id`; returns what was removed.
    async fn remove_socket(&self, socket_id: &str) -> Result<Vec<Association>, TrackerError>;

    /// The associations of one socket.
    async fn by_socket(&self, socket_id: &str) -> Result<Vec<Association>, TrackerError>;

    /// The associations made with tokens of one API key.
    async fn by_api_key(&self, api_key_id: &ApiKeyId) -> Result<Vec<Association>, TrackerError>;
}

#[cfg(test)]
pub(crate) mod contract {
    //! The contract every [`ConnectionTracker`] must meet.
    use super::*;
    use herald_protocol::{ChannelName, ProjectId};

    /// The room of channel `c` in project `acme` (shared with the other contracts).
    pub(crate) fn room(c: &str) -> RoomName {
        RoomName::channel(
            &ProjectId::parse("acme").expect("valid"),
            &ChannelName::parse(c).expect("valid"),
        )
    }

    fn key(k: &str) -> ApiKeyId {
        ApiKeyId::parse(k).expect("valid")
    }

    pub(crate) async fn run(t: &dyn ConnectionTracker) {
        let (k1, k2) = (key("00000000000000a1"), key("00000000000000a2"));
        let (r1, r2) = (room("private-one"), room("private-two"));
        t.add("s1", &r1, &k1).await.expect("add");
        t.add("s1", &r2, &k2).await.expect("add");
        t.add("s2", &r1, &k1).await.expect("add");

        let mut s1 = t.by_socket("s1").await.expect("read");
        s1.sort();
        assert_eq!(s1.len(), 2);
        assert_eq!(s1[0].room, r1);
        assert_eq!(s1[0].api_key_id, k1);
        let mut by_k1: Vec<_> = t
            .by_api_key(&k1)
            .await
            .expect("read")
            .into_iter()
            .map(|a| a.socket_id)
            .collect();
        by_k1.sort();
        assert_eq!(by_k1, vec!["s1", "s2"]);

        // Re-joining with another key moves the association to that key.
        t.add("s2", &r1, &k2).await.expect("add");
        assert_eq!(t.by_api_key(&k1).await.expect("read").len(), 1);
        assert_eq!(t.by_api_key(&k2).await.expect("read").len(), 2);

        t.remove("s1", &r2).await.expect("remove");
        assert_eq!(t.by_socket("s1").await.expect("read").len(), 1);
        assert_eq!(t.by_api_key(&k2).await.expect("read").len(), 1);

        let removed = t.remove_socket("s1").await.expect("remove socket");
        assert_eq!(removed.len(), 1);
        assert!(t.by_socket("s1").await.expect("read").is_empty());
        assert!(t.by_api_key(&k1).await.expect("read").is_empty());

        t.remove_socket("s2").await.expect("remove socket");
        assert!(t.by_api_key(&k2).await.expect("read").is_empty());
        // Removing what is not there is fine.
        t.remove("nobody", &r1).await.expect("remove");
        assert!(t.remove_socket("nobody").await.expect("remove").is_empty());
    }
}
