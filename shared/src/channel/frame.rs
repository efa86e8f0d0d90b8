//! The frames that travel through Redis to every ws-node and, unchanged, to
//! clients: a channel's `message`, and presence's `join` and `leave`. Each is
//! written in two languages, Rust and the Lua of the scripts that publish
//! atomically with their bookkeeping, so both writers live here, side by side,
//! and tests publish through the real scripts and compare the bytes.
//!
//! A message frame is read back by ws-node for one thing only, its position
//! in the channel's history ([`position`]); the reader depends on the layout
//! the writers fix: `type`, `channel`, then `epoch` and `offset`, `from`,
//! `data` last.
//!
//! `from` is the publisher as the server authenticated it ([`sender`]),
//! never anything the client wrote: `data` is the client's, and a `from`
//! inside it is just data.

use super::publish::Publisher;
use super::{ChannelName, StreamPosition};

/// Lua: `message_frame(channel_json, epoch, offset, from_json, data)`, the
/// frame of a message with a history position. Prepended to the scripts
/// that use it.
pub const MESSAGE_FRAME_LUA: &str = r#"
local function message_frame(channel_json, epoch, offset, from_json, data)
  return '{"type":"message","channel":' .. channel_json .. ',"epoch":"' .. epoch ..
    '","offset":' .. offset .. ',"from":' .. from_json .. ',"data":' .. data .. '}'
end
"#;

/// Lua: `presence_frame(kind, channel_json, user_id, username)`, a `join` or
/// `leave` event. The id and username come out of a presence member string,
/// so they are JSON-encoded with `cjson` rather than trusted to need no
/// escaping: today's usernames (`[a-z0-9_.-]`) and UUIDs do not, but a
/// frame must stay valid JSON whatever a member holds. The frame's fixed
/// layout is still written out, so it keeps the Rust writer's field order,
/// and `cjson` escapes what may appear the way serde_json does (quotes,
/// backslashes, control characters); it differs only in escaping `/` and
/// DEL, which no username contains (and which still decode the same).
pub const PRESENCE_FRAME_LUA: &str = r#"
local function presence_frame(kind, channel_json, user_id, username)
  return '{"type":"' .. kind .. '","channel":' .. channel_json ..
    ',"user":{"id":' .. cjson.encode(user_id) .. ',"username":' ..
    cjson.encode(username) .. '}}'
end
"#;

/// The frame of a message on `channel` carrying `data` (JSON) from the
/// sender `from` (JSON, see [`sender`]), with its history position when the
/// channel keeps history.
pub fn message(
    channel: &ChannelName,
    position: Option<&StreamPosition>,
    from: &str,
    data: &str,
) -> String {
    let channel = json_string(channel.as_str());
    match position {
        Some(at) => format!(
            r#"{{"type":"message","channel":{channel},"epoch":"{}","offset":{},"from":{from},"data":{data}}}"#,
            at.epoch, at.offset
        ),
        None => format!(r#"{{"type":"message","channel":{channel},"from":{from},"data":{data}}}"#),
    }
}

/// A message's `from`: `{"user_id","username"}` of the user who published it
/// (over a WebSocket, or through an API key of theirs), as the server
/// authenticated them. Kept with each history entry, so a replay says the same.
pub fn sender(publisher: &Publisher) -> String {
    format!(
        r#"{{"user_id":{},"username":{}}}"#,
        json_string(&publisher.user_id.to_string()),
        json_string(&publisher.username)
    )
}

/// A presence event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceEvent {
    Join,
    Leave,
}

/// The frame of a presence event: `user_id` joined or left `channel`.
pub fn presence(
    event: PresenceEvent,
    channel: &ChannelName,
    user_id: &str,
    username: &str,
) -> String {
    let kind = match event {
        PresenceEvent::Join => "join",
        PresenceEvent::Leave => "leave",
    };
    format!(
        r#"{{"type":"{kind}","channel":{},"user":{{"id":{},"username":{}}}}}"#,
        json_string(channel.as_str()),
        json_string(user_id),
        json_string(username)
    )
}

/// The channel name as a JSON string: what the scripts get as their
/// `channel_json` argument.
pub fn channel_json(channel: &ChannelName) -> String {
    json_string(channel.as_str())
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The history position of a message frame; `None` for a frame without one
/// (a channel without history, a presence event). Finds the fields before
/// the first `"data":` only: channel names and epochs contain no quotes, so
/// what comes before it is the header, and anything after is the payload,
/// which may hold keys of the same names.
pub fn position(frame: &str) -> Option<StreamPosition> {
    let header = &frame[..frame.find("\"data\":")?];
    let epoch_start = header.find("\"epoch\":\"")? + "\"epoch\":\"".len();
    let epoch_len = header[epoch_start..].find('"')?;
    let offset_start = header.find("\"offset\":")? + "\"offset\":".len();
    let digits = &header[offset_start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    Some(StreamPosition {
        epoch: header[epoch_start..epoch_start + epoch_len].to_owned(),
        offset: digits[..end].parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> ChannelName {
        "public:a".parse().expect("valid")
    }

    const FROM: &str = r#"{"user_id":"u-1","username":"ann"}"#;

    #[test]
    fn frames_are_the_documented_json() {
        let live: serde_json::Value =
            serde_json::from_str(&message(&channel(), None, FROM, r#"{"n":1}"#)).expect("json");
        assert_eq!(
            live,
            serde_json::json!({"type":"message","channel":"public:a",
                "from":{"user_id":"u-1","username":"ann"},"data":{"n":1}})
        );
        let at = StreamPosition {
            epoch: "ab12".into(),
            offset: 7,
        };
        let replay: serde_json::Value =
            serde_json::from_str(&message(&channel(), Some(&at), FROM, r#"{"n":1}"#))
                .expect("json");
        assert_eq!(
            replay,
            serde_json::json!({"type":"message","channel":"public:a","epoch":"ab12","offset":7,
                "from":{"user_id":"u-1","username":"ann"},"data":{"n":1}})
        );
        let publisher = Publisher {
            user_id: uuid::Uuid::nil(),
            username: "ann".into(),
        };
        let from: serde_json::Value = serde_json::from_str(&sender(&publisher)).expect("json");
        assert_eq!(
            from,
            serde_json::json!({"user_id":uuid::Uuid::nil().to_string(),"username":"ann"})
        );
        let join: serde_json::Value =
            serde_json::from_str(&presence(PresenceEvent::Join, &channel(), "u-1", "ann"))
                .expect("json");
        assert_eq!(
            join,
            serde_json::json!({"type":"join","channel":"public:a","user":{"id":"u-1","username":"ann"}})
        );
    }

    #[test]
    fn reads_positions_from_frames() {
        let at = StreamPosition {
            epoch: "ab".into(),
            offset: 42,
        };
        assert_eq!(
            position(&message(&channel(), Some(&at), FROM, r#"{"offset":1}"#)),
            Some(at)
        );
        assert_eq!(position(&message(&channel(), None, FROM, "{}")), None);
        assert_eq!(
            position(&message(
                &channel(),
                None,
                FROM,
                r#"{"epoch":"x","offset":1}"#
            )),
            None
        );
        assert_eq!(
            position(&presence(PresenceEvent::Leave, &channel(), "u", "ann")),
            None
        );
    }
}
