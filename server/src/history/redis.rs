//! [`RedisHistory`]: channel history in Redis (Redis mode), shared by every instance.
//!
//! Two keys per channel, with the project as hash tag so that a Redis Cluster keeps them in
//! one slot (the scripts touch both):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{prefix}:history:{{project}}:{channel}` | Stream | one entry per retained event; entry id `{offset}-0`, fields `i` (message id), `d` (payload JSON), `t` (Redis time, ms) |
//! | `{prefix}:history:{{project}}:{channel}:meta` | Hash | `e` (epoch), `o` (latest offset) |
//!
//! A plain `listen` reads the channel's position with a third script, which creates the meta
//! hash (offset 0, new epoch, [`META_TTL_SECS`]) when there is none.
//!
//! One Lua script appends: it reads (or creates) the epoch, allocates the offset with
//! `HINCRBY`, adds the entry with `XADD … MAXLEN {size}` and sets both keys' expiry; so
//! appending and allocating the offset are one atomic step, whichever instance publishes. The
//! stream expires `ttlSecs` after the channel's last event (reads also skip entries older than
//! `ttlSecs`); the meta hash lives [`META_TTL_SECS`] (at least `ttlSecs`) after it, so offsets
//! continue across quiet periods. When the meta hash is gone (expired, Redis wiped or
//! restarted without persistence), the next event starts a new stream at offset 1 under a new
//! epoch: clients holding an old position are told `epoch_changed`.
//!
//! The memory this takes is bounded per channel by `size` and `ttlSecs`; server-wide, by
//! Redis's own `maxmemory` policy (the `--history-max-bytes` budget bounds the embedded
//! history only).

use async_trait::async_trait;
use fred::clients::Client;
use fred::error::Error as RedisError;
use fred::types::Value;
use herald_protocol::RoomName;
use herald_protocol::history::{ChannelOffset, Epoch, HistorySettings};

use super::{History, HistoryError, Position, Slice, StoredEvent, new_epoch};
use crate::store::redis::{LuaScript, array, classify, opt_string};

/// Seconds the meta hash (epoch, latest offset) outlives a channel's last event, at least.
pub const META_TTL_SECS: u64 = 3600;

/// How many of a channel's latest message ids its meta hash keeps to recognise a re-sent append.
pub const RECENT_IDS: usize = 8;

/// KEYS: stream, meta. ARGV: id, payload, size, ttl secs, new epoch, meta ttl secs, recent ids.
/// Returns `{epoch, offset}`. A message id among the channel's [`RECENT_IDS`] latest (the meta
/// field `r`: ` id=offset` entries, newest last) answers that append's offset instead of
/// adding a second copy. The append is written once ([`LuaScript::run_raw_once`]), so this
/// is a second line of defence: a re-written append may run after other instances' appends to
/// the same channel (a replay or a catch-up would otherwise deliver the event twice), and only
/// the 8 latest are recognised. Ids are Herald's UUIDs
/// (fixed length, no space or `=`), so a plain search of ` id=` cannot match another entry.
static APPEND: LuaScript = LuaScript::new(
    r#"
local meta = redis.call('HMGET', KEYS[2], 'e', 'r')
local epoch = meta[1]
local recent = meta[2] or ''
if not epoch then
  epoch = ARGV[5]
  recent = ''
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0)
else
  local key = ' ' .. ARGV[1] .. '='
  local at = string.find(recent, key, 1, true)
  if at then
    return {epoch, tonumber(string.match(recent, '^(%d+)', at + #key))}
  end
end
local off = redis.call('HINCRBY', KEYS[2], 'o', 1)
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], off .. '-0', 'i', ARGV[1], 'd', ARGV[2], 't', ms)
recent = recent .. ' ' .. ARGV[1] .. '=' .. off
local n = select(2, string.gsub(recent, ' ', ' '))
while n > tonumber(ARGV[7]) do
  recent = string.sub(recent, string.find(recent, ' ', 2, true))
  n = n - 1
end
redis.call('HSET', KEYS[2], 'r', recent)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {epoch, off}
"#,
);

/// KEYS: stream, meta. ARGV: after, limit, size, ttl secs.
/// Returns `{}` (no stream) or `{epoch, top, first (0: none), offset, id, payload, …}`.
static READ: LuaScript = LuaScript::new(
    r#"
local meta = redis.call('HMGET', KEYS[2], 'e', 'o')
if not meta[1] then
  return {}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local min_t = now - tonumber(ARGV[4]) * 1000
local top = tonumber(meta[2]) or 0
local after = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local start = top - tonumber(ARGV[3]) + 1
if start < 1 then start = 1 end
local out = {meta[1], top, 0}
local n = 0
for _, e in ipairs(redis.call('XRANGE', KEYS[1], start .. '-0', '+')) do
  local f = e[2]
  local fields = {}
  for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
  if tonumber(fields['t']) >= min_t then
    local off = tonumber(string.match(e[1], '^(%d+)'))
    if out[3] == 0 then out[3] = off end
    if off > after and n < limit then
      out[#out + 1] = off
      out[#out + 1] = fields['i']
      out[#out + 1] = fields['d']
      n = n + 1
    end
  end
end
return out
"#,
);

/// KEYS: stream, meta. ARGV: new epoch, meta ttl secs. Returns `{epoch, offset}`, creating
/// the meta hash (offset 0) when there is none.
static POSITION: LuaScript = LuaScript::new(
    r#"
local meta = redis.call('HMGET', KEYS[2], 'e', 'o')
if meta[1] then
  return {meta[1], tonumber(meta[2]) or 0}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'e', ARGV[1], 'o', 0)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {ARGV[1], 0}
"#,
);

/// Channel history in Redis.
pub struct RedisHistory {
    client: Client,
    prefix: String,
}

impl RedisHistory {
    /// History under `prefix` on `client` (configured by the caller, as for the store).
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
        }
    }

    /// The stream key and the meta key of `room`.
    pub fn keys(&self, room: &RoomName) -> [String; 2] {
        let (project, channel) = room.as_str().split_once(':').unwrap_or(("", room.as_str()));
        let stream = format!("{}:history:{{{project}}}:{channel}", self.prefix);
        let meta = format!("{stream}:meta");
        [stream, meta]
    }
}

fn history_error(e: RedisError) -> HistoryError {
    classify(e, HistoryError::Unavailable, HistoryError::Backend)
}

fn integer(v: &Value) -> Result<u64, HistoryError> {
    match v {
        Value::Integer(n) if *n >= 0 => Ok(*n as u64),
        other => Err(HistoryError::Backend(format!(
            "expected an offset, got {}",
            other.kind()
        ))),
    }
}

fn string(v: Value) -> Result<String, HistoryError> {
    opt_string(v)
        .map_err(HistoryError::Backend)?
        .ok_or_else(|| HistoryError::Backend("missing history field".into()))
}

fn epoch(v: Value) -> Result<Epoch, HistoryError> {
    Epoch::parse(&string(v)?).map_err(|r| HistoryError::Backend(r.message))
}

#[async_trait]
impl History for RedisHistory {
    async fn append(
        &self,
        room: &RoomName,
        settings: HistorySettings,
        id: &str,
        payload: &str,
    ) -> Result<Position, HistoryError> {
        let keys = self.keys(room).to_vec();
        let meta_ttl = META_TTL_SECS.max(settings.ttl_secs.into());
        let args = vec![
            id.to_owned(),
            payload.to_owned(),
            settings.size.max(1).to_string(),
            settings.ttl_secs.max(1).to_string(),
            new_epoch().as_str().to_owned(),
            meta_ttl.to_string(),
            RECENT_IDS.to_string(),
        ];
        // Written once: fred re-writes an in-flight command after a reconnect, and an append
        // that timed out (Redis paused) may still run when Redis resumes; a second write
        // would then add the event again at a later offset, beyond the reach of the
        // re-sent-append check when other appends came in between. Failing instead is the
        // honest answer (`503`; the first write may still run, once).
        let reply = APPEND
            .run_raw_once(&self.client, keys, args)
            .await
            .map_err(history_error)?;
        let mut items = array(reply).map_err(HistoryError::Backend)?.into_iter();
        let (Some(e), Some(o)) = (items.next(), items.next()) else {
            return Err(HistoryError::Backend("short append reply".into()));
        };
        Ok(Position {
            offset: ChannelOffset(integer(&o)?),
            epoch: epoch(e)?,
        })
    }

    async fn read(
        &self,
        room: &RoomName,
        settings: HistorySettings,
        after: ChannelOffset,
        limit: usize,
    ) -> Result<Slice, HistoryError> {
        let keys = self.keys(room).to_vec();
        let args = vec![
            after.get().to_string(),
            limit.to_string(),
            settings.size.to_string(),
            settings.ttl_secs.to_string(),
        ];
        let reply = READ
            .run_raw(&self.client, keys, args)
            .await
            .map_err(history_error)?;
        let mut items = array(reply).map_err(HistoryError::Backend)?.into_iter();
        let Some(e) = items.next() else {
            return Ok(Slice {
                epoch: None,
                top: ChannelOffset(0),
                events: Vec::new(),
                first: None,
            });
        };
        let epoch = epoch(e)?;
        let (Some(top), Some(first)) = (items.next(), items.next()) else {
            return Err(HistoryError::Backend("short read reply".into()));
        };
        let top = integer(&top)?;
        let first = integer(&first)?;
        let mut events = Vec::new();
        while let Some(o) = items.next() {
            let (Some(id), Some(payload)) = (items.next(), items.next()) else {
                return Err(HistoryError::Backend("short history entry".into()));
            };
            events.push(StoredEvent {
                offset: ChannelOffset(integer(&o)?),
                id: string(id)?,
                payload: string(payload)?,
            });
        }
        Ok(Slice {
            epoch: Some(epoch),
            top: ChannelOffset(top),
            events,
            first: (first > 0).then_some(ChannelOffset(first)),
        })
    }

    async fn head(
        &self,
        room: &RoomName,
        _settings: HistorySettings,
    ) -> Result<(Option<Epoch>, ChannelOffset), HistoryError> {
        use fred::interfaces::HashesInterface;
        let [_, meta] = self.keys(room);
        let (e, o): (Option<String>, Option<u64>) = self
            .client
            .hmget(meta, vec!["e", "o"])
            .await
            .map_err(history_error)?;
        let Some(e) = e else {
            return Ok((None, ChannelOffset(0)));
        };
        let epoch = Epoch::parse(&e).map_err(|r| HistoryError::Backend(r.message))?;
        Ok((Some(epoch), ChannelOffset(o.unwrap_or(0))))
    }

    async fn position(&self, room: &RoomName) -> Result<Position, HistoryError> {
        let keys = self.keys(room).to_vec();
        let args = vec![new_epoch().to_string(), META_TTL_SECS.to_string()];
        let reply = POSITION
            .run_raw(&self.client, keys, args)
            .await
            .map_err(history_error)?;
        let mut items = array(reply).map_err(HistoryError::Backend)?.into_iter();
        let (Some(e), Some(o)) = (items.next(), items.next()) else {
            return Err(HistoryError::Backend("short position reply".into()));
        };
        Ok(Position {
            epoch: epoch(e)?,
            offset: ChannelOffset(integer(&o)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_test_server::{RedisServer, connect, unique_prefix};
    use herald_protocol::{ChannelName, ProjectId};

    #[tokio::test]
    async fn redis_history_contract() {
        let server = RedisServer::start();
        let history = RedisHistory::new(connect(&server.url()).await, &unique_prefix());
        super::super::contract::run(&history).await;
    }

    #[tokio::test]
    async fn the_same_append_run_twice_is_one_event() {
        let server = RedisServer::start();
        let history = RedisHistory::new(connect(&server.url()).await, &unique_prefix());
        let room = RoomName::channel(
            &ProjectId::parse("p").expect("valid"),
            &ChannelName::parse("c").expect("valid"),
        );
        let s = HistorySettings::default();
        let first = history.append(&room, s, "m1", "1").await.expect("append");
        let again = history.append(&room, s, "m1", "1").await.expect("append");
        assert_eq!(
            first, again,
            "a re-sent append answers the first one's position"
        );
        let next = history.append(&room, s, "m2", "2").await.expect("append");
        assert_eq!(next.offset.get(), first.offset.get() + 1);
        // Re-sent after another instance's append landed in between: still one event.
        let late = history.append(&room, s, "m1", "1").await.expect("append");
        assert_eq!(
            late, first,
            "a late re-send answers the first one's position"
        );
        // Only the latest RECENT_IDS are remembered: older ids are forgotten, newer kept.
        for i in 3..(3 + RECENT_IDS) {
            history
                .append(&room, s, &format!("m{i}"), "x")
                .await
                .expect("append");
        }
        let last = format!("m{}", 2 + RECENT_IDS);
        let (_, top) = history.head(&room, s).await.expect("head");
        let again = history.append(&room, s, &last, "x").await.expect("append");
        assert_eq!(again.offset, top, "the newest id is remembered");
        let forgotten = history.append(&room, s, "m2", "2").await.expect("append");
        assert_eq!(forgotten.offset.get(), again.offset.get() + 1);
        let slice = history
            .read(&room, s, ChannelOffset(0), 100)
            .await
            .expect("read");
        let ids: Vec<&str> = slice.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), 3 + RECENT_IDS, "{ids:?}");
        assert_eq!(&ids[..2], ["m1", "m2"]);
    }

    #[tokio::test]
    async fn two_instances_share_one_stream_and_a_wiped_redis_changes_the_epoch() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let a = RedisHistory::new(connect(&server.url()).await, &prefix);
        let b = RedisHistory::new(connect(&server.url()).await, &prefix);
        let room = RoomName::channel(
            &ProjectId::parse("p").expect("valid"),
            &ChannelName::parse("c").expect("valid"),
        );
        let s = HistorySettings::default();
        let ids: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
        let mut tasks = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let h = if i % 2 == 0 { &a } else { &b };
            tasks.push(h.append(&room, s, id, "1"));
        }
        let mut offsets: Vec<u64> = futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .map(|p| p.expect("append").offset.get())
            .collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (1..=50).collect::<Vec<_>>(), "one atomic counter");
        let before = b.read(&room, s, ChannelOffset(0), 100).await.expect("read");
        let _: () = fred::interfaces::ClientLike::flushall(&a.client, false)
            .await
            .expect("flush");
        let p = a.append(&room, s, "m", "1").await.expect("append");
        assert_eq!(p.offset, ChannelOffset(1));
        assert_ne!(Some(p.epoch), before.epoch);
        assert_eq!(a.keys(&room)[0], format!("{prefix}:history:{{p}}:c"));
    }
}
