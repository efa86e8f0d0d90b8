//! Scrubbing secrets from what may be logged.
//!
//! Tickets may arrive in a query string (`/ws?ticket=…`); access logs record
//! request URIs, so every URI is passed through [`redact_uri`] before it is logged.
//! Service URLs may carry passwords (`REDIS_URL`, `DATABASE_URL`): the
//! configs hold them as [`SecretUrl`]s, which print without them.

use std::borrow::Cow;

/// Query parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &["ticket", "token", "key", "api_key", "session"];

/// The path and query of a URI with the values of secret parameters replaced by `[REDACTED]`.
pub fn redact_uri(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let needs_redaction = query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        SECRET_PARAMS.iter().any(|s| name.eq_ignore_ascii_case(s))
    });
    if !needs_redaction {
        return Cow::Borrowed(path_and_query);
    }
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if SECRET_PARAMS.iter().any(|s| name.eq_ignore_ascii_case(s)) => {
                format!("{name}=[REDACTED]")
            }
            _ => pair.to_owned(),
        })
        .collect();
    Cow::Owned(format!("{path}?{}", redacted.join("&")))
}

/// A URL that may carry a password (`redis://:pass@host`,
/// `postgres://user:pass@host/db`), as the services hold `REDIS_URL` and
/// `DATABASE_URL`. Its `Display` and `Debug` replace the password by
/// `[REDACTED]`, so a config printed with `{:?}` or a URL in an error's
/// context ("connecting to Redis at …") never leaks it; only
/// [`expose`](Self::expose), for the client library that connects, gives
/// the real one.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL itself, password included: to connect with, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

/// A URL with the password of its user info (`user:password@`) replaced by
/// `[REDACTED]`; the user name, host and the rest stay, for the reader of
/// the log. The user info ends at the authority's last `@` (a password may
/// contain an unescaped `@`).
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Cow::Borrowed(url);
    };
    let rest = &url[scheme_end..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_len].rfind('@') else {
        return Cow::Borrowed(url);
    };
    let Some(colon) = rest[..at].find(':') else {
        return Cow::Borrowed(url);
    };
    Cow::Owned(format!(
        "{}[REDACTED]{}",
        &url[..scheme_end + colon + 1],
        &rest[at..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_only_secret_params() {
        assert_eq!(redact_uri("/ws"), "/ws");
        assert_eq!(redact_uri("/ws?x=1"), "/ws?x=1");
        assert_eq!(
            redact_uri("/ws?x=1&ticket=abcdef&TICKET=zz"),
            "/ws?x=1&ticket=[REDACTED]&TICKET=[REDACTED]"
        );
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://:[REDACTED]@cache:6379/0"
        );
        assert_eq!(
            redact_url("postgres://app:p@ss:w0rd@db/tessera?sslmode=require"),
            "postgres://app:[REDACTED]@db/tessera?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/tessera"),
            "postgres://postgres@127.0.0.1:5432/tessera"
        );
        assert_eq!(
            redact_url("redis://cache/0?note=a:b@c"),
            "redis://cache/0?note=a:b@c"
        );
        let url = SecretUrl::from("rediss://default:hunter2@cache:6380");
        assert_eq!(url.expose(), "rediss://default:hunter2@cache:6380");
        for shown in [format!("{url}"), format!("{url:?}"), format!("{url:#?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("rediss://default:[REDACTED]@cache:6380"),
                "{shown}"
            );
        }
    }
}
