//! The embedded mode's [`SessionStore`]: session records in this process's memory, bounded
//! (expired records are dropped first; a save beyond the bound is refused and counted).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::ProjectId;
use herald_protocol::csr::Pid;
use parking_lot::Mutex;

use super::{MAX_MEMORY_RECORDS, SessionRecord, SessionStore, SessionStoreError, now_secs};

/// Embedded mode: records in this process's memory, at most [`MAX_MEMORY_RECORDS`].
#[derive(Default)]
pub struct MemorySessions {
    records: Mutex<HashMap<(String, String), SessionRecord>>,
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn save(&self, record: SessionRecord, _ttl: Duration) -> Result<bool, SessionStoreError> {
        let mut records = self.records.lock();
        if records.len() >= MAX_MEMORY_RECORDS {
            let now = now_secs();
            records.retain(|_, r| r.expires_at > now);
            if records.len() >= MAX_MEMORY_RECORDS {
                return Ok(false);
            }
        }
        records.insert((record.project.clone(), record.pid.clone()), record);
        Ok(true)
    }

    async fn take(
        &self,
        project: &ProjectId,
        pid: &Pid,
    ) -> Result<Option<SessionRecord>, SessionStoreError> {
        let record = self
            .records
            .lock()
            .remove(&(project.as_str().to_owned(), pid.as_str().to_owned()));
        Ok(record.filter(|r| r.expires_at > now_secs()))
    }
}
