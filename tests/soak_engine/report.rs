//! Tallies of the exchanges, samples of the proxy process, and the summary.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::clients::{Op, Outcome};

/// Outcomes by request kind, and examples of each failure.
#[derive(Default)]
pub(crate) struct Tally {
    inner: Mutex<Counts>,
}

#[derive(Default, Clone)]
pub(crate) struct Counts {
    /// op label → outcome label → count.
    pub by_op: BTreeMap<String, BTreeMap<String, u64>>,
    /// outcome label → count.
    pub by_outcome: BTreeMap<String, u64>,
    /// (outcome label, op label) → first example.
    pub examples: BTreeMap<(String, String), String>,
    /// Every truncated-as-complete and hung exchange (they fail the soak).
    pub critical: Vec<String>,
    pub bytes_checked: u64,
    pub total: u64,
    pub ok: u64,
    /// op label → slowest successful exchange.
    pub slowest_ok: BTreeMap<String, Duration>,
}

impl Counts {
    pub(crate) fn count(&self, outcome: &str) -> u64 {
        self.by_outcome.get(outcome).copied().unwrap_or(0)
    }

    pub(crate) fn ok_of(&self, op: Op) -> u64 {
        self.by_op
            .get(&op.label())
            .and_then(|o| o.get("ok"))
            .copied()
            .unwrap_or(0)
    }
}

impl Tally {
    pub(crate) fn record(&self, op: Op, outcome: &Outcome, bytes: u64, took: Duration) {
        let label = outcome.label();
        let mut c = self.inner.lock().unwrap();
        c.total += 1;
        c.bytes_checked += bytes;
        if matches!(outcome, Outcome::Ok) {
            c.ok += 1;
            let slowest = c.slowest_ok.entry(op.label()).or_default();
            *slowest = (*slowest).max(took);
        }
        if matches!(outcome, Outcome::TruncatedAsComplete(_) | Outcome::Hung) && c.critical.len() < 100 {
            c.critical.push(format!("{} {label}: {}", op.label(), outcome.detail()));
        }
        *c.by_op.entry(op.label()).or_default().entry(label.clone()).or_default() += 1;
        *c.by_outcome.entry(label.clone()).or_default() += 1;
        c.examples
            .entry((label, op.label()))
            .or_insert_with(|| outcome.detail());
    }

    pub(crate) fn snapshot(&self) -> Counts {
        self.inner.lock().unwrap().clone()
    }
}

/// One reading of the proxy process.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// Seconds since the load began (negative: before it).
    pub t: f64,
    pub phase: &'static str,
    pub rss_kib: u64,
    pub fds: u64,
    /// The proxy's `open_connections` and `open_upgraded_connections` gauges
    /// (None: the admin listener did not answer).
    pub conns: Option<i64>,
    pub tunnels: Option<i64>,
    pub done: u64,
    pub ok: u64,
    pub failed: u64,
}

pub(crate) fn sample_header() -> String {
    format!(
        "{:>7} {:<9} {:>8} {:>5} {:>6} {:>7} {:>9} {:>9} {:>8}",
        "t(s)", "upstream", "rss(MiB)", "fds", "conns", "tunnels", "exchanges", "ok", "failed"
    )
}

impl Sample {
    pub(crate) fn row(&self) -> String {
        format!(
            "{:>7.1} {:<9} {:>8.1} {:>5} {:>6} {:>7} {:>9} {:>9} {:>8}",
            self.t,
            self.phase,
            self.rss_kib as f64 / 1024.0,
            self.fds,
            gauge(self.conns),
            gauge(self.tunnels),
            self.done,
            self.ok,
            self.failed
        )
    }
}

fn gauge(value: Option<i64>) -> String {
    value.map_or("?".to_owned(), |v| v.to_string())
}

/// first / max / last of a series.
pub(crate) fn first_max_last(values: impl Iterator<Item = u64>) -> (u64, u64, u64) {
    let values: Vec<u64> = values.collect();
    let first = values.first().copied().unwrap_or(0);
    let last = values.last().copied().unwrap_or(0);
    (first, values.iter().copied().max().unwrap_or(0), last)
}

/// The outcome table: one row per request kind, one column per outcome seen.
pub(crate) fn outcome_table(counts: &Counts, ops: &[Op]) -> String {
    let mut columns: Vec<String> = counts.by_outcome.keys().cloned().collect();
    columns.sort_by_key(|c| (c != "ok", c.clone()));
    let width = |c: &str| c.len().max(7);
    let mut out = format!("{:<16} {:>8}", "kind", "total");
    for c in &columns {
        out.push_str(&format!(" {:>w$}", c, w = width(c)));
    }
    out.push('\n');
    let mut rows: Vec<String> = ops.iter().map(|op| op.label()).collect();
    rows.push("all".into());
    for row in rows {
        let cells = |c: &str| -> u64 {
            if row == "all" {
                counts.count(c)
            } else {
                counts.by_op.get(&row).and_then(|o| o.get(c)).copied().unwrap_or(0)
            }
        };
        let total: u64 = columns.iter().map(|c| cells(c)).sum();
        out.push_str(&format!("{row:<16} {total:>8}"));
        for c in &columns {
            out.push_str(&format!(" {:>w$}", cells(c), w = width(c)));
        }
        out.push('\n');
    }
    out
}
