//! Ending a WebSocket properly, from either side.

use crate::protocol::CloseReason;
use crate::transport::stream::Socket;
use futures_util::{SinkExt, StreamExt as _};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// How long a close may take to go out (and its answer to come back) before
/// the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the node closes a socket whose read failed with `e`, or `None` when
/// the connection itself is gone (nothing can be sent on it). RFC 6455 §7.4.1:
/// a text message that is not UTF-8 is 1007, a frame that breaks the framing
/// rules (unmasked, reserved bits or opcodes, a fragmented or oversized control
/// frame, a stray continuation) is 1002, a message over the limit is 1009.
pub fn read_failure(e: &tungstenite::Error) -> Option<CloseReason> {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Capacity(_) => Some(CloseReason::MessageTooBig),
        tungstenite::Error::Utf8(_) => Some(CloseReason::InvalidUtf8),
        // The peer ended the TCP connection without a close frame: gone.
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        tungstenite::Error::Protocol(_) => Some(CloseReason::ProtocolViolation),
        _ => None,
    }
}

/// Closes the WebSocket for `reason`: sends the close frame, then reads (and
/// discards) until the peer's close reply, all within `CLOSE_TIMEOUT`. Just
/// dropping the socket would make the kernel answer with a reset if the peer
/// still had data in flight, and a reset can destroy the close frame (and its
/// code, which tells the client what to do) before the client reads it.
///
/// After a read error (a protocol violation, bad UTF-8, a message too big)
/// tungstenite reads no more frames, though the peer may still be sending:
/// then the node ends its side of the TCP connection and discards raw bytes
/// until the peer ends its own, still within `CLOSE_TIMEOUT`.
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
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Err(_) => return,
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) => break,
        }
    }
    let stream = socket.get_mut();
    let _ = tokio::time::timeout_at(deadline, async {
        stream.shutdown().await?;
        let mut discard = [0u8; 512];
        while stream.read(&mut discard).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
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
