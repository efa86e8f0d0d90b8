//! The wire protocol, as docs/PROTOCOL.md documents it for clients.
//!
//! * [`request`]: what clients send, parsed strictly.
//! * [`frames`]: what the node sends, other than the `message` frames that
//!   arrive finished from Redis (`shared::channel::frame`).
//! * [`errors`]: request errors (`error` frames) and the reasons the node
//!   closes a socket, both as the documentation's tables list them.

pub mod errors;
pub mod frames;
pub mod request;

pub use errors::{CloseReason, RequestError};
pub use frames::{RequestId, ServerFrame, UserInfo, ack, recovery_lost};
pub use request::{BadFrame, Request, Since, parse};
