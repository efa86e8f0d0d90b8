//! Node → client frames other than `message` (which arrives finished from
//! Redis, see `shared::channel::frame`): each carries a `type`.

use serde::{Deserialize, Serialize};

/// A request id: echoed as given, a number or a short string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(u64),
    Text(String),
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
        /// Set on a `publish` whose idempotency key was seen before.
        #[serde(skip_serializing_if = "Option::is_none")]
        duplicate: Option<bool>,
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
        members: &'a [Member],
    },
}

/// One present user.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Member {
    pub user: MemberUser,
    /// How many of the user's connections are in the channel.
    pub connections: u32,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct MemberUser {
    pub id: String,
    pub username: String,
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
        duplicate: None,
    }
    .to_json()
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
    use crate::protocol::RequestError;

    #[test]
    fn server_frames_serialise_as_documented() {
        let id = RequestId::Number(3);
        assert_eq!(ack(Some(&id)), r#"{"type":"ack","id":3}"#);
        assert_eq!(
            RequestError::Forbidden("no").frame(None),
            r#"{"type":"error","code":"forbidden","message":"no"}"#
        );
    }
}
