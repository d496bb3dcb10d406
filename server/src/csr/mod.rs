//! Socket.IO connection state recovery (CSR) for the official `socket.io-client`, on both
//! transports (the direct WebSocket, socketioxide's polling and upgrades): what a socket's
//! subscriptions got, the session record saved at
//! disconnect, and where a reconnecting client really stopped (the wire format is in
//! [`herald_protocol::csr`], the protocol in docs/PROTOCOL.md).
//!
//! The client tells only the marker of the last event it received (any channel). Per
//! subscription (socket × channel) a [`SubCell`] keeps the channel's epoch and offset when the
//! socket joined, and the socket-wide send numbers and offsets of its last [`RING`] sends;
//! the socket numbers its tracked sends in the order they reach its queue or socket
//! ([`crate::direct::DirectConn::send_tracked`], [`crate::gateway::CsrState::send_tracked`]). The marker's channel stopped at the marker's
//! offset; every other channel at its last send numbered before the marker's send
//! ([`positions`]). The fan-out loop updates the cell through the room's member entry (no map
//! lookup); the frame stays one shared encoding per room.
//!
//! At disconnect the session becomes a [`SessionRecord`] kept for `--recovery-window-secs` in
//! a [`SessionStore`]: [`MemorySessions`] (embedded mode, bounded) or [`RedisSessions`] (one
//! key per pid with a TTL, so another instance can resume it). A resume takes the record:
//! one resume per record.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::csr::{Offset, Pid};
use herald_protocol::{ApiKeyId, ChannelName, ChannelOffset, Epoch, ProjectId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::metrics as m;

/// Sends remembered per subscription.
pub const RING: usize = 8;

/// Most records the embedded store keeps at once; beyond it a disconnecting session is not
/// kept (counted in `herald_csr_sessions_refused_total`).
pub const MAX_MEMORY_RECORDS: usize = 100_000;

/// What one subscription (socket × channel) was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubState {
    /// The channel's epoch when joined, or of the first event sent when it had none.
    pub epoch: Option<String>,
    /// The channel's offset when the socket joined (what it had then).
    pub joined: u64,
    /// Tracked sends so far.
    pub sends: u64,
    /// The last sends: (socket-wide send number, offset), oldest first, at most [`RING`].
    pub recent: Vec<(u64, u64)>,
    /// An event of another epoch was sent: the positions are meaningless.
    pub broken: bool,
}

/// A subscription's [`SubState`], shared by the session and the room's member entry.
#[derive(Debug, Default)]
pub struct SubCell(Mutex<SubState>);

impl SubCell {
    /// A subscription that joined at `joined` under `epoch`.
    pub fn new(epoch: Option<&Epoch>, joined: ChannelOffset) -> Arc<Self> {
        Arc::new(Self(Mutex::new(SubState {
            epoch: epoch.map(|e| e.as_str().to_owned()),
            joined: joined.get(),
            ..SubState::default()
        })))
    }

    /// A subscription whose position cannot be known (history off or unreachable when it
    /// joined): a session holding it is not resumed.
    pub fn unrecoverable() -> Arc<Self> {
        Arc::new(Self(Mutex::new(SubState {
            broken: true,
            ..SubState::default()
        })))
    }

    /// Starts over at `joined` under `epoch` (nothing was sent yet).
    pub fn rebase(&self, epoch: Option<&Epoch>, joined: ChannelOffset) {
        let mut s = self.0.lock();
        s.epoch = epoch.map(|e| e.as_str().to_owned());
        s.joined = joined.get();
        s.broken = false;
    }

    /// Records the send numbered `seq` of the event at `offset` of `epoch`.
    pub fn record(&self, seq: u64, offset: u64, epoch: &str) {
        let mut s = self.0.lock();
        match &s.epoch {
            Some(e) if e != epoch => s.broken = true,
            Some(_) => {}
            None => s.epoch = Some(epoch.to_owned()),
        }
        s.sends += 1;
        if s.recent.len() == RING {
            s.recent.remove(0);
        }
        s.recent.push((seq, offset));
    }

    /// A copy of the state.
    pub fn snapshot(&self) -> SubState {
        self.0.lock().clone()
    }
}

/// A private or presence channel's grant, as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// The key that signed the token.
    pub api_key_id: String,
    /// The project secret that verified it.
    pub secret: u64,
    /// The token's `exp` (Unix seconds): the window never extends it.
    pub token_exp: u64,
    /// Presence channels: the member the token named (a resumed socket joins as it again).
    #[serde(default)]
    pub member: Option<herald_protocol::presence::Member>,
}

/// One channel of a saved session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The channel.
    pub channel: String,
    /// Private channels: what opened it.
    pub grant: Option<GrantRecord>,
    /// What the subscription was sent.
    pub sub: SubState,
}

/// A disconnected session, kept for the recovery window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Its pid.
    pub pid: String,
    /// Its project.
    pub project: String,
    /// The `offset` the client presented when this session started (a resume's, or the one a
    /// socket.io-client keeps across a session that was not recovered): the client holding it
    /// still got nothing of this session.
    pub baseline: Option<String>,
    /// Its channels.
    pub channels: Vec<ChannelRecord>,
    /// When it stops being resumable (Unix seconds).
    pub expires_at: u64,
}

/// Where a reconnecting client stopped, per channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The channel.
    pub channel: ChannelName,
    /// Its grant, for private channels.
    pub grant: Option<GrantRecord>,
    /// The epoch the offset belongs to (`None`: the channel had no history when joined and no
    /// event was sent since).
    pub epoch: Option<Epoch>,
    /// The last offset the client has.
    pub offset: ChannelOffset,
}

/// Why a session could not be resumed (the `outcome` label of `herald_csr_resumes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFailure {
    /// No record: never issued, forged, expired or already resumed.
    Unknown,
    /// The record is another project's.
    ProjectMismatch,
    /// The presented offset is not one Herald wrote, or does not say where every channel
    /// stopped.
    Ambiguous,
    /// A private channel's key was revoked, expired, its secret rotated or its token expired.
    Revoked,
    /// History cannot serve what was missed (disabled, expired, epoch changed, unreachable).
    History,
    /// A backend failed during the resume.
    Unavailable,
}

impl ResumeFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeFailure::Unknown => "unknown_session",
            ResumeFailure::ProjectMismatch => "project_mismatch",
            ResumeFailure::Ambiguous => "ambiguous",
            ResumeFailure::Revoked => "revoked",
            ResumeFailure::History => "history_lost",
            ResumeFailure::Unavailable => "unavailable",
        }
    }
}

/// Where each channel of `record` stopped, given the `offset` the client presented.
pub fn positions(
    record: &SessionRecord,
    presented: Option<&Offset>,
    presented_raw: Option<&str>,
) -> Result<Vec<Resumed>, ResumeFailure> {
    // An offset too long to keep as text is no marker of Herald's.
    if presented.is_some() && presented_raw.is_none() {
        return Err(ResumeFailure::Ambiguous);
    }
    // The send the client's last event came with; 0: none of this session.
    let last_seq = if presented_raw == record.baseline.as_deref() {
        0
    } else {
        let Some(Offset::Marker(offset, channel)) = presented else {
            return Err(ResumeFailure::Ambiguous);
        };
        let c = record
            .channels
            .iter()
            .find(|c| c.channel == channel.as_str())
            .ok_or(ResumeFailure::Ambiguous)?;
        let found = c
            .sub
            .recent
            .iter()
            .rev()
            .find(|(_, o)| *o == offset.get())
            .map(|(seq, _)| *seq);
        match found {
            Some(seq) => seq,
            // The marker's channel is exact on its own; the others need the send number.
            None if record.channels.len() == 1 && offset.get() > c.sub.joined => u64::MAX,
            None => return Err(ResumeFailure::Ambiguous),
        }
    };
    let marker = match presented {
        Some(Offset::Marker(o, c)) if last_seq > 0 => Some((*o, c)),
        _ => None,
    };
    let mut out = Vec::with_capacity(record.channels.len());
    for c in &record.channels {
        let channel = ChannelName::parse(&c.channel).map_err(|_| ResumeFailure::Ambiguous)?;
        if c.sub.broken {
            return Err(ResumeFailure::History);
        }
        let offset = match marker {
            Some((o, mc)) if *mc == channel => o.get(),
            _ if last_seq == 0 => c.sub.joined,
            _ => match c.sub.recent.iter().rev().find(|(seq, _)| *seq <= last_seq) {
                Some((_, o)) => *o,
                // Every send of the channel came after the client's last event.
                None if c.sub.sends as usize <= c.sub.recent.len() => c.sub.joined,
                None => return Err(ResumeFailure::Ambiguous),
            },
        };
        let epoch = match &c.sub.epoch {
            Some(e) => Some(Epoch::parse(e).map_err(|_| ResumeFailure::Ambiguous)?),
            None => None,
        };
        out.push(Resumed {
            channel,
            grant: c.grant.clone(),
            epoch,
            offset: ChannelOffset(offset.max(c.sub.joined)),
        });
    }
    Ok(out)
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("session store unavailable: {0}")]
pub struct SessionStoreError(pub String);

/// Where disconnected sessions wait for their client.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Keeps `record` until its `expires_at`; `false` when it was refused (store full).
    async fn save(&self, record: SessionRecord, ttl: Duration) -> Result<bool, SessionStoreError>;
    /// Takes the record of `pid` in `project` (one resume per record); `None` when there is
    /// none or it expired.
    async fn take(
        &self,
        project: &ProjectId,
        pid: &Pid,
    ) -> Result<Option<SessionRecord>, SessionStoreError>;
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

mod memory;
mod redis;

pub use memory::MemorySessions;
pub use redis::RedisSessions;

/// The recovery window and the store (absent: CSR disabled, `--recovery-window-secs 0`).
pub struct Recovery {
    /// How long a disconnected session stays resumable.
    pub window: Duration,
    /// Where records wait.
    pub store: Arc<dyn SessionStore>,
}

impl Recovery {
    /// Saves a disconnected session's record; counts refusals and failures.
    pub async fn save(&self, record: SessionRecord) {
        match self.store.save(record, self.window).await {
            Ok(true) => metrics::counter!(m::CSR_SESSIONS_SAVED).increment(1),
            Ok(false) => metrics::counter!(m::CSR_SESSIONS_REFUSED).increment(1),
            Err(e) => {
                metrics::counter!(m::CSR_SESSIONS_REFUSED).increment(1);
                if let Some(p) = crate::log_throttle::backend_faults().check(&"csr_save") {
                    tracing::warn!(error = %e, suppressed = p.suppressed, "session record not saved; its client will not recover");
                }
            }
        }
    }
}

/// The API key id of a grant record, if it is one.
pub fn grant_key(g: &GrantRecord) -> Option<ApiKeyId> {
    ApiKeyId::parse(&g.api_key_id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(channels: Vec<(&str, SubState)>, baseline: Option<&str>) -> SessionRecord {
        SessionRecord {
            pid: "p".into(),
            project: "proj".into(),
            baseline: baseline.map(str::to_owned),
            channels: channels
                .into_iter()
                .map(|(c, sub)| ChannelRecord {
                    channel: c.into(),
                    grant: None,
                    sub,
                })
                .collect(),
            expires_at: u64::MAX,
        }
    }

    fn sub(joined: u64, sends: &[(u64, u64)]) -> SubState {
        let cell = SubCell::new(
            Some(&Epoch::parse("e").expect("epoch")),
            ChannelOffset(joined),
        );
        for (seq, o) in sends {
            cell.record(*seq, *o, "e");
        }
        cell.snapshot()
    }

    fn marker(s: &str) -> Offset {
        match herald_protocol::csr::parse_marker(s) {
            Some((o, c)) => Offset::Marker(o, c),
            None => Offset::Invalid,
        }
    }

    fn at(r: Result<Vec<Resumed>, ResumeFailure>) -> Vec<u64> {
        r.expect("resumable")
            .iter()
            .map(|x| x.offset.get())
            .collect()
    }

    #[test]
    fn the_marker_says_where_every_channel_stopped() {
        // a got 1,2 (sends 1, 3), b got 5,6 (sends 2, 4): the client's last event was b:5.
        let r = record(
            vec![
                ("a", sub(0, &[(1, 1), (3, 2)])),
                ("b", sub(4, &[(2, 5), (4, 6)])),
            ],
            None,
        );
        let m = marker("5:b");
        assert_eq!(at(positions(&r, Some(&m), Some("5:b"))), vec![1, 5]);
        // Nothing received in this session: where each joined.
        assert_eq!(at(positions(&r, None, None)), vec![0, 4]);
        // An offset Herald never sent here.
        let forged = marker("9:b");
        assert_eq!(
            positions(&r, Some(&forged), Some("9:b")),
            Err(ResumeFailure::Ambiguous)
        );
        assert_eq!(
            positions(&r, Some(&Offset::Invalid), Some("x")),
            Err(ResumeFailure::Ambiguous)
        );
        // Too long to be kept as text: not taken for "nothing received".
        assert_eq!(
            positions(&r, Some(&Offset::Invalid), None),
            Err(ResumeFailure::Ambiguous)
        );
    }

    #[test]
    fn a_baseline_marker_means_nothing_of_this_session_arrived() {
        let r = record(vec![("a", sub(3, &[(1, 4)]))], Some("3:a"));
        let m = marker("3:a");
        assert_eq!(at(positions(&r, Some(&m), Some("3:a"))), vec![3]);
    }

    #[test]
    fn sends_older_than_the_ring_are_ambiguous_for_other_channels() {
        let many: Vec<(u64, u64)> = (0..20).map(|i| (100 + i, 10 + i)).collect();
        let r = record(vec![("a", sub(0, &[(1, 1)])), ("b", sub(9, &many))], None);
        let m = marker("1:a");
        assert_eq!(
            positions(&r, Some(&m), Some("1:a")),
            Err(ResumeFailure::Ambiguous)
        );
    }
}
