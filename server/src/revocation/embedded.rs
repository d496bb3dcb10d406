//! The embedded [`RevocationQueue`]: three tables in the same redb file as the store.
//!
//! | table | key | value |
//! |---|---|---|
//! | `revocation_jobs` | job id | `{ job, notBeforeMs }` (pending, including retries) |
//! | `revocation_dead` | job id | [`DeadLetter`] |
//! | `revoked_keys` | API key id | revocation time (RFC 3339) |
//!
//! A job stays in `revocation_jobs` until it is completed or dead-lettered, so a crash in the
//! middle leaves it there and the restarted process runs it again. Jobs being run are
//! remembered in memory only (one process).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::ApiKeyId;
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Claimed, DeadLetter, QueueError, RevocationJob, RevocationQueue};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocation_jobs");
const DEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("revocation_dead");
const REVOKED: TableDefinition<&str, &str> = TableDefinition::new("revoked_keys");

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    job: RevocationJob,
    not_before_ms: i128,
}

fn backend<E: std::fmt::Display>(e: E) -> QueueError {
    QueueError::Backend(e.to_string())
}

fn now_ms() -> i128 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
}

/// The redb-backed queue.
pub struct EmbeddedQueue {
    db: Arc<Database>,
    running: Mutex<HashSet<String>>,
}

impl EmbeddedQueue {
    /// A queue in `db` (the store's database); creates its tables.
    pub fn open(db: Arc<Database>) -> Result<Self, QueueError> {
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(JOBS).map_err(backend)?;
        tx.open_table(DEAD).map_err(backend)?;
        tx.open_table(REVOKED).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Self {
            db,
            running: Mutex::new(HashSet::new()),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(backend)?
    }
}

#[async_trait]
impl RevocationQueue for EmbeddedQueue {
    async fn enqueue(&self, job: &RevocationJob, only_if_new: bool) -> Result<bool, QueueError> {
        let row = serde_json::to_vec(&Row {
            job: job.clone(),
            not_before_ms: 0,
        })
        .map_err(backend)?;
        let (id, key) = (job.id.clone(), job.api_key_id.to_string());
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            {
                let mut revoked = tx.open_table(REVOKED).map_err(backend)?;
                let was = revoked.get(key.as_str()).map_err(backend)?.is_some();
                if was && only_if_new {
                    return Ok(false);
                }
                if !was {
                    let at = OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .map_err(backend)?;
                    revoked.insert(key.as_str(), at.as_str()).map_err(backend)?;
                }
                let mut jobs = tx.open_table(JOBS).map_err(backend)?;
                jobs.insert(id.as_str(), row.as_slice()).map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn is_revoked(&self, key: &ApiKeyId) -> Result<bool, QueueError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let table = tx.open_table(REVOKED).map_err(backend)?;
            Ok(table.get(key.as_str()).map_err(backend)?.is_some())
        })
        .await
    }

    async fn claim(&self, _consumer: &str) -> Result<Option<Claimed>, QueueError> {
        let running: HashSet<String> = self.running.lock().clone();
        let found = self
            .blocking(move |db| {
                let tx = db.begin_read().map_err(backend)?;
                let table = tx.open_table(JOBS).map_err(backend)?;
                let now = now_ms();
                for row in table.iter().map_err(backend)? {
                    let (k, v) = row.map_err(backend)?;
                    if running.contains(k.value()) {
                        continue;
                    }
                    let row: Row = serde_json::from_slice(v.value()).map_err(backend)?;
                    if row.not_before_ms <= now {
                        return Ok(Some(Claimed {
                            handle: k.value().to_owned(),
                            job: row.job,
                        }));
                    }
                }
                Ok(None)
            })
            .await?;
        if let Some(c) = &found
            && !self.running.lock().insert(c.handle.clone())
        {
            return Ok(None);
        }
        Ok(found)
    }

    async fn touch(&self, _claimed: &Claimed, _consumer: &str) -> Result<(), QueueError> {
        Ok(())
    }

    async fn complete(&self, claimed: &Claimed) -> Result<(), QueueError> {
        let handle = claimed.handle.clone();
        let r = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(backend)?;
                tx.open_table(JOBS)
                    .map_err(backend)?
                    .remove(handle.as_str())
                    .map_err(backend)?;
                tx.commit().map_err(backend)
            })
            .await;
        self.running.lock().remove(&claimed.handle);
        r
    }

    async fn retry_later(&self, claimed: &Claimed, delay: Duration) -> Result<(), QueueError> {
        let mut job = claimed.job.clone();
        job.attempt += 1;
        let row = serde_json::to_vec(&Row {
            job,
            not_before_ms: now_ms() + delay.as_millis() as i128,
        })
        .map_err(backend)?;
        let handle = claimed.handle.clone();
        let r = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(backend)?;
                tx.open_table(JOBS)
                    .map_err(backend)?
                    .insert(handle.as_str(), row.as_slice())
                    .map_err(backend)?;
                tx.commit().map_err(backend)
            })
            .await;
        self.running.lock().remove(&claimed.handle);
        r
    }

    async fn dead_letter(&self, claimed: &Claimed, error: &str) -> Result<(), QueueError> {
        let dead = serde_json::to_vec(&DeadLetter {
            job: claimed.job.clone(),
            error: error.to_owned(),
            at: OffsetDateTime::now_utc(),
        })
        .map_err(backend)?;
        let handle = claimed.handle.clone();
        let r = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(backend)?;
                tx.open_table(JOBS)
                    .map_err(backend)?
                    .remove(handle.as_str())
                    .map_err(backend)?;
                tx.open_table(DEAD)
                    .map_err(backend)?
                    .insert(handle.as_str(), dead.as_slice())
                    .map_err(backend)?;
                tx.commit().map_err(backend)
            })
            .await;
        self.running.lock().remove(&claimed.handle);
        r
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(backend)?;
            let table = tx.open_table(DEAD).map_err(backend)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(backend)? {
                let (_, v) = row.map_err(backend)?;
                out.push(serde_json::from_slice(v.value()).map_err(backend)?);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::revocation::RevocationReason;
    use herald_protocol::ProjectId;

    /// The queue contract every backend runs. `fresh` builds a second handle on the same
    /// storage, as a restarted process (embedded) or another instance (Redis) would.
    pub(crate) async fn queue_contract(q: &dyn RevocationQueue, other: &dyn RevocationQueue) {
        let key = ApiKeyId::parse(&hex::encode(rand::random::<[u8; 8]>())).expect("valid");
        let project = ProjectId::parse("p-queue").expect("valid");
        let job = RevocationJob::new(project.clone(), key.clone(), RevocationReason::Deleted);
        assert!(!q.is_revoked(&key).await.expect("read"));
        assert!(q.enqueue(&job, true).await.expect("enqueue"));
        assert!(q.is_revoked(&key).await.expect("read"));
        assert!(
            other.is_revoked(&key).await.expect("read"),
            "revoked state is shared"
        );
        // Once revoked, only_if_new does nothing; an explicit trigger still enqueues.
        let dup = RevocationJob::new(project.clone(), key.clone(), RevocationReason::Expired);
        assert!(!q.enqueue(&dup, true).await.expect("enqueue"));

        let c = q.claim("a").await.expect("claim").expect("a job");
        assert_eq!(c.job, job);
        assert!(
            q.claim("a").await.expect("claim").is_none(),
            "one job, already taken"
        );
        q.retry_later(&c, Duration::from_millis(300))
            .await
            .expect("retry");
        assert!(q.claim("a").await.expect("claim").is_none(), "not due yet");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let c = q.claim("a").await.expect("claim").expect("due again");
        assert_eq!(c.job.attempt, 1);
        q.dead_letter(&c, "gave up").await.expect("dead");
        assert!(q.claim("a").await.expect("claim").is_none());
        let dead = q.dead_letters().await.expect("dead letters");
        assert!(
            dead.iter()
                .any(|d| d.job.id == job.id && d.error == "gave up")
        );

        let job2 = RevocationJob::new(project, key, RevocationReason::Deleted);
        assert!(q.enqueue(&job2, false).await.expect("enqueue"));
        let c = q.claim("a").await.expect("claim").expect("job2");
        q.complete(&c).await.expect("complete");
        assert!(q.claim("a").await.expect("claim").is_none());
        assert!(other.claim("b").await.expect("claim").is_none());
    }

    #[tokio::test]
    async fn embedded_queue_contract_and_crash_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Database::create(dir.path().join("q.redb")).expect("db"));
        let q = EmbeddedQueue::open(db.clone()).expect("open");
        let other = EmbeddedQueue::open(db.clone()).expect("open");
        queue_contract(&q, &other).await;

        // A job claimed by a process that then dies is claimable after restart.
        let key = ApiKeyId::parse("00000000000000c1").expect("valid");
        let job = RevocationJob::new(
            ProjectId::parse("p").expect("valid"),
            key,
            RevocationReason::Expired,
        );
        q.enqueue(&job, false).await.expect("enqueue");
        let taken = q.claim("a").await.expect("claim").expect("job");
        assert_eq!(taken.job.id, job.id);
        drop(q);
        let restarted = EmbeddedQueue::open(db).expect("reopen");
        let again = restarted
            .claim("a")
            .await
            .expect("claim")
            .expect("job survives");
        assert_eq!(again.job.id, job.id);
    }
}
