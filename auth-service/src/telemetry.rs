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

use shared::telemetry::{Declared, LabelledCounter};

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
pub const SESSION_LOOKUPS: &str = "session_lookups_total";
pub const API_KEY_LOOKUPS: &str = "api_key_lookups_total";

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

/// Counters with one label, and every value of the label.
const LABELLED_COUNTERS: &[LabelledCounter<'static>] = &[
    LabelledCounter {
        name: LOGINS,
        help: "Login attempts that were checked, by outcome (refusals by a rate limit are in rate_limited_total).",
        label: "outcome",
        values: &["succeeded", "failed"],
    },
    LabelledCounter {
        name: RATE_LIMITED,
        help: "Requests refused with 429 by a rate limit, by limit.",
        label: "limit",
        values: &[
            "login_account_ip",
            "login_account",
            "login_ip",
            "auth_ip",
            "mint_user",
            "mint_key",
        ],
    },
    LabelledCounter {
        name: SESSION_LOOKUPS,
        help: "Session cookies looked up in Postgres (a miss of the Redis cache), by outcome.",
        label: "outcome",
        values: &["found", "unknown"],
    },
    LabelledCounter {
        name: API_KEY_LOOKUPS,
        help: "API keys looked up in Postgres (a miss of the in-memory cache), by outcome.",
        label: "outcome",
        values: &["found", "unknown"],
    },
    LabelledCounter {
        name: TICKETS_MINTED,
        help: "WebSocket tickets minted, by the credential that minted them.",
        label: "source",
        values: &["session", "api_key"],
    },
];

/// Describes and registers every metric (see [`Declared::register`]);
/// returns the handle that renders `/metrics`. The request metrics are only
/// described: their series appear with each combination's first request.
pub fn register() -> metrics_exporter_prometheus::PrometheusHandle {
    let handle = Declared {
        gauges: GAUGES,
        counters: COUNTERS,
        labelled_counters: LABELLED_COUNTERS,
        histograms: &[],
    }
    .register();
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route template, method and status class."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "HTTP request duration by route template and method."
    );
    handle
}

#[cfg(test)]
mod tests {
    use shared::keys::RateBucket;

    #[test]
    fn every_rate_limit_has_its_label() {
        let limits = super::LABELLED_COUNTERS
            .iter()
            .find(|counter| counter.name == super::RATE_LIMITED)
            .expect("rate_limited_total")
            .values;
        let buckets = [
            RateBucket::LoginFailuresByAccountAndIp,
            RateBucket::LoginFailuresByAccount,
            RateBucket::LoginFailuresByIp,
            RateBucket::AuthFailuresByIp,
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
