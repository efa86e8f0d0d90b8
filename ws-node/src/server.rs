//! The accept loop. Each TCP connection is served by hyper directly (see
//! [`shared::http`]): TCP_NODELAY on (small frames go out at once), the HTTP
//! upgrade request must arrive within `HANDSHAKE_TIMEOUT_MS`, upgrades enabled
//! for WebSockets.

use axum::Router;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accepts connections until `draining` turns true, then drops the listener
/// (new connections are refused by the OS from then on).
pub async fn accept_loop(
    listener: TcpListener,
    router: Router,
    handshake_timeout: Duration,
    draining: watch::Receiver<bool>,
) {
    let draining = crate::state::NodeState::drained(draining);
    tokio::pin!(draining);
    loop {
        tokio::select! {
            () = &mut draining => break,
            (stream, peer) = shared::http::accept(&listener, "ws_accept_errors_total") => {
                tokio::spawn(serve_connection(stream, peer, router.clone(), handshake_timeout));
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
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
