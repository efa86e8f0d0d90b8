//! The report: `report.json` (everything, for machines and for comparing runs)
//! and `report.md` (a table of each measured figure next to its target, then
//! every scenario's details), with the machine and the exact command line.

use crate::plan::Size;
use crate::proc::MachineInfo;
use crate::stack::StackInfo;
use anyhow::Context as _;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Which way a target points.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    AtLeast,
    AtMost,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Self::AtLeast => "≥",
            Self::AtMost => "≤",
        }
    }

    fn holds(self, value: f64, target: f64) -> bool {
        match self {
            Self::AtLeast => value >= target,
            Self::AtMost => value <= target,
        }
    }
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// A figure with a target, and whether it was met.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub metric: String,
    pub value: Option<f64>,
    pub unit: String,
    pub op: Op,
    pub target: f64,
    pub met: bool,
}

/// One scenario's outcome. A scenario that failed keeps its error (and any
/// figures taken before it failed) instead of aborting the whole run.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub parameters: serde_json::Value,
    pub metrics: Vec<Metric>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    pub error: Option<String>,
    pub seconds: f64,
}

impl ScenarioReport {
    pub fn new(name: &str, parameters: &impl Serialize) -> Self {
        Self {
            name: name.to_owned(),
            parameters: serde_json::to_value(parameters).unwrap_or_default(),
            metrics: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            error: None,
            seconds: 0.0,
        }
    }

    pub fn metric(&mut self, name: &str, value: f64, unit: &str) {
        self.metrics.push(Metric {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
        });
    }

    /// Records a figure and its target. `None` (nothing measured, e.g. no
    /// delivery at all) is shown as such and never counts as met.
    pub fn check(&mut self, name: &str, value: Option<f64>, unit: &str, op: Op, target: f64) {
        if let Some(value) = value {
            self.metric(name, value, unit);
        }
        self.checks.push(Check {
            metric: name.to_owned(),
            value,
            unit: unit.to_owned(),
            op,
            target,
            met: value.is_some_and(|v| op.holds(v, target)),
        });
    }

    /// [`Self::check`] against `target` if the plan sets one; otherwise
    /// the value, if measured, as a plain figure.
    pub fn check_if(
        &mut self,
        name: &str,
        value: Option<f64>,
        unit: &str,
        op: Op,
        target: Option<f64>,
    ) {
        match (target, value) {
            (Some(target), _) => self.check(name, value, unit, op, target),
            (None, Some(value)) => self.metric(name, value, unit),
            (None, None) => {}
        }
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub size: Size,
    pub command_line: String,
    pub machine: MachineInfo,
    pub stack: StackInfo,
    pub total_seconds: f64,
    pub scenarios: Vec<ScenarioReport>,
}

impl Report {
    /// Writes `report.json` and `report.md` into `out`.
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(out.join("report.json"), json + "\n").context("writing report.json")?;
        std::fs::write(out.join("report.md"), self.markdown()).context("writing report.md")?;
        Ok(())
    }

    /// The summary table: every figure that has a target.
    pub fn summary_table(&self) -> String {
        let mut t = String::from("| Scenario | Figure | Measured | Target | Met |\n");
        t.push_str("|---|---|---:|---:|:---:|\n");
        for s in &self.scenarios {
            if let Some(error) = &s.error {
                let _ = writeln!(t, "| {} | **failed** | {} | | ❌ |", s.name, escape(error));
            }
            for c in &s.checks {
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} {} | {} |",
                    s.name,
                    c.metric,
                    c.value
                        .map_or_else(|| "—".to_owned(), |v| format_value(v, &c.unit)),
                    c.op.symbol(),
                    format_value(c.target, &c.unit),
                    if c.met { "✅" } else { "❌" }
                );
            }
        }
        t
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut md = String::from("# tessera benchmark report\n\n");
        let _ = writeln!(md, "- Started (UTC): {}", m.date_utc);
        let _ = writeln!(md, "- Command: `{}`", self.command_line);
        let _ = writeln!(
            md,
            "- Git commit: `{}`{}",
            m.git_commit,
            if m.git_dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "- Machine: {} CPUs ({}), {} MiB memory, Linux {}",
            m.nproc, m.cpu_model, m.memory_total_mib, m.kernel
        );
        let _ = writeln!(
            md,
            "- CPUs busy in the second before the run: {:.0} %{}",
            m.cpu_busy_before_percent,
            if m.cpu_busy_before_percent > 25.0 {
                " — other work was competing for the CPUs; figures may be low"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "- Size: {:?}; total {:.0} s",
            self.size, self.total_seconds
        );
        let _ = writeln!(md, "- Binaries: `{}`", self.stack.bin_dir);
        let _ = writeln!(
            md,
            "- Settings changed from the defaults: auth-service `{}`; ws-node `{}`",
            self.stack.auth_settings.join(" "),
            self.stack.node_settings.join(" ")
        );
        md.push('\n');
        if self.size != Size::Full {
            md.push_str(
                "> The targets are stated for the `--full` sizes. At this size the \
                 counts and windows are smaller, so the figures are indicative only.\n\n",
            );
        }
        md.push_str(
            "Everything runs on this one machine: the clients (worker processes), \
             the nodes, auth-service, Postgres and Redis share its CPUs, so the \
             figures are for that whole setup, not for the servers alone.\n\n",
        );
        md.push_str("## Summary\n\n");
        md.push_str(&self.summary_table());
        md.push_str("\n## Details\n");
        for s in &self.scenarios {
            let _ = writeln!(md, "\n### {} ({:.1} s)\n", s.name, s.seconds);
            let _ = writeln!(md, "Parameters: `{}`\n", s.parameters);
            if let Some(error) = &s.error {
                let _ = writeln!(md, "**Failed:** {}\n", escape(error));
            }
            if !s.metrics.is_empty() {
                md.push_str("| Figure | Value |\n|---|---:|\n");
                for metric in &s.metrics {
                    let _ = writeln!(
                        md,
                        "| {} | {} |",
                        metric.name,
                        format_value(metric.value, &metric.unit)
                    );
                }
            }
            for note in &s.notes {
                let _ = writeln!(md, "\n- {}", escape(note));
            }
        }
        md
    }
}

fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A value in its unit, as a person reads it: thousands separated, a
/// precision that fits the unit.
pub fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{v:.3} ms"),
        "%" => format!("{v:.2} %"),
        "KiB" | "MiB" | "s" | "×" => format!("{v:.2} {unit}"),
        "" => group(v),
        _ => format!("{} {unit}", group(v)),
    }
}

/// Rounds to an integer and groups digits by thousands with thin spaces.
fn group(v: f64) -> String {
    let rounded = v.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if rounded < 0.0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_figures() {
        assert_eq!(
            format_value(1_534_220.4, "/s"),
            "1\u{202f}534\u{202f}220 /s"
        );
        assert_eq!(format_value(0.28349, "ms"), "0.283 ms");
        assert_eq!(format_value(12.0, ""), "12");
        assert_eq!(format_value(5.678, "KiB"), "5.68 KiB");
    }

    #[test]
    fn checks_know_their_direction() {
        let mut s = ScenarioReport::new("x", &serde_json::json!({}));
        s.check("rate", Some(10.0), "/s", Op::AtLeast, 5.0);
        s.check("p99", Some(10.0), "ms", Op::AtMost, 5.0);
        s.check("lost", None, "", Op::AtMost, 0.0);
        let met: Vec<bool> = s.checks.iter().map(|c| c.met).collect();
        assert_eq!(met, [true, false, false]);
    }
}
