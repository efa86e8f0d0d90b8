//! Turning what a client presented into a [`Candidate`]: a ticket consumed
//! (atomically, once across all nodes) and bound to the page origin that
//! minted it, or a session cookie found in the Redis session cache and sent
//! from an allowed origin. Neither is trusted yet: see [`Principal`].

use crate::error::Error;
use crate::state::NodeState;
use shared::credential::{AuthSource, RevocationCheck, RevocationStatus};
use shared::scope::{Scope, Scopes};
use shared::secret::TokenHash;
use shared::session::SessionRecord;
use shared::ticket::{TakenTicket, TicketClaims};
use uuid::Uuid;

/// Who is on the other end, as established at the handshake: genuine
/// credentials that passed the revocation check. Only
/// [`admit`](super::admission::admit) makes one.
// The private field keeps construction in this module, after the check;
// `#[non_exhaustive]` would only keep it inside the crate.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: Uuid,
    pub username: String,
    pub source: AuthSource,
    pub scopes: Scopes,
    /// When the credential ends (a session's absolute expiry, unix seconds):
    /// the socket closes with 4001 then.
    pub expires_at: Option<u64>,
    /// Keeps construction here, after the check.
    _checked: (),
}

/// A client that presented a genuine credential (a ticket just consumed, or
/// a session found in the cache), which may still have been revoked: only
/// [`admit`](super::admission::admit) turns it into a [`Principal`], with the
/// revocation check in the same round trip as the rest of the admission.
pub enum Candidate {
    Ticket(TakenTicket),
    Session(SessionRecord),
}

impl Candidate {
    pub(super) fn user_id(&self) -> Uuid {
        self.revocation_check().user_id
    }

    pub(super) fn revocation_check(&self) -> RevocationCheck {
        match self {
            Self::Ticket(ticket) => ticket.revocation_check(),
            Self::Session(session) => RevocationCheck {
                source: AuthSource::Session {
                    session_id: session.session_id,
                },
                user_id: session.user_id,
            },
        }
    }

    /// The principal, unless the check found the credential revoked.
    pub(super) fn checked(self, status: RevocationStatus) -> Option<Principal> {
        match self {
            Self::Ticket(ticket) => ticket.verified(status).map(|claims| Principal {
                user_id: claims.user_id,
                username: claims.username,
                source: claims.source,
                scopes: claims.scopes,
                expires_at: claims.credential_expires_at,
                _checked: (),
            }),
            Self::Session(session) => (!status.is_revoked()).then(|| Principal {
                user_id: session.user_id,
                username: session.username,
                source: AuthSource::Session {
                    session_id: session.session_id,
                },
                scopes: Scopes::NONE.with(Scope::Connect).with(Scope::Publish),
                expires_at: Some(session.expires_at),
                _checked: (),
            }),
        }
    }
}

/// Consumes a ticket (atomically, once across all nodes) and checks its binding.
pub async fn consume(
    node: &NodeState,
    ticket: &str,
    origin: Option<&str>,
) -> Result<Candidate, Error> {
    let mut redis = node.redis.clone();
    // Only the atomic take here: the revocation check rides in `admit`'s round trip.
    let candidate = shared::ticket::take_ticket(&mut redis, &node.keys, ticket)
        .await
        .map_err(|e| match e {
            shared::ticket::TicketError::Redis(e) => Error::Unavailable(e),
            shared::ticket::TicketError::Corrupt(_) => Error::InvalidTicket,
        })
        .and_then(|taken| taken.ok_or(Error::InvalidTicket))
        .and_then(|taken| check_binding(taken.unverified_claims(), origin).map(|()| taken))
        .map(Candidate::Ticket);
    let outcome = match &candidate {
        Ok(_) => "consumed",
        Err(e) => e.code(),
    };
    metrics::counter!(crate::telemetry::TICKETS, "outcome" => outcome).increment(1);
    candidate
}

/// Whether a ticket may open a socket from `origin`.
fn check_binding(claims: &TicketClaims, origin: Option<&str>) -> Result<(), Error> {
    // A ticket minted with a cookie carries the minting page's origin; only
    // that origin may use it (a stolen ticket is useless to another site). One
    // minted with a cookie but without an Origin (not a browser: curl, a
    // script) is usable only without one, never from some page.
    let cookie_minted = matches!(claims.source, AuthSource::Session { .. });
    let bound = claims.origin.as_deref();
    if (bound.is_some() || cookie_minted) && origin != bound {
        return Err(Error::OriginMismatch);
    }
    if !claims.scopes.contains(Scope::Connect) {
        return Err(Error::InsufficientScope);
    }
    Ok(())
}

pub async fn session_candidate(
    node: &NodeState,
    cookie: &str,
    origin: Option<&str>,
) -> Result<Candidate, Error> {
    match origin {
        Some(o) if node.origins.allows(o) => {}
        _ => return Err(Error::OriginNotAllowed),
    }
    if !shared::secret::looks_like_token(cookie) {
        return Err(Error::InvalidSession);
    }
    let mut redis = node.redis.clone();
    let session =
        shared::session::read_cached_session(&mut redis, &node.keys, &TokenHash::of(cookie))
            .await?
            .ok_or(Error::InvalidSession)?;
    Ok(Candidate::Session(session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_minted_ticket_only_works_from_its_origin() {
        let claims = TicketClaims {
            user_id: uuid::Uuid::nil(),
            username: "a".into(),
            source: AuthSource::Session {
                session_id: uuid::Uuid::nil(),
            },
            scopes: Scopes::NONE.with(Scope::Connect),
            origin: Some("https://app.example".into()),
            issued_at: 0,
            credential_expires_at: None,
        };
        assert!(check_binding(&claims, Some("https://app.example")).is_ok());
        assert!(matches!(
            check_binding(&claims, Some("https://evil.example")),
            Err(Error::OriginMismatch)
        ));
        assert!(matches!(
            check_binding(&claims, None),
            Err(Error::OriginMismatch)
        ));
        // Minted with the cookie but no Origin (curl): usable without one only.
        let originless = TicketClaims {
            origin: None,
            ..claims.clone()
        };
        assert!(matches!(
            check_binding(&originless, Some("https://anywhere.example")),
            Err(Error::OriginMismatch)
        ));
        assert!(check_binding(&originless, None).is_ok());
        // An API key's ticket is not bound to an origin.
        let from_key = TicketClaims {
            origin: None,
            source: AuthSource::ApiKey {
                key_id: uuid::Uuid::nil(),
            },
            ..claims
        };
        assert!(check_binding(&from_key, Some("https://anywhere.example")).is_ok());
    }
}
