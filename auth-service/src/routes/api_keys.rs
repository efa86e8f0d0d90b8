//! Self-service API key management, authenticated by the session cookie.

use crate::accounts;
use crate::api_keys;
use crate::error::{Error, Result};
use crate::extract::{ApiJson, ApiPath, SessionUser};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use shared::scope::Scopes;
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    name: String,
    scopes: Scopes,
}

/// `POST /v1/api-keys`: issues a key with scopes the user is allowed to
/// self-issue; the key is in this response only.
pub async fn create(
    State(state): State<AppState>,
    user: SessionUser,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> Result<impl IntoResponse> {
    let account = accounts::find_by_id(&state.db, user.session.user_id)
        .await?
        .ok_or_else(Error::unauthenticated)?;
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
        Json(json!({
            "id": info.id,
            "key": key.expose(),
            "prefix": info.prefix,
            "name": info.name,
            "scopes": info.scopes,
            "created_at": info.created_at.unix_timestamp(),
        })),
    ))
}

/// `GET /v1/api-keys`: the caller's keys, without secrets.
pub async fn list(State(state): State<AppState>, user: SessionUser) -> Result<impl IntoResponse> {
    let keys = api_keys::list(&state.db, user.session.user_id).await?;
    Ok(Json(json!({ "api_keys": keys })))
}

/// `DELETE /v1/api-keys/{id}`: revokes one of the caller's keys everywhere.
pub async fn revoke(
    State(state): State<AppState>,
    user: SessionUser,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse> {
    let id: Uuid = id.parse().map_err(|_| Error::NotFound("no such API key"))?;
    if !api_keys::revoke_everywhere(&state, id, Some(user.session.user_id)).await? {
        return Err(Error::NotFound("no such API key"));
    }
    Ok(StatusCode::NO_CONTENT)
}
