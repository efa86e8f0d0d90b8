//! Control messages: how auth-service tells every ws-node to close sockets.
//!
//! Published on the deployment's control channel ([`RedisKeys::control`]).
//! Pub/sub is at-most-once, so a lost control message must not leave a revoked
//! credential working: revocation also writes a short-lived marker that ticket
//! consumption checks, and ws-node re-validates live sockets periodically.

use crate::keys::RedisKeys;
use crate::ticket::AuthSource;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// A credential was revoked (logout, session revocation, API key revocation):
    /// close every socket opened with it.
    CredentialRevoked { source: AuthSource },
    /// A user was disabled: close every socket of the user.
    UserDisabled { user_id: Uuid },
    /// An operator disconnects every socket of a user (control API).
    DisconnectUser { user_id: Uuid },
    /// An operator disconnects one socket (control API); `connection_id` is `<node>:<id>`.
    DisconnectConnection { connection_id: String },
}

/// Publishes a control message to every ws-node.
pub async fn broadcast(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    message: &ControlMessage,
) -> redis::RedisResult<()> {
    let json = serde_json::to_string(message).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "control message", e.to_string()))
    })?;
    redis::cmd("PUBLISH")
        .arg(keys.control())
        .arg(json)
        .query_async(conn)
        .await
}

/// How long a revocation is remembered in Redis. Tickets of the credential are
/// refused and ws-node's periodic re-validation closes sockets opened with it
/// for this long, even if the control message announcing it was lost.
pub const REVOCATION_MEMORY: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Records that these credentials are revoked: their outstanding tickets must
/// not be accepted and their open sockets must close.
pub async fn mark_revoked(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    revoked: &[Revoked],
) -> redis::RedisResult<()> {
    if revoked.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for r in revoked {
        pipe.cmd("SET")
            .arg(r.key(keys))
            .arg(1)
            .arg("EX")
            .arg(REVOCATION_MEMORY.as_secs())
            .ignore();
    }
    pipe.query_async(conn).await
}

/// Something whose outstanding tickets are void.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    Source(AuthSource),
    User(Uuid),
}

impl Revoked {
    fn key(self, keys: &RedisKeys) -> String {
        match self {
            Self::Source(AuthSource::Session { session_id }) => keys.revoked("session", session_id),
            Self::Source(AuthSource::ApiKey { key_id }) => keys.revoked("api_key", key_id),
            Self::User(user_id) => keys.revoked("user", user_id),
        }
    }
}

/// Whether the credential or the user has been revoked (or disabled).
pub async fn is_revoked(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    source: AuthSource,
    user_id: Uuid,
) -> redis::RedisResult<bool> {
    let mut pipe = redis::pipe();
    add_revocation_check(&mut pipe, keys, source, user_id);
    let (by_source, by_user): (bool, bool) = pipe.query_async(conn).await?;
    Ok(by_source || by_user)
}

/// Adds the revocation check to `pipe`: two replies, "credential revoked" and
/// "user disabled"; either true means refuse.
pub fn add_revocation_check(
    pipe: &mut redis::Pipeline,
    keys: &RedisKeys,
    source: AuthSource,
    user_id: Uuid,
) {
    pipe.cmd("EXISTS")
        .arg(Revoked::Source(source).key(keys))
        .cmd("EXISTS")
        .arg(Revoked::User(user_id).key(keys));
}

/// Which of `sources` are revoked (one pipeline).
pub async fn revoked_among_sources(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    sources: &[AuthSource],
) -> redis::RedisResult<Vec<AuthSource>> {
    let markers: Vec<Revoked> = sources.iter().copied().map(Revoked::Source).collect();
    let found = exist(conn, keys, &markers).await?;
    Ok(sources
        .iter()
        .zip(found)
        .filter(|(_, f)| *f)
        .map(|(s, _)| *s)
        .collect())
}

/// Which of `users` are disabled (one pipeline).
pub async fn revoked_among_users(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    users: &[Uuid],
) -> redis::RedisResult<Vec<Uuid>> {
    let markers: Vec<Revoked> = users.iter().copied().map(Revoked::User).collect();
    let found = exist(conn, keys, &markers).await?;
    Ok(users
        .iter()
        .zip(found)
        .filter(|(_, f)| *f)
        .map(|(u, _)| *u)
        .collect())
}

async fn exist(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    markers: &[Revoked],
) -> redis::RedisResult<Vec<bool>> {
    if markers.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for marker in markers {
        pipe.cmd("EXISTS").arg(marker.key(keys));
    }
    pipe.query_async(conn).await
}
