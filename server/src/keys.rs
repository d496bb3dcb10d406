//! API key and admin token secrets: generation, hashing, constant-time checks.
//!
//! API keys are `hk_{id}_{secret}` ([`ApiKeyToken`]); only SHA-256 of the 256-bit random secret
//! is stored. A fast hash is right here: the secret is random, so there is nothing to
//! brute-force, and the publish path checks a key on every call.

use std::path::{Path, PathBuf};

use herald_protocol::{ApiKeyId, ApiKeyToken};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{ApiKeyRecord, SecretHash};

/// A fresh key: the full token (to show once) and the hash to store.
pub fn generate_api_key() -> (ApiKeyToken, SecretHash) {
    let id = ApiKeyId::parse(&hex::encode(rand::random::<[u8; 8]>()))
        .unwrap_or_else(|_| unreachable!("16 lowercase hex chars are a valid key id"));
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let hash = hash_secret(&secret);
    let token = ApiKeyToken::new(id, secret)
        .unwrap_or_else(|| unreachable!("64 lowercase hex chars are a valid secret"));
    (token, hash)
}

/// SHA-256 of a key secret.
pub fn hash_secret(secret: &str) -> SecretHash {
    SecretHash(Sha256::digest(secret.as_bytes()).into())
}

/// Whether `token`'s secret matches the stored hash, compared in constant time.
pub fn secret_matches(record: &ApiKeyRecord, token: &ApiKeyToken) -> bool {
    hash_secret(token.secret())
        .0
        .ct_eq(&record.secret_hash.0)
        .into()
}

/// The operator's admin token. Compared by hashing both sides, so neither the content nor the
/// length of the real token leaks through timing. `Debug` shows nothing.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// File in the data dir that holds a generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Where the admin token came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// `--admin-token` / `HERALD_ADMIN_TOKEN`.
    Configured,
    /// Read from an earlier generated file.
    File(PathBuf),
    /// Generated now and written to this file.
    Generated(PathBuf),
}

impl AdminToken {
    /// Wraps a token string.
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// The configured token, or the one in `data_dir/admin-token`, generating that file
    /// (mode 0600) on first start.
    pub fn load_or_generate(
        configured: Option<&str>,
        data_dir: &Path,
    ) -> std::io::Result<(Self, AdminTokenSource)> {
        if let Some(t) = configured.filter(|t| !t.is_empty()) {
            return Ok((Self::new(t), AdminTokenSource::Configured));
        }
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => {
                return Ok((Self::new(t.trim()), AdminTokenSource::File(path)));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(data_dir)?;
        let token = format!("hadm_{}", hex::encode(rand::random::<[u8; 32]>()));
        write_private_file(&path, &token)?;
        Ok((Self::new(&token), AdminTokenSource::Generated(path)))
    }

    /// Whether `candidate` is the admin token (constant time).
    pub fn matches(&self, candidate: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        h.ct_eq(&self.0).into()
    }
}

/// Writes `contents` to a new file readable only by its owner.
fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_verify_and_differ() {
        let (t1, h1) = generate_api_key();
        let (t2, _) = generate_api_key();
        assert_ne!(t1.expose(), t2.expose());
        let parsed = ApiKeyToken::parse(&t1.expose()).expect("well-formed");
        let record = crate::store::ApiKeyRecord {
            id: parsed.id().clone(),
            project_id: herald_protocol::ProjectId::parse("p").expect("valid"),
            name: "k".into(),
            scopes: vec![],
            created_at: time::OffsetDateTime::now_utc(),
            expires_at: None,
            secret_hash: h1,
        };
        assert!(secret_matches(&record, &parsed));
        let forged = ApiKeyToken::parse(&format!("hk_{}_{}", parsed.id(), "0".repeat(64)))
            .expect("well-formed");
        assert!(!secret_matches(&record, &forged));
    }

    #[test]
    fn admin_token_generated_once_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t1, s1) = AdminToken::load_or_generate(None, dir.path()).expect("generate");
        assert!(matches!(s1, AdminTokenSource::Generated(_)));
        let (t2, s2) = AdminToken::load_or_generate(None, dir.path()).expect("load");
        assert!(matches!(s2, AdminTokenSource::File(_)));
        let written = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).expect("read");
        assert!(t1.matches(written.trim()) && t2.matches(written.trim()));
        assert!(!t1.matches("wrong"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (t3, s3) = AdminToken::load_or_generate(Some("given"), dir.path()).expect("given");
        assert_eq!(s3, AdminTokenSource::Configured);
        assert!(t3.matches("given"));
    }
}
