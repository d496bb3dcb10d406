//! Publisher endpoints, authenticated by API key (`Authorization: Bearer` or `X-API-Key`).
//!
//! The project always comes from the key, never from the body: a key can only ever reach its
//! own project's rooms.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use herald_protocol::api::{PublishRequest, PublishResponse, SignRequest, SignResponse};
use herald_protocol::history::{HistoryEvent, HistoryPage, MAX_HISTORY_PAGE, MAX_OFFSET};
use herald_protocol::messages::event_names::EVENT;
use herald_protocol::presence::Member;
use herald_protocol::presence::{PresenceCount, PresenceMembers, not_presence_channel};
use herald_protocol::{
    ApiKeyScope, ApiKeyToken, ChannelEvent, ChannelName, ChannelOffset, ErrorBody, ErrorCode,
    Refusal, RoomName,
};
use time::OffsetDateTime;

use super::{ApiError, bearer, body_bytes};
use crate::app::AppState;
use crate::channel_token::store_refusal;
use crate::fanout::FanoutError;
use crate::keys::secret_matches;
use crate::metrics as m;
use crate::store::ApiKeyRecord;

/// Header that may carry the API key instead of `Authorization`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Resolves the request's API key and checks it carries `scope`; counts failures by reason
/// and successes by key id.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    scope: ApiKeyScope,
) -> Result<ApiKeyRecord, ApiError> {
    let result = resolve_key(state, headers, scope).await;
    match &result {
        Ok(key) => {
            let operation = match scope {
                ApiKeyScope::PublishEvent => "publish",
                ApiKeyScope::SignToken => "sign",
                ApiKeyScope::ReadHistory => "history",
                ApiKeyScope::ReadPresence => "presence",
            };
            metrics::counter!(m::API_KEY_REQUESTS, "api_key_id" => key.id.to_string(), "operation" => operation)
                .increment(1);
        }
        Err(e) if e.0.code.http_status() == 401 || e.0.code.http_status() == 403 => {
            metrics::counter!(m::AUTH_FAILURES, "reason" => e.0.code.as_str()).increment(1);
        }
        Err(_) => {}
    }
    result
}

async fn resolve_key(
    state: &AppState,
    headers: &HeaderMap,
    scope: ApiKeyScope,
) -> Result<ApiKeyRecord, ApiError> {
    let raw = bearer(headers)
        .or_else(|| headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingApiKey,
                "send the API key as Authorization: Bearer <key> or X-API-Key: <key>",
            )
        })?;
    let unknown = || ApiError::new(ErrorCode::UnknownApiKey, "API key is not valid");
    let token = ApiKeyToken::parse(raw).ok_or_else(unknown)?;
    let record = state
        .store()
        .api_key(token.id())
        .await
        .map_err(store_refusal)?
        .filter(|r| secret_matches(r, &token))
        .ok_or_else(unknown)?;
    if record.is_expired_at(OffsetDateTime::now_utc()) {
        return Err(ApiError::new(
            ErrorCode::ExpiredApiKey,
            "API key has expired",
        ));
    }
    if !record.has_scope(scope) {
        return Err(ApiError::new(
            ErrorCode::MissingScope,
            format!("API key lacks the {scope} scope"),
        ));
    }
    Ok(record)
}

/// `POST /v1/publishers/events/publish`.
#[utoipa::path(post, path = "/v1/publishers/events/publish", tag = "publisher", request_body = crate::openapi::PublishBody, security(("api_key" = []), ("api_key_header" = [])),
    responses(
        (status = 200, description = "Delivered to the channel's subscribers", body = PublishResponse),
        (status = 400, description = "`invalid_body`, `invalid_channel_name`, `ambiguous_channel_name`, `payload_too_deep` (arrays and objects nested past the limit)", body = ErrorBody),
        (status = 401, description = "`missing_api_key`, `unknown_api_key`, `expired_api_key`", body = ErrorBody),
        (status = 403, description = "`missing_scope`: the key lacks the scope", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the payload is over `--max-payload-bytes` (or the body over the limit)", body = ErrorBody),
        (status = 503, description = "`unavailable`: a backend (Redis) is unreachable; the event may not have reached every instance", body = ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    let started = std::time::Instant::now();
    let result = publish_inner(&state, &headers, body).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.0.code == ErrorCode::Unavailable => "unavailable",
        Err(e) if e.0.code == ErrorCode::Internal => "error",
        Err(_) => "refused",
    };
    metrics::counter!(m::PUBLISHES, "outcome" => outcome).increment(1);
    metrics::histogram!(m::PUBLISH_DURATION).record(started.elapsed().as_secs_f64());
    result
}

async fn publish_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    let key = authenticate(state, headers, ApiKeyScope::PublishEvent).await?;
    let body = body_bytes(body)?;
    let req = PublishRequest::parse(&body, state.max_payload_bytes())?;
    let id = uuid::Uuid::now_v7().to_string();
    let room = RoomName::channel(&key.project_id, &req.channel_name);
    let settings = state
        .histories()
        .settings(state.store(), &key.project_id)
        .await;
    let mut event = ChannelEvent {
        id: Some(id.clone()),
        channel_name: req.channel_name,
        payload: &*req.payload,
        offset: None,
        epoch: None,
    };
    if !settings.enabled() {
        state.deliver(room, &event).await?;
        tracing::debug!(api_key_id = %key.id, project_id = %key.project_id, channel = %event.channel_name, message_id = %id, "published");
        return Ok(Json(PublishResponse {
            id,
            offset: None,
            epoch: None,
        }));
    }
    // Append, deliver locally and queue for the other instances under the room's sequencer
    // lock (see `history::Sequencer`): this instance's events of a room then leave on the bus
    // in offset order; the wait for the bus's confirmation happens after the lock.
    let order = state.fanout().sequencer().lock(&room).await;
    let encoded = {
        let position = state
            .histories()
            .backend
            .append(&room, settings, &id, req.payload.get())
            .await
            .map_err(|e| {
                metrics::counter!(m::HISTORY_ERRORS).increment(1);
                if let Some(p) = crate::log_throttle::backend_faults().check(&"history_append") {
                    tracing::warn!(error = %e, suppressed = p.suppressed, "history append failed; event not published");
                }
                ApiError::new(
                    ErrorCode::Unavailable,
                    "history backend unavailable, the event was not published; try again shortly",
                )
            })?;
        event.offset = Some(position.offset);
        event.epoch = Some(position.epoch.clone());
        let encoded = encode_event(&event)?;
        state
            .fanout()
            .emit_local_at(&room, &encoded, &position)
            .await
            .map_err(fanout_error)?;
        (encoded, position)
    };
    let (encoded, position) = encoded;
    let mut remote = std::pin::pin!(state.fanout().emit_remote(&room, &encoded, Some(&position)));
    // One poll runs it up to its first wait: the message is queued, in order.
    let queued = std::future::poll_fn(|cx| std::task::Poll::Ready(remote.as_mut().poll(cx))).await;
    drop(order);
    match queued {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => remote.await,
    }
    .or_else(|e| match e {
        // The event is in history, and an instance whose subscription is down catches up
        // from it when it is back (`redis::gap`): repairable, not a 503.
        FanoutError::Unconfirmed(reason) => {
            tracing::debug!(
                reason,
                "bus not confirmed by every instance; history repairs it"
            );
            Ok(())
        }
        e => Err(e),
    })
    .map_err(fanout_error)?;
    tracing::debug!(api_key_id = %key.id, project_id = %key.project_id, channel = %event.channel_name, message_id = %id, offset = ?event.offset, "published");
    Ok(Json(PublishResponse {
        id,
        offset: event.offset,
        epoch: event.epoch,
    }))
}

fn encode_event<P: serde::Serialize>(
    event: &ChannelEvent<P>,
) -> Result<Box<serde_json::value::RawValue>, ApiError> {
    serde_json::value::to_raw_value(event).map_err(|e| {
        tracing::error!(error = %e, "event serialization failed");
        ApiError::new(ErrorCode::Internal, "event could not be encoded")
    })
}

fn fanout_error(e: FanoutError) -> ApiError {
    match e {
        FanoutError::Encode(e) => {
            tracing::error!(error = %e, "event encoding failed");
            ApiError::new(ErrorCode::Internal, "event could not be encoded")
        }
        FanoutError::Unavailable(e) | FanoutError::Unconfirmed(e) => {
            if let Some(p) = crate::log_throttle::backend_faults().check(&"publish_bus") {
                tracing::warn!(error = %e, suppressed = p.suppressed, "broadcast failed");
            }
            ApiError::new(
                ErrorCode::Unavailable,
                "fan-out backend unavailable, try again shortly",
            )
        }
    }
}

/// Query of the history endpoint.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// List the events after this offset (default 0: from the oldest retained); at most
    /// 2^53 − 1 (`herald_protocol::history::MAX_OFFSET`).
    #[param(minimum = 0, maximum = 9007199254740991_u64)]
    pub since: Option<u64>,
    /// At most this many events, 1 to 100 (default 100).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u64>,
}

/// `GET /v1/publishers/channels/{channelName}/history?since=&limit=`: the channel's retained
/// events after `since`, oldest first (newest last), a page of at most `limit`; `next` is the
/// `since` of the next page.
#[utoipa::path(get, path = "/v1/publishers/channels/{channelName}/history", tag = "publisher",
    params(("channelName" = ChannelName, Path, description = "The channel"), HistoryQuery),
    security(("api_key" = []), ("api_key_header" = [])),
    responses(
        (status = 200, description = "A page of retained events, oldest first", body = herald_protocol::history::HistoryPage),
        (status = 400, description = "`invalid_body` (a bad `since` or `limit`), `invalid_channel_name`, `ambiguous_channel_name`", body = ErrorBody),
        (status = 401, description = "`missing_api_key`, `unknown_api_key`, `expired_api_key`", body = ErrorBody),
        (status = 403, description = "`missing_scope`: the key lacks `read_history`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the history backend (Redis) is unreachable", body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let key = authenticate(&state, &headers, ApiKeyScope::ReadHistory).await?;
    let channel = ChannelName::parse(&channel).map_err(Refusal::from)?;
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("\"since\" must be an integer >= 0 and \"limit\" one from 1 to {MAX_HISTORY_PAGE}: {e}"),
        )
    })?;
    let limit = match query.limit {
        None => MAX_HISTORY_PAGE,
        Some(n) if (1..=MAX_HISTORY_PAGE as u64).contains(&n) => n as usize,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                format!("\"limit\" must be from 1 to {MAX_HISTORY_PAGE}"),
            ));
        }
    };
    let since = match query.since {
        None => ChannelOffset(0),
        Some(n) if n <= MAX_OFFSET => ChannelOffset(n),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                format!("\"since\" must be an integer from 0 to {MAX_OFFSET}"),
            ));
        }
    };
    let settings = state
        .histories()
        .settings(state.store(), &key.project_id)
        .await;
    let room = RoomName::channel(&key.project_id, &channel);
    let slice = if settings.enabled() {
        state
            .histories()
            .backend
            .read(&room, settings, since, limit)
            .await
            .map_err(|e| {
                if let Some(p) = crate::log_throttle::backend_faults().check(&"history_read") {
                    tracing::warn!(error = %e, suppressed = p.suppressed, "history read failed");
                }
                ApiError::new(
                    ErrorCode::Unavailable,
                    "history backend unavailable, try again shortly",
                )
            })?
    } else {
        crate::history::Slice {
            epoch: None,
            top: ChannelOffset(0),
            events: Vec::new(),
            first: None,
        }
    };
    let next = match slice.events.last() {
        Some(last) if slice.events.len() == limit && last.offset < slice.top => Some(last.offset),
        _ => None,
    };
    let mut events = Vec::with_capacity(slice.events.len());
    for e in slice.events {
        let payload = serde_json::value::RawValue::from_string(e.payload).map_err(|err| {
            tracing::error!(error = %err, "unreadable history payload");
            ApiError::new(ErrorCode::Internal, "history holds an unreadable event")
        })?;
        events.push(HistoryEvent {
            id: e.id,
            offset: e.offset,
            payload,
        });
    }
    Ok(Json(HistoryPage {
        channel_name: channel,
        epoch: slice.epoch,
        offset: slice.top,
        events,
        next,
    }))
}

/// `GET /v1/publishers/channels/{channelName}/presence`: the members of a presence channel,
/// on every instance, ordered by user id.
#[utoipa::path(get, path = "/v1/publishers/channels/{channelName}/presence", tag = "publisher",
    params(("channelName" = herald_protocol::openapi::PresenceChannelName, Path, description = "The presence channel")),
    security(("api_key" = []), ("api_key_header" = [])),
    responses(
        (status = 200, description = "The channel's members", body = PresenceMembers),
        (status = 400, description = "`invalid_channel_name`, `ambiguous_channel_name`, `not_presence_channel`", body = ErrorBody),
        (status = 401, description = "`missing_api_key`, `unknown_api_key`, `expired_api_key`", body = ErrorBody),
        (status = 403, description = "`missing_scope`: the key lacks `read_presence`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the presence backend (Redis) is unreachable", body = ErrorBody)))]
pub async fn presence(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> Result<Json<PresenceMembers>, ApiError> {
    let (channel, room) = presence_channel(&state, &headers, &channel).await?;
    let members = state
        .presence()
        .manager
        .members(&room)
        .await
        .map_err(presence_unavailable)?;
    Ok(Json(PresenceMembers {
        channel_name: channel,
        members: members.members,
    }))
}

/// `GET /v1/publishers/channels/{channelName}/presence/count`: how many members (users) a
/// presence channel has.
#[utoipa::path(get, path = "/v1/publishers/channels/{channelName}/presence/count", tag = "publisher",
    params(("channelName" = herald_protocol::openapi::PresenceChannelName, Path, description = "The presence channel")),
    security(("api_key" = []), ("api_key_header" = [])),
    responses(
        (status = 200, description = "How many members the channel has", body = PresenceCount),
        (status = 400, description = "`invalid_channel_name`, `ambiguous_channel_name`, `not_presence_channel`", body = ErrorBody),
        (status = 401, description = "`missing_api_key`, `unknown_api_key`, `expired_api_key`", body = ErrorBody),
        (status = 403, description = "`missing_scope`: the key lacks `read_presence`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the presence backend (Redis) is unreachable", body = ErrorBody)))]
pub async fn presence_count(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> Result<Json<PresenceCount>, ApiError> {
    let (channel, room) = presence_channel(&state, &headers, &channel).await?;
    let count = state
        .presence()
        .manager
        .count(&room)
        .await
        .map_err(presence_unavailable)?;
    Ok(Json(PresenceCount {
        channel_name: channel,
        count,
    }))
}

/// The presence endpoints' common part: a key with `read_presence`, a presence channel.
async fn presence_channel(
    state: &AppState,
    headers: &HeaderMap,
    channel: &str,
) -> Result<(ChannelName, RoomName), ApiError> {
    let key = authenticate(state, headers, ApiKeyScope::ReadPresence).await?;
    let channel = ChannelName::parse(channel).map_err(Refusal::from)?;
    if !channel.is_presence() {
        return Err(not_presence_channel(&channel).into());
    }
    let room = RoomName::channel(&key.project_id, &channel);
    Ok((channel, room))
}

fn presence_unavailable(e: crate::presence::PresenceError) -> ApiError {
    if let Some(p) = crate::log_throttle::backend_faults().check(&"presence_read") {
        tracing::warn!(error = %e, suppressed = p.suppressed, "presence read failed");
    }
    ApiError::new(
        ErrorCode::Unavailable,
        "presence backend unavailable, try again shortly",
    )
}

/// `POST /v1/publishers/sign`.
#[utoipa::path(post, path = "/v1/publishers/sign", tag = "publisher", request_body = SignRequest, security(("api_key" = []), ("api_key_header" = [])),
    responses(
        (status = 200, description = "A channel token", body = SignResponse),
        (status = 400, description = "`invalid_body`, `invalid_channel_name`, `ambiguous_channel_name`, `channel_not_private`, `invalid_user_id`, `presence_info_too_large`, `presence_user_missing` (a presence channel without `userId`)", body = ErrorBody),
        (status = 401, description = "`missing_api_key`, `unknown_api_key`, `expired_api_key`", body = ErrorBody),
        (status = 403, description = "`missing_scope`: the key lacks the scope", body = ErrorBody)))]
pub async fn sign(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SignResponse>, ApiError> {
    let key = authenticate(&state, &headers, ApiKeyScope::SignToken).await?;
    let body = body_bytes(body)?;
    let req = SignRequest::parse(&body)?;
    if !req.channel_name.needs_token() {
        return Err(ApiError::new(
            ErrorCode::ChannelNotPrivate,
            format!(
                "{} is a public channel; tokens are for channels starting with \"private-\" or \"presence-\"",
                req.channel_name
            ),
        ));
    }
    let member = req.user_id.map(|user_id| Member {
        user_id,
        info: req.user_info,
    });
    let project = state
        .store()
        .project(&key.project_id)
        .await
        .map_err(store_refusal)?
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownApiKey, "API key is not valid"))?;
    let (token, expires_at) = state
        .tokens()
        .sign(
            &project,
            &key.id,
            &req.channel_name,
            member.as_ref(),
            OffsetDateTime::now_utc(),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "token signing failed");
            ApiError::new(ErrorCode::Internal, "token signing failed")
        })?;
    tracing::debug!(api_key_id = %key.id, project_id = %key.project_id, channel = %req.channel_name, "channel token signed");
    Ok(Json(SignResponse { token, expires_at }))
}

impl AppState {
    /// Emits `event` to every socket in `room`, encoding it once.
    pub async fn deliver<P: serde::Serialize>(
        &self,
        room: RoomName,
        event: &ChannelEvent<P>,
    ) -> Result<(), ApiError> {
        let encoded = encode_event(event)?;
        self.fanout()
            .emit(room, EVENT, &encoded, None)
            .await
            .map(|_| ())
            .map_err(fanout_error)
    }
}
