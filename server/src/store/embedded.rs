//! The embedded store: one redb file (`herald.redb`) under the data dir.
//!
//! redb is a pure-Rust, ACID, crash-safe key-value store: no C toolchain, no second process,
//! and a committed write survives a crash. Records are JSON values keyed by id. Everything is
//! also held in memory, so reads (one per publish) never touch the disk; writes go to redb
//! first and update memory only after the commit succeeded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::{ApiKeyId, ProjectId};
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{ApiKeyRecord, ProjectRecord, SigningSecret, Store, StoreError};

const PROJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("projects");
const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "herald.redb";

#[derive(Default)]
struct Cache {
    projects: BTreeMap<ProjectId, ProjectRecord>,
    keys: BTreeMap<ApiKeyId, ApiKeyRecord>,
}

/// The redb-backed [`Store`].
pub struct EmbeddedStore {
    db: Arc<Database>,
    cache: RwLock<Cache>,
    /// Serialises writers so memory is updated in commit order.
    write_lock: tokio::sync::Mutex<()>,
}

/// One change to apply in a write transaction.
enum Write {
    PutProject(ProjectRecord),
    DeleteProject(ProjectId, Vec<ApiKeyId>),
    PutKey(ApiKeyRecord),
    DeleteKey(ApiKeyId),
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `data_dir` and loads it into memory.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(backend)?;
        let db = Database::create(data_dir.join(DB_FILE)).map_err(backend)?;
        let mut cache = Cache::default();
        {
            let tx = db.begin_write().map_err(backend)?;
            // Creates the tables on first start.
            tx.open_table(PROJECTS).map_err(backend)?;
            tx.open_table(API_KEYS).map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        let tx = db.begin_read().map_err(backend)?;
        for row in tx
            .open_table(PROJECTS)
            .map_err(backend)?
            .iter()
            .map_err(backend)?
        {
            let (_, v) = row.map_err(backend)?;
            let p: ProjectRecord = serde_json::from_slice(v.value()).map_err(backend)?;
            cache.projects.insert(p.id.clone(), p);
        }
        for row in tx
            .open_table(API_KEYS)
            .map_err(backend)?
            .iter()
            .map_err(backend)?
        {
            let (_, v) = row.map_err(backend)?;
            let k: ApiKeyRecord = serde_json::from_slice(v.value()).map_err(backend)?;
            cache.keys.insert(k.id.clone(), k);
        }
        Ok(Self {
            db: Arc::new(db),
            cache: RwLock::new(cache),
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The database, for other embedded components (the revocation queue) sharing the file.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Commits `writes` in one transaction, off the async runtime.
    async fn commit(&self, writes: Vec<Write>) -> Result<Vec<Write>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(backend)?;
            {
                let mut projects = tx.open_table(PROJECTS).map_err(backend)?;
                let mut keys = tx.open_table(API_KEYS).map_err(backend)?;
                for w in &writes {
                    match w {
                        Write::PutProject(p) => {
                            let v = serde_json::to_vec(p).map_err(backend)?;
                            projects
                                .insert(p.id.as_str(), v.as_slice())
                                .map_err(backend)?;
                        }
                        Write::DeleteProject(id, key_ids) => {
                            projects.remove(id.as_str()).map_err(backend)?;
                            for k in key_ids {
                                keys.remove(k.as_str()).map_err(backend)?;
                            }
                        }
                        Write::PutKey(k) => {
                            let v = serde_json::to_vec(k).map_err(backend)?;
                            keys.insert(k.id.as_str(), v.as_slice()).map_err(backend)?;
                        }
                        Write::DeleteKey(id) => {
                            keys.remove(id.as_str()).map_err(backend)?;
                        }
                    }
                }
            }
            tx.commit().map_err(backend)?;
            Ok(writes)
        })
        .await
        .map_err(backend)?
    }

    fn apply(&self, writes: Vec<Write>) {
        let mut cache = self.cache.write();
        for w in writes {
            match w {
                Write::PutProject(p) => {
                    cache.projects.insert(p.id.clone(), p);
                }
                Write::DeleteProject(id, key_ids) => {
                    cache.projects.remove(&id);
                    for k in key_ids {
                        cache.keys.remove(&k);
                    }
                }
                Write::PutKey(k) => {
                    cache.keys.insert(k.id.clone(), k);
                }
                Write::DeleteKey(id) => {
                    cache.keys.remove(&id);
                }
            }
        }
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let writes = self.commit(writes).await?;
        self.apply(writes);
        Ok(())
    }

    /// Applies `change` to the project under the write lock and commits it.
    async fn update_project(
        &self,
        id: &ProjectId,
        change: impl FnOnce(&mut ProjectRecord) + Send,
    ) -> Result<(), StoreError> {
        let _w = self.write_lock.lock().await;
        let mut project = self
            .cache
            .read()
            .projects
            .get(id)
            .cloned()
            .ok_or(StoreError::ProjectNotFound)?;
        change(&mut project);
        self.write(vec![Write::PutProject(project)]).await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_project(&self, project: &ProjectRecord) -> Result<(), StoreError> {
        let _w = self.write_lock.lock().await;
        if self.cache.read().projects.contains_key(&project.id) {
            return Err(StoreError::Conflict);
        }
        self.write(vec![Write::PutProject(project.clone())]).await
    }

    async fn project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError> {
        Ok(self.cache.read().projects.get(id).cloned())
    }

    async fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        Ok(self.cache.read().projects.values().cloned().collect())
    }

    async fn delete_project(
        &self,
        id: &ProjectId,
    ) -> Result<Option<Vec<ApiKeyRecord>>, StoreError> {
        let _w = self.write_lock.lock().await;
        let keys: Vec<ApiKeyRecord> = {
            let cache = self.cache.read();
            if !cache.projects.contains_key(id) {
                return Ok(None);
            }
            cache
                .keys
                .values()
                .filter(|k| &k.project_id == id)
                .cloned()
                .collect()
        };
        let ids = keys.iter().map(|k| k.id.clone()).collect();
        self.write(vec![Write::DeleteProject(id.clone(), ids)])
            .await?;
        Ok(Some(keys))
    }

    async fn rotate_secret(&self, id: &ProjectId, secret: SigningSecret) -> Result<(), StoreError> {
        self.update_project(id, |p| p.signing_secret = secret).await
    }

    async fn set_history(
        &self,
        id: &ProjectId,
        history: herald_protocol::HistorySettings,
    ) -> Result<(), StoreError> {
        self.update_project(id, |p| p.history = history).await
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let _w = self.write_lock.lock().await;
        {
            let cache = self.cache.read();
            if !cache.projects.contains_key(&key.project_id) {
                return Err(StoreError::ProjectNotFound);
            }
            if cache.keys.contains_key(&key.id) {
                return Err(StoreError::Conflict);
            }
        }
        self.write(vec![Write::PutKey(key.clone())]).await
    }

    async fn update_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError> {
        let _w = self.write_lock.lock().await;
        let exists = self
            .cache
            .read()
            .keys
            .get(&key.id)
            .is_some_and(|k| k.project_id == key.project_id);
        if !exists {
            return Ok(false);
        }
        self.write(vec![Write::PutKey(key.clone())]).await?;
        Ok(true)
    }

    async fn api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.cache.read().keys.get(id).cloned())
    }

    async fn api_keys(&self, project: &ProjectId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut keys: Vec<ApiKeyRecord> = self
            .cache
            .read()
            .keys
            .values()
            .filter(|k| &k.project_id == project)
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    async fn all_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(self.cache.read().keys.values().cloned().collect())
    }

    async fn delete_api_key(
        &self,
        project: &ProjectId,
        id: &ApiKeyId,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let _w = self.write_lock.lock().await;
        let key = match self.cache.read().keys.get(id) {
            Some(k) if &k.project_id == project => k.clone(),
            _ => return Ok(None),
        };
        self.write(vec![Write::DeleteKey(id.clone())]).await?;
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        crate::store::contract::run(&store).await;
    }

    #[tokio::test]
    async fn embedded_store_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (project, key) = crate::store::contract::sample("reopen");
        {
            let store = EmbeddedStore::open(dir.path()).expect("open");
            store
                .create_project(&project)
                .await
                .expect("create project");
            store.create_api_key(&key).await.expect("create key");
        }
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.project(&project.id).await.expect("read"),
            Some(project)
        );
        assert_eq!(store.api_key(&key.id).await.expect("read"), Some(key));
    }
}
