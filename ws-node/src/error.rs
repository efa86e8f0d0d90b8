//! The one error type of ws-node: why a handshake is refused, as an HTTP answer
//! sent *before* the upgrade (`{"error":{"code","message"}}`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a WebSocket upgrade request")]
    NotWebSocket,
    /// RFC 6455 §4.2.2: answered 426 with the version spoken here.
    #[error("unsupported Sec-WebSocket-Version; this node speaks version 13")]
    UnsupportedVersion,
    #[error("Sec-WebSocket-Key must be the base64 of 16 random bytes, sent once")]
    InvalidWebSocketKey,
    /// Its body would be read as the WebSocket's first frames.
    #[error("an upgrade request must not have a body")]
    UpgradeWithBody,
    #[error("the ticket is invalid, expired or already used; mint a new one")]
    InvalidTicket,
    #[error(
        "the session is not valid here; check it with GET /v1/me on auth-service and retry, or log in"
    )]
    InvalidSession,
    #[error("cookie authentication needs an Origin header from ALLOWED_ORIGINS")]
    OriginNotAllowed,
    #[error("this ticket was minted for another origin")]
    OriginMismatch,
    #[error("the credential lacks the `connect` scope")]
    InsufficientScope,
    #[error("too many connections for this user")]
    TooManyConnections,
    #[error("too many unauthenticated connections; authenticate in the handshake or retry later")]
    TooManyPending,
    #[error("the node is shutting down; connect to another")]
    Draining,
    #[error("the node's Redis subscription is down; retry later")]
    NotSubscribed,
    #[error("the node cannot reach Redis; retry later")]
    Unavailable(#[from] redis::RedisError),
}

impl Error {
    /// Every `error.code` a handshake refusal can carry (the metrics' label
    /// values are registered from it).
    pub const CODES: &[&str] = &[
        "not_websocket",
        "unsupported_version",
        "invalid_websocket_key",
        "upgrade_with_body",
        "invalid_ticket",
        "invalid_session",
        "origin_not_allowed",
        "origin_mismatch",
        "insufficient_scope",
        "too_many_connections",
        "too_many_pending",
        "draining",
        "unavailable",
    ];

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotWebSocket => (StatusCode::BAD_REQUEST, "not_websocket"),
            Self::UnsupportedVersion => (StatusCode::UPGRADE_REQUIRED, "unsupported_version"),
            Self::InvalidWebSocketKey => (StatusCode::BAD_REQUEST, "invalid_websocket_key"),
            Self::UpgradeWithBody => (StatusCode::BAD_REQUEST, "upgrade_with_body"),
            Self::InvalidTicket => (StatusCode::UNAUTHORIZED, "invalid_ticket"),
            Self::InvalidSession => (StatusCode::UNAUTHORIZED, "invalid_session"),
            Self::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            Self::OriginMismatch => (StatusCode::FORBIDDEN, "origin_mismatch"),
            Self::InsufficientScope => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Self::TooManyConnections => (StatusCode::TOO_MANY_REQUESTS, "too_many_connections"),
            Self::TooManyPending => (StatusCode::TOO_MANY_REQUESTS, "too_many_pending"),
            Self::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            Self::NotSubscribed | Self::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        }
    }

    /// For metrics labels.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    /// Whether the client should wait a moment and retry (`Retry-After: 1`).
    fn retry_soon(&self) -> bool {
        matches!(
            self.status_and_code().0,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        )
    }

    /// A header the refusal carries besides the body: 426 names the
    /// WebSocket version this node speaks, so a client can retry with it.
    fn extra_header(&self) -> Option<(header::HeaderName, &'static str)> {
        matches!(self, Self::UnsupportedVersion).then_some((header::SEC_WEBSOCKET_VERSION, "13"))
    }

    fn log(&self) {
        if let Self::Unavailable(e) = self {
            tracing::warn!(error = %e, "refusing handshake: redis unavailable");
        }
    }

    /// The refusal as a whole HTTP/1.1 response, for [`crate::transport::server`] to
    /// write by hand; the same status and body as [`IntoResponse`] gives,
    /// and the connection closes after it.
    pub fn http_bytes(&self) -> Vec<u8> {
        self.log();
        let (status, code) = self.status_and_code();
        let body = error_body(code, &self.to_string());
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if self.retry_soon() {
            head.push_str("retry-after: 1\r\n");
        }
        if let Some((name, value)) = self.extra_header() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }
}

fn error_body(code: &str, message: &str) -> String {
    json!({ "error": { "code": code, "message": message } }).to_string()
}

pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        error_body(code, message),
    )
        .into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log();
        let (status, code) = self.status_and_code();
        let mut response = error_response(status, code, &self.to_string());
        if self.retry_soon() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some((name, value)) = self.extra_header() {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn codes_lists_every_refusal() {
        let unavailable = redis::RedisError::from((redis::ErrorKind::Io, "gone"));
        let every = [
            Error::NotWebSocket,
            Error::UnsupportedVersion,
            Error::InvalidWebSocketKey,
            Error::UpgradeWithBody,
            Error::InvalidTicket,
            Error::InvalidSession,
            Error::OriginNotAllowed,
            Error::OriginMismatch,
            Error::InsufficientScope,
            Error::TooManyConnections,
            Error::TooManyPending,
            Error::Draining,
            Error::NotSubscribed,
            Error::Unavailable(unavailable),
        ];
        let mut codes: Vec<_> = every.iter().map(Error::code).collect();
        codes.dedup();
        assert_eq!(codes, Error::CODES);
        let mut answers: Vec<(u16, &str)> = every
            .iter()
            .map(|e| (e.status_and_code().0.as_u16(), e.code()))
            .collect();
        answers.sort_unstable();
        answers.dedup();
        let mut documented = documented_refusals();
        documented.sort_unstable();
        assert_eq!(answers, documented, "docs/PROTOCOL.md's handshake refusals");
    }

    /// The status and `error.code` of each row of docs/PROTOCOL.md's table
    /// of handshake refusals.
    fn documented_refusals() -> Vec<(u16, &'static str)> {
        const PROTOCOL: &str = include_str!("../../docs/PROTOCOL.md");
        let section = &PROTOCOL[PROTOCOL.find("Handshake refusals:").expect("the table")..];
        section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|row| {
                let mut cells = row.trim_start_matches('|').split('|');
                let status = cells.next()?.trim().parse().ok()?;
                let code = cells.next()?.split('`').nth(1)?;
                Some((status, code))
            })
            .collect()
    }
}
