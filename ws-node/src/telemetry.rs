//! Every metric ws-node exports, named and described once. [`register`]
//! puts each of them, with every value of its labels, into `/metrics` at zero
//! from start-up: a dashboard or an alert then finds its series before the
//! first event (`rate()` over a series that appears only with its first
//! increment misses that increment), and a test checks the Grafana dashboard
//! against this list.
//!
//! The code that counts uses these constants, never a literal name.

pub const CONNECTIONS: &str = "ws_connections";
pub const PENDING_AUTH: &str = "ws_pending_auth";
pub const HANDSHAKES: &str = "ws_handshakes_total";
pub const TICKETS: &str = "ws_tickets_total";
pub const PENDING_AUTH_REFUSED: &str = "ws_pending_auth_refused_total";
pub const ACCEPT_ERRORS: &str = "ws_accept_errors_total";
pub const MESSAGES_RECEIVED: &str = "ws_messages_received_total";
pub const DELIVERIES: &str = "ws_deliveries_total";
pub const FANOUT_LATENCY: &str = "ws_fanout_latency_seconds";
pub const CLIENT_PUBLISHES: &str = "ws_client_publishes_total";
pub const RATE_LIMITED_FRAMES: &str = "ws_rate_limited_frames_total";
pub const SLOW_CONSUMERS_CLOSED: &str = "ws_slow_consumers_closed_total";
pub const IDLE_TIMEOUTS: &str = "ws_idle_timeouts_total";
pub const REVALIDATION_CLOSES: &str = "ws_revalidation_closes_total";
pub const RECOVERIES: &str = "ws_recoveries_total";
pub const GAP_FILLS: &str = "ws_gap_fills_total";
pub const UNRECOVERABLE_GAPS: &str = "ws_unrecoverable_gaps_total";
pub const DUPLICATES_DROPPED: &str = "ws_duplicates_dropped_total";
pub const SUBSCRIPTION_LOSSES: &str = "ws_subscription_losses_total";
pub const SUBSCRIBER_COMMANDS_DISCARDED: &str = "ws_subscriber_commands_discarded_total";

/// Gauges: name and help.
const GAUGES: &[(&str, &str)] = &[
    (
        CONNECTIONS,
        "Open authenticated WebSocket connections on this node.",
    ),
    (
        PENDING_AUTH,
        "Open sockets still waiting for their first-message `auth` frame.",
    ),
];

/// Counters without labels: name and help.
const COUNTERS: &[(&str, &str)] = &[
    (
        ACCEPT_ERRORS,
        "Errors accepting TCP connections (typically out of file descriptors).",
    ),
    (
        MESSAGES_RECEIVED,
        "Channel messages received from Redis pub/sub.",
    ),
    (
        DELIVERIES,
        "Messages queued to local subscribers (one per subscriber reached).",
    ),
    (
        CLIENT_PUBLISHES,
        "Messages published by clients over their WebSocket.",
    ),
    (
        RATE_LIMITED_FRAMES,
        "Client frames refused for exceeding CLIENT_MESSAGES_PER_SEC.",
    ),
    (
        SLOW_CONSUMERS_CLOSED,
        "Connections closed with 4008 because their send queue was full.",
    ),
    (
        IDLE_TIMEOUTS,
        "Connections closed after IDLE_TIMEOUT_SECS without a frame or pong.",
    ),
    (
        REVALIDATION_CLOSES,
        "Connections closed by periodic re-validation of their credential.",
    ),
    (
        GAP_FILLS,
        "Gaps in a channel's live stream filled from its history.",
    ),
    (
        UNRECOVERABLE_GAPS,
        "Gaps that history could not fill (subscribers were told `recovered: false`).",
    ),
    (
        DUPLICATES_DROPPED,
        "Live messages dropped as already delivered (after a gap fill).",
    ),
    (
        SUBSCRIPTION_LOSSES,
        "Losses of the node's Redis pub/sub connection (each followed by a reconnect).",
    ),
    (
        SUBSCRIBER_COMMANDS_DISCARDED,
        "Queued (un)subscribe commands dropped before a Redis reconnection.",
    ),
];

/// Counters with one label: name, help, label, every value of the label.
const LABELLED_COUNTERS: &[(&str, &str, &str, &[&str])] = &[
    (
        HANDSHAKES,
        "WebSocket handshakes by outcome: accepted, or the refusal's error code.",
        "outcome",
        &[
            "accepted",
            "not_websocket",
            "invalid_ticket",
            "invalid_session",
            "origin_not_allowed",
            "origin_mismatch",
            "insufficient_scope",
            "too_many_connections",
            "too_many_pending",
            "draining",
            "unavailable",
        ],
    ),
    (
        TICKETS,
        "Tickets presented to this node, by outcome: consumed (accepted), or why refused.",
        "outcome",
        &[
            "consumed",
            "invalid_ticket",
            "origin_mismatch",
            "insufficient_scope",
            "unavailable",
        ],
    ),
    (
        PENDING_AUTH_REFUSED,
        "Sockets refused because too many wait for first-message auth, per IP or per node.",
        "limit",
        &["ip", "node"],
    ),
    (
        RECOVERIES,
        "Subscriptions with `since`, by whether every missed message could be replayed.",
        "recovered",
        &["true", "false"],
    ),
];

/// Histograms: name and help.
const HISTOGRAMS: &[(&str, &str)] = &[(
    FANOUT_LATENCY,
    "Seconds from a message's dispatch on this node to its write onto a subscriber's \
     socket (one message in 16; the oldest message of each write).",
)];

/// Installs the process's Prometheus recorder (if no one has yet), and
/// describes every metric and registers each series at zero in it; returns
/// the handle that renders `/metrics`. Idempotent: a counter already counting
/// keeps its count (tests build several nodes in
/// one process).
pub fn register() -> metrics_exporter_prometheus::PrometheusHandle {
    // First: anything registered before the recorder is installed is lost.
    let handle = shared::telemetry::prometheus();
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
    for &(name, help) in HISTOGRAMS {
        metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
        // Registered by asking for its handle; the exporter lists it with
        // zero observations.
        let _ = metrics::histogram!(name);
    }
    handle
}

/// Every metric name this module declares.
pub fn names() -> impl Iterator<Item = &'static str> {
    GAUGES
        .iter()
        .chain(COUNTERS)
        .chain(HISTOGRAMS)
        .map(|(name, _)| *name)
        .chain(LABELLED_COUNTERS.iter().map(|(name, ..)| *name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn every_handshake_refusal_has_its_label() {
        let (.., outcomes) = LABELLED_COUNTERS
            .iter()
            .find(|(name, ..)| *name == HANDSHAKES)
            .expect("handshakes");
        assert_eq!(outcomes[0], "accepted");
        assert_eq!(&outcomes[1..], Error::CODES);
    }

    #[test]
    fn the_code_names_metrics_only_through_this_module() {
        testkit::assert_metrics_named_through_telemetry(env!("CARGO_MANIFEST_DIR"));
    }
}
