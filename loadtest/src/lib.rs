//! `loyalty-loadtest`: a load generator for the loyalty platform.
//!
//! It models a franchise (S stores, M members with Zipf popularity, anonymous sales, a
//! checkout mix), sets it up through the API ([`setup::setup`], idempotent through a state
//! file), offers load in an open model (a target arrival rate, latency measured from each
//! request's scheduled time, so coordinated omission cannot hide queueing) or a closed one,
//! reports throughput, errors by kind and HDR latency percentiles per operation
//! ([`report::Report`], JSON and Markdown), and ends with a correctness check
//! ([`check::CheckReport`]): every purchase answered 2xx is reflected exactly once in its
//! member's points.
//!
//! Built on reqwest + tokio rather than goose: lighter, and the open-model scheduler (fixed
//! arrival times, in-flight cap, latency from the scheduled time) and the per-member
//! expectations of the check stay under our control.

pub mod api;
pub mod check;
pub mod model;
pub mod report;
pub mod run;
pub mod setup;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use api::Api;
pub use model::{parse_duration, Mix, Op};
pub use report::Report;
pub use run::{LoadModel, RunOptions};
pub use setup::{SetupOptions, State};

/// A client whose timeout exceeds the longest `wait_ms` (5 s) the generator sends.
pub fn client(url: &str, max_in_flight: usize) -> anyhow::Result<Api> {
    Api::new(url, Duration::from_secs(15), max_in_flight)
}

/// Runs the load against the franchise of `state`, then the correctness check; returns the
/// report (check its `correctness.passed`).
pub async fn run(
    api: &Api,
    state: State,
    opts: &RunOptions,
    command_line: &str,
) -> anyhow::Result<Report> {
    let url = api.base().to_owned();
    let (members, stores) = (state.members.len(), state.stores.len());
    let shared = Arc::new(run::Shared::new(api.clone(), state, opts)?);
    let baseline = run::read_baseline(&shared)
        .await
        .context("reading the members' points before the run")?;
    let result = run::drive(shared.clone(), opts).await?;
    if opts.progress {
        eprintln!("run: done; checking correctness");
    }
    let check = check::check(&shared, &baseline, opts.resolve_timeout).await;
    Ok(report::build(report::ReportInput {
        url: &url,
        members,
        stores,
        opts,
        command_line,
        result,
        check,
    }))
}

/// The CI smoke scenario: a fresh franchise with few members, a few seconds at a tiny rate,
/// the correctness check.
#[derive(Debug, Clone)]
pub struct SmokeOptions {
    pub url: String,
    pub admin_key: String,
    pub stores: usize,
    pub members: usize,
    pub rate: f64,
    pub duration: Duration,
    pub progress: bool,
}

impl SmokeOptions {
    pub fn new(url: &str, admin_key: &str) -> Self {
        SmokeOptions {
            url: url.to_owned(),
            admin_key: admin_key.to_owned(),
            stores: 2,
            members: 30,
            rate: 50.0,
            duration: Duration::from_secs(3),
            progress: false,
        }
    }
}

pub async fn smoke(opts: &SmokeOptions, command_line: &str) -> anyhow::Result<Report> {
    let api = client(&opts.url, 64)?;
    let state = setup::setup(
        &api,
        &SetupOptions {
            url: opts.url.clone(),
            admin_key: opts.admin_key.clone(),
            state_path: None,
            stores: opts.stores,
            members: opts.members,
            concurrency: 8,
            franchise_name: "Loadtest smoke".into(),
            verbose: opts.progress,
        },
    )
    .await?;
    let run_opts = RunOptions {
        model: LoadModel::Open {
            rate: opts.rate,
            max_in_flight: 64,
        },
        ramp_up: Duration::ZERO,
        duration: opts.duration,
        // Purchases and redemptions weigh more than in the default mix, so that a few seconds
        // exercise the check; redemptions become possible after a few purchases.
        mix: Mix {
            weights: [30, 15, 35, 10, 10],
        },
        // A fifth of the purchases do not wait (202): the check resolves them by
        // resending, which exercises the replay path.
        no_wait_pct: 20.0,
        progress: opts.progress,
        resolve_timeout: Duration::from_secs(8),
        ..RunOptions::default()
    };
    run(&api, state, &run_opts, command_line).await
}

/// Writes the JSON and/or Markdown report.
pub fn write_reports(
    report: &Report,
    json: Option<&Path>,
    markdown: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = markdown {
        std::fs::write(p, report.to_markdown())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
