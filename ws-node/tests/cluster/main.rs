//! ws-node integration tests: several nodes and an auth-service against real
//! Redis and Postgres, driven by real WebSocket clients.

mod external_client;
mod fanout;
mod faults;
mod handshake;
mod helpers;
mod limits;
mod operations;
mod presence_control;
mod protocol;
mod recovery;
