//! The accept loop, and the upgrade of a connection's first request.
//!
//! Every connection starts here with TCP_NODELAY on (small frames go out at
//! once), and its first request head must arrive within
//! `HANDSHAKE_TIMEOUT_MS`. When that request is `GET /ws`, as it is on almost
//! every connection, the node answers it itself: the head is parsed with
//! `httparse`, the handshake authenticated, and the `101` written together
//! with the `welcome` frame in one write; the connection is then served on
//! the same task. Going through hyper and axum instead cost each handshake a
//! dispatcher, a header map, the upgrade's hand-over to a second task, and a
//! separate write (and wake-up of the client) for the `101`. (A `GET /ws`
//! that is not a valid upgrade, HTTP/1.0 included, is refused here too, with
//! 400 `not_websocket`.) Anything else (the operations endpoints, a head too
//! large or malformed) goes to hyper with the bytes read so far, and from
//! there to the axum router, which also upgrades `GET /ws` when it comes
//! later on a kept-alive connection.

use super::stream::ClientStream;
use crate::handshake::{self, Opened, UpgradeRequest};
use crate::session;
use crate::state::NodeState;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Room for a first request head; grown up to [`MAX_HEAD_BYTES`].
const HEAD_BUFFER_BYTES: usize = 2048;
/// The largest head parsed here; larger ones go to hyper, which has its limits.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers parsed here at most; more go to hyper.
const MAX_HEADERS: usize = 64;
/// How long a refused client gets to read the refusal before the socket closes.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Accepts connections until the node starts draining, then drops the
/// listener (new connections are refused by the OS from then on).
pub async fn accept_loop(listener: TcpListener, node: NodeState, router: Router) {
    let draining = NodeState::drained(node.draining.clone());
    tokio::pin!(draining);
    loop {
        tokio::select! {
            () = &mut draining => break,
            (stream, peer) = shared::http::accept(&listener, crate::telemetry::ACCEPT_ERRORS) => {
                tokio::spawn(serve_connection(stream, peer, node.clone(), router.clone()));
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

/// What a connection's first request turned out to be.
#[derive(Debug)]
pub enum FirstRequest {
    /// `GET /ws`, ending at byte `head_len` of what was read.
    Upgrade {
        request: UpgradeRequest,
        head_len: usize,
    },
    /// Anything else: for hyper.
    Other,
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, node: NodeState, router: Router) {
    // The task's future lives as long as the connection, so it is kept to
    // little more than the socket's own: the handshake (its futures, hyper's
    // connection state) is boxed and gone once the socket is open, the
    // socket's fields are passed straight on (an async fn taking the
    // `Opened`, like `serve_opened`, keeps a second copy of them for as long
    // as it runs), and the rarer unauthenticated wait is boxed too. Inline,
    // these cost every idle socket memory (the benchmark's idle scenario
    // measures it).
    let Some(opened) = Box::pin(handshake(stream, peer, node, router)).await else {
        return;
    };
    match opened {
        Opened::Authenticated {
            node,
            socket,
            id,
            principal,
        } => session::run(node, socket, id, principal).await,
        Opened::AwaitingAuth {
            node,
            socket,
            origin,
            slot,
        } => Box::pin(serve_after_auth(node, socket, origin, slot)).await,
    }
}

/// Serves a socket opened without credentials: first-message auth, then the
/// session. Boxed by the accept path: a session run here, inline, would be a
/// second one in its task's future beside the authenticated arm's, and cost
/// every idle socket its size.
async fn serve_after_auth(
    node: NodeState,
    socket: crate::transport::stream::Socket,
    origin: Option<String>,
    slot: handshake::pending::PendingSlot,
) {
    let authenticated = handshake::first_message::authenticate(&node, socket, origin, slot).await;
    if let Some((socket, id, principal)) = authenticated {
        session::run(node, socket, id, principal).await;
    }
}

/// Serves a socket hyper upgraded (rare: see [`super::http`]), as
/// `serve_connection` serves the others.
pub async fn serve_opened(opened: Opened) {
    match opened {
        Opened::Authenticated {
            node,
            socket,
            id,
            principal,
        } => session::run(node, socket, id, principal).await,
        Opened::AwaitingAuth {
            node,
            socket,
            origin,
            slot,
        } => serve_after_auth(node, socket, origin, slot).await,
    }
}

/// Reads and answers the connection's first request. An accepted upgrade
/// returns its socket to serve; anything else is served to the end here.
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    node: NodeState,
    router: Router,
) -> Option<Opened> {
    let timeout = node.config.handshake_timeout();
    let mut read = Vec::with_capacity(HEAD_BUFFER_BYTES);
    let first = tokio::time::timeout(
        timeout,
        read_first_request(&mut stream, &mut read, peer, &node),
    )
    .await;
    // Closed, failed or too slow: like hyper, just close.
    let Ok(Ok(first)) = first else { return None };
    match first {
        FirstRequest::Upgrade { request, head_len } => {
            // Copied out: a slice would keep the whole read buffer alive.
            let after_head = Bytes::copy_from_slice(&read[head_len..]);
            upgrade(stream, after_head, request, &node).await
        }
        FirstRequest::Other => {
            serve_with_hyper(
                ClientStream::tcp(stream, Bytes::from(read), Vec::new()),
                peer,
                router,
                timeout,
            )
            .await;
            None
        }
    }
}

/// Reads until the first request head is complete (or cannot be parsed here),
/// and parses it if it is `GET /ws`.
async fn read_first_request(
    stream: &mut TcpStream,
    read: &mut Vec<u8>,
    peer: SocketAddr,
    node: &NodeState,
) -> std::io::Result<FirstRequest> {
    loop {
        if read.len() == read.capacity() {
            read.reserve(read.len());
        }
        if stream.read_buf(read).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(first) = parse_first_request(read, peer, node.config.common.cookie_name()) {
            return Ok(first);
        }
    }
}

/// Parses the bytes read so far of a connection's first request: `None`
/// while the head is incomplete and may still be parsed here, once more has
/// been read. Kept apart from the socket (and public) so that the fuzz
/// target `upgrade_request` runs exactly this code on arbitrary bytes.
pub fn parse_first_request(
    read: &[u8],
    peer: SocketAddr,
    cookie_name: &str,
) -> Option<FirstRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(read) {
        Ok(httparse::Status::Complete(head_len)) => {
            let Some(target) = head.path else {
                return Some(FirstRequest::Other);
            };
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            if path != "/ws" || head.method != Some("GET") {
                return Some(FirstRequest::Other);
            }
            // What hyper's trace layer logs for other requests; the query
            // may carry a ticket, so never unredacted.
            tracing::debug!(
                uri = %shared::redact::redact_uri(target),
                %peer,
                "websocket upgrade request"
            );
            let request = UpgradeRequest::new(
                peer,
                head.version == Some(1),
                Some(query),
                head.headers.iter().map(|h| (h.name, h.value)),
                cookie_name,
            );
            Some(FirstRequest::Upgrade { request, head_len })
        }
        Ok(httparse::Status::Partial) if read.len() < MAX_HEAD_BYTES => None,
        // Too large or too many headers for here, or malformed: hyper
        // answers those as it would any request.
        Ok(httparse::Status::Partial) | Err(_) => Some(FirstRequest::Other),
    }
}

/// Authenticates the upgrade: the socket to serve, or the refusal written.
async fn upgrade(
    mut stream: TcpStream,
    after_head: Bytes,
    request: UpgradeRequest,
    node: &NodeState,
) -> Option<Opened> {
    match handshake::authenticate(node, request).await {
        Ok(accepted) => {
            let head = accepted.head();
            let unsent = if accepted.server_speaks_first() {
                head
            } else {
                stream.write_all(&head).await.ok()?;
                Vec::new()
            };
            Some(
                accepted
                    .open(ClientStream::tcp(stream, after_head, unsent))
                    .await,
            )
        }
        Err(refusal) => {
            tracing::debug!(code = refusal.code(), "websocket upgrade refused");
            stream.write_all(&refusal.http_bytes()).await.ok()?;
            // Closing with unread bytes would reset the connection, and a
            // reset can destroy the answer before the client reads it: end
            // the sending side, then read until the client closes (briefly).
            let _ = stream.shutdown().await;
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                let mut discard = [0u8; 512];
                while matches!(stream.read(&mut discard).await, Ok(n) if n > 0) {}
            })
            .await;
            None
        }
    }
}

async fn serve_with_hyper(
    stream: ClientStream,
    peer: SocketAddr,
    router: Router,
    timeout: Duration,
) {
    let connection = shared::http::builder(timeout)
        .serve_connection(
            TokioIo::new(stream),
            shared::http::RouterService::new(router, peer),
        )
        .with_upgrades();
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, %peer, "http connection ended with an error");
    }
}
