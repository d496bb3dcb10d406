//! The Redis [`RevocationQueue`]: a Redis Stream with one consumer group, so any instance may
//! take a job, a job taken by a crashed instance is reclaimed (`XAUTOCLAIM` after
//! `stale_after` without a touch), and retries wait in a sorted set until due.
//!
//! Why Streams and not a job-queue crate: Herald needs one job type, at-least-once delivery,
//! reclaim of crashed consumers, delayed retries and a dead-letter record, all of which Streams
//! give natively through the fred client Herald already runs; a queue crate would add a second
//! Redis client, its own key layout and a runtime to configure for no extra guarantee.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{p}:revocations` | stream, group `workers` | pending jobs (`job` field: JSON) |
//! | `{p}:revocations:delayed` | sorted set | retries, scored by due time (ms) |
//! | `{p}:revocations:dead` | list | dead letters (JSON) |
//! | `{p}:revoked-keys` | hash | API key id → revocation time |
//!
//! Every multi-step change is one Lua script, so a crash never leaves a job half-moved.

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::error::Error as RedisError;
use fred::interfaces::HashesInterface;
use fred::types::Value;
use herald_protocol::ApiKeyId;
use time::OffsetDateTime;

use super::{Claimed, DeadLetter, QueueError, RevocationJob, RevocationQueue};
use crate::store::redis::{LuaScript, array, classify, opt_string};

/// KEYS: revoked hash, stream. ARGV: key id, only_if_new (0/1), job JSON, now (RFC 3339).
static ENQUEUE: LuaScript = LuaScript::new(
    r#"
local added = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[4])
if added == 0 and ARGV[2] == '1' then return 0 end
redis.call('XADD', KEYS[2], '*', 'job', ARGV[3])
return 1
"#,
);

/// KEYS: stream, delayed set. ARGV: consumer, now (ms), stale (ms).
/// Returns `{entry id, job JSON}` or nil.
static CLAIM: LuaScript = LuaScript::new(
    r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 16)
for _, j in ipairs(due) do
  redis.call('XADD', KEYS[1], '*', 'job', j)
  redis.call('ZREM', KEYS[2], j)
end
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], 'workers', '0', 'MKSTREAM')
local stale = redis.call('XAUTOCLAIM', KEYS[1], 'workers', ARGV[1], ARGV[3], '0-0', 'COUNT', 1)
local entries = stale[2]
if entries and #entries > 0 and entries[1] then
  return {entries[1][1], entries[1][2][2]}
end
local fresh = redis.call('XREADGROUP', 'GROUP', 'workers', ARGV[1], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
if fresh and fresh[1] and #fresh[1][2] > 0 then
  local e = fresh[1][2][1]
  return {e[1], e[2][2]}
end
return false
"#,
);

/// KEYS: stream. ARGV: entry id.
static COMPLETE: LuaScript = LuaScript::new(
    r#"
redis.call('XACK', KEYS[1], 'workers', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"#,
);

/// KEYS: stream, delayed set. ARGV: entry id, due (ms), job JSON.
static RETRY: LuaScript = LuaScript::new(
    r#"
redis.call('XACK', KEYS[1], 'workers', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"#,
);

/// KEYS: stream, dead list. ARGV: entry id, dead-letter JSON.
static DEAD: LuaScript = LuaScript::new(
    r#"
redis.call('XACK', KEYS[1], 'workers', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"#,
);

/// KEYS: stream. ARGV: consumer, entry id.
static TOUCH: LuaScript = LuaScript::new(
    r#"
redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ARGV[2], 'JUSTID')
return 1
"#,
);

/// The Redis Streams queue.
pub struct RedisQueue {
    client: Client,
    prefix: String,
    stale_after: Duration,
}

fn queue_error(e: RedisError) -> QueueError {
    classify(e, QueueError::Unavailable, QueueError::Backend)
}

fn backend<E: std::fmt::Display>(e: E) -> QueueError {
    QueueError::Backend(e.to_string())
}

fn now_ms() -> i128 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
}

impl RedisQueue {
    /// A queue under `{prefix}:`; a job not touched for `stale_after` is reclaimed by another
    /// consumer.
    pub fn new(client: Client, prefix: &str, stale_after: Duration) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            stale_after,
        }
    }

    fn stream(&self) -> String {
        format!("{}:revocations", self.prefix)
    }
    fn delayed(&self) -> String {
        format!("{}:revocations:delayed", self.prefix)
    }
    fn dead(&self) -> String {
        format!("{}:revocations:dead", self.prefix)
    }
    fn revoked(&self) -> String {
        format!("{}:revoked-keys", self.prefix)
    }

    async fn run(
        &self,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, QueueError> {
        script
            .run_raw(&self.client, keys, args)
            .await
            .map_err(queue_error)
    }
}

#[async_trait]
impl RevocationQueue for RedisQueue {
    async fn enqueue(&self, job: &RevocationJob, only_if_new: bool) -> Result<bool, QueueError> {
        let json = serde_json::to_string(job).map_err(backend)?;
        let now = OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(backend)?;
        let v = self
            .run(
                &ENQUEUE,
                vec![self.revoked(), self.stream()],
                vec![
                    job.api_key_id.to_string(),
                    if only_if_new { "1" } else { "0" }.to_owned(),
                    json,
                    now,
                ],
            )
            .await?;
        Ok(matches!(v, Value::Integer(1)))
    }

    async fn is_revoked(&self, key: &ApiKeyId) -> Result<bool, QueueError> {
        self.client
            .hexists(self.revoked(), key.as_str())
            .await
            .map_err(queue_error)
    }

    async fn claim(&self, consumer: &str) -> Result<Option<Claimed>, QueueError> {
        let v = self
            .run(
                &CLAIM,
                vec![self.stream(), self.delayed()],
                vec![
                    consumer.to_owned(),
                    now_ms().to_string(),
                    self.stale_after.as_millis().to_string(),
                ],
            )
            .await?;
        if matches!(v, Value::Null) {
            return Ok(None);
        }
        let mut items = array(v).map_err(QueueError::Backend)?.into_iter();
        let handle = items
            .next()
            .map(opt_string)
            .transpose()
            .map_err(QueueError::Backend)?
            .flatten()
            .ok_or_else(|| QueueError::Backend("claim reply without entry id".into()))?;
        let json = items
            .next()
            .map(opt_string)
            .transpose()
            .map_err(QueueError::Backend)?
            .flatten()
            .ok_or_else(|| QueueError::Backend("claim reply without job".into()))?;
        let job: RevocationJob = serde_json::from_str(&json).map_err(backend)?;
        Ok(Some(Claimed { job, handle }))
    }

    async fn touch(&self, claimed: &Claimed, consumer: &str) -> Result<(), QueueError> {
        self.run(
            &TOUCH,
            vec![self.stream()],
            vec![consumer.to_owned(), claimed.handle.clone()],
        )
        .await
        .map(|_| ())
    }

    async fn complete(&self, claimed: &Claimed) -> Result<(), QueueError> {
        self.run(&COMPLETE, vec![self.stream()], vec![claimed.handle.clone()])
            .await
            .map(|_| ())
    }

    async fn retry_later(&self, claimed: &Claimed, delay: Duration) -> Result<(), QueueError> {
        let mut job = claimed.job.clone();
        job.attempt += 1;
        let json = serde_json::to_string(&job).map_err(backend)?;
        let due = now_ms() + delay.as_millis() as i128;
        self.run(
            &RETRY,
            vec![self.stream(), self.delayed()],
            vec![claimed.handle.clone(), due.to_string(), json],
        )
        .await
        .map(|_| ())
    }

    async fn dead_letter(&self, claimed: &Claimed, error: &str) -> Result<(), QueueError> {
        let dead = serde_json::to_string(&DeadLetter {
            job: claimed.job.clone(),
            error: error.to_owned(),
            at: OffsetDateTime::now_utc(),
        })
        .map_err(backend)?;
        self.run(
            &DEAD,
            vec![self.stream(), self.dead()],
            vec![claimed.handle.clone(), dead],
        )
        .await
        .map(|_| ())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        use fred::interfaces::ListInterface;
        let items: Vec<String> = self
            .client
            .lrange(self.dead(), 0, -1)
            .await
            .map_err(queue_error)?;
        items
            .iter()
            .map(|s| serde_json::from_str(s).map_err(backend))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_test_server::{RedisServer, connect, unique_prefix};
    use crate::revocation::RevocationReason;
    use herald_protocol::ProjectId;

    #[tokio::test]
    async fn redis_queue_contract_and_reclaim() {
        let server = RedisServer::start();
        let prefix = unique_prefix();
        let a = RedisQueue::new(
            connect(&server.url()).await,
            &prefix,
            Duration::from_millis(500),
        );
        let b = RedisQueue::new(
            connect(&server.url()).await,
            &prefix,
            Duration::from_millis(500),
        );
        crate::revocation::embedded::tests::queue_contract(&a, &b).await;

        // Consumer a takes a job and dies (stops touching it): b reclaims it after 500 ms.
        let job = RevocationJob::new(
            ProjectId::parse("p").expect("valid"),
            ApiKeyId::parse("00000000000000d1").expect("valid"),
            RevocationReason::Deleted,
        );
        a.enqueue(&job, false).await.expect("enqueue");
        let taken = a.claim("a").await.expect("claim").expect("job");
        assert_eq!(taken.job.id, job.id);
        assert!(
            b.claim("b").await.expect("claim").is_none(),
            "fresh: not reclaimable"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.touch(&taken, "a").await.expect("touch");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            b.claim("b").await.expect("claim").is_none(),
            "touched: still a's"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let reclaimed = b.claim("b").await.expect("claim").expect("reclaimed");
        assert_eq!(reclaimed.job.id, job.id);
        b.complete(&reclaimed).await.expect("complete");
        assert!(a.claim("a").await.expect("claim").is_none());
    }
}
