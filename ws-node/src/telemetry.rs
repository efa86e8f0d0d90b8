//! Every metric ws-node exports, named and described once. [`register`]
//! puts each of them, with every value of its labels, into `/metrics` at zero
//! from start-up: a dashboard or an alert then finds its series before the
//! first event (`rate()` over a series that appears only with its first
//! increment misses that increment), and a test checks the Grafana dashboard
//! against this list.
//!
//! The code that counts uses these constants, never a literal name.

use crate::error::Error;
use shared::telemetry::{Declared, LabelledCounter};

pub const CONNECTIONS: &str = "ws_connections";
pub const PENDING_AUTH: &str = "ws_pending_auth";
pub const HANDSHAKES: &str = "ws_handshakes_total";
pub const TICKETS: &str = "ws_tickets_total";
pub const PENDING_AUTH_REFUSED: &str = "ws_pending_auth_refused_total";
pub const ACCEPT_ERRORS: &str = "ws_accept_errors_total";
pub const MESSAGES_RECEIVED: &str = "ws_messages_received_total";
pub const DELIVERIES: &str = "ws_deliveries_total";
pub const FANOUT_LATENCY: &str = "ws_fanout_latency_seconds";
pub const COALESCE_PERIOD: &str = "ws_write_coalesce_period_seconds";
pub const CANARY_AGE: &str = "ws_redis_canary_age_seconds";
pub const CLIENT_PUBLISHES: &str = "ws_client_publishes_total";
pub const RATE_LIMITED_FRAMES: &str = "ws_rate_limited_frames_total";
pub const SLOW_CONSUMERS_CLOSED: &str = "ws_slow_consumers_closed_total";
pub const IDLE_TIMEOUTS: &str = "ws_idle_timeouts_total";
pub const WRITE_TIMEOUTS: &str = "ws_write_timeouts_total";
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
    (
        COALESCE_PERIOD,
        "Period of the write-coalescing tick while the node is busy (0: writes are immediate).",
    ),
    (
        CANARY_AGE,
        "Seconds since the newest canary that came back through the node's Redis subscription \
         was sent (about 1 while messages flow; over CANARY_TIMEOUT_MS the node is not ready).",
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
        WRITE_TIMEOUTS,
        "Connections dropped because a write to them took longer than WRITE_TIMEOUT_MS \
         (the client stopped reading).",
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

/// The outcomes of a handshake: accepted, or the refusal's error code.
fn handshake_outcomes() -> Vec<&'static str> {
    std::iter::once("accepted")
        .chain(Error::CODES.iter().copied())
        .collect()
}

/// The `outcome` values of [`TICKETS`]: consumed, or why refused.
const TICKET_OUTCOMES: &[&str] = &[
    "consumed",
    "invalid_ticket",
    "origin_mismatch",
    "insufficient_scope",
    "unavailable",
];

/// Histograms: name and help.
const HISTOGRAMS: &[(&str, &str)] = &[(
    FANOUT_LATENCY,
    "Seconds from a message's dispatch on this node to its write onto a subscriber's \
     socket (one message in 16; the oldest message of each write).",
)];

/// Describes and registers every metric (see [`Declared::register`]);
/// returns the handle that renders `/metrics`.
pub fn register() -> metrics_exporter_prometheus::PrometheusHandle {
    let handshake_outcomes = handshake_outcomes();
    Declared {
        gauges: GAUGES,
        counters: COUNTERS,
        labelled_counters: &[
            LabelledCounter {
                name: HANDSHAKES,
                help: "WebSocket handshakes by outcome: accepted, or the refusal's error code.",
                label: "outcome",
                values: &handshake_outcomes,
            },
            LabelledCounter {
                name: TICKETS,
                help: "Tickets presented to this node, by outcome: consumed (accepted), or why refused.",
                label: "outcome",
                values: TICKET_OUTCOMES,
            },
            LabelledCounter {
                name: PENDING_AUTH_REFUSED,
                help: "Sockets refused because too many wait for first-message auth, per IP or per node.",
                label: "limit",
                values: &["ip", "node"],
            },
            LabelledCounter {
                name: RECOVERIES,
                help: "Subscriptions with `since`, by whether every missed message could be replayed.",
                label: "recovered",
                values: &["true", "false"],
            },
        ],
        histograms: HISTOGRAMS,
    }
    .register()
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_code_names_metrics_only_through_this_module() {
        testkit::assert_metrics_named_through_telemetry(env!("CARGO_MANIFEST_DIR"));
    }
}
