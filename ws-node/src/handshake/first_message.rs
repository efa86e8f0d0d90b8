//! A socket opened without credentials: it must send
//! `{"action":"auth","ticket":…}` within `AUTH_TIMEOUT_MS`, and is admitted
//! like any other once it has. Until then it holds a [`PendingSlot`], so a
//! flood of silent sockets cannot crowd out real users.

use super::pending::PendingSlot;
use super::{Principal, admission, credentials};
use crate::cluster::hub::ConnId;
use crate::error::Error;
use crate::protocol::{self, CloseReason, Request};
use crate::state::NodeState;
use crate::transport::closing::{answer_close, close_socket, read_failure};
use crate::transport::stream::Socket;
use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

/// Waits for the socket's `auth` frame and admits it: the socket, its
/// connection id and principal, to serve; `None` once the socket is closed
/// (refused, too late, or gone).
pub async fn authenticate(
    node: &NodeState,
    mut socket: Socket,
    origin: Option<String>,
    slot: PendingSlot,
) -> Option<(Socket, ConnId, Principal)> {
    let refuse = async |mut socket: Socket, reason| {
        close_socket(&mut socket, reason).await;
        None
    };
    let deadline = tokio::time::sleep(node.config.auth_timeout());
    tokio::pin!(deadline);
    let draining = NodeState::drained(node.draining.clone());
    tokio::pin!(draining);
    let candidate = loop {
        tokio::select! {
            () = &mut deadline => return refuse(socket, CloseReason::AuthTimeout).await,
            () = &mut draining => return refuse(socket, CloseReason::ShuttingDown).await,
            frame = socket.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    // Raw frames are never read back; only listed to be exhaustive.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Err(e)) => {
                        return match read_failure(&e) {
                            Some(reason) => refuse(socket, reason).await,
                            None => None,
                        };
                    }
                    Some(Ok(Message::Close(_))) => {
                        answer_close(&mut socket).await;
                        return None;
                    }
                    None => return None,
                    Some(Ok(Message::Binary(_))) => {
                        return refuse(socket, CloseReason::ExpectedAuthFrame).await;
                    }
                };
                let Ok((_, Request::Auth { ticket })) = protocol::parse(&text) else {
                    return refuse(socket, CloseReason::ExpectedAuthFrame).await;
                };
                match credentials::consume(node, ticket.expose(), origin.as_deref()).await {
                    Ok(candidate) => break candidate,
                    Err(Error::Unavailable(_)) => {
                        return refuse(socket, CloseReason::RedisUnavailable).await;
                    }
                    Err(Error::OriginMismatch | Error::InsufficientScope) => {
                        return refuse(socket, CloseReason::TicketNotForThisSocket).await;
                    }
                    Err(_) => return refuse(socket, CloseReason::InvalidTicket).await,
                }
            }
        }
    };
    drop(slot);
    match admission::admit(node, candidate).await {
        Ok((admitted, principal)) => Some((socket, admitted.hand_over(), principal)),
        Err(Error::TooManyConnections) => refuse(socket, CloseReason::TooManyConnections).await,
        Err(Error::Unavailable(_)) => refuse(socket, CloseReason::RedisUnavailable).await,
        Err(_) => refuse(socket, CloseReason::InvalidTicket).await,
    }
}
