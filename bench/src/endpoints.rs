//! Where a scenario sends its load: tessera's nodes, or the reference
//! servers measured beside them in the same run. The scenarios drive both
//! through the same code; only these addresses and a few flags differ.

use crate::stack::{Service, Stack};
use crate::worker::{Job, Rooms, split};
use serde::Serialize;
use std::net::SocketAddr;

/// Which system a set of figures is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Tessera,
    /// `crate::reference`: one process, no auth, no Redis.
    Reference,
    /// `bench/peers/node-ws`: Node.js `ws` + `ioredis`, the design people
    /// commonly reach for (tickets and pub/sub in Redis).
    NodeWs,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tessera => "tessera",
            Self::Reference => "reference",
            Self::NodeWs => "node-ws",
        }
    }
}

pub struct Endpoints {
    pub system: System,
    /// Where tickets are minted (ignored when `mint_at_node`).
    pub auth_url: String,
    pub api_keys: Vec<String>,
    /// The servers; a scenario's "node i" is `nodes[i % nodes.len()]`.
    pub nodes: Vec<SocketAddr>,
    /// The server processes, for their CPU time.
    pub pids: Vec<u32>,
    /// Each server mints its own tickets.
    pub mint_at_node: bool,
    /// A room's members must all be on one server (separate processes share no rooms).
    pub pinned_rooms: bool,
    /// Whether the system's messages go through Redis (then its CPU counts too).
    pub uses_redis: bool,
}

impl Endpoints {
    /// The stack's running nodes and auth-service.
    pub fn tessera(stack: &Stack) -> anyhow::Result<Self> {
        Ok(Self {
            system: System::Tessera,
            auth_url: stack.auth_url()?,
            api_keys: stack.api_keys(),
            nodes: stack.nodes().iter().map(|n| n.addr).collect(),
            pids: stack.nodes().iter().map(|n| n.pid).collect(),
            mint_at_node: false,
            pinned_rooms: false,
            uses_redis: true,
        })
    }

    /// Reference servers started by [`Stack::start_references`].
    pub fn reference(servers: &[Service]) -> Self {
        Self {
            system: System::Reference,
            auth_url: servers.first().map(Service::url).unwrap_or_default(),
            api_keys: vec!["reference".to_owned()],
            nodes: servers.iter().map(|s| s.addr).collect(),
            pids: servers.iter().map(|s| s.pid).collect(),
            mint_at_node: true,
            pinned_rooms: true,
            uses_redis: false,
        }
    }

    /// Node `ws` + `ioredis` peers started by [`Stack::start_node_peers`]:
    /// they share Redis, so rooms span them as tessera's do.
    pub fn node_ws(peers: &[Service]) -> Self {
        Self {
            system: System::NodeWs,
            uses_redis: true,
            pinned_rooms: false,
            ..Self::reference(peers)
        }
    }

    /// The address of the scenario's node `i`.
    pub fn node(&self, i: usize) -> SocketAddr {
        self.nodes[i % self.nodes.len()]
    }

    /// One job per worker: `connections` spread over the scenario's nodes
    /// `which`, each joining `rooms` (if any) and expecting `messages`.
    #[allow(clippy::too_many_arguments)]
    pub fn jobs(
        &self,
        stack: &mut Stack,
        connections: usize,
        workers: usize,
        which: &[usize],
        rooms: Option<&Rooms>,
        messages: u64,
        concurrency: usize,
        premint: bool,
        deadline_secs: u64,
    ) -> Vec<Job> {
        let mut nodes: Vec<SocketAddr> = which.iter().map(|&i| self.node(i)).collect();
        nodes.dedup();
        let mut first = 0;
        split(connections, workers, &nodes)
            .into_iter()
            .map(|targets| {
                let count: usize = targets.iter().map(|t| t.count).sum();
                let rooms = rooms.map(|r| Rooms {
                    first,
                    pinned: r.pinned || (self.pinned_rooms && r.count > 1),
                    ..r.clone()
                });
                first += count;
                Job {
                    auth_url: self.auth_url.clone(),
                    api_keys: self.api_keys.clone(),
                    source_ip: stack.next_source_ip(),
                    targets,
                    concurrency,
                    rooms,
                    messages,
                    mint_at_node: self.mint_at_node,
                    premint,
                    deadline_secs,
                }
            })
            .collect()
    }
}
