//! `GET /ws`: authenticating a WebSocket before accepting it.
//!
//! Three ways in (DESIGN §3), tried in this order:
//! 1. a ticket, in the `Sec-WebSocket-Protocol: ticket.<ticket>` subprotocol
//!    (kept out of URLs and logs; echoed back on success) or `?ticket=`;
//!    consumed atomically, so it works exactly once across all nodes;
//! 2. the session cookie, read from the Redis session cache, and only with an
//!    `Origin` in `ALLOWED_ORIGINS` (exact match; missing or `null` refused),
//!    which stops cross-site WebSocket hijacking;
//! 3. neither: the socket is accepted unauthenticated and must send
//!    `{"action":"auth","ticket":…}` within the auth timeout; such sockets are
//!    capped per IP and per node.
//!
//! Everything that can be refused is refused before the upgrade, with a JSON
//! body. If Redis cannot be asked, the answer is 503: the node fails closed.

use crate::connection::{self, Principal};
use crate::error::Error;
use crate::hub::ConnId;
use crate::limits::PendingRefusal;
use crate::state::NodeState;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use shared::scope::{Scope, Scopes};
use shared::secret::TokenHash;
use shared::ticket::{AuthSource, TicketClaims};
use std::net::SocketAddr;

/// The subprotocol prefix that carries a ticket.
pub const TICKET_PROTOCOL_PREFIX: &str = "ticket.";

pub async fn upgrade(
    State(node): State<NodeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let result = authenticate(&node, peer, query.as_deref(), &headers, ws).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) => e.code(),
    };
    metrics::counter!("ws_handshakes_total", "outcome" => outcome).increment(1);
    match result {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn authenticate(
    node: &NodeState,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let ws = ws.map_err(|_| Error::NotWebSocket)?;
    if node.is_draining() {
        return Err(Error::Draining);
    }
    // Without a live subscription the socket could receive nothing (its user
    // channel cannot be joined): refuse now, before a ticket is spent.
    if !*node.subscribed.borrow() {
        return Err(Error::NotSubscribed);
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let protocol_ticket = ws
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .find_map(|p| p.strip_prefix(TICKET_PROTOCOL_PREFIX))
        .map(str::to_owned);
    let ws = configure(ws, &node.config);

    if let Some(ticket) = protocol_ticket {
        let principal = consume(node, &ticket, origin.as_deref()).await?;
        let mut ws = ws;
        let echoed = HeaderValue::from_str(&format!("{TICKET_PROTOCOL_PREFIX}{ticket}"))
            .map_err(|_| Error::InvalidTicket)?;
        ws.set_selected_protocol(echoed);
        return accept(node, ws, principal).await;
    }
    if let Some(ticket) = query.and_then(ticket_from_query) {
        let principal = consume(node, ticket, origin.as_deref()).await?;
        return accept(node, ws, principal).await;
    }
    if let Some(cookie) = session_cookie(headers, node.config.cookie_name()) {
        let principal = session_principal(node, &cookie, origin.as_deref()).await?;
        return accept(node, ws, principal).await;
    }
    let slot = node
        .pending_auth
        .try_acquire(
            peer.ip(),
            node.config.max_pending_auth_per_ip,
            node.config.max_pending_auth,
        )
        .map_err(|refusal| {
            metrics::counter!("ws_pending_auth_refused_total", "limit" => match refusal {
                PendingRefusal::PerIp => "ip",
                PendingRefusal::PerNode => "node",
            })
            .increment(1);
            Error::TooManyPending
        })?;
    let node = node.clone();
    Ok(ws.on_upgrade(move |socket| connection::run_unauthenticated(node, socket, origin, slot)))
}

/// The socket settings of DESIGN §5 and §7: a small read buffer
/// (`WS_READ_BUFFER_BYTES`; tungstenite's default is 128 KiB), bounded write
/// buffering, the message size limit; no permessage-deflate (never negotiated).
fn configure(ws: WebSocketUpgrade, config: &crate::config::Config) -> WebSocketUpgrade {
    ws.read_buffer_size(usize::try_from(config.ws_read_buffer_bytes).unwrap_or(4096))
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(config.max_message_bytes * 4)
        .max_message_size(config.max_message_bytes)
        .max_frame_size(config.max_message_bytes)
}

/// Admits an authenticated principal, then upgrades.
async fn accept(
    node: &NodeState,
    ws: WebSocketUpgrade,
    principal: Principal,
) -> Result<Response, Error> {
    let admitted = admit(node, &principal).await?;
    Ok(ws.on_upgrade(move |socket| {
        let node = admitted.node.clone();
        connection::run(node, socket, admitted.hand_over(), principal)
    }))
}

/// A connection whose per-user slot and directory entry are written (or on
/// their way to Redis) but that no connection task serves yet. Dropped in that
/// state (the client went away and hyper cancelled the handshake while it
/// waited for Redis, or before the upgrade completed) it releases the entries
/// at once, instead of letting them hold a place under the per-user cap until
/// their lease runs out.
pub(crate) struct Admitted {
    node: NodeState,
    id: ConnId,
    user_id: uuid::Uuid,
    settled: bool,
}

impl Admitted {
    /// The connection's id, for `connection::run`, which from now on owns
    /// the entries (and removes them when the socket closes).
    pub(crate) fn hand_over(mut self) -> ConnId {
        self.settled = true;
        self.id
    }

    /// Removes the entries now (a refusal), before the client is answered.
    async fn release(mut self) {
        self.settled = true;
        self.forget().await;
    }

    /// Removing the entries.
    fn forget(&self) -> impl Future<Output = ()> + Send + 'static {
        let name = self.node.connection_name(self.id);
        connection::forget_connection(self.node.clone(), self.user_id, name)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.settled {
            let (forget, cleanup) = (self.forget(), self.node.cleanups.start());
            tokio::spawn(async move {
                forget.await;
                drop(cleanup);
            });
        }
    }
}

/// The last checks before a principal gets a socket, in one Redis round trip:
/// the credential has not been revoked since the ticket was minted, and the user
/// is under the cluster-wide connection cap. It also registers the connection
/// (per-user slot, directory entry); a refusal undoes that, and so does
/// dropping the answer (or this future, mid-way) unserved.
pub(crate) async fn admit(node: &NodeState, principal: &Principal) -> Result<Admitted, Error> {
    let id = node.new_connection_id();
    let name = node.connection_name(id);
    // Armed before the round trip: should this future be dropped while Redis
    // answers, the guard still removes what the pipeline wrote.
    let admitted = Admitted {
        node: node.clone(),
        id,
        user_id: principal.user_id,
        settled: false,
    };
    let lease = node.config.connection_lease();
    let mut pipe = redis::pipe();
    shared::control::add_revocation_check(
        &mut pipe,
        &node.keys,
        principal.source,
        principal.user_id,
    );
    crate::limits::add_slot_acquisition(&mut pipe, &node.keys, principal.user_id, &name, lease);
    let own_channel = shared::channel::ChannelName::for_user(principal.user_id);
    connection::add_directory_entry(
        &mut pipe,
        node,
        &name,
        principal.user_id,
        shared::unix_now(),
        &[own_channel.as_str()],
    );
    let mut redis = node.redis.clone();
    let (revoked, disabled, connections): (bool, bool, u64) = pipe.query_async(&mut redis).await?;
    let refusal = if revoked || disabled {
        Some(Error::InvalidTicket)
    } else if connections > u64::from(node.config.max_connections_per_user) {
        Some(Error::TooManyConnections)
    } else {
        None
    };
    if let Some(refusal) = refusal {
        admitted.release().await;
        return Err(refusal);
    }
    Ok(admitted)
}

/// Consumes a ticket (atomically, once across all nodes) and checks its binding.
pub async fn consume(
    node: &NodeState,
    ticket: &str,
    origin: Option<&str>,
) -> Result<Principal, Error> {
    let mut redis = node.redis.clone();
    // Only the atomic take here: the revocation check rides in `admit`'s round trip.
    let claims = shared::ticket::take_ticket(&mut redis, &node.keys, ticket)
        .await
        .map_err(|e| match e {
            shared::ticket::TicketError::Redis(e) => Error::Unavailable(e),
            shared::ticket::TicketError::Corrupt(_) => Error::InvalidTicket,
        })?
        .ok_or(Error::InvalidTicket)?;
    principal_from_ticket(claims, origin)
}

fn principal_from_ticket(claims: TicketClaims, origin: Option<&str>) -> Result<Principal, Error> {
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
    Ok(Principal {
        user_id: claims.user_id,
        username: claims.username,
        source: claims.source,
        scopes: claims.scopes,
        expires_at: claims.credential_expires_at,
    })
}

async fn session_principal(
    node: &NodeState,
    cookie: &str,
    origin: Option<&str>,
) -> Result<Principal, Error> {
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
    Ok(Principal {
        user_id: session.user_id,
        username: session.username,
        source: AuthSource::Session {
            session_id: session.session_id,
        },
        scopes: Scopes::NONE.with(Scope::Connect).with(Scope::Publish),
        expires_at: Some(session.expires_at),
    })
}

/// The value of the first `ticket` query parameter.
fn ticket_from_query(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "ticket")
        .map(|(_, value)| value)
}

fn session_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_ticket_parameter() {
        assert_eq!(ticket_from_query("ticket=abc"), Some("abc"));
        assert_eq!(ticket_from_query("x=1&ticket=abc&ticket=def"), Some("abc"));
        assert_eq!(ticket_from_query("tickets=abc"), None);
    }

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
        assert!(principal_from_ticket(claims.clone(), Some("https://app.example")).is_ok());
        assert!(matches!(
            principal_from_ticket(claims.clone(), Some("https://evil.example")),
            Err(Error::OriginMismatch)
        ));
        assert!(matches!(
            principal_from_ticket(claims.clone(), None),
            Err(Error::OriginMismatch)
        ));
        // Minted with the cookie but no Origin (curl): usable without one only.
        let originless = TicketClaims {
            origin: None,
            ..claims.clone()
        };
        assert!(matches!(
            principal_from_ticket(originless.clone(), Some("https://anywhere.example")),
            Err(Error::OriginMismatch)
        ));
        assert!(principal_from_ticket(originless, None).is_ok());
        // An API key's ticket is not bound to an origin.
        let from_key = TicketClaims {
            origin: None,
            source: AuthSource::ApiKey {
                key_id: uuid::Uuid::nil(),
            },
            ..claims
        };
        assert!(principal_from_ticket(from_key, Some("https://anywhere.example")).is_ok());
    }
}
