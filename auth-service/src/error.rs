//! The one error type of auth-service and how each case becomes an HTTP answer.
//!
//! Every error body has the shape `{"error":{"code":"…","message":"…"}}`. Client
//! mistakes are 4xx with a code a program can branch on; failures of Postgres or
//! Redis are 503 (the request may be retried, and we fail closed rather than
//! guess); only genuine bugs are 500, and their details go to the log, not the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad JSON, bad UTF-8, bad header.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },

    /// The JSON is well-formed but a field is missing, unknown or invalid.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },

    /// No valid credential (missing, garbage, expired, revoked).
    #[error("{message}")]
    Unauthenticated {
        code: &'static str,
        message: &'static str,
    },

    /// A valid credential that may not do this (scope, CSRF, origin).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },

    #[error("{0}")]
    NotFound(&'static str),

    #[error("{message}")]
    Conflict { code: &'static str, message: String },

    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },

    #[error("the request body did not arrive in time")]
    BodyTimeout,

    #[error("expected a JSON body with Content-Type: application/json")]
    UnsupportedMediaType,

    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },

    /// The server is at capacity (e.g. the password-hashing queue is full).
    #[error("{0}")]
    Busy(&'static str),

    /// A backing service cannot be reached (when the original error is not at hand).
    #[error("{0}")]
    Unavailable(&'static str),

    #[error("database unavailable: {0}")]
    Database(#[from] sqlx::Error),

    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),

    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }

    /// The 401 for every kind of bad or missing session or key: one answer, so
    /// a caller learns nothing about *why* a credential failed.
    pub fn unauthenticated() -> Self {
        Self::Unauthenticated {
            code: "unauthenticated",
            message: "a valid session cookie or API key is required",
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::Unauthenticated { code, .. } => (StatusCode::UNAUTHORIZED, code),
            Self::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Database(e) if is_unavailable_db(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Self::Redis(e) if is_unavailable_redis(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Self::Database(_) | Self::Redis(_) | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

/// Connectivity failures (retryable, 503) as opposed to bugs such as a bad query (500).
fn is_unavailable_db(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    )
}

fn is_unavailable_redis(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Builds the standard error body; also used by fallbacks and middleware.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Database(e) if status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(error = %e, "database unavailable");
                "the database is unavailable; retry later".to_owned()
            }
            Self::Redis(e) if status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(error = %e, "redis unavailable");
                "a backing service is unavailable; retry later".to_owned()
            }
            Self::Database(_) | Self::Redis(_) | Self::Internal(_) => {
                tracing::error!(error = %self, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = error_response(status, code, &message);
        if let Self::RateLimited { retry_after_secs } = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
