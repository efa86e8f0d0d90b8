//! Every metric auth-service exports, named and described once.
//! [`register`] puts each of them, with every value of its labels, into
//! `/metrics` at zero from start-up: a dashboard or an alert then finds its
//! series before the first event (`rate()` over a series that appears only
//! with its first increment misses that increment), and a test checks the
//! Grafana dashboard against this list.
//!
//! The code that counts uses these constants, never a literal name. The
//! request metrics ([`HTTP_REQUESTS`], [`HTTP_REQUEST_DURATION`]) are
//! labelled by route, method and status class; those series appear with each
//! combination's first request (see `routes::record_metrics`).

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub const ACCEPT_ERRORS: &str = "http_accept_errors_total";
pub const LOGINS: &str = "logins_total";
pub const SESSIONS_CREATED: &str = "sessions_created_total";
pub const PASSWORD_HASHES_IN_PROGRESS: &str = "password_hashes_in_progress";
pub const RATE_LIMITED: &str = "rate_limited_total";
pub const TICKETS_MINTED: &str = "tickets_minted_total";
pub const API_KEYS_CREATED: &str = "api_keys_created_total";
pub const SERVER_PUBLISHES: &str = "server_publishes_total";

/// Gauges: name and help.
const GAUGES: &[(&str, &str)] = &[(
    PASSWORD_HASHES_IN_PROGRESS,
    "Password hashes being computed or waiting for a hashing slot.",
)];

/// Counters without labels: name and help.
const COUNTERS: &[(&str, &str)] = &[
    (
        ACCEPT_ERRORS,
        "Errors accepting TCP connections (typically out of file descriptors).",
    ),
    (SESSIONS_CREATED, "Sessions created by successful logins."),
    (API_KEYS_CREATED, "API keys created."),
    (
        SERVER_PUBLISHES,
        "Messages published through POST /v1/publish (duplicates included).",
    ),
];

/// Counters with one label: name, help, label, every value of the label.
const LABELLED_COUNTERS: &[(&str, &str, &str, &[&str])] = &[
    (
        LOGINS,
        "Login attempts that were checked, by outcome (refusals by a rate limit are in rate_limited_total).",
        "outcome",
        &["succeeded", "failed"],
    ),
    (
        RATE_LIMITED,
        "Requests refused with 429 by a rate limit, by limit.",
        "limit",
        &["login_account", "login_ip", "mint_user", "mint_key"],
    ),
    (
        TICKETS_MINTED,
        "WebSocket tickets minted, by the credential that minted them.",
        "source",
        &["session", "api_key"],
    ),
];

/// Installs the process's Prometheus recorder (if no one has yet), and
/// describes every metric and registers each series at zero in it; returns
/// the handle that renders `/metrics`. Idempotent: a counter already counting
/// keeps its count (tests build several apps in one
/// process).
pub fn register() -> metrics_exporter_prometheus::PrometheusHandle {
    // First: anything registered before the recorder is installed is lost.
    let handle = shared::telemetry::prometheus();
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route template, method and status class."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "HTTP request duration by route template and method."
    );
    for &(name, help) in GAUGES {
        metrics::describe_gauge!(name, help);
        metrics::gauge!(name).increment(0.0);
    }
    for &(name, help) in COUNTERS {
        metrics::describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
    for &(name, help, label, values) in LABELLED_COUNTERS {
        metrics::describe_counter!(name, help);
        for &value in values {
            metrics::counter!(name, label => value).increment(0);
        }
    }
    handle
}

/// Every metric name this module declares.
pub fn names() -> impl Iterator<Item = &'static str> {
    [HTTP_REQUESTS, HTTP_REQUEST_DURATION]
        .into_iter()
        .chain(GAUGES.iter().chain(COUNTERS).map(|(name, _)| *name))
        .chain(LABELLED_COUNTERS.iter().map(|(name, ..)| *name))
}

#[cfg(test)]
mod tests {
    use shared::keys::RateBucket;

    #[test]
    fn every_rate_limit_has_its_label() {
        let (.., limits) = super::LABELLED_COUNTERS
            .iter()
            .find(|(name, ..)| *name == super::RATE_LIMITED)
            .expect("rate_limited_total");
        let buckets = [
            RateBucket::LoginFailuresByAccount,
            RateBucket::LoginFailuresByIp,
            RateBucket::MintByUser,
            RateBucket::MintByApiKey,
        ];
        let labels: Vec<_> = buckets
            .into_iter()
            .map(crate::rate_limit::limit_label)
            .collect();
        assert_eq!(&labels, limits);
    }

    #[test]
    fn the_code_names_metrics_only_through_this_module() {
        testkit::assert_metrics_named_through_telemetry(env!("CARGO_MANIFEST_DIR"));
    }
}
