//! The Redis [`PresenceManager`] (Redis mode): every instance's members of a room in one
//! place, each transition decided by one script so it is announced by exactly one instance.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:presence:{room}:sockets` | hash | socket id → user id |
//! | `{prefix}:presence:{room}:users` | hash | user id → info JSON (`""`: none) |
//! | `{prefix}:presence:{room}:counts` | hash | user id → how many of its sockets are in the room |
//! | `{prefix}:presence:{room}:version` | string | the room's version: started at Redis's clock in microseconds, `INCR`ed per transition; deleted with the room's last socket |
//! | `{prefix}:presence:instance:{instanceId}` | set | `{socketId}|{room}` of that instance's present sockets |
//! | `{prefix}:presence:instances` | set | ids of instances with (or once with) present sockets |
//!
//! Liveness is the connection tracker's: `{prefix}:instance:{instanceId}:alive`, which the
//! heartbeat keeps (a presence join always follows a tracking `add`, which creates it).
//! [`RedisPresence::reap_dead_instances`] drains, in batches, every registered instance whose
//! alive key has expired: each batch is one script that checks the alive key again, so
//! several sweepers at once remove (and report) each member exactly once. Members of an
//! instance killed with `kill -9` are therefore gone within the instance TTL plus one sweep
//! interval.
//!
//! With Redis Cluster, use a hash-tag prefix such as `{herald}` (scripts compute key names).

use async_trait::async_trait;
use fred::clients::Client;
use fred::error::Error as RedisError;
use fred::interfaces::HashesInterface;
use fred::types::Value;
use herald_protocol::RoomName;
use herald_protocol::presence::{Member, MemberInfo, UserId};

use super::{Joined, Members, PresenceError, PresenceManager, Transition};
use crate::store::redis::{LuaScript, array, classify, opt_string};

/// How many entries of a dead instance one reap script handles.
const REAP_BATCH: usize = 500;

/// Prepends the Lua `bump(key)` to a script body: the next version of a room. A room's first
/// version is Redis's clock in microseconds, so a room that started again (emptied, or its keys
/// lost with a Redis restart without persistence) never answers a version a client already
/// holds.
macro_rules! concat_bump {
    ($body:expr) => {
        concat!(
            r#"
local function bump(key)
  if redis.call('EXISTS', key) == 1 then return redis.call('INCR', key) end
  local t = redis.call('TIME')
  local v = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('SET', key, v)
  return tonumber(v)
end
"#,
            $body
        )
    };
}

/// Prepends the Lua `leave(base, sid)` (one socket's leave: nil, or `{version, uid, info}` when
/// it was the user's last socket) to a script body, so LEAVE and REAP share it.
macro_rules! concat_leave {
    ($body:literal) => {
        concat_bump!(concat!(
            r#"
local function leave(base, sid)
  local sockets = base .. ':sockets'
  local uid = redis.call('HGET', sockets, sid)
  if not uid then return nil end
  redis.call('HDEL', sockets, sid)
  local counts = base .. ':counts'
  local n = redis.call('HINCRBY', counts, uid, -1)
  local out = nil
  if n <= 0 then
    redis.call('HDEL', counts, uid)
    local users = base .. ':users'
    local info = redis.call('HGET', users, uid) or ''
    redis.call('HDEL', users, uid)
    out = { bump(base .. ':version'), uid, info }
  end
  if redis.call('EXISTS', sockets) == 0 then
    redis.call('DEL', base .. ':version', counts, base .. ':users')
  end
  return out
end
"#,
            $body
        ))
    };
}

/// KEYS: sockets, users, counts, version, this instance's set, instances.
/// ARGV: socket id, user id, info ("" none), max members, room, instance id.
/// Returns `{0}` already present, `{1, version}` added, `{2}` full.
static JOIN: LuaScript = LuaScript::new(concat_bump!(
    r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return { 0 } end
local n = redis.call('HGET', KEYS[3], ARGV[2])
if not n and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then return { 2 } end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('SADD', KEYS[5], ARGV[1] .. '|' .. ARGV[5])
redis.call('SADD', KEYS[6], ARGV[6])
if n then return { 0 } end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return { 1, bump(KEYS[4]) }
"#
));

/// KEYS: this instance's set. ARGV: room key base, socket id, room.
/// Returns `{0}` or `{1, version, uid, info}`.
static LEAVE: LuaScript = LuaScript::new(concat_leave!(
    r#"
redis.call('SREM', KEYS[1], ARGV[2] .. '|' .. ARGV[3])
local t = leave(ARGV[1], ARGV[2])
if not t then return { 0 } end
return { 1, t[1], t[2], t[3] }
"#
));

/// KEYS: instances, the instance's alive key, the instance's set.
/// ARGV: instance id, `{prefix}:presence:`, batch size.
/// Returns `{status, room, version, uid, info, ...}`: status 0 = alive, left alone; 1 = more
/// remain; 2 = drained and unregistered.
static REAP: LuaScript = LuaScript::new(concat_leave!(
    r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return { 0 } end
local out = { 1 }
for _, e in ipairs(redis.call('SPOP', KEYS[3], tonumber(ARGV[3]))) do
  local sep = string.find(e, '|', 1, true)
  if sep then
    local sid = string.sub(e, 1, sep - 1)
    local room = string.sub(e, sep + 1)
    local t = leave(ARGV[2] .. room, sid)
    if t then
      out[#out + 1] = room
      out[#out + 1] = t[1]
      out[#out + 1] = t[2]
      out[#out + 1] = t[3]
    end
  end
end
if redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('SREM', KEYS[1], ARGV[1])
  out[1] = 2
end
return out
"#
));

/// KEYS: users, version. Returns `{version, uid, info, uid, info, ...}`.
static MEMBERS: LuaScript = LuaScript::new(
    r#"
local out = { tonumber(redis.call('GET', KEYS[2]) or '0') }
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat do out[#out + 1] = flat[i] end
return out
"#,
);

/// Presence of one Herald instance in a shared Redis.
pub struct RedisPresence {
    client: Client,
    prefix: String,
    instance_id: String,
}

impl RedisPresence {
    /// Presence for instance `instance_id` (the tracker's id: liveness is its alive key);
    /// keys start with `{prefix}:presence:`.
    pub fn new(client: Client, prefix: &str, instance_id: String) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            instance_id,
        }
    }

    /// Removes the members of every instance whose heartbeat expired; answers each removal
    /// (room, transition) to announce. Each is answered to exactly one caller cluster-wide.
    pub async fn reap_dead_instances(&self) -> Result<Vec<(RoomName, Transition)>, PresenceError> {
        use fred::interfaces::SetsInterface;
        let instances: Vec<String> = self
            .client
            .smembers(self.instances_key())
            .await
            .map_err(presence_error)?;
        let mut out = Vec::new();
        for id in instances {
            loop {
                let reply = REAP
                    .run_raw(
                        &self.client,
                        vec![
                            self.instances_key(),
                            format!("{}:instance:{id}:alive", self.prefix),
                            self.instance_key(&id),
                        ],
                        vec![
                            id.clone(),
                            format!("{}:presence:", self.prefix),
                            REAP_BATCH.to_string(),
                        ],
                    )
                    .await
                    .map_err(presence_error)?;
                let items = array(reply).map_err(PresenceError::Backend)?;
                let (status, rest) = items
                    .split_first()
                    .ok_or_else(|| PresenceError::Backend("empty reap reply".into()))?;
                for quad in rest.chunks(4) {
                    let [room, version, uid, info] = quad else {
                        return Err(PresenceError::Backend("odd reap reply".into()));
                    };
                    let room = parse_room(&string(room.clone())?)?;
                    out.push((room, transition(version, uid, info)?));
                }
                match status {
                    Value::Integer(1) => continue,
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    fn base(&self, room: &RoomName) -> String {
        format!("{}:presence:{}", self.prefix, room.as_str())
    }

    fn instance_key(&self, id: &str) -> String {
        format!("{}:presence:instance:{id}", self.prefix)
    }

    fn instances_key(&self) -> String {
        format!("{}:presence:instances", self.prefix)
    }
}

#[async_trait]
impl PresenceManager for RedisPresence {
    async fn join(
        &self,
        room: &RoomName,
        socket_id: &str,
        member: &Member,
        max_members: usize,
    ) -> Result<Joined, PresenceError> {
        let base = self.base(room);
        let reply = JOIN
            .run_raw(
                &self.client,
                vec![
                    format!("{base}:sockets"),
                    format!("{base}:users"),
                    format!("{base}:counts"),
                    format!("{base}:version"),
                    self.instance_key(&self.instance_id),
                    self.instances_key(),
                ],
                vec![
                    socket_id.to_owned(),
                    member.user_id.as_str().to_owned(),
                    member
                        .info
                        .as_ref()
                        .map_or(String::new(), |i| i.as_json().to_owned()),
                    max_members.to_string(),
                    room.as_str().to_owned(),
                    self.instance_id.clone(),
                ],
            )
            .await
            .map_err(presence_error)?;
        let items = array(reply).map_err(PresenceError::Backend)?;
        match items.as_slice() {
            [Value::Integer(0)] => Ok(Joined::AlreadyPresent),
            [Value::Integer(2)] => Ok(Joined::Full),
            [Value::Integer(1), version] => Ok(Joined::Added(Transition {
                member: member.clone(),
                version: uint(version)?,
            })),
            _ => Err(PresenceError::Backend("unexpected join reply".into())),
        }
    }

    async fn leave(
        &self,
        room: &RoomName,
        socket_id: &str,
    ) -> Result<Option<Transition>, PresenceError> {
        let reply = LEAVE
            .run_raw(
                &self.client,
                vec![self.instance_key(&self.instance_id)],
                vec![
                    self.base(room),
                    socket_id.to_owned(),
                    room.as_str().to_owned(),
                ],
            )
            .await
            .map_err(presence_error)?;
        let items = array(reply).map_err(PresenceError::Backend)?;
        match items.as_slice() {
            [Value::Integer(0)] => Ok(None),
            [Value::Integer(1), version, uid, info] => Ok(Some(transition(version, uid, info)?)),
            _ => Err(PresenceError::Backend("unexpected leave reply".into())),
        }
    }

    async fn members(&self, room: &RoomName) -> Result<Members, PresenceError> {
        let base = self.base(room);
        let reply = MEMBERS
            .run_raw(
                &self.client,
                vec![format!("{base}:users"), format!("{base}:version")],
                vec![],
            )
            .await
            .map_err(presence_error)?;
        let items = array(reply).map_err(PresenceError::Backend)?;
        let (version, flat) = items
            .split_first()
            .ok_or_else(|| PresenceError::Backend("empty members reply".into()))?;
        let mut members = flat
            .chunks(2)
            .map(|pair| match pair {
                [uid, info] => member(uid, info),
                _ => Err(PresenceError::Backend("odd members reply".into())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(Members {
            members,
            version: uint(version)?,
        })
    }

    async fn count(&self, room: &RoomName) -> Result<u64, PresenceError> {
        let n: u64 = self
            .client
            .hlen(format!("{}:users", self.base(room)))
            .await
            .map_err(presence_error)?;
        Ok(n)
    }
}

fn transition(version: &Value, uid: &Value, info: &Value) -> Result<Transition, PresenceError> {
    Ok(Transition {
        member: member(uid, info)?,
        version: uint(version)?,
    })
}

fn member(uid: &Value, info: &Value) -> Result<Member, PresenceError> {
    let uid = string(uid.clone())?;
    let info = string(info.clone())?;
    Ok(Member {
        user_id: UserId::parse(&uid)
            .map_err(|_| PresenceError::Backend("unreadable user id in presence".into()))?,
        info: if info.is_empty() {
            None
        } else {
            Some(
                MemberInfo::from_json(&info)
                    .map_err(|_| PresenceError::Backend("unreadable member info".into()))?,
            )
        },
    })
}

fn string(v: Value) -> Result<String, PresenceError> {
    opt_string(v)
        .map_err(PresenceError::Backend)?
        .ok_or_else(|| PresenceError::Backend("nil in presence reply".into()))
}

fn uint(v: &Value) -> Result<u64, PresenceError> {
    match v {
        Value::Integer(n) => u64::try_from(*n)
            .map_err(|_| PresenceError::Backend("negative presence version".into())),
        _ => Err(PresenceError::Backend(
            "presence version is not an integer".into(),
        )),
    }
}

/// Rebuilds a room name read back from Redis.
fn parse_room(s: &str) -> Result<RoomName, PresenceError> {
    RoomName::parse_channel(s)
        .map(|(project, channel)| RoomName::channel(&project, &channel))
        .map_err(|_| PresenceError::Backend(format!("unreadable room {s:?}")))
}

fn presence_error(e: RedisError) -> PresenceError {
    classify(e, PresenceError::Unavailable, PresenceError::Backend)
}

#[cfg(test)]
mod tests {
    use fred::interfaces::KeysInterface;
    use herald_protocol::{ChannelName, ProjectId};

    use super::*;
    use crate::redis_test_server::{RedisServer, connect, unique_prefix};

    #[tokio::test]
    async fn redis_presence_contract() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let p = RedisPresence::new(connect(&server.url()).await, &prefix, "i1".into());
        super::super::contract::run(&p).await;
    }

    #[tokio::test]
    async fn a_dead_instance_is_reaped_once_and_a_live_one_never() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let client = connect(&server.url()).await;
        let room = RoomName::channel(
            &ProjectId::parse("acme").expect("valid"),
            &ChannelName::parse("presence-r").expect("valid"),
        );
        let ada = Member {
            user_id: UserId::parse("ada").expect("valid"),
            info: Some(MemberInfo::from_json(r#"{"n":1}"#).expect("object")),
        };
        let bob = Member {
            user_id: UserId::parse("bob").expect("valid"),
            info: None,
        };
        let dead = RedisPresence::new(client.clone(), &prefix, "dead".into());
        let live = RedisPresence::new(client.clone(), &prefix, "live".into());
        let _: () = client
            .set(
                format!("{prefix}:instance:live:alive"),
                "30000",
                None,
                None,
                false,
            )
            .await
            .expect("alive");
        assert!(matches!(
            dead.join(&room, "d1", &ada, 10).await,
            Ok(Joined::Added(_))
        ));
        assert!(matches!(
            live.join(&room, "l1", &bob, 10).await,
            Ok(Joined::Added(_))
        ));
        // `ada` also has a socket on the live instance: the dead one's going is no transition.
        assert_eq!(
            live.join(&room, "l2", &ada, 10).await.ok(),
            Some(Joined::AlreadyPresent)
        );
        let b = RedisPresence::new(client.clone(), &prefix, "sweeper".into());
        assert_eq!(b.reap_dead_instances().await.expect("reap"), vec![]);
        assert_eq!(live.count(&room).await.expect("count"), 2);
        // The dead instance's socket is gone: `ada`'s live socket is now her last.
        let left = live.leave(&room, "l2").await.expect("leave").expect("last");
        assert_eq!(left.member, ada);
        // A user whose only socket is on the dead instance is reaped, once.
        let cy = Member {
            user_id: UserId::parse("cy").expect("valid"),
            info: None,
        };
        assert!(matches!(
            dead.join(&room, "d2", &cy, 10).await,
            Ok(Joined::Added(_))
        ));
        let reaped = b.reap_dead_instances().await.expect("reap");
        assert_eq!(reaped.len(), 1, "{reaped:?}");
        assert_eq!(reaped[0].0, room);
        assert_eq!(reaped[0].1.member, cy);
        assert!(reaped[0].1.version > left.version);
        assert_eq!(b.reap_dead_instances().await.expect("reap again"), vec![]);
        let m = live.members(&room).await.expect("members");
        assert_eq!(m.members, vec![bob]);
    }
}
