//! The server control API (the AWS `@connections` equivalent): list a user's
//! live connections, disconnect a user or one connection. Authenticated by an
//! API key with the `admin` scope; any auth-service process accepts the call
//! and the control channel carries it to every ws-node.

use crate::error::{Error, Result};
use crate::extract::{ApiKeyUser, ApiPath};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use shared::control::{self, ControlMessage};
use shared::scope::Scope;
use uuid::Uuid;

fn require_admin(key: &crate::api_keys::VerifiedKey) -> Result<()> {
    if key.scopes.contains(Scope::Admin) {
        Ok(())
    } else {
        Err(Error::forbidden(
            "insufficient_scope",
            "this API key lacks the `admin` scope",
        ))
    }
}

fn user_id(raw: &str) -> Result<Uuid> {
    raw.parse().map_err(|_| Error::NotFound("no such user"))
}

/// `GET /v1/users/{id}/connections`: the user's live connections on every node.
pub async fn list_connections(
    State(state): State<AppState>,
    ApiKeyUser(key): ApiKeyUser,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse> {
    require_admin(&key)?;
    let user_id = user_id(&id)?;
    let connections =
        shared::connections::list_for_user(&mut state.redis.clone(), &state.keys, user_id).await?;
    Ok(Json(
        json!({ "user_id": user_id, "connections": connections }),
    ))
}

/// `POST /v1/users/{id}/disconnect`: closes every socket of the user (4003).
pub async fn disconnect_user(
    State(state): State<AppState>,
    ApiKeyUser(key): ApiKeyUser,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse> {
    require_admin(&key)?;
    let user_id = user_id(&id)?;
    control::broadcast(
        &mut state.redis.clone(),
        &state.keys,
        &ControlMessage::DisconnectUser { user_id },
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /v1/connections/{id}/disconnect`: closes one socket (4003); `id` is
/// the `connection_id` of its `welcome` frame (`<node>:<n>`).
pub async fn disconnect_connection(
    State(state): State<AppState>,
    ApiKeyUser(key): ApiKeyUser,
    ApiPath(connection_id): ApiPath<String>,
) -> Result<impl IntoResponse> {
    require_admin(&key)?;
    if connection_id.len() > 200 || !connection_id.contains(':') {
        return Err(Error::NotFound("no such connection"));
    }
    control::broadcast(
        &mut state.redis.clone(),
        &state.keys,
        &ControlMessage::DisconnectConnection { connection_id },
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}
