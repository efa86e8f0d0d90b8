//! What the node shares with the other nodes, through Redis.
//!
//! * [`hub`]: which local connections are in which channel, and the fan-out
//!   of each message to them.
//! * [`subscriber`]: the node's one Redis pub/sub connection, and the gaps
//!   it fills from history so nothing is lost between Redis and the node.
//! * [`presence`]: who is in a channel, with `join` and `leave` events.
//! * [`registry`]: this node's connections in the cluster-wide per-user sets
//!   and directory, kept alive by leases.
//! * [`revalidation`]: re-checking live sockets against revocations.
//! * [`coalescing`]: writing on a shared tick under heavy fan-out.
//! * [`canary`]: proof that the subscription delivers, for readiness.

pub mod canary;
pub mod coalescing;
pub mod hub;
pub mod presence;
pub mod registry;
pub mod revalidation;
pub mod subscriber;
