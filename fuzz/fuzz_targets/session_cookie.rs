//! Session cookies, read in two places: by ws-node from an upgrade's `Cookie`
//! header (`UpgradeRequest`) and by auth-service (`session_cookie_value`).
//! Both must find the same value in the same header, and a value that
//! passes for a session token (`shared::secret::looks_like_token`) must be one
//! the service could have issued: 32 bytes in canonical unpadded base64url.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use shared::secret::{TOKEN_LEN, looks_like_token};
use std::net::SocketAddr;
use ws_node::handshake::UpgradeRequest;

fuzz_target!(|data: &[u8]| {
    let peer: SocketAddr = "192.0.2.1:40000".parse().expect("address");
    for name in [
        shared::session::cookie_name(true),
        shared::session::cookie_name(false),
    ] {
        let node = UpgradeRequest::new(peer, true, None, [("cookie", data)], name);
        let node = node.session_cookie();
        if let Some(value) = node {
            assert!(!value.starts_with('"') && !value.ends_with('"'));
            let header = std::str::from_utf8(data).expect("a cookie read is UTF-8");
            assert!(header.contains(&format!("{name}=")));
            assert!(header.contains(value));
            check_token(value);
        }
        // What auth-service reads, from a header it can read at all.
        let Ok(value) = HeaderValue::from_bytes(data) else {
            continue;
        };
        if value.to_str().is_err() {
            continue;
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, value);
        let service = auth_service::extract::session_cookie_value(&headers, name);
        assert_eq!(
            service.as_deref(),
            node,
            "ws-node and auth-service disagree"
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_token(text);
    }
});

/// A value taken for a session token re-encodes to itself.
fn check_token(value: &str) {
    if !looks_like_token(value) {
        return;
    }
    assert_eq!(value.len(), TOKEN_LEN);
    let bytes = URL_SAFE_NO_PAD
        .decode(value)
        .unwrap_or_else(|e| panic!("{value:?} passes for a token but is not base64url: {e}"));
    assert_eq!(bytes.len(), 32);
    assert_eq!(URL_SAFE_NO_PAD.encode(&bytes), value);
}
