//! `POST /v1/publish`: publishing over HTTP with an API key. A `publish` key
//! obeys the namespace rules as its user's sockets do; a `publish_any` key (an
//! operator's, for backends) writes any configured channel.

use crate::error::{Error, Result};
use crate::extract::{ApiJson, ApiKeyUser};
use crate::routes::openapi::{
    BadRequest, Forbidden, PayloadTooLarge, RateLimited, RequestTimeout, Unauthenticated,
    Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shared::channel::{ChannelName, PublishError, Publisher, publish as publish_to_channel};
use shared::namespace::Refusal;
use shared::quota::QuotaError;
use shared::scope::Scope;
use utoipa::ToSchema;

/// Largest `data` accepted: what a WebSocket frame may carry (ws-node's
/// default `MAX_MESSAGE_BYTES`).
pub const MAX_DATA_BYTES: usize = 64 * 1024;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// `namespace:name` in a configured namespace; the pattern served at
    /// `/openapi.json` names this deployment's namespaces.
    #[schema(value_type = String, max_length = 128, pattern = r"^[a-z0-9_-]{1,32}:[A-Za-z0-9_.:@=+-]+$")]
    channel: ChannelName,
    /// Any JSON value, at most 64 KiB as sent and nested at most 64 levels
    /// deep (arrays and objects); delivered as is.
    #[schema(value_type = Value)]
    data: Box<RawValue>,
    /// Makes retries safe: a key this user already published on this
    /// channel within the idempotency window (10 min) is not delivered again
    /// (keys are per user: another user's identical key does not count). 1-64 printable ASCII
    /// characters; only on channels with history.
    #[serde(default)]
    #[schema(pattern = r"^[!-~]{1,64}$")]
    idempotency_key: Option<String>,
}

/// Where the message landed.
#[derive(Serialize, ToSchema)]
pub struct Published {
    #[schema(value_type = String)]
    channel: ChannelName,
    /// The idempotency key was seen before: nothing was published this time,
    /// and `epoch`/`offset` are the first publish's.
    duplicate: bool,
    /// The history's incarnation (channels with history only).
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
    /// The message's position in the history, from 1 (channels with history only).
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

/// Publishes to a channel: with a `publish_any` key any configured channel,
/// including the `user:<id>` and `broadcast:` channels that clients cannot
/// write; with a `publish` key only channels its user may write from a
/// socket (403 `insufficient_scope` otherwise). Any auth-service process
/// accepts it; Redis carries it to every ws-node. Answers 202 with the
/// message's history position when the channel keeps history.
#[utoipa::path(
    post,
    path = "/v1/publish",
    tag = "publish",
    security(("api_key" = [])),
    request_body = PublishRequest,
    responses(
        (status = 202, description = "Published (or recognised as a duplicate)", body = Published),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn publish(
    State(state): State<AppState>,
    ApiKeyUser(key): ApiKeyUser,
    ApiJson(request): ApiJson<PublishRequest>,
) -> Result<impl IntoResponse> {
    if !key.scopes.contains(Scope::Publish) && !key.scopes.contains(Scope::PublishAny) {
        return Err(Error::forbidden(
            "insufficient_scope",
            "this API key lacks the `publish` (or `publish_any`) scope",
        ));
    }
    if request.data.get().len() > MAX_DATA_BYTES {
        return Err(Error::PayloadTooLarge {
            limit: MAX_DATA_BYTES,
        });
    }
    let len = request.data.get().len();
    let namespace = request.channel.namespace();
    let rule = state
        .namespaces
        .admit_publish(
            key.user_id,
            &request.channel,
            len,
            key.scopes.contains(Scope::PublishAny),
        )
        .map_err(|refusal| match refusal {
            Refusal::UnknownNamespace => Error::unprocessable(
                "unknown_namespace",
                format!("no channel namespace {namespace:?} is configured"),
            ),
            Refusal::NotAdmitted => Error::forbidden(
                "insufficient_scope",
                format!(
                    "a `publish` key writes only where its user could from a socket; \
                     namespace {namespace:?} needs `publish_any`"
                ),
            ),
            Refusal::NameNotAccepted => Error::unprocessable(
                "invalid_field",
                format!("namespace {namespace:?} does not accept that name"),
            ),
            Refusal::TooLarge { limit } => Error::PayloadTooLarge { limit },
        })?;
    let mut redis = state.redis.clone();
    if !key.scopes.contains(Scope::PublishAny) {
        shared::quota::charge_publish(
            &mut redis,
            &state.keys,
            &state.config.common.publish_quota(),
            key.user_id,
            &request.channel,
            rule.history.is_some(),
            len,
        )
        .await
        .map_err(|e| match e {
            QuotaError::Exceeded {
                retry_after_secs, ..
            } => Error::QuotaExceeded {
                message: e.to_string(),
                retry_after_secs,
            },
            QuotaError::Redis(e) => Error::Redis(e),
        })?;
    }
    let published = publish_to_channel(
        &mut redis,
        &state.keys,
        &request.channel,
        &request.data,
        rule.history,
        &Publisher {
            user_id: key.user_id,
            username: key.username.clone(),
        },
        request.idempotency_key.as_deref(),
    )
    .await
    .map_err(|e| match e {
        PublishError::Redis(e) => Error::Redis(e),
        PublishError::IdempotencyWithoutHistory => Error::unprocessable(
            "idempotency_unsupported",
            "idempotency keys need a channel namespace with history",
        ),
        PublishError::InvalidIdempotencyKey => Error::unprocessable("invalid_field", e.to_string()),
        PublishError::TooDeep => Error::bad_request("json_too_deep", e.to_string()),
    })?;
    metrics::counter!(crate::telemetry::SERVER_PUBLISHES).increment(1);
    let (epoch, offset) = published.position.map(|p| (p.epoch, p.offset)).unzip();
    Ok((
        StatusCode::ACCEPTED,
        Json(Published {
            channel: request.channel,
            duplicate: published.duplicate,
            epoch,
            offset,
        }),
    ))
}
