//! Client frames (`ws_node::protocol::parse`): JSON text from any
//! authenticated, or not yet authenticated, socket. An accepted frame must be
//! what docs/PROTOCOL.md §2 allows (its action's fields and no others, an id
//! of at most 64 characters, a valid channel), carry exactly what was sent,
//! and a refused one must still get an `error` frame that is valid JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shared::channel::ChannelName;
use ws_node::protocol::{Request, RequestId, parse};

/// The documented limit on a text `id`.
const MAX_ID_CHARS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, request) = match parse(text) {
        Ok(parsed) => parsed,
        Err(bad) => {
            check_id(bad.id.as_ref());
            let frame: Value = serde_json::from_str(&bad.error.frame(bad.id.as_ref()))
                .expect("an error frame is JSON");
            assert_eq!(frame["type"], "error");
            assert_eq!(frame["code"], bad.error.code());
            return;
        }
    };
    check_id(id.as_ref());
    let sent: Value = serde_json::from_str(text).expect("an accepted frame is JSON");
    let sent = sent.as_object().expect("an accepted frame is an object");
    let given = |field: &str| sent.get(field).filter(|v| !v.is_null());
    match &id {
        Some(RequestId::Number(n)) => assert_eq!(given("id"), Some(&Value::from(*n))),
        Some(RequestId::Text(s)) => assert_eq!(given("id"), Some(&Value::from(s.as_str()))),
        None => assert_eq!(given("id"), None),
    }
    let channel_is = |channel: &ChannelName| {
        assert_eq!(given("channel"), Some(&Value::from(channel.as_str())));
    };
    let (action, fields): (&str, &[&str]) = match &request {
        Request::Auth { ticket } => {
            assert_eq!(given("ticket"), Some(&Value::from(ticket.expose())));
            ("auth", &["ticket"])
        }
        Request::Subscribe { channel, since } => {
            channel_is(channel);
            if let Some(since) = since {
                let sent = given("since").expect("since was sent");
                assert_eq!(sent["epoch"], since.epoch.as_str());
                assert_eq!(sent["offset"], since.offset);
            }
            ("subscribe", &["channel", "since"])
        }
        Request::Unsubscribe { channel } => {
            channel_is(channel);
            ("unsubscribe", &["channel"])
        }
        Request::Publish {
            channel,
            data,
            idempotency_key,
        } => {
            channel_is(channel);
            // Passed on as sent: valid JSON, the same value.
            let passed: Value = serde_json::from_str(data.get()).expect("data is JSON");
            assert_eq!(given("data"), Some(&passed));
            assert_eq!(
                given("idempotency_key"),
                idempotency_key.as_deref().map(Value::from).as_ref()
            );
            ("publish", &["channel", "data", "idempotency_key"])
        }
        Request::Presence { channel } => {
            channel_is(channel);
            ("presence", &["channel"])
        }
        Request::Ping => ("ping", &[]),
    };
    assert_eq!(given("action"), Some(&Value::from(action)));
    for (field, value) in sent {
        let allowed = field == "action" || field == "id" || fields.contains(&field.as_str());
        assert!(
            allowed || value.is_null(),
            "`{field}` accepted with action {action:?}"
        );
    }
});

fn check_id(id: Option<&RequestId>) {
    if let Some(RequestId::Text(s)) = id {
        let chars = s.chars().count();
        assert!(chars <= MAX_ID_CHARS, "id of {chars} characters");
    }
}
