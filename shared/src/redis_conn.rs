//! Opening Redis connections with the timeouts both services need.
//!
//! A `ConnectionManager` multiplexes all commands of a process over one socket
//! and reconnects by itself. The timeouts matter for failing closed: when Redis
//! stops answering, a handshake or mint must get an error within a bounded time
//! (and answer 503) rather than hang.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::{Arc, Mutex};
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

/// Every command connection of a process (one per serving thread), so that
/// the readiness check asks all of them. A manager whose reconnection gave up
/// during an outage only tries again when it is next used: a probe that
/// reached one thread's connection would say nothing about the others', and
/// the first request on each of them after Redis came back would fail.
#[derive(Clone, Default)]
pub struct CommandConnections(Arc<Mutex<Vec<ConnectionManager>>>);

impl CommandConnections {
    pub fn add(&self, connection: ConnectionManager) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(connection);
    }

    /// Pings every connection at once: true if all answer within `timeout`.
    /// One that fails starts reconnecting, so once Redis is back the next
    /// probe finds it answering (and requests never meet it broken).
    pub async fn all_answer(&self, timeout: Duration) -> bool {
        let connections = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut pings = tokio::task::JoinSet::new();
        for mut connection in connections {
            pings.spawn(async move {
                tokio::time::timeout(
                    timeout,
                    redis::cmd("PING").query_async::<()>(&mut connection),
                )
                .await
                .is_ok_and(|r| r.is_ok())
            });
        }
        let mut all = true;
        while let Some(answered) = pings.join_next().await {
            all &= answered.unwrap_or(false);
        }
        all
    }
}
