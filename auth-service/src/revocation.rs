//! Revocation, in one place: logging out one session, revoking all of a
//! user's sessions, revoking an API key, disabling a user.
//!
//! Each has two halves. Postgres first: it is the source of truth, and once
//! it says "revoked", auth-service accepts the credential no more. Then
//! Redis, so that the rest of the system stops too:
//!
//! * the revocation markers ([`shared::credential::mark_revoked`]): tickets
//!   the credential minted before are refused at the handshake, and
//!   ws-node's periodic re-validation closes its sockets even if the
//!   broadcast below is lost;
//! * the session cache entries, which ws-node's cookie handshakes read;
//! * a control broadcast that closes the open sockets on every node now.
//!
//! If Redis cannot be reached, the call fails (503) after Postgres already
//! said "revoked"; calling again redoes the Redis half for what Postgres
//! revoked recently, so a retry completes the revocation.

use crate::accounts;
use crate::api_keys;
use crate::error::Result;
use crate::sessions;
use crate::state::AppState;
use shared::control::{self, ControlMessage};
use shared::credential::{AuthSource, Revoked, mark_revoked};
use shared::secret::TokenHash;
use shared::session::evict_sessions;
use uuid::Uuid;

/// Revokes one session of `user_id` everywhere. Returns whether it was live
/// until now (`false` also when there is no such session). The Redis half is
/// redone even for a session Postgres already has as revoked.
pub async fn revoke_session(state: &AppState, user_id: Uuid, session_id: Uuid) -> Result<bool> {
    let Some((hash, was_live)) = sessions::mark_revoked(&state.db, user_id, session_id).await?
    else {
        return Ok(false);
    };
    forget_sessions(state, &[(session_id, hash)]).await?;
    Ok(was_live)
}

/// Revokes every live session of a user (logs them out everywhere); returns
/// how many were live.
pub async fn revoke_all_sessions(state: &AppState, user_id: Uuid) -> Result<usize> {
    let (revoked, recent) =
        sessions::mark_all_revoked(&state.db, user_id, state.config.session_idle_timeout_secs)
            .await?;
    forget_sessions(state, &recent).await?;
    Ok(revoked)
}

/// Revokes an API key (of `owner`, when given) everywhere, and forgets it
/// in this process at once (other processes trust their cache for at most
/// `API_KEY_CACHE_MS`). Returns whether a live key was revoked.
pub async fn revoke_api_key(state: &AppState, key_id: Uuid, owner: Option<Uuid>) -> Result<bool> {
    let Some((hash, _)) = api_keys::revoke(&state.db, key_id, owner).await? else {
        return Ok(false);
    };
    state.api_keys.forget(hash).await;
    let source = AuthSource::ApiKey { key_id };
    let mut redis = state.redis.clone();
    mark_revoked(&mut redis, &state.keys, &[Revoked::Source(source)]).await?;
    control::broadcast(
        &mut redis,
        &state.keys,
        &ControlMessage::CredentialRevoked { source },
    )
    .await?;
    Ok(true)
}

/// Disables a user everywhere: no more logins, sessions revoked, API keys and
/// outstanding tickets refused, open sockets closed.
pub async fn disable_user(state: &AppState, user_id: Uuid) -> Result<()> {
    accounts::set_disabled(&state.db, user_id).await?;
    revoke_all_sessions(state, user_id).await?;
    let mut redis = state.redis.clone();
    mark_revoked(&mut redis, &state.keys, &[Revoked::User(user_id)]).await?;
    control::broadcast(
        &mut redis,
        &state.keys,
        &ControlMessage::UserDisabled { user_id },
    )
    .await?;
    Ok(())
}

/// The Redis half for sessions Postgres has revoked: evict them from the
/// cache, mark them revoked, and close their sockets on every node.
async fn forget_sessions(state: &AppState, revoked: &[(Uuid, TokenHash)]) -> Result<()> {
    if revoked.is_empty() {
        return Ok(());
    }
    let hashes: Vec<TokenHash> = revoked.iter().map(|(_, hash)| *hash).collect();
    let mut redis = state.redis.clone();
    evict_sessions(&mut redis, &state.keys, &hashes).await?;
    let sources: Vec<AuthSource> = revoked
        .iter()
        .map(|&(session_id, _)| AuthSource::Session { session_id })
        .collect();
    let markers: Vec<Revoked> = sources.iter().copied().map(Revoked::Source).collect();
    mark_revoked(&mut redis, &state.keys, &markers).await?;
    for source in sources {
        control::broadcast(
            &mut redis,
            &state.keys,
            &ControlMessage::CredentialRevoked { source },
        )
        .await?;
    }
    Ok(())
}
