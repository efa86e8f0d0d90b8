//! Revocation, in one place: logging out one session, revoking all of a
//! user's sessions, revoking an API key, disabling a user.
//!
//! Each has two halves. Postgres first: it is the source of truth, and once
//! it says "revoked", auth-service accepts the credential no more. Then
//! Redis, so that the rest of the system stops too:
//!
//! * the revocation markers ([`shared::credential::mark_revoked`]): tickets
//!   the credential minted before are refused at the handshake, cached
//!   sessions are refused, and ws-node's periodic re-validation closes its
//!   sockets even if the broadcast below is lost;
//! * the session cache entries, which ws-node's cookie handshakes read;
//! * a control broadcast that closes the open sockets on every node now.
//!
//! The Postgres half commits together with a row of `revocation_outbox` that
//! says what the Redis half must do. The request then does it and marks the
//! row done; if Redis cannot be reached, the request fails (503) and the row
//! stays pending, and every auth-service process retries pending rows
//! ([`run_outbox`]) until Redis answers. So a revocation fails closed: once
//! Redis is back, the credential is refused everywhere and its sockets close,
//! whether or not anyone retries. Retrying is safe too: every operation here
//! redoes the Redis half for what it finds revoked, and answers as if it had
//! revoked it itself.

use crate::accounts;
use crate::api_keys;
use crate::error::Result;
use crate::sessions;
use crate::state::AppState;
use shared::control::{self, ControlMessage};
use shared::credential::{AuthSource, Revoked, mark_revoked};
use shared::secret::TokenHash;
use shared::session::evict_sessions;
use sqlx::{PgConnection, Postgres, Transaction};
use std::time::Duration;
use uuid::Uuid;

/// How often each process looks for revocations whose Redis half is pending.
const OUTBOX_INTERVAL: Duration = Duration::from_secs(1);
/// Pending rows taken per round.
const OUTBOX_BATCH: i64 = 500;
/// How long done rows are kept (for operators looking back), then deleted.
const OUTBOX_KEEP_DONE: Duration = Duration::from_secs(24 * 3600);

/// One credential whose Redis half is due.
#[derive(Clone, Copy, Debug)]
enum Due {
    Session { id: Uuid, hash: TokenHash },
    ApiKey { id: Uuid },
    User { id: Uuid },
}

/// Revokes one session of `user_id` everywhere. Returns whether it was live
/// until now (`false` also when there is no such session).
pub async fn revoke_session(state: &AppState, user_id: Uuid, session_id: Uuid) -> Result<bool> {
    let mut tx = state.db.begin().await?;
    let Some((hash, was_live)) = sessions::mark_revoked(&mut *tx, user_id, session_id).await?
    else {
        return Ok(false);
    };
    let due = [Due::Session {
        id: session_id,
        hash,
    }];
    commit_then_complete(state, tx, &due).await?;
    Ok(was_live)
}

/// Logs out the session a cookie carries, live or already revoked (a retry
/// after a failed attempt); an unknown or expired session is nothing to do.
pub async fn log_out(state: &AppState, hash: &TokenHash) -> Result<()> {
    let mut tx = state.db.begin().await?;
    let Some(session_id) = sessions::mark_revoked_by_hash(&mut *tx, hash).await? else {
        return Ok(());
    };
    let due = [Due::Session {
        id: session_id,
        hash: *hash,
    }];
    commit_then_complete(state, tx, &due).await
}

/// Revokes every session of a user (logs them out everywhere); returns how
/// many were live. The Redis half covers the user's sessions revoked within
/// the idle timeout, now or before: an older one cannot still be cached.
pub async fn revoke_all_sessions(state: &AppState, user_id: Uuid) -> Result<usize> {
    let mut tx = state.db.begin().await?;
    let (revoked, due) = all_sessions(&mut tx, state, user_id).await?;
    commit_then_complete(state, tx, &due).await?;
    Ok(revoked)
}

/// Revokes an API key (of `owner`, when given) everywhere, and forgets it
/// in this process at once (other processes trust their cache for at most
/// `API_KEY_CACHE_MS`). Returns whether there is such a key, live until now
/// or revoked before (whose Redis half is redone).
pub async fn revoke_api_key(state: &AppState, key_id: Uuid, owner: Option<Uuid>) -> Result<bool> {
    let mut tx = state.db.begin().await?;
    let Some(hash) = api_keys::revoke(&mut *tx, key_id, owner).await? else {
        return Ok(false);
    };
    commit_then_complete(state, tx, &[Due::ApiKey { id: key_id }]).await?;
    state.api_keys.forget(hash).await;
    Ok(true)
}

/// Disables a user everywhere: no more logins, sessions revoked, API keys and
/// outstanding tickets refused, open sockets closed.
pub async fn disable_user(state: &AppState, user_id: Uuid) -> Result<()> {
    let mut tx = state.db.begin().await?;
    accounts::set_disabled(&mut *tx, user_id).await?;
    let (_, mut due) = all_sessions(&mut tx, state, user_id).await?;
    due.push(Due::User { id: user_id });
    commit_then_complete(state, tx, &due).await
}

/// Revokes a user's live sessions; returns how many were live, and the Redis
/// work for those revoked within the idle timeout (now or before).
async fn all_sessions(
    tx: &mut Transaction<'static, Postgres>,
    state: &AppState,
    user_id: Uuid,
) -> Result<(usize, Vec<Due>)> {
    let (revoked, recent) =
        sessions::mark_all_revoked(tx, user_id, state.config.session_idle_timeout_secs).await?;
    let due = recent
        .into_iter()
        .map(|(id, hash)| Due::Session { id, hash })
        .collect();
    Ok((revoked, due))
}

/// Records `due` in the outbox, commits, then does the Redis half and marks
/// it done. A Redis failure is returned (503) with the rows left pending.
async fn commit_then_complete(
    state: &AppState,
    mut tx: Transaction<'static, Postgres>,
    due: &[Due],
) -> Result<()> {
    let ids = record(&mut tx, due).await?;
    tx.commit().await?;
    redis_half(state, due).await?;
    sqlx::query("UPDATE revocation_outbox SET done_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&state.db)
        .await?;
    Ok(())
}

async fn record(conn: &mut PgConnection, due: &[Due]) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(due.len());
    for item in due {
        let (kind, subject, hash) = match item {
            Due::Session { id, hash } => ("session", id, Some(hash.as_bytes().to_vec())),
            Due::ApiKey { id } => ("api_key", id, None),
            Due::User { id } => ("user", id, None),
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO revocation_outbox (kind, subject, token_hash) VALUES ($1, $2, $3)
             RETURNING id",
        )
        .bind(kind)
        .bind(subject)
        .bind(hash)
        .fetch_one(&mut *conn)
        .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// The Redis half: evict cached sessions, mark every credential revoked,
/// and tell every ws-node to close their sockets. Idempotent.
async fn redis_half(state: &AppState, due: &[Due]) -> Result<()> {
    if due.is_empty() {
        return Ok(());
    }
    let mut redis = state.redis.clone();
    let hashes: Vec<TokenHash> = due
        .iter()
        .filter_map(|item| match item {
            Due::Session { hash, .. } => Some(*hash),
            _ => None,
        })
        .collect();
    evict_sessions(&mut redis, &state.keys, &hashes).await?;
    let markers: Vec<Revoked> = due
        .iter()
        .map(|item| match *item {
            Due::Session { id, .. } => Revoked::Source(AuthSource::Session { session_id: id }),
            Due::ApiKey { id } => Revoked::Source(AuthSource::ApiKey { key_id: id }),
            Due::User { id } => Revoked::User(id),
        })
        .collect();
    mark_revoked(&mut redis, &state.keys, &markers).await?;
    for marker in markers {
        let message = match marker {
            Revoked::Source(source) => ControlMessage::CredentialRevoked { source },
            Revoked::User(user_id) => ControlMessage::UserDisabled { user_id },
        };
        control::broadcast(&mut redis, &state.keys, &message).await?;
    }
    Ok(())
}

/// Completes pending revocations, a batch at a time, until none is left or
/// Redis fails; returns how many were completed. Rows another process is
/// completing at the same moment are skipped, not waited for.
pub async fn complete_pending(state: &AppState) -> Result<usize> {
    let mut completed = 0;
    loop {
        let mut tx = state.db.begin().await?;
        let rows: Vec<(i64, String, Uuid, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT id, kind, subject, token_hash FROM revocation_outbox
             WHERE done_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(OUTBOX_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(completed);
        }
        let ids: Vec<i64> = rows.iter().map(|(id, ..)| *id).collect();
        let due: Vec<Due> = rows
            .into_iter()
            .filter_map(|(_, kind, subject, hash)| match kind.as_str() {
                "session" => {
                    let hash = <[u8; 32]>::try_from(hash?.as_slice()).ok()?;
                    Some(Due::Session {
                        id: subject,
                        hash: TokenHash::from_bytes(hash),
                    })
                }
                "api_key" => Some(Due::ApiKey { id: subject }),
                "user" => Some(Due::User { id: subject }),
                _ => None,
            })
            .collect();
        redis_half(state, &due).await?;
        sqlx::query("UPDATE revocation_outbox SET done_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        completed += ids.len();
    }
}

/// Runs for as long as the process serves: completes pending revocations
/// every [`OUTBOX_INTERVAL`] (the ones a request could not complete because
/// Redis was unreachable), and deletes done rows after [`OUTBOX_KEEP_DONE`].
pub async fn run_outbox(state: AppState) {
    let mut tick = tokio::time::interval(OUTBOX_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        tick.tick().await;
        match complete_pending(&state).await {
            Ok(0) => {}
            Ok(completed) => tracing::info!(completed, "completed pending revocations in Redis"),
            Err(e) => tracing::debug!(error = %e, "pending revocations wait for Redis"),
        }
        rounds += 1;
        if rounds.is_multiple_of(3600) {
            let deleted = sqlx::query(
                "DELETE FROM revocation_outbox
                 WHERE done_at < now() - make_interval(secs => $1)",
            )
            .bind(OUTBOX_KEEP_DONE.as_secs_f64())
            .execute(&state.db)
            .await;
            if let Err(e) = deleted {
                tracing::debug!(error = %e, "could not delete done revocation rows");
            }
        }
    }
}
