//! Durable state: projects (with their signing secrets) and API keys.
//!
//! The [`Store`] trait is the narrow seam between Herald and its storage. Two implementations
//! exist: [`embedded`] (redb file under the data dir, the default) and the Redis one (Redis
//! mode). Both run through the same contract tests in [`contract`].
//!
//! Secrets are held as [`SecretHash`] (API keys: only a SHA-256 of the secret) or
//! [`SigningSecret`] (project HMAC keys, which must be usable to sign and so cannot be hashed;
//! never returned by any API and never logged).

pub mod embedded;
pub mod redis;

#[cfg(test)]
pub(crate) mod contract;

use async_trait::async_trait;
use herald_protocol::api::{ApiKeyInfo, Project};
use herald_protocol::{ApiKeyId, ApiKeyScope, HistorySettings, ProjectId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A project as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    /// Id.
    pub id: ProjectId,
    /// Display name.
    pub name: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The HMAC key that signs this project's channel tokens.
    pub signing_secret: SigningSecret,
    /// Channel history retention (records written before history existed get the defaults).
    #[serde(default)]
    pub history: HistorySettings,
}

impl ProjectRecord {
    /// The public view (no secret).
    pub fn to_api(&self) -> Project {
        Project {
            id: self.id.clone(),
            name: self.name.clone(),
            created_at: self.created_at,
            history: self.history,
        }
    }
}

/// An API key as stored: the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (embedded in the key string).
    pub id: ApiKeyId,
    /// The project it publishes into.
    pub project_id: ProjectId,
    /// Display name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<ApiKeyScope>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// SHA-256 of the secret part.
    pub secret_hash: SecretHash,
}

impl ApiKeyRecord {
    /// The public view (no hash).
    pub fn to_api(&self) -> ApiKeyInfo {
        ApiKeyInfo {
            id: self.id.clone(),
            project_id: self.project_id.clone(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }

    /// Whether the key has passed its expiry at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// Whether the key carries `scope`.
    pub fn has_scope(&self, scope: ApiKeyScope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// 32 bytes shown as hex in storage; `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretHash(#[serde(with = "hex_bytes")] pub [u8; 32]);

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(***)")
    }
}

/// A project's 256-bit HMAC signing key; `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SigningSecret(#[serde(with = "hex_bytes")] pub [u8; 32]);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

impl SigningSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// Which secret this is, without revealing it: a socket remembers the id of the secret
    /// that verified each of its private channels, so rotating the secret finds them.
    pub fn id(&self) -> SecretId {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(b"herald signing secret id\0")
            .chain_update(self.0)
            .finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        SecretId(u64::from_be_bytes(id))
    }
}

/// A 64-bit fingerprint of a [`SigningSecret`] (a domain-separated SHA-256 prefix): tells
/// secrets apart, reveals nothing usable of them. Kept in memory and in recovery session
/// records ([`crate::csr`]), never logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretId(u64);

impl SecretId {
    /// The fingerprint as a number (a recovery session record keeps it).
    pub fn to_bits(self) -> u64 {
        self.0
    }

    /// A fingerprint read back from a record.
    pub fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record with this id exists already.
    #[error("already exists")]
    Conflict,
    /// The project the operation needs does not exist.
    #[error("project not found")]
    ProjectNotFound,
    /// The backend is unreachable (Redis down); the caller may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend failed or holds data Herald cannot read.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// Durable storage of projects and API keys.
///
/// Implementations must be safe to share between tasks and, in Redis mode, between instances:
/// a write is visible to every later read on any instance.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a project; [`StoreError::Conflict`] when the id is taken.
    async fn create_project(&self, project: &ProjectRecord) -> Result<(), StoreError>;

    /// Looks a project up.
    async fn project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError>;

    /// All projects, ordered by id.
    async fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError>;

    /// Deletes a project and all its keys; returns the deleted keys, or `None` when the
    /// project did not exist.
    async fn delete_project(&self, id: &ProjectId)
    -> Result<Option<Vec<ApiKeyRecord>>, StoreError>;

    /// Replaces a project's signing secret; [`StoreError::ProjectNotFound`] when it is gone.
    async fn rotate_secret(&self, id: &ProjectId, secret: SigningSecret) -> Result<(), StoreError>;

    /// Replaces a project's history retention; [`StoreError::ProjectNotFound`] when it is gone.
    async fn set_history(&self, id: &ProjectId, history: HistorySettings)
    -> Result<(), StoreError>;

    /// Inserts a key; [`StoreError::ProjectNotFound`] when its project does not exist,
    /// [`StoreError::Conflict`] when the id is taken.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// Replaces a stored key (same id and project); returns `false` when no such key exists
    /// in that project.
    async fn update_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError>;

    /// Looks a key up by id.
    async fn api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// A project's keys, ordered by creation time.
    async fn api_keys(&self, project: &ProjectId) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Every key of every project (the expiry scheduler scans it; O(keys)).
    async fn all_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Deletes a key of `project`; returns it, or `None` when no such key is in that project.
    async fn delete_api_key(
        &self,
        project: &ProjectId,
        id: &ApiKeyId,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;
}
