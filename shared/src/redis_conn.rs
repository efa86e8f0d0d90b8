//! Opening Redis connections with the timeouts both services need.
//!
//! A `ConnectionManager` multiplexes all commands of a process over one socket
//! and reconnects by itself. The timeouts matter for failing closed: when Redis
//! stops answering, a handshake or mint must get an error within a bounded time
//! (and answer 503) rather than hang.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// How long one Redis command may take before the caller gets an error.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long opening a Redis connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A client whose connections set `TCP_NODELAY`. redis-rs leaves Nagle's
/// algorithm on by default, which holds back a pipelined request behind an
/// unacknowledged one; on a multiplexed connection that costs latency under load.
pub fn client(url: &str) -> redis::RedisResult<redis::Client> {
    redis::Client::open(connection_info(url)?)
}

/// `url` with `TCP_NODELAY` set (see [`client`]).
fn connection_info(url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo as _;
    Ok(url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

/// Opens a self-reconnecting, multiplexed connection.
///
/// It speaks RESP3, with which the manager notices a dropped connection at
/// once and reconnects in the background; over RESP2 it would only notice when
/// the next command fails. That matters with auth-service's one connection per
/// serving thread: after Redis restarts, a thread that was quiet meanwhile would
/// otherwise fail its next request (a 503, or an error ack) even though Redis
/// has long been back.
pub async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
    let info = connection_info(url)?;
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3))?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config).await
}
