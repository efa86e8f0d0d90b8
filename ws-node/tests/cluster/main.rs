//! ws-node integration tests: several nodes and an auth-service against real
//! Redis and Postgres, driven by real WebSocket clients.

// Fault tests print what they injected and the counts they observed (for the record).
#![allow(clippy::print_stderr)]

mod budgets;
mod cluster_faults;
mod external_client;
mod fanout;
mod faults;
mod handshake;
mod helpers;
mod limits;
mod monitoring;
mod operations;
mod presence_control;
mod protocol;
mod recovery;
mod slow_readers;
mod wire_frames;
mod wire_handshake;
