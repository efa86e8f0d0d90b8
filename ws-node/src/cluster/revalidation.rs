//! Revocations whose announcement was lost still close sockets: the node
//! periodically re-checks every local socket's credential against the
//! revocation markers auth-service writes ([`shared::credential`]).

use crate::protocol::CloseReason;
use crate::state::NodeState;

/// Re-checks every local socket's credential against the revocation markers,
/// catching a revocation whose announcement on the control channel was lost.
/// Node-wide and deduplicated: a pipeline per 500 distinct credentials and
/// per 500 users each round, instead of a Redis round trip per socket. If Redis
/// cannot answer, nothing is closed: Redis blinking is no reason to drop clients.
pub async fn revalidate_connections(state: NodeState) {
    use std::collections::HashSet;
    let mut tick = tokio::time::interval(state.config.revalidate_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let connections = state.hub.connection_credentials();
        let sources: Vec<_> = connections
            .iter()
            .map(|(_, s, _)| *s)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let users: Vec<_> = connections
            .iter()
            .map(|(_, _, u)| *u)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut revoked_sources = HashSet::new();
        let mut revoked_users = HashSet::new();
        let mut redis = state.redis.clone();
        let mut failed = false;
        for chunk in sources.chunks(500) {
            match shared::credential::revoked_among_sources(&mut redis, &state.keys, chunk).await {
                Ok(revoked) => revoked_sources.extend(revoked),
                Err(_) => failed = true,
            }
        }
        for chunk in users.chunks(500) {
            match shared::credential::revoked_among_users(&mut redis, &state.keys, chunk).await {
                Ok(revoked) => revoked_users.extend(revoked),
                Err(_) => failed = true,
            }
        }
        if failed {
            tracing::debug!("re-validation could not reach Redis; will try next round");
        }
        for (id, source, user) in connections {
            if revoked_sources.contains(&source) || revoked_users.contains(&user) {
                metrics::counter!(crate::telemetry::REVALIDATION_CLOSES).increment(1);
                state.hub.close_connection(id, CloseReason::Revoked);
            }
        }
    }
}
