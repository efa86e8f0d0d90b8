//! Serving HTTP/1.1 connections with hyper directly, for both services.
//!
//! `axum::serve` gives hyper no timer, so nothing bounds how long a client may
//! take to send a request head: a client trickling its headers (slowloris)
//! holds a connection, and a file descriptor, for as long as it likes. Both
//! services therefore accept connections themselves and serve each with
//! [`builder`], and hand requests to their axum router through
//! [`RouterService`].

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioTimer;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long accepting waits after an error before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection on `listener`, with TCP_NODELAY set: answers and
/// frames are small and must not wait for the peer's delayed ACK (Nagle's
/// algorithm). An accept error, typically EMFILE (out of file descriptors),
/// is logged, counted in the counter `errors_metric` and retried after a
/// short pause instead of spinning on it.
pub async fn accept(
    listener: &TcpListener,
    errors_metric: &'static str,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
                return (stream, peer);
            }
            Err(e) => {
                metrics::counter!(errors_metric).increment(1);
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// HTTP/1.1 server settings: the request head must arrive within
/// `head_timeout` of the server starting to wait for it. hyper starts that
/// wait as soon as a kept-alive connection is idle, so this is also how long
/// an idle connection is kept.
pub fn builder(head_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    builder
}

/// An axum router (or any service of axum requests, such as a router inside
/// middleware) serving one connection from `peer`: each request carries
/// `ConnectInfo(peer)`, as `into_make_service_with_connect_info` would add.
#[derive(Clone)]
pub struct RouterService<S> {
    service: S,
    peer: SocketAddr,
}

impl<S> RouterService<S> {
    pub fn new(service: S, peer: SocketAddr) -> Self {
        Self { service, peer }
    }
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for RouterService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = S::Future;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // Routers and the middleware around them are always ready: no
        // `poll_ready` is needed before `call`.
        self.service.clone().call(request)
    }
}

/// How long a side listener's client may take to send a request head, and
/// how long it keeps an idle connection (a Prometheus scrape interval is
/// usually 15-60 s, and a scraper keeps its connection between scrapes).
const SIDE_LISTENER_HEAD_TIMEOUT: Duration = Duration::from_secs(90);

/// Serves `router` on every connection `listener` accepts, for as long as the
/// future is polled: for a side listener such as `METRICS_LISTEN`, which
/// needs neither draining nor the main listeners' tuning. Stop it by
/// dropping (or aborting) the future; connections already open end with
/// their client or at the head timeout.
pub async fn serve_side_listener(
    listener: TcpListener,
    router: axum::Router,
    errors_metric: &'static str,
) {
    let http = builder(SIDE_LISTENER_HEAD_TIMEOUT);
    loop {
        let (stream, peer) = accept(&listener, errors_metric).await;
        let connection = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            RouterService::new(router.clone(), peer),
        );
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "side-listener connection ended with an error");
            }
        });
    }
}
