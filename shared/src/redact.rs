//! Scrubbing secrets from what may be logged.
//!
//! Tickets may arrive in a query string (`/ws?ticket=…`); access logs record
//! request URIs, so every URI is passed through [`redact_uri`] before it is logged.

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
}
