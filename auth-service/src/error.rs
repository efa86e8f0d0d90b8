//! The one error type of auth-service and how each case becomes an HTTP answer.
//!
//! Every error body has the shape `{"error":{"code":"…","message":"…"}}`. Client
//! mistakes are 4xx with a code a program can branch on; failures of Postgres or
//! Redis are 503 (the request may be retried, and we fail closed rather than
//! guess); only genuine bugs are 500, and their details go to the log, not the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

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

    /// A user's publish quota ([`shared::quota`]) is spent for this window.
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after_secs: u64,
    },

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
            Self::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
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

/// Redis cannot serve the request now: unreachable, or out of memory (with
/// `maxmemory-policy noeviction` it refuses writes with `OOM`), which is
/// Redis's condition, not a bug of ours.
fn is_unavailable_redis(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Every `code` an error body can carry (the `ErrorCode` schema of
/// `GET /openapi.json`). A unit test below finds the codes written in the
/// source and checks that this list names exactly those.
pub const ERROR_CODES: &[&str] = &[
    // 400
    "malformed_json",
    "json_too_deep",
    "unreadable_body",
    "invalid_path",
    // 401
    "unauthenticated",
    "invalid_credentials",
    // 403
    "cross_site_request",
    "origin_not_allowed",
    "insufficient_scope",
    "scope_not_allowed",
    "scope_not_self_issuable",
    // 404, 405
    "not_found",
    "method_not_allowed",
    // 408, 409, 413, 415
    "request_timeout",
    "username_taken",
    "payload_too_large",
    "unsupported_media_type",
    // 422
    "invalid_field",
    "password_too_long",
    "weak_password",
    "invalid_name",
    "invalid_scopes",
    "unknown_namespace",
    "idempotency_unsupported",
    // 429, 500, 503
    "rate_limited",
    "quota_exceeded",
    "internal",
    "busy",
    "unavailable",
];

/// The body of every error answer: `{"error":{"code","message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// What went wrong, for a program to branch on; stable.
    #[schema(value_type = ErrorCode)]
    pub code: &'a str,
    /// What went wrong, for a person; may change.
    pub message: &'a str,
}

/// The schema of [`ErrorDetail::code`]: a string, one of [`ERROR_CODES`].
pub struct ErrorCode;

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "Stable error code. `weak_password` and `username_taken` come only from the \
                 operator CLI; every other code is an HTTP answer.",
            ))
            .enum_values(Some(ERROR_CODES.iter().copied()))
            .into()
    }
}

impl ToSchema for ErrorCode {}

/// Builds the standard error body; also used by fallbacks and middleware.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail { code, message },
    };
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
        if let Self::RateLimited { retry_after_secs }
        | Self::QuotaExceeded {
            retry_after_secs, ..
        } = self
        {
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

#[cfg(test)]
mod tests {
    use super::ERROR_CODES;
    use std::collections::BTreeSet;

    /// The codes written in one source file outside its tests: the literal
    /// after `Error::bad_request(`, `Error::unprocessable(`,
    /// `Error::forbidden(`, `code:` and `StatusCode::…,` (the fixed codes
    /// above and `error_response` calls), with whitespace ignored so
    /// rustfmt's line breaks do not matter.
    fn codes_in(source: &str) -> Vec<String> {
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let literal_after = |marker: &str| -> Vec<String> {
            compact
                .split(marker)
                .skip(1)
                .filter_map(|rest| rest.strip_prefix('"'))
                .filter_map(|rest| rest.split('"').next())
                .map(str::to_owned)
                .collect()
        };
        let mut codes = Vec::new();
        for marker in [
            "Error::bad_request(",
            "Error::unprocessable(",
            "Error::forbidden(",
            "code:",
        ] {
            codes.extend(literal_after(marker));
        }
        codes.extend(
            compact
                .split("StatusCode::")
                .skip(1)
                .map(|rest| rest.trim_start_matches(|c: char| c.is_ascii_uppercase() || c == '_'))
                .filter_map(|rest| rest.strip_prefix(",\""))
                .filter_map(|rest| rest.split('"').next())
                .map(str::to_owned),
        );
        codes
    }

    fn source_files(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                source_files(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }

    #[test]
    fn error_codes_lists_every_code_in_the_source() {
        let mut files = Vec::new();
        source_files(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut found = BTreeSet::new();
        for file in &files {
            let source = std::fs::read_to_string(file).expect("readable source");
            found.extend(codes_in(&source));
        }
        let listed: BTreeSet<String> = ERROR_CODES.iter().map(|c| (*c).to_owned()).collect();
        assert_eq!(
            listed.len(),
            ERROR_CODES.len(),
            "ERROR_CODES repeats a code"
        );
        assert_eq!(found, listed, "codes in the source vs ERROR_CODES");
    }
}
