//! The session record cached in Redis.
//!
//! Postgres is the source of truth for sessions; Redis holds a cache keyed by the
//! SHA-256 of the session id, whose TTL is the idle timeout (capped by the
//! absolute expiry). auth-service writes and re-warms it from Postgres on a
//! miss; ws-node reads it at a cookie handshake, because ws-node never talks to
//! Postgres. Revocation deletes the cache entry, so a revoked session stops
//! working on both services at once.

use crate::keys::RedisKeys;
use crate::secret::TokenHash;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A live session, as cached in Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    /// Absolute expiry, Unix seconds; no activity extends it.
    pub expires_at: u64,
    /// Idle timeout in seconds; the cache entry's TTL is refreshed to this on use.
    pub idle_timeout_secs: u64,
}

impl SessionRecord {
    /// Seconds the cache entry should live from now: the idle timeout, cut short by the absolute expiry.
    pub fn cache_ttl_secs(&self, now: u64) -> u64 {
        self.idle_timeout_secs
            .min(self.expires_at.saturating_sub(now))
    }

    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }
}

/// Writes (or re-warms) the cache entry for a session.
pub async fn cache_session(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    hash: &TokenHash,
    record: &SessionRecord,
) -> redis::RedisResult<()> {
    let ttl = record.cache_ttl_secs(crate::unix_now());
    if ttl == 0 {
        return Ok(());
    }
    let json = serde_json::to_string(record).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "session record", e.to_string()))
    })?;
    redis::cmd("SET")
        .arg(keys.session(hash))
        .arg(json)
        .arg("EX")
        .arg(ttl)
        .query_async(conn)
        .await
}

/// Reads a session from the cache and slides its idle window (`GETEX`), in one
/// round trip. `None` means "not cached": expired, revoked, or evicted (auth-service
/// can tell which from Postgres). A record past its absolute expiry is reported as `None`.
pub async fn touch_cached_session(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    hash: &TokenHash,
    idle_timeout_secs: u64,
) -> redis::RedisResult<Option<SessionRecord>> {
    let raw: Option<String> = redis::cmd("GETEX")
        .arg(keys.session(hash))
        .arg("EX")
        .arg(idle_timeout_secs.max(1))
        .query_async(conn)
        .await?;
    let now = crate::unix_now();
    Ok(raw
        .and_then(|r| serde_json::from_str::<SessionRecord>(&r).ok())
        .filter(|record| !record.is_expired(now)))
}

/// Reads a session from the cache without extending it.
pub async fn read_cached_session(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    hash: &TokenHash,
) -> redis::RedisResult<Option<SessionRecord>> {
    let raw: Option<String> = redis::cmd("GET")
        .arg(keys.session(hash))
        .query_async(conn)
        .await?;
    let now = crate::unix_now();
    Ok(raw
        .and_then(|r| serde_json::from_str::<SessionRecord>(&r).ok())
        .filter(|record| !record.is_expired(now)))
}

/// Removes sessions from the cache (logout, revocation).
pub async fn evict_sessions(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    hashes: &[TokenHash],
) -> redis::RedisResult<()> {
    if hashes.is_empty() {
        return Ok(());
    }
    // One DEL per key rather than one multi-key DEL: on Redis Cluster the keys
    // live in different slots, and a pipeline of single-key commands works on both.
    let mut pipe = redis::pipe();
    for hash in hashes {
        pipe.cmd("DEL").arg(keys.session(hash)).ignore();
    }
    pipe.query_async(conn).await
}

/// The session cookie's name. With `Secure` it carries the `__Host-` prefix, which
/// makes browsers refuse it unless it is Secure, host-only (no `Domain`) and
/// `Path=/`; plain-http development (`COOKIE_SECURE=false`) cannot use the
/// prefix, because browsers reject `__Host-` cookies that are not Secure.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-session" } else { "session" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_ttl_is_capped_by_absolute_expiry() {
        let record = SessionRecord {
            session_id: Uuid::nil(),
            user_id: Uuid::nil(),
            username: "a".into(),
            expires_at: 1_000,
            idle_timeout_secs: 300,
        };
        assert_eq!(record.cache_ttl_secs(100), 300);
        assert_eq!(record.cache_ttl_secs(900), 100);
        assert_eq!(record.cache_ttl_secs(2_000), 0);
        assert!(record.is_expired(1_000));
    }
}
