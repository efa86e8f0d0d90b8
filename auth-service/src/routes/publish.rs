//! `POST /v1/publish`: server-side publishing with a `publish`-scoped API key.

use crate::error::{Error, Result};
use crate::extract::{ApiJson, ApiKeyUser};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use shared::channel::{ChannelName, PublishError, publish as publish_to_channel};
use shared::scope::Scope;

/// Largest `data` accepted: what a WebSocket frame may carry (DESIGN §5).
pub const MAX_DATA_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    channel: ChannelName,
    data: Box<RawValue>,
    /// Makes retries safe: a key already published within the idempotency
    /// window (10 min) is not delivered again.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Publishes to any configured channel, including `user:<id>` and
/// `broadcast:` channels that clients cannot write. Any auth-service process
/// accepts it; Redis carries it to every ws-node. Answers 202 with the
/// message's history position when the channel keeps history.
pub async fn publish(
    State(state): State<AppState>,
    ApiKeyUser(key): ApiKeyUser,
    ApiJson(request): ApiJson<PublishRequest>,
) -> Result<impl IntoResponse> {
    if !key.scopes.contains(Scope::Publish) {
        return Err(Error::forbidden(
            "insufficient_scope",
            "this API key lacks the `publish` scope",
        ));
    }
    if request.data.get().len() > MAX_DATA_BYTES {
        return Err(Error::PayloadTooLarge {
            limit: MAX_DATA_BYTES,
        });
    }
    let rule = state.namespaces.rule_for(&request.channel).ok_or_else(|| {
        Error::unprocessable(
            "unknown_namespace",
            format!(
                "no channel namespace {:?} is configured",
                request.channel.namespace()
            ),
        )
    })?;
    let mut redis = state.redis.clone();
    let published = publish_to_channel(
        &mut redis,
        &state.keys,
        &request.channel,
        &request.data,
        rule.history,
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
    })?;
    metrics::counter!(crate::telemetry::SERVER_PUBLISHES).increment(1);
    let mut body = json!({ "channel": request.channel, "duplicate": published.duplicate });
    if let Some(position) = published.position {
        body["epoch"] = position.epoch.into();
        body["offset"] = position.offset.into();
    }
    Ok((StatusCode::ACCEPTED, Json(body)))
}
