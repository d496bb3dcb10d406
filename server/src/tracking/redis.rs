//! The Redis [`ConnectionTracker`] (Redis mode): every instance writes its sockets'
//! associations to the same Redis, so revoking a key on any instance finds every socket that
//! joined with it, wherever it is connected.
//!
//! ## Key layout
//!
//! | key | type | value |
//! |---|---|---|
//! | `{prefix}:clientApiKey:{socketId}` | hash | room → API key id |
//! | `{prefix}:channelApiKeyRecord:{apiKeyId}` | set | `{socketId}\|{room}` |
//! | `{prefix}:instance:{instanceId}:sockets` | set | ids of the sockets that instance tracks |
//! | `{prefix}:instances` | set | ids of the instances that track (or tracked) sockets |
//! | `{prefix}:instance:{instanceId}:alive` | string, TTL | the heartbeat's TTL in ms; present while the instance heartbeats |
//!
//! Room names contain `:` but never `|`, and socket ids contain neither, so
//! `{socketId}|{room}` splits unambiguously at the first `|`.
//!
//! ## Consistency
//!
//! `add`, `remove` and `remove_socket` are each one Lua script that updates both indexes and
//! the instance's socket set, so the two directions never disagree, even across instances.
//!
//! ## Instances that die
//!
//! An instance that stops without [`RedisTracker::forget_instance`] leaves its entries
//! behind. Each instance calls [`RedisTracker::heartbeat`] at an interval well below the TTL
//! (`add` also creates a missing alive key, so sockets tracked before the first heartbeat are
//! not mistaken for a dead instance's), and periodically
//! [`RedisTracker::sweep_dead_instances`], which removes the entries of every instance whose
//! alive key expired. A sweep drains a dead instance in batches, each one script that first
//! checks the alive key again, so it is safe when several instances sweep at once (each
//! association is removed, and reported, by exactly one sweeper) and it stops if the instance
//! comes back.
//!
//! ## Timeouts and reconnection
//!
//! [`RedisTracker`] does not configure the fred client it is given: the caller sets a command
//! timeout and a reconnect policy. Connection failures and timeouts become
//! [`TrackerError::Unavailable`]; data Herald cannot read becomes [`TrackerError::Backend`].
//! With Redis Cluster, use a hash-tag prefix such as `{herald}` (scripts compute key names).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::error::Error as RedisError;
use fred::interfaces::{HashesInterface, SetsInterface};
use fred::types::Value;
use herald_protocol::{ApiKeyId, ProjectId, RoomName};

use super::{Association, ConnectionTracker, TrackerError};
use crate::store::redis::{LuaScript, array, classify, opt_string};

/// How many sockets of a dead instance one sweep script handles, so a large instance does
/// not block Redis for long.
const SWEEP_BATCH: usize = 500;

/// The alive TTL `add` uses when this tracker has not heartbeat yet.
const DEFAULT_ALIVE_TTL_MS: u64 = 30_000;

/// KEYS: clientApiKey:{socket}, channelApiKeyRecord:{key}, this instance's sockets, instances,
/// this instance's alive key.
/// ARGV: room, key id, socket id, `{prefix}:channelApiKeyRecord:`, instance id, TTL in ms.
static ADD: LuaScript = LuaScript::new(
    r#"
local member = ARGV[3] .. '|' .. ARGV[1]
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev and prev ~= ARGV[2] then
  redis.call('SREM', ARGV[4] .. prev, member)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], member)
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[5])
redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[6], 'NX')
return 1
"#,
);

/// KEYS: clientApiKey:{socket}, this instance's sockets.
/// ARGV: room, socket id, `{prefix}:channelApiKeyRecord:`.
static REMOVE: LuaScript = LuaScript::new(
    r#"
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', ARGV[3] .. prev, ARGV[2] .. '|' .. ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 1
"#,
);

/// KEYS: clientApiKey:{socket}, this instance's sockets.
/// ARGV: socket id, `{prefix}:channelApiKeyRecord:`. Returns `{room, key, room, key, ...}`.
static REMOVE_SOCKET: LuaScript = LuaScript::new(
    r#"
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  redis.call('SREM', ARGV[2] .. flat[i + 1], ARGV[1] .. '|' .. flat[i])
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return flat
"#,
);

/// KEYS: alive key, instances. ARGV: TTL in ms, instance id.
/// Returns 1 when the alive key was still there, 0 when it had expired (or never existed).
static HEARTBEAT: LuaScript = LuaScript::new(
    r#"
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return had
"#,
);

/// KEYS: instances. ARGV: prefix.
/// Returns `{id, ttl, pttl, id, ttl, pttl, ...}` for every registered instance whose alive key
/// exists: its heartbeat TTL (the key's value) and the key's remaining TTL, both in ms.
static LIVE_INSTANCES: LuaScript = LuaScript::new(
    r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local alive = ARGV[1] .. ':instance:' .. id .. ':alive'
  local pttl = redis.call('PTTL', alive)
  if pttl ~= -2 then
    out[#out + 1] = id
    out[#out + 1] = redis.call('GET', alive)
    out[#out + 1] = pttl
  end
end
return out
"#,
);

/// Removes one batch of an instance's sockets from both indexes.
/// KEYS: instances, the instance's alive key, the instance's sockets.
/// ARGV: instance id, prefix, batch size, '1' to drain even if alive (own shutdown).
/// Returns `{status, socket, room, key, socket, room, key, ...}`: status 0 = alive, left
/// alone; 1 = more sockets remain; 2 = drained and unregistered.
static DRAIN_INSTANCE: LuaScript = LuaScript::new(
    r#"
if ARGV[4] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return { 0 } end
local out = { 1 }
for _, s in ipairs(redis.call('SPOP', KEYS[3], tonumber(ARGV[3]))) do
  local ck = ARGV[2] .. ':clientApiKey:' .. s
  local flat = redis.call('HGETALL', ck)
  for i = 1, #flat, 2 do
    redis.call('SREM', ARGV[2] .. ':channelApiKeyRecord:' .. flat[i + 1], s .. '|' .. flat[i])
    out[#out + 1] = s
    out[#out + 1] = flat[i]
    out[#out + 1] = flat[i + 1]
  end
  redis.call('DEL', ck)
end
if redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  out[1] = 2
end
return out
"#,
);

/// The Redis-backed [`ConnectionTracker`] of one Herald instance. See the
/// [module docs](self) for the key layout and the heartbeat / sweep protocol.
///
/// The caller configures command timeouts and reconnection on the fred [`Client`].
pub struct RedisTracker {
    client: Client,
    prefix: String,
    instance_id: String,
    /// Whether a heartbeat of this tracker succeeded already.
    beating: AtomicBool,
    /// The TTL of the last heartbeat, in ms.
    ttl_ms: AtomicU64,
}

impl RedisTracker {
    /// A tracker for the instance `instance_id` over `client`; keys start with `{prefix}:`.
    ///
    /// `instance_id` must be unique among the instances sharing the Redis (a UUID is fine).
    /// Start calling [`heartbeat`](Self::heartbeat) when the instance starts. A socket tracked
    /// before the first heartbeat is safe: `add` creates the alive key when it is missing
    /// (with the last heartbeat's TTL, 30 s before any), without extending a live one.
    pub fn new(client: Client, prefix: &str, instance_id: String) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            instance_id,
            beating: AtomicBool::new(false),
            ttl_ms: AtomicU64::new(DEFAULT_ALIVE_TTL_MS),
        }
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Marks this instance alive for `ttl` (`SET {prefix}:instance:{id}:alive PX ttl`) and
    /// registers it in `{prefix}:instances`. Call it at an interval well below `ttl`.
    ///
    /// If the alive key had expired since the previous heartbeat, another instance may have
    /// swept this instance's entries; that is logged as a warning.
    pub async fn heartbeat(&self, ttl: Duration) -> Result<(), TrackerError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.ttl_ms.store(ttl_ms, Ordering::Relaxed);
        let keys = vec![self.alive_key(&self.instance_id), self.instances_key()];
        let args = vec![ttl_ms.to_string(), self.instance_id.clone()];
        let had = int(self.run(&HEARTBEAT, keys, args).await?)?;
        if self.beating.swap(true, Ordering::Relaxed) && had == 0 {
            tracing::warn!(
                instance_id = %self.instance_id,
                "this instance's heartbeat had expired: another instance may have swept its \
                 connection tracking entries"
            );
        }
        Ok(())
    }

    /// The registered instances whose heartbeat has not expired (this one included, if it
    /// beats), each with how long ago its last heartbeat was, as Redis's TTLs tell it (no
    /// clock is compared across machines).
    pub async fn live_instances(&self) -> Result<Vec<(String, Duration)>, TrackerError> {
        let reply = self
            .run(
                &LIVE_INSTANCES,
                vec![self.instances_key()],
                vec![self.prefix.clone()],
            )
            .await?;
        let items = array(reply).map_err(TrackerError::Backend)?;
        let mut out = Vec::with_capacity(items.len() / 3);
        for triple in items.chunks(3) {
            let [id, ttl, pttl] = triple else {
                return Err(TrackerError::Backend(
                    "odd-length live instances reply from Redis".into(),
                ));
            };
            let id = value_string(id.clone()).map_err(TrackerError::Backend)?;
            // An alive key of an older Herald holds `1`, and one without TTL -1: both count as
            // a heartbeat just now.
            let ttl = opt_string(ttl.clone())
                .ok()
                .flatten()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let pttl = u64::try_from(int(pttl.clone())?).unwrap_or(ttl);
            out.push((id, Duration::from_millis(ttl.saturating_sub(pttl))));
        }
        Ok(out)
    }

    /// Removes every association of every instance (other than this one) whose alive key is
    /// gone, from both indexes, with the instance's socket set and registration; returns what
    /// was removed. Safe to run on several instances at once: each association is removed and
    /// returned by exactly one of them, and a second sweep finds nothing.
    ///
    /// Entries Herald cannot read are removed too, but logged instead of returned.
    pub async fn sweep_dead_instances(&self) -> Result<Vec<Association>, TrackerError> {
        let instances: Vec<String> = self
            .client
            .smembers(self.instances_key())
            .await
            .map_err(tracker_error)?;
        let mut removed = Vec::new();
        for instance in instances {
            if instance == self.instance_id {
                continue;
            }
            let before = removed.len();
            let drained = self.drain_instance(&instance, false, &mut removed).await?;
            if drained {
                tracing::info!(
                    dead_instance = %instance,
                    associations = removed.len() - before,
                    "swept the connection tracking entries of a dead instance"
                );
            }
        }
        Ok(removed)
    }

    /// On clean shutdown: removes this instance's entries from both indexes, its socket set,
    /// its alive key and its registration. Failures are logged (the entries are then left
    /// for another instance's sweep once the alive key expires).
    pub async fn forget_instance(&self) {
        let mut removed = Vec::new();
        let instance = self.instance_id.clone();
        match self.drain_instance(&instance, true, &mut removed).await {
            Ok(_) => tracing::debug!(
                associations = removed.len(),
                "removed this instance's connection tracking entries"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "could not remove this instance's connection tracking entries; another \
                 instance will sweep them once its heartbeat expires"
            ),
        }
    }

    /// Drains `instance` batch by batch into `out`; returns whether it was drained (false when
    /// it turned out to be alive).
    async fn drain_instance(
        &self,
        instance: &str,
        force: bool,
        out: &mut Vec<Association>,
    ) -> Result<bool, TrackerError> {
        let keys = vec![
            self.instances_key(),
            self.alive_key(instance),
            self.sockets_key(instance),
        ];
        let args = vec![
            instance.to_owned(),
            self.prefix.clone(),
            SWEEP_BATCH.to_string(),
            if force { "1" } else { "0" }.to_owned(),
        ];
        loop {
            let reply = self
                .run(&DRAIN_INSTANCE, keys.clone(), args.clone())
                .await?;
            let mut items = array(reply).map_err(TrackerError::Backend)?.into_iter();
            let status = int(items.next().unwrap_or(Value::Null))?;
            let rest: Vec<Value> = items.collect();
            for triple in rest.chunks(3) {
                let [socket, room, key] = triple else {
                    tracing::warn!("odd-length sweep reply from Redis");
                    break;
                };
                let socket = opt_string(socket.clone()).ok().flatten();
                let parsed = socket
                    .ok_or_else(|| "unreadable socket id".to_owned())
                    .and_then(|s| {
                        association(s, value_string(room.clone())?, value_string(key.clone())?)
                    });
                match parsed {
                    Ok(a) => out.push(a),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "removed an unreadable connection tracking entry"
                    ),
                }
            }
            match status {
                0 => return Ok(false),
                1 => continue,
                2 => return Ok(true),
                n => {
                    return Err(TrackerError::Backend(format!(
                        "unexpected sweep script status {n}"
                    )));
                }
            }
        }
    }

    async fn run(
        &self,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, TrackerError> {
        script
            .run_raw(&self.client, keys, args)
            .await
            .map_err(tracker_error)
    }

    fn client_key(&self, socket_id: &str) -> String {
        format!("{}:clientApiKey:{socket_id}", self.prefix)
    }

    fn key_set_prefix(&self) -> String {
        format!("{}:channelApiKeyRecord:", self.prefix)
    }

    fn key_set(&self, api_key_id: &ApiKeyId) -> String {
        format!("{}{}", self.key_set_prefix(), api_key_id.as_str())
    }

    fn sockets_key(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:sockets", self.prefix)
    }

    fn alive_key(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:alive", self.prefix)
    }

    fn instances_key(&self) -> String {
        format!("{}:instances", self.prefix)
    }
}

#[async_trait]
impl ConnectionTracker for RedisTracker {
    async fn add(
        &self,
        socket_id: &str,
        room: &RoomName,
        api_key_id: &ApiKeyId,
    ) -> Result<(), TrackerError> {
        if socket_id.contains('|') || socket_id.is_empty() {
            return Err(TrackerError::Backend(format!(
                "socket id {socket_id:?} cannot be tracked"
            )));
        }
        let keys = vec![
            self.client_key(socket_id),
            self.key_set(api_key_id),
            self.sockets_key(&self.instance_id),
            self.instances_key(),
            self.alive_key(&self.instance_id),
        ];
        let args = vec![
            room.as_str().to_owned(),
            api_key_id.as_str().to_owned(),
            socket_id.to_owned(),
            self.key_set_prefix(),
            self.instance_id.clone(),
            self.ttl_ms.load(Ordering::Relaxed).to_string(),
        ];
        self.run(&ADD, keys, args).await.map(drop)
    }

    async fn remove(&self, socket_id: &str, room: &RoomName) -> Result<(), TrackerError> {
        let keys = vec![
            self.client_key(socket_id),
            self.sockets_key(&self.instance_id),
        ];
        let args = vec![
            room.as_str().to_owned(),
            socket_id.to_owned(),
            self.key_set_prefix(),
        ];
        self.run(&REMOVE, keys, args).await.map(drop)
    }

    async fn remove_socket(&self, socket_id: &str) -> Result<Vec<Association>, TrackerError> {
        let keys = vec![
            self.client_key(socket_id),
            self.sockets_key(&self.instance_id),
        ];
        let args = vec![socket_id.to_owned(), self.key_set_prefix()];
        let flat =
            array(self.run(&REMOVE_SOCKET, keys, args).await?).map_err(TrackerError::Backend)?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let parsed = match pair {
                [room, key] => value_string(room.clone()).and_then(|room| {
                    association(socket_id.to_owned(), room, value_string(key.clone())?)
                }),
                _ => Err("odd-length reply".to_owned()),
            };
            match parsed {
                Ok(a) => out.push(a),
                Err(e) => tracing::warn!(
                    socket_id,
                    error = %e,
                    "removed an unreadable connection tracking entry"
                ),
            }
        }
        Ok(out)
    }

    async fn by_socket(&self, socket_id: &str) -> Result<Vec<Association>, TrackerError> {
        let rooms: HashMap<String, String> = self
            .client
            .hgetall(self.client_key(socket_id))
            .await
            .map_err(tracker_error)?;
        rooms
            .into_iter()
            .map(|(room, key)| association(socket_id.to_owned(), room, key))
            .collect::<Result<_, _>>()
            .map_err(TrackerError::Backend)
    }

    async fn by_api_key(&self, api_key_id: &ApiKeyId) -> Result<Vec<Association>, TrackerError> {
        let members: Vec<String> = self
            .client
            .smembers(self.key_set(api_key_id))
            .await
            .map_err(tracker_error)?;
        members
            .into_iter()
            .map(|m| {
                let (socket_id, room) = m
                    .split_once('|')
                    .ok_or_else(|| format!("malformed entry {m:?}"))?;
                Ok(Association {
                    socket_id: socket_id.to_owned(),
                    room: parse_room(room)?,
                    api_key_id: api_key_id.clone(),
                })
            })
            .collect::<Result<_, String>>()
            .map_err(TrackerError::Backend)
    }
}

fn association(socket_id: String, room: String, key: String) -> Result<Association, String> {
    Ok(Association {
        socket_id,
        room: parse_room(&room)?,
        api_key_id: ApiKeyId::parse(&key).map_err(|e| format!("API key id {key:?}: {e}"))?,
    })
}

/// Rebuilds a room name read back from Redis (rooms are built only by `RoomName`).
fn parse_room(s: &str) -> Result<RoomName, String> {
    let room = if s.contains(':') {
        RoomName::parse_channel(s).map(|(project, channel)| RoomName::channel(&project, &channel))
    } else {
        ProjectId::parse(s).map(|project| RoomName::project(&project))
    };
    room.map_err(|e| format!("room {s:?}: {e}"))
}

fn value_string(v: Value) -> Result<String, String> {
    opt_string(v)?.ok_or_else(|| "nil in reply".to_owned())
}

fn int(v: Value) -> Result<i64, TrackerError> {
    match v {
        Value::Integer(n) => Ok(n),
        other => Err(TrackerError::Backend(format!(
            "unexpected script reply: {}",
            other.kind()
        ))),
    }
}

fn tracker_error(e: RedisError) -> TrackerError {
    classify(e, TrackerError::Unavailable, TrackerError::Backend)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use fred::interfaces::{KeysInterface, LuaInterface};
    use herald_protocol::ChannelName;

    use super::*;
    use crate::redis_test_server::{RedisServer, connect, unique_prefix};

    fn room(project: &str, channel: &str) -> RoomName {
        RoomName::channel(
            &ProjectId::parse(project).expect("valid"),
            &ChannelName::parse(channel).expect("valid"),
        )
    }

    fn key(k: &str) -> ApiKeyId {
        ApiKeyId::parse(k).expect("valid")
    }

    async fn tracker(server: &RedisServer, prefix: &str, instance: &str) -> RedisTracker {
        RedisTracker::new(connect(&server.url()).await, prefix, instance.to_owned())
    }

    async fn keys_of(client: &Client, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = client
            .eval(
                "return redis.call('KEYS', ARGV[1])",
                Vec::<String>::new(),
                vec![format!("{prefix}:*")],
            )
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }

    fn sorted(mut v: Vec<Association>) -> Vec<Association> {
        v.sort();
        v
    }

    #[tokio::test]
    async fn redis_tracker_contract() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let t = tracker(&server, &prefix, "contract").await;
        t.heartbeat(Duration::from_secs(30)).await.expect("beat");
        super::super::contract::run(&t).await;
        // Everything the contract added is gone again, socket set included.
        assert_eq!(
            keys_of(&t.client, &prefix).await,
            vec![
                format!("{prefix}:instance:contract:alive"),
                format!("{prefix}:instances"),
            ]
        );
    }

    #[tokio::test]
    async fn redis_tracker_uses_the_documented_key_layout() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let t = tracker(&server, &prefix, "i1").await;
        let r = room("acme", "private-a");
        let k = key("00000000000000a1");
        t.add("s1", &r, &k).await.expect("add");
        let hash: HashMap<String, String> = t
            .client
            .hgetall(format!("{prefix}:clientApiKey:s1"))
            .await
            .expect("hgetall");
        assert_eq!(
            hash,
            HashMap::from([("acme:private-a".to_owned(), k.to_string())])
        );
        let set: Vec<String> = t
            .client
            .smembers(format!("{prefix}:channelApiKeyRecord:{k}"))
            .await
            .expect("smembers");
        assert_eq!(set, vec!["s1|acme:private-a".to_owned()]);
        let sockets: Vec<String> = t
            .client
            .smembers(format!("{prefix}:instance:i1:sockets"))
            .await
            .expect("smembers");
        assert_eq!(sockets, vec!["s1".to_owned()]);
        let instances: Vec<String> = t
            .client
            .smembers(format!("{prefix}:instances"))
            .await
            .expect("smembers");
        assert_eq!(instances, vec!["i1".to_owned()]);
    }

    #[tokio::test]
    async fn redis_tracker_sweeps_dead_instances_only() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let a = tracker(&server, &prefix, "instance-a").await;
        let b = tracker(&server, &prefix, "instance-b").await;
        let c = tracker(&server, &prefix, "instance-c").await;
        let (k1, k2) = (key("00000000000000b1"), key("00000000000000b2"));
        let (r1, r2) = (room("acme", "private-one"), room("acme", "private-two"));

        a.heartbeat(Duration::from_millis(200)).await.expect("beat");
        b.heartbeat(Duration::from_secs(30)).await.expect("beat");
        c.heartbeat(Duration::from_secs(30)).await.expect("beat");
        // A tracks more sockets than one sweep batch, so sweeping takes several scripts.
        let mut a_entries = Vec::new();
        for i in 0..(SWEEP_BATCH + 20) {
            let socket = format!("a{i}");
            a.add(&socket, &r1, &k1).await.expect("add");
            a_entries.push(Association {
                socket_id: socket,
                room: r1.clone(),
                api_key_id: k1.clone(),
            });
        }
        a.add("a0", &r2, &k2).await.expect("add");
        a_entries.push(Association {
            socket_id: "a0".into(),
            room: r2.clone(),
            api_key_id: k2.clone(),
        });
        b.add("b1", &r1, &k1).await.expect("add");
        b.add("b1", &r2, &k2).await.expect("add");

        // While A heartbeats, nobody sweeps it.
        a.heartbeat(Duration::from_millis(200)).await.expect("beat");
        assert!(b.sweep_dead_instances().await.expect("sweep").is_empty());

        // A stops heartbeating; its alive key expires.
        tokio::time::sleep(Duration::from_millis(400)).await;

        // B and C sweep at once: together they remove each of A's entries exactly once.
        let (swept_b, swept_c) = tokio::join!(b.sweep_dead_instances(), c.sweep_dead_instances());
        let mut swept = swept_b.expect("sweep b");
        swept.extend(swept_c.expect("sweep c"));
        assert_eq!(sorted(swept), sorted(a_entries));

        // Both indexes no longer know A's sockets; B's entries remain.
        assert!(a.by_socket("a0").await.expect("read").is_empty());
        assert!(a.by_socket("a7").await.expect("read").is_empty());
        let remaining_k1 = b.by_api_key(&k1).await.expect("read");
        assert_eq!(
            remaining_k1,
            vec![Association {
                socket_id: "b1".into(),
                room: r1.clone(),
                api_key_id: k1.clone(),
            }]
        );
        assert_eq!(b.by_api_key(&k2).await.expect("read").len(), 1);
        assert_eq!(b.by_socket("b1").await.expect("read").len(), 2);

        // A is unregistered and its sets are gone.
        let instances: Vec<String> = b
            .client
            .smembers(format!("{prefix}:instances"))
            .await
            .expect("smembers");
        assert!(!instances.contains(&"instance-a".to_owned()));
        let a_sockets: bool = b
            .client
            .exists(format!("{prefix}:instance:instance-a:sockets"))
            .await
            .expect("exists");
        assert!(!a_sockets);

        // A second sweep finds nothing.
        assert!(b.sweep_dead_instances().await.expect("sweep").is_empty());
        assert!(c.sweep_dead_instances().await.expect("sweep").is_empty());
    }

    #[tokio::test]
    async fn redis_tracker_lists_live_instances_with_the_age_of_their_heartbeat() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let a = tracker(&server, &prefix, "steady").await;
        let b = tracker(&server, &prefix, "fading").await;
        let c = tracker(&server, &prefix, "leaving").await;
        a.heartbeat(Duration::from_secs(30)).await.expect("beat");
        b.heartbeat(Duration::from_millis(300)).await.expect("beat");
        c.heartbeat(Duration::from_secs(30)).await.expect("beat");
        c.forget_instance().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut live = a.live_instances().await.expect("live");
        live.sort();
        let ids: Vec<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["fading", "steady"],
            "a forgotten instance is not live"
        );
        for (id, ago) in &live {
            assert!(
                *ago >= Duration::from_millis(50) && *ago < Duration::from_secs(5),
                "{id} beat {ago:?} ago"
            );
        }
        // Once its heartbeat expires, an instance is no longer live.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let live = a.live_instances().await.expect("live");
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0, "steady");
    }

    #[tokio::test]
    async fn redis_tracker_sweep_never_takes_its_own_instance() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let a = tracker(&server, &prefix, "self").await;
        a.heartbeat(Duration::from_millis(50)).await.expect("beat");
        a.add("s1", &room("acme", "private-x"), &key("00000000000000c1"))
            .await
            .expect("add");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(a.sweep_dead_instances().await.expect("sweep").is_empty());
        assert_eq!(a.by_socket("s1").await.expect("read").len(), 1);
    }

    #[tokio::test]
    async fn redis_tracker_entries_made_before_the_first_heartbeat_are_not_swept() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let a = tracker(&server, &prefix, "starting").await;
        let b = tracker(&server, &prefix, "sweeper").await;
        a.add("s1", &room("acme", "private-x"), &key("00000000000000c2"))
            .await
            .expect("add");
        assert!(b.sweep_dead_instances().await.expect("sweep").is_empty());
        assert_eq!(a.by_socket("s1").await.expect("read").len(), 1);
    }

    #[tokio::test]
    async fn redis_tracker_forget_instance_removes_its_entries_and_registration() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let a = tracker(&server, &prefix, "leaving").await;
        let b = tracker(&server, &prefix, "staying").await;
        a.heartbeat(Duration::from_secs(30)).await.expect("beat");
        b.heartbeat(Duration::from_secs(30)).await.expect("beat");
        let k = key("00000000000000d1");
        a.add("s1", &room("acme", "private-x"), &k)
            .await
            .expect("add");
        a.add("s2", &room("acme", "private-y"), &k)
            .await
            .expect("add");
        b.add("s3", &room("acme", "private-x"), &k)
            .await
            .expect("add");

        a.forget_instance().await;

        let left = b.by_api_key(&k).await.expect("read");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].socket_id, "s3");
        assert_eq!(
            keys_of(&b.client, &prefix).await,
            vec![
                format!("{prefix}:channelApiKeyRecord:{k}"),
                format!("{prefix}:clientApiKey:s3"),
                format!("{prefix}:instance:staying:alive"),
                format!("{prefix}:instance:staying:sockets"),
                format!("{prefix}:instances"),
            ]
        );
    }

    #[tokio::test]
    async fn redis_tracker_refuses_socket_ids_it_cannot_store() {
        let server = RedisServer::start();
        let t = tracker(&server, &unique_prefix(), "i").await;
        let r = room("acme", "private-x");
        assert!(matches!(
            t.add("a|b", &r, &key("00000000000000e1")).await,
            Err(TrackerError::Backend(_))
        ));
    }

    #[tokio::test]
    async fn redis_tracker_is_unavailable_when_redis_is_down() {
        let mut server = RedisServer::start();
        let t = tracker(&server, &unique_prefix(), "i").await;
        t.heartbeat(Duration::from_secs(30)).await.expect("beat");
        server.stop();
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            t.add("s1", &room("acme", "private-x"), &key("00000000000000f1")),
        )
        .await
        .expect("answers within 5 s");
        assert!(
            matches!(result, Err(TrackerError::Unavailable(_))),
            "got {result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
