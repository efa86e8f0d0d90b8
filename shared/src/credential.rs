//! Which credential opened a session or minted a ticket, and the revocation
//! check every use of one must pass.
//!
//! A credential can be revoked (logout, API key revocation, user disabled)
//! while what it produced is still around: a ticket minted a second before,
//! a session record in the Redis cache. auth-service marks the revocation in
//! Redis ([`mark_revoked`]); whoever accepts the credential's
//! products asks [`RevocationCheck`] first. [`crate::ticket::TakenTicket`]
//! gives up its claims only against a passed check, so the question cannot be
//! forgotten.

use crate::keys::RedisKeys;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The credential a session or ticket belongs to; revoking it also voids its
/// tickets and closes the sockets opened with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthSource {
    Session { session_id: Uuid },
    ApiKey { key_id: Uuid },
}

/// The question "has this credential, or its user, been revoked?", asked of
/// Redis inside a caller's pipeline (so it shares a round trip).
#[derive(Clone, Copy, Debug)]
pub struct RevocationCheck {
    pub source: AuthSource,
    pub user_id: Uuid,
}

/// Redis's answer to a [`RevocationCheck`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct RevocationStatus {
    revoked: bool,
}

impl RevocationCheck {
    /// Adds the check to `pipe`: two replies (credential revoked, user
    /// disabled), for [`Self::read`].
    pub fn add_to(&self, pipe: &mut redis::Pipeline, keys: &RedisKeys) {
        pipe.cmd("EXISTS")
            .arg(Revoked::Source(self.source).key(keys))
            .cmd("EXISTS")
            .arg(Revoked::User(self.user_id).key(keys));
    }

    /// The status from the two replies [`Self::add_to`] asked for.
    pub fn read(credential_revoked: bool, user_disabled: bool) -> RevocationStatus {
        RevocationStatus {
            revoked: credential_revoked || user_disabled,
        }
    }

    /// Asks Redis in a round trip of its own.
    pub async fn ask(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        keys: &RedisKeys,
    ) -> redis::RedisResult<RevocationStatus> {
        let mut pipe = redis::pipe();
        self.add_to(&mut pipe, keys);
        let (revoked, disabled): (bool, bool) = pipe.query_async(conn).await?;
        Ok(Self::read(revoked, disabled))
    }
}

impl RevocationStatus {
    pub fn is_revoked(self) -> bool {
        self.revoked
    }
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
