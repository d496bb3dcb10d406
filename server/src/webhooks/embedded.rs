//! The embedded [`WebhookBackend`]: endpoints and the outbox in the store's redb file.
//!
//! | table | key | value |
//! |---|---|---|
//! | `webhooks` | `{projectId}/{webhookId}` | [`WebhookRecord`] (JSON) |
//! | `webhook_deliveries` | delivery id | [`DeliveryRecord`] (JSON) |
//! | `webhook_pending` | `{due ms, 20 digits}/{deliveryId}` | webhook id: the outbox in due order |
//! | `webhook_pending_ids` | delivery id | its `webhook_pending` key |
//! | `webhook_log` | `{webhookId}/{deliveryId}` | nothing: the endpoint's newest deliveries (ids are UUIDv7, so they sort by time) |
//! | `webhook_marks` | mark | expiry (Unix ms) |
//!
//! Every change is one write transaction, so a crash never leaves a delivery half-moved, and a
//! restarted process finds every pending delivery (a claimed one is due again when its lease
//! runs out). The count of pending deliveries per endpoint (for `max_pending`) is kept in
//! memory, rebuilt from `webhook_pending` at open.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::ProjectId;
use herald_protocol::webhook::{DeliveryId, DeliveryStatus, MAX_LISTED_DELIVERIES, WebhookId};
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::backend::{DeliveryRecord, WebhookBackend, WebhookRecord, WebhookStoreError};

const WEBHOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhooks");
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("webhook_deliveries");
const PENDING: TableDefinition<&str, &str> = TableDefinition::new("webhook_pending");
const PENDING_IDS: TableDefinition<&str, &str> = TableDefinition::new("webhook_pending_ids");
const LOG: TableDefinition<&str, ()> = TableDefinition::new("webhook_log");
const MARKS: TableDefinition<&str, i64> = TableDefinition::new("webhook_marks");

fn backend<E: std::fmt::Display>(e: E) -> WebhookStoreError {
    WebhookStoreError::Backend(e.to_string())
}

fn pending_key(due_ms: i64, id: &DeliveryId) -> String {
    format!("{:020}/{id}", due_ms.max(0))
}

/// The range of keys starting with `prefix/` (`/` + 1 is `0`).
fn prefix_range(prefix: &str) -> (String, String) {
    (format!("{prefix}/"), format!("{prefix}0"))
}

type Counts = HashMap<WebhookId, usize>;

/// The redb-backed webhook storage.
pub struct EmbeddedWebhooks {
    db: Arc<Database>,
    pending: Arc<Mutex<Counts>>,
}

impl EmbeddedWebhooks {
    /// Webhooks in `db` (the store's database); creates the tables, counts the pending
    /// deliveries.
    pub fn open(db: Arc<Database>) -> Result<Self, WebhookStoreError> {
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(WEBHOOKS).map_err(backend)?;
        tx.open_table(DELIVERIES).map_err(backend)?;
        tx.open_table(PENDING_IDS).map_err(backend)?;
        tx.open_table(LOG).map_err(backend)?;
        tx.open_table(MARKS).map_err(backend)?;
        let mut counts = Counts::new();
        {
            let pending = tx.open_table(PENDING).map_err(backend)?;
            for row in pending.iter().map_err(backend)? {
                let (_, wid) = row.map_err(backend)?;
                if let Some(wid) = WebhookId::parse(wid.value()) {
                    *counts.entry(wid).or_default() += 1;
                }
            }
        }
        tx.commit().map_err(backend)?;
        Ok(Self {
            db,
            pending: Arc::new(Mutex::new(counts)),
        })
    }

    /// Runs `f` in one write transaction on a blocking thread, with the pending counts held.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction, &mut Counts) -> Result<T, WebhookStoreError> + Send + 'static,
    ) -> Result<T, WebhookStoreError> {
        let (db, pending) = (self.db.clone(), self.pending.clone());
        tokio::task::spawn_blocking(move || {
            let mut counts = pending.lock();
            let mut staged = counts.clone();
            let tx = db.begin_write().map_err(backend)?;
            let out = f(&tx, &mut staged)?;
            tx.commit().map_err(backend)?;
            *counts = staged;
            Ok(out)
        })
        .await
        .map_err(backend)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, WebhookStoreError> + Send + 'static,
    ) -> Result<T, WebhookStoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(backend)?;
            f(&tx)
        })
        .await
        .map_err(backend)?
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WebhookStoreError> {
    serde_json::from_slice(bytes).map_err(backend)
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, WebhookStoreError> {
    serde_json::to_vec(v).map_err(backend)
}

/// Takes `id` out of the outbox; whether it was in it.
fn unpend(tx: &WriteTransaction, id: &str) -> Result<bool, WebhookStoreError> {
    let old = tx
        .open_table(PENDING_IDS)
        .map_err(backend)?
        .remove(id)
        .map_err(backend)?
        .map(|k| k.value().to_owned());
    match old {
        Some(key) => {
            tx.open_table(PENDING)
                .map_err(backend)?
                .remove(key.as_str())
                .map_err(backend)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Puts `d` in the outbox at its due time.
fn pend(tx: &WriteTransaction, d: &DeliveryRecord) -> Result<(), WebhookStoreError> {
    let key = pending_key(d.due_ms.unwrap_or(0), &d.id);
    tx.open_table(PENDING)
        .map_err(backend)?
        .insert(key.as_str(), d.webhook_id.as_str())
        .map_err(backend)?;
    tx.open_table(PENDING_IDS)
        .map_err(backend)?
        .insert(d.id.as_str(), key.as_str())
        .map_err(backend)?;
    Ok(())
}

fn decrement(counts: &mut Counts, wid: &WebhookId) {
    if let Some(n) = counts.get_mut(wid) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(wid);
        }
    }
}

/// Keeps the newest [`MAX_LISTED_DELIVERIES`] log entries of `wid`; a record trimmed away is
/// deleted unless it is still pending.
fn trim_log(tx: &WriteTransaction, wid: &WebhookId) -> Result<(), WebhookStoreError> {
    let (from, to) = prefix_range(wid.as_str());
    let keys: Vec<String> = {
        let log = tx.open_table(LOG).map_err(backend)?;
        let mut keys = Vec::new();
        for row in log.range(from.as_str()..to.as_str()).map_err(backend)? {
            keys.push(row.map_err(backend)?.0.value().to_owned());
        }
        keys
    };
    if keys.len() <= MAX_LISTED_DELIVERIES {
        return Ok(());
    }
    let excess = keys.len() - MAX_LISTED_DELIVERIES;
    let mut log = tx.open_table(LOG).map_err(backend)?;
    let pending_ids = tx.open_table(PENDING_IDS).map_err(backend)?;
    let mut deliveries = tx.open_table(DELIVERIES).map_err(backend)?;
    for key in &keys[..excess] {
        log.remove(key.as_str()).map_err(backend)?;
        let did = key.rsplit('/').next().unwrap_or("");
        if pending_ids.get(did).map_err(backend)?.is_none() {
            deliveries.remove(did).map_err(backend)?;
        }
    }
    Ok(())
}

fn webhooks_of(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    project: &ProjectId,
) -> Result<Vec<WebhookRecord>, WebhookStoreError> {
    let (from, to) = prefix_range(project.as_str());
    let mut out: Vec<WebhookRecord> = Vec::new();
    for row in table.range(from.as_str()..to.as_str()).map_err(backend)? {
        out.push(decode(row.map_err(backend)?.1.value())?);
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

fn delete_one(
    tx: &WriteTransaction,
    counts: &mut Counts,
    project: &ProjectId,
    id: &WebhookId,
) -> Result<bool, WebhookStoreError> {
    let key = format!("{project}/{id}");
    if tx
        .open_table(WEBHOOKS)
        .map_err(backend)?
        .remove(key.as_str())
        .map_err(backend)?
        .is_none()
    {
        return Ok(false);
    }
    let (from, to) = prefix_range(id.as_str());
    let keys: Vec<String> = {
        let log = tx.open_table(LOG).map_err(backend)?;
        let mut keys = Vec::new();
        for row in log.range(from.as_str()..to.as_str()).map_err(backend)? {
            keys.push(row.map_err(backend)?.0.value().to_owned());
        }
        keys
    };
    let mut log = tx.open_table(LOG).map_err(backend)?;
    let pending_ids = tx.open_table(PENDING_IDS).map_err(backend)?;
    let mut deliveries = tx.open_table(DELIVERIES).map_err(backend)?;
    for key in keys {
        log.remove(key.as_str()).map_err(backend)?;
        let did = key.rsplit('/').next().unwrap_or("");
        if pending_ids.get(did).map_err(backend)?.is_none() {
            deliveries.remove(did).map_err(backend)?;
        }
    }
    // Pending ones stay until claimed, then are discarded (the endpoint is gone); they no
    // longer count against a limit.
    counts.remove(id);
    Ok(true)
}

#[async_trait]
impl WebhookBackend for EmbeddedWebhooks {
    async fn create_webhook(
        &self,
        webhook: &WebhookRecord,
        max_per_project: usize,
    ) -> Result<(), WebhookStoreError> {
        let w = webhook.clone();
        let bytes = encode(&w)?;
        self.write(move |tx, _| {
            let mut table = tx.open_table(WEBHOOKS).map_err(backend)?;
            if webhooks_of(&table, &w.project_id)?.len() >= max_per_project {
                return Err(WebhookStoreError::TooMany);
            }
            let key = format!("{}/{}", w.project_id, w.id);
            table
                .insert(key.as_str(), bytes.as_slice())
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn webhooks(&self, project: &ProjectId) -> Result<Vec<WebhookRecord>, WebhookStoreError> {
        let project = project.clone();
        self.read(move |tx| webhooks_of(&tx.open_table(WEBHOOKS).map_err(backend)?, &project))
            .await
    }

    async fn webhook(
        &self,
        project: &ProjectId,
        id: &WebhookId,
    ) -> Result<Option<WebhookRecord>, WebhookStoreError> {
        let key = format!("{project}/{id}");
        self.read(move |tx| {
            let table = tx.open_table(WEBHOOKS).map_err(backend)?;
            match table.get(key.as_str()).map_err(backend)? {
                Some(v) => Ok(Some(decode(v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn update_webhook(&self, webhook: &WebhookRecord) -> Result<bool, WebhookStoreError> {
        let key = format!("{}/{}", webhook.project_id, webhook.id);
        let bytes = encode(webhook)?;
        self.write(move |tx, _| {
            let mut table = tx.open_table(WEBHOOKS).map_err(backend)?;
            if table.get(key.as_str()).map_err(backend)?.is_none() {
                return Ok(false);
            }
            table
                .insert(key.as_str(), bytes.as_slice())
                .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn delete_webhook(
        &self,
        project: &ProjectId,
        id: &WebhookId,
    ) -> Result<bool, WebhookStoreError> {
        let (project, id) = (project.clone(), id.clone());
        self.write(move |tx, counts| delete_one(tx, counts, &project, &id))
            .await
    }

    async fn delete_project_webhooks(&self, project: &ProjectId) -> Result<(), WebhookStoreError> {
        let project = project.clone();
        self.write(move |tx, counts| {
            let list = webhooks_of(&tx.open_table(WEBHOOKS).map_err(backend)?, &project)?;
            for w in list {
                delete_one(tx, counts, &project, &w.id)?;
            }
            Ok(())
        })
        .await
    }

    async fn enqueue(
        &self,
        deliveries: &[DeliveryRecord],
        max_pending: usize,
    ) -> Result<Vec<bool>, WebhookStoreError> {
        let list: Vec<(DeliveryRecord, Vec<u8>)> = deliveries
            .iter()
            .map(|d| Ok((d.clone(), encode(d)?)))
            .collect::<Result<_, WebhookStoreError>>()?;
        self.write(move |tx, counts| {
            let mut taken = Vec::with_capacity(list.len());
            let mut touched = Vec::new();
            for (d, bytes) in &list {
                if tx
                    .open_table(DELIVERIES)
                    .map_err(backend)?
                    .get(d.id.as_str())
                    .map_err(backend)?
                    .is_some()
                {
                    // Added already (the same call again).
                    taken.push(true);
                    continue;
                }
                let n = counts.entry(d.webhook_id.clone()).or_default();
                if *n >= max_pending {
                    taken.push(false);
                    continue;
                }
                *n += 1;
                tx.open_table(DELIVERIES)
                    .map_err(backend)?
                    .insert(d.id.as_str(), bytes.as_slice())
                    .map_err(backend)?;
                pend(tx, d)?;
                let log_key = format!("{}/{}", d.webhook_id, d.id);
                tx.open_table(LOG)
                    .map_err(backend)?
                    .insert(log_key.as_str(), ())
                    .map_err(backend)?;
                if !touched.contains(&d.webhook_id) {
                    touched.push(d.webhook_id.clone());
                }
                taken.push(true);
            }
            counts.retain(|_, n| *n > 0);
            for wid in &touched {
                trim_log(tx, wid)?;
            }
            Ok(taken)
        })
        .await
    }

    async fn claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
        busy: &[WebhookId],
    ) -> Result<Vec<DeliveryRecord>, WebhookStoreError> {
        let busy: Vec<WebhookId> = busy.to_vec();
        self.write(move |tx, _| {
            let due: Vec<(String, String)> = {
                let pending = tx.open_table(PENDING).map_err(backend)?;
                let upto = format!("{:020}0", now_ms.max(0));
                let mut taken_endpoints: Vec<String> = Vec::new();
                let mut due = Vec::new();
                for row in pending.range(..upto.as_str()).map_err(backend)? {
                    if due.len() >= max {
                        break;
                    }
                    let (k, wid) = row.map_err(backend)?;
                    let wid = wid.value().to_owned();
                    if busy.iter().any(|b| b.as_str() == wid) || taken_endpoints.contains(&wid) {
                        continue;
                    }
                    taken_endpoints.push(wid);
                    due.push((
                        k.value().to_owned(),
                        k.value().rsplit('/').next().unwrap_or("").to_owned(),
                    ));
                }
                due
            };
            let mut out = Vec::with_capacity(due.len());
            for (_, did) in due {
                let bytes = tx
                    .open_table(DELIVERIES)
                    .map_err(backend)?
                    .get(did.as_str())
                    .map_err(backend)?
                    .map(|v| v.value().to_vec());
                unpend(tx, &did)?;
                let Some(bytes) = bytes else { continue };
                let mut d: DeliveryRecord = decode(&bytes)?;
                d.due_ms = Some(now_ms + lease_ms);
                tx.open_table(DELIVERIES)
                    .map_err(backend)?
                    .insert(did.as_str(), encode(&d)?.as_slice())
                    .map_err(backend)?;
                pend(tx, &d)?;
                out.push(d);
            }
            Ok(out)
        })
        .await
    }

    async fn record_attempt(&self, delivery: &DeliveryRecord) -> Result<(), WebhookStoreError> {
        let d = delivery.clone();
        let bytes = encode(&d)?;
        self.write(move |tx, counts| {
            let was_pending = unpend(tx, d.id.as_str())?;
            let logged = tx
                .open_table(LOG)
                .map_err(backend)?
                .get(format!("{}/{}", d.webhook_id, d.id).as_str())
                .map_err(backend)?
                .is_some();
            if d.status == DeliveryStatus::Pending {
                pend(tx, &d)?;
                if !was_pending {
                    *counts.entry(d.webhook_id.clone()).or_default() += 1;
                }
            } else if was_pending {
                decrement(counts, &d.webhook_id);
            }
            let mut deliveries = tx.open_table(DELIVERIES).map_err(backend)?;
            if logged || d.status == DeliveryStatus::Pending {
                deliveries
                    .insert(d.id.as_str(), bytes.as_slice())
                    .map_err(backend)?;
            } else {
                deliveries.remove(d.id.as_str()).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn discard(&self, delivery: &DeliveryRecord) -> Result<(), WebhookStoreError> {
        let d = delivery.clone();
        self.write(move |tx, counts| {
            if unpend(tx, d.id.as_str())? {
                decrement(counts, &d.webhook_id);
            }
            tx.open_table(DELIVERIES)
                .map_err(backend)?
                .remove(d.id.as_str())
                .map_err(backend)?;
            tx.open_table(LOG)
                .map_err(backend)?
                .remove(format!("{}/{}", d.webhook_id, d.id).as_str())
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn deliveries(
        &self,
        webhook: &WebhookId,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, WebhookStoreError> {
        let wid = webhook.clone();
        self.read(move |tx| {
            let log = tx.open_table(LOG).map_err(backend)?;
            let deliveries = tx.open_table(DELIVERIES).map_err(backend)?;
            let (from, to) = prefix_range(wid.as_str());
            let mut out = Vec::new();
            for row in log
                .range(from.as_str()..to.as_str())
                .map_err(backend)?
                .rev()
            {
                if out.len() >= limit {
                    break;
                }
                let key = row.map_err(backend)?.0.value().to_owned();
                let did = key.rsplit('/').next().unwrap_or("");
                if let Some(v) = deliveries.get(did).map_err(backend)? {
                    out.push(decode(v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delivery(
        &self,
        webhook: &WebhookId,
        id: &DeliveryId,
    ) -> Result<Option<DeliveryRecord>, WebhookStoreError> {
        let (wid, did) = (webhook.clone(), id.clone());
        self.read(move |tx| {
            let deliveries = tx.open_table(DELIVERIES).map_err(backend)?;
            match deliveries.get(did.as_str()).map_err(backend)? {
                Some(v) => {
                    let d: DeliveryRecord = decode(v.value())?;
                    Ok((d.webhook_id == wid).then_some(d))
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn mark_once(&self, key: &str, ttl_secs: u64) -> Result<bool, WebhookStoreError> {
        let key = key.to_owned();
        let now = super::now_ms();
        self.write(move |tx, _| {
            let mut marks = tx.open_table(MARKS).map_err(backend)?;
            if let Some(until) = marks.get(key.as_str()).map_err(backend)?
                && until.value() > now
            {
                return Ok(false);
            }
            let until = now.saturating_add((ttl_secs as i64).saturating_mul(1000));
            marks.insert(key.as_str(), until).map_err(backend)?;
            Ok(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_webhooks_contract_and_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Database::create(dir.path().join("w.redb")).expect("db"));
        let a = EmbeddedWebhooks::open(db.clone()).expect("open");
        let b = EmbeddedWebhooks::open(db).expect("open");
        super::super::contract::run(&a, &b).await;
    }
}
