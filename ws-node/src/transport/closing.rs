//! Ending a WebSocket properly, from either side.

use crate::protocol::CloseReason;
use crate::transport::stream::Socket;
use futures_util::{SinkExt, StreamExt as _};
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// How long a close may take to go out (and its answer to come back) before
/// the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a read error was the message size limit (answered with 1009).
pub fn is_too_big(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_))
}

/// Closes the WebSocket for `reason`: sends the close frame, then reads (and
/// discards) until the peer's close reply, all within `CLOSE_TIMEOUT`. Just
/// dropping the socket would make the kernel answer with a reset if the peer
/// still had data in flight, and a reset can destroy the close frame (and its
/// code, which tells the client what to do) before the client reads it.
pub async fn close_socket(socket: &mut Socket, reason: CloseReason) {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let frame = Message::Close(Some(CloseFrame {
        code: reason.code().into(),
        reason: Utf8Bytes::from_static(reason.reason()),
    }));
    if !matches!(
        tokio::time::timeout_at(deadline, socket.send(frame)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, socket.next()).await {}
}

/// Completes a close the client started. tungstenite queued the echo of the
/// client's close frame (same code) when it read it; flushing sends it, and
/// then the node ends the TCP connection (RFC 6455 §7.1.1: the server closes
/// first), all within `CLOSE_TIMEOUT`. Without the echo, every clean close
/// reads as 1006 (`wasClean: false`) to the client, as if the network had
/// failed.
pub async fn answer_close(socket: &mut Socket) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::close(socket)).await;
}
