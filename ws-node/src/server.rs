//! The accept loop. axum's `serve` cannot set a header-read timeout, so each
//! TCP connection is served by hyper directly: TCP_NODELAY on (small frames go
//! out at once), the HTTP upgrade request must arrive within
//! `HANDSHAKE_TIMEOUT_MS`, upgrades enabled for WebSockets.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

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
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(stream, peer, router.clone(), handshake_timeout));
                }
                Err(e) => {
                    // Typically EMFILE (out of file descriptors): back off
                    // briefly instead of spinning on the error.
                    metrics::counter!("ws_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
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
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(request).await.unwrap_or_else(|e| match e {})) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, %peer, "http connection ended with an error");
    }
}
