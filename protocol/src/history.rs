//! Per-channel history: offsets, epochs, retention and recovery.
//!
//! Every event published to a channel gets the next [`ChannelOffset`] of that channel (the
//! first is 1, then +1 per event). The channel's [`Epoch`] names one unbroken run of offsets:
//! when the server lost the channel's history (the store was wiped, an embedded server
//! restarted, the channel's history was evicted), offsets start again at 1 under a new epoch.
//! A position is only meaningful with its epoch ([`StreamPosition`]).
//!
//! * a `listen` may carry `since: { offset, epoch }` ([`StreamPosition`]): the last event the
//!   client saw. The ack then carries a [`Recovery`]: `recovered: true` when every event after
//!   it was delivered (before any live event of the channel), or `recovered: false` and a
//!   [`RecoveryFailure`] reason; a plain `listen` on a channel with history answers the
//!   channel's position ([`ListenAnswer::Position`]);
//! * event frames carry `offset` and `epoch`; the publish answer too;
//! * retention per project: [`HistorySettings`] (`size` events, `ttlSecs` seconds);
//! * `GET /v1/publishers/channels/{channelName}/history` answers a [`HistoryPage`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{ErrorCode, Refusal};
use crate::names::ChannelName;

/// The position of an event in its channel: 1 for the first, +1 per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelOffset(pub u64);

impl ChannelOffset {
    /// The offset of a channel's first event.
    pub const FIRST: ChannelOffset = ChannelOffset(1);

    /// The offset as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ChannelOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Largest offset a client may name (`since`, the history endpoint's `since`): 2^53 − 1, the
/// largest integer every JSON reader (JavaScript's included) holds exactly.
pub const MAX_OFFSET: u64 = (1 << 53) - 1;

/// A JSON whole number from 0 to [`MAX_OFFSET`]: `4` or `4.0` (JSON Schema's `integer` accepts
/// both), not `4.5`, `-1` or `"4"`.
fn whole_number(v: &Value) -> Option<u64> {
    let n = match v.as_u64() {
        Some(n) => n,
        None => {
            let f = v.as_f64()?;
            if f.fract() != 0.0 || !(0.0..=MAX_OFFSET as f64).contains(&f) {
                return None;
            }
            f as u64
        }
    };
    (n <= MAX_OFFSET).then_some(n)
}

/// Longest epoch string, in bytes.
pub const MAX_EPOCH_LEN: usize = 64;

/// The name of one unbroken run of a channel's offsets: 1 to 64 characters `A-Z a-z 0-9 - _`.
/// Opaque to clients: they only compare it for equality.
///
/// ```
/// use herald_protocol::history::Epoch;
/// assert!(Epoch::parse("3f2a9c-1").is_ok());
/// assert!(Epoch::parse("").is_err());
/// assert!(Epoch::parse("a b").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Epoch(String);

impl Epoch {
    /// Validates an epoch string.
    pub fn parse(s: &str) -> Result<Self, Refusal> {
        let ok = !s.is_empty()
            && s.len() <= MAX_EPOCH_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Refusal::new(
                ErrorCode::InvalidBody,
                format!(
                    "\"epoch\" must be 1 to {MAX_EPOCH_LEN} characters A-Z, a-z, 0-9, '-' or '_'"
                ),
            ))
        }
    }

    /// The epoch as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(|r| serde::de::Error::custom(r.message))
    }
}

/// Where a client stands in a channel: the offset of the last event it received, and the
/// epoch that offset belongs to. `listen`'s `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamPosition {
    /// The last offset received (0: none yet, in this epoch).
    pub offset: ChannelOffset,
    /// Its epoch.
    pub epoch: Epoch,
}

impl StreamPosition {
    /// Validates an untrusted `since` value: `{ "offset": integer ≥ 0, "epoch": string }`.
    pub fn parse(v: &Value) -> Result<Self, Refusal> {
        let bad = || {
            Refusal::new(
                ErrorCode::InvalidBody,
                "\"since\" must be { \"offset\": integer >= 0, \"epoch\": string }",
            )
        };
        let obj = v.as_object().ok_or_else(bad)?;
        let offset = obj.get("offset").and_then(whole_number).ok_or_else(bad)?;
        let epoch = obj.get("epoch").and_then(Value::as_str).ok_or_else(bad)?;
        Ok(Self {
            offset: ChannelOffset(offset),
            epoch: Epoch::parse(epoch)?,
        })
    }
}

/// Why a `listen` with `since` could not recover the missed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RecoveryFailure {
    /// Some events after `since` are no longer retained (older than `ttlSecs`, beyond
    /// `size`, or evicted by the server's memory bound).
    HistoryExpired,
    /// The channel's history was lost since (`epoch` differs): offsets started again.
    EpochChanged,
    /// The project keeps no history (`history.size` is 0).
    HistoryDisabled,
}

impl RecoveryFailure {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryFailure::HistoryExpired => "history_expired",
            RecoveryFailure::EpochChanged => "epoch_changed",
            RecoveryFailure::HistoryDisabled => "history_disabled",
        }
    }
}

/// Why an instance could not deliver some events of a channel to its sockets (Redis mode,
/// after its bus subscription was down): `data.reason` of the [`missed_events`] notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MissedEventsReason {
    /// History could not fill the gap: expired, epoch changed or disabled.
    History(RecoveryFailure),
    /// History could not be read.
    Unavailable,
    /// The instance knew no position of the channel (no event had reached it since its
    /// sockets started listening, and their joins told none), so which events they missed
    /// cannot be told (the notice may be needless).
    UnknownPosition,
}

impl MissedEventsReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            MissedEventsReason::History(failure) => failure.as_str(),
            MissedEventsReason::Unavailable => "unavailable",
            MissedEventsReason::UnknownPosition => "unknown_position",
        }
    }
}

/// The `system_message` a channel's sockets get when their instance could not deliver some of
/// the channel's events and history cannot fill the gap: `{ "code": "Error", "data": {
/// "errorCode": "missed_events", "channelName", "reason" } }`. The socket stays connected and
/// subscribed; a client that wants the missed events listens again with `since`.
pub fn missed_events(channel: &ChannelName, reason: MissedEventsReason) -> crate::SystemMessage {
    let refusal = Refusal::new(
        ErrorCode::MissedEvents,
        "events of this channel published while this server's link to the other servers was down could not be delivered; listen again with `since` to recover them",
    );
    let mut message = crate::SystemMessage::error(&refusal, Some(channel));
    if let Some(Value::Object(data)) = message.data.as_mut() {
        data.insert("reason".into(), Value::from(reason.as_str()));
    }
    message
}

/// What a `listen` with `since` recovered; flattened into the listen ack:
/// `{ "ok": true, "recovered": true, "epoch": "…", "offset": 42 }` or
/// `{ "ok": true, "recovered": false, "reason": "epoch_changed", "epoch": "…", "offset": 3 }`.
///
/// `epoch` and `offset` are the channel's current epoch and latest offset (absent when the
/// history is disabled, `offset` 0 when the channel has no event yet): a client that was not
/// recovered re-syncs, then continues from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// Whether every event after `since` was delivered.
    pub recovered: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RecoveryFailure>,
    /// The channel's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    /// The channel's latest offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<ChannelOffset>,
}

/// The ack of a successful `listen`: `{ "ok": true }` and, when the project keeps history,
/// what the listen found ([`ListenAnswer`]). Extra fields only: old clients read it as a
/// plain successful [`Ack`](crate::Ack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenAck {
    /// Always `true` (a refused listen answers a plain [`Ack`](crate::Ack)).
    pub ok: bool,
    /// The recovery (a listen with `since`) or the channel's position (a plain listen).
    #[serde(flatten)]
    pub answer: ListenAnswer,
}

/// What a successful `listen` answers besides `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ListenAnswer {
    /// A listen with `since`: `{ "recovered", "reason"?, "epoch"?, "offset"? }`.
    Recovery(Recovery),
    /// A plain listen on a channel whose project keeps history: `{ "epoch", "offset" }`, the
    /// channel's epoch and latest offset when the socket joined (read under the same lock as
    /// the join: every event after `offset` is delivered live, none before). `offset` 0: no
    /// event yet in this epoch. A client that saw no event yet can still present it as
    /// `since` after a reconnect.
    Position(StreamPosition),
}

impl ListenAnswer {
    /// What a successful listen ack `{ "ok": true, … }` adds, read by hand (no derived
    /// untagged/flatten deserializer: the browser client ships this code in its wasm).
    /// `None` for a plain `{ "ok": true }`, a refusal, or fields that are not the protocol's.
    pub fn from_ack(ack: &Value) -> Option<Self> {
        let obj = ack.as_object()?;
        if obj.get("ok")? != &Value::Bool(true) {
            return None;
        }
        match obj.get("recovered") {
            Some(recovered) => {
                let recovered = recovered.as_bool()?;
                let reason = match obj.get("reason").and_then(Value::as_str) {
                    Some("history_expired") => Some(RecoveryFailure::HistoryExpired),
                    Some("epoch_changed") => Some(RecoveryFailure::EpochChanged),
                    Some("history_disabled") => Some(RecoveryFailure::HistoryDisabled),
                    _ => None,
                };
                let epoch = obj
                    .get("epoch")
                    .and_then(Value::as_str)
                    .and_then(|e| Epoch::parse(e).ok());
                let offset = obj.get("offset").and_then(whole_number).map(ChannelOffset);
                Some(ListenAnswer::Recovery(Recovery {
                    recovered,
                    reason,
                    epoch,
                    offset,
                }))
            }
            None => StreamPosition::parse(ack).ok().map(ListenAnswer::Position),
        }
    }
}

/// Default number of events a channel retains.
pub const DEFAULT_HISTORY_SIZE: u32 = 100;
/// Default seconds an event is retained.
pub const DEFAULT_HISTORY_TTL_SECS: u32 = 120;
/// Largest `history.size` a project may set.
pub const MAX_HISTORY_SIZE: u32 = 10_000;
/// Largest `history.ttlSecs` a project may set: one day.
pub const MAX_HISTORY_TTL_SECS: u32 = 86_400;

/// A project's history retention: each channel keeps its last `size` events, each for at most
/// `ttlSecs` seconds. `size: 0` disables history (no offsets, no recovery). Defaults: 100
/// events, 120 s; limits [`MAX_HISTORY_SIZE`], [`MAX_HISTORY_TTL_SECS`]; `ttlSecs` ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistorySettings {
    /// Events kept per channel (0: history off).
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10000))]
    pub size: u32,
    /// Seconds an event is kept.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub ttl_secs: u32,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            size: DEFAULT_HISTORY_SIZE,
            ttl_secs: DEFAULT_HISTORY_TTL_SECS,
        }
    }
}

impl HistorySettings {
    /// Whether history is kept at all.
    pub fn enabled(self) -> bool {
        self.size > 0
    }

    /// Applies an untrusted partial update `{ "size"?, "ttlSecs"? }` to `self` (other fields
    /// are ignored, as everywhere in Herald's `PATCH` bodies; `null` is not a value).
    ///
    /// ```
    /// use herald_protocol::history::HistorySettings;
    /// use serde_json::json;
    /// let s = HistorySettings::default().patch(&json!({"size": 5})).expect("valid");
    /// assert_eq!((s.size, s.ttl_secs), (5, 120));
    /// assert!(HistorySettings::default().patch(&json!({"ttlSecs": 0})).is_err());
    /// assert!(HistorySettings::default().patch(&json!({"size": 10001})).is_err());
    /// // JSON Schema's integers: 376.0 is one, 376.5 is not.
    /// assert_eq!(HistorySettings::default().patch(&json!({"ttlSecs": 376.0})).map(|s| s.ttl_secs), Ok(376));
    /// assert!(HistorySettings::default().patch(&json!({"ttlSecs": 376.5})).is_err());
    /// ```
    pub fn patch(self, v: &Value) -> Result<Self, Refusal> {
        let obj = v.as_object().ok_or_else(|| {
            Refusal::new(
                ErrorCode::InvalidBody,
                "\"history\" must be an object { \"size\"?, \"ttlSecs\"? }",
            )
        })?;
        let field = |name: &str, min: u32, max: u32| -> Result<Option<u32>, Refusal> {
            match obj.get(name) {
                None => Ok(None),
                Some(v) => whole_number(v)
                    .filter(|n| (u64::from(min)..=u64::from(max)).contains(n))
                    .map(|n| Some(n as u32))
                    .ok_or_else(|| {
                        Refusal::new(
                            ErrorCode::InvalidBody,
                            format!("\"history.{name}\" must be an integer from {min} to {max}"),
                        )
                    }),
            }
        };
        Ok(Self {
            size: field("size", 0, MAX_HISTORY_SIZE)?.unwrap_or(self.size),
            ttl_secs: field("ttlSecs", 1, MAX_HISTORY_TTL_SECS)?.unwrap_or(self.ttl_secs),
        })
    }
}

/// Largest `limit` of one history page, and the default.
pub const MAX_HISTORY_PAGE: usize = 100;

/// One retained event, as the history endpoint lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEvent {
    /// The message id the publish answered.
    pub id: String,
    /// The event's offset in its channel.
    pub offset: ChannelOffset,
    /// The publisher's JSON, byte for byte.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub payload: Box<RawValue>,
}

/// `GET /v1/publishers/channels/{channelName}/history?since=&limit=`: the retained events
/// after `since`, oldest first (newest last), at most `limit`. `next` is the `since` of the
/// following page, absent on the last one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPage {
    /// The channel.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub channel_name: ChannelName,
    /// The epoch the offsets belong to (absent: the channel has no history yet, or lost it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    /// The channel's latest offset (0: no event yet).
    pub offset: ChannelOffset,
    /// The events, oldest first.
    pub events: Vec<HistoryEvent>,
    /// Pass as `since` to read the next page; absent when this is the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ChannelOffset>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_names_the_channel_code_and_reason() {
        let c = ChannelName::parse("c").expect("valid");
        let reason = MissedEventsReason::History(RecoveryFailure::HistoryExpired);
        let v = serde_json::to_value(missed_events(&c, reason)).expect("json");
        assert_eq!(v["code"], "Error");
        assert_eq!(v["data"]["errorCode"], "missed_events");
        assert_eq!(v["data"]["channelName"], "c");
        assert_eq!(v["data"]["reason"], "history_expired");
    }

    use serde_json::json;

    #[test]
    fn since_parse() {
        let p = StreamPosition::parse(&json!({"offset": 3, "epoch": "e1"})).expect("valid");
        assert_eq!(p.offset, ChannelOffset(3));
        assert_eq!(p.epoch.as_str(), "e1");
        for bad in [
            json!(3),
            json!({"offset": -1, "epoch": "e"}),
            json!({"offset": 1.5, "epoch": "e"}),
            json!({"offset": 1}),
            json!({"offset": 1, "epoch": ""}),
            json!({"offset": 1, "epoch": "x".repeat(65)}),
        ] {
            assert!(StreamPosition::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_ack_wire() {
        let ack = ListenAck {
            ok: true,
            answer: ListenAnswer::Recovery(Recovery {
                recovered: false,
                reason: Some(RecoveryFailure::EpochChanged),
                epoch: Some(Epoch::parse("b").expect("valid")),
                offset: Some(ChannelOffset(3)),
            }),
        };
        let v = serde_json::to_value(&ack).expect("ser");
        assert_eq!(
            v,
            json!({"ok": true, "recovered": false, "reason": "epoch_changed", "epoch": "b", "offset": 3})
        );
        assert_eq!(
            serde_json::from_value::<ListenAck>(v.clone()).expect("de"),
            ack
        );
        assert_eq!(ListenAnswer::from_ack(&v), Some(ack.answer.clone()));
        // Old clients read it as a plain successful ack.
        assert_eq!(
            serde_json::from_value::<crate::Ack>(v).expect("de"),
            crate::Ack::Ok
        );

        // A plain listen's ack: the position.
        let plain = ListenAck {
            ok: true,
            answer: ListenAnswer::Position(StreamPosition {
                offset: ChannelOffset(0),
                epoch: Epoch::parse("e").expect("valid"),
            }),
        };
        let v = serde_json::to_value(&plain).expect("ser");
        assert_eq!(v, json!({"ok": true, "epoch": "e", "offset": 0}));
        assert_eq!(
            serde_json::from_value::<ListenAck>(v.clone()).expect("de"),
            plain
        );
        assert_eq!(ListenAnswer::from_ack(&v), Some(plain.answer.clone()));
        assert_eq!(ListenAnswer::from_ack(&json!({"ok": true})), None);
        assert_eq!(
            ListenAnswer::from_ack(&json!({"ok": false, "epoch": "e", "offset": 1})),
            None
        );
        assert_eq!(
            serde_json::from_value::<crate::Ack>(v).expect("de"),
            crate::Ack::Ok
        );
        // Not recovered, history off: no position at all.
        let off = json!({"ok": true, "recovered": false, "reason": "history_disabled"});
        assert!(matches!(
            serde_json::from_value::<ListenAck>(off).expect("de").answer,
            ListenAnswer::Recovery(Recovery {
                recovered: false,
                reason: Some(RecoveryFailure::HistoryDisabled),
                ..
            })
        ));
    }

    #[test]
    fn settings_defaults_and_wire() {
        assert_eq!(
            serde_json::to_value(HistorySettings::default()).expect("ser"),
            json!({"size": 100, "ttlSecs": 120})
        );
        let off = HistorySettings::default()
            .patch(&json!({"size": 0}))
            .expect("valid");
        assert!(!off.enabled());
        assert!(
            HistorySettings::default()
                .patch(&json!({"size": null}))
                .is_err()
        );
        assert!(HistorySettings::default().patch(&json!([])).is_err());
    }
}
