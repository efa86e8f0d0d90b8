//! Writing to the client, each write within a deadline.
//!
//! A client that stops reading blocks a write once the socket's buffers are
//! full. Left waiting, the write would keep what the connection buffered for
//! it (a page of history, tungstenite's write buffer) and its task for as
//! long as the client liked. So every write — a batch of frames and its one
//! flush, at most about [`MAX_WRITE_BYTES`] — must be done within
//! `WRITE_TIMEOUT_MS`; past that the connection is dropped without a close
//! frame, which a client that does not read could not receive anyway.
//!
//! The write runs inside the connection's loop, raced against its deadline
//! and close requests (which the drain sends too), rather than in a task of
//! its own over a split socket: no second task, channel or lock per
//! connection, which every idle connection would pay for, and while a write
//! waits nothing else could go out on that socket anyway. Credential expiry
//! shortens the deadline; the heartbeat and idle reaping act again once the
//! write ends, at its deadline at the latest.

use super::{Connection, Ending, MAX_BATCH};
use crate::cluster::hub::Delivery;
use crate::protocol::CloseReason;
use futures_util::SinkExt as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// About the most bytes one write carries (a batch of deliveries, a page of
/// a replay; one frame more at most): what a connection holds for writing
/// beyond tungstenite's buffer, and so what a client must take within
/// `WRITE_TIMEOUT_MS` to keep up.
pub(super) const MAX_WRITE_BYTES: usize = 256 * 1024;

/// Runs one write, raced against `interrupt` (the connection's close
/// request) and its `deadline` (from [`Connection::write_deadline`]).
pub(super) async fn guarded(
    interrupt: impl Future<Output = CloseReason>,
    deadline: Instant,
    expires: Option<Instant>,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), Ending> {
    tokio::select! {
        biased;
        reason = interrupt => Err(Ending::Close(reason)),
        written = tokio::time::timeout_at(deadline.into(), write) => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ending::Lost),
            Err(_) if expires.is_some_and(|e| e <= Instant::now()) => {
                Err(Ending::Close(CloseReason::CredentialExpired))
            }
            Err(_) => {
                metrics::counter!(crate::telemetry::WRITE_TIMEOUTS).increment(1);
                tracing::debug!("a write outlasted WRITE_TIMEOUT_MS: dropping the connection");
                Err(Ending::Lost)
            }
        },
    }
}

impl Connection {
    /// When a write that starts now must be done: `WRITE_TIMEOUT_MS` from
    /// now, or the credential's end if that is sooner. An ended credential
    /// closes the connection instead.
    pub(super) fn write_deadline(&self) -> Result<Instant, Ending> {
        let now = Instant::now();
        let deadline = now + self.node.config.write_timeout();
        match self.expires {
            Some(expires) if expires <= now => Err(Ending::Close(CloseReason::CredentialExpired)),
            Some(expires) => Ok(deadline.min(expires)),
            None => Ok(deadline),
        }
    }

    /// Sends one frame.
    pub(super) async fn send(&mut self, message: Message) -> Result<(), Ending> {
        let deadline = self.write_deadline()?;
        let expires = self.expires;
        let control = self.control.clone();
        let write = self.socket.send(message);
        guarded(control.closed(), deadline, expires, write).await
    }

    /// Sends `frames` (replies, a page of a replay) with one flush.
    pub(super) async fn send_all(&mut self, frames: Vec<String>) -> Result<(), Ending> {
        if frames.is_empty() {
            return Ok(());
        }
        let deadline = self.write_deadline()?;
        let expires = self.expires;
        let control = self.control.clone();
        let socket = &mut self.socket;
        let write = async move {
            for frame in frames {
                socket.feed(Message::Text(frame.into())).await?;
            }
            socket.flush().await
        };
        guarded(control.closed(), deadline, expires, write).await
    }

    /// Writes `first` and whatever else is already queued, up to
    /// [`MAX_BATCH`] frames and about [`MAX_WRITE_BYTES`], then flushes once.
    /// The caller runs it [`guarded`].
    pub(super) async fn write_batch(&mut self, first: Arc<Delivery>) -> Result<(), WsError> {
        // The batch's oldest message: its delay is the batch's longest.
        let sampled_at = first.sampled_at;
        let mut next = Some(first);
        let mut written = 0;
        let mut bytes = 0;
        while let Some(delivery) = next.take() {
            if self.admit(&delivery) {
                bytes += delivery.frame.len();
                self.socket
                    .feed(Message::Text(delivery.frame.clone()))
                    .await?;
                written += 1;
            }
            if written < MAX_BATCH && bytes < MAX_WRITE_BYTES {
                next = self.rx.try_recv().ok();
            }
        }
        self.socket.flush().await?;
        if let Some(dispatched) = sampled_at {
            metrics::histogram!(crate::telemetry::FANOUT_LATENCY)
                .record(dispatched.elapsed().as_secs_f64());
        }
        Ok(())
    }
}
