//! Bytes and HTTP: accepting TCP connections, answering each connection's
//! first request (almost always `GET /ws`, upgraded here without hyper), the
//! operations endpoints, and the streams and close handshakes under every
//! WebSocket.
//!
//! * [`server`]: the accept loop and the hand-parsed first request.
//! * [`http`]: what hyper and axum serve (operations endpoints, later
//!   upgrades on kept-alive connections).
//! * [`stream`]: the bytes under a WebSocket, however it was upgraded.
//! * [`closing`]: closing a WebSocket cleanly, from either side.

pub mod closing;
pub mod http;
pub mod server;
pub mod stream;
