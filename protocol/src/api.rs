//! The publisher and admin REST API: request and response bodies, scopes and the API key
//! format.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/publishers/events/publish` | [`PublishRequest`] | 200 [`PublishResponse`] |
//! | `POST /v1/publishers/sign` | [`SignRequest`] | 200 [`SignResponse`] |
//! | `GET /v1/publishers/channels/{channelName}/history?since=&limit=` | | 200 [`HistoryPage`](crate::history::HistoryPage) |
//! | `POST /v1/admin/projects` | [`CreateProjectRequest`] | 201 [`Project`] |
//! | `GET /v1/admin/projects` | | 200 `[`[`Project`]`]` |
//! | `GET /v1/admin/projects/{id}` | | 200 [`Project`] |
//! | `PATCH /v1/admin/projects/{id}` | `{ "history": { "size"?, "ttlSecs"? } }` | 200 [`Project`] |
//! | `DELETE /v1/admin/projects/{id}` | | 204 |
//! | `POST /v1/admin/projects/{id}/rotate-secret` | | 204 |
//! | `POST /v1/admin/projects/{id}/api-keys` | [`CreateApiKeyRequest`] | 201 [`CreatedApiKey`] |
//! | `GET /v1/admin/projects/{id}/api-keys` | | 200 `[`[`ApiKeyInfo`]`]` |
//! | `PATCH /v1/admin/projects/{id}/api-keys/{keyId}` | `{ "name"?, "scopes"? }` | 200 [`ApiKeyInfo`] |
//! | `DELETE /v1/admin/projects/{id}/api-keys/{keyId}` | | 204 |
//! | `POST /v1/tasks/api-key-events` | [`ApiKeyEvent`] | 202 [`RevocationAccepted`] |
//!
//! Every error is an [`ErrorBody`](crate::ErrorBody).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::error::{ErrorCode, Refusal};
use crate::history::{ChannelOffset, Epoch, HistorySettings};
use crate::limits::MAX_DISPLAY_NAME_CHARS;
use crate::messages::channel_field;
use crate::names::{ChannelName, NameError, ProjectId};
use crate::presence::{MemberInfo, UserId};

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ApiKeyScope {
    /// `POST /v1/publishers/events/publish`.
    PublishEvent,
    /// `POST /v1/publishers/sign`: sign private-channel tokens.
    SignToken,
    /// `GET /v1/publishers/channels/{channelName}/history`: read a channel's retained events.
    ReadHistory,
    /// `GET /v1/publishers/channels/{channelName}/presence` (and `/presence/count`): read a
    /// presence channel's members.
    ReadPresence,
}

impl ApiKeyScope {
    /// Every scope: what a key created without `scopes` gets.
    pub const ALL: [ApiKeyScope; 4] = [
        ApiKeyScope::PublishEvent,
        ApiKeyScope::SignToken,
        ApiKeyScope::ReadHistory,
        ApiKeyScope::ReadPresence,
    ];
}

impl ApiKeyScope {
    /// The scope's wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyScope::PublishEvent => "publish_event",
            ApiKeyScope::SignToken => "sign_token",
            ApiKeyScope::ReadHistory => "read_history",
            ApiKeyScope::ReadPresence => "read_presence",
        }
    }
}

impl fmt::Display for ApiKeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ApiKeyScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "publish_event" => Ok(ApiKeyScope::PublishEvent),
            "sign_token" => Ok(ApiKeyScope::SignToken),
            "read_history" => Ok(ApiKeyScope::ReadHistory),
            "read_presence" => Ok(ApiKeyScope::ReadPresence),
            other => Err(format!(
                "unknown scope {other:?}; expected publish_event, sign_token, read_history or read_presence"
            )),
        }
    }
}

/// Length of an API key id in hex characters (64 random bits).
pub const API_KEY_ID_HEX_LEN: usize = 16;
/// Length of an API key secret in hex characters (256 random bits).
pub const API_KEY_SECRET_HEX_LEN: usize = 64;
/// Prefix of every API key string, so leaked keys are easy to grep for.
pub const API_KEY_PREFIX: &str = "hk_";

/// The public id of an API key: 16 lowercase hex characters. Safe to log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ApiKeyId(String);

impl ApiKeyId {
    /// Validates an API key id.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if is_lower_hex(s, API_KEY_ID_HEX_LEN) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::InvalidApiKeyId)
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ApiKeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A full API key as a publisher sends it: `hk_{id}_{secret}`, where `id` is an [`ApiKeyId`]
/// and `secret` is 64 lowercase hex characters. Only a hash of the secret is stored.
///
/// Its `Debug` output never shows the secret.
///
/// ```
/// use herald_protocol::ApiKeyToken;
/// let key = format!("hk_0123456789abcdef_{}", "ab".repeat(32));
/// let token = ApiKeyToken::parse(&key).expect("well-formed");
/// assert_eq!(token.id().as_str(), "0123456789abcdef");
/// assert!(!format!("{token:?}").contains("abab"));
/// assert!(ApiKeyToken::parse("hk_nope").is_none());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyToken {
    id: ApiKeyId,
    secret: String,
}

impl ApiKeyToken {
    /// Splits a key string into id and secret; `None` when it is not shaped like a key.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(API_KEY_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let id = ApiKeyId::parse(id).ok()?;
        is_lower_hex(secret, API_KEY_SECRET_HEX_LEN).then(|| Self {
            id,
            secret: secret.to_owned(),
        })
    }

    /// Assembles a key from its parts (the server does this once, at creation).
    pub fn new(id: ApiKeyId, secret_hex: String) -> Option<Self> {
        is_lower_hex(&secret_hex, API_KEY_SECRET_HEX_LEN).then_some(Self {
            id,
            secret: secret_hex,
        })
    }

    /// The key's public id.
    pub fn id(&self) -> &ApiKeyId {
        &self.id
    }

    /// The secret part. Handle with care: never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The full key string, `hk_{id}_{secret}`.
    pub fn expose(&self) -> String {
        format!("{API_KEY_PREFIX}{}_{}", self.id, self.secret)
    }
}

impl fmt::Debug for ApiKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyToken({API_KEY_PREFIX}{}_***)", self.id)
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(is_lower_hex_char)
}

/// The characters of an API key id and secret: lowercase hex digits.
pub fn is_lower_hex_char(c: char) -> bool {
    matches!(c, '0'..='9' | 'a'..='f')
}

/// A display name (of a project or an API key): what is left after trimming ASCII whitespace
/// from both ends must not be empty, and the name as sent is at most
/// [`MAX_DISPLAY_NAME_CHARS`] characters. Returns the trimmed name.
///
/// ```
/// use herald_protocol::api::parse_display_name;
/// assert_eq!(parse_display_name("  Billing ").map_err(|e| e.code), Ok("Billing".to_owned()));
/// assert!(parse_display_name(" \t\n").is_err());
/// assert!(parse_display_name(&"é".repeat(201)).is_err());
/// ```
pub fn parse_display_name(raw: &str) -> Result<String, Refusal> {
    let name = raw.trim_matches(|c: char| c.is_ascii_whitespace());
    if name.is_empty() {
        return Err(Refusal::new(
            ErrorCode::InvalidBody,
            "\"name\" must be a non-empty string",
        ));
    }
    if raw.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(Refusal::new(
            ErrorCode::InvalidBody,
            format!("\"name\" is longer than {MAX_DISPLAY_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Parses an RFC 3339 time as JSON Schema's `date-time` format reads RFC 3339 (section 5.6):
/// `T` or `t` between date and time (the `time` crate would take any byte there), and no leap
/// second (`:60`, which would mean 23:59:59.999… after parsing).
///
/// ```
/// use herald_protocol::api::parse_rfc3339;
/// assert!(parse_rfc3339("2030-01-02T03:04:05.678+01:00").is_some());
/// assert!(parse_rfc3339("2030-01-02t03:04:05z").is_some());
/// assert!(parse_rfc3339("2030-01-02 03:04:05Z").is_none());
/// assert!(parse_rfc3339("2030-02-30T03:04:05Z").is_none());
/// assert!(parse_rfc3339("2030-12-31T23:59:60Z").is_none());
/// ```
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    let b = s.as_bytes();
    if !matches!(b.get(10), Some(b'T' | b't')) || b.get(17..19) == Some(b"60".as_slice()) {
        return None;
    }
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The shape [`parse_rfc3339`] accepts, as a regular expression (JSON Schema `pattern`, next to
/// `format: date-time`, which validators may treat as a mere annotation). Days past the end of
/// their month (`02-30`) match it and are refused by the parser.
pub const RFC3339_PATTERN: &str = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// The rule of [`parse_display_name`] but the length, as a regular expression (JSON Schema
/// `pattern`, which matches anywhere in the string): at least one character that is not ASCII
/// whitespace (`char::is_ascii_whitespace`: space, tab, line feed, form feed, carriage return).
pub const DISPLAY_NAME_PATTERN: &str = "[^ \\t\\n\\f\\r]";

/// `POST /v1/publishers/events/publish`: `{ "channelName", "payload" }`.
///
/// The project is never in the body: it is the project of the API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishRequest<P = serde_json::Value> {
    /// Where to publish.
    pub channel_name: ChannelName,
    /// Any JSON; delivered to subscribers byte for byte.
    pub payload: P,
}

impl PublishRequest<Box<RawValue>> {
    /// Parses an untrusted request body, keeping the payload as the raw JSON the publisher
    /// sent. `max_payload` bounds the payload's JSON size in bytes.
    pub fn parse(body: &[u8], max_payload: usize) -> Result<Self, Refusal> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            channel_name: serde_json::Value,
            payload: Box<RawValue>,
        }
        let wire: Wire = serde_json::from_slice(body).map_err(|e| {
            Refusal::new(
                ErrorCode::InvalidBody,
                format!("expected {{ \"channelName\": string, \"payload\": any JSON }}: {e}"),
            )
        })?;
        let channel_name = channel_field(&serde_json::json!({ "channelName": wire.channel_name }))?;
        let payload = wire.payload;
        check_payload_size(payload.get().len(), max_payload)?;
        crate::depth::check_depth(
            crate::depth::nesting_depth(payload.get().as_bytes()),
            "payload",
        )?;
        crate::numbers::check_numbers(payload.get(), "payload")?;
        Ok(Self {
            channel_name,
            payload,
        })
    }
}

/// Refuses a payload larger than `max_payload` bytes.
pub fn check_payload_size(len: usize, max_payload: usize) -> Result<(), Refusal> {
    if len > max_payload {
        return Err(Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!("payload is {len} bytes; the limit is {max_payload}"),
        ));
    }
    Ok(())
}

/// Answer to a publish: the message id (a UUIDv7, also sent to subscribers as `event.id`),
/// and, when the project keeps history, the event's offset in its channel and their epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishResponse {
    /// The message id.
    pub id: String,
    /// The event's offset in its channel (absent when the project's history is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<ChannelOffset>,
    /// The epoch of `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// `POST /v1/publishers/sign`: `{ "channelName": "private-...", "userId"?, "userInfo"? }`, or
/// for a presence channel `{ "channelName": "presence-...", "userId", "userInfo"? }`. The
/// member (`userId`, `userInfo`) becomes the token's `sub` and `info` claims; a presence
/// channel needs it, a private channel's grant carries it without using it. The OpenAPI schema
/// (a `oneOf` of the two shapes) is written by hand in [`crate::openapi`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignRequest {
    /// The private or presence channel the token opens.
    pub channel_name: ChannelName,
    /// The member's user id; required on presence channels. Two sockets with the same user
    /// id are one member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// What the other members of a presence channel see of this one, a JSON object of at
    /// most 1 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_info: Option<MemberInfo>,
}

impl SignRequest {
    /// Parses an untrusted request body.
    pub fn parse(body: &[u8]) -> Result<Self, Refusal> {
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Refusal::new(ErrorCode::InvalidBody, format!("invalid JSON: {e}")))?;
        let user_id = match v.get("userId") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(id)) => Some(UserId::parse(id)?),
            Some(_) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidUserId,
                    "userId must be a string",
                ));
            }
        };
        let user_info = match v.get("userInfo") {
            None | Some(serde_json::Value::Null) => None,
            Some(info) => Some(MemberInfo::from_value(info)?),
        };
        let channel_name = channel_field(&v)?;
        if channel_name.is_presence() && user_id.is_none() {
            return Err(Refusal::new(
                ErrorCode::PresenceUserMissing,
                format!("{channel_name} is a presence channel: its token needs a userId"),
            ));
        }
        Ok(Self {
            channel_name,
            user_id,
            user_info,
        })
    }
}

/// Answer to a sign call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignResponse {
    /// The channel token (a JWT); hand it to the one client that may listen.
    pub token: String,
    /// When the token stops opening the channel.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /v1/admin/projects`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateProjectRequest {
    /// The id; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ProjectId>,
    /// Display name.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::display_name))]
    pub name: String,
}

/// A project (tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Project {
    /// The project id clients put in their handshake.
    pub id: ProjectId,
    /// Display name.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::display_name))]
    pub name: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// How much history each of its channels keeps.
    #[serde(default)]
    pub history: HistorySettings,
}

/// `POST /v1/admin/projects/{id}/api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApiKeyRequest {
    /// Display name (which service holds the key).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::display_name))]
    pub name: String,
    /// What the key may do; at least one. Absent: every scope ([`ApiKeyScope::ALL`]).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::scopes))]
    #[serde(default = "all_scopes")]
    pub scopes: Vec<ApiKeyScope>,
    /// When the key stops working (RFC 3339, in the future); never when absent.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::expiry))]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
}

fn all_scopes() -> Vec<ApiKeyScope> {
    ApiKeyScope::ALL.to_vec()
}

/// An API key as listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    /// Public id.
    pub id: ApiKeyId,
    /// The project the key publishes into.
    pub project_id: ProjectId,
    /// Display name.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::display_name))]
    pub name: String,
    /// What the key may do.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::scopes))]
    pub scopes: Vec<ApiKeyScope>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Expiry, if any.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Answer to creating a key: its info and, this once, the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedApiKey {
    /// Everything but the secret.
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    /// The full key (`hk_{id}_{secret}`). Shown once; Herald keeps only a hash.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::api_key))]
    pub key: String,
}

#[cfg(test)]
mod tests {

    #[test]
    fn publish_refuses_a_payload_number_no_client_could_decode() {
        let refusal =
            PublishRequest::parse(br#"{"channelName":"a","payload":{"x":[1e400]}}"#, 4096)
                .expect_err("1e400 is beyond f64");
        assert_eq!(refusal.code, ErrorCode::InvalidBody);
        let huge_exponent = PublishRequest::parse(
            br#"{"channelName":"a","payload":[1e308, 1e40000000000000000000]}"#,
            4096,
        );
        assert!(huge_exponent.is_err());
        let ok = PublishRequest::parse(
            br#"{"channelName":"a","payload":[1e308, 99999999999999999999999]}"#,
            4096,
        )
        .expect("in range");
        assert_eq!(ok.payload.get(), "[1e308, 99999999999999999999999]");
    }
    use super::*;

    const MAX: usize = 64 * 1024;

    #[test]
    fn publish_parse_keeps_raw_payload() {
        let req = PublishRequest::parse(
            br#"{"channelName":"orders","payload":{"a": 1,"b":[true]}}"#,
            MAX,
        )
        .expect("valid");
        assert_eq!(req.channel_name.as_str(), "orders");
        assert_eq!(req.payload.get(), r#"{"a": 1,"b":[true]}"#);
    }

    #[test]
    fn publish_parse_refusals() {
        let code = |b: &[u8]| PublishRequest::parse(b, 16).map(|_| ()).map_err(|e| e.code);
        assert_eq!(code(b"not json"), Err(ErrorCode::InvalidBody));
        assert_eq!(code(br#"{"payload":1}"#), Err(ErrorCode::InvalidBody));
        assert_eq!(
            code(br#"{"channelName":"orders"}"#),
            Err(ErrorCode::InvalidBody)
        );
        assert_eq!(
            code(br#"{"channelName":"a b","payload":1}"#),
            Err(ErrorCode::InvalidChannelName)
        );
        assert_eq!(
            code(br#"{"channelName":"privateer","payload":1}"#),
            Err(ErrorCode::AmbiguousChannelName)
        );
        assert_eq!(
            code(br#"{"channelName":"a","payload":"0123456789abcdefg"}"#),
            Err(ErrorCode::PayloadTooLarge)
        );
        assert_eq!(code(br#"{"channelName":"a","payload":null}"#), Ok(()));
    }

    #[test]
    fn api_key_token_format() {
        let secret = "0f".repeat(32);
        let key = format!("hk_00000000000000aa_{secret}");
        let t = ApiKeyToken::parse(&key).expect("valid");
        assert_eq!(t.expose(), key);
        assert!(ApiKeyToken::parse(&key.to_uppercase()).is_none());
        assert!(ApiKeyToken::parse(&format!("hk_00000000000000aa_{}", "0f".repeat(31))).is_none());
        assert!(ApiKeyToken::parse(&format!("xx_00000000000000aa_{secret}")).is_none());
        assert!(!format!("{t:?}").contains(&secret));
    }

    fn matcher(pattern: &str) -> regex_automata::meta::Regex {
        regex_automata::meta::Regex::new(pattern).expect("the pattern compiles")
    }

    #[test]
    fn display_name_pattern_is_the_rule() {
        let re = matcher(DISPLAY_NAME_PATTERN);
        // What a JSON Schema validator decides: the pattern anywhere, 1 to MAX characters.
        let schema =
            |s: &str| (1..=MAX_DISPLAY_NAME_CHARS).contains(&s.chars().count()) && re.is_match(s);
        for c in (0..0x3100).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("  {c}\t"), format!("{c}{c}")] {
                assert_eq!(schema(&s), parse_display_name(&s).is_ok(), "{s:?}");
            }
        }
        for s in [
            String::new(),
            "é".repeat(200),
            "é".repeat(201),
            format!("{} ", "a".repeat(199)),
            format!("{}  ", "a".repeat(199)),
        ] {
            assert_eq!(schema(&s), parse_display_name(&s).is_ok(), "{s:?}");
        }
        assert_eq!(
            parse_display_name(" \u{a0}x\r\n").map_err(|e| e.code),
            Ok("\u{a0}x".to_owned())
        );
    }

    proptest::proptest! {
        /// The RFC 3339 pattern accepts everything the parser accepts, and the parser accepts
        /// everything the pattern does but days past the end of their month.
        #[test]
        fn rfc3339_pattern_is_the_parser(
            s in "[0-9]{4}-[01][0-9]-[0-3][0-9][Tt _][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,11})?([Zz]|[+-][0-2][0-9]:[0-7][0-9])?x?"
        ) {
            let re = matcher(RFC3339_PATTERN);
            let parsed = parse_rfc3339(&s);
            if parsed.is_some() {
                proptest::prop_assert!(re.is_match(&s), "{} parses but does not match", s);
            } else if re.is_match(&s) {
                let (year, month, day) = (&s[..4], &s[5..7], &s[8..10]);
                let month = time::Month::try_from(month.parse::<u8>().unwrap_or(0)).ok();
                let length = month.map(|m| m.length(year.parse().unwrap_or(0)));
                proptest::prop_assert!(
                    length.is_some_and(|l| day.parse::<u8>().unwrap_or(0) > l),
                    "{} matches but does not parse", s
                );
            }
        }
    }

    #[test]
    fn rfc3339_edges() {
        let re = matcher(RFC3339_PATTERN);
        for ok in [
            "2030-01-02T03:04:05Z",
            "2030-01-02t03:04:05z",
            "2030-01-02T03:04:05.123456789012+23:59",
            "2028-02-29T00:00:00-00:00",
            "0000-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(ok).is_some() && re.is_match(ok), "{ok}");
        }
        for bad in [
            "",
            "2030-01-02 03:04:05Z",
            "2030-01-02T03:04:05",
            "2030-01-02T03:04:60Z",
            "2030-01-02T24:00:00Z",
            "2030-01-02T03:04:05+24:00",
            "2030-13-02T03:04:05Z",
            "2030-01-02T03:04:05Zx",
            "2030-01-02T03:04:05.Z",
        ] {
            assert!(parse_rfc3339(bad).is_none() && !re.is_match(bad), "{bad}");
        }
        assert!(parse_rfc3339("2029-02-29T00:00:00Z").is_none());
    }

    #[test]
    fn scopes_wire() {
        assert_eq!(
            serde_json::to_value(ApiKeyScope::SignToken).expect("ser"),
            "sign_token"
        );
        assert_eq!(
            "publish_event".parse::<ApiKeyScope>(),
            Ok(ApiKeyScope::PublishEvent)
        );
        assert!("admin".parse::<ApiKeyScope>().is_err());
    }
}

/// What happened to an API key, as reported by an external access service to
/// `POST /v1/tasks/api-key-events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ApiKeyEventType {
    /// The key was deleted: it stops working and every socket its tokens let into private
    /// channels is removed.
    ApiKeyDeleted,
    /// The key expired: same effect on sockets; the key stops publishing and signing.
    ApiKeyExpired,
}

/// `POST /v1/tasks/api-key-events` (admin token):
/// `{ "type": "ApiKeyDeleted" | "ApiKeyExpired", "projectId", "apiKeyId" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyEvent {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: ApiKeyEventType,
    /// The key's project.
    pub project_id: ProjectId,
    /// The key.
    pub api_key_id: ApiKeyId,
}

/// Answer to an accepted key event: the revocation job that will remove the key's sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevocationAccepted {
    /// The job id.
    pub job_id: String,
}
