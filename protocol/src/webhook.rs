//! Webhooks: what Herald tells a project's backend, and the admin API that configures it.
//!
//! * An endpoint ([`Webhook`]) is a URL of a project with the [`WebhookEventType`]s it wants.
//!   It is created with `POST /v1/admin/projects/{id}/webhooks` ([`CreateWebhookRequest`]);
//!   the answer ([`CreatedWebhook`]) shows its signing secret once.
//! * Each event is one `POST` to the URL with the body [`WebhookPayload`]
//!   `{ "type", "timestamp", "data" }` and the Standard Webhooks headers `webhook-id`,
//!   `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256>` over
//!   `id.timestamp.body` with the secret's bytes, the part after `whsec_` base64-decoded), so a
//!   receiver verifies it with any Standard Webhooks library. The `webhook-id` is the
//!   delivery's id ([`DeliveryId`]): it stays the same across retries, so a receiver that
//!   stores it drops duplicates.
//! * Every delivery and its attempts are listed as [`WebhookDelivery`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::{ErrorCode, Refusal};

/// Longest endpoint URL, in bytes.
pub const MAX_WEBHOOK_URL_BYTES: usize = 2048;

/// Most endpoints one project may have.
pub const MAX_WEBHOOKS_PER_PROJECT: usize = 10;

/// Most deliveries `GET …/deliveries` lists (the most recent ones; older finished ones are
/// forgotten).
pub const MAX_LISTED_DELIVERIES: usize = 100;

/// The prefix of a webhook id.
pub const WEBHOOK_ID_PREFIX: &str = "wh_";

/// Characters after [`WEBHOOK_ID_PREFIX`] in a generated id.
pub const WEBHOOK_ID_RANDOM_CHARS: usize = 24;

/// The prefix of a delivery id (the `webhook-id` header).
pub const DELIVERY_ID_PREFIX: &str = "msg_";

/// Hex digits after [`DELIVERY_ID_PREFIX`] (a UUIDv7, so ids sort by creation time).
pub const DELIVERY_ID_HEX_LEN: usize = 32;

/// The prefix of a signing secret (Standard Webhooks).
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

/// What a webhook reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WebhookEventType {
    /// A channel got its first subscriber (anywhere in the cluster).
    ChannelOccupied,
    /// A channel has had no subscriber for `--webhook-vacated-delay-ms`.
    ChannelVacated,
    /// A user's first socket joined a presence channel.
    MemberAdded,
    /// A user's last socket left a presence channel.
    MemberRemoved,
    /// A client sent an event to a private or presence channel (relayed to its members).
    ClientEvent,
    /// An API key was revoked (deleted, expired, external event) and its sockets removed.
    ApiKeyRevoked,
    /// An API key with `expiresAt` will expire within `--webhook-key-expiring-secs`.
    ApiKeyExpiring,
}

impl WebhookEventType {
    /// Every type, in declaration order.
    pub const ALL: &'static [WebhookEventType] = &[
        WebhookEventType::ChannelOccupied,
        WebhookEventType::ChannelVacated,
        WebhookEventType::MemberAdded,
        WebhookEventType::MemberRemoved,
        WebhookEventType::ClientEvent,
        WebhookEventType::ApiKeyRevoked,
        WebhookEventType::ApiKeyExpiring,
    ];

    /// The wire string, e.g. `"channel_occupied"`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEventType::ChannelOccupied => "channel_occupied",
            WebhookEventType::ChannelVacated => "channel_vacated",
            WebhookEventType::MemberAdded => "member_added",
            WebhookEventType::MemberRemoved => "member_removed",
            WebhookEventType::ClientEvent => "client_event",
            WebhookEventType::ApiKeyRevoked => "api_key_revoked",
            WebhookEventType::ApiKeyExpiring => "api_key_expiring",
        }
    }

    /// The type of a wire string.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == raw)
    }

    /// `events` of a create or update body: a non-empty list of known types, without
    /// duplicates (sorted).
    pub fn parse_list(v: &Value) -> Result<Vec<WebhookEventType>, Refusal> {
        let bad = || {
            Refusal::new(
                ErrorCode::InvalidWebhookEvents,
                format!(
                    "\"events\" must be a non-empty list of {}",
                    Self::ALL
                        .iter()
                        .map(|t| format!("\"{}\"", t.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        };
        let list = v.as_array().ok_or_else(bad)?;
        if list.is_empty() {
            return Err(bad());
        }
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            out.push(item.as_str().and_then(Self::parse).ok_or_else(bad)?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl fmt::Display for WebhookEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `c` may appear in the path, query and fragment of a [`WebhookUrl`]: printable
/// ASCII without space (anything else must be percent-encoded).
pub fn is_webhook_url_char(c: char) -> bool {
    matches!(c, '!'..='~')
}

/// The rule of a [`WebhookUrl`] as a regular expression (no look-around), for the OpenAPI
/// document; [`WebhookUrl::parse`] accepts exactly what it matches (tested), within
/// [`MAX_WEBHOOK_URL_BYTES`].
///
/// A host is a dotted IPv4 address or DNS labels of letters, digits and `-` whose last label
/// starts with a letter (so it is never read as a malformed IPv4 address); the port is 0 to
/// 65535. IPv6 literals are not accepted.
pub fn webhook_url_pattern() -> String {
    let octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    let ipv4 = format!("{octet}(\\.{octet}){{3}}");
    let dns = "([A-Za-z0-9-]+\\.)*[A-Za-z][A-Za-z0-9-]*";
    let port = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})";
    format!("^[Hh][Tt][Tt][Pp][Ss]?://({ipv4}|{dns})(:{port})?([/?#][!-~]*)?$")
}

/// An endpoint URL: `http://` or `https://`, a host (see [`webhook_url_pattern`]), an
/// optional port, at most [`MAX_WEBHOOK_URL_BYTES`] of printable ASCII. No user info
/// (`user:password@`: credentials would show in every listing; verify the signature instead).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// Checks the rule.
    pub fn parse(raw: &str) -> Result<Self, Refusal> {
        let bad = |why: &str| {
            Refusal::new(
                ErrorCode::InvalidWebhookUrl,
                format!("\"url\" must be an http:// or https:// URL {why}"),
            )
        };
        if raw.len() > MAX_WEBHOOK_URL_BYTES {
            return Err(bad(&format!("of at most {MAX_WEBHOOK_URL_BYTES} bytes")));
        }
        let lower = raw.to_ascii_lowercase();
        let rest = if let Some(rest) = lower.strip_prefix("https://") {
            rest
        } else if let Some(rest) = lower.strip_prefix("http://") {
            rest
        } else {
            return Err(bad("(other schemes are refused)"));
        };
        let (authority, tail) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if !tail.chars().all(is_webhook_url_char) {
            return Err(bad(
                "whose path is printable ASCII without spaces (percent-encode the rest)",
            ));
        }
        if authority.contains('@') {
            return Err(bad("without user info"));
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if !(is_ipv4(host) || is_dns_name(host)) {
            return Err(bad(
                "whose host is a DNS name (its last label starting with a letter) or an IPv4 address",
            ));
        }
        if let Some(port) = port
            && !(!port.is_empty()
                && port.len() <= 5
                && port.chars().all(|c| c.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| p <= 65535))
        {
            return Err(bad("whose port is a number from 0 to 65535"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A dotted IPv4 address without leading zeros.
fn is_ipv4(host: &str) -> bool {
    let octets: Vec<&str> = host.split('.').collect();
    octets.len() == 4
        && octets.iter().all(|o| {
            !o.is_empty()
                && o.len() <= 3
                && o.chars().all(|c| c.is_ascii_digit())
                && !(o.len() > 1 && o.starts_with('0'))
                && o.parse::<u16>().is_ok_and(|n| n <= 255)
        })
}

/// Labels of letters, digits and `-`, the last starting with a letter.
fn is_dns_name(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    labels
        .iter()
        .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && labels
            .last()
            .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(|r| serde::de::Error::custom(r.message))
    }
}

/// Whether `c` may follow [`WEBHOOK_ID_PREFIX`]: lowercase ASCII letters and digits.
pub fn is_webhook_id_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A webhook id: `wh_` and 1 to 64 lowercase letters and digits (generated ones have 24).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WebhookId(String);

impl WebhookId {
    /// Checks the rule; `None` when it is broken (the API answers `webhook_not_found`).
    pub fn parse(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix(WEBHOOK_ID_PREFIX)?;
        (!rest.is_empty() && rest.len() <= 64 && rest.chars().all(is_webhook_id_char))
            .then(|| Self(raw.to_owned()))
    }

    /// A new random id.
    pub fn generate(random: [u8; WEBHOOK_ID_RANDOM_CHARS]) -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let tail: String = random
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        Self(format!("{WEBHOOK_ID_PREFIX}{tail}"))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for WebhookId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WebhookId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).ok_or_else(|| serde::de::Error::custom("not a webhook id"))
    }
}

/// A delivery id: `msg_` and 32 lowercase hex digits of a UUIDv7. Also the `webhook-id`
/// header of every attempt of the delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(String);

impl DeliveryId {
    /// Checks the rule; `None` when it is broken (the API answers `delivery_not_found`).
    pub fn parse(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix(DELIVERY_ID_PREFIX)?;
        (rest.len() == DELIVERY_ID_HEX_LEN
            && rest
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
        .then(|| Self(raw.to_owned()))
    }

    /// The id of a UUID (`simple` form).
    pub fn from_uuid_simple(hex: &str) -> Option<Self> {
        Self::parse(&format!("{DELIVERY_ID_PREFIX}{hex}"))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for DeliveryId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeliveryId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).ok_or_else(|| serde::de::Error::custom("not a delivery id"))
    }
}

/// `POST /v1/admin/projects/{id}/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateWebhookRequest {
    /// Where events are posted.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::webhook_url))]
    pub url: WebhookUrl,
    /// What it wants; at least one.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub events: Vec<WebhookEventType>,
    /// Whether events are sent (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub enabled: Option<bool>,
}

/// `PATCH /v1/admin/projects/{id}/webhooks/{webhookId}`: any of the fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateWebhookRequest {
    /// A new URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::webhook_url))]
    pub url: Option<WebhookUrl>,
    /// A new list of types (replaces the old one); at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_items = 1, nullable = false))]
    pub events: Option<Vec<WebhookEventType>>,
    /// Pause (`false`) or resume (`true`) it. Events of a paused endpoint are not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub enabled: Option<bool>,
}

/// An endpoint, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    /// Its id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: WebhookId,
    /// Its project.
    pub project_id: crate::ProjectId,
    /// Where events are posted.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::webhook_url))]
    pub url: WebhookUrl,
    /// What it wants.
    pub events: Vec<WebhookEventType>,
    /// Whether events are sent.
    pub enabled: bool,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Until when the secret before the last rotation still signs too (absent: no overlap).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
}

/// The answer of a create or a secret rotation: the endpoint and its signing secret, shown
/// this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedWebhook {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_` and the base64 of 32 random bytes: the key receivers verify signatures with.
    pub secret: String,
}

/// The body of every webhook request (the Standard Webhooks payload shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookPayload {
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: WebhookEventType,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// `projectId`, and per type: `channelName` (channel and member events, `client_event`),
    /// `userId` and `userInfo` (member events), `payload`, `socketId` and `userId`
    /// (`client_event`), `apiKeyId`, `reason`, `socketsRemoved` and `channelsRemoved`
    /// (`api_key_revoked`), `apiKeyId` and `expiresAt` (`api_key_expiring`).
    pub data: Value,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (`nextAttemptAt`).
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Every attempt failed; retry it with `POST …/deliveries/{deliveryId}/retry`.
    Failed,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryAttempt {
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// How long until the answer (or the failure).
    pub duration_ms: u64,
    /// The receiver's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why it failed without an answer (`timeout`, `connect`, `redirect`, …); the receiver's
    /// body is never kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A delivery: one event to one endpoint, with its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDelivery {
    /// Its id (the `webhook-id` header).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: DeliveryId,
    /// Its endpoint.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub webhook_id: WebhookId,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: WebhookEventType,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// When the event happened.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    /// When the next attempt is due (`pending` only).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub next_attempt_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "http://localhost:8080/hook",
            "https://example.com",
            "HTTPS://Example.com/a?b=c#d",
            "http://127.0.0.1:65535/%E2%9C%93",
            "http://localhost",
            "http://a-b.c0.Example:0?x#y",
        ] {
            assert!(WebhookUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://example.com",
            "http://",
            "http:///path",
            "https://user:pw@example.com/",
            "http://exa mple.com",
            "http://example.com/✓",
            "example.com",
            "http://[::1]/",
            "http://999.1.1.1/",
            "http://01.2.3.4/",
            "http://example.123/",
            "http://a..b/",
            "http://example.com:65536/",
            "http://example.com:/",
        ] {
            let r = WebhookUrl::parse(bad).expect_err(bad);
            assert_eq!(r.code, ErrorCode::InvalidWebhookUrl);
        }
        let long = format!("https://e.com/{}", "a".repeat(MAX_WEBHOOK_URL_BYTES));
        assert!(WebhookUrl::parse(&long).is_err());
    }

    fn matcher(pattern: &str) -> regex_automata::meta::Regex {
        regex_automata::meta::Regex::new(pattern).expect("the pattern compiles")
    }

    proptest::proptest! {
        /// The parser accepts exactly what the OpenAPI pattern matches.
        #[test]
        fn url_pattern_agrees(raw in "[Hh][Tt]{2}[Pp][Ss]?://[a-z0-9.:@-]{0,14}[/?#]?[ -~]{0,6}") {
            let re = matcher(&webhook_url_pattern());
            proptest::prop_assert_eq!(re.is_match(&raw), WebhookUrl::parse(&raw).is_ok(), "{}", raw);
        }

        #[test]
        fn url_pattern_agrees_on_numbers(a in 0u32..400, b in 0u32..70000, dotted in proptest::bool::ANY) {
            let host = if dotted { format!("{a}.{a}.0.{a}") } else { format!("h{a}") };
            let raw = format!("http://{host}:{b}/x");
            let re = matcher(&webhook_url_pattern());
            proptest::prop_assert_eq!(re.is_match(&raw), WebhookUrl::parse(&raw).is_ok(), "{}", raw);
        }
    }

    #[test]
    fn event_lists() {
        let v = serde_json::json!(["member_added", "channel_occupied", "member_added"]);
        assert_eq!(
            WebhookEventType::parse_list(&v).expect("valid"),
            vec![
                WebhookEventType::ChannelOccupied,
                WebhookEventType::MemberAdded
            ]
        );
        for bad in [
            serde_json::json!([]),
            serde_json::json!(["nope"]),
            serde_json::json!("channel_occupied"),
            serde_json::json!([1]),
        ] {
            assert_eq!(
                WebhookEventType::parse_list(&bad).expect_err("bad").code,
                ErrorCode::InvalidWebhookEvents
            );
        }
        for t in WebhookEventType::ALL {
            assert_eq!(
                serde_json::to_value(t).expect("encodes"),
                Value::String(t.as_str().into())
            );
        }
    }

    #[test]
    fn ids() {
        let id = WebhookId::generate([7; WEBHOOK_ID_RANDOM_CHARS]);
        assert_eq!(WebhookId::parse(id.as_str()), Some(id));
        assert!(WebhookId::parse("wh_").is_none());
        assert!(WebhookId::parse("wh_ABC").is_none());
        assert!(WebhookId::parse("xx_abc").is_none());
        let hex = "0193a1b2c3d47e8f9a0b1c2d3e4f5a6b";
        let d = DeliveryId::from_uuid_simple(hex).expect("valid");
        assert_eq!(d.as_str(), format!("msg_{hex}"));
        assert!(DeliveryId::parse("msg_123").is_none());
        assert!(DeliveryId::parse(&format!("msg_{}", hex.to_uppercase())).is_none());
    }
}
