//! The Redis [`WebhookBackend`] (Redis mode): endpoints and the outbox shared by every
//! instance, so any instance attempts any delivery and a dead instance's claimed deliveries
//! are taken by another when their lease runs out.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:project:{projectId}:webhooks` | hash | webhook id → [`WebhookRecord`] (JSON); beside the project's `…:apikeys` (never `{prefix}:webhooks:{projectId}`, which a project named `pending` would share with the outbox) |
//! | `{prefix}:webhook-delivery:{deliveryId}` | string, TTL 7 days (renewed on each write) | [`DeliveryRecord`] (JSON) |
//! | `{prefix}:webhooks:pending` | sorted set | `{webhookId}\|{deliveryId}`, scored by due time (ms): the outbox |
//! | `{prefix}:webhooks:pending-count` | hash | webhook id → its pending deliveries |
//! | `{prefix}:webhook:{webhookId}:log` | list | delivery ids, newest first, the last 100 |
//! | `{prefix}:webhook-mark:{mark}` | string, TTL | a once-only mark (`api_key_expiring`) |
//!
//! Every multi-step change is one script. With Redis Cluster, use a hash-tag prefix such as
//! `{herald}` (scripts compute key names).

use async_trait::async_trait;
use fred::clients::Client;
use fred::error::Error as RedisError;
use fred::types::Value;
use herald_protocol::ProjectId;
use herald_protocol::webhook::{DeliveryId, DeliveryStatus, MAX_LISTED_DELIVERIES, WebhookId};

use super::backend::{DeliveryRecord, WebhookBackend, WebhookRecord, WebhookStoreError};
use crate::store::redis::{LuaScript, array, classify, opt_string};

/// How long a delivery record outlives its last write.
const DELIVERY_TTL_SECS: u64 = 7 * 24 * 3600;

/// KEYS: project hash. ARGV: webhook id, JSON, max per project. Returns 1, or 0 when full.
static CREATE: LuaScript = LuaScript::new(
    r#"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
);

/// KEYS: project hash. ARGV: webhook id, JSON. Returns 1, or 0 when there is none.
static UPDATE: LuaScript = LuaScript::new(
    r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
);

/// KEYS: project hash, counts. ARGV: prefix, webhook ids ("" for all of the project).
/// Returns how many were deleted.
static DELETE: LuaScript = LuaScript::new(
    r#"
local ids = {}
if ARGV[2] == '' then ids = redis.call('HKEYS', KEYS[1]) else ids = { ARGV[2] } end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('HDEL', KEYS[1], id) == 1 then
    n = n + 1
    redis.call('DEL', ARGV[1] .. ':webhook:' .. id .. ':log')
    redis.call('HDEL', KEYS[2], id)
  end
end
return n
"#,
);

/// KEYS: pending, counts. ARGV: prefix, max pending, record TTL, log length, then per
/// delivery: webhook id, delivery id, due (ms), JSON. Returns 1/0 per delivery; a delivery
/// whose record exists counts as added (idempotent when fred re-sends the script).
static ENQUEUE: LuaScript = LuaScript::new(
    r#"
local out = {}
for i = 5, #ARGV, 4 do
  local wid, did, due, json = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local n = tonumber(redis.call('HGET', KEYS[2], wid) or '0')
  if redis.call('EXISTS', ARGV[1] .. ':webhook-delivery:' .. did) == 1 then
    -- The same script again (a command re-sent after a reconnect): added already.
    table.insert(out, 1)
  elseif n >= tonumber(ARGV[2]) then
    table.insert(out, 0)
  else
    redis.call('HINCRBY', KEYS[2], wid, 1)
    redis.call('SET', ARGV[1] .. ':webhook-delivery:' .. did, json, 'EX', ARGV[3])
    redis.call('ZADD', KEYS[1], due, wid .. '|' .. did)
    local log = ARGV[1] .. ':webhook:' .. wid .. ':log'
    redis.call('LPUSH', log, did)
    redis.call('LTRIM', log, 0, tonumber(ARGV[4]) - 1)
    table.insert(out, 1)
  end
end
return out
"#,
);

/// KEYS: pending. ARGV: prefix, now (ms), lease (ms), max, busy webhook ids….
/// Returns the JSON of each claimed delivery (one per endpoint), each due again after the lease.
static CLAIM: LuaScript = LuaScript::new(
    r#"
local skip = {}
for i = 5, #ARGV do skip[ARGV[i]] = true end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 512)
local out = {}
for _, member in ipairs(due) do
  if #out >= tonumber(ARGV[4]) then break end
  local bar = string.find(member, '|', 1, true)
  local wid, did = string.sub(member, 1, bar - 1), string.sub(member, bar + 1)
  if not skip[wid] then
    local json = redis.call('GET', ARGV[1] .. ':webhook-delivery:' .. did)
    if json then
      skip[wid] = true
      redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), member)
      table.insert(out, json)
    else
      redis.call('ZREM', KEYS[1], member)
    end
  end
end
return out
"#,
);

/// KEYS: pending, counts, record. ARGV: webhook id, delivery id, pending (1/0), due, JSON, TTL.
static RECORD: LuaScript = LuaScript::new(
    r#"
local member = ARGV[1] .. '|' .. ARGV[2]
local was = redis.call('ZSCORE', KEYS[1], member)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], ARGV[4], member)
  if not was then redis.call('HINCRBY', KEYS[2], ARGV[1], 1) end
elseif was then
  redis.call('ZREM', KEYS[1], member)
  if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
end
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6])
return 1
"#,
);

/// KEYS: pending, counts, record, log. ARGV: webhook id, delivery id.
static DISCARD: LuaScript = LuaScript::new(
    r#"
if redis.call('ZREM', KEYS[1], ARGV[1] .. '|' .. ARGV[2]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
end
redis.call('DEL', KEYS[3])
redis.call('LREM', KEYS[4], 0, ARGV[2])
return 1
"#,
);

/// KEYS: log. ARGV: prefix, limit. Returns the logged records, newest first.
static LOG: LuaScript = LuaScript::new(
    r#"
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local out = {}
for _, did in ipairs(ids) do
  local json = redis.call('GET', ARGV[1] .. ':webhook-delivery:' .. did)
  if json then table.insert(out, json) end
end
return out
"#,
);

/// KEYS: any key. Returns its string value or nil (`GET`, through the script path so every
/// call shares one reply parser).
static GET: LuaScript = LuaScript::new("return redis.call('GET', KEYS[1])");

/// KEYS: project hash. ARGV: webhook id or "" for all. Returns JSON values.
static READ: LuaScript = LuaScript::new(
    r#"
if ARGV[1] == '' then return redis.call('HVALS', KEYS[1]) end
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return { v } end
return {}
"#,
);

/// KEYS: mark. ARGV: TTL (s). Returns 1 when the mark was new.
static MARK: LuaScript = LuaScript::new(
    r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 1 end
return 0
"#,
);

/// Webhooks in Redis.
pub struct RedisWebhooks {
    client: Client,
    prefix: String,
}

fn storage_error(e: RedisError) -> WebhookStoreError {
    classify(
        e,
        WebhookStoreError::Unavailable,
        WebhookStoreError::Backend,
    )
}

fn backend<E: std::fmt::Display>(e: E) -> WebhookStoreError {
    WebhookStoreError::Backend(e.to_string())
}

fn strings(v: Value) -> Result<Vec<String>, WebhookStoreError> {
    array(v)
        .map_err(WebhookStoreError::Backend)?
        .into_iter()
        .map(|item| {
            opt_string(item)
                .map_err(WebhookStoreError::Backend)?
                .ok_or_else(|| WebhookStoreError::Backend("nil in a list reply".into()))
        })
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, WebhookStoreError> {
    serde_json::from_str(json).map_err(backend)
}

fn is_one(v: &Value) -> bool {
    matches!(v, Value::Integer(1))
}

impl RedisWebhooks {
    /// Webhooks under `prefix`.
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
        }
    }

    fn project_key(&self, project: &ProjectId) -> String {
        format!("{}:project:{project}:webhooks", self.prefix)
    }

    fn pending_key(&self) -> String {
        format!("{}:webhooks:pending", self.prefix)
    }

    fn counts_key(&self) -> String {
        format!("{}:webhooks:pending-count", self.prefix)
    }

    fn record_key(&self, id: &DeliveryId) -> String {
        format!("{}:webhook-delivery:{id}", self.prefix)
    }

    fn log_key(&self, id: &WebhookId) -> String {
        format!("{}:webhook:{id}:log", self.prefix)
    }

    async fn run(
        &self,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, WebhookStoreError> {
        script
            .run_raw(&self.client, keys, args)
            .await
            .map_err(storage_error)
    }

    async fn read(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<Vec<WebhookRecord>, WebhookStoreError> {
        let reply = self
            .run(&READ, vec![self.project_key(project)], vec![id.to_owned()])
            .await?;
        strings(reply)?.iter().map(|j| decode(j)).collect()
    }
}

#[async_trait]
impl WebhookBackend for RedisWebhooks {
    async fn create_webhook(
        &self,
        webhook: &WebhookRecord,
        max_per_project: usize,
    ) -> Result<(), WebhookStoreError> {
        let reply = self
            .run(
                &CREATE,
                vec![self.project_key(&webhook.project_id)],
                vec![
                    webhook.id.to_string(),
                    serde_json::to_string(webhook).map_err(backend)?,
                    max_per_project.to_string(),
                ],
            )
            .await?;
        if is_one(&reply) {
            Ok(())
        } else {
            Err(WebhookStoreError::TooMany)
        }
    }

    async fn webhooks(&self, project: &ProjectId) -> Result<Vec<WebhookRecord>, WebhookStoreError> {
        let mut list = self.read(project, "").await?;
        list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(list)
    }

    async fn webhook(
        &self,
        project: &ProjectId,
        id: &WebhookId,
    ) -> Result<Option<WebhookRecord>, WebhookStoreError> {
        Ok(self.read(project, id.as_str()).await?.into_iter().next())
    }

    async fn update_webhook(&self, webhook: &WebhookRecord) -> Result<bool, WebhookStoreError> {
        let reply = self
            .run(
                &UPDATE,
                vec![self.project_key(&webhook.project_id)],
                vec![
                    webhook.id.to_string(),
                    serde_json::to_string(webhook).map_err(backend)?,
                ],
            )
            .await?;
        Ok(is_one(&reply))
    }

    async fn delete_webhook(
        &self,
        project: &ProjectId,
        id: &WebhookId,
    ) -> Result<bool, WebhookStoreError> {
        let reply = self
            .run(
                &DELETE,
                vec![self.project_key(project), self.counts_key()],
                vec![self.prefix.clone(), id.to_string()],
            )
            .await?;
        Ok(is_one(&reply))
    }

    async fn delete_project_webhooks(&self, project: &ProjectId) -> Result<(), WebhookStoreError> {
        self.run(
            &DELETE,
            vec![self.project_key(project), self.counts_key()],
            vec![self.prefix.clone(), String::new()],
        )
        .await
        .map(|_| ())
    }

    async fn enqueue(
        &self,
        deliveries: &[DeliveryRecord],
        max_pending: usize,
    ) -> Result<Vec<bool>, WebhookStoreError> {
        let mut args = vec![
            self.prefix.clone(),
            max_pending.to_string(),
            DELIVERY_TTL_SECS.to_string(),
            MAX_LISTED_DELIVERIES.to_string(),
        ];
        for d in deliveries {
            args.push(d.webhook_id.to_string());
            args.push(d.id.to_string());
            args.push(d.due_ms.unwrap_or(0).to_string());
            args.push(serde_json::to_string(d).map_err(backend)?);
        }
        let reply = self
            .run(&ENQUEUE, vec![self.pending_key(), self.counts_key()], args)
            .await?;
        Ok(array(reply)
            .map_err(WebhookStoreError::Backend)?
            .iter()
            .map(is_one)
            .collect())
    }

    async fn claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
        busy: &[WebhookId],
    ) -> Result<Vec<DeliveryRecord>, WebhookStoreError> {
        let mut args = vec![
            self.prefix.clone(),
            now_ms.to_string(),
            lease_ms.to_string(),
            max.to_string(),
        ];
        args.extend(busy.iter().map(|b| b.to_string()));
        let reply = self.run(&CLAIM, vec![self.pending_key()], args).await?;
        strings(reply)?
            .iter()
            .map(|j| {
                let mut d: DeliveryRecord = decode(j)?;
                d.due_ms = Some(now_ms + lease_ms);
                Ok(d)
            })
            .collect()
    }

    async fn record_attempt(&self, delivery: &DeliveryRecord) -> Result<(), WebhookStoreError> {
        let pending = delivery.status == DeliveryStatus::Pending;
        self.run(
            &RECORD,
            vec![
                self.pending_key(),
                self.counts_key(),
                self.record_key(&delivery.id),
            ],
            vec![
                delivery.webhook_id.to_string(),
                delivery.id.to_string(),
                if pending { "1" } else { "0" }.to_owned(),
                delivery.due_ms.unwrap_or(0).to_string(),
                serde_json::to_string(delivery).map_err(backend)?,
                DELIVERY_TTL_SECS.to_string(),
            ],
        )
        .await
        .map(|_| ())
    }

    async fn discard(&self, delivery: &DeliveryRecord) -> Result<(), WebhookStoreError> {
        self.run(
            &DISCARD,
            vec![
                self.pending_key(),
                self.counts_key(),
                self.record_key(&delivery.id),
                self.log_key(&delivery.webhook_id),
            ],
            vec![delivery.webhook_id.to_string(), delivery.id.to_string()],
        )
        .await
        .map(|_| ())
    }

    async fn deliveries(
        &self,
        webhook: &WebhookId,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, WebhookStoreError> {
        let reply = self
            .run(
                &LOG,
                vec![self.log_key(webhook)],
                vec![
                    self.prefix.clone(),
                    limit.clamp(1, MAX_LISTED_DELIVERIES).to_string(),
                ],
            )
            .await?;
        strings(reply)?.iter().map(|j| decode(j)).collect()
    }

    async fn delivery(
        &self,
        webhook: &WebhookId,
        id: &DeliveryId,
    ) -> Result<Option<DeliveryRecord>, WebhookStoreError> {
        let reply = self.run(&GET, vec![self.record_key(id)], vec![]).await?;
        match opt_string(reply).map_err(WebhookStoreError::Backend)? {
            Some(json) => {
                let d: DeliveryRecord = decode(&json)?;
                Ok((d.webhook_id == *webhook).then_some(d))
            }
            None => Ok(None),
        }
    }

    async fn mark_once(&self, key: &str, ttl_secs: u64) -> Result<bool, WebhookStoreError> {
        let reply = self
            .run(
                &MARK,
                vec![format!("{}:webhook-mark:{key}", self.prefix)],
                vec![ttl_secs.max(1).to_string()],
            )
            .await?;
        Ok(is_one(&reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_test_server::{RedisServer, connect, unique_prefix};

    #[tokio::test]
    async fn redis_webhooks_contract() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let a = RedisWebhooks::new(connect(&server.url()).await, &prefix);
        let b = RedisWebhooks::new(connect(&server.url()).await, &prefix);
        super::super::contract::run(&a, &b).await;
    }
}
