//! Self-service API key management, authenticated by the session cookie.

use crate::accounts;
use crate::api_keys::{self, ApiKeyInfo, ScopeList};
use crate::error::{Error, Result};
use crate::extract::{ApiJson, ApiPath, SessionUser};
use crate::routes::openapi::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, RequestTimeout, Unauthenticated, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use shared::scope::{Scope, Scopes};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// 1-100 characters once trimmed, no control characters.
    // The pattern is what `api_keys::validate_name` accepts: no control
    // character (Unicode `Cc`), and something besides white space.
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        max_length = 100
    )]
    name: String,
    /// At least one; each must be among the scopes the account may self-issue.
    #[schema(value_type = Vec<Scope>, min_items = 1)]
    scopes: Scopes,
}

/// A new key: the only time its secret is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey<'a> {
    id: Uuid,
    /// The secret (`tess_…`), for `Authorization: Bearer`.
    key: &'a str,
    /// The start of the key, shown in listings.
    prefix: &'a str,
    name: &'a str,
    #[schema(value_type = Vec<Scope>)]
    scopes: ScopeList,
    /// Unix seconds.
    created_at: i64,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    api_keys: Vec<ApiKeyInfo>,
}

/// `POST /v1/api-keys`: issues a key with scopes the user is allowed to
/// self-issue; the key is in this response only.
#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "api-keys",
    security(("session_cookie" = [])),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The new key", body = CreatedKey<'_>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    user: SessionUser,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> Result<impl IntoResponse> {
    let account = accounts::find_by_id(&state.db, user.session.user_id)
        .await?
        .ok_or_else(Error::unauthenticated)?;
    if let Some(scope) = request.scopes.iter().find(|s| !s.self_issuable()) {
        return Err(Error::forbidden(
            "scope_not_self_issuable",
            format!("`{scope}` keys are issued by an operator only (auth-service api-key create)"),
        ));
    }
    if !account.key_scopes().covers(request.scopes) {
        return Err(Error::forbidden(
            "scope_not_allowed",
            format!(
                "this account may only create keys with scopes {:?}",
                account.key_scopes().to_strings()
            ),
        ));
    }
    let (key, info) =
        api_keys::create(&state.db, account.id, &request.name, request.scopes).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id: info.id,
            key: key.expose(),
            prefix: &info.prefix,
            name: &info.name,
            scopes: info.scopes,
            created_at: info.created_at.unix_timestamp(),
        }),
    )
        .into_response())
}

/// `GET /v1/api-keys`: the caller's keys, without secrets.
#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "api-keys",
    security(("session_cookie" = [])),
    responses(
        (status = 200, description = "The caller's keys, revoked ones included", body = KeyList),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list(State(state): State<AppState>, user: SessionUser) -> Result<impl IntoResponse> {
    let api_keys = api_keys::list(&state.db, user.session.user_id).await?;
    Ok(Json(KeyList { api_keys }))
}

/// `DELETE /v1/api-keys/{id}`: revokes one of the caller's keys everywhere.
#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    security(("session_cookie" = [])),
    params(("id" = Uuid, Path, description = "A key id from `GET /v1/api-keys`")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn revoke(
    State(state): State<AppState>,
    user: SessionUser,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse> {
    let id: Uuid = id.parse().map_err(|_| Error::NotFound("no such API key"))?;
    if !crate::revocation::revoke_api_key(&state, id, Some(user.session.user_id)).await? {
        return Err(Error::NotFound("no such API key"));
    }
    Ok(StatusCode::NO_CONTENT)
}
