//! auth-service integration tests: a real server on a real socket, real
//! Postgres (a database per test), real Redis (a key prefix per test, or a
//! private redis-server for tests that flush or kill it).

mod api_keys;
mod bad_input;
mod cli;
mod durability;
mod floods;
mod helpers;
mod login;
mod openapi;
mod operations;
mod publish;
mod rate_limits;
mod sessions;
mod static_files;
mod tickets;
