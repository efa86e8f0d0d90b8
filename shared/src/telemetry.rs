//! Logging setup shared by both binaries: `RUST_LOG` filters, `LOG_FORMAT`
//! chooses human-readable (`pretty`) or one JSON object per line (`json`).

use std::str::FromStr;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pretty" | "text" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "LOG_FORMAT must be `pretty` or `json`, not {other:?}"
            )),
        }
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
/// Safe to call more than once (later calls are ignored), which tests rely on.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use. Several apps
/// built in one process (tests) share it, because `metrics` allows one recorder.
pub fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A service's metrics, as its `telemetry` module declares them: name and
/// help of each, and for a labelled counter every value of its label.
pub struct Declared<'a> {
    pub gauges: &'a [(&'static str, &'static str)],
    pub counters: &'a [(&'static str, &'static str)],
    pub labelled_counters: &'a [LabelledCounter<'a>],
    pub histograms: &'a [(&'static str, &'static str)],
}

/// A counter with one label, and every value that label takes.
pub struct LabelledCounter<'a> {
    pub name: &'static str,
    pub help: &'static str,
    pub label: &'static str,
    pub values: &'a [&'static str],
}

impl Declared<'_> {
    /// Installs the process's Prometheus recorder (if no one has yet), and
    /// describes every metric and registers each series at zero in it, so
    /// that `/metrics` lists them from start-up: a dashboard or an alert then
    /// finds its series before the first event (`rate()` over a series that
    /// appears only with its first increment misses that increment). Returns
    /// the handle that renders `/metrics`. Idempotent: a counter already
    /// counting keeps its count (tests build several apps in one process).
    pub fn register(&self) -> metrics_exporter_prometheus::PrometheusHandle {
        // First: anything registered before the recorder is installed is lost.
        let handle = prometheus();
        for &(name, help) in self.gauges {
            metrics::describe_gauge!(name, help);
            metrics::gauge!(name).increment(0.0);
        }
        for &(name, help) in self.counters {
            metrics::describe_counter!(name, help);
            metrics::counter!(name).increment(0);
        }
        for counter in self.labelled_counters {
            metrics::describe_counter!(counter.name, counter.help);
            for &value in counter.values {
                metrics::counter!(counter.name, counter.label => value).increment(0);
            }
        }
        for &(name, help) in self.histograms {
            metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
            // Registered by asking for its handle; the exporter lists it with
            // zero observations.
            let _ = metrics::histogram!(name);
        }
        handle
    }

    /// Every metric name declared.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.gauges
            .iter()
            .chain(self.counters)
            .chain(self.histograms)
            .map(|(name, _)| *name)
            .chain(self.labelled_counters.iter().map(|c| c.name))
    }
}
