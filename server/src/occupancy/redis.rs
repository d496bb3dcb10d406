//! The Redis [`OccupancyBackend`]: which instances have subscribers of each room, so a room is
//! occupied while any instance has it, and each cluster-wide transition is decided by one
//! script (seen by exactly one instance).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:occupancy:{room}` | set | ids of the instances with subscribers of the room |
//! | `{prefix}:occupancy:vacating` | sorted set | rooms empty everywhere, scored by when `channel_vacated` is due (ms) |
//! | `{prefix}:occupancy:instance:{instanceId}` | set | the rooms that instance has |
//! | `{prefix}:occupancy:instances` | set | instances with (or once with) rooms |
//!
//! Liveness is the connection tracker's alive key (`{prefix}:instance:{instanceId}:alive`):
//! [`RedisOccupancy::reap_dead_instances`] (run by the heartbeat sweep) removes an instance
//! whose key expired from its rooms, each batch one script that checks the key again.
//!
//! With Redis Cluster, use a hash-tag prefix such as `{herald}` (scripts compute key names).

use async_trait::async_trait;
use fred::clients::Client;
use fred::types::Value;
use herald_protocol::RoomName;

use super::{ClusterChange, OccupancyBackend, OccupancyError};
use crate::store::redis::{LuaScript, array};

/// Rooms of a dead instance one reap script handles.
const REAP_BATCH: usize = 500;

/// KEYS: room set, vacating, this instance's rooms, instances.
/// ARGV: instance id, room, 1 (occupied) / 0, vacate due (ms).
/// Returns 1 when the room became occupied cluster-wide (send `channel_occupied`), else 0.
static SET: LuaScript = LuaScript::new(
    r#"
if ARGV[3] == '1' then
  local before = redis.call('SCARD', KEYS[1])
  local added = redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[1])
  if added == 1 and before == 0 then
    if redis.call('ZREM', KEYS[2], ARGV[2]) == 1 then return 0 end
    return 1
  end
  return 0
end
local removed = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
end
return 0
"#,
);

/// KEYS: vacating. ARGV: now (ms), room key prefix (`{prefix}:occupancy:`).
/// Returns the due rooms still empty; each is removed from the set (one caller gets it).
static DUE: LuaScript = LuaScript::new(
    r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 256)
local out = {}
for _, room in ipairs(due) do
  redis.call('ZREM', KEYS[1], room)
  if redis.call('EXISTS', ARGV[2] .. room) == 0 then table.insert(out, room) end
end
return out
"#,
);

/// KEYS: instances, the instance's alive key, the instance's rooms, vacating.
/// ARGV: instance id, room key prefix, batch size, vacate due (ms).
/// Returns 0: alive (left alone) or done; 1: more to do.
static REAP: LuaScript = LuaScript::new(
    r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local rooms = redis.call('SPOP', KEYS[3], tonumber(ARGV[3]))
for _, room in ipairs(rooms) do
  local key = ARGV[2] .. room
  if redis.call('SREM', key, ARGV[1]) == 1 and redis.call('SCARD', key) == 0 then
    redis.call('ZADD', KEYS[4], 'NX', ARGV[4], room)
  end
end
if redis.call('SCARD', KEYS[3]) > 0 then return 1 end
redis.call('SREM', KEYS[1], ARGV[1])
return 0
"#,
);

/// Occupancy in Redis for instance `instance_id`.
pub struct RedisOccupancy {
    client: Client,
    prefix: String,
    instance_id: String,
}

fn backend_error(e: impl std::fmt::Display) -> OccupancyError {
    OccupancyError(e.to_string())
}

impl RedisOccupancy {
    /// Occupancy under `prefix` for this instance.
    pub fn new(client: Client, prefix: &str, instance_id: String) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            instance_id,
        }
    }

    fn room_prefix(&self) -> String {
        format!("{}:occupancy:", self.prefix)
    }

    fn vacating_key(&self) -> String {
        format!("{}:occupancy:vacating", self.prefix)
    }

    fn instances_key(&self) -> String {
        format!("{}:occupancy:instances", self.prefix)
    }

    fn instance_key(&self, id: &str) -> String {
        format!("{}:occupancy:instance:{id}", self.prefix)
    }

    /// Removes every instance whose alive key expired from its rooms; a room left empty
    /// starts vacating, due `vacate_due_ms`.
    pub async fn reap_dead_instances(&self, vacate_due_ms: i64) -> Result<(), OccupancyError> {
        use fred::interfaces::SetsInterface;
        let instances: Vec<String> = self
            .client
            .smembers(self.instances_key())
            .await
            .map_err(backend_error)?;
        for id in instances {
            if id == self.instance_id {
                continue;
            }
            loop {
                let reply = REAP
                    .run_raw(
                        &self.client,
                        vec![
                            self.instances_key(),
                            format!("{}:instance:{id}:alive", self.prefix),
                            self.instance_key(&id),
                            self.vacating_key(),
                        ],
                        vec![
                            id.clone(),
                            self.room_prefix(),
                            REAP_BATCH.to_string(),
                            vacate_due_ms.to_string(),
                        ],
                    )
                    .await
                    .map_err(backend_error)?;
                if !matches!(reply, Value::Integer(1)) {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl OccupancyBackend for RedisOccupancy {
    async fn set(
        &self,
        room: &RoomName,
        occupied: bool,
        vacate_due_ms: i64,
    ) -> Result<ClusterChange, OccupancyError> {
        let reply = SET
            .run_raw(
                &self.client,
                vec![
                    format!("{}{}", self.room_prefix(), room.as_str()),
                    self.vacating_key(),
                    self.instance_key(&self.instance_id),
                    self.instances_key(),
                ],
                vec![
                    self.instance_id.clone(),
                    room.as_str().to_owned(),
                    if occupied { "1" } else { "0" }.to_owned(),
                    vacate_due_ms.to_string(),
                ],
            )
            .await
            .map_err(backend_error)?;
        Ok(match reply {
            Value::Integer(1) => ClusterChange::Occupied,
            _ => ClusterChange::Nothing,
        })
    }

    async fn due_vacated(&self, now_ms: i64) -> Result<Vec<RoomName>, OccupancyError> {
        let reply = DUE
            .run_raw(
                &self.client,
                vec![self.vacating_key()],
                vec![now_ms.to_string(), self.room_prefix()],
            )
            .await
            .map_err(backend_error)?;
        let mut out = Vec::new();
        for v in array(reply).map_err(OccupancyError)? {
            let Some(s) = v.as_string() else { continue };
            if let Ok(room) = RoomName::parse(&s) {
                out.push(room);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_test_server::{RedisServer, connect, unique_prefix};

    #[tokio::test]
    async fn redis_occupancy_contract_and_reap() {
        let server = RedisServer::start();
        let client = connect(&server.url()).await;
        let prefix = unique_prefix();
        let a = RedisOccupancy::new(client.clone(), &prefix, "a".into());
        let b = RedisOccupancy::new(client.clone(), &prefix, "b".into());
        super::super::contract::run(&a, Some(&b)).await;

        // Instance b dies (no alive key): a's sweep removes it; its room vacates.
        let r = crate::tracking::contract::room("occupancy-reap");
        assert_eq!(
            b.set(&r, true, 0).await.expect("set"),
            ClusterChange::Occupied
        );
        a.reap_dead_instances(5).await.expect("reap");
        assert_eq!(a.due_vacated(10).await.expect("due"), vec![r.clone()]);
        // An alive instance is left alone.
        use fred::interfaces::KeysInterface;
        let _: () = client
            .set(format!("{prefix}:instance:b:alive"), "1", None, None, false)
            .await
            .expect("set alive");
        assert_eq!(
            b.set(&r, true, 0).await.expect("set"),
            ClusterChange::Occupied
        );
        a.reap_dead_instances(5).await.expect("reap");
        assert!(a.due_vacated(10).await.expect("due").is_empty());
    }
}
