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

use crate::connection;
use crate::error::Error;
use crate::hub::ConnId;
use crate::limits::{PendingRefusal, PendingSlot};
use crate::state::NodeState;
use crate::stream::{ClientStream, Socket};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use shared::credential::AuthSource;
use shared::credential::{RevocationCheck, RevocationStatus};
use shared::scope::{Scope, Scopes};
use shared::secret::TokenHash;
use shared::session::SessionRecord;
use shared::ticket::{TakenTicket, TicketClaims};
use std::net::{IpAddr, SocketAddr};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use uuid::Uuid;

/// The subprotocol prefix that carries a ticket.
pub const TICKET_PROTOCOL_PREFIX: &str = "ticket.";

/// What authenticating an upgrade needs from its request, however the request
/// was read: by [`crate::server`] from a connection's first bytes, or by hyper
/// (see [`upgrade`]).
#[derive(Debug)]
pub struct UpgradeRequest {
    peer: SocketAddr,
    /// The entry our proxy appended to `X-Forwarded-For`, if any: the
    /// client's address when `TRUST_PROXY_HEADERS` is on.
    forwarded_for: Option<IpAddr>,
    /// `Sec-WebSocket-Key`, if this is a WebSocket upgrade at all (a `GET`
    /// over HTTP/1.1 with `Upgrade: websocket`, `Connection: upgrade` and
    /// `Sec-WebSocket-Version: 13`).
    websocket_key: Option<Vec<u8>>,
    origin: Option<String>,
    protocol_ticket: Option<String>,
    query_ticket: Option<String>,
    session_cookie: Option<String>,
}

impl UpgradeRequest {
    /// Reads the request's parts; `get_http11` says whether its method and
    /// version allow an upgrade, and `cookie_name` names the session cookie.
    pub fn new<'h>(
        peer: SocketAddr,
        get_http11: bool,
        query: Option<&str>,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        cookie_name: &str,
    ) -> Self {
        let (mut upgrade, mut connection, mut version) = (false, false, false);
        let mut request = Self {
            peer,
            forwarded_for: None,
            websocket_key: None,
            origin: None,
            protocol_ticket: None,
            query_ticket: query.and_then(ticket_from_query).map(str::to_owned),
            session_cookie: None,
        };
        let mut key = None;
        let mut forwarded_for = None;
        for (name, value) in headers {
            let text = std::str::from_utf8(value).ok();
            if name.eq_ignore_ascii_case("upgrade") {
                upgrade |= value.eq_ignore_ascii_case(b"websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                connection |= text.is_some_and(|t| {
                    t.split(',')
                        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
                });
            } else if name.eq_ignore_ascii_case("sec-websocket-version") {
                version |= value == b"13";
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                key.get_or_insert_with(|| value.to_vec());
            } else if name.eq_ignore_ascii_case("origin") {
                if request.origin.is_none() {
                    request.origin = text.map(str::to_owned);
                }
            } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                if request.protocol_ticket.is_none() {
                    request.protocol_ticket = text.and_then(|t| {
                        t.split(',')
                            .find_map(|p| p.trim().strip_prefix(TICKET_PROTOCOL_PREFIX))
                            .map(str::to_owned)
                    });
                }
            } else if name.eq_ignore_ascii_case("cookie") && request.session_cookie.is_none() {
                request.session_cookie = text.and_then(|t| session_cookie(t, cookie_name));
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                forwarded_for = Some(value);
            }
        }
        request.forwarded_for = shared::net::last_forwarded_for(forwarded_for);
        if get_http11 && upgrade && connection && version {
            request.websocket_key = key;
        }
        request
    }

    /// The client's address: the socket's peer, or behind our own proxy
    /// (`trust_proxy_headers`) the address the proxy saw.
    pub fn client_ip(&self, trust_proxy_headers: bool) -> IpAddr {
        match self.forwarded_for {
            Some(ip) if trust_proxy_headers => ip,
            _ => self.peer.ip(),
        }
    }
}

/// A handshake that passed: what to answer, and whom the socket then serves.
pub struct Accepted {
    node: NodeState,
    accept_key: String,
    /// The subprotocol echoed back (the ticket's, when it came that way).
    protocol: Option<String>,
    then: Then,
}

enum Then {
    /// Authenticated and admitted: the connection is served at once.
    Serve {
        admitted: Admitted,
        principal: Principal,
    },
    /// No credential yet: the socket waits for its `auth` frame.
    AwaitAuth {
        origin: Option<String>,
        slot: PendingSlot,
    },
}

impl Accepted {
    /// The headers of the `101 Switching Protocols` answer, whichever way it
    /// is written.
    fn answer_headers(&self) -> impl Iterator<Item = (HeaderName, &str)> {
        [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, "websocket"),
            (header::SEC_WEBSOCKET_ACCEPT, self.accept_key.as_str()),
        ]
        .into_iter()
        .chain(
            self.protocol
                .as_deref()
                .map(|protocol| (header::SEC_WEBSOCKET_PROTOCOL, protocol)),
        )
    }

    /// The answer's head, for writing by hand.
    pub fn head(&self) -> Vec<u8> {
        let mut head = String::from("HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in self.answer_headers() {
            head.push_str(name.as_str());
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// The same answer as a response, for hyper to write.
    fn response(&self) -> Result<Response, Error> {
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        for (name, value) in self.answer_headers() {
            // Only a subprotocol (the ticket, as the client sent it) could
            // hold bytes a header value may not.
            let value = HeaderValue::from_str(value).map_err(|_| Error::InvalidTicket)?;
            response.headers_mut().insert(name, value);
        }
        Ok(response)
    }

    /// Whether the server speaks first on this socket (the `welcome` frame),
    /// so the head can wait for that frame and leave with it in one write.
    /// A socket awaiting its `auth` frame gets the head at once: the client
    /// sends nothing before it.
    pub fn server_speaks_first(&self) -> bool {
        matches!(self.then, Then::Serve { .. })
    }

    /// Opens the WebSocket over `stream`, which has been answered (or will
    /// be, by the first frame written).
    pub async fn open(self, stream: ClientStream) -> Opened {
        let config = socket_config(&self.node.config);
        let socket: Socket =
            WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
        let node = self.node;
        match self.then {
            Then::Serve {
                admitted,
                principal,
            } => Opened::Authenticated {
                node,
                socket,
                id: admitted.hand_over(),
                principal,
            },
            Then::AwaitAuth { origin, slot } => Opened::AwaitingAuth {
                node,
                socket,
                origin,
                slot,
            },
        }
    }
}

/// An open WebSocket and whom it serves: what [`connection::run`] or
/// [`connection::run_unauthenticated`] takes.
pub enum Opened {
    Authenticated {
        node: NodeState,
        socket: Socket,
        id: ConnId,
        principal: Principal,
    },
    AwaitingAuth {
        node: NodeState,
        socket: Socket,
        origin: Option<String>,
        slot: PendingSlot,
    },
}

impl Opened {
    /// Serves the socket until it closes. (The accept path matches on
    /// `Opened` itself instead, to keep its long-lived task small: see
    /// [`crate::server`].)
    pub async fn serve(self) {
        match self {
            Self::Authenticated {
                node,
                socket,
                id,
                principal,
            } => connection::run(node, socket, id, principal).await,
            Self::AwaitingAuth {
                node,
                socket,
                origin,
                slot,
            } => connection::run_unauthenticated(node, socket, origin, slot).await,
        }
    }
}

/// Authenticates an upgrade request and counts the outcome.
pub async fn authenticate(node: &NodeState, request: UpgradeRequest) -> Result<Accepted, Error> {
    let result = decide(node, request).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) => e.code(),
    };
    metrics::counter!(crate::telemetry::HANDSHAKES, "outcome" => outcome).increment(1);
    result
}

/// `GET /ws` when hyper read the request: a later request on a kept-alive
/// connection (proxies reuse theirs), or one that [`crate::server`] left to
/// hyper. The common case, a connection's first request, never gets here.
pub async fn upgrade(
    State(node): State<NodeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let request = UpgradeRequest::new(
        peer,
        parts.method == Method::GET && parts.version == Version::HTTP_11 && on_upgrade.is_some(),
        parts.uri.query(),
        parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
        node.config.cookie_name(),
    );
    let accepted = match authenticate(&node, request).await {
        Ok(accepted) => accepted,
        Err(e) => return e.into_response(),
    };
    // Never `None` here: an upgrade without it is not a WebSocket request.
    let Some(on_upgrade) = on_upgrade else {
        return Error::NotWebSocket.into_response();
    };
    let response = match accepted.response() {
        Ok(response) => response,
        Err(e) => return e.into_response(),
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                accepted
                    .open(ClientStream::upgraded(upgraded))
                    .await
                    .serve()
                    .await
            }
            // Dropping `accepted` releases the admission.
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    response
}

async fn decide(node: &NodeState, request: UpgradeRequest) -> Result<Accepted, Error> {
    let client_ip = request.client_ip(node.config.trust_proxy_headers);
    let key = request.websocket_key.ok_or(Error::NotWebSocket)?;
    if node.is_draining() {
        return Err(Error::Draining);
    }
    // Without a live subscription the socket could receive nothing (its user
    // channel cannot be joined): refuse now, before a ticket is spent.
    if !*node.subscribed.borrow() {
        return Err(Error::NotSubscribed);
    }
    let accept_key = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let origin = request.origin;
    let accepted = |protocol, then| Accepted {
        node: node.clone(),
        accept_key,
        protocol,
        then,
    };

    if let Some(ticket) = request.protocol_ticket {
        let candidate = consume(node, &ticket, origin.as_deref()).await?;
        let (admitted, principal) = admit(node, candidate).await?;
        let echoed = format!("{TICKET_PROTOCOL_PREFIX}{ticket}");
        return Ok(accepted(
            Some(echoed),
            Then::Serve {
                admitted,
                principal,
            },
        ));
    }
    let candidate = if let Some(ticket) = &request.query_ticket {
        Some(consume(node, ticket, origin.as_deref()).await?)
    } else if let Some(cookie) = &request.session_cookie {
        Some(session_candidate(node, cookie, origin.as_deref()).await?)
    } else {
        None
    };
    if let Some(candidate) = candidate {
        let (admitted, principal) = admit(node, candidate).await?;
        return Ok(accepted(
            None,
            Then::Serve {
                admitted,
                principal,
            },
        ));
    }
    let slot = node
        .pending_auth
        .try_acquire(
            client_ip,
            node.config.max_pending_auth_per_ip,
            node.config.max_pending_auth,
        )
        .map_err(|refusal| {
            metrics::counter!(crate::telemetry::PENDING_AUTH_REFUSED, "limit" => match refusal {
                PendingRefusal::PerIp => "ip",
                PendingRefusal::PerNode => "node",
            })
            .increment(1);
            Error::TooManyPending
        })?;
    Ok(accepted(None, Then::AwaitAuth { origin, slot }))
}

/// The socket settings of DESIGN §5 and §7: a small read buffer
/// (`WS_READ_BUFFER_BYTES`; tungstenite's default is 128 KiB), bounded write
/// buffering, the message size limit; no permessage-deflate (never negotiated).
fn socket_config(config: &crate::config::Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(usize::try_from(config.ws_read_buffer_bytes).unwrap_or(4096))
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(config.max_message_bytes * 4)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes))
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

/// Who is on the other end, as established at the handshake: genuine
/// credentials that passed the revocation check. Only [`admit`] makes one.
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
/// [`admit`] turns it into a [`Principal`], with the revocation check in the
/// same round trip as the rest of the admission.
pub(crate) enum Candidate {
    Ticket(TakenTicket),
    Session(SessionRecord),
}

impl Candidate {
    fn user_id(&self) -> Uuid {
        self.revocation_check().user_id
    }

    fn revocation_check(&self) -> RevocationCheck {
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
    fn checked(self, status: RevocationStatus) -> Option<Principal> {
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

/// The last checks before a candidate gets a socket, in one Redis round
/// trip: the credential has not been revoked since the ticket was minted (or
/// the session cached), and the user is under the cluster-wide connection
/// cap. It also registers the connection (per-user slot, directory entry); a
/// refusal undoes that, and so does dropping the answer (or this future,
/// mid-way) unserved.
pub(crate) async fn admit(
    node: &NodeState,
    candidate: Candidate,
) -> Result<(Admitted, Principal), Error> {
    let id = node.new_connection_id();
    let name = node.connection_name(id);
    let user_id = candidate.user_id();
    // Armed before the round trip: should this future be dropped while Redis
    // answers, the guard still removes what the pipeline wrote.
    let admitted = Admitted {
        node: node.clone(),
        id,
        user_id,
        settled: false,
    };
    let lease = node.config.connection_lease();
    let mut pipe = redis::pipe();
    candidate.revocation_check().add_to(&mut pipe, &node.keys);
    shared::connections::add_slot_acquisition(&mut pipe, &node.keys, user_id, &name, lease);
    let own_channel = shared::channel::ChannelName::for_user(user_id);
    connection::add_directory_entry(
        &mut pipe,
        node,
        &name,
        user_id,
        shared::unix_now(),
        &[own_channel.as_str()],
    );
    let mut redis = node.redis.clone();
    let (revoked, disabled, connections): (bool, bool, u64) = pipe.query_async(&mut redis).await?;
    let Some(principal) = candidate.checked(RevocationCheck::read(revoked, disabled)) else {
        admitted.release().await;
        return Err(Error::InvalidTicket);
    };
    if connections > u64::from(node.config.max_connections_per_user) {
        admitted.release().await;
        return Err(Error::TooManyConnections);
    }
    Ok((admitted, principal))
}

/// Consumes a ticket (atomically, once across all nodes) and checks its binding.
pub(crate) async fn consume(
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

async fn session_candidate(
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

/// The value of the first `ticket` query parameter.
fn ticket_from_query(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "ticket")
        .map(|(_, value)| value)
}

/// The value of the cookie `name` in a `Cookie` header.
fn session_cookie(header: &str, name: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(get_http11: bool, query: &str, headers: &[(&str, &str)]) -> UpgradeRequest {
        UpgradeRequest::new(
            "127.0.0.1:1".parse().expect("addr"),
            get_http11,
            Some(query),
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            "session",
        )
    }

    const UPGRADE: [(&str, &str); 4] = [
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn an_upgrade_needs_every_header_of_one_and_http_1_1() {
        let request = parse(true, "", &UPGRADE);
        assert_eq!(
            request.websocket_key.as_deref(),
            Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..])
        );
        assert!(parse(false, "", &UPGRADE).websocket_key.is_none());
        for (missing, (name, _)) in UPGRADE.iter().enumerate() {
            let mut headers = UPGRADE.to_vec();
            headers.remove(missing);
            assert!(
                parse(true, "", &headers).websocket_key.is_none(),
                "without {name}"
            );
        }
        let mut old_version = UPGRADE.to_vec();
        old_version[2].1 = "8";
        assert!(parse(true, "", &old_version).websocket_key.is_none());
    }

    #[test]
    fn reads_the_credentials_wherever_they_are() {
        let mut headers = UPGRADE.to_vec();
        headers.extend([
            ("sec-websocket-protocol", "chat"),
            ("sec-websocket-protocol", "json, ticket.abc"),
            ("cookie", "theme=dark; session=\"s3cret\""),
            ("ORIGIN", "https://app.example"),
        ]);
        let request = parse(true, "x=1&ticket=q", &headers);
        assert_eq!(request.protocol_ticket.as_deref(), Some("abc"));
        assert_eq!(request.query_ticket.as_deref(), Some("q"));
        assert_eq!(request.session_cookie.as_deref(), Some("s3cret"));
        assert_eq!(request.origin.as_deref(), Some("https://app.example"));
        let bare = parse(true, "", &UPGRADE);
        assert!(bare.protocol_ticket.is_none() && bare.query_ticket.is_none());
        assert!(bare.session_cookie.is_none() && bare.origin.is_none());
    }

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
