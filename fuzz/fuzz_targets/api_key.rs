//! API keys: `auth_service::api_keys::is_well_formed`, which lets the service
//! refuse garbage before asking Postgres, and `bearer_token`, which takes the
//! key out of an `Authorization` header. A key passing the check has the
//! documented shape, and its checksum catches every single-character typo.

#![no_main]

use auth_service::api_keys::{KEY_LEN, KEY_PREFIX, is_well_formed};
use auth_service::extract::bearer_token;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value);
        if let Ok(Some(token)) = bearer_token(&headers) {
            let value = std::str::from_utf8(data).expect("a readable header is ASCII");
            let (scheme, rest) = value.split_once(' ').expect("scheme and token");
            assert!(scheme.eq_ignore_ascii_case("bearer"));
            assert_eq!(token, rest.trim());
            check(&token);
        }
    }
    if let Ok(key) = std::str::from_utf8(data) {
        check(key);
    }
});

fn check(key: &str) {
    if !is_well_formed(key) {
        return;
    }
    assert_eq!(key.len(), KEY_LEN);
    let body = key.strip_prefix(KEY_PREFIX).expect("the prefix");
    assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
    // Any one character changed, in the random part or the checksum, is refused.
    let mut typo = key.as_bytes().to_vec();
    for at in KEY_PREFIX.len()..KEY_LEN {
        let original = typo[at];
        for &other in BASE62.iter().filter(|&&c| c != original) {
            typo[at] = other;
            let typo = std::str::from_utf8(&typo).expect("ascii");
            assert!(!is_well_formed(typo), "{typo:?} passes as well as {key:?}");
        }
        typo[at] = original;
    }
}
