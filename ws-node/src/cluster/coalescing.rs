//! Adaptive write coalescing, node-wide: the hub counts deliveries, [`drive`]
//! turns coalescing on above `WRITE_COALESCE_ABOVE` per second and ticks, and
//! each connection (in `session`) writes on the tick while it is on.

use super::hub::Hub;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Adaptive write coalescing. Writing each message to each socket as it
/// arrives costs one syscall per delivery; under heavy fan-out that, not the
/// data, is what saturates the CPU. So when the node delivers more than a
/// threshold per second, connections write on a shared tick every few
/// milliseconds instead, each flushing everything queued in one write. Under
/// light load writes stay immediate, so latency is untouched where it can be.
pub struct Coalescing {
    on: std::sync::atomic::AtomicBool,
    /// Bumped on every tick; connections wait for the next bump.
    pub tick: watch::Receiver<u64>,
}

impl Coalescing {
    pub fn new(tick: watch::Receiver<u64>) -> Self {
        Self {
            on: std::sync::atomic::AtomicBool::new(false),
            tick,
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }
}

/// Measures the node's delivery rate every tick, turns write coalescing on or
/// off, and ticks (always: a connection that saw it on must not wait forever).
/// `period_ms` and `above` are `WRITE_COALESCE_MS` and `WRITE_COALESCE_ABOVE`.
pub async fn drive(
    hub: Arc<Hub>,
    coalescing: Arc<Coalescing>,
    period_ms: u64,
    above: u64,
    tick: watch::Sender<u64>,
) {
    if period_ms == 0 {
        return;
    }
    let period = Duration::from_millis(period_ms);
    let threshold = above.saturating_mul(period_ms) / 1000;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Deliveries per tick, smoothed over ~20 ticks: fan-out comes in bursts (a
    // message to N members at once), and one burst must not flip the mode.
    let mut per_tick = 0.0_f64;
    loop {
        interval.tick().await;
        let delivered = hub.take_delivered() as f64;
        per_tick += (delivered - per_tick) * 0.05;
        coalescing.set(per_tick > threshold as f64);
        tick.send_modify(|n| *n = n.wrapping_add(1));
    }
}
