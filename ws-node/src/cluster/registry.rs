//! This node's connections as the cluster sees them: each user's connection
//! set (the cluster-wide per-user cap) and the directory the control API
//! lists, both leased in Redis ([`shared::connections`] owns the format).
//! Entries are written at admission (`handshake::admission`), renewed here
//! while connections live, restored if Redis lost them, and removed when a
//! connection closes; a node that dies leaves entries that lapse within one
//! lease. Presence memberships are renewed and swept on the same tick.

use super::hub::ConnId;
use super::presence;
use crate::state::NodeState;
use shared::channel::ChannelName;
use shared::connections;
use uuid::Uuid;

/// Removes a connection's cluster-wide traces (per-user slot, directory entry).
/// If Redis cannot be reached they lapse with their lease.
pub async fn forget_connection(node: NodeState, user_id: Uuid, name: String) {
    let mut redis = node.redis.clone();
    let mut pipe = redis::pipe();
    connections::add_removal(&mut pipe, &node.keys, user_id, &name);
    if let Err(e) = pipe.query_async::<()>(&mut redis).await {
        tracing::debug!(error = %e, "could not clear a closed connection's entries; their leases will expire");
    }
}

/// Writes again the per-user slots and directory entries of live connections
/// whose entries Redis lost (see [`shared::connections::renew`]).
async fn restore_entries(node: &NodeState, lost: &[(ConnId, Uuid)]) {
    let ids: Vec<ConnId> = lost.iter().map(|(id, _)| *id).collect();
    let details = node.hub.connection_details(&ids);
    let lease = node.config.connection_lease();
    let mut pipe = redis::pipe();
    for (id, user_id) in lost {
        // Gone since the renewal's snapshot: nothing to restore.
        let Some((connected_at, channels)) = details.get(id) else {
            continue;
        };
        let name = node.connection_name(*id);
        let mut channels: Vec<&str> = channels.iter().map(ChannelName::as_str).collect();
        channels.sort_unstable();
        connections::add_slot(&mut pipe, &node.keys, *user_id, &name, lease);
        add_directory_entry(&mut pipe, node, &name, *user_id, *connected_at, &channels);
    }
    let mut redis = node.redis.clone();
    match pipe.query_async::<()>(&mut redis).await {
        Ok(()) => tracing::info!(
            restored = details.len(),
            "restored connection entries that redis had lost"
        ),
        Err(e) => tracing::warn!(error = %e, "could not restore lost connection entries"),
    }
}

/// Adds the writing of a connection's directory entry (what the control API
/// lists), leased, to `pipe`; no replies.
pub fn add_directory_entry(
    pipe: &mut redis::Pipeline,
    node: &NodeState,
    name: &str,
    user_id: Uuid,
    connected_at: u64,
    channels: &[&str],
) {
    let entry = connections::DirectoryEntry {
        connection: name,
        node: &node.node_id,
        user_id,
        connected_at,
        channels,
    };
    connections::add_directory_entry(pipe, &node.keys, &entry, node.config.connection_lease());
}

/// Keeps this node's cluster-wide entries alive (per-user slots, directory
/// entries, presence) and sweeps lapsed presence in the channels it serves, so
/// a node that died leaves no zombies: its entries lapse within one lease and
/// the survivors announce the `leave`s.
pub async fn renew_leases(state: NodeState) {
    let lease = state.config.connection_lease();
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let users = state.hub.connection_users();
        let connections: Vec<_> = users
            .iter()
            .map(|(id, user_id)| (*user_id, state.connection_name(*id)))
            .collect();
        let memberships = state.presence_memberships();
        let mut redis = state.redis.clone();
        match shared::connections::renew(&mut redis, &state.keys, &connections, lease).await {
            Ok(lost) if !lost.is_empty() => {
                let lost: Vec<_> = lost.into_iter().map(|i| users[i]).collect();
                restore_entries(&state, &lost).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not renew connection leases"),
        }
        match presence::renew(&mut redis, &state.keys, &memberships, lease).await {
            Ok(lost) => {
                for membership in lost.iter().filter(|m| state.has_presence(m)) {
                    if let Err(e) = presence::join(&mut redis, &state.keys, membership, lease).await
                    {
                        tracing::warn!(error = %e, "could not restore presence");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not renew presence"),
        }
        let channels: std::collections::BTreeSet<_> =
            memberships.into_iter().map(|m| m.channel).collect();
        for channel in channels {
            if let Err(e) = presence::sweep(&mut redis, &state.keys, &channel).await {
                tracing::warn!(error = %e, "could not sweep presence");
            }
        }
    }
}
