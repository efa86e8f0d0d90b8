//! The last step before a socket is served: the revocation check, the
//! cluster-wide per-user connection cap, and the connection's entries in the
//! cluster registry, all in one Redis round trip.

use super::credentials::{Candidate, Principal};
use crate::cluster::hub::ConnId;
use crate::cluster::registry;
use crate::error::Error;
use crate::state::NodeState;
use shared::credential::RevocationCheck;

/// A connection whose per-user slot and directory entry are written (or on
/// their way to Redis) but that no connection task serves yet. Dropped in that
/// state (the client went away and hyper cancelled the handshake while it
/// waited for Redis, or before the upgrade completed) it releases the entries
/// at once, instead of letting them hold a place under the per-user cap until
/// their lease runs out.
pub struct Admitted {
    node: NodeState,
    id: ConnId,
    user_id: uuid::Uuid,
    settled: bool,
}

impl Admitted {
    /// The connection's id, for `session::run`, which from now on owns
    /// the entries (and removes them when the socket closes).
    pub fn hand_over(mut self) -> ConnId {
        self.settled = true;
        self.id
    }

    /// Removes the entries now (a refusal), before the client is answered.
    async fn release(mut self) {
        self.settled = true;
        self.forget().await;
    }

    /// Removing the entries.
    fn forget(&self) -> impl Future<Output = ()> + Send + 'static {
        let name = self.node.connection_name(self.id);
        registry::forget_connection(self.node.clone(), self.user_id, name)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.settled {
            let (forget, cleanup) = (self.forget(), self.node.cleanups.start());
            tokio::spawn(async move {
                forget.await;
                drop(cleanup);
            });
        }
    }
}

/// The last checks before a candidate gets a socket, in one Redis round
/// trip: the credential has not been revoked since the ticket was minted (or
/// the session cached), and the user is under the cluster-wide connection
/// cap. It also registers the connection (per-user slot, directory entry); a
/// refusal undoes that, and so does dropping the answer (or this future,
/// mid-way) unserved.
pub async fn admit(node: &NodeState, candidate: Candidate) -> Result<(Admitted, Principal), Error> {
    let id = node.new_connection_id();
    let name = node.connection_name(id);
    let user_id = candidate.user_id();
    // Armed before the round trip: should this future be dropped while Redis
    // answers, the guard still removes what the pipeline wrote.
    let admitted = Admitted {
        node: node.clone(),
        id,
        user_id,
        settled: false,
    };
    let lease = node.config.connection_lease();
    let mut pipe = redis::pipe();
    candidate.revocation_check().add_to(&mut pipe, &node.keys);
    shared::connections::add_slot_acquisition(&mut pipe, &node.keys, user_id, &name, lease);
    let own_channel = shared::channel::ChannelName::for_user(user_id);
    registry::add_directory_entry(
        &mut pipe,
        node,
        &name,
        user_id,
        shared::unix_now(),
        &[own_channel.as_str()],
    );
    let mut redis = node.redis.clone();
    let (revoked, disabled, connections): (bool, bool, u64) = pipe.query_async(&mut redis).await?;
    // A revoked credential reads as the credential it was: an invalid
    // ticket, or an invalid session (whose client should ask auth-service).
    let refusal = match candidate {
        Candidate::Ticket(_) => Error::InvalidTicket,
        Candidate::Session(_) => Error::InvalidSession,
    };
    let Some(principal) = candidate.checked(RevocationCheck::read(revoked, disabled)) else {
        admitted.release().await;
        return Err(refusal);
    };
    if connections > u64::from(node.config.max_connections_per_user) {
        admitted.release().await;
        return Err(Error::TooManyConnections);
    }
    Ok((admitted, principal))
}
