//! The browser-origin allowlist (`ALLOWED_ORIGINS`), used by auth-service for
//! CSRF defence and CORS and by ws-node to stop cross-site WebSocket hijacking.
//!
//! Matching is exact, on the serialised origin a browser sends
//! (`scheme://host[:port]`, no path, no trailing slash): `https://app.example`
//! does not admit `https://app.example.evil`, `http://app.example`, or
//! `https://app.example:8443`. `null` and a missing header never match.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginAllowlist {
    origins: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid origin {0:?} in ALLOWED_ORIGINS: expected scheme://host[:port] with scheme http or https, lowercase, no path or trailing slash"
)]
pub struct InvalidOrigin(pub String);

impl OriginAllowlist {
    /// Validates every entry; empty entries (from `a,,b` or an empty variable) are skipped.
    pub fn new<S: AsRef<str>>(origins: &[S]) -> Result<Self, InvalidOrigin> {
        let mut list = Vec::new();
        for origin in origins
            .iter()
            .map(|o| o.as_ref().trim())
            .filter(|o| !o.is_empty())
        {
            validate_origin(origin)?;
            if !list.iter().any(|o| o == origin) {
                list.push(origin.to_owned());
            }
        }
        Ok(Self { origins: list })
    }

    /// Whether a request's `Origin` header value is allowed (exact match).
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == origin)
    }

    pub fn origins(&self) -> &[String] {
        &self.origins
    }
}

fn validate_origin(origin: &str) -> Result<(), InvalidOrigin> {
    let invalid = || InvalidOrigin(origin.to_owned());
    let (scheme, rest) = origin.split_once("://").ok_or_else(invalid)?;
    if scheme != "http" && scheme != "https" {
        return Err(invalid());
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal's own colons sit inside brackets.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'-' | b'[' | b']' | b':')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_only() {
        let list =
            OriginAllowlist::new(&["https://app.example", "http://localhost:3000"]).expect("valid");
        assert!(list.allows("https://app.example"));
        assert!(list.allows("http://localhost:3000"));
        for refused in [
            "null",
            "",
            "http://app.example",
            "https://app.example:443",
            "https://app.example.evil",
            "https://evil-app.example",
            "https://app.example/",
            "http://localhost:3001",
            "HTTPS://APP.EXAMPLE",
        ] {
            assert!(!list.allows(refused), "{refused:?} must be refused");
        }
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            "app.example",
            "ftp://x",
            "https://x/",
            "https://x/path",
            "https://X",
            "https://x:",
            "https://x:abc",
            "null",
        ] {
            assert!(OriginAllowlist::new(&[bad]).is_err(), "{bad:?}");
        }
        assert!(OriginAllowlist::new(&["http://[::1]:8080", "http://127.0.0.1", ""]).is_ok());
    }
}
