//! A connection's first bytes, as ws-node's hand-written upgrade path reads
//! them (`ws_node::transport::server::parse_first_request`, on top of
//! httparse). Besides not panicking, what it takes from the head must really
//! be there: above all, no request is taken for a WebSocket upgrade unless it
//! is `GET /ws` over HTTP/1.1 with every header an upgrade needs.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use ws_node::transport::server::{FirstRequest, parse_first_request};

const COOKIE: &str = "__Host-session";
/// As many headers as the parser takes; a head with more is hyper's.
const MAX_HEADERS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let peer: SocketAddr = "192.0.2.1:40000".parse().expect("address");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let reparsed = head.parse(data);
    let Some(first) = parse_first_request(data, peer, COOKIE) else {
        // "Read more" only for a head that is really incomplete.
        assert!(matches!(reparsed, Ok(httparse::Status::Partial)));
        return;
    };
    let FirstRequest::Upgrade { request, head_len } = first else {
        return;
    };
    // Taken for `GET /ws`: check everything against a second reading.
    assert_eq!(reparsed.ok(), Some(httparse::Status::Complete(head_len)));
    assert!(head_len <= data.len());
    assert_eq!(head.method, Some("GET"));
    let target = head.path.expect("a complete head has a target");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    assert_eq!(path, "/ws");
    let values = |name: &'static str| {
        head.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };

    // RFC 6455 §4.2.1, read independently of the parser under test.
    let upgrade = values("upgrade").any(|v| v.eq_ignore_ascii_case(b"websocket"));
    let connection = values("connection").any(|v| {
        std::str::from_utf8(v).is_ok_and(|v| {
            v.split(',')
                .any(|token| http_trim(token).eq_ignore_ascii_case("upgrade"))
        })
    });
    let version = values("sec-websocket-version").any(|v| v.trim_ascii() == b"13");
    let keys: Vec<&[u8]> = values("sec-websocket-key").map(<[u8]>::trim_ascii).collect();
    // Exactly one key, the canonical base64 of 16 bytes (a client's nonce).
    let key = match keys.as_slice() {
        [key] if STANDARD.decode(key).is_ok_and(|nonce| nonce.len() == 16) => Some(*key),
        _ => None,
    };
    // An upgrade request carries no body (RFC 6455 §4.1: a GET).
    let body = values("content-length").any(|v| v.trim_ascii().iter().any(|&b| b != b'0'))
        || values("transfer-encoding").next().is_some();
    let is_upgrade =
        head.version == Some(1) && upgrade && connection && version && key.is_some() && !body;
    assert_eq!(
        request.websocket_key().is_some(),
        is_upgrade,
        "upgrade recognised wrongly"
    );
    if let Some(k) = request.websocket_key() {
        assert_eq!(Some(k), key, "not the request's Sec-WebSocket-Key");
    }

    if let Some(ticket) = request.protocol_ticket() {
        let offered = values("sec-websocket-protocol").any(|v| {
            std::str::from_utf8(v).is_ok_and(|v| {
                v.split(',')
                    .any(|p| http_trim(p).strip_prefix("ticket.") == Some(ticket))
            })
        });
        assert!(offered, "ticket {ticket:?} not offered as a subprotocol");
    }
    if let Some(ticket) = request.query_ticket() {
        let first = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("ticket="));
        assert_eq!(first, Some(ticket), "not the first ticket parameter");
    }
    if let Some(origin) = request.origin() {
        assert!(values("origin").any(|v| v == origin.as_bytes()));
    }
    if let Some(cookie) = request.session_cookie() {
        assert!(!cookie.starts_with('"') && !cookie.ends_with('"'));
        let sent = values("cookie").any(|v| {
            std::str::from_utf8(v).is_ok_and(|v| {
                v.split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .any(|(name, value)| name == COOKIE && value.trim_matches('"') == cookie)
            })
        });
        assert!(sent, "session cookie {cookie:?} not sent");
    }
});

/// Optional whitespace around an HTTP list element: spaces and tabs only
/// (RFC 9110 §5.6.3).
fn http_trim(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}
