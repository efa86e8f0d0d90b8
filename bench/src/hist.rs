//! Latency histograms: HDR histograms of nanoseconds, their transfer between
//! processes, and the summary figures the report shows.
//!
//! Workers record into their own histogram and send it to the parent as a
//! list of (value, count) pairs, which the parent adds into one histogram per
//! scenario; merging recorded values is exact to the histogram's precision, so
//! percentiles over all workers are true percentiles, not averages of them.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Smallest value told apart: 1 µs. Latencies on loopback start at a few µs;
/// finer resolution would only cost memory.
const LOWEST_NS: u64 = 1_000;
/// Largest value recorded: 60 s (larger ones are clamped: they are failures anyway).
const HIGHEST_NS: u64 = 60_000_000_000;

pub type Hist = Histogram<u64>;

/// An empty histogram of nanoseconds with 3 significant figures.
pub fn new() -> Hist {
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3).expect("constant bounds are valid")
}

/// Records one latency (clamped into the histogram's range).
pub fn record_ns(h: &mut Hist, ns: u64) {
    h.saturating_record(ns.clamp(LOWEST_NS, HIGHEST_NS));
}

/// A histogram as it crosses a process boundary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Wire(pub Vec<(u64, u64)>);

pub fn to_wire(h: &Hist) -> Wire {
    Wire(
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
    )
}

/// Adds the values of `wire` to `h`.
pub fn add_wire(h: &mut Hist, wire: &Wire) {
    for &(value, count) in &wire.0 {
        let _ = h.record_n(value.clamp(LOWEST_NS, HIGHEST_NS), count);
    }
}

/// The figures of a latency distribution, in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// `None` for an empty histogram (no percentile of nothing).
pub fn summary(h: &Hist) -> Option<Summary> {
    if h.is_empty() {
        return None;
    }
    Some(Summary {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_survives_the_wire() {
        let mut a = new();
        for i in 1..=1000 {
            record_ns(&mut a, i * 10_000);
        }
        let json = serde_json::to_string(&to_wire(&a)).expect("serialises");
        let wire: Wire = serde_json::from_str(&json).expect("parses");
        let mut b = new();
        add_wire(&mut b, &wire);
        assert_eq!(summary(&a), summary(&b));
        assert_eq!(b.len(), 1000);
        let s = summary(&b).expect("not empty");
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
    }
}
