//! Adaptive write coalescing, node-wide: [`drive`] watches how busy the
//! node's runtime is, turns coalescing on when it nears saturation, and ticks;
//! each connection (in `session`) writes on the tick while it is on.
//!
//! Writing each message to each socket as it arrives costs a syscall and a TCP
//! segment per delivery (on loopback the sender even pays for the receiver's
//! TCP processing); under heavy fan-out that, not the data, is what saturates
//! the CPU, and the client pays per segment too. While coalescing is on, a
//! connection with something queued waits for the node's next tick and then
//! writes everything queued in one write. Under light load writes stay
//! immediate, so latency is untouched where the CPU can afford it.
//!
//! The signal is the runtime's own busy time, not a delivery rate: a node
//! that has fallen behind delivers *less*, so a rate threshold turned
//! coalescing off exactly when it was needed most, and the rate a node can
//! sustain differs from one machine to the next. The tick's period is a
//! controller: it lengthens (more frames per write, less CPU per delivery,
//! fewer segments for the clients to read) while the node stays busy above
//! `WRITE_COALESCE_BUSY` and fans messages out, up to `WRITE_COALESCE_MS`,
//! and shortens again, then turns off, once the node is well below it.

use super::hub::Hub;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The first (and shortest) period when coalescing turns on.
const SHORTEST: Duration = Duration::from_millis(10);
/// The period holds while the busy fraction is between this share of the
/// threshold and the threshold, and shortens below: coalescing itself lowers
/// the node's load, and a narrower band switched it off and on again,
/// paying the uncoalesced cost in between.
const HOLD_BELOW: f64 = 0.5;
/// How often the load is looked at while coalescing is off.
const CHECK_EVERY: Duration = Duration::from_millis(20);
/// Weight of the newest reading in the smoothed busy fraction: one burst of
/// fan-out (a message to thousands of members at once) must not flip the mode.
const SMOOTHING: f64 = 0.25;

pub struct Coalescing {
    on: AtomicBool,
    /// Bumped on every tick; connections wait for the next bump.
    pub tick: watch::Receiver<u64>,
}

impl Coalescing {
    pub fn new(tick: watch::Receiver<u64>) -> Self {
        Self {
            on: AtomicBool::new(false),
            tick,
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }
}

/// The tick's next period (`None`: off), given the current one, the
/// runtime's smoothed busy fraction and whether any message was fanned out
/// since the last tick. Busy above `busy_above` with fan-out going on, it
/// doubles, up to `longest`; below [`HOLD_BELOW`] of the threshold it
/// shortens by a fifth and turns off under [`SHORTEST`]; otherwise it holds.
/// Without fan-out nothing can be gained: a burst of handshakes, say, must
/// not leave the next messages waiting for a long tick.
pub fn next_period(
    current: Option<Duration>,
    busy: f64,
    fanning_out: bool,
    busy_above: f64,
    longest: Duration,
) -> Option<Duration> {
    if longest.is_zero() {
        None
    } else if busy > busy_above && fanning_out {
        Some(current.map_or(SHORTEST, |p| p * 2).min(longest))
    } else if busy < busy_above * HOLD_BELOW {
        current.map(|p| p * 4 / 5).filter(|p| *p >= SHORTEST)
    } else {
        current
    }
}

/// Measures how busy the node's runtime is and whether it fans out, turns write coalescing on or off
/// and sets its period, and ticks (always: a connection that saw it on must
/// not wait forever). `longest_ms` is `WRITE_COALESCE_MS` (0: never
/// coalesce), `busy_percent` is `WRITE_COALESCE_BUSY`.
pub async fn drive(
    hub: Arc<Hub>,
    coalescing: Arc<Coalescing>,
    longest_ms: u64,
    busy_percent: u8,
    tick: watch::Sender<u64>,
) {
    if longest_ms == 0 {
        return;
    }
    let longest = Duration::from_millis(longest_ms);
    let busy_above = f64::from(busy_percent) / 100.0;
    let runtime = tokio::runtime::Handle::current().metrics();
    let workers = runtime.num_workers().max(1);
    let busy_time = || {
        (0..workers)
            .map(|w| runtime.worker_total_busy_duration(w))
            .sum::<Duration>()
    };
    let (mut last_busy, mut last_at) = (busy_time(), Instant::now());
    let mut last_dispatched = hub.messages_dispatched();
    let mut smoothed = 0.0_f64;
    let mut period: Option<Duration> = None;
    loop {
        tokio::time::sleep(period.unwrap_or(CHECK_EVERY)).await;
        let (busy, at) = (busy_time(), Instant::now());
        let elapsed = at.duration_since(last_at).as_secs_f64();
        if elapsed > 0.0 {
            let fraction = busy.saturating_sub(last_busy).as_secs_f64() / elapsed / workers as f64;
            smoothed += (fraction.min(1.0) - smoothed) * SMOOTHING;
        }
        (last_busy, last_at) = (busy, at);
        let dispatched = hub.messages_dispatched();
        let fanning_out = dispatched != last_dispatched;
        last_dispatched = dispatched;
        period = next_period(period, smoothed, fanning_out, busy_above, longest);
        coalescing.set(period.is_some());
        metrics::gauge!(crate::telemetry::COALESCE_PERIOD)
            .set(period.map_or(0.0, |p| p.as_secs_f64()));
        tick.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONGEST: Duration = Duration::from_millis(50);

    #[test]
    fn the_period_grows_while_busy_and_fades_when_idle() {
        let mut period = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            period = next_period(period, 0.9, true, 0.7, LONGEST);
            seen.push(period.expect("on while busy"));
        }
        assert_eq!(seen[0], SHORTEST);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(seen.last(), Some(&LONGEST));
        // Between half the threshold and the threshold it holds.
        assert_eq!(next_period(period, 0.5, true, 0.7, LONGEST), period);
        let mut off_after = 0;
        while period.is_some() {
            period = next_period(period, 0.1, true, 0.7, LONGEST);
            off_after += 1;
        }
        assert!(
            (2..30).contains(&off_after),
            "{off_after} ticks to turn off"
        );
    }

    #[test]
    fn an_idle_node_never_coalesces() {
        assert_eq!(next_period(None, 0.2, true, 0.7, LONGEST), None);
        assert_eq!(next_period(None, 0.69, true, 0.7, LONGEST), None);
        assert_eq!(next_period(None, 0.9, true, 0.7, Duration::ZERO), None);
    }

    #[test]
    fn a_node_busy_without_fan_out_does_not_lengthen_the_tick() {
        assert_eq!(next_period(None, 0.95, false, 0.7, LONGEST), None);
        let on = Some(SHORTEST * 2);
        assert_eq!(next_period(on, 0.95, false, 0.7, LONGEST), on);
    }
}
