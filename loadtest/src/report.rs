//! The run's report, as JSON and as Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::CheckReport;
use crate::model::Op;
use crate::run::{RunOptions, RunResult};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// RFC 3339, UTC.
    pub date: String,
    pub command_line: String,
    pub url: String,
    pub machine: Machine,
    pub settings: RunOptions,
    pub members: usize,
    pub stores: usize,
    pub steady_secs: f64,
    pub total_secs: f64,
    pub total: Totals,
    pub ops: BTreeMap<String, OpReport>,
    /// Every error, `op: kind` → count (dropped arrivals included).
    pub errors: BTreeMap<String, u64>,
    /// Answers the traffic model expects, e.g. `redeem: 409 insufficient-points`.
    pub expected_rejections: BTreeMap<String, u64>,
    pub correctness: CheckReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mib: Option<u64>,
    pub os: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the report was made: other work on the machine.
    pub load_average: Option<String>,
    /// `/proc/pressure/io` "some" line: time stalled on IO (durable writes share the disk).
    pub io_pressure: Option<String>,
}

impl Machine {
    pub fn detect() -> Self {
        let memory_mib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
                .map(|kib| kib / 1024)
        });
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_mib,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
            io_pressure: std::fs::read_to_string("/proc/pressure/io")
                .ok()
                .and_then(|p| p.lines().next().map(str::to_owned)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub dropped: u64,
    pub abandoned: u64,
    /// Answers per second over the steady state.
    pub throughput: f64,
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    #[serde(flatten)]
    pub counts: crate::run::OpResult,
    pub throughput: f64,
    pub latency_ms: Latency,
}

/// Percentiles in milliseconds (HDR histogram, 3 significant digits).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

pub(crate) struct ReportInput<'a> {
    pub url: &'a str,
    pub members: usize,
    pub stores: usize,
    pub opts: &'a RunOptions,
    pub command_line: &'a str,
    pub result: RunResult,
    pub check: CheckReport,
}

pub(crate) fn build(input: ReportInput<'_>) -> Report {
    let ReportInput {
        url,
        members,
        stores,
        opts,
        command_line,
        result,
        check,
    } = input;
    let steady = result.steady_secs.max(1e-9);
    let mut all = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant histogram bounds are valid");
    let mut ops = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut rejections = BTreeMap::new();
    let (mut sent, mut ok, mut nerr, mut answered) = (0, 0, 0, 0);
    for (op, mut r) in result.ops {
        let hist = r.latency.take();
        if let Some(h) = &hist {
            let _ = all.add(h);
        }
        sent += r.sent;
        ok += r.ok;
        answered += r.steady_answered;
        for (k, n) in &r.errors {
            nerr += n;
            errors.insert(format!("{op}: {k}"), *n);
        }
        for (k, n) in &r.expected_rejections {
            rejections.insert(format!("{op}: {k}"), *n);
        }
        let throughput = r.steady_answered as f64 / steady;
        ops.insert(
            op.name().to_owned(),
            OpReport {
                latency_ms: hist.as_ref().map(Latency::of).unwrap_or_default(),
                throughput,
                counts: r,
            },
        );
    }
    if result.dropped > 0 {
        errors.insert("dropped: in-flight cap reached".into(), result.dropped);
    }
    if result.abandoned > 0 {
        errors.insert("abandoned: no answer at the end".into(), result.abandoned);
    }
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Report {
        date,
        command_line: command_line.to_owned(),
        url: url.to_owned(),
        machine: Machine::detect(),
        settings: opts.clone(),
        members,
        stores,
        steady_secs: result.steady_secs,
        total_secs: result.total_secs,
        total: Totals {
            sent,
            ok,
            errors: nerr,
            dropped: result.dropped,
            abandoned: result.abandoned,
            throughput: answered as f64 / steady,
            latency_ms: Latency::of(&all),
        },
        ops,
        errors,
        expected_rejections: rejections,
        correctness: check,
    }
}

impl Report {
    /// Errors that are not part of the traffic model (everything in `errors`).
    pub fn unexpected_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let model = match &self.settings.model {
            crate::run::LoadModel::Open {
                rate,
                max_in_flight,
            } => format!("open, {rate} req/s scheduled (at most {max_in_flight} in flight)"),
            crate::run::LoadModel::Closed { users } => format!("closed, {users} users"),
        };
        let _ = writeln!(s, "# Load test report\n");
        let _ = writeln!(s, "- Date: {}", self.date);
        let _ = writeln!(s, "- Command: `{}`", self.command_line);
        let _ = writeln!(s, "- Target: {}", self.url);
        let _ = writeln!(
            s,
            "- Machine: {} cores, {} MiB RAM, {}",
            self.machine.cores,
            self.machine
                .memory_mib
                .map(|m| m.to_string())
                .unwrap_or_else(|| "?".into()),
            self.machine.os
        );
        if let Some(l) = &self.machine.load_average {
            let _ = writeln!(
                s,
                "- Load average at the end: {l}; IO pressure: {}",
                self.machine.io_pressure.as_deref().unwrap_or("n/a")
            );
        }
        let _ = writeln!(s, "- Model: {model}");
        let _ = writeln!(
            s,
            "- Ramp-up {:.1} s, steady state {:.1} s (run took {:.1} s)",
            self.settings.ramp_up.as_secs_f64(),
            self.steady_secs,
            self.total_secs
        );
        let _ = writeln!(
            s,
            "- Mix: {}; anonymous purchases {} %; Zipf s = {}; purchases with wait_ms={} \
             ({} % of purchases without waiting)",
            self.settings.mix,
            self.settings.anonymous_pct,
            self.settings.zipf_s,
            self.settings.wait_ms,
            self.settings.no_wait_pct
        );
        let _ = writeln!(
            s,
            "- Franchise: {} stores, {} members\n",
            self.stores, self.members
        );
        let _ = writeln!(s, "## Throughput and latency (steady state)\n");
        let _ = writeln!(
            s,
            "| Operation | Sent | 2xx | of which 202 | Expected rejections | Errors | Answers/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for op in Op::ALL {
            if let Some(r) = self.ops.get(op.name()).filter(|r| r.counts.sent > 0) {
                row(
                    &mut s,
                    op.name(),
                    r.counts.sent,
                    r.counts.ok,
                    r.counts.accepted_202,
                    r.counts.expected_rejections.values().sum(),
                    r.counts.errors.values().sum(),
                    r.throughput,
                    &r.latency_ms,
                );
            }
        }
        let accepted = self.ops.values().map(|r| r.counts.accepted_202).sum();
        row(
            &mut s,
            "**total**",
            self.total.sent,
            self.total.ok,
            accepted,
            self.expected_rejections.values().sum(),
            self.total.errors,
            self.total.throughput,
            &self.total.latency_ms,
        );
        let _ = writeln!(
            s,
            "\nLatency is measured from the scheduled time of each request (open model) or from \
             its sending (closed model). Dropped arrivals (in-flight cap): {}.\n",
            self.total.dropped
        );
        let _ = writeln!(s, "## Errors by kind\n");
        if self.errors.is_empty() {
            let _ = writeln!(s, "None.");
        } else {
            let _ = writeln!(s, "| Kind | Count |\n|---|---:|");
            for (k, n) in &self.errors {
                let _ = writeln!(s, "| {k} | {n} |");
            }
        }
        if !self.expected_rejections.is_empty() {
            let _ = writeln!(s, "\nExpected rejections (part of the model):\n");
            let _ = writeln!(s, "| Kind | Count |\n|---|---:|");
            for (k, n) in &self.expected_rejections {
                let _ = writeln!(s, "| {k} | {n} |");
            }
        }
        let c = &self.correctness;
        let _ = writeln!(s, "\n## Correctness check\n");
        let _ = writeln!(
            s,
            "**{}**: {} members checked, {} requests with an unknown outcome resent, {} unresolved, \
             {} balance mismatches, {} purchases with an unexpected `points_earned`.",
            if c.passed { "passed" } else { "FAILED" },
            c.members_checked,
            c.resent,
            c.unresolved.len(),
            c.mismatches.len(),
            c.earn_mismatches
        );
        for m in c.mismatches.iter().take(20) {
            let _ = writeln!(
                s,
                "- member {}: expected {} points, found {}",
                m.member_id,
                m.expected,
                m.actual
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "no answer".into())
            );
        }
        for u in c.unresolved.iter().take(20) {
            let _ = writeln!(s, "- unresolved: {u}");
        }
        s
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    s: &mut String,
    name: &str,
    sent: u64,
    ok: u64,
    accepted: u64,
    rejected: u64,
    errors: u64,
    throughput: f64,
    l: &Latency,
) {
    let _ = writeln!(
        s,
        "| {name} | {sent} | {ok} | {accepted} | {rejected} | {errors} | {throughput:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
}
