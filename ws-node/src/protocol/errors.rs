//! What a client is told when something goes wrong on an open socket: a
//! request's [`RequestError`] (an `error` frame; the socket stays open), or
//! the [`CloseReason`] the node closes the socket for. Both match the tables
//! of docs/PROTOCOL.md, which a test checks.

use super::frames::RequestId;
use super::frames::ServerFrame;

/// Why a client request failed: the `code` and `message` of its `error` frame.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not valid JSON, a field missing, unknown or not allowed with the action.
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "unknown action {0:?}: expected auth, subscribe, unsubscribe, publish, presence or ping"
    )]
    UnknownAction(String),
    #[error("{0}")]
    InvalidChannel(#[from] shared::channel::InvalidChannel),
    #[error("no such channel namespace")]
    UnknownNamespace,
    /// The namespace rules or the connection's scopes do not allow it.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("subscription limit reached")]
    TooManySubscriptions,
    #[error("this channel namespace does not track presence")]
    PresenceDisabled,
    /// Presence is answered only to the channel's own subscribers.
    #[error("subscribe to the channel first")]
    NotSubscribed,
    #[error("idempotency keys need a channel with history")]
    IdempotencyUnsupported,
    /// The namespace's `names` pattern does not match the channel's name.
    #[error("this channel namespace does not accept that name")]
    NameNotAccepted,
    #[error("data is over this channel namespace's {0} bytes")]
    MessageTooLarge(usize),
    /// The user's publish quota ([`shared::quota`]) is spent.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Over one of the connection's rates (messages, history reads).
    #[error("{0}")]
    RateLimited(&'static str),
    #[error("this connection is already authenticated")]
    AlreadyAuthenticated,
    #[error("binary frames are not supported; send JSON text")]
    Unsupported,
    /// Redis could not be reached: the request was not carried out.
    #[error("{0}")]
    Unavailable(&'static str),
}

impl RequestError {
    /// Every `code` an `error` frame can carry.
    pub const CODES: &[&str] = &[
        "bad_request",
        "unknown_action",
        "invalid_channel",
        "unknown_namespace",
        "forbidden",
        "too_many_subscriptions",
        "presence_disabled",
        "not_subscribed",
        "idempotency_unsupported",
        "message_too_large",
        "quota_exceeded",
        "rate_limited",
        "already_authenticated",
        "unsupported",
        "unavailable",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::UnknownAction(_) => "unknown_action",
            Self::InvalidChannel(_) | Self::NameNotAccepted => "invalid_channel",
            Self::UnknownNamespace => "unknown_namespace",
            Self::Forbidden(_) => "forbidden",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::PresenceDisabled => "presence_disabled",
            Self::NotSubscribed => "not_subscribed",
            Self::IdempotencyUnsupported => "idempotency_unsupported",
            Self::MessageTooLarge(_) => "message_too_large",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::RateLimited(_) => "rate_limited",
            Self::AlreadyAuthenticated => "already_authenticated",
            Self::Unsupported => "unsupported",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The `error` frame answering the request `id`.
    pub fn frame(&self, id: Option<&RequestId>) -> String {
        ServerFrame::Error {
            id,
            code: self.code(),
            message: &self.to_string(),
        }
        .to_json()
    }
}

/// Why the node closes a socket: the close frame's code, which tells the
/// client what to do next, and a reason for people reading logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// 1001: the node is shutting down; reconnect elsewhere, at once.
    ShuttingDown = 1,
    /// 1001: nothing heard from the client for `IDLE_TIMEOUT_SECS`.
    IdleTimeout,
    /// 1002: a frame broke RFC 6455's framing rules (unmasked, reserved bits
    /// or opcode, a fragmented or oversized control frame, a stray
    /// continuation, a malformed close frame).
    ProtocolViolation,
    /// 1007: a text message (or a close frame's reason) that is not UTF-8.
    InvalidUtf8,
    /// 1009: a message over `MAX_MESSAGE_BYTES`.
    MessageTooBig,
    /// 1013: Redis was unreachable while setting up the socket.
    RedisUnavailable,
    /// 4001: the `auth` frame's ticket was not valid.
    InvalidTicket,
    /// 4001: something other than an `auth` frame came first.
    ExpectedAuthFrame,
    /// 4001: the session behind the socket ended.
    CredentialExpired,
    /// 4002: no `auth` frame within `AUTH_TIMEOUT_MS`.
    AuthTimeout,
    /// 4003: the credential was revoked, or an operator disconnected the socket.
    Revoked,
    /// 4003: the `auth` frame's ticket belongs to another origin or lacks `connect`.
    TicketNotForThisSocket,
    /// 4008: over `CLIENT_MESSAGES_PER_SEC`, again and again.
    RateExceeded,
    /// 4008: the send queue filled up (`SEND_QUEUE_FRAMES`).
    SlowConsumer,
    /// 4008: the user is at `MAX_CONNECTIONS_PER_USER`.
    TooManyConnections,
}

impl CloseReason {
    /// Every reason, for [`Self::from_u8`] and the documentation test.
    pub const ALL: [Self; 15] = [
        Self::ShuttingDown,
        Self::IdleTimeout,
        Self::ProtocolViolation,
        Self::InvalidUtf8,
        Self::MessageTooBig,
        Self::RedisUnavailable,
        Self::InvalidTicket,
        Self::ExpectedAuthFrame,
        Self::CredentialExpired,
        Self::AuthTimeout,
        Self::Revoked,
        Self::TicketNotForThisSocket,
        Self::RateExceeded,
        Self::SlowConsumer,
        Self::TooManyConnections,
    ];

    /// The WebSocket close code (docs/PROTOCOL.md §8).
    pub fn code(self) -> u16 {
        match self {
            Self::ShuttingDown | Self::IdleTimeout => 1001,
            Self::ProtocolViolation => 1002,
            Self::InvalidUtf8 => 1007,
            Self::MessageTooBig => 1009,
            Self::RedisUnavailable => 1013,
            Self::InvalidTicket | Self::ExpectedAuthFrame | Self::CredentialExpired => 4001,
            Self::AuthTimeout => 4002,
            Self::Revoked | Self::TicketNotForThisSocket => 4003,
            Self::RateExceeded | Self::SlowConsumer | Self::TooManyConnections => 4008,
        }
    }

    /// The close frame's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ShuttingDown => "node shutting down",
            Self::IdleTimeout => "idle timeout",
            Self::ProtocolViolation => "websocket protocol error",
            Self::InvalidUtf8 => "text frame not valid utf-8",
            Self::MessageTooBig => "message too big",
            Self::RedisUnavailable => "redis unavailable",
            Self::InvalidTicket => "invalid ticket",
            Self::ExpectedAuthFrame => "expected an auth frame",
            Self::CredentialExpired => "credential expired",
            Self::AuthTimeout => "no auth frame in time",
            Self::Revoked => "credential revoked or disconnected by the server",
            Self::TicketNotForThisSocket => "ticket not valid for this origin",
            Self::RateExceeded => "message rate exceeded",
            Self::SlowConsumer => "too slow a consumer",
            Self::TooManyConnections => "too many connections for this user",
        }
    }

    /// The reason stored as `self as u8` (a connection's requested close is
    /// kept in an atomic byte).
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| *reason as u8 == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTOCOL: &str = include_str!("../../../docs/PROTOCOL.md");

    /// The rows of the table under the heading that starts with `heading`.
    fn table_rows(heading: &str) -> Vec<&'static str> {
        let section = &PROTOCOL[PROTOCOL.find(heading).expect("the section")..];
        section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .collect()
    }

    #[test]
    fn every_error_code_is_documented_and_every_documented_one_exists() {
        let rows = table_rows("Error codes in `error` frames:");
        let documented: Vec<&str> = rows
            .iter()
            .filter_map(|row| row.split('`').nth(1))
            .collect();
        assert_eq!(documented, RequestError::CODES);
        let every = [
            RequestError::BadRequest(String::new()),
            RequestError::UnknownAction(String::new()),
            RequestError::InvalidChannel(shared::channel::InvalidChannel),
            RequestError::UnknownNamespace,
            RequestError::Forbidden(""),
            RequestError::TooManySubscriptions,
            RequestError::PresenceDisabled,
            RequestError::NotSubscribed,
            RequestError::IdempotencyUnsupported,
            RequestError::MessageTooLarge(0),
            RequestError::QuotaExceeded(String::new()),
            RequestError::RateLimited(""),
            RequestError::AlreadyAuthenticated,
            RequestError::Unsupported,
            RequestError::Unavailable(""),
        ];
        let codes: Vec<&str> = every.iter().map(RequestError::code).collect();
        assert_eq!(codes, RequestError::CODES);
    }

    #[test]
    fn every_close_code_the_node_sends_is_documented() {
        let rows = table_rows("## 8. Close codes");
        let documented: Vec<u16> = rows
            .iter()
            .filter_map(|row| row.trim_start_matches('|').split('|').next())
            .filter_map(|cell| cell.trim().parse().ok())
            .collect();
        for reason in CloseReason::ALL {
            assert!(
                documented.contains(&reason.code()),
                "{reason:?} closes with {}, which docs/PROTOCOL.md does not list",
                reason.code()
            );
            assert_eq!(CloseReason::from_u8(reason as u8), Some(reason));
        }
        assert_eq!(CloseReason::from_u8(0), None);
    }
}
