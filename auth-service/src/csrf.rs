//! CSRF defence for requests a browser could be tricked into sending with the
//! session cookie (login, logout, ticket minting, key management).
//!
//! Two checks, both from headers the page cannot forge in a browser:
//! `Sec-Fetch-Site: cross-site` is refused outright, and a present `Origin` must
//! be in the allowlist exactly. A request with neither header is not from a
//! modern browser (browsers send `Origin` on every POST), so it carries no
//! ambient-credential risk and is let through — that is how curl and server
//! clients use the API. Requiring `Content-Type: application/json` for bodies
//! adds a third barrier: cross-origin JSON posts need a CORS preflight, which the
//! allowlist answers.

use crate::error::Error;
use axum::http::HeaderMap;
use shared::origin::OriginAllowlist;

/// Refuses a cross-site browser request; returns the request's allowed `Origin`, if it sent one.
pub fn check_browser_request(
    headers: &HeaderMap,
    allowlist: &OriginAllowlist,
) -> Result<Option<String>, Error> {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|site| site.eq_ignore_ascii_case("cross-site")) {
        return Err(Error::forbidden(
            "cross_site_request",
            "cross-site requests may not use the session cookie",
        ));
    }
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(None);
    };
    match origin.to_str() {
        Ok(origin) if allowlist.allows(origin) => Ok(Some(origin.to_owned())),
        _ => Err(Error::forbidden(
            "origin_not_allowed",
            "the request's Origin is not in ALLOWED_ORIGINS",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn decisions() {
        let list = OriginAllowlist::new(&["https://app.example"]).expect("valid");
        assert_eq!(check_browser_request(&headers(&[]), &list).ok(), Some(None));
        assert_eq!(
            check_browser_request(
                &headers(&[
                    ("origin", "https://app.example"),
                    ("sec-fetch-site", "same-origin")
                ]),
                &list
            )
            .ok(),
            Some(Some("https://app.example".to_owned()))
        );
        assert!(
            check_browser_request(&headers(&[("sec-fetch-site", "cross-site")]), &list).is_err()
        );
        assert!(
            check_browser_request(&headers(&[("origin", "https://evil.example")]), &list).is_err()
        );
        assert!(check_browser_request(&headers(&[("origin", "null")]), &list).is_err());
        assert!(
            check_browser_request(
                &headers(&[
                    ("origin", "https://app.example"),
                    ("sec-fetch-site", "cross-site")
                ]),
                &list
            )
            .is_err()
        );
    }
}
