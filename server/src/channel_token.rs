//! Channel tokens (private and presence channels): signing (`POST /v1/publishers/sign`) and the checks a `listen`
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
//! 7. lifetime: `exp - iat` and `exp - now` at most the server's cap (`--max-token-ttl-secs`),
//!    `iat` not in the future beyond the leeway (`token_lifetime_exceeded`);
//! 8. `channelName` claim equals the requested channel (`token_channel_mismatch`);
//! 9. `projectId` claim equals the socket's project (`token_project_mismatch`);
//! 10. the signing API key still exists (`token_key_revoked`), has not expired
//!     (`token_key_expired`) and still has `sign_token` (`token_key_scope`);
//! 11. a presence channel's token names the member in `sub` (`presence_user_missing`).
//!
//! The algorithm is checked before the signature: the header is read only to refuse anything
//! but HS256 (`none`, RS/HS confusion); the algorithm used to verify is always Herald's own,
//! never the token's. The unverified `projectId` claim only selects which project's secret
//! verifies the signature (like a `kid`); a token that verifies for project A but is presented
//! on a socket of project B is then refused as `token_project_mismatch`, which tells the
//! integrator exactly what went wrong. jsonwebtoken verifies the signature and requires `exp` and
//! `aud`; Herald compares `aud` and the times itself so the order above is stable.
//!
//! A refusal's message is a fixed sentence per check: never the text of a base64, JSON or JWT
//! library error, and never a piece of the token.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use herald_protocol::claims::{CHANNEL_TOKEN_ALGORITHM, CHANNEL_TOKEN_ISSUER, ChannelTokenClaims};
use herald_protocol::limits::CHANNEL_TOKEN_LEEWAY_SECS;
use herald_protocol::presence::Member;
use herald_protocol::{ApiKeyId, ApiKeyScope, ChannelName, ErrorCode, ProjectId, Refusal};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use time::OffsetDateTime;

use crate::store::{ApiKeyRecord, ProjectRecord, SecretId, SigningSecret, Store, StoreError};

/// What a token that passed every check grants: the channel, held through the key that signed
/// it (its revocation removes the socket) and the project secret that verified it (its
/// rotation removes the socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The API key that signed the token.
    pub api_key_id: ApiKeyId,
    /// The project secret that verified it.
    pub secret: SecretId,
    /// The token's `exp` (Unix seconds): a recovered session does not outlive it.
    pub token_exp: u64,
    /// Presence channels: the member the token names (claims `sub` and `info`); `None` on
    /// private channels.
    pub member: Option<Member>,
}

/// Signs and verifies channel tokens with the server's audience, lifetime and lifetime cap.
#[derive(Debug, Clone)]
pub struct ChannelTokens {
    audience: String,
    ttl: Duration,
    max_ttl: Duration,
}

/// Why signing failed (never a client mistake).
#[derive(Debug, thiserror::Error)]
#[error("signing a channel token failed: {0}")]
pub struct SignError(String);

/// The one sentence a client sees for each way a token can be malformed. Messages are fixed:
/// never the `Display` of a base64, JSON or JWT library error, never a piece of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    Shape,
    Encoding,
    Claims,
}

impl Malformed {
    fn refusal(self) -> Refusal {
        Refusal::new(
            ErrorCode::TokenMalformed,
            match self {
                Malformed::Shape => {
                    "authToken is not a channel token: expected three dot-separated base64url parts"
                }
                Malformed::Encoding => {
                    "authToken is not a channel token: its header or claims are not base64url-encoded JSON objects"
                }
                Malformed::Claims => {
                    "authToken is not a channel token: its header or claims lack a required field (aud, iat, exp, channelName, projectId, apiKeyId) or have one of the wrong type"
                }
            },
        )
    }
}

/// Steps 2 and 3 of the checks, on untrusted input: the token's shape and algorithm. Returns
/// the project the (still unverified) token names, whose secret must verify it.
///
/// A plain function of the token text, total on any input (it never panics), so a fuzz target
/// can call it directly.
pub fn peek_project(token: &str) -> Result<ProjectId, Refusal> {
    peek_claims(token)?
        .get("projectId")
        .and_then(|p| p.as_str())
        .and_then(|p| ProjectId::parse(p).ok())
        .ok_or_else(|| Malformed::Claims.refusal())
}

/// [`peek_project`]'s checks, then the channel the (still unverified) token names: where a
/// token is all a client gives (an SSE stream's `token` parameters), the channel comes from it
/// and [`ChannelTokens::authorize_listen`] then verifies the token for that channel.
pub fn peek_channel(token: &str) -> Result<ChannelName, Refusal> {
    peek_claims(token)?
        .get("channelName")
        .and_then(|c| c.as_str())
        .and_then(|c| ChannelName::parse(c).ok())
        .ok_or_else(|| Malformed::Claims.refusal())
}

/// The claims of a token of the right shape and algorithm, unverified.
fn peek_claims(token: &str) -> Result<serde_json::Map<String, serde_json::Value>, Refusal> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed::Shape.refusal());
    };
    let decode = |part: &str| -> Result<serde_json::Map<String, serde_json::Value>, Refusal> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| Malformed::Encoding.refusal())?;
        serde_json::from_slice(&bytes).map_err(|_| Malformed::Encoding.refusal())
    };
    let header = decode(header)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some(CHANNEL_TOKEN_ALGORITHM) {
        return Err(Refusal::new(
            ErrorCode::TokenBadAlgorithm,
            "token algorithm is not accepted: channel tokens are HS256",
        ));
    }
    decode(claims)
}

impl ChannelTokens {
    /// Tokens with `aud = audience` living `ttl`; tokens living longer than `max_ttl` are
    /// refused. Fails when `ttl` exceeds `max_ttl` (the server would sign tokens it refuses).
    pub fn new(
        audience: impl Into<String>,
        ttl: Duration,
        max_ttl: Duration,
    ) -> Result<Self, TtlOverCap> {
        if ttl > max_ttl {
            return Err(TtlOverCap { ttl, max_ttl });
        }
        Ok(Self {
            audience: audience.into(),
            ttl,
            max_ttl,
        })
    }

    /// The longest lifetime a token may have.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Signs a token for `channel` of `project`, on behalf of `key`; `member` (presence
    /// channels) becomes the claims `sub` and `info`.
    pub fn sign(
        &self,
        project: &ProjectRecord,
        key: &ApiKeyId,
        channel: &ChannelName,
        member: Option<&Member>,
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
            sub: member.map(|m| m.user_id.clone()),
            info: member.and_then(|m| m.info.clone()),
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

    /// Steps 2 and 3: see [`peek_project`].
    pub fn peek_project(&self, token: &str) -> Result<ProjectId, Refusal> {
        peek_project(token)
    }

    /// Steps 4 to 7: signature with `secret`, audience, time, lifetime cap. Call
    /// [`peek_project`] first.
    pub fn verify(
        &self,
        token: &str,
        secret: &SigningSecret,
        now: OffsetDateTime,
    ) -> Result<ChannelTokenClaims, Refusal> {
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
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => Refusal::new(
                    ErrorCode::TokenBadSignature,
                    "token signature does not verify with the project's current secret",
                ),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Refusal::new(
                    ErrorCode::TokenBadAlgorithm,
                    "token algorithm is not accepted: channel tokens are HS256",
                ),
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    Malformed::Encoding.refusal()
                }
                _ => Malformed::Claims.refusal(),
            }
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
        let cap = self.max_ttl.as_secs();
        if claims.iat > now.saturating_add(CHANNEL_TOKEN_LEEWAY_SECS)
            || claims.exp.saturating_sub(claims.iat) > cap
            || claims.exp
                > now
                    .saturating_add(cap)
                    .saturating_add(CHANNEL_TOKEN_LEEWAY_SECS)
        {
            return Err(Refusal::new(
                ErrorCode::TokenLifetimeExceeded,
                format!(
                    "token lifetime is over this server's cap of {cap} s (or it was issued in the future)"
                ),
            ));
        }
        Ok(claims)
    }

    /// Every step for a `listen` on `channel` by a socket of `project`. Returns the key that
    /// signed (for connection tracking) and the secret that verified.
    pub async fn authorize_listen(
        &self,
        store: &dyn Store,
        project: &ProjectId,
        channel: &ChannelName,
        token: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Grant, Refusal> {
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            Refusal::new(
                ErrorCode::TokenMissing,
                format!("channel {channel} is private: listen needs an authToken"),
            )
        })?;
        let claimed_project = peek_project(token)?;
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
        let member = if channel.is_presence() {
            let user_id = claims.sub.ok_or_else(|| {
                Refusal::new(
                    ErrorCode::PresenceUserMissing,
                    format!(
                        "channel {channel} is a presence channel: its token must name the member (sign it with userId)"
                    ),
                )
            })?;
            Some(Member {
                user_id,
                info: claims.info,
            })
        } else {
            None
        };
        Ok(Grant {
            api_key_id: claims.api_key_id,
            secret: record.signing_secret.id(),
            token_exp: claims.exp,
            member,
        })
    }
}

/// The configured signing lifetime is longer than the lifetime cap.
#[derive(Debug, thiserror::Error)]
#[error(
    "--channel-token-ttl-secs ({}) exceeds --max-token-ttl-secs ({}): Herald would sign tokens it refuses; lower the first or raise the second",
    ttl.as_secs(),
    max_ttl.as_secs()
)]
pub struct TtlOverCap {
    /// The signing lifetime.
    pub ttl: Duration,
    /// The cap.
    pub max_ttl: Duration,
}

/// Step 10: the signing key must exist, be unexpired and keep `sign_token`.
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

    /// An embedded store holding project `id` and a key of it, and a token service (10 min
    /// lifetime, 1 h cap). Keep the directory alive as long as the store.
    async fn setup(
        id: &str,
    ) -> (
        tempfile::TempDir,
        EmbeddedStore,
        ProjectRecord,
        ApiKeyRecord,
        ChannelTokens,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let (project, key) = sample(id);
        store.create_project(&project).await.expect("project");
        store.create_api_key(&key).await.expect("key");
        let tokens = ChannelTokens::new(
            "herald-channel",
            Duration::from_secs(600),
            Duration::from_secs(3600),
        )
        .expect("ttl under the cap");
        (dir, store, project, key, tokens)
    }

    #[tokio::test]
    async fn presence_tokens_carry_the_member_and_refuse_without_one() {
        let (_dir, store, project, key, tokens) = setup("pres").await;
        let now = OffsetDateTime::now_utc();
        let channel = ChannelName::parse("presence-room").expect("valid");
        let member = Member {
            user_id: herald_protocol::presence::UserId::parse("u-42").expect("valid"),
            info: Some(
                herald_protocol::presence::MemberInfo::from_json(r#"{"name":"Ada"}"#)
                    .expect("object"),
            ),
        };

        let (with_member, _) = tokens
            .sign(&project, &key.id, &channel, Some(&member), now)
            .expect("sign");
        let grant = tokens
            .authorize_listen(&store, &project.id, &channel, Some(&with_member), now)
            .await
            .expect("a presence token with sub opens the channel");
        assert_eq!(grant.member, Some(member.clone()));

        let (without, _) = tokens
            .sign(&project, &key.id, &channel, None, now)
            .expect("sign");
        let refused = tokens
            .authorize_listen(&store, &project.id, &channel, Some(&without), now)
            .await
            .expect_err("a presence token without sub is refused");
        assert_eq!(refused.code, ErrorCode::PresenceUserMissing);

        // A private channel's grant never names a member, even if the token had one.
        let private = ChannelName::parse("private-room").expect("valid");
        let (token, _) = tokens
            .sign(&project, &key.id, &private, Some(&member), now)
            .expect("sign");
        let grant = tokens
            .authorize_listen(&store, &project.id, &private, Some(&token), now)
            .await
            .expect("private token");
        assert_eq!(grant.member, None);
    }

    #[tokio::test]
    async fn every_refusal_has_its_code_in_order() {
        let (_dir, store, project, key, tokens) = setup("tok").await;
        let now = OffsetDateTime::now_utc();
        let channel = ChannelName::parse("private-u1").expect("valid");
        let other_project = ProjectId::parse("p-other").expect("valid");
        let code = |r: Result<ApiKeyId, Refusal>| r.err().map(|e| e.code);

        let (good, _) = tokens
            .sign(&project, &key.id, &channel, None, now)
            .expect("sign");
        let check = |t: Option<String>, ch: &ChannelName, p: &ProjectId, at: OffsetDateTime| {
            let tokens = tokens.clone();
            let (ch, p) = (ch.clone(), p.clone());
            let store = &store;
            async move {
                tokens
                    .authorize_listen(store, &p, &ch, t.as_deref(), at)
                    .await
                    .map(|g| g.api_key_id)
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
        let (foreign, _) = tokens.sign(&p2, &k2.id, &channel, None, now).expect("sign");
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
        let grant = tokens
            .authorize_listen(&store, &project.id, &channel, Some(&good), now)
            .await
            .expect("valid");
        assert_eq!(grant.secret, project.signing_secret.id());
        assert_ne!(grant.secret, SigningSecret::generate().id());
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

    /// Every class of bad token gets its code and a fixed sentence: never a parser's error
    /// text (`Json(Error(..`, `Base64(InvalidByte(..`, `missing field`) nor the token itself.
    #[tokio::test]
    async fn every_bad_token_class_has_a_clean_message() {
        let (_dir, store, project, key, tokens) = setup("msg").await;
        let now = OffsetDateTime::now_utc();
        let t = unix(now);
        let channel = ChannelName::parse("private-u1").expect("valid");
        let secret = project.signing_secret.0;
        let hs = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let claims = serde_json::json!({
            "aud": "herald-channel", "iss": "herald", "iat": t, "exp": t + 60,
            "channelName": "private-u1", "projectId": project.id, "apiKeyId": key.id,
        });
        let with = |changes: &[(&str, Option<serde_json::Value>)]| {
            let mut c = claims.clone();
            for (field, value) in changes {
                match value {
                    Some(v) => c[*field] = v.clone(),
                    None => {
                        c.as_object_mut().map(|o| o.remove(*field));
                    }
                }
            }
            forge(hs.clone(), c, &secret)
        };
        let good_claims = b64(&claims);
        let cases: Vec<(&str, String, ErrorCode)> = vec![
            ("one segment", "garbage".into(), ErrorCode::TokenMalformed),
            ("two segments", "a.b".into(), ErrorCode::TokenMalformed),
            ("four segments", "a.b.c.d".into(), ErrorCode::TokenMalformed),
            (
                "header not base64",
                format!("!!!*.{good_claims}.sig"),
                ErrorCode::TokenMalformed,
            ),
            (
                "claims not base64",
                format!("{}.%%%é.sig", b64(&hs)),
                ErrorCode::TokenMalformed,
            ),
            (
                "signature not base64",
                format!("{}.{good_claims}.***", b64(&hs)),
                ErrorCode::TokenMalformed,
            ),
            (
                "header not JSON",
                format!("{}.{good_claims}.sig", URL_SAFE_NO_PAD.encode("{not json")),
                ErrorCode::TokenMalformed,
            ),
            (
                "claims an array",
                forge(hs.clone(), serde_json::json!([1, 2, 3]), &secret),
                ErrorCode::TokenMalformed,
            ),
            (
                "claims a string",
                forge(hs.clone(), serde_json::json!("claims"), &secret),
                ErrorCode::TokenMalformed,
            ),
            (
                "projectId of the wrong type",
                with(&[("projectId", Some(42.into()))]),
                ErrorCode::TokenMalformed,
            ),
            (
                "apiKeyId missing",
                with(&[("apiKeyId", None)]),
                ErrorCode::TokenMalformed,
            ),
            (
                "iat missing",
                with(&[("iat", None)]),
                ErrorCode::TokenMalformed,
            ),
            (
                "exp a string",
                with(&[("exp", Some("soon".into()))]),
                ErrorCode::TokenMalformed,
            ),
            (
                "invalid channelName claim",
                with(&[("channelName", Some("private-ÿ\"".into()))]),
                ErrorCode::TokenMalformed,
            ),
            (
                "alg none",
                format!(
                    "{}.{good_claims}.",
                    b64(&serde_json::json!({"alg": "none"}))
                ),
                ErrorCode::TokenBadAlgorithm,
            ),
            (
                "alg RS256",
                forge(serde_json::json!({"alg": "RS256"}), claims.clone(), &secret),
                ErrorCode::TokenBadAlgorithm,
            ),
            (
                "alg not a string",
                forge(
                    serde_json::json!({"alg": ["HS256"]}),
                    claims.clone(),
                    &secret,
                ),
                ErrorCode::TokenBadAlgorithm,
            ),
            (
                "wrong secret",
                forge(hs.clone(), claims.clone(), b"another secret"),
                ErrorCode::TokenBadSignature,
            ),
            (
                "wrong audience",
                with(&[("aud", Some("elsewhere".into()))]),
                ErrorCode::TokenWrongAudience,
            ),
            (
                "expired",
                with(&[("exp", Some((t - 60).into()))]),
                ErrorCode::TokenExpired,
            ),
            (
                "exp - iat over the cap",
                with(&[
                    ("iat", Some((t - 3000).into())),
                    ("exp", Some((t + 601).into())),
                ]),
                ErrorCode::TokenLifetimeExceeded,
            ),
            (
                "exp far in the future",
                with(&[("exp", Some((t + 10 * 365 * 86_400).into()))]),
                ErrorCode::TokenLifetimeExceeded,
            ),
            (
                "iat in the future, lifetime itself short",
                with(&[
                    ("iat", Some((t + 3000).into())),
                    ("exp", Some((t + 3060).into())),
                ]),
                ErrorCode::TokenLifetimeExceeded,
            ),
            (
                "exp at u64::MAX",
                with(&[("exp", Some(u64::MAX.into()))]),
                ErrorCode::TokenLifetimeExceeded,
            ),
        ];
        for (what, token, expected) in cases {
            let refusal = tokens
                .authorize_listen(&store, &project.id, &channel, Some(&token), now)
                .await
                .expect_err(what);
            assert_eq!(refusal.code, expected, "{what}: {}", refusal.message);
            let message = &refusal.message;
            for leak in [
                "Error(",
                "InvalidByte",
                "missing field",
                "invalid type",
                "Json",
                "Base64",
            ] {
                assert!(
                    !message.contains(leak),
                    "{what}: {message:?} contains {leak:?}"
                );
            }
            assert!(!message.contains(&token), "{what}: message holds the token");
            for part in token.split('.').filter(|p| p.len() > 3) {
                assert!(!message.contains(part), "{what}: message holds {part:?}");
            }
        }
        // At the cap exactly (and within the leeway of now) the token passes.
        let at_cap = with(&[
            ("iat", Some((t - 100).into())),
            ("exp", Some((t + 3500).into())),
        ]);
        assert_eq!(
            tokens
                .authorize_listen(&store, &project.id, &channel, Some(&at_cap), now)
                .await
                .map(|g| g.api_key_id),
            Ok(key.id.clone())
        );
        let clock_skew = with(&[
            ("iat", Some((t + 3).into())),
            ("exp", Some((t + 63).into())),
        ]);
        assert!(
            tokens
                .authorize_listen(&store, &project.id, &channel, Some(&clock_skew), now)
                .await
                .is_ok()
        );
    }

    #[test]
    fn signing_lifetime_over_the_cap_is_refused() {
        let err = ChannelTokens::new("a", Duration::from_secs(3601), Duration::from_secs(3600))
            .expect_err("over the cap");
        assert!(err.to_string().contains("--max-token-ttl-secs"), "{err}");
        assert!(
            ChannelTokens::new("a", Duration::from_secs(3600), Duration::from_secs(3600)).is_ok()
        );
    }

    #[test]
    fn peek_project_never_panics_on_odd_input() {
        for input in [
            "",
            ".",
            "..",
            "...",
            "é.é.é",
            "\u{0}.\u{0}.\u{0}",
            "eyJ.eyJ.x",
        ] {
            assert_eq!(
                peek_project(input).map_err(|r| r.code),
                Err(ErrorCode::TokenMalformed),
                "{input:?}"
            );
        }
    }
}
