//! How big each scenario is at each size. `--full` uses the sizes the targets
//! are stated for; `--quick` and `--smoke` shrink counts and windows (their
//! figures are indicative only) but keep the shape: several nodes, several
//! worker processes, the same code paths.

use serde::Serialize;

/// The run's size, as chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Smoke,
    Quick,
    Full,
}

/// Sockets one client worker process opens at most: the per-process open-file
/// limit is 20 000 and a worker also needs a few for HTTP, pipes and the runtime.
pub const MAX_SOCKETS_PER_WORKER: usize = 14_000;

#[derive(Clone, Debug, Serialize)]
pub struct HandshakePlan {
    pub connections: usize,
    pub nodes: usize,
    pub workers: usize,
    /// Handshakes in flight per worker.
    pub concurrency: usize,
}

/// A publisher on node 0 at `rate` msg/s for `seconds`, subscribers on
/// `sub_nodes`, in one channel or spread over `rooms` channels.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutPlan {
    pub label: String,
    pub subscribers: usize,
    /// Nodes started for the scenario; the publisher uses node 0.
    pub nodes: usize,
    /// Which nodes the subscribers spread over (round-robin).
    pub sub_nodes: Vec<usize>,
    /// Channels: subscriber `g` joins room `g % rooms`, message `n` goes to
    /// room `n % rooms` (1: everyone in one channel).
    pub rooms: usize,
    /// Messages per second over all rooms.
    pub rate: u64,
    /// Publishing connections: publisher `p` sends the messages of rooms
    /// `r` with `r % publishers == p`, connected to node `p % nodes`.
    pub publishers: usize,
    pub seconds: u64,
    pub workers: usize,
    pub targets: FanoutTargets,
}

/// What a fan-out, latency or rooms scenario is held to: tessera's figures
/// as ratios to the reference's, measured in the same run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FanoutTargets {
    /// Deliveries/s at least this fraction of the reference's.
    pub min_rate_ratio: Option<f64>,
    pub zero_lost: bool,
    /// Latency p99 at most this multiple of the reference's.
    pub max_p99_ratio: Option<f64>,
    /// Node CPU per delivery at most this multiple of the reference's.
    pub max_cpu_ratio: Option<f64>,
}

impl FanoutPlan {
    pub fn messages(&self) -> u64 {
        self.rate * self.seconds
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct IdlePlan {
    pub per_node: usize,
    pub nodes: usize,
    /// Seconds over which idle CPU is measured.
    pub window_secs: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MintPlan {
    pub seconds: u64,
    /// Concurrent requests (connections) of the load generator.
    pub concurrency: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct StormPlan {
    /// Logins in flight at once, throughout the storm.
    pub logins: usize,
    pub seconds: u64,
    pub mint_concurrency: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct FloodPlan {
    /// Each phase's length: the mint load alone, then under the flood.
    pub seconds: u64,
    pub mint_concurrency: usize,
    /// Forged credentials sent per second during the flood.
    pub flood_rate: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub size: Size,
    pub handshake: HandshakePlan,
    pub fanout: Vec<FanoutPlan>,
    pub latency: Vec<FanoutPlan>,
    pub rooms: FanoutPlan,
    /// The rooms load on one Redis and on a 3-master Redis Cluster.
    pub shards: FanoutPlan,
    pub idle: IdlePlan,
    pub mint: MintPlan,
    pub login_storm: StormPlan,
    pub credential_flood: FloodPlan,
}

fn workers_for(sockets: usize, at_least: usize) -> usize {
    sockets.div_ceil(MAX_SOCKETS_PER_WORKER).max(at_least)
}

fn fanout(label: &str, subscribers: usize, rate: u64, seconds: u64) -> FanoutPlan {
    FanoutPlan {
        label: label.into(),
        subscribers,
        nodes: 2,
        sub_nodes: vec![0, 1],
        rooms: 1,
        rate,
        publishers: 1,
        seconds,
        // Parsing deliveries is the clients' heaviest work: give them two processes.
        workers: workers_for(subscribers, 2.min(subscribers)),
        targets: FanoutTargets {
            min_rate_ratio: Some(FANOUT_RATE_RATIO),
            zero_lost: true,
            max_cpu_ratio: Some(FANOUT_CPU_RATIO),
            ..FanoutTargets::default()
        },
    }
}

/// Subscribers on node B, the publisher on node A: every message crosses Redis.
fn latency(label: &str, subscribers: usize, rate: u64, seconds: u64) -> FanoutPlan {
    FanoutPlan {
        sub_nodes: vec![1],
        targets: FanoutTargets {
            // One subscriber: two hops through Redis against none; reported, not held.
            max_p99_ratio: (subscribers > 1).then_some(LATENCY_P99_RATIO),
            ..FanoutTargets::default()
        },
        ..fanout(label, subscribers, rate, seconds)
    }
}

/// `rooms` channels of `members` subscribers each, over 2 nodes, their
/// messages sent by [`ROOM_PUBLISHERS`] clients spread over the nodes: in a
/// chat, many members talk, and one client sending thousands of messages a
/// second would be stopped by its rate limit.
fn rooms(label: &str, rooms: usize, members: usize, rate: u64, seconds: u64) -> FanoutPlan {
    FanoutPlan {
        rooms,
        publishers: ROOM_PUBLISHERS,
        ..fanout(label, rooms * members, rate, seconds)
    }
}

/// [`rooms`] over 3 nodes, run on one Redis and on a Redis Cluster
/// (`scenarios::shards`): tessera against itself, so only "nothing lost"
/// is a target of the plan's own.
fn shards(label: &str, rooms_: usize, members: usize, rate: u64, seconds: u64) -> FanoutPlan {
    FanoutPlan {
        nodes: 3,
        sub_nodes: vec![0, 1, 2],
        targets: FanoutTargets {
            zero_lost: true,
            ..FanoutTargets::default()
        },
        ..rooms(label, rooms_, members, rate, seconds)
    }
}

// The targets: ratios to the reference measured in the same run,
// whatever the size (smaller sizes are indicative only).
const FANOUT_RATE_RATIO: f64 = 0.75;
const FANOUT_CPU_RATIO: f64 = 2.0;
const LATENCY_P99_RATIO: f64 = 1.5;
/// Publishing clients of the rooms scenario (a multiple of its nodes).
const ROOM_PUBLISHERS: usize = 50;

/// Connections of the mint scenario's closed-loop load generator: enough to
/// keep auth-service's serving threads busy, and no more (found by running
/// the scenario at several counts). Every connection beyond that only waits
/// in a queue, adding little to the rate and much to the p99: the client's
/// queueing, not the service's latency.
const MINT_CONCURRENCY: usize = 40;

impl Plan {
    pub fn new(size: Size) -> Self {
        match size {
            Size::Full => Self {
                size,
                handshake: HandshakePlan {
                    connections: 24_000,
                    nodes: 2,
                    workers: 2,
                    concurrency: 128,
                },
                fanout: vec![
                    // 2 000 × 1 000 msg/s offers 2 M deliveries/s (target 1.5 M).
                    fanout("fanout-2000", 2_000, 1_000, 20),
                    // 18 000 × 50 msg/s offers 900 k deliveries/s.
                    fanout("fanout-18000", 18_000, 50, 20),
                ],
                latency: vec![
                    latency("latency-1", 1, 1_000, 20),
                    latency("latency-2000", 2_000, 100, 20),
                ],
                // 1 000 chat rooms of 20, each with 5 messages a second.
                rooms: rooms("rooms-1000x20", 1_000, 20, 5_000, 20),
                shards: shards("shards-1000x20", 1_000, 20, 5_000, 20),
                idle: IdlePlan {
                    per_node: 18_000,
                    nodes: 3,
                    window_secs: 30,
                },
                mint: MintPlan {
                    seconds: 20,
                    concurrency: MINT_CONCURRENCY,
                },
                login_storm: StormPlan {
                    logins: 200,
                    seconds: 20,
                    mint_concurrency: 32,
                },
                credential_flood: FloodPlan {
                    seconds: 10,
                    mint_concurrency: 16,
                    flood_rate: 2000,
                },
            },
            Size::Quick => Self {
                size,
                handshake: HandshakePlan {
                    connections: 4_000,
                    nodes: 2,
                    workers: 2,
                    concurrency: 64,
                },
                fanout: vec![
                    fanout("fanout-2000", 2_000, 1_000, 3),
                    fanout("fanout-4000", 4_000, 50, 3),
                ],
                latency: vec![
                    latency("latency-1", 1, 1_000, 4),
                    latency("latency-2000", 2_000, 100, 4),
                ],
                rooms: rooms("rooms-1000x4", 1_000, 4, 5_000, 4),
                shards: shards("shards-1000x4", 1_000, 4, 5_000, 4),
                idle: IdlePlan {
                    per_node: 2_000,
                    nodes: 3,
                    window_secs: 5,
                },
                mint: MintPlan {
                    seconds: 5,
                    concurrency: MINT_CONCURRENCY,
                },
                login_storm: StormPlan {
                    logins: 200,
                    seconds: 6,
                    mint_concurrency: 32,
                },
                credential_flood: FloodPlan {
                    seconds: 4,
                    mint_concurrency: 16,
                    flood_rate: 1000,
                },
            },
            Size::Smoke => Self {
                size,
                handshake: HandshakePlan {
                    connections: 200,
                    nodes: 2,
                    workers: 2,
                    concurrency: 16,
                },
                fanout: vec![
                    fanout("fanout-200", 200, 100, 2),
                    fanout("fanout-300", 300, 20, 2),
                ],
                latency: vec![
                    latency("latency-1", 1, 200, 2),
                    latency("latency-100", 100, 50, 2),
                ],
                rooms: rooms("rooms-100x4", 100, 4, 500, 2),
                shards: shards("shards-100x4", 100, 4, 500, 2),
                idle: IdlePlan {
                    per_node: 100,
                    nodes: 3,
                    window_secs: 2,
                },
                mint: MintPlan {
                    seconds: 2,
                    concurrency: 8,
                },
                login_storm: StormPlan {
                    logins: 20,
                    seconds: 3,
                    mint_concurrency: 8,
                },
                credential_flood: FloodPlan {
                    seconds: 2,
                    mint_concurrency: 4,
                    flood_rate: 300,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_worker_exceeds_the_socket_budget() {
        for size in [Size::Smoke, Size::Quick, Size::Full] {
            let plan = Plan::new(size);
            for f in plan.fanout.iter().chain(&plan.latency).chain([&plan.rooms]) {
                assert!(f.subscribers.div_ceil(f.workers) <= MAX_SOCKETS_PER_WORKER);
                assert!(f.sub_nodes.iter().all(|&n| n < f.nodes));
                // Each room gets the same number of messages, and a reference
                // process (one for one channel) stays under its file limit.
                assert_eq!(f.messages() % f.rooms as u64, 0);
                let per_reference = if f.rooms > 1 {
                    f.subscribers.div_ceil(f.nodes)
                } else {
                    f.subscribers
                };
                assert!(per_reference <= 18_000);
                assert_eq!(f.publishers % f.nodes.min(f.rooms), 0);
            }
            let h = &plan.handshake;
            assert!(h.connections.div_ceil(h.workers) <= MAX_SOCKETS_PER_WORKER);
            // A ws-node process must stay under its own 20 000 open files.
            assert!(plan.idle.per_node <= 18_000);
            assert!(h.connections.div_ceil(h.nodes) <= 18_000);
        }
    }
}
