//! Redis mode's [`SessionStore`]: one key per session record with the recovery window as TTL,
//! taken with `GETDEL`, so a reconnect on any instance resumes it once.

use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::ProjectId;
use herald_protocol::csr::Pid;

use super::{SessionRecord, SessionStore, SessionStoreError, now_secs};

/// Redis mode: one JSON key per pid, `{prefix}:csr:{{project}}:{pid}`, with the window as TTL;
/// any instance can take it.
pub struct RedisSessions {
    client: fred::clients::Client,
    prefix: String,
}

impl RedisSessions {
    /// Records under `prefix` on `client`.
    pub fn new(client: fred::clients::Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, project: &str, pid: &str) -> String {
        format!("{}:csr:{{{project}}}:{pid}", self.prefix)
    }
}

#[async_trait]
impl SessionStore for RedisSessions {
    async fn save(&self, record: SessionRecord, ttl: Duration) -> Result<bool, SessionStoreError> {
        use fred::interfaces::KeysInterface;
        let json = serde_json::to_string(&record).map_err(|e| SessionStoreError(e.to_string()))?;
        let key = self.key(&record.project, &record.pid);
        let secs = ttl.as_secs().max(1) as i64;
        let _: () = self
            .client
            .set(
                key,
                json,
                Some(fred::types::Expiration::EX(secs)),
                None,
                false,
            )
            .await
            .map_err(|e| SessionStoreError(e.to_string()))?;
        Ok(true)
    }

    async fn take(
        &self,
        project: &ProjectId,
        pid: &Pid,
    ) -> Result<Option<SessionRecord>, SessionStoreError> {
        use fred::interfaces::KeysInterface;
        let json: Option<String> = self
            .client
            .getdel(self.key(project.as_str(), pid.as_str()))
            .await
            .map_err(|e| SessionStoreError(e.to_string()))?;
        let Some(json) = json else {
            return Ok(None);
        };
        let record: SessionRecord =
            serde_json::from_str(&json).map_err(|e| SessionStoreError(e.to_string()))?;
        Ok(Some(record).filter(|r| r.expires_at > now_secs()))
    }
}
