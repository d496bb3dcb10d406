//! The Redis [`Store`] (Redis mode): every Herald instance reads and writes the same Redis, so
//! a write on one instance is seen by the next read on any other. Nothing is cached.
//!
//! ## Key layout
//!
//! Every key starts with the configured prefix (`herald` by default, [`DEFAULT_KEY_PREFIX`]);
//! per-project data carries the project id.
//!
//! | key | type | value |
//! |---|---|---|
//! | `{prefix}:projects` | set | ids of all projects |
//! | `{prefix}:project:{projectId}` | string | JSON of [`ProjectRecord`] (holds the signing secret) |
//! | `{prefix}:project:{projectId}:apikeys` | set | ids of the project's API keys |
//! | `{prefix}:apikey:{keyId}` | string | JSON of [`ApiKeyRecord`] (holds only the secret's hash) |
//!
//! A project id never contains `:`, so `project:{id}` and `project:{id}:apikeys` never collide.
//!
//! ## Atomicity
//!
//! Every write that touches more than one key is one Lua script, so it is atomic against
//! every other instance:
//!
//! * `create_project`: `SET NX` of the record, then `SADD` to `projects` (one script: a crash
//!   can never leave an unlisted project);
//! * `delete_project`: deletes the record, every key listed in its `apikeys` set, the set and
//!   the `projects` entry: no key survives its project;
//! * `create_api_key`: checks that the project exists, then `SET NX` + `SADD`, so a key can
//!   never be created into a project that a concurrent delete just removed;
//! * `update_api_key` / `delete_api_key`: act only when the key is in the project's set;
//! * `rotate_secret`: compare-and-set of the project record (retried on contention).
//!
//! Scripts run with `EVALSHA`, loading them on first use and again after `NOSCRIPT`.
//!
//! ## Timeouts and reconnection
//!
//! [`RedisStore`] does not configure the client it is given: the caller sets a command
//! timeout (`PerformanceConfig::default_command_timeout`) and a reconnect policy on the fred
//! client. Without a timeout, an operation waits for as long as Redis stays unreachable.
//! Connection failures and timeouts become [`StoreError::Unavailable`]; data Herald cannot
//! read becomes [`StoreError::Backend`].
//!
//! ## Redis Cluster
//!
//! Scripts touch keys they compute from the prefix, so all of Herald's keys must live in one
//! hash slot: with Redis Cluster, use a hash-tag prefix such as `{herald}`.

use std::sync::OnceLock;

use async_trait::async_trait;
use fred::clients::Client;
use fred::error::{Error as RedisError, ErrorKind};
use fred::interfaces::{KeysInterface, LuaInterface, SetsInterface};
use fred::types::Value;
use herald_protocol::{ApiKeyId, ProjectId};
use serde::de::DeserializeOwned;

use super::{ApiKeyRecord, ProjectRecord, SigningSecret, Store, StoreError};

/// The key prefix Herald uses unless configured otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "herald";

/// How many times [`RedisStore::update_project`] retries its compare-and-set when the record
/// changed under it.
const UPDATE_ATTEMPTS: usize = 16;

/// KEYS: project, projects set. ARGV: JSON, project id. Returns 1 (created) or 0 (taken).
static CREATE_PROJECT: LuaScript = LuaScript::new(
    r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SADD', KEYS[2], ARGV[2])
  return 1
end
return 0
"#,
);

/// KEYS: project, project's apikeys set, projects set. ARGV: project id, `{prefix}:apikey:`.
/// Returns `{existed, keyJson...}`.
static DELETE_PROJECT: LuaScript = LuaScript::new(
    r#"
local out = { redis.call('EXISTS', KEYS[1]) }
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local k = ARGV[2] .. id
  local v = redis.call('GET', k)
  if v then
    out[#out + 1] = v
    redis.call('DEL', k)
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return out
"#,
);

/// KEYS: project. ARGV: expected JSON, new JSON. Returns 1 (set), 0 (changed), -1 (missing).
static COMPARE_AND_SET_PROJECT: LuaScript = LuaScript::new(
    r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#,
);

/// KEYS: project, apikey, project's apikeys set. ARGV: JSON, key id.
/// Returns 1 (created), 0 (id taken), -1 (no such project).
static CREATE_API_KEY: LuaScript = LuaScript::new(
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX') then return 0 end
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"#,
);

/// KEYS: apikey, project's apikeys set. ARGV: JSON, key id. Returns 1 (replaced) or 0.
static UPDATE_API_KEY: LuaScript = LuaScript::new(
    r#"
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then return 0 end
if not redis.call('SET', KEYS[1], ARGV[1], 'XX') then return 0 end
return 1
"#,
);

/// KEYS: apikey, project's apikeys set. ARGV: key id. Returns `{1, json}` or `{0}`.
static DELETE_API_KEY: LuaScript = LuaScript::new(
    r#"
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return { 0 } end
local v = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
if v then return { 1, v } end
return { 0 }
"#,
);

/// The Redis-backed [`Store`]. See the [module docs](self) for the key layout.
///
/// The caller configures command timeouts and reconnection on the fred [`Client`].
pub struct RedisStore {
    client: Client,
    prefix: String,
}

impl RedisStore {
    /// A store over `client` (connected, or connecting) whose keys all start with `{prefix}:`.
    ///
    /// The client's command timeout and reconnect policy are the caller's to set; see the
    /// [module docs](self).
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn projects_key(&self) -> String {
        format!("{}:projects", self.prefix)
    }

    fn project_key(&self, id: &ProjectId) -> String {
        format!("{}:project:{}", self.prefix, id.as_str())
    }

    fn project_api_keys_key(&self, id: &ProjectId) -> String {
        format!("{}:project:{}:apikeys", self.prefix, id.as_str())
    }

    fn api_key_key(&self, id: &ApiKeyId) -> String {
        format!("{}:apikey:{}", self.prefix, id.as_str())
    }

    fn api_key_key_prefix(&self) -> String {
        format!("{}:apikey:", self.prefix)
    }

    async fn get(&self, key: String) -> Result<Option<String>, StoreError> {
        let v: Value = self.client.get(key).await.map_err(store_error)?;
        opt_string(v).map_err(StoreError::Backend)
    }

    /// `MGET` of `keys`, skipping missing ones (deleted between listing and reading).
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<String>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let v: Value = self.client.mget(keys).await.map_err(store_error)?;
        let mut out = Vec::new();
        for item in array(v).map_err(StoreError::Backend)? {
            if let Some(s) = opt_string(item).map_err(StoreError::Backend)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Reads the project, applies `change` and writes it back if nobody changed it meanwhile
    /// (compare-and-set in one script), retrying up to [`UPDATE_ATTEMPTS`] times; `what`
    /// names the update in errors.
    async fn update_project(
        &self,
        id: &ProjectId,
        what: &str,
        change: impl Fn(&mut ProjectRecord) + Send,
    ) -> Result<(), StoreError> {
        let key = self.project_key(id);
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(current) = self.get(key.clone()).await? else {
                return Err(StoreError::ProjectNotFound);
            };
            let mut project: ProjectRecord = decode("project", &current)?;
            change(&mut project);
            let args = vec![current, encode(&project)?];
            let outcome = COMPARE_AND_SET_PROJECT
                .run(&self.client, vec![key.clone()], args)
                .await?;
            match int(outcome)? {
                1 => return Ok(()),
                -1 => return Err(StoreError::ProjectNotFound),
                0 => continue,
                n => return Err(unexpected(what, n)),
            }
        }
        Err(StoreError::Backend(format!(
            "project {id} kept changing during the {what}"
        )))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn create_project(&self, project: &ProjectRecord) -> Result<(), StoreError> {
        let json = encode(project)?;
        let keys = vec![self.project_key(&project.id), self.projects_key()];
        let args = vec![json, project.id.as_str().to_owned()];
        match int(CREATE_PROJECT.run(&self.client, keys, args).await?)? {
            1 => Ok(()),
            0 => Err(StoreError::Conflict),
            n => Err(unexpected("create_project", n)),
        }
    }

    async fn project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError> {
        let Some(json) = self.get(self.project_key(id)).await? else {
            return Ok(None);
        };
        let p: ProjectRecord = decode("project", &json)?;
        if &p.id != id {
            return Err(StoreError::Backend(format!(
                "project record under id {id} holds id {}",
                p.id
            )));
        }
        Ok(Some(p))
    }

    async fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        let ids: Vec<String> = self
            .client
            .smembers(self.projects_key())
            .await
            .map_err(store_error)?;
        let keys = ids
            .iter()
            .map(|id| format!("{}:project:{id}", self.prefix))
            .collect();
        let mut out = self
            .get_many(keys)
            .await?
            .iter()
            .map(|json| decode::<ProjectRecord>("project", json))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn delete_project(
        &self,
        id: &ProjectId,
    ) -> Result<Option<Vec<ApiKeyRecord>>, StoreError> {
        let keys = vec![
            self.project_key(id),
            self.project_api_keys_key(id),
            self.projects_key(),
        ];
        let args = vec![id.as_str().to_owned(), self.api_key_key_prefix()];
        let mut items = array(DELETE_PROJECT.run(&self.client, keys, args).await?)
            .map_err(StoreError::Backend)?
            .into_iter();
        let existed = int(items.next().unwrap_or(Value::Null))?;
        let mut deleted = Vec::with_capacity(items.len());
        for item in items {
            let json = opt_string(item)
                .map_err(StoreError::Backend)?
                .ok_or_else(|| unexpected_value("delete_project", "nil"))?;
            deleted.push(decode::<ApiKeyRecord>("API key", &json)?);
        }
        if existed == 0 {
            return Ok(None);
        }
        sort_keys(&mut deleted);
        Ok(Some(deleted))
    }

    async fn rotate_secret(&self, id: &ProjectId, secret: SigningSecret) -> Result<(), StoreError> {
        self.update_project(id, "secret rotation", |p| p.signing_secret = secret.clone())
            .await
    }

    async fn set_history(
        &self,
        id: &ProjectId,
        history: herald_protocol::HistorySettings,
    ) -> Result<(), StoreError> {
        self.update_project(id, "history update", |p| p.history = history)
            .await
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let keys = vec![
            self.project_key(&key.project_id),
            self.api_key_key(&key.id),
            self.project_api_keys_key(&key.project_id),
        ];
        let args = vec![encode(key)?, key.id.as_str().to_owned()];
        match int(CREATE_API_KEY.run(&self.client, keys, args).await?)? {
            1 => Ok(()),
            0 => Err(StoreError::Conflict),
            -1 => Err(StoreError::ProjectNotFound),
            n => Err(unexpected("create_api_key", n)),
        }
    }

    async fn update_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError> {
        let keys = vec![
            self.api_key_key(&key.id),
            self.project_api_keys_key(&key.project_id),
        ];
        let args = vec![encode(key)?, key.id.as_str().to_owned()];
        match int(UPDATE_API_KEY.run(&self.client, keys, args).await?)? {
            1 => Ok(true),
            0 => Ok(false),
            n => Err(unexpected("update_api_key", n)),
        }
    }

    async fn api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        let Some(json) = self.get(self.api_key_key(id)).await? else {
            return Ok(None);
        };
        let k: ApiKeyRecord = decode("API key", &json)?;
        if &k.id != id {
            return Err(StoreError::Backend(format!(
                "API key record under id {id} holds id {}",
                k.id
            )));
        }
        Ok(Some(k))
    }

    async fn api_keys(&self, project: &ProjectId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let ids: Vec<String> = self
            .client
            .smembers(self.project_api_keys_key(project))
            .await
            .map_err(store_error)?;
        let keys = ids
            .iter()
            .map(|id| format!("{}{id}", self.api_key_key_prefix()))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for json in self.get_many(keys).await? {
            let k: ApiKeyRecord = decode("API key", &json)?;
            if &k.project_id != project {
                return Err(StoreError::Backend(format!(
                    "API key {} is listed in project {project} but belongs to {}",
                    k.id, k.project_id
                )));
            }
            out.push(k);
        }
        sort_keys(&mut out);
        Ok(out)
    }

    async fn all_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let projects: Vec<String> = self
            .client
            .smembers(format!("{}:projects", self.prefix))
            .await
            .map_err(store_error)?;
        let mut out = Vec::new();
        for p in projects {
            let Ok(project) = ProjectId::parse(&p) else {
                continue;
            };
            out.extend(self.api_keys(&project).await?);
        }
        Ok(out)
    }

    async fn delete_api_key(
        &self,
        project: &ProjectId,
        id: &ApiKeyId,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let keys = vec![self.api_key_key(id), self.project_api_keys_key(project)];
        let args = vec![id.as_str().to_owned()];
        let mut items = array(DELETE_API_KEY.run(&self.client, keys, args).await?)
            .map_err(StoreError::Backend)?
            .into_iter();
        if int(items.next().unwrap_or(Value::Null))? == 0 {
            return Ok(None);
        }
        let json = items
            .next()
            .map(opt_string)
            .transpose()
            .map_err(StoreError::Backend)?
            .flatten()
            .ok_or_else(|| unexpected_value("delete_api_key", "no record"))?;
        Ok(Some(decode("API key", &json)?))
    }
}

/// Creation order, then id, like the embedded store.
fn sort_keys(keys: &mut [ApiKeyRecord]) {
    keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encoding a record: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Backend(format!("unreadable {what} record in Redis: {e}")))
}

fn int(v: Value) -> Result<i64, StoreError> {
    match v {
        Value::Integer(n) => Ok(n),
        other => Err(unexpected_value("script", other.kind())),
    }
}

fn unexpected(op: &str, n: i64) -> StoreError {
    StoreError::Backend(format!("unexpected {op} script result {n}"))
}

fn unexpected_value(op: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("unexpected {op} reply: {what}"))
}

fn store_error(e: RedisError) -> StoreError {
    classify(e, StoreError::Unavailable, StoreError::Backend)
}

// ---- Helpers shared with the other Redis implementations. ----

/// Sorts a fred error into a backend's two error variants: `unavailable` when
/// [`is_unavailable`] (the caller may retry), `backend` otherwise.
pub(crate) fn classify<E>(
    e: RedisError,
    unavailable: impl FnOnce(String) -> E,
    backend: impl FnOnce(String) -> E,
) -> E {
    if is_unavailable(&e) {
        unavailable(e.to_string())
    } else {
        backend(e.to_string())
    }
}

/// Whether a fred error means "Redis cannot be reached right now" (the caller may retry)
/// rather than "Redis answered something wrong".
pub(crate) fn is_unavailable(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Routing
        | ErrorKind::Cluster => true,
        // Server replies that mean "not now": still loading, busy with a script, failing over.
        ErrorKind::Unknown => ["LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "READONLY"]
            .iter()
            .any(|p| e.details().starts_with(p)),
        _ => false,
    }
}

/// A nil or string reply, strictly (fred's own conversions unwrap one-element arrays and
/// stringify numbers).
pub(crate) fn opt_string(v: Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.to_string())),
        Value::Bytes(b) => String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| "non-UTF-8 value in Redis".to_owned()),
        other => Err(format!("expected a string reply, got {}", other.kind())),
    }
}

/// An array reply, strictly.
pub(crate) fn array(v: Value) -> Result<Vec<Value>, String> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(format!("expected an array reply, got {}", other.kind())),
    }
}

/// A Lua script run with `EVALSHA`, loaded on first use and again when Redis lost it
/// (`NOSCRIPT` after a restart or `SCRIPT FLUSH`). fred 10.1's own `Script` needs its `sha-1`
/// feature, which Herald does not enable.
pub(crate) struct LuaScript {
    source: &'static str,
    sha: OnceLock<String>,
}

impl LuaScript {
    pub(crate) const fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: OnceLock::new(),
        }
    }

    /// Runs the script; errors are fred's, for the caller to classify.
    pub(crate) async fn run_raw(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, RedisError> {
        if let Some(sha) = self.sha.get() {
            match client
                .evalsha::<Value, _, _, _>(sha.as_str(), keys.clone(), args.clone())
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {}
                other => return other,
            }
        }
        // The SHA-1 of a script never changes; loading it again only re-teaches Redis.
        let sha: String = client.script_load(self.source).await?;
        let _ = self.sha.set(sha.clone());
        client.evalsha(sha, keys, args).await
    }

    /// Runs the script with a single write: after a reconnect fred does not write it again
    /// (its `max_command_attempts` would), so a script that must not run twice (an append)
    /// fails instead. It may still run once after failing: a write that timed out can run
    /// when Redis resumes. fred 10.1's `WithOptions` has no `LuaInterface`, so `EVALSHA` goes
    /// as a custom command (hashed on its first key, like fred's own).
    pub(crate) async fn run_raw_once(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, RedisError> {
        use fred::interfaces::ClientLike;
        use fred::types::config::Options;
        use fred::types::{ClusterHash, CustomCommand};
        let once = client.with_options(&Options {
            max_attempts: Some(1),
            ..Default::default()
        });
        let evalsha = |sha: &str| {
            let mut parts = Vec::with_capacity(2 + keys.len() + args.len());
            parts.push(sha.to_owned());
            parts.push(keys.len().to_string());
            parts.extend(keys.iter().cloned());
            parts.extend(args.iter().cloned());
            // The first key is the third argument (after the sha and the key count).
            let cmd = CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false);
            once.custom::<Value, _>(cmd, parts)
        };
        if let Some(sha) = self.sha.get() {
            match evalsha(sha).await {
                Err(e) if e.details().starts_with("NOSCRIPT") => {}
                other => return other,
            }
        }
        let sha: String = client.script_load(self.source).await?;
        let _ = self.sha.set(sha.clone());
        evalsha(&sha).await
    }

    async fn run(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        self.run_raw(client, keys, args).await.map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::redis_test_server::{RedisServer, connect, unique_prefix};
    use crate::store::contract::{key_for, sample};

    async fn store(server: &RedisServer) -> RedisStore {
        RedisStore::new(connect(&server.url()).await, &unique_prefix())
    }

    /// Every key of `prefix` in the server.
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

    #[tokio::test]
    async fn redis_store_contract() {
        let server = RedisServer::start();
        let store = store(&server).await;
        crate::store::contract::run(&store).await;
        // The contract deletes everything it made: nothing may be left behind.
        assert_eq!(
            keys_of(&store.client, store.prefix()).await,
            Vec::<String>::new()
        );
    }

    #[tokio::test]
    async fn redis_store_uses_the_documented_key_layout() {
        let server = RedisServer::start();
        let store = store(&server).await;
        let (project, key) = sample("layout");
        store.create_project(&project).await.expect("create");
        store.create_api_key(&key).await.expect("create key");
        let p = store.prefix();
        let mut expected = vec![
            format!("{p}:projects"),
            format!("{p}:project:p-layout"),
            format!("{p}:project:p-layout:apikeys"),
            format!("{p}:apikey:{}", key.id),
        ];
        expected.sort();
        assert_eq!(keys_of(&store.client, p).await, expected);
        let raw: String = store
            .client
            .get(format!("{p}:project:p-layout"))
            .await
            .expect("get");
        let parsed: ProjectRecord = serde_json::from_str(&raw).expect("project JSON");
        assert_eq!(parsed, project);
    }

    #[tokio::test]
    async fn redis_store_writes_are_seen_by_other_instances_at_once() {
        let server = RedisServer::start();
        let a = store(&server).await;
        let b = RedisStore::new(connect(&server.url()).await, a.prefix());
        let (project, key) = sample("shared");
        a.create_project(&project).await.expect("create");
        assert_eq!(
            b.project(&project.id).await.expect("read"),
            Some(project.clone())
        );
        b.create_api_key(&key).await.expect("create key");
        assert_eq!(a.api_key(&key.id).await.expect("read"), Some(key.clone()));
        let secret = SigningSecret::generate();
        a.rotate_secret(&project.id, secret.clone())
            .await
            .expect("rotate");
        let seen = b.project(&project.id).await.expect("read").expect("exists");
        assert_eq!(seen.signing_secret, secret);
        b.delete_project(&project.id).await.expect("delete");
        assert_eq!(a.api_key(&key.id).await.expect("read"), None);
    }

    #[tokio::test]
    async fn redis_store_concurrent_creators_get_one_winner() {
        let server = RedisServer::start();
        let a = store(&server).await;
        let b = RedisStore::new(connect(&server.url()).await, a.prefix());
        for i in 0..20 {
            let (mut p1, _) = sample(&format!("race-{i}"));
            p1.name = "first".into();
            let mut p2 = p1.clone();
            p2.name = "second".into();
            let (r1, r2) = tokio::join!(a.create_project(&p1), b.create_project(&p2));
            let winner = match (r1, r2) {
                (Ok(()), Err(StoreError::Conflict)) => p1,
                (Err(StoreError::Conflict), Ok(())) => p2,
                other => panic!("expected exactly one winner, got {other:?}"),
            };
            assert_eq!(
                a.project(&winner.id).await.expect("read"),
                Some(winner.clone())
            );
            let listed = b.projects().await.expect("list");
            assert_eq!(listed.iter().filter(|p| p.id == winner.id).count(), 1);
        }
    }

    /// Keys created while another instance deletes the project either fail with
    /// `ProjectNotFound` or are reported deleted with it: none survives its project.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_no_key_survives_a_concurrent_project_delete() {
        let server = RedisServer::start();
        let a = store(&server).await;
        let b = RedisStore::new(connect(&server.url()).await, a.prefix());
        for round in 0..10 {
            let (project, _) = sample(&format!("doomed-{round}"));
            a.create_project(&project).await.expect("create");
            let keys: Vec<ApiKeyRecord> = (0..20)
                .map(|i| key_for(&project, &format!("{round:08x}{i:08x}")))
                .collect();
            let creating = async {
                let mut created = Vec::new();
                for k in &keys {
                    match a.create_api_key(k).await {
                        Ok(()) => created.push(k.id.clone()),
                        Err(StoreError::ProjectNotFound) => {}
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
                created
            };
            let deleting = async {
                // Lands at a different point of the creations each round.
                tokio::time::sleep(Duration::from_micros(200 * round)).await;
                b.delete_project(&project.id).await.expect("delete")
            };
            let (created, deleted) = tokio::join!(creating, deleting);
            let mut deleted: Vec<_> = deleted
                .expect("project existed")
                .into_iter()
                .map(|k| k.id)
                .collect();
            deleted.sort();
            assert_eq!(deleted, created, "round {round}");
            for k in &keys {
                assert_eq!(a.api_key(&k.id).await.expect("read"), None);
            }
            assert_eq!(keys_of(&a.client, a.prefix()).await, Vec::<String>::new());
        }
    }

    /// After a Redis restart or `SCRIPT FLUSH`, scripts are loaded again transparently.
    #[tokio::test]
    async fn redis_store_reloads_scripts_redis_forgot() {
        let server = RedisServer::start();
        let store = store(&server).await;
        let (p1, _) = sample("before-flush");
        let (p2, _) = sample("after-flush");
        store.create_project(&p1).await.expect("create");
        store.client.script_flush(false).await.expect("flush");
        store.create_project(&p2).await.expect("create after flush");
        assert!(matches!(
            store.create_project(&p1).await,
            Err(StoreError::Conflict)
        ));
    }

    #[tokio::test]
    async fn redis_store_reports_unreadable_data_as_backend() {
        let server = RedisServer::start();
        let store = store(&server).await;
        let (project, key) = sample("garbage");
        let _: () = store
            .client
            .set(
                store.project_key(&project.id),
                "not json",
                None,
                None,
                false,
            )
            .await
            .expect("set");
        assert!(matches!(
            store.project(&project.id).await,
            Err(StoreError::Backend(_))
        ));
        // A record of the wrong type under a key id.
        let _: () = store
            .client
            .set(
                store.api_key_key(&key.id),
                encode(&project).expect("json"),
                None,
                None,
                false,
            )
            .await
            .expect("set");
        assert!(matches!(
            store.api_key(&key.id).await,
            Err(StoreError::Backend(_))
        ));
    }

    #[tokio::test]
    async fn redis_store_is_unavailable_when_redis_is_down() {
        let mut server = RedisServer::start();
        let store = store(&server).await;
        let (project, key) = sample("down");
        store.create_project(&project).await.expect("create");
        server.stop();

        let started = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), store.project(&project.id))
            .await
            .expect("answers within 5 s");
        assert!(
            matches!(read, Err(StoreError::Unavailable(_))),
            "got {read:?}"
        );
        let write = tokio::time::timeout(Duration::from_secs(5), store.create_api_key(&key))
            .await
            .expect("answers within 5 s");
        assert!(
            matches!(write, Err(StoreError::Unavailable(_))),
            "got {write:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
