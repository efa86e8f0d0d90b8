//! The wire protocol (documented for clients in `docs/PROTOCOL.md`).
//!
//! Client → node frames are JSON text with an `action` and an optional `id`
//! that the reply echoes. Node → client frames carry a `type`. Parsing is
//! strict (unknown fields are errors) but never fatal: a bad frame earns an
//! `error` frame, not a disconnect.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shared::channel::ChannelName;

/// WebSocket close codes (DESIGN §4); the client SDK's reconnect rules follow them.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The node is going away (shutdown, idle timeout): reconnect, possibly elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// A message was larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// The node cannot serve right now (Redis unreachable): retry with backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Authentication failed: mint a new ticket.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No `auth` frame within the auth timeout.
    pub const AUTH_TIMEOUT: u16 = 4002;
    /// Forbidden, or the credential was revoked: do not retry with it.
    pub const FORBIDDEN: u16 = 4003;
    /// Rate limited, or too slow a consumer: retry with backoff.
    pub const RATE_LIMITED: u16 = 4008;
}

/// A request id: echoed as given, a number or a short string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(u64),
    Text(String),
}

/// Where a recovering subscriber left off: copied from the last `message` it saw.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

/// A client frame as it arrives, before validation per action. Parsed with
/// borrowing so `data` is passed on without being copied or re-serialised.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrame<'a> {
    action: &'a str,
    #[serde(default)]
    id: Option<RequestId>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// The `id` of a frame that failed strict parsing, if it has a readable one,
/// so the client can still match the error to its request.
fn lenient_id(text: &str) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<RequestId>,
    }
    serde_json::from_str::<IdOnly>(text)
        .ok()
        .and_then(|f| f.id)
        .filter(|id| !matches!(id, RequestId::Text(s) if s.len() > MAX_ID_LEN))
}

/// A validated client request.
#[derive(Debug)]
pub enum Request<'a> {
    Auth {
        ticket: String,
    },
    Subscribe {
        channel: ChannelName,
        since: Option<Since>,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    Publish {
        channel: ChannelName,
        data: &'a RawValue,
        idempotency_key: Option<String>,
    },
    Presence {
        channel: ChannelName,
    },
    Ping,
}

/// Why a frame could not be understood; becomes an `error` frame.
#[derive(Debug)]
pub struct BadFrame {
    pub id: Option<RequestId>,
    pub code: &'static str,
    pub message: String,
}

const MAX_ID_LEN: usize = 64;

/// Parses one text frame.
pub fn parse(text: &str) -> Result<(Option<RequestId>, Request<'_>), BadFrame> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| BadFrame {
        id: lenient_id(text),
        code: "bad_request",
        message: format!("frame is not a valid request: {e}"),
    })?;
    let id = raw.id;
    let bad = |id: &Option<RequestId>, code: &'static str, message: String| BadFrame {
        id: id.clone(),
        code,
        message,
    };
    if let Some(RequestId::Text(s)) = &id
        && s.len() > MAX_ID_LEN
    {
        return Err(bad(
            &None,
            "bad_request",
            format!("id longer than {MAX_ID_LEN} characters"),
        ));
    }
    let channel = |raw_channel: Option<String>| -> Result<ChannelName, BadFrame> {
        let name =
            raw_channel.ok_or_else(|| bad(&id, "bad_request", "`channel` is required".into()))?;
        name.parse().map_err(|e: shared::channel::InvalidChannel| {
            bad(&id, "invalid_channel", e.to_string())
        })
    };
    if raw.idempotency_key.is_some() && raw.action != "publish" {
        return Err(bad(
            &id,
            "bad_request",
            format!(
                "`idempotency_key` is not allowed with action {:?}",
                raw.action
            ),
        ));
    }
    if raw.ticket.is_some() && raw.action != "auth" {
        return Err(bad(
            &id,
            "bad_request",
            format!("`ticket` is not allowed with action {:?}", raw.action),
        ));
    }
    let unexpected = |field: &str| {
        bad(
            &id,
            "bad_request",
            format!("`{field}` is not allowed with action {:?}", raw.action),
        )
    };
    let request = match raw.action {
        "auth" => Request::Auth {
            ticket: raw
                .ticket
                .ok_or_else(|| bad(&id, "bad_request", "`ticket` is required".into()))?,
        },
        "subscribe" => Request::Subscribe {
            channel: channel(raw.channel)?,
            since: raw.since,
        },
        "unsubscribe" => {
            if raw.since.is_some() {
                return Err(unexpected("since"));
            }
            Request::Unsubscribe {
                channel: channel(raw.channel)?,
            }
        }
        "publish" => {
            let data = raw
                .data
                .ok_or_else(|| bad(&id, "bad_request", "`data` is required".into()))?;
            Request::Publish {
                channel: channel(raw.channel)?,
                data,
                idempotency_key: raw.idempotency_key,
            }
        }
        "presence" => Request::Presence {
            channel: channel(raw.channel)?,
        },
        "ping" => Request::Ping,
        other => {
            return Err(bad(
                &id,
                "unknown_action",
                format!(
                    "unknown action {other:?}: expected auth, subscribe, unsubscribe, publish, presence or ping"
                ),
            ));
        }
    };
    Ok((id, request))
}

/// Node → client frames (other than `message`, which arrives pre-serialised from Redis).
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        connection_id: &'a str,
        user: UserInfo<'a>,
        node: &'a str,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        /// Set on a `subscribe` that carried `since`: whether everything missed was replayed.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// The current history position (subscribe) or the published message's (publish).
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        code: &'a str,
        message: &'a str,
    },
    /// Messages of `channel` may be missing and cannot be replayed: resync.
    Recovery { channel: &'a str, recovered: bool },
    /// The answer to a `presence` request.
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        channel: &'a str,
        members: &'a [crate::presence::Member],
    },
}

#[derive(Serialize, Debug)]
pub struct UserInfo<'a> {
    pub id: uuid::Uuid,
    pub username: &'a str,
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An `ack` with nothing but the request id.
pub fn ack(id: Option<&RequestId>) -> String {
    ServerFrame::Ack {
        id,
        channel: None,
        recovered: None,
        epoch: None,
        offset: None,
    }
    .to_json()
}

pub fn error(id: Option<&RequestId>, code: &str, message: &str) -> String {
    ServerFrame::Error { id, code, message }.to_json()
}

/// The `{"type":"recovery","channel":…,"recovered":false}` notice: history
/// cannot fill a gap in `channel`.
pub fn recovery_lost(channel: &str) -> String {
    ServerFrame::Recovery {
        channel,
        recovered: false,
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_action() {
        let (id, r) = parse(r#"{"action":"subscribe","id":1,"channel":"public:a"}"#).expect("ok");
        assert_eq!(id, Some(RequestId::Number(1)));
        assert!(matches!(r, Request::Subscribe { since: None, .. }));
        let (_, r) = parse(
            r#"{"action":"subscribe","channel":"public:a","since":{"epoch":"e","offset":4}}"#,
        )
        .expect("ok");
        assert!(matches!(
            r,
            Request::Subscribe {
                since: Some(Since { offset: 4, .. }),
                ..
            }
        ));
        let (id, r) =
            parse(r#"{"action":"publish","id":"x","channel":"public:a","data":{"k":[1,2]}}"#)
                .expect("ok");
        assert_eq!(id, Some(RequestId::Text("x".into())));
        let Request::Publish { data, .. } = r else {
            panic!("publish")
        };
        assert_eq!(data.get(), r#"{"k":[1,2]}"#);
        assert!(matches!(
            parse(r#"{"action":"ping"}"#).expect("ok").1,
            Request::Ping
        ));
        assert!(matches!(
            parse(r#"{"action":"auth","ticket":"t"}"#).expect("ok").1,
            Request::Auth { .. }
        ));
        assert!(matches!(
            parse(r#"{"action":"unsubscribe","channel":"public:a"}"#)
                .expect("ok")
                .1,
            Request::Unsubscribe { .. }
        ));
        assert!(matches!(
            parse(r#"{"action":"presence","channel":"public:a"}"#)
                .expect("ok")
                .1,
            Request::Presence { .. }
        ));
    }

    #[test]
    fn bad_frames_are_explained_and_keep_the_id() {
        let e = parse("not json").expect_err("bad");
        assert_eq!(e.code, "bad_request");
        let e = parse(r#"{"action":"dance","id":7}"#).expect_err("bad");
        assert_eq!(
            (e.code, e.id),
            ("unknown_action", Some(RequestId::Number(7)))
        );
        let e =
            parse(r#"{"action":"subscribe","id":2,"channel":"no namespace"}"#).expect_err("bad");
        assert_eq!(
            (e.code, e.id),
            ("invalid_channel", Some(RequestId::Number(2)))
        );
        assert_eq!(
            parse(r#"{"action":"publish","channel":"public:a"}"#)
                .expect_err("bad")
                .code,
            "bad_request"
        );
        let e = parse(r#"{"action":"ping","extra":1,"id":5}"#).expect_err("bad");
        assert_eq!((e.code, e.id), ("bad_request", Some(RequestId::Number(5))));
        assert_eq!(
            parse(r#"{"action":"ping","ticket":"t"}"#)
                .expect_err("bad")
                .code,
            "bad_request"
        );
        let long_id = format!(r#"{{"action":"ping","id":"{}"}}"#, "x".repeat(65));
        assert_eq!(parse(&long_id).expect_err("bad").code, "bad_request");
    }

    #[test]
    fn server_frames_serialise_as_documented() {
        let id = RequestId::Number(3);
        assert_eq!(ack(Some(&id)), r#"{"type":"ack","id":3}"#);
        assert_eq!(
            error(None, "forbidden", "no"),
            r#"{"type":"error","code":"forbidden","message":"no"}"#
        );
    }
}
