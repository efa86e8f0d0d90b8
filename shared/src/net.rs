//! Listening sockets, client addresses behind a proxy, and shutdown signals,
//! shared by both servers.

use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpListener, TcpSocket};

/// Listen backlog. tokio's `TcpListener::bind` uses 128, which overflows under
/// handshake bursts and makes clients wait a full SYN retransmit (1 s).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (restarts do not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The client's address as the nearest proxy saw it: the last entry of the
/// last `X-Forwarded-For` header, given that header's values in order. Only
/// that entry was written by our own proxy (nginx's
/// `$proxy_add_x_forwarded_for` appends the peer it saw); every entry before
/// it came from the client and may be forged, so none of them is ever used,
/// not even when the last one does not parse (then there is no answer, and the
/// caller falls back to the socket's peer).
pub fn last_forwarded_for<'v>(values: impl IntoIterator<Item = &'v [u8]>) -> Option<IpAddr> {
    let last_header = values.into_iter().last()?;
    let last_entry = std::str::from_utf8(last_header).ok()?.rsplit(',').next()?;
    last_entry.trim().parse().ok()
}

/// Resolves on SIGTERM or Ctrl-C, whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::last_forwarded_for;

    fn client(headers: &[&str]) -> Option<String> {
        last_forwarded_for(headers.iter().map(|h| h.as_bytes())).map(|ip| ip.to_string())
    }

    #[test]
    fn the_last_entry_of_the_last_header_is_the_client() {
        assert_eq!(client(&["203.0.113.9"]).as_deref(), Some("203.0.113.9"));
        assert_eq!(
            client(&["1.1.1.1, 203.0.113.9"]).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            client(&["1.1.1.1", "10.0.0.1,2001:db8::7 "]).as_deref(),
            Some("2001:db8::7")
        );
    }

    #[test]
    fn a_forged_entry_before_an_unreadable_last_one_is_never_used() {
        assert_eq!(client(&[]), None);
        assert_eq!(client(&["1.1.1.1, garbage"]), None);
        assert_eq!(client(&["1.1.1.1", ""]), None);
        assert_eq!(client(&["1.1.1.1, 203.0.113.9:4711"]), None);
    }
}
