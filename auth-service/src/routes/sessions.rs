//! Login, logout, who-am-I, and a user's own sessions.

use crate::accounts::{self, Username};
use crate::error::ErrorBody;
use crate::error::{Error, Result};
use crate::extract::{
    ApiJson, ApiPath, Caller, ClientIp, RevokingUser, SessionUser, session_cookie_value,
};
use crate::login_limits::CountedAttempt;
use crate::password::MAX_PASSWORD_BYTES;
use crate::revocation;
use crate::routes::openapi::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, RateLimited, RequestTimeout, Unauthenticated,
    Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::sessions::{self, ClientInfo};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse};
use serde::{Deserialize, Serialize};
use shared::secret::Secret;
use shared::secret::TokenHash;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    /// More than 1024 bytes (UTF-8) is refused before any hashing (422
    /// `password_too_long`); 256 characters always fit.
    // JSON Schema counts characters, and a character takes up to 4 bytes: a
    // `maxLength` of 1024 would call a 300-character password of emoji
    // valid, which the server refuses.
    #[schema(max_length = 256)]
    password: String,
}

/// Who a credential belongs to.
#[derive(Serialize, ToSchema)]
pub struct UserSummary<'a> {
    id: Uuid,
    username: &'a str,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse<'a> {
    user: UserSummary<'a>,
}

/// The caller's live sessions, newest first.
#[derive(Serialize, ToSchema)]
pub struct SessionList {
    sessions: Vec<ListedSession>,
}

#[derive(Serialize, ToSchema)]
pub struct ListedSession {
    #[serde(flatten)]
    session: sessions::SessionInfo,
    /// Whether this is the session of the request's own cookie.
    current: bool,
}

/// `POST /v1/login`: verifies the password and starts a new session.
///
/// Unknown user, wrong password and disabled user get the same 401 with the
/// same body, after the same argon2 work. Failures are counted in Redis per
/// account and address, per address, and per account from new addresses
/// ([`crate::login_limits`]; each attempt counted before hashing, taken back
/// if it succeeds); over a limit, 429 before any hashing.
#[utoipa::path(
    post,
    path = "/v1/login",
    tag = "sessions",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in; the session cookie is set (HttpOnly, SameSite=Lax, Path=/)",
            body = LoginResponse<'_>, headers(("set-cookie" = String, description = "The new session cookie"))),
        (status = 400, response = BadRequest),
        (status = 401, description = "Unknown user, wrong password or disabled user, all alike (`invalid_credentials`)", body = ErrorBody<'_>),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<impl IntoResponse> {
    crate::csrf::check_browser_request(&headers, &state.origins)?;
    if request.password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::unprocessable(
            "password_too_long",
            "password must be at most 1024 bytes",
        ));
    }
    let password = Secret::new(request.password);
    // A name that cannot exist is treated like an unknown one (no account counter).
    let username = Username::parse(&request.username).ok();
    let config = &state.config;
    // Counted as a failure up front (taken back on success), so parallel
    // guesses cannot all slip past the limit while they wait to be hashed.
    let attempt = CountedAttempt::count(&state, username.as_ref(), ip).await?;
    let checked = async {
        let user = match &username {
            Some(name) => accounts::find_by_username(&state.db, name).await?,
            None => None,
        }
        .filter(|u| u.disabled_at.is_none());
        let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
        let matched = state.passwords.verify(&password, stored_hash).await?;
        Ok::<_, Error>(user.filter(|_| matched))
    }
    .await;
    let user = match checked {
        Ok(user) => user,
        // Not a failed login (hashing queue full, database down): not counted.
        Err(e) => {
            attempt.not_judged(&mut state.redis.clone()).await?;
            return Err(e);
        }
    };
    let Some(user) = user else {
        metrics::counter!(crate::telemetry::LOGINS, "outcome" => "failed").increment(1);
        return Err(Error::Unauthenticated {
            code: "invalid_credentials",
            message: "invalid username or password",
        });
    };
    attempt.succeeded(&state).await?;
    // The browser's previous session (if any) is replaced, not reused: a new id
    // at every login means a planted id never becomes an authenticated one.
    if let Some(old) = session_cookie_value(&headers, config.common.cookie_name())
        && let Some((previous, _)) = sessions::authenticate(&state, &old, ip).await?
    {
        revocation::revoke_session(&state, previous.user_id, previous.session_id).await?;
    }
    let client = ClientInfo {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ip: Some(ip.to_string()),
    };
    let (token, _) = sessions::create(&state, &user, client).await?;
    metrics::counter!(crate::telemetry::LOGINS, "outcome" => "succeeded").increment(1);
    let cookie = sessions::session_cookie(&state, &token).to_string();
    Ok((
        AppendHeaders([(header::SET_COOKIE, cookie)]),
        Json(LoginResponse {
            user: UserSummary {
                id: user.id,
                username: &user.username,
            },
        }),
    )
        .into_response())
}

/// `POST /v1/logout`: revokes the session (everywhere, including its open
/// sockets) and deletes the cookie. Idempotent: without a live session it still
/// answers 204 and clears the cookie.
#[utoipa::path(
    post,
    path = "/v1/logout",
    tag = "sessions",
    security((), ("session_cookie" = [])),
    responses(
        (status = 204, description = "Logged out (or was not logged in); the cookie is deleted",
            headers(("set-cookie" = String, description = "Deletes the session cookie"))),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse> {
    crate::csrf::check_browser_request(&headers, &state.origins)?;
    // By the cookie's hash, not by authenticating it: a retry after an
    // attempt whose Redis half failed finds the session revoked already, and
    // completes that half instead of answering 401.
    if let Some(token) = session_cookie_value(&headers, state.config.common.cookie_name())
        && shared::secret::looks_like_token(&token)
    {
        revocation::log_out(&state, &TokenHash::of(&token)).await?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        AppendHeaders([(
            header::SET_COOKIE,
            sessions::removal_cookie(&state).to_string(),
        )]),
    ))
}

/// `GET /v1/me`: the caller (by session cookie or API key).
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "sessions",
    security(("session_cookie" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The caller", body = UserSummary<'_>),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn me(caller: Caller) -> impl IntoResponse {
    Json(UserSummary {
        id: caller.user_id(),
        username: caller.username(),
    })
    .into_response()
}

/// `GET /v1/sessions`: the caller's live sessions, the current one marked.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    security(("session_cookie" = [])),
    responses(
        (status = 200, description = "The caller's live sessions", body = SessionList),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list(State(state): State<AppState>, user: SessionUser) -> Result<impl IntoResponse> {
    let sessions = sessions::list_for_user(&state, user.session.user_id).await?;
    let current = user.session.session_id;
    let sessions = sessions
        .into_iter()
        .map(|session| ListedSession {
            current: session.id == current,
            session,
        })
        .collect();
    Ok(Json(SessionList { sessions }))
}

/// `POST /v1/sessions/revoke-all`: logs the user out everywhere (this browser too).
#[utoipa::path(
    post,
    path = "/v1/sessions/revoke-all",
    tag = "sessions",
    security(("session_cookie" = [])),
    responses(
        (status = 204, description = "Every session of the user is revoked; the cookie is deleted",
            headers(("set-cookie" = String, description = "Deletes the session cookie"))),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn revoke_all(
    State(state): State<AppState>,
    user: RevokingUser,
) -> Result<impl IntoResponse> {
    let revoked = revocation::revoke_all_sessions(&state, user.0).await?;
    tracing::info!(user_id = %user.0, revoked, "revoked all sessions");
    Ok((
        StatusCode::NO_CONTENT,
        AppendHeaders([(
            header::SET_COOKIE,
            sessions::removal_cookie(&state).to_string(),
        )]),
    ))
}

/// `DELETE /v1/sessions/{id}`: revokes one of the caller's sessions.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    security(("session_cookie" = [])),
    params(("id" = Uuid, Path, description = "A session id from `GET /v1/sessions`")),
    responses(
        (status = 204, description = "Revoked; if it was the request's own session, the cookie is deleted",
            headers(("set-cookie" = String, description = "Deletes the session cookie (own session only)"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn revoke_one(
    State(state): State<AppState>,
    user: SessionUser,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse> {
    let id: Uuid = id.parse().map_err(|_| Error::NotFound("no such session"))?;
    if !revocation::revoke_session(&state, user.session.user_id, id).await? {
        return Err(Error::NotFound("no such session"));
    }
    let clear = (id == user.session.session_id).then(|| {
        (
            header::SET_COOKIE,
            sessions::removal_cookie(&state).to_string(),
        )
    });
    Ok((StatusCode::NO_CONTENT, AppendHeaders(clear)))
}
