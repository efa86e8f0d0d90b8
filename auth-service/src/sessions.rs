//! Sessions: durable in Postgres, cached in Redis, carried by an HttpOnly cookie.
//!
//! The cookie holds a 256-bit random id; Postgres and Redis only ever see its
//! SHA-256. Every login creates a new id (no fixation). Two timeouts apply, both
//! server-side: idle (the Redis entry's TTL, slid on use, with Postgres'
//! `last_seen_at` as the fallback after a Redis flush) and absolute (fixed at login).

use crate::accounts::User;
use crate::credential_gate::CredentialKind;
use crate::error::Result;
use crate::state::AppState;
use shared::credential::{AuthSource, RevocationCheck};
use shared::secret::{Secret, TokenHash, looks_like_token, random_token};
use shared::session::{SessionRecord, cache_session, touch_cached_session};
use sqlx::PgPool;
use std::net::IpAddr;
use time::OffsetDateTime;
use tower_cookies::cookie::{Cookie, SameSite};
use uuid::Uuid;

/// Who created a session, for the user's session list.
pub struct ClientInfo {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// Creates a session for `user`; returns the cookie value (shown only to the
/// client) and the record.
pub async fn create(
    state: &AppState,
    user: &User,
    client: ClientInfo,
) -> Result<(Secret, SessionRecord)> {
    let token = random_token();
    let hash = TokenHash::of(&token);
    let now = shared::unix_now();
    let record = SessionRecord {
        session_id: Uuid::new_v4(),
        user_id: user.id,
        username: user.username.clone(),
        expires_at: now + state.config.session_absolute_timeout_secs,
        idle_timeout_secs: state.config.session_idle_timeout_secs,
    };
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, user_id, expires_at, user_agent, ip)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(record.session_id)
    .bind(hash.as_bytes().as_slice())
    .bind(user.id)
    .bind(to_datetime(record.expires_at))
    .bind(
        client
            .user_agent
            .map(|ua| ua.chars().take(256).collect::<String>()),
    )
    .bind(client.ip)
    .execute(&state.db)
    .await?;
    // Postgres has the session; if Redis is down the cache is warmed on first use.
    if let Err(e) = cache_session(&mut state.redis.clone(), &state.keys, &hash, &record).await {
        tracing::warn!(error = %e, "could not cache new session");
    }
    metrics::counter!(crate::telemetry::SESSIONS_CREATED).increment(1);
    Ok((Secret::new(token), record))
}

/// Resolves a cookie value to its live session, or `None` if it is not one:
/// garbage, unknown, revoked, idle too long, past its absolute expiry, or its
/// user disabled.
pub async fn authenticate(
    state: &AppState,
    token: &str,
    client: IpAddr,
) -> Result<Option<(SessionRecord, TokenHash)>> {
    if !looks_like_token(token) {
        return Ok(None);
    }
    let hash = TokenHash::of(token);
    let idle = state.config.session_idle_timeout_secs;
    let mut redis = state.redis.clone();
    match touch_cached_session(&mut redis, &state.keys, &hash, idle).await {
        Ok(Some(record)) => {
            // A cache entry can outlive its session's revocation (its
            // eviction failed, or raced this read): the markers decide.
            let check = RevocationCheck {
                source: AuthSource::Session {
                    session_id: record.session_id,
                },
                user_id: record.user_id,
            };
            match check.ask(&mut redis, &state.keys).await {
                Ok(status) if status.is_revoked() => return Ok(None),
                Ok(_) => {
                    note_activity(state, record.session_id);
                    return Ok(Some((record, hash)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocation markers unavailable; using Postgres");
                }
            }
        }
        Ok(None) => {}
        // Postgres is the source of truth; a Redis outage must not log people out.
        Err(e) => tracing::warn!(error = %e, "session cache unavailable; using Postgres"),
    }
    // Not in the cache: only Postgres can tell, behind the gate that keeps
    // floods of forged cookies from costing it anything.
    if state.credential_gate.is_known_unknown_session(&hash) {
        return Ok(None);
    }
    let admitted = state
        .credential_gate
        .admit(state, client, CredentialKind::Session)
        .await?;
    let row: Option<(Uuid, Uuid, String, OffsetDateTime)> = sqlx::query_as(
        "UPDATE sessions s SET last_seen_at = now()
         FROM users u
         WHERE s.token_hash = $1 AND u.id = s.user_id
           AND s.revoked_at IS NULL AND u.disabled_at IS NULL
           AND s.expires_at > now()
           AND s.last_seen_at > now() - make_interval(secs => $2)
         RETURNING s.id, s.user_id, u.username, s.expires_at",
    )
    .bind(hash.as_bytes().as_slice())
    .bind(idle as f64)
    .fetch_optional(&state.db)
    .await?;
    admitted.finish(row.is_some(), &hash).await;
    let Some((session_id, user_id, username, expires_at)) = row else {
        return Ok(None);
    };
    let record = SessionRecord {
        session_id,
        user_id,
        username,
        expires_at: u64::try_from(expires_at.unix_timestamp()).unwrap_or(0),
        idle_timeout_secs: idle,
    };
    if let Err(e) = cache_session(&mut state.redis.clone(), &state.keys, &hash, &record).await {
        tracing::warn!(error = %e, "could not re-warm session cache");
    }
    Ok(Some((record, hash)))
}

/// Records activity in Postgres at a bounded rate (once per touch interval per
/// process), so the idle timeout survives a Redis flush without a write per request.
fn note_activity(state: &AppState, session_id: Uuid) {
    if state.recently_seen_sessions.contains_key(&session_id) {
        return;
    }
    state.recently_seen_sessions.insert(session_id, ());
    let db = state.db.clone();
    tokio::spawn(async move {
        let result = sqlx::query(
            "UPDATE sessions SET last_seen_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(session_id)
        .execute(&db)
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record session activity");
        }
    });
}

/// Marks one session of `user_id` revoked in Postgres (again, if it already
/// was). Returns its token hash and whether it was live until now; `None` if
/// the user has no such session. The rest is [`crate::revocation`]'s.
pub async fn mark_revoked(
    db: impl sqlx::PgExecutor<'_>,
    user_id: Uuid,
    session_id: Uuid,
) -> Result<Option<(TokenHash, bool)>> {
    let row: Option<(Vec<u8>, bool)> = sqlx::query_as(
        "UPDATE sessions s SET revoked_at = COALESCE(s.revoked_at, now())
         FROM sessions before
         WHERE s.id = $1 AND s.user_id = $2 AND before.id = s.id
         RETURNING s.token_hash, before.revoked_at IS NULL",
    )
    .bind(session_id)
    .bind(user_id)
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|(hash, was_live)| Some((token_hash(&hash)?, was_live))))
}

/// Marks every live session of a user revoked in Postgres. Returns how many
/// were live, and the id and hash of each session revoked within
/// `recent_secs` (now or before), for the Redis half of the revocation: an
/// older one cannot still be cached (a cache entry lives at most the idle
/// timeout), and a retry after a failure comes soon after it.
pub async fn mark_all_revoked(
    db: &mut sqlx::PgConnection,
    user_id: Uuid,
    recent_secs: u64,
) -> Result<(usize, Vec<(Uuid, TokenHash)>)> {
    let revoked = sqlx::query(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut *db)
    .await?
    .rows_affected();
    // Revoked ones only: a session created meanwhile stays live.
    let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, token_hash FROM sessions
         WHERE user_id = $1 AND expires_at > now() AND revoked_at IS NOT NULL
           AND revoked_at > now() - make_interval(secs => $2)",
    )
    .bind(user_id)
    .bind(recent_secs as f64)
    .fetch_all(&mut *db)
    .await?;
    let recent = rows
        .into_iter()
        .filter_map(|(id, hash)| Some((id, token_hash(&hash)?)))
        .collect();
    Ok((usize::try_from(revoked).unwrap_or(usize::MAX), recent))
}

/// Marks the unexpired session with this token hash revoked in Postgres
/// (again, if it already was); returns its id, or `None` if there is none.
pub async fn mark_revoked_by_hash(
    db: impl sqlx::PgExecutor<'_>,
    hash: &TokenHash,
) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = COALESCE(revoked_at, now())
         WHERE token_hash = $1 AND expires_at > now()
         RETURNING id",
    )
    .bind(hash.as_bytes().as_slice())
    .fetch_optional(db)
    .await?)
}

/// The user of the unexpired session with this token hash, live or revoked
/// within `recent_secs`: who may retry revoking their sessions with a cookie
/// the first attempt already revoked.
pub async fn recently_revoked_owner(
    db: &PgPool,
    hash: &TokenHash,
    recent_secs: u64,
) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT user_id FROM sessions
         WHERE token_hash = $1 AND expires_at > now() AND revoked_at IS NOT NULL
           AND revoked_at > now() - make_interval(secs => $2)",
    )
    .bind(hash.as_bytes().as_slice())
    .bind(recent_secs as f64)
    .fetch_optional(db)
    .await?)
}

fn token_hash(bytes: &[u8]) -> Option<TokenHash> {
    <[u8; 32]>::try_from(bytes).ok().map(TokenHash::from_bytes)
}

/// A session as listed to its owner.
#[derive(Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SessionInfo {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// The user's sessions that are still live.
pub async fn list_for_user(state: &AppState, user_id: Uuid) -> Result<Vec<SessionInfo>> {
    Ok(sqlx::query_as::<_, SessionInfo>(
        "SELECT id, created_at, last_seen_at, expires_at, user_agent, ip FROM sessions
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
           AND last_seen_at > now() - make_interval(secs => $2)
         ORDER BY created_at DESC",
    )
    .bind(user_id)
    .bind(state.config.session_idle_timeout_secs as f64)
    .fetch_all(&state.db)
    .await?)
}

/// The `Set-Cookie` that installs a session: HttpOnly, Secure with the
/// `__Host-` prefix, SameSite=Lax, Path=/, no Domain, living as long as the session can.
pub fn session_cookie(state: &AppState, token: &Secret) -> Cookie<'static> {
    Cookie::build((state.config.common.cookie_name(), token.expose().to_owned()))
        .http_only(true)
        .secure(state.config.common.cookie_secure)
        .same_site(SameSite::Lax)
        .path("/")
        .max_age(time::Duration::seconds(
            i64::try_from(state.config.session_absolute_timeout_secs).unwrap_or(i64::MAX),
        ))
        .build()
}

/// The `Set-Cookie` that deletes the session cookie (same attributes, so browsers match it).
pub fn removal_cookie(state: &AppState) -> Cookie<'static> {
    Cookie::build((state.config.common.cookie_name(), ""))
        .http_only(true)
        .secure(state.config.common.cookie_secure)
        .same_site(SameSite::Lax)
        .path("/")
        .max_age(time::Duration::ZERO)
        .expires(OffsetDateTime::UNIX_EPOCH)
        .build()
}

fn to_datetime(unix: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
