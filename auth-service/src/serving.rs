//! auth-service's serving threads: how many, starting one, and the Redis
//! connection each holds (see `Application::run_until_stopped` and
//! [`crate::balance`]).

use shared::redis_conn::Redis;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The CPUs this process may run on (2 if that cannot be told): auth-service's
/// default number of serving threads and of password-hashing slots.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
}

/// Starts the OS thread `serve-{index}`, which runs `work` on a
/// single-threaded runtime of its own. auth-service serves one listening socket
/// from several such threads (see its `run_until_stopped`): a connection then
/// lives on one thread, and answering it never wakes another thread, which a shared work-stealing runtime does for most wake-ups.
///
/// ws-node does not: its fan-out wakes sockets from the subscriber's thread,
/// and waking a task on another single-threaded runtime signals that
/// runtime's driver every time (a write to its eventfd), where tokio's shared
/// runtime wakes a worker only if one is asleep; the fan-out benchmark ran an
/// order of magnitude slower with two such threads per node.
///
/// The receiver yields `work`'s output once the thread is done (an error if
/// its runtime could not start); it closes without a value if `work` panicked.
pub fn spawn<T: Send + 'static>(
    index: usize,
    work: impl Future<Output = T> + Send + 'static,
) -> std::io::Result<tokio::sync::oneshot::Receiver<std::io::Result<T>>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("serve-{index}"))
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(work));
            let _ = done_tx.send(result);
        })?;
    Ok(done_rx)
}

/// Every command connection of a process (one per serving thread), so that
/// the readiness check asks all of them. A manager whose reconnection gave up
/// during an outage only tries again when it is next used: a probe that
/// reached one thread's connection would say nothing about the others', and
/// the first request on each of them after Redis came back would fail.
#[derive(Clone, Default)]
pub struct CommandConnections(Arc<Mutex<Vec<Redis>>>);

impl CommandConnections {
    pub fn add(&self, connection: Redis) {
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
