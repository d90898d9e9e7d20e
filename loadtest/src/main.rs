//! `loyalty-loadtest`: the command line over the `loyalty_loadtest` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use loyalty_loadtest::{
    client, parse_duration, run, setup, smoke, write_reports, LoadModel, Mix, Report, RunOptions,
    SetupOptions, SmokeOptions,
};

#[derive(Parser)]
#[command(
    name = "loyalty-loadtest",
    version,
    about = "Load generator for the loyalty platform: franchise traffic, open/closed model, HDR percentiles, correctness check"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or reuse, through the state file) the franchise, its stores and members.
    Setup {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        franchise: Franchise,
    },
    /// Set up (idempotently), drive the checkout load, report, check correctness.
    Run {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        franchise: Franchise,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        out: Out,
    },
    /// CI smoke run: a fresh franchise with few members, seconds at a tiny rate, the check.
    Smoke {
        #[arg(long, env = "LOADTEST_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "LOYALTY_ADMIN_KEY", default_value = "dev-admin-key")]
        admin_key: String,
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 30)]
        members: usize,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Args)]
struct Target {
    /// Base URL of the platform; several gateways of one platform separated by commas
    /// (`http://127.0.0.1:8080,http://127.0.0.1:8081`): requests go to each in turn.
    #[arg(long, env = "LOADTEST_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The platform admin's key (creates the franchise).
    #[arg(long, env = "LOYALTY_ADMIN_KEY", default_value = "dev-admin-key")]
    admin_key: String,
    /// Where the franchise, store keys and member ids are remembered.
    #[arg(long, default_value = "loadtest-state.json")]
    state: PathBuf,
}

#[derive(Args)]
struct Franchise {
    /// Stores of the franchise.
    #[arg(long, default_value_t = 5)]
    stores: usize,
    /// Members enrolled by setup (deterministic phone numbers).
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Enrolments in flight at once during setup.
    #[arg(long, default_value_t = 128)]
    setup_concurrency: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Model {
    Open,
    Closed,
}

#[derive(Args)]
struct Load {
    /// open: a target arrival rate; closed: N users waiting for each answer.
    #[arg(long, value_enum, default_value = "open")]
    model: Model,
    /// Open model: requests per second, scheduled at fixed intervals.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Open model: outstanding requests at most; arrivals beyond are dropped and counted.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: usize,
    /// Closed model: simulated tills.
    #[arg(long, default_value_t = 32)]
    users: usize,
    /// Linear ramp-up before the measured steady state (e.g. 5s).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    ramp_up: Duration,
    /// The measured steady state (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Checkout mix, op=weight.
    #[arg(
        long,
        default_value = "identify=45,status=20,purchase=25,redeem=5,enrol=5"
    )]
    mix: Mix,
    /// Percentage of purchases without a member (anonymous sales).
    #[arg(long, default_value_t = 10.0)]
    anonymous_pct: f64,
    /// Zipf exponent of member popularity (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// wait_ms of purchases (0 to 5000).
    #[arg(long, default_value_t = 2000)]
    wait_ms: u32,
    /// Percentage of purchases sent without waiting (202; resolved by the check).
    #[arg(long, default_value_t = 0.0)]
    no_wait_pct: f64,
    /// Seed of the traffic's random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How long the check may resend requests whose outcome is unknown.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    resolve_timeout: Duration,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct Out {
    /// JSON report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Markdown report.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match main_inner(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn setup_options(target: &Target, f: &Franchise) -> SetupOptions {
    SetupOptions {
        url: target.url.clone(),
        admin_key: target.admin_key.clone(),
        state_path: Some(target.state.clone()),
        stores: f.stores,
        members: f.members,
        concurrency: f.setup_concurrency,
        franchise_name: "Loadtest Coffee".into(),
        verbose: true,
    }
}

async fn main_inner(cli: Cli) -> anyhow::Result<ExitCode> {
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.cmd {
        Cmd::Setup { target, franchise } => {
            let api = client(&target.url, franchise.setup_concurrency)?;
            let state = setup::setup(&api, &setup_options(&target, &franchise)).await?;
            println!(
                "franchise {}: {} stores, {} members (state in {})",
                state.franchise_id,
                state.stores.len(),
                state.members.len(),
                target.state.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            target,
            franchise,
            load,
            out,
        } => {
            let api = client(&target.url, load.max_in_flight.max(load.users))?;
            let state = setup::setup(&api, &setup_options(&target, &franchise)).await?;
            let opts = RunOptions {
                model: match load.model {
                    Model::Open => LoadModel::Open {
                        rate: load.rate,
                        max_in_flight: load.max_in_flight,
                    },
                    Model::Closed => LoadModel::Closed { users: load.users },
                },
                ramp_up: load.ramp_up,
                duration: load.duration,
                mix: load.mix,
                anonymous_pct: load.anonymous_pct,
                zipf_s: load.zipf_s,
                wait_ms: load.wait_ms,
                no_wait_pct: load.no_wait_pct,
                seed: load.seed,
                progress: !load.no_progress,
                resolve_timeout: load.resolve_timeout,
            };
            let report = run(&api, state, &opts, &command_line).await?;
            finish(&report, &out)
        }
        Cmd::Smoke {
            url,
            admin_key,
            rate,
            duration,
            members,
            out,
        } => {
            let mut opts = SmokeOptions::new(&url, &admin_key);
            opts.rate = rate;
            opts.duration = duration;
            opts.members = members;
            let report = smoke(&opts, &command_line).await?;
            finish(&report, &out)
        }
    }
}

fn finish(report: &Report, out: &Out) -> anyhow::Result<ExitCode> {
    write_reports(report, out.out.as_deref(), out.markdown.as_deref())?;
    println!("{}", report.to_markdown());
    if report.correctness.passed {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("correctness check FAILED");
        Ok(ExitCode::from(1))
    }
}
