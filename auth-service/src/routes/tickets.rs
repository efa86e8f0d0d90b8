//! `POST /v1/tickets`: mints a single-use WebSocket ticket.

use crate::error::{Error, Result};
use crate::extract::{Caller, RawBody, parse_json};
use crate::rate_limit;
use crate::routes::openapi::{
    BadRequest, Forbidden, PayloadTooLarge, RateLimited, RequestTimeout, Unauthenticated,
    Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use shared::credential::AuthSource;
use shared::keys::RateBucket;
use shared::scope::{Scope, Scopes};
use shared::ticket::{TicketClaims, add_ticket, add_ticket_removal};
use std::time::Duration;
use utoipa::ToSchema;

/// Optional body: narrow the ticket's scopes below the credential's.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// The ticket's scopes, a subset of the credential's (`connect` is always
    /// added); absent or `null`, the credential's own.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Scope>>)]
    scopes: Option<Scopes>,
}

/// Authenticated by the session cookie (CSRF-checked; the ticket is then bound
/// to the request's Origin) or by an API key with the `connect` scope. Counted
/// against a per-user (cookie) or per-key limit. Answers
/// `201 {"ticket","expires_in","ws_url"}`.
#[utoipa::path(
    post,
    path = "/v1/tickets",
    tag = "tickets",
    security(("session_cookie" = []), ("api_key" = [])),
    request_body(content = MintRequest, description = "Optional; without one, the credential's scopes"),
    responses(
        (status = 201, description = "A single-use ticket for `ws_url`", body = Minted<'_>),
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
pub async fn mint(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse> {
    let request: MintRequest = if body.is_empty() {
        MintRequest::default()
    } else {
        parse_json(&headers, &body)?
    };
    let config = &state.config;
    let window = Duration::from_secs(config.mint_window_secs);
    let (source, granted, origin, counter, limit, credential_expires_at) = match &caller {
        Caller::ApiKey(key) => {
            if !key.scopes.contains(Scope::Connect) {
                return Err(Error::forbidden(
                    "insufficient_scope",
                    "this API key lacks the `connect` scope",
                ));
            }
            (
                AuthSource::ApiKey { key_id: key.id },
                key.scopes,
                None,
                state.keys.rate_limit(RateBucket::MintByApiKey, key.id),
                config.mint_limit_per_key,
                None,
            )
        }
        Caller::Session(user) => (
            AuthSource::Session {
                session_id: user.session.session_id,
            },
            Scopes::NONE.with(Scope::Connect).with(Scope::Publish),
            user.origin.clone(),
            state
                .keys
                .rate_limit(RateBucket::MintByUser, user.session.user_id),
            config.mint_limit_per_user,
            Some(user.session.expires_at),
        ),
    };
    let scopes = match request.scopes {
        None => granted,
        Some(asked) if granted.covers(asked) => asked.with(Scope::Connect),
        Some(_) => {
            return Err(Error::forbidden(
                "insufficient_scope",
                "requested scopes exceed the credential's",
            ));
        }
    };
    let claims = TicketClaims {
        user_id: caller.user_id(),
        username: caller.username().to_owned(),
        source,
        scopes,
        origin,
        issued_at: shared::unix_now(),
        credential_expires_at,
    };
    // Count the mint and store the ticket in one round trip. Over the limit,
    // the stored ticket is deleted again; it was never shown to anyone.
    let mut pipe = redis::pipe();
    rate_limit::add_hit(&mut pipe, &counter, window);
    let ticket = add_ticket(&mut pipe, &state.keys, &claims, config.ticket_ttl())
        .map_err(|e| Error::Internal(e.into()))?;
    let mut redis = state.redis.clone();
    let (count,): (u64,) = pipe.query_async(&mut redis).await?;
    if count > limit {
        let mut cleanup = redis::pipe();
        add_ticket_removal(&mut cleanup, &state.keys, &ticket);
        cleanup.query_async::<()>(&mut redis).await?;
        let bucket = match source {
            AuthSource::Session { .. } => RateBucket::MintByUser,
            AuthSource::ApiKey { .. } => RateBucket::MintByApiKey,
        };
        return Err(rate_limit::refusal(&mut redis, bucket, &counter).await);
    }
    let kind = match source {
        AuthSource::Session { .. } => "session",
        AuthSource::ApiKey { .. } => "api_key",
    };
    metrics::counter!(crate::telemetry::TICKETS_MINTED, "source" => kind).increment(1);
    Ok((
        StatusCode::CREATED,
        Json(Minted {
            ticket: ticket.expose(),
            expires_in: config.ticket_ttl_secs,
            ws_url: &config.public_ws_url,
        }),
    )
        .into_response())
}

/// The answer to a mint (a struct rather than `json!`, which would build a
/// map of owned strings on every mint).
#[derive(Serialize, ToSchema)]
pub struct Minted<'a> {
    /// Opens one WebSocket within `expires_in` seconds, once.
    ticket: &'a str,
    /// Seconds.
    expires_in: u64,
    /// Where to open the WebSocket.
    ws_url: &'a str,
}
