//! `GET /ws`: authenticating a WebSocket before accepting it.
//!
//! Three ways in, tried in this order:
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
//!
//! * [`request`]: reading the upgrade request.
//! * [`credentials`]: a ticket or session cookie becomes a [`Candidate`].
//! * [`admission`]: the revocation check and the per-user cap make it a
//!   [`Principal`], and register the connection.
//! * [`first_message`]: a socket opened without credentials, until its
//!   `auth` frame.
//! * [`pending`]: the caps on such sockets.

pub mod admission;
pub mod credentials;
pub mod first_message;
pub mod pending;
pub mod request;

pub use admission::Admitted;
pub use credentials::{Candidate, Principal};
pub use request::{TICKET_PROTOCOL_PREFIX, UpgradeRequest};

use crate::cluster::hub::ConnId;
use crate::error::Error;
use crate::state::NodeState;
use crate::transport::stream::{ClientStream, Socket};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pending::{PendingRefusal, PendingSlot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

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
    pub fn response(&self) -> Result<Response, Error> {
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

/// An open WebSocket and whom it serves: a principal, for `session::run`, or
/// nobody yet, for [`first_message::authenticate`].
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

async fn decide(node: &NodeState, request: UpgradeRequest) -> Result<Accepted, Error> {
    let client_ip = request.client_ip(node.config.common.trust_proxy_headers);
    let key = request.websocket_key?;
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
        let candidate = credentials::consume(node, &ticket, origin.as_deref()).await?;
        let (admitted, principal) = admission::admit(node, candidate).await?;
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
        Some(credentials::consume(node, ticket, origin.as_deref()).await?)
    } else if let Some(cookie) = &request.session_cookie {
        Some(credentials::session_candidate(node, cookie, origin.as_deref()).await?)
    } else {
        None
    };
    if let Some(candidate) = candidate {
        let (admitted, principal) = admission::admit(node, candidate).await?;
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

/// The socket settings: a small read buffer (`WS_READ_BUFFER_BYTES`, about
/// what an idle connection keeps for reading; tungstenite's default is
/// 128 KiB), bounded write buffering, the message size limit; no
/// permessage-deflate (never negotiated).
fn socket_config(config: &crate::config::Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(usize::try_from(config.ws_read_buffer_bytes).unwrap_or(4096))
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(config.max_message_bytes * 4)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes))
}
