//! Client → node frames: JSON text with an `action` and an optional `id` that
//! the reply echoes. Parsing is strict (unknown fields are errors) but never
//! fatal: a bad frame earns an `error` frame, not a disconnect.

use super::errors::RequestError;
use super::frames::RequestId;
use serde::Deserialize;
use serde_json::value::RawValue;
use shared::channel::ChannelName;

/// Where a recovering subscriber left off: copied from the last `message` it
/// saw, or from the ack of its subscription.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

impl Since {
    /// `{"epoch":"","offset":0}`: before the channel's first message (what a
    /// subscription's ack says for a channel without history yet), so every
    /// message of its current epoch is missed.
    pub fn is_from_the_start(&self) -> bool {
        self.epoch.is_empty() && self.offset == 0
    }
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
        /// Redacted in `Debug`, like every ticket.
        ticket: shared::secret::Secret,
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

/// A frame that could not be understood, with its id if it has a readable
/// one (so the client can still match the `error` frame to its request).
#[derive(Debug)]
pub struct BadFrame {
    pub id: Option<RequestId>,
    pub error: RequestError,
}

const MAX_ID_LEN: usize = 64;

/// Parses one text frame.
pub fn parse(text: &str) -> Result<(Option<RequestId>, Request<'_>), BadFrame> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| BadFrame {
        id: lenient_id(text),
        error: RequestError::BadRequest(format!("frame is not a valid request: {e}")),
    })?;
    let id = raw.id;
    let bad = |id: &Option<RequestId>, error: RequestError| BadFrame {
        id: id.clone(),
        error,
    };
    let bad_request =
        |id: &Option<RequestId>, message: String| bad(id, RequestError::BadRequest(message));
    if let Some(RequestId::Text(s)) = &id
        && s.len() > MAX_ID_LEN
    {
        return Err(bad_request(
            &None,
            format!("id longer than {MAX_ID_LEN} characters"),
        ));
    }
    let channel = |raw_channel: Option<String>| -> Result<ChannelName, BadFrame> {
        let name = raw_channel.ok_or_else(|| bad_request(&id, "`channel` is required".into()))?;
        name.parse()
            .map_err(|e: shared::channel::InvalidChannel| bad(&id, e.into()))
    };
    // Each action takes the fields docs/PROTOCOL.md lists for it and no
    // others: a field that would be ignored is refused, so a client that
    // thinks it asked for something does not silently go without.
    let allowed: &[&str] = match raw.action {
        "auth" => &["ticket"],
        "subscribe" => &["channel", "since"],
        "unsubscribe" | "presence" => &["channel"],
        "publish" => &["channel", "data", "idempotency_key"],
        "ping" => &[],
        other => return Err(bad(&id, RequestError::UnknownAction(other.to_owned()))),
    };
    let given = [
        ("channel", raw.channel.is_some()),
        ("data", raw.data.is_some()),
        ("since", raw.since.is_some()),
        ("ticket", raw.ticket.is_some()),
        ("idempotency_key", raw.idempotency_key.is_some()),
    ];
    if let Some((field, _)) = given
        .iter()
        .find(|(field, given)| *given && !allowed.contains(field))
    {
        return Err(bad_request(
            &id,
            format!("`{field}` is not allowed with action {:?}", raw.action),
        ));
    }
    let request = match raw.action {
        "auth" => Request::Auth {
            ticket: shared::secret::Secret::new(
                raw.ticket
                    .ok_or_else(|| bad_request(&id, "`ticket` is required".into()))?,
            ),
        },
        "subscribe" => Request::Subscribe {
            channel: channel(raw.channel)?,
            since: raw.since,
        },
        "unsubscribe" => Request::Unsubscribe {
            channel: channel(raw.channel)?,
        },
        "publish" => {
            let data = raw
                .data
                .ok_or_else(|| bad_request(&id, "`data` is required".into()))?;
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
        other => return Err(bad(&id, RequestError::UnknownAction(other.to_owned()))),
    };
    Ok((id, request))
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
        let auth = parse(r#"{"action":"auth","ticket":"s3cret-ticket"}"#).expect("ok");
        assert!(matches!(&auth.1, Request::Auth { ticket } if ticket.expose() == "s3cret-ticket"));
        assert!(!format!("{auth:?}").contains("s3cret"));
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
        assert_eq!(e.error.code(), "bad_request");
        let e = parse(r#"{"action":"dance","id":7}"#).expect_err("bad");
        assert_eq!(
            (e.error.code(), e.id),
            ("unknown_action", Some(RequestId::Number(7)))
        );
        let e =
            parse(r#"{"action":"subscribe","id":2,"channel":"no namespace"}"#).expect_err("bad");
        assert_eq!(
            (e.error.code(), e.id),
            ("invalid_channel", Some(RequestId::Number(2)))
        );
        assert_eq!(
            parse(r#"{"action":"publish","channel":"public:a"}"#)
                .expect_err("bad")
                .error
                .code(),
            "bad_request"
        );
        let e = parse(r#"{"action":"ping","extra":1,"id":5}"#).expect_err("bad");
        assert_eq!(
            (e.error.code(), e.id),
            ("bad_request", Some(RequestId::Number(5)))
        );
        assert_eq!(
            parse(r#"{"action":"ping","ticket":"t"}"#)
                .expect_err("bad")
                .error
                .code(),
            "bad_request"
        );
        // Caught by the client_frame fuzz target: fields of other actions
        // were ignored rather than refused.
        for frame in [
            r#"{"action":"ping","channel":"public:a"}"#,
            r#"{"action":"subscribe","channel":"public:a","data":1}"#,
            r#"{"action":"presence","channel":"public:a","since":{"epoch":"e","offset":1}}"#,
            r#"{"action":"publish","channel":"public:a","data":1,"since":{"epoch":"e","offset":1}}"#,
            r#"{"action":"auth","ticket":"t","channel":"public:a"}"#,
            r#"{"action":"unsubscribe","channel":"public:a","since":{"epoch":"e","offset":1}}"#,
        ] {
            assert_eq!(
                parse(frame).expect_err(frame).error.code(),
                "bad_request",
                "{frame}"
            );
        }
        assert!(parse(r#"{"action":"ping","channel":null}"#).is_ok());
        let long_id = format!(r#"{{"action":"ping","id":"{}"}}"#, "x".repeat(65));
        assert_eq!(
            parse(&long_id).expect_err("bad").error.code(),
            "bad_request"
        );
    }
}
