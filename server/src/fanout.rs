//! The broadcast side of Socket.IO behind one object-safe trait, so REST handlers do not care
//! whether the adapter is local (embedded mode) or Redis (many instances).

use async_trait::async_trait;
use herald_protocol::RoomName;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::{BroadcastError, SocketIo};

/// What a broadcast reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmitReport {
    /// Local sockets the packet was queued for.
    pub queued: usize,
    /// Local sockets the packet could not be queued for (full buffer: slow consumer, or the
    /// socket closed meanwhile).
    pub not_queued: usize,
}

/// Why a broadcast failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The adapter's backend (Redis) is unreachable: nothing was sent.
    #[error("fan-out backend unavailable: {0}")]
    Unavailable(String),
    /// The packet could not be encoded.
    #[error("packet encoding failed: {0}")]
    Encode(String),
}

/// Room-level operations across every instance.
#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// Emits `event` with the pre-encoded JSON `data` to every socket in `room`.
    async fn emit(
        &self,
        room: RoomName,
        event: &'static str,
        data: &RawValue,
    ) -> Result<EmitReport, FanoutError>;

    /// Disconnects every socket in `room`.
    async fn disconnect(&self, room: RoomName) -> Result<(), FanoutError>;

    /// Closes every local socket (shutdown).
    async fn close(&self);
}

fn map(e: BroadcastError) -> Result<EmitReport, FanoutError> {
    match e {
        BroadcastError::Socket(errors) => Ok(EmitReport {
            queued: 0,
            not_queued: errors.len(),
        }),
        BroadcastError::Serialize(e) => Err(FanoutError::Encode(e.to_string())),
        BroadcastError::Adapter(e) => Err(FanoutError::Unavailable(e.to_string())),
    }
}

#[async_trait]
impl<A: Adapter> Fanout for SocketIo<A> {
    async fn emit(
        &self,
        room: RoomName,
        event: &'static str,
        data: &RawValue,
    ) -> Result<EmitReport, FanoutError> {
        let local = self.local().to(room.as_str().to_owned()).sockets().len();
        match self.to(room.into_string()).emit(event, data).await {
            Ok(()) => Ok(EmitReport {
                queued: local,
                not_queued: 0,
            }),
            Err(e) => map(e).map(|r| EmitReport {
                queued: local.saturating_sub(r.not_queued),
                ..r
            }),
        }
    }

    async fn disconnect(&self, room: RoomName) -> Result<(), FanoutError> {
        self.to(room.into_string())
            .disconnect()
            .await
            .or_else(|e| map(e).map(|_| ()))
    }

    async fn close(&self) {
        SocketIo::close(self).await;
    }
}
