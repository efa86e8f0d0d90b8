//! The HTTP surface of auth-service (the README's HTTP API) and the
//! middleware around it.

mod api_keys;
mod control;
mod health;
pub mod openapi;
mod publish;
mod sessions;
mod tickets;

use crate::error::error_response;
use crate::state::AppState;
use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use metrics::{Counter, Histogram};
use std::convert::Infallible;
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP surface: the router, and around it the middleware every
/// answer goes through.
///
/// The middleware wraps the router as one service rather than being added with
/// `Router::layer`: that applies it to each route separately, inside the
/// router, where axum boxes and clones each route's whole stack for every
/// request (a visible share of a mint's instructions under `valgrind
/// --tool=callgrind`). Only the request metrics
/// sit inside, where the matched route is known.
pub fn app(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    let api = Router::new()
        .route("/v1/login", post(sessions::login))
        .route("/v1/logout", post(sessions::logout))
        .route("/v1/me", get(sessions::me))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/revoke-all", post(sessions::revoke_all))
        .route("/v1/sessions/{id}", delete(sessions::revoke_one))
        .route("/v1/tickets", post(tickets::mint))
        .route("/v1/api-keys", post(api_keys::create).get(api_keys::list))
        .route("/v1/api-keys/{id}", delete(api_keys::revoke))
        .route("/v1/publish", post(publish::publish))
        .route("/v1/users/{id}/connections", get(control::list_connections))
        .route("/v1/users/{id}/disconnect", post(control::disconnect_user))
        .route(
            "/v1/connections/{id}/disconnect",
            post(control::disconnect_connection),
        )
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(
            state
                .origins
                .origins()
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        ))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .max_age(Duration::from_secs(600));
    let mut router = Router::new()
        .merge(api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_json));
    if state.config.common.metrics_listen.is_none() {
        router = router.route("/metrics", get(health::metrics));
    }
    let router = match &state.config.static_dir {
        Some(dir) => router.fallback_service(static_files(dir)),
        None => router.fallback(not_found),
    };
    let router = router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(record_metrics))
        .with_state(state);
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request| {
            let uri = req.uri().path_and_query().map_or("", |pq| pq.as_str());
            let request_id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!(
                "http",
                method = %req.method(),
                uri = %shared::redact::redact_uri(uri),
                request_id,
            )
        })
        .on_response(DefaultOnResponse::new().level(Level::INFO))
        // 5xx answers are logged where they arise (with the cause); the
        // trace layer's own "response failed" line would only repeat them.
        .on_failure(DefaultOnFailure::new().level(Level::DEBUG));
    ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(CatchPanicLayer::custom(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(trace)
        .layer(cors)
        .service(router)
}

/// The files of `STATIC_DIR`, for whatever path no route matched: GET and
/// HEAD only, `index.html` for a directory, and the API's JSON 404 for
/// anything else (a missing file, another method, a path leaving the
/// directory). Pages are revalidated on every load (`no-cache`, with the
/// `ETag`/`Last-Modified` ServeDir sends), so a deployment's new version is
/// picked up at once, and they may load scripts, styles and connections from
/// this origin and open WebSockets to the nodes, nothing else.
fn static_files(
    dir: &std::path::Path,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    use axum::handler::HandlerWithoutStateExt as _;
    let files = tower_http::services::ServeDir::new(dir)
        .call_fallback_on_method_not_allowed(true)
        .not_found_service(not_found.into_service());
    let set =
        |name, value| SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value));
    ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(set(header::CACHE_CONTROL, "no-cache"))
        .layer(set(
            header::CONTENT_SECURITY_POLICY,
            STATIC_CONTENT_SECURITY_POLICY,
        ))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(header::REFERRER_POLICY, "no-referrer"))
        .service(files)
}

/// What pages from `STATIC_DIR` may load and connect to: this origin, and
/// WebSockets anywhere (the nodes are on other origins unless a proxy puts
/// them on this one).
const STATIC_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// What `METRICS_LISTEN` serves: `/metrics` alone, which the public router
/// then leaves out.
pub fn metrics_only(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Counts requests and their latency by route template (not raw path, which
/// would explode label cardinality).
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| ROUTES.iter().position(|r| *r == p.as_str()))
        .unwrap_or(ROUTES.len());
    let method = METHODS
        .iter()
        .position(|m| *m == req.method().as_str())
        .unwrap_or(METHODS.len() - 1);
    let started = Instant::now();
    let response = next.run(req).await;
    let status = usize::from(response.status().as_u16() / 100).min(STATUS_CLASSES.len() - 1);
    HTTP_METRICS.requests(route, method, status).increment(1);
    HTTP_METRICS
        .duration(route, method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The request metrics' handles, one per label combination, each registered
/// on first use. Asking the recorder for a labelled metric hashes and looks up
/// its labels every time, a visible share of a mint's instructions under
/// `valgrind --tool=callgrind`; a handle is an `Arc`. That measurement is why
/// this small cache is written here rather than taken from a library.
struct HttpMetrics {
    /// By `[route][method][status class]`; route `ROUTES.len()` is "unmatched".
    requests: Vec<OnceLock<Counter>>,
    /// By `[route][method]`.
    durations: Vec<OnceLock<Histogram>>,
}

static HTTP_METRICS: LazyLock<HttpMetrics> = LazyLock::new(|| {
    let routes = ROUTES.len() + 1;
    HttpMetrics {
        requests: (0..routes * METHODS.len() * STATUS_CLASSES.len())
            .map(|_| OnceLock::new())
            .collect(),
        durations: (0..routes * METHODS.len())
            .map(|_| OnceLock::new())
            .collect(),
    }
});

impl HttpMetrics {
    fn requests(&self, route: usize, method: usize, status: usize) -> &Counter {
        let index = (route * METHODS.len() + method) * STATUS_CLASSES.len() + status;
        self.requests[index].get_or_init(|| {
            metrics::counter!(
                crate::telemetry::HTTP_REQUESTS,
                "method" => METHODS[method],
                "route" => route_label(route),
                "status" => STATUS_CLASSES[status],
            )
        })
    }

    fn duration(&self, route: usize, method: usize) -> &Histogram {
        self.durations[route * METHODS.len() + method].get_or_init(|| {
            metrics::histogram!(
                crate::telemetry::HTTP_REQUEST_DURATION,
                "method" => METHODS[method],
                "route" => route_label(route),
            )
        })
    }
}

fn route_label(route: usize) -> &'static str {
    ROUTES.get(route).copied().unwrap_or("unmatched")
}

/// Every route template the router serves (the `route` metric label).
pub const ROUTES: &[&str] = &[
    "/v1/login",
    "/v1/logout",
    "/v1/me",
    "/v1/sessions",
    "/v1/sessions/revoke-all",
    "/v1/sessions/{id}",
    "/v1/tickets",
    "/v1/api-keys",
    "/v1/api-keys/{id}",
    "/v1/publish",
    "/v1/users/{id}/connections",
    "/v1/users/{id}/disconnect",
    "/v1/connections/{id}/disconnect",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// The `status` label: the status class, which is what dashboards alert on.
const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `method` label; the last one stands for every other method.
const METHODS: [&str; 8] = [
    "GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD", "PATCH", "other",
];

#[cfg(test)]
mod tests {
    use super::ROUTES;

    #[test]
    fn every_route_has_a_metrics_label() {
        // Every `.route(` call in this file, wherever rustfmt put its path.
        let source = include_str!("mod.rs");
        let routes: Vec<&str> = source
            .split(".route(")
            .skip(1)
            .filter_map(|call| call.split('"').nth(1))
            .filter(|path| path.starts_with('/'))
            .collect();
        assert!(routes.len() >= 17, "{routes:?}");
        for route in routes {
            assert!(ROUTES.contains(&route), "{route} is missing from ROUTES");
        }
    }
}
