//! Private-channel tokens: signing (`POST /v1/publishers/sign`) and the checks a `listen`
//! must pass before a socket joins a private room.
//!
//! Checks run in a fixed order and each refusal has its own [`ErrorCode`]:
//!
//! 1. token present (`token_missing`);
//! 2. three base64url parts, JSON header and claims naming a valid project (`token_malformed`);
//! 3. header `alg` exactly `HS256` (`token_bad_algorithm`);
//! 4. HMAC-SHA256 signature with the current secret of the project the token names
//!    (`token_bad_signature`; also when that project does not exist);
//! 5. `aud` equals the configured audience (`token_wrong_audience`);
//! 6. `exp` / `nbf` with 5 s leeway (`token_expired`);
//! 7. `channelName` claim equals the requested channel (`token_channel_mismatch`);
//! 8. `projectId` claim equals the socket's project (`token_project_mismatch`);
//! 9. the signing API key still exists (`token_key_revoked`), has not expired
//!    (`token_key_expired`) and still has `sign_token` (`token_key_scope`).
//!
//! The algorithm is checked before the signature: the header is read only to refuse anything
//! but HS256 (`none`, RS/HS confusion); the algorithm used to verify is always Herald's own,
//! never the token's. The unverified `projectId` claim only selects which project's secret
//! verifies the signature (like a `kid`); a token that verifies for project A but is presented
//! on a socket of project B is then refused as `token_project_mismatch`, which tells the
//! integrator exactly what went wrong. jsonwebtoken verifies the signature and requires `exp` and
//! `aud`; Herald compares `aud` and the times itself so the order above is stable.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use herald_protocol::claims::{CHANNEL_TOKEN_ISSUER, ChannelTokenClaims};
use herald_protocol::limits::CHANNEL_TOKEN_LEEWAY_SECS;
use herald_protocol::{ApiKeyId, ApiKeyScope, ChannelName, ErrorCode, ProjectId, Refusal};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use time::OffsetDateTime;

use crate::store::{ApiKeyRecord, ProjectRecord, SigningSecret, Store, StoreError};

/// Signs and verifies channel tokens with the server's audience and lifetime.
#[derive(Debug, Clone)]
pub struct ChannelTokens {
    audience: String,
    ttl: Duration,
}

/// Why signing failed (never a client mistake).
#[derive(Debug, thiserror::Error)]
#[error("signing a channel token failed: {0}")]
pub struct SignError(String);

impl ChannelTokens {
    /// Tokens with `aud = audience` living `ttl`.
    pub fn new(audience: impl Into<String>, ttl: Duration) -> Self {
        Self {
            audience: audience.into(),
            ttl,
        }
    }

    /// Signs a token for `channel` of `project`, on behalf of `key`.
    pub fn sign(
        &self,
        project: &ProjectRecord,
        key: &ApiKeyId,
        channel: &ChannelName,
        now: OffsetDateTime,
    ) -> Result<(String, OffsetDateTime), SignError> {
        let iat = unix(now);
        let exp = iat.saturating_add(self.ttl.as_secs());
        let claims = ChannelTokenClaims {
            aud: self.audience.clone(),
            iss: CHANNEL_TOKEN_ISSUER.to_owned(),
            iat,
            nbf: None,
            exp,
            channel_name: channel.clone(),
            project_id: project.id.clone(),
            api_key_id: key.clone(),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&project.signing_secret.0),
        )
        .map_err(|e| SignError(e.to_string()))?;
        let expires_at = OffsetDateTime::from_unix_timestamp(exp as i64)
            .map_err(|e| SignError(e.to_string()))?;
        Ok((token, expires_at))
    }

    /// Steps 2 and 3: shape and algorithm. Returns the project the (still unverified) token
    /// names, whose secret must verify it.
    pub fn peek_project(&self, token: &str) -> Result<ProjectId, Refusal> {
        let malformed = |why: &str| {
            Refusal::new(
                ErrorCode::TokenMalformed,
                format!("authToken is not a valid channel token: {why}"),
            )
        };
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected three dot-separated parts"));
        };
        let decode = |part: &str, what: &str| -> Result<serde_json::Value, Refusal> {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| malformed(&format!("{what} is not base64url")))?;
            serde_json::from_slice(&bytes).map_err(|_| malformed(&format!("{what} is not JSON")))
        };
        let header = decode(header, "header")?;
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
        if alg != "HS256" {
            return Err(Refusal::new(
                ErrorCode::TokenBadAlgorithm,
                format!("token algorithm {alg:?} is not accepted; channel tokens are HS256"),
            ));
        }
        let claims = decode(claims, "claims")?;
        claims
            .get("projectId")
            .and_then(|p| p.as_str())
            .and_then(|p| ProjectId::parse(p).ok())
            .ok_or_else(|| malformed("no valid projectId claim"))
    }

    /// Steps 4 to 6: signature with `secret`, audience, time. Call [`Self::peek_project`]
    /// first.
    pub fn verify(
        &self,
        token: &str,
        secret: &SigningSecret,
        now: OffsetDateTime,
    ) -> Result<ChannelTokenClaims, Refusal> {
        let malformed = |why: &str| {
            Refusal::new(
                ErrorCode::TokenMalformed,
                format!("authToken is not a valid channel token: {why}"),
            )
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims = HashSet::from(["exp".to_owned(), "aud".to_owned()]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = CHANNEL_TOKEN_LEEWAY_SECS;
        let claims = jsonwebtoken::decode::<ChannelTokenClaims>(
            token,
            &DecodingKey::from_secret(&secret.0),
            &validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => Refusal::new(
                ErrorCode::TokenBadSignature,
                "token signature does not verify with the project's current secret",
            ),
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                Refusal::new(ErrorCode::TokenBadAlgorithm, "channel tokens are HS256")
            }
            other => malformed(&format!("{other:?}")),
        })?
        .claims;

        if claims.aud != self.audience {
            return Err(Refusal::new(
                ErrorCode::TokenWrongAudience,
                "token audience is not this server's channel audience",
            ));
        }
        let now = unix(now);
        if claims.exp.saturating_add(CHANNEL_TOKEN_LEEWAY_SECS) <= now {
            return Err(Refusal::new(ErrorCode::TokenExpired, "token has expired"));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(CHANNEL_TOKEN_LEEWAY_SECS))
        {
            return Err(Refusal::new(
                ErrorCode::TokenExpired,
                "token is not valid yet",
            ));
        }
        Ok(claims)
    }

    /// All nine steps for a `listen` on `channel` by a socket of `project`. Returns the id of
    /// the key that signed, for connection tracking.
    pub async fn authorize_listen(
        &self,
        store: &dyn Store,
        project: &ProjectId,
        channel: &ChannelName,
        token: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<ApiKeyId, Refusal> {
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            Refusal::new(
                ErrorCode::TokenMissing,
                format!("channel {channel} is private: listen needs an authToken"),
            )
        })?;
        let claimed_project = self.peek_project(token)?;
        let record = store
            .project(&claimed_project)
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::TokenBadSignature,
                    "token signature does not verify with any project's current secret",
                )
            })?;
        let claims = self.verify(token, &record.signing_secret, now)?;
        if &claims.channel_name != channel {
            return Err(Refusal::new(
                ErrorCode::TokenChannelMismatch,
                format!("token opens channel {}, not {channel}", claims.channel_name),
            ));
        }
        if &claims.project_id != project {
            return Err(Refusal::new(
                ErrorCode::TokenProjectMismatch,
                "token was signed for another project",
            ));
        }
        let key = store
            .api_key(&claims.api_key_id)
            .await
            .map_err(store_refusal)?
            .filter(|k| &k.project_id == project);
        check_signing_key(key.as_ref(), now)?;
        Ok(claims.api_key_id)
    }
}

/// Step 9: the signing key must exist, be unexpired and keep `sign_token`.
pub fn check_signing_key(key: Option<&ApiKeyRecord>, now: OffsetDateTime) -> Result<(), Refusal> {
    let key = key.ok_or_else(|| {
        Refusal::new(
            ErrorCode::TokenKeyRevoked,
            "the API key that signed this token has been deleted",
        )
    })?;
    if key.is_expired_at(now) {
        return Err(Refusal::new(
            ErrorCode::TokenKeyExpired,
            "the API key that signed this token has expired",
        ));
    }
    if !key.has_scope(ApiKeyScope::SignToken) {
        return Err(Refusal::new(
            ErrorCode::TokenKeyScope,
            "the API key that signed this token no longer has the sign_token scope",
        ));
    }
    Ok(())
}

/// Maps a storage failure to the refusal a client sees.
pub fn store_refusal(e: StoreError) -> Refusal {
    let kind = match e {
        StoreError::Unavailable(_) => "unavailable",
        _ => "backend",
    };
    metrics::counter!(crate::metrics::STORE_ERRORS, "kind" => kind).increment(1);
    match e {
        StoreError::Unavailable(_) => Refusal::new(
            ErrorCode::Unavailable,
            "storage is unavailable, try again shortly",
        ),
        _ => Refusal::new(ErrorCode::Internal, "internal storage error"),
    }
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::sample;
    use crate::store::embedded::EmbeddedStore;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// A token with any header and claims, HMAC-SHA256-signed with `secret`.
    fn forge(header: serde_json::Value, claims: serde_json::Value, secret: &[u8]) -> String {
        let signing_input = format!("{}.{}", b64(&header), b64(&claims));
        let mac = hmac_sha256(secret, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        // HMAC from its definition (RFC 2104), so the test does not reuse the code under test.
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&sha2::Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = sha2::Sha256::digest([ipad.as_slice(), msg].concat());
        sha2::Sha256::digest([opad.as_slice(), &inner[..]].concat()).to_vec()
    }

    #[tokio::test]
    async fn every_refusal_has_its_code_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let (project, key) = sample("tok");
        store.create_project(&project).await.expect("project");
        store.create_api_key(&key).await.expect("key");
        let tokens = ChannelTokens::new("herald-channel", Duration::from_secs(600));
        let now = OffsetDateTime::now_utc();
        let channel = ChannelName::parse("private-u1").expect("valid");
        let other_project = ProjectId::parse("p-other").expect("valid");
        let code = |r: Result<ApiKeyId, Refusal>| r.err().map(|e| e.code);

        let (good, _) = tokens.sign(&project, &key.id, &channel, now).expect("sign");
        let check = |t: Option<String>, ch: &ChannelName, p: &ProjectId, at: OffsetDateTime| {
            let tokens = tokens.clone();
            let (ch, p) = (ch.clone(), p.clone());
            let store = &store;
            async move {
                tokens
                    .authorize_listen(store, &p, &ch, t.as_deref(), at)
                    .await
            }
        };
        assert_eq!(
            check(Some(good.clone()), &channel, &project.id, now).await,
            Ok(key.id.clone())
        );
        assert_eq!(
            code(check(None, &channel, &project.id, now).await),
            Some(ErrorCode::TokenMissing)
        );
        assert_eq!(
            code(check(Some(String::new()), &channel, &project.id, now).await),
            Some(ErrorCode::TokenMissing)
        );
        assert_eq!(
            code(check(Some("garbage".into()), &channel, &project.id, now).await),
            Some(ErrorCode::TokenMalformed)
        );

        let claims = serde_json::json!({
            "aud": "herald-channel", "iss": "herald", "iat": unix(now), "exp": unix(now) + 60,
            "channelName": "private-u1", "projectId": project.id, "apiKeyId": key.id,
        });
        let hs = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let secret = project.signing_secret.0;
        // Our own forging matches jsonwebtoken's signature: the happy path passes.
        assert!(
            check(
                Some(forge(hs.clone(), claims.clone(), &secret)),
                &channel,
                &project.id,
                now
            )
            .await
            .is_ok()
        );
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none"})),
            b64(&claims)
        );
        assert_eq!(
            code(check(Some(none), &channel, &project.id, now).await),
            Some(ErrorCode::TokenBadAlgorithm)
        );
        let rs = forge(serde_json::json!({"alg": "RS256"}), claims.clone(), &secret);
        assert_eq!(
            code(check(Some(rs), &channel, &project.id, now).await),
            Some(ErrorCode::TokenBadAlgorithm)
        );
        let wrong_secret = forge(hs.clone(), claims.clone(), b"not the project's secret");
        assert_eq!(
            code(check(Some(wrong_secret), &channel, &project.id, now).await),
            Some(ErrorCode::TokenBadSignature)
        );

        let with = |field: &str, value: serde_json::Value| {
            let mut c = claims.clone();
            c[field] = value;
            forge(hs.clone(), c, &secret)
        };
        assert_eq!(
            code(
                check(
                    Some(with("aud", "other".into())),
                    &channel,
                    &project.id,
                    now
                )
                .await
            ),
            Some(ErrorCode::TokenWrongAudience)
        );
        // Wrong audience is reported before expiry.
        let mut both = claims.clone();
        both["aud"] = "other".into();
        both["exp"] = (unix(now) - 3600).into();
        assert_eq!(
            code(
                check(
                    Some(forge(hs.clone(), both, &secret)),
                    &channel,
                    &project.id,
                    now
                )
                .await
            ),
            Some(ErrorCode::TokenWrongAudience)
        );
        assert_eq!(
            code(
                check(
                    Some(with("exp", (unix(now) - 10).into())),
                    &channel,
                    &project.id,
                    now
                )
                .await
            ),
            Some(ErrorCode::TokenExpired)
        );
        // Within the 5 s leeway an expired token still passes.
        assert!(
            check(
                Some(with("exp", (unix(now) - 2).into())),
                &channel,
                &project.id,
                now
            )
            .await
            .is_ok()
        );
        assert_eq!(
            code(
                check(
                    Some(with("nbf", (unix(now) + 60).into())),
                    &channel,
                    &project.id,
                    now
                )
                .await
            ),
            Some(ErrorCode::TokenExpired)
        );
        let mut no_exp = claims.clone();
        no_exp.as_object_mut().map(|o| o.remove("exp"));
        assert_eq!(
            code(
                check(
                    Some(forge(hs.clone(), no_exp, &secret)),
                    &channel,
                    &project.id,
                    now
                )
                .await
            ),
            Some(ErrorCode::TokenMalformed)
        );

        let other_channel = ChannelName::parse("private-u2").expect("valid");
        assert_eq!(
            code(check(Some(good.clone()), &other_channel, &project.id, now).await),
            Some(ErrorCode::TokenChannelMismatch)
        );
        // A token naming a project that does not exist verifies with no secret.
        let ghost = with("projectId", other_project.as_str().into());
        assert_eq!(
            code(check(Some(ghost), &channel, &project.id, now).await),
            Some(ErrorCode::TokenBadSignature)
        );
        // A genuine token of another project, presented on this project's socket.
        let (p2, k2) = sample("tok2");
        store.create_project(&p2).await.expect("project 2");
        store.create_api_key(&k2).await.expect("key 2");
        let (foreign, _) = tokens.sign(&p2, &k2.id, &channel, now).expect("sign");
        assert_eq!(
            code(check(Some(foreign), &channel, &project.id, now).await),
            Some(ErrorCode::TokenProjectMismatch)
        );

        // Key state: scope removed, expired, deleted.
        let mut narrowed = key.clone();
        narrowed.scopes = vec![ApiKeyScope::PublishEvent];
        store.update_api_key(&narrowed).await.expect("update");
        assert_eq!(
            code(check(Some(good.clone()), &channel, &project.id, now).await),
            Some(ErrorCode::TokenKeyScope)
        );
        let mut expired = key.clone();
        expired.expires_at = Some(now - time::Duration::seconds(1));
        store.update_api_key(&expired).await.expect("update");
        assert_eq!(
            code(check(Some(good.clone()), &channel, &project.id, now).await),
            Some(ErrorCode::TokenKeyExpired)
        );
        store
            .delete_api_key(&project.id, &key.id)
            .await
            .expect("delete");
        assert_eq!(
            code(check(Some(good.clone()), &channel, &project.id, now).await),
            Some(ErrorCode::TokenKeyRevoked)
        );

        // Rotation: the old token stops verifying.
        store.create_api_key(&key).await.expect("recreate");
        assert!(
            check(Some(good.clone()), &channel, &project.id, now)
                .await
                .is_ok()
        );
        store
            .rotate_secret(&project.id, SigningSecret::generate())
            .await
            .expect("rotate");
        assert_eq!(
            code(check(Some(good), &channel, &project.id, now).await),
            Some(ErrorCode::TokenBadSignature)
        );
    }
}
