//! Reading an upgrade request: is it a WebSocket upgrade, and which
//! credentials does it carry (a ticket in the subprotocol or the query, the
//! session cookie), and from which origin and client address.

use std::net::{IpAddr, SocketAddr};

/// The subprotocol prefix that carries a ticket.
pub const TICKET_PROTOCOL_PREFIX: &str = "ticket.";

/// What authenticating an upgrade needs from its request, however the request
/// was read: by [`crate::transport::server`] from a connection's first bytes,
/// or by hyper (see [`crate::transport::http`]).
#[derive(Debug)]
pub struct UpgradeRequest {
    pub(super) peer: SocketAddr,
    /// The entry our proxy appended to `X-Forwarded-For`, if any: the
    /// client's address when `TRUST_PROXY_HEADERS` is on.
    pub(super) forwarded_for: Option<IpAddr>,
    /// `Sec-WebSocket-Key`, if this is a WebSocket upgrade at all (a `GET`
    /// over HTTP/1.1 with `Upgrade: websocket`, `Connection: upgrade` and
    /// `Sec-WebSocket-Version: 13`).
    pub(super) websocket_key: Option<Vec<u8>>,
    pub(super) origin: Option<String>,
    pub(super) protocol_ticket: Option<String>,
    pub(super) query_ticket: Option<String>,
    pub(super) session_cookie: Option<String>,
}

impl UpgradeRequest {
    /// Reads the request's parts; `get_http11` says whether its method and
    /// version allow an upgrade, and `cookie_name` names the session cookie.
    pub fn new<'h>(
        peer: SocketAddr,
        get_http11: bool,
        query: Option<&str>,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        cookie_name: &str,
    ) -> Self {
        let (mut upgrade, mut connection, mut version) = (false, false, false);
        let mut request = Self {
            peer,
            forwarded_for: None,
            websocket_key: None,
            origin: None,
            protocol_ticket: None,
            query_ticket: query.and_then(ticket_from_query).map(str::to_owned),
            session_cookie: None,
        };
        let mut key = None;
        let mut forwarded_for = None;
        for (name, value) in headers {
            let text = std::str::from_utf8(value).ok();
            if name.eq_ignore_ascii_case("upgrade") {
                upgrade |= value.eq_ignore_ascii_case(b"websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                connection |= text.is_some_and(|t| {
                    t.split(',')
                        .any(|token| http_trim(token).eq_ignore_ascii_case("upgrade"))
                });
            } else if name.eq_ignore_ascii_case("sec-websocket-version") {
                version |= value == b"13";
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                key.get_or_insert_with(|| value.to_vec());
            } else if name.eq_ignore_ascii_case("origin") {
                if request.origin.is_none() {
                    request.origin = text.map(str::to_owned);
                }
            } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                if request.protocol_ticket.is_none() {
                    request.protocol_ticket = text.and_then(|t| {
                        t.split(',')
                            .find_map(|p| http_trim(p).strip_prefix(TICKET_PROTOCOL_PREFIX))
                            .map(str::to_owned)
                    });
                }
            } else if name.eq_ignore_ascii_case("cookie") && request.session_cookie.is_none() {
                request.session_cookie = text.and_then(|t| session_cookie(t, cookie_name));
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                forwarded_for = Some(value);
            }
        }
        request.forwarded_for = shared::net::last_forwarded_for(forwarded_for);
        if get_http11 && upgrade && connection && version {
            request.websocket_key = key;
        }
        request
    }

    // Read-only views of what was parsed. The handshake reads the fields
    // directly; these exist for code outside it that checks the parser, the
    // fuzz targets under `fuzz/`.

    /// `Sec-WebSocket-Key`, set only when the request is a WebSocket upgrade.
    pub fn websocket_key(&self) -> Option<&[u8]> {
        self.websocket_key.as_deref()
    }

    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The ticket of the first `ticket.` subprotocol.
    pub fn protocol_ticket(&self) -> Option<&str> {
        self.protocol_ticket.as_deref()
    }

    /// The first `ticket` query parameter.
    pub fn query_ticket(&self) -> Option<&str> {
        self.query_ticket.as_deref()
    }

    /// The session cookie's value, its quotes removed.
    pub fn session_cookie(&self) -> Option<&str> {
        self.session_cookie.as_deref()
    }

    /// The client's address: the socket's peer, or behind our own proxy
    /// (`trust_proxy_headers`) the address the proxy saw.
    pub fn client_ip(&self, trust_proxy_headers: bool) -> IpAddr {
        match self.forwarded_for {
            Some(ip) if trust_proxy_headers => ip,
            _ => self.peer.ip(),
        }
    }
}

/// An element of a comma-separated header value without the optional
/// whitespace around it: spaces and tabs only (RFC 9110 §5.6.3), not
/// `str::trim`'s Unicode whitespace, which took `\u{a0}upgrade` for `upgrade`.
fn http_trim(element: &str) -> &str {
    element.trim_matches([' ', '\t'])
}

/// The value of the first `ticket` query parameter.
fn ticket_from_query(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "ticket")
        .map(|(_, value)| value)
}

/// The value of the cookie `name` in a `Cookie` header.
fn session_cookie(header: &str, name: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(get_http11: bool, query: &str, headers: &[(&str, &str)]) -> UpgradeRequest {
        UpgradeRequest::new(
            "127.0.0.1:1".parse().expect("addr"),
            get_http11,
            Some(query),
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            "session",
        )
    }

    const UPGRADE: [(&str, &str); 4] = [
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn an_upgrade_needs_every_header_of_one_and_http_1_1() {
        let request = parse(true, "", &UPGRADE);
        assert_eq!(
            request.websocket_key.as_deref(),
            Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..])
        );
        assert!(parse(false, "", &UPGRADE).websocket_key.is_none());
        for (missing, (name, _)) in UPGRADE.iter().enumerate() {
            let mut headers = UPGRADE.to_vec();
            headers.remove(missing);
            assert!(
                parse(true, "", &headers).websocket_key.is_none(),
                "without {name}"
            );
        }
        let mut old_version = UPGRADE.to_vec();
        old_version[2].1 = "8";
        assert!(parse(true, "", &old_version).websocket_key.is_none());
    }

    #[test]
    fn list_elements_are_trimmed_of_http_whitespace_only() {
        // Caught by the upgrade_request fuzz target: `str::trim` also removed
        // Unicode spaces, which HTTP does not allow there.
        let mut headers = UPGRADE.to_vec();
        headers[1].1 = "keep-alive,\tUpgrade ";
        headers.push(("sec-websocket-protocol", "json ,\tticket.abc "));
        let request = parse(true, "", &headers);
        assert!(request.websocket_key.is_some());
        assert_eq!(request.protocol_ticket.as_deref(), Some("abc"));
        headers[1].1 = "keep-alive, \u{a0}Upgrade";
        headers.push(("sec-websocket-protocol", "\u{2003}ticket.def"));
        headers.remove(4);
        let request = parse(true, "", &headers);
        assert!(request.websocket_key.is_none());
        assert!(request.protocol_ticket.is_none());
    }

    #[test]
    fn reads_the_credentials_wherever_they_are() {
        let mut headers = UPGRADE.to_vec();
        headers.extend([
            ("sec-websocket-protocol", "chat"),
            ("sec-websocket-protocol", "json, ticket.abc"),
            ("cookie", "theme=dark; session=\"s3cret\""),
            ("ORIGIN", "https://app.example"),
        ]);
        let request = parse(true, "x=1&ticket=q", &headers);
        assert_eq!(request.protocol_ticket.as_deref(), Some("abc"));
        assert_eq!(request.query_ticket.as_deref(), Some("q"));
        assert_eq!(request.session_cookie.as_deref(), Some("s3cret"));
        assert_eq!(request.origin.as_deref(), Some("https://app.example"));
        let bare = parse(true, "", &UPGRADE);
        assert!(bare.protocol_ticket.is_none() && bare.query_ticket.is_none());
        assert!(bare.session_cookie.is_none() && bare.origin.is_none());
    }

    #[test]
    fn finds_the_ticket_parameter() {
        assert_eq!(ticket_from_query("ticket=abc"), Some("abc"));
        assert_eq!(ticket_from_query("x=1&ticket=abc&ticket=def"), Some("abc"));
        assert_eq!(ticket_from_query("tickets=abc"), None);
    }
}
