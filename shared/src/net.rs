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

/// The client's address as reported by `hops` trusted proxies in front of
/// us (`TRUST_PROXY_HEADERS`), given the `X-Forwarded-For` header's values in
/// order (several headers read as one list, in order).
///
/// Each proxy appends the address it received the request from, so with `hops`
/// proxies the client is the `hops`-th entry from the right: that one was
/// written by our outermost proxy, and every entry before it came from the
/// client and may be forged. So:
///
/// * `hops == 0`: the header is not trusted at all (`None`);
/// * fewer than `hops` entries: the request did not pass through all our
///   proxies (or one of them does not append), so nothing in it is trusted
///   (`None`; an earlier, client-written entry is never used instead);
/// * the entry may carry a port (`1.2.3.4:5678`, `[2001:db8::1]:80`), which
///   is stripped, or brackets without one (`[2001:db8::1]`);
/// * an entry that is not an address (`unknown`, garbage) gives `None`.
///
/// `None` always means: use the socket's peer address.
pub fn forwarded_client<'v>(
    values: impl IntoIterator<Item = &'v [u8]>,
    hops: usize,
) -> Option<IpAddr> {
    if hops == 0 {
        return None;
    }
    let mut entries = Vec::new();
    for value in values {
        match std::str::from_utf8(value) {
            Ok(text) => entries.extend(text.split(',')),
            // Unreadable: one entry that is not an address.
            Err(_) => entries.push(""),
        }
    }
    let entry = entries.len().checked_sub(hops).map(|i| entries[i])?;
    parse_forwarded_address(entry.trim())
}

/// An address with or without a port: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
/// `[::1]`, `[::1]:80`.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// Parses `TRUST_PROXY_HEADERS`: the number of trusted proxy hops, `0`-`16`;
/// `true` and `false` (the setting's older, boolean form) mean 1 and 0.
pub fn parse_proxy_hops(value: &str) -> Result<usize, String> {
    let value = value.trim();
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => return Ok(1),
        "false" | "no" | "off" | "" => return Ok(0),
        _ => {}
    }
    match value.parse::<usize>() {
        Ok(hops) if hops <= MAX_PROXY_HOPS => Ok(hops),
        _ => Err(format!(
            "expected the number of trusted proxy hops (0-{MAX_PROXY_HOPS}), or true/false"
        )),
    }
}

/// Most trusted proxy hops accepted: more is surely a misconfiguration.
pub const MAX_PROXY_HOPS: usize = 16;

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
    use super::{forwarded_client, parse_proxy_hops};

    fn client(headers: &[&str], hops: usize) -> Option<String> {
        forwarded_client(headers.iter().map(|h| h.as_bytes()), hops).map(|ip| ip.to_string())
    }

    #[test]
    fn the_entry_of_the_outermost_trusted_proxy_is_the_client() {
        assert_eq!(client(&["203.0.113.9"], 1).as_deref(), Some("203.0.113.9"));
        assert_eq!(
            client(&["1.1.1.1, 203.0.113.9"], 1).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            client(&["1.1.1.1", "10.0.0.1,2001:db8::7 "], 1).as_deref(),
            Some("2001:db8::7")
        );
        // Two proxies: the outer one appended the client, the inner one the outer.
        assert_eq!(
            client(&["6.6.6.6, 203.0.113.9, 10.0.0.1"], 2).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            client(&["6.6.6.6, 203.0.113.9", "10.0.0.1"], 2).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            client(&["203.0.113.9, 10.0.0.2, 10.0.0.1"], 3).as_deref(),
            Some("203.0.113.9")
        );
    }

    #[test]
    fn ports_and_brackets_are_stripped() {
        assert_eq!(client(&["1.2.3.4:5678"], 1).as_deref(), Some("1.2.3.4"));
        assert_eq!(client(&["[::1]:80"], 1).as_deref(), Some("::1"));
        assert_eq!(
            client(&["[2001:db8::7]"], 1).as_deref(),
            Some("2001:db8::7")
        );
        assert_eq!(
            client(&["[2001:db8::7]:443, 10.0.0.1:80"], 2).as_deref(),
            Some("2001:db8::7")
        );
    }

    #[test]
    fn anything_unreadable_or_short_means_the_peer() {
        assert_eq!(client(&[], 1), None);
        assert_eq!(client(&["203.0.113.9"], 0), None, "not trusted at all");
        assert_eq!(client(&["1.1.1.1, garbage"], 1), None);
        assert_eq!(client(&["1.1.1.1, unknown"], 1), None);
        assert_eq!(client(&["1.1.1.1", ""], 1), None);
        assert_eq!(client(&["1.1.1.1, [::1"], 1), None);
        assert_eq!(client(&["1.1.1.1, 1.2.3.4:port"], 1), None);
        // Fewer entries than proxies: it did not come through all of them,
        // so not even the leftmost entry (client-written) counts.
        assert_eq!(client(&["203.0.113.9"], 2), None);
        assert_eq!(client(&["203.0.113.9, 10.0.0.1"], 3), None);
    }

    #[test]
    fn the_setting_is_a_hop_count_or_the_old_boolean() {
        assert_eq!(parse_proxy_hops("false"), Ok(0));
        assert_eq!(parse_proxy_hops("true"), Ok(1));
        assert_eq!(parse_proxy_hops("TRUE"), Ok(1));
        assert_eq!(parse_proxy_hops("0"), Ok(0));
        assert_eq!(parse_proxy_hops("2"), Ok(2));
        assert!(parse_proxy_hops("17").is_err());
        assert!(parse_proxy_hops("-1").is_err());
        assert!(parse_proxy_hops("maybe").is_err());
    }
}
