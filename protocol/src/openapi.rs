//! OpenAPI schemas (feature `openapi`) of the types whose rules utoipa's derive cannot see:
//! the error codes as they travel ([`ErrorCode::as_str`]) and the validated names, with the
//! `pattern`, `minLength` and `maxLength` built from the same constants and predicates the
//! parsers use. The server's document (`GET /openapi.json`) takes them from here, so a rule
//! changed in this crate changes the document with it.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::api::{
    API_KEY_ID_HEX_LEN, API_KEY_PREFIX, API_KEY_SECRET_HEX_LEN, ApiKeyId, ApiKeyScope,
    DISPLAY_NAME_PATTERN, RFC3339_PATTERN, SignRequest, is_lower_hex_char,
};
use crate::error::ErrorCode;
use crate::limits::MAX_DISPLAY_NAME_CHARS;
use crate::names::{
    ChannelName, MAX_CHANNEL_NAME_BYTES, MAX_PROJECT_ID_BYTES, PRESENCE_PREFIX, PRIVATE_PREFIX,
    ProjectId, channel_name_pattern, is_channel_char, project_id_pattern, regex_class,
};
use crate::presence::{MAX_MEMBER_INFO_BYTES, MAX_USER_ID_BYTES, is_user_id_char};

fn string(description: &str, pattern: String, min: usize, max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .min_length(Some(min))
        .max_length(Some(max))
}

impl PartialSchema for ErrorCode {
    /// A string enum of the wire strings, in declaration order, with each code's HTTP status
    /// in the description.
    fn schema() -> RefOr<Schema> {
        let statuses: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|c| format!("`{c}` {}", c.http_status()))
            .collect();
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(format!(
                "A machine-readable error code; stable, unlike messages. The HTTP status of each \
                 (socket refusals carry the same codes): {}.",
                statuses.join(", ")
            )))
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

impl ToSchema for ErrorCode {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

impl PartialSchema for ProjectId {
    fn schema() -> RefOr<Schema> {
        string(
            "A project (tenant) id: lowercase letters, digits and `-`, not starting with `-`.",
            project_id_pattern(),
            1,
            MAX_PROJECT_ID_BYTES,
        )
        .examples(["acme"])
        .into()
    }
}

impl ToSchema for ProjectId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ProjectId")
    }
}

impl PartialSchema for ChannelName {
    fn schema() -> RefOr<Schema> {
        string(
            "A channel name: `A-Z a-z 0-9 _ - = @ , . ;`. Names starting with `private-` are \
             private (listening needs a token); any other name that starts like \"private\" in \
             any letter case, or is a beginning of it, is refused as ambiguous.",
            channel_name_pattern(),
            1,
            MAX_CHANNEL_NAME_BYTES,
        )
        .examples(["orders", "private-user-42"])
        .into()
    }
}

impl ToSchema for ChannelName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ChannelName")
    }
}

impl PartialSchema for ApiKeyId {
    fn schema() -> RefOr<Schema> {
        string(
            "The public id of an API key: lowercase hex. Safe to log.",
            format!("^{}+$", regex_class(is_lower_hex_char)),
            API_KEY_ID_HEX_LEN,
            API_KEY_ID_HEX_LEN,
        )
        .examples(["9f2c4e1a7b3d5f60"])
        .into()
    }
}

impl ToSchema for ApiKeyId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ApiKeyId")
    }
}

/// The schema of a presence channel's name (a path parameter of the REST presence calls): a
/// [`ChannelName`] starting with `presence-`.
pub struct PresenceChannelName;

impl PartialSchema for PresenceChannelName {
    fn schema() -> RefOr<Schema> {
        string(
            "A presence channel: a channel name starting with `presence-`.",
            format!("^{PRESENCE_PREFIX}{}+$", regex_class(is_channel_char)),
            PRESENCE_PREFIX.len() + 1,
            MAX_CHANNEL_NAME_BYTES,
        )
        .examples(["presence-room-7"])
        .into()
    }
}

impl ToSchema for PresenceChannelName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PresenceChannelName")
    }
}

/// The user id of a member, as [`UserId::parse`](crate::presence::UserId::parse) accepts it.
pub fn user_id() -> ObjectBuilder {
    string(
        "The member's user id: printable ASCII. Two sockets with the same user id are one \
         member of a presence channel.",
        format!("^{}+$", regex_class(is_user_id_char)),
        1,
        MAX_USER_ID_BYTES,
    )
    .examples(["u-42"])
}

/// A webhook endpoint URL, as [`WebhookUrl::parse`](crate::webhook::WebhookUrl::parse)
/// accepts it.
pub fn webhook_url() -> Schema {
    string(
        "Where events are posted: an http:// or https:// URL whose host is a DNS name (its \
         last label starting with a letter) or an IPv4 address, an optional port, no user \
         info, printable ASCII (percent-encode the rest). Redirects are not followed.",
        crate::webhook::webhook_url_pattern(),
        8,
        crate::webhook::MAX_WEBHOOK_URL_BYTES,
    )
    .examples(["https://backend.example.com/herald/webhooks"])
    .build()
    .into()
}

/// [`user_id`] as a schema (a member's `userId`).
pub fn user_id_schema() -> Schema {
    user_id().build().into()
}

fn user_info() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(format!(
            "What the other members of a presence channel see of this one: a JSON object of at \
             most {MAX_MEMBER_INFO_BYTES} bytes as compact JSON (`presence_info_too_large` \
             beyond)."
        )))
}

fn sign_body(prefix: &str, user_id_required: bool) -> ObjectBuilder {
    let channel = string(
        &format!("The channel the token opens: a name starting with `{prefix}`."),
        format!("^{prefix}{}+$", regex_class(is_channel_char)),
        prefix.len() + 1,
        MAX_CHANNEL_NAME_BYTES,
    );
    let user = if user_id_required {
        user_id()
    } else {
        user_id().schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    };
    let body = ObjectBuilder::new()
        .property("channelName", channel)
        .required("channelName")
        .property("userId", user)
        .property("userInfo", user_info());
    if user_id_required {
        body.required("userId")
    } else {
        body
    }
}

impl PartialSchema for SignRequest {
    /// One of two shapes, told apart by the channel's prefix: a private channel (the member is
    /// optional and carried in the token without being used) or a presence channel (the
    /// member's `userId` is required).
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "A channel token request: the channel, and the member the token names (claims \
                 `sub` and `info`), required on presence channels.",
            ))
            .item(sign_body(PRIVATE_PREFIX, false))
            .item(sign_body(PRESENCE_PREFIX, true))
            .into()
    }
}

impl ToSchema for SignRequest {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SignRequest")
    }
}

/// A display name, as [`parse_display_name`](crate::api::parse_display_name) accepts it.
pub fn display_name() -> Schema {
    string(
        "Display name: at least one character that is not whitespace; trimmed of ASCII \
         whitespace on both ends.",
        DISPLAY_NAME_PATTERN.to_owned(),
        1,
        MAX_DISPLAY_NAME_CHARS,
    )
    .build()
    .into()
}

/// The scopes of a key: at least one (repeats are stored once).
pub fn scopes() -> Schema {
    ArrayBuilder::new()
        .items(ApiKeyScope::schema_ref())
        .min_items(Some(1))
        .description(Some("What the key may do; at least one."))
        .build()
        .into()
}

/// The `expiresAt` of a new key: an RFC 3339 time, or `null` for none.
pub fn expiry() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .pattern(Some(RFC3339_PATTERN))
        .description(Some(
            "When the key stops working: an RFC 3339 time in the future (`400 invalid_expiry` \
             otherwise); never when absent or `null`.",
        ))
        .build()
        .into()
}

/// A full API key, `hk_{id}_{secret}`.
pub fn api_key() -> Schema {
    let hex = regex_class(is_lower_hex_char);
    let len = API_KEY_PREFIX.len() + API_KEY_ID_HEX_LEN + 1 + API_KEY_SECRET_HEX_LEN;
    string(
        "The full key (`hk_{id}_{secret}`). Shown once; Herald keeps only a hash.",
        format!(
            "^{API_KEY_PREFIX}{hex}{{{API_KEY_ID_HEX_LEN}}}_{hex}{{{API_KEY_SECRET_HEX_LEN}}}$"
        ),
        len,
        len,
    )
    .build()
    .into()
}

/// A reference to a component schema, e.g. `#/components/schemas/ApiKeyScope`.
trait SchemaRef {
    fn schema_ref() -> RefOr<Schema>;
}

impl<T: ToSchema> SchemaRef for T {
    fn schema_ref() -> RefOr<Schema> {
        RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()))
    }
}
