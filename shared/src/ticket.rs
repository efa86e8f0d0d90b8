//! WebSocket tickets: short-lived, single-use secrets minted by auth-service
//! and consumed by ws-node at the handshake.
//!
//! The ticket itself is 256 random bits handed to the client once; Redis stores
//! only its SHA-256 as the key, with the claims as the value and a TTL of at
//! most 30 s. Consumption is a single `GETDEL`, so of any number of concurrent
//! handshakes presenting one ticket, across any number of nodes, exactly one
//! gets the claims.

use crate::credential::{AuthSource, RevocationStatus};
use crate::keys::RedisKeys;
use crate::scope::Scopes;
use crate::secret::{Secret, TokenHash, looks_like_token, random_token};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// The longest ticket lifetime the system allows: a ticket is for the
/// connection attempt it was minted for, not a second credential.
pub const MAX_TICKET_TTL: Duration = Duration::from_secs(30);

/// What a consumed ticket proves about the connecting client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    pub user_id: Uuid,
    pub username: String,
    pub source: AuthSource,
    pub scopes: Scopes,
    /// The `Origin` of the request that minted the ticket (cookie minting only):
    /// the handshake must come from the same origin.
    pub origin: Option<String>,
    /// Unix seconds.
    pub issued_at: u64,
    /// When the credential itself ends (a session's absolute expiry, unix
    /// seconds); a socket opened with the ticket closes then. `None`: no end (API keys).
    #[serde(default)]
    pub credential_expires_at: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("ticket record is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Mints a ticket: adds the `SET` that stores `claims` under a fresh ticket to
/// `pipe` (its reply is ignored, so minting shares a round trip with rate
/// limiting) and returns the ticket, to be shown to the client once.
pub fn add_ticket(
    pipe: &mut redis::Pipeline,
    keys: &RedisKeys,
    claims: &TicketClaims,
    ttl: Duration,
) -> Result<Secret, TicketError> {
    let ticket = random_token();
    let record = serde_json::to_string(claims)?;
    pipe.cmd("SET")
        .arg(keys.ticket(&TokenHash::of(&ticket)))
        .arg(record)
        .arg("PX")
        .arg(ttl_millis(ttl))
        .ignore();
    Ok(Secret::new(ticket))
}

/// Deletes a stored ticket (a ticket minted in a pipeline that turned out to be over a limit).
pub fn add_ticket_removal(pipe: &mut redis::Pipeline, keys: &RedisKeys, ticket: &Secret) {
    pipe.cmd("DEL")
        .arg(keys.ticket(&TokenHash::of(ticket.expose())))
        .ignore();
}

/// Clamps a TTL into 1 ms ..= [`MAX_TICKET_TTL`].
pub fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.min(MAX_TICKET_TTL).as_millis())
        .unwrap_or(1)
        .max(1)
}

/// Consumes a ticket atomically and checks its credential: returns its
/// claims the first time, `None` ever after (and for anything that is not a
/// ticket at all, without asking Redis). A ticket whose credential or user was
/// revoked after minting is consumed and refused.
pub async fn consume_ticket(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    ticket: &str,
) -> Result<Option<TicketClaims>, TicketError> {
    let Some(taken) = take_ticket(conn, keys, ticket).await? else {
        return Ok(None);
    };
    let status = taken.revocation_check().ask(conn, keys).await?;
    Ok(taken.verified(status))
}

/// The atomic half of [`consume_ticket`]: `GETDEL` of the hashed ticket. What
/// it returns gives up its claims only against the answer to its
/// [`RevocationCheck`](crate::credential::RevocationCheck), which a caller can
/// put in a pipeline of its own (ws-node asks it in the same round trip as
/// the rest of its admission).
pub async fn take_ticket(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &RedisKeys,
    ticket: &str,
) -> Result<Option<TakenTicket>, TicketError> {
    if !looks_like_token(ticket) {
        return Ok(None);
    }
    let record: Option<String> = redis::cmd("GETDEL")
        .arg(keys.ticket(&TokenHash::of(ticket)))
        .query_async(conn)
        .await?;
    Ok(record
        .map(|r| serde_json::from_str(&r))
        .transpose()?
        .map(TakenTicket))
}

/// A ticket taken from Redis: genuine, unexpired and now used up, but its
/// credential may have been revoked since it was minted.
#[derive(Debug)]
pub struct TakenTicket(TicketClaims);

impl TakenTicket {
    /// The claims, to decide on before the revocation check (origin binding,
    /// scopes); not to act on.
    pub fn unverified_claims(&self) -> &TicketClaims {
        &self.0
    }

    /// What must be asked of Redis before the claims can be trusted.
    pub fn revocation_check(&self) -> crate::credential::RevocationCheck {
        crate::credential::RevocationCheck {
            source: self.0.source,
            user_id: self.0.user_id,
        }
    }

    /// The claims, if the check found nothing revoked.
    pub fn verified(self, status: RevocationStatus) -> Option<TicketClaims> {
        (!status.is_revoked()).then_some(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Scope;

    #[test]
    fn claims_serialise_with_tagged_source() {
        let claims = TicketClaims {
            user_id: Uuid::nil(),
            username: "ann".into(),
            source: AuthSource::ApiKey {
                key_id: Uuid::nil(),
            },
            scopes: Scopes::NONE.with(Scope::Connect),
            origin: None,
            issued_at: 1,
            credential_expires_at: None,
        };
        let json = serde_json::to_value(&claims).expect("json");
        assert_eq!(json["source"]["kind"], "api_key");
        assert_eq!(json["scopes"], serde_json::json!(["connect"]));
        let back: TicketClaims = serde_json::from_value(json).expect("json");
        assert_eq!(back, claims);
    }

    #[test]
    fn ttl_is_capped() {
        assert_eq!(ttl_millis(Duration::from_secs(3600)), 30_000);
        assert_eq!(ttl_millis(Duration::ZERO), 1);
    }
}
