//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! Generated from the handlers' `#[utoipa::path]` attributes and the body
//! types' `ToSchema` derives, so it is written next to the code it describes.
//! Three things depend on the deployment and are filled in when the server is
//! built: the session cookie's name (`COOKIE_SECURE`), the channel
//! namespaces a publish may name (`CHANNEL_NAMESPACES`), and whether
//! `/metrics` is served here at all (not with `METRICS_LISTEN`). Tests check that the
//! document names every route of the router, with its methods.

use super::{api_keys, control, health, publish, sessions, tickets};
use crate::config::Config;
use crate::error::{ErrorBody, ErrorCode, ErrorDetail};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use shared::namespace::Namespaces;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Required};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tessera auth-service",
        description = "Logs people in with HttpOnly session cookies, manages API keys, mints \
            single-use WebSocket tickets, publishes and controls connections. Every error answer \
            is `{\"error\":{\"code\",\"message\"}}` (`ErrorBody`). Cookie-authenticated requests \
            other than GET are CSRF-checked: `Sec-Fetch-Site: cross-site` is refused, and an \
            `Origin`, when sent, must be in ALLOWED_ORIGINS.",
    ),
    paths(
        sessions::login,
        sessions::logout,
        sessions::me,
        sessions::list,
        sessions::revoke_all,
        sessions::revoke_one,
        tickets::mint,
        api_keys::create,
        api_keys::list,
        api_keys::revoke,
        publish::publish,
        control::list_connections,
        control::disconnect_user,
        control::disconnect_connection,
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_json,
    ),
    components(
        schemas(ErrorBody<'_>, ErrorDetail<'_>, ErrorCode),
        responses(
            BadRequest,
            Unauthenticated,
            Forbidden,
            NotFound,
            RequestTimeout,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            RateLimited,
            Unavailable,
        ),
    ),
    modifiers(&SecuritySchemes, &InternalErrors, &OptionalMintBody),
    tags(
        (name = "sessions", description = "Logging in and out; the caller's sessions"),
        (name = "tickets", description = "Single-use WebSocket tickets"),
        (name = "api-keys", description = "The caller's own API keys"),
        (name = "publish", description = "Server-side publishing"),
        (name = "control", description = "Other users' connections (`admin` scope)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    ),
)]
struct ApiDoc;

/// The document for this deployment, as served: JSON bytes built once at startup.
pub fn document(config: &Config, namespaces: &Namespaces) -> Bytes {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    doc["components"]["securitySchemes"]["session_cookie"]["name"] =
        config.common.cookie_name().into();
    // Only a configured namespace can be published to (else 422 unknown_namespace).
    let names: Vec<&str> = namespaces.rules().iter().map(|r| r.name.as_str()).collect();
    let channel = &mut doc["components"]["schemas"]["PublishRequest"]["properties"]["channel"];
    assert!(channel.is_object(), "PublishRequest has a channel property");
    channel["pattern"] = format!("^({}):[A-Za-z0-9_.:@=+-]+$", names.join("|")).into();
    // With METRICS_LISTEN, /metrics is served elsewhere, not by this API.
    if config.common.metrics_listen.is_some()
        && let Some(paths) = doc["paths"].as_object_mut()
    {
        paths.remove("/metrics");
    }
    Bytes::from(serde_json::to_vec(&doc).expect("JSON serialises"))
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API",
        body = Object, content_type = "application/json")),
)]
pub async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.openapi.clone(),
    )
}

/// The two ways to authenticate.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__Host-session",
                "The session cookie set by `POST /v1/login` (HttpOnly, SameSite=Lax). Its name is \
                 `__Host-session`, or `session` where the server runs with COOKIE_SECURE=false; \
                 this document names the one this server uses.",
            ))),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tess_…")
                    .description(Some(
                        "An API key (`tess_…`, from `POST /v1/api-keys` or the operator CLI) as \
                         `Authorization: Bearer <key>`. A request with an Authorization header is \
                         judged by it alone, never by the cookie.",
                    ))
                    .build(),
            ),
        );
    }
}

/// `POST /v1/tickets` may come without a body. utoipa makes a body optional
/// only when its type is an `Option`, which would also make a JSON `null` body
/// valid, and the server refuses that (422).
struct OptionalMintBody;

impl Modify for OptionalMintBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let body = openapi
            .paths
            .paths
            .get_mut("/v1/tickets")
            .and_then(|item| item.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut());
        if let Some(RefOr::T(body)) = body {
            body.required = Some(Required::False);
        }
    }
}

/// A bug answers 500 `internal` (details in the log), on any route.
struct InternalErrors;

impl Modify for InternalErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation.responses.responses.insert(
                    "500".to_owned(),
                    error_response("A bug (`internal`); the details are in the server's log")
                        .into(),
                );
            }
        }
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build()
}

/// Adds `Retry-After` (seconds) to an error answer.
fn with_retry_after(response: Response, description: &str) -> Response {
    let mut response = response;
    response.headers.insert(
        "retry-after".to_owned(),
        HeaderBuilder::new()
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            ))
            .description(Some(description))
            .build()
            .into(),
    );
    response
}

/// The error answers the handlers share, as `components/responses`: each an
/// `ErrorBody` with its status's codes.
macro_rules! error_responses {
    ($($name:ident => $description:expr;)*) => {$(
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), $description.into())
            }
        }
    )*};
}

error_responses! {
    BadRequest => error_response(
        "The body is not JSON (`malformed_json`), nests deeper than 64 levels \
         (`json_too_deep`) or could not be read (`unreadable_body`), or a \
         path parameter is not valid UTF-8 (`invalid_path`)",
    );
    Unauthenticated => error_response(
        "No valid session cookie or API key: missing, unknown, expired or revoked \
         (`unauthenticated`)",
    );
    Forbidden => error_response(
        "A cookie request failed the CSRF checks (`cross_site_request`, `origin_not_allowed`), or \
         the credential lacks a scope (`insufficient_scope`, `scope_not_allowed`)",
    );
    NotFound => error_response("No such resource of the caller's (`not_found`)");
    RequestTimeout => error_response(
        "The body did not arrive within REQUEST_READ_TIMEOUT_SECS (`request_timeout`)",
    );
    PayloadTooLarge => error_response(
        "The body is over 96 KiB, or a publish's `data` over 64 KiB (`payload_too_large`)",
    );
    UnsupportedMediaType => error_response(
        "A body without `Content-Type: application/json` (`unsupported_media_type`)",
    );
    Unprocessable => error_response(
        "Valid JSON, but a field is missing, unknown or invalid (`invalid_field`, \
         `password_too_long`, `invalid_name`, `invalid_scopes`, `unknown_namespace`, \
         `idempotency_unsupported`)",
    );
    RateLimited => with_retry_after(
        error_response(
            "Over a rate limit (`rate_limited`), or a publish over the user's quota \
             (`quota_exceeded`)"
        ),
        "Seconds until the limit's window lets a request through",
    );
    Unavailable => with_retry_after(
        error_response(
            "Postgres or Redis cannot be reached (`unavailable`), or too many logins are being \
             hashed at once (`busy`); retry",
        ),
        "Always 1",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn document_is_openapi_3_1_for_this_deployment() {
        let mut config = Config::from_env().expect("default config");
        config.common.cookie_secure = false;
        let doc: Value =
            serde_json::from_slice(&document(&config, &Namespaces::default())).expect("JSON");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1."))
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["session_cookie"]["name"],
            "session"
        );
        let pattern =
            doc["components"]["schemas"]["PublishRequest"]["properties"]["channel"]["pattern"]
                .as_str()
                .expect("a channel pattern");
        assert!(
            pattern.starts_with("^(public|user|broadcast):"),
            "{pattern}"
        );
    }
}
