//! Reading an upgrade request: is it a WebSocket upgrade, and which
//! credentials does it carry (a ticket in the subprotocol or the query, the
//! session cookie), and from which origin and client address.

use crate::error::Error;
use std::net::{IpAddr, SocketAddr};

/// The subprotocol prefix that carries a ticket.
pub const TICKET_PROTOCOL_PREFIX: &str = "ticket.";

/// What authenticating an upgrade needs from its request, however the request
/// was read: by [`crate::transport::server`] from a connection's first bytes,
/// or by hyper (see [`crate::transport::http`]). Its `Debug` leaves the
/// ticket and the session cookie out.
pub struct UpgradeRequest {
    pub(super) peer: SocketAddr,
    /// The `X-Forwarded-For` headers' values, joined in order, if any: the
    /// client's address is read from it with `TRUST_PROXY_HEADERS` hops.
    pub(super) forwarded_for: Option<String>,
    /// `Sec-WebSocket-Key`, if this is a valid WebSocket upgrade, or why not
    /// (see [`Self::new`]).
    pub(super) websocket_key: Result<Vec<u8>, Error>,
    pub(super) origin: Option<String>,
    pub(super) protocol_ticket: Option<String>,
    pub(super) query_ticket: Option<String>,
    pub(super) session_cookie: Option<String>,
}

impl UpgradeRequest {
    /// Reads the request's parts; `get_http11` says whether its method and
    /// version allow an upgrade, and `cookie_name` names the session cookie.
    ///
    /// An upgrade (RFC 6455 §4.2.1) is a `GET` over HTTP/1.1 with
    /// `Upgrade: websocket` and `Connection: upgrade`; without those it is
    /// `not_websocket`. Then, in this order: a body (`Content-Length` over 0,
    /// or any `Transfer-Encoding`) is `upgrade_with_body`, since the bytes
    /// after the head would be read as WebSocket frames; a
    /// `Sec-WebSocket-Version` other than `13` (or none) is
    /// `unsupported_version`, answered 426 with the version this node speaks;
    /// a `Sec-WebSocket-Key` that is not the base64 of 16 bytes (or missing,
    /// or repeated) is `invalid_websocket_key`.
    pub fn new<'h>(
        peer: SocketAddr,
        get_http11: bool,
        query: Option<&str>,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        cookie_name: &str,
    ) -> Self {
        let (mut upgrade, mut connection, mut version) = (false, false, false);
        let mut body = false;
        let mut request = Self {
            peer,
            forwarded_for: None,
            websocket_key: Err(Error::NotWebSocket),
            origin: None,
            protocol_ticket: None,
            query_ticket: query.and_then(ticket_from_query).map(str::to_owned),
            session_cookie: None,
        };
        let mut keys = Vec::new();
        let mut forwarded_for: Option<String> = None;
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
                version |= value.trim_ascii() == b"13";
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                keys.push(value.trim_ascii());
            } else if name.eq_ignore_ascii_case("content-length") {
                body |= value.trim_ascii().iter().any(|&b| b != b'0');
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                body = true;
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
                // Several headers are one list, in order; an unreadable one
                // is an entry that is not an address.
                let text = text.unwrap_or("\u{fffd}");
                match &mut forwarded_for {
                    Some(joined) => {
                        joined.push(',');
                        joined.push_str(text);
                    }
                    None => forwarded_for = Some(text.to_owned()),
                }
            }
        }
        request.forwarded_for = forwarded_for;
        if get_http11 && upgrade && connection {
            request.websocket_key = match keys.as_slice() {
                _ if body => Err(Error::UpgradeWithBody),
                _ if !version => Err(Error::UnsupportedVersion),
                [key] if is_websocket_key(key) => Ok(key.to_vec()),
                _ => Err(Error::InvalidWebSocketKey),
            };
        }
        request
    }

    // Read-only views of what was parsed. The handshake reads the fields
    // directly; these exist for code outside it that checks the parser, the
    // fuzz targets under `fuzz/`.

    /// `Sec-WebSocket-Key`, set only when the request is a valid WebSocket
    /// upgrade.
    pub fn websocket_key(&self) -> Option<&[u8]> {
        self.websocket_key.as_deref().ok()
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

    /// The client's address: the socket's peer, or behind `proxy_hops` proxies
    /// of our own the address the outermost one saw.
    pub fn client_ip(&self, proxy_hops: usize) -> IpAddr {
        self.forwarded_for
            .as_deref()
            .and_then(|joined| shared::net::forwarded_client([joined.as_bytes()], proxy_hops))
            .unwrap_or(self.peer.ip())
    }
}

impl std::fmt::Debug for UpgradeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "[REDACTED]");
        f.debug_struct("UpgradeRequest")
            .field("peer", &self.peer)
            .field("forwarded_for", &self.forwarded_for)
            .field("websocket_key", &self.websocket_key.is_ok())
            .field("origin", &self.origin)
            .field("protocol_ticket", &redacted(&self.protocol_ticket))
            .field("query_ticket", &redacted(&self.query_ticket))
            .field("session_cookie", &redacted(&self.session_cookie))
            .finish()
    }
}

/// Whether `key` is the base64 of exactly 16 bytes (RFC 6455 §4.1), as every
/// client generates it: 21 base64 digits, a 22nd holding the last 2 bits (its
/// low 4 bits zero), then `==`. Anything else is no client's nonce, and the
/// accept key derived from it would prove nothing.
fn is_websocket_key(key: &[u8]) -> bool {
    const DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let [digits @ .., last, b'=', b'='] = key else {
        return false;
    };
    digits.len() == 21
        && digits.iter().all(|d| DIGITS.contains(d))
        && DIGITS
            .iter()
            .position(|d| d == last)
            .is_some_and(|value| value & 0xF == 0)
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
            request.websocket_key.as_deref().ok(),
            Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..])
        );
        let code = |request: UpgradeRequest| request.websocket_key.map_err(|e| e.code()).err();
        assert_eq!(code(parse(false, "", &UPGRADE)), Some("not_websocket"));
        let expected = [
            "not_websocket",
            "not_websocket",
            "unsupported_version",
            "invalid_websocket_key",
        ];
        for (missing, (name, _)) in UPGRADE.iter().enumerate() {
            let mut headers = UPGRADE.to_vec();
            headers.remove(missing);
            assert_eq!(
                code(parse(true, "", &headers)),
                Some(expected[missing]),
                "without {name}"
            );
        }
        let mut old_version = UPGRADE.to_vec();
        old_version[2].1 = "8";
        assert_eq!(
            code(parse(true, "", &old_version)),
            Some("unsupported_version")
        );
    }

    #[test]
    fn an_upgrade_has_no_body_and_one_key_of_16_bytes() {
        let code = |extra: &[(&'static str, &'static str)]| {
            let mut headers = UPGRADE.to_vec();
            headers.extend_from_slice(extra);
            parse(true, "", &headers)
                .websocket_key
                .map_err(|e| e.code())
                .err()
        };
        assert_eq!(code(&[("Content-Length", "0")]), None);
        assert_eq!(code(&[("Content-Length", "5")]), Some("upgrade_with_body"));
        assert_eq!(
            code(&[("Transfer-Encoding", "chunked")]),
            Some("upgrade_with_body")
        );
        assert_eq!(
            code(&[("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")]),
            Some("invalid_websocket_key"),
            "two keys"
        );
        for key in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j!Q==",
            "dGhlIHNhbXBsZSBub25jZXg=",
        ] {
            let mut headers = UPGRADE.to_vec();
            headers[3].1 = key;
            assert!(parse(true, "", &headers).websocket_key.is_err(), "{key:?}");
        }
        assert!(is_websocket_key(b"/////////////////////w=="));
    }

    #[test]
    fn list_elements_are_trimmed_of_http_whitespace_only() {
        // Caught by the upgrade_request fuzz target: `str::trim` also removed
        // Unicode spaces, which HTTP does not allow there.
        let mut headers = UPGRADE.to_vec();
        headers[1].1 = "keep-alive,\tUpgrade ";
        headers.push(("sec-websocket-protocol", "json ,\tticket.abc "));
        let request = parse(true, "", &headers);
        assert!(request.websocket_key.is_ok());
        assert_eq!(request.protocol_ticket.as_deref(), Some("abc"));
        headers[1].1 = "keep-alive, \u{a0}Upgrade";
        headers.push(("sec-websocket-protocol", "\u{2003}ticket.def"));
        headers.remove(4);
        let request = parse(true, "", &headers);
        assert!(request.websocket_key.is_err());
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
        let printed = format!("{request:?}");
        for secret in ["ticket.abc", "\"abc\"", "\"q\"", "s3cret"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("https://app.example"), "{printed}");
    }

    #[test]
    fn finds_the_ticket_parameter() {
        assert_eq!(ticket_from_query("ticket=abc"), Some("abc"));
        assert_eq!(ticket_from_query("x=1&ticket=abc&ticket=def"), Some("abc"));
        assert_eq!(ticket_from_query("tickets=abc"), None);
    }
}
