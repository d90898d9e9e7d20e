use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use loyalty::configuration::{DevConfig, Profile, SharedStore};
use loyalty::startup::{Application, Mode};

/// The loyalty platform for franchises.
#[derive(Parser)]
#[command(name = "loyalty", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to listen and where the settings are (each also from the environment).
#[derive(Args)]
struct Common {
    /// Address to listen on [env: LOYALTY_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory (embedded log and store) [env: LOYALTY_DATA_DIR] [default: ./data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file (the settings of `DevConfig`) [env: LOYALTY_CONFIG]
    #[arg(long, env = "LOYALTY_CONFIG")]
    config: Option<PathBuf>,
}

impl Common {
    /// The settings over the defaults of `profile`: dev's for `loyalty dev`, production's
    /// (no admin key, no demo data unless asked) for every other command.
    fn load(&self, profile: Profile) -> anyhow::Result<DevConfig> {
        let mut c = DevConfig::load_as(self.config.as_deref(), profile)?;
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        Ok(c)
    }
}

/// `loyalty dev`'s settings.
#[derive(Args)]
struct DevArgs {
    #[command(flatten)]
    common: Common,
    /// Create the demo franchise without its generated history [env: LOYALTY_DEMO_HISTORY=false]
    #[arg(long)]
    no_demo_history: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway + engine + embedded adapters in one process (no server needed).
    Dev(DevArgs),
    /// Gateway + engine on Kafka (LOYALTY_KAFKA_BROKERS) and Redis (LOYALTY_REDIS_URL), with
    /// a shared store (LOYALTY_POSTGRES_URL or LOYALTY_SCYLLA_NODES) or the embedded store.
    /// Needs LOYALTY_ADMIN_KEY; demo data only with LOYALTY_DEMO=true.
    Node(Common),
    /// The HTTP gateway alone, on Kafka, Redis and a shared store (LOYALTY_POSTGRES_URL or
    /// LOYALTY_SCYLLA_NODES); replies over Redis pub/sub. Needs LOYALTY_ADMIN_KEY.
    Gateway(Common),
    /// An engine node alone (a member of the consumer group), on Kafka, Redis and a shared
    /// store (LOYALTY_POSTGRES_URL or LOYALTY_SCYLLA_NODES); serves /healthz, /readyz,
    /// /metrics. Needs LOYALTY_ADMIN_KEY.
    Engine(Common),
    /// Applies the schema migrations of the configured shared store: PostgreSQL
    /// (LOYALTY_POSTGRES_URL) or ScyllaDB (LOYALTY_SCYLLA_NODES, LOYALTY_SCYLLA_KEYSPACE,
    /// LOYALTY_SCYLLA_REPLICATION). Idempotent; the embedded store needs none.
    Migrate(Common),
    /// Hot cache maintenance.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Checks every member's state against its ledger, and Redis (LOYALTY_REDIS_URL) against
    /// the store; exits 1 when anything differs. Stop an embedded-store node first.
    Audit {
        #[command(flatten)]
        common: Common,
        /// Only this franchise (default: every franchise).
        #[arg(long)]
        franchise: Option<String>,
        /// Evict and rewrite every cached status that differs from the store.
        #[arg(long)]
        repair_cache: bool,
    },
    /// The dead-letter topic.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// The dashboards' projections.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Personal data at rest: the key ring of LOYALTY_PII_KEYS (README "Personal data at
    /// rest").
    Privacy {
        #[command(subcommand)]
        command: PrivacyCommand,
    },
}

#[derive(Subcommand)]
enum PrivacyCommand {
    /// Prints a new key, `ID:base64`, to put first in LOYALTY_PII_KEYS (keep the old keys
    /// after it).
    NewKey {
        /// The key's id: 1 to 32 letters, digits, `-` or `_` (e.g. the month, `2026-12`).
        id: String,
    },
    /// Writes every stored member again under the ring's first key (after a rotation; with
    /// the embedded store, stop the node first).
    Reseal(Common),
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Recomputes the dashboards' aggregates from the store's records (engines stopped).
    Rebuild {
        #[command(flatten)]
        common: Common,
        /// Only this franchise (default: every franchise).
        #[arg(long)]
        franchise: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// Appends every dead letter not replayed yet back to the topic it came from (after its
    /// cause is fixed). Safe to repeat: applied commands are answered as replays, bad ones are
    /// dead-lettered again. Stop an embedded-log node first.
    Replay {
        #[command(flatten)]
        common: Common,
        /// The dead-letter topic (default: LOYALTY_DEAD_LETTER_TOPIC, the command topic's).
        #[arg(long)]
        topic: Option<String>,
        /// Only dead letters of this reason (unknown-program, undecodable, ...).
        #[arg(long)]
        reason: Option<String>,
        /// Count what would be replayed; append and commit nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Writes every member's status from the store into Redis (after a flush or failover).
    /// With the embedded store, stop the node first (or use POST /v1/admin/cache/rebuild).
    Rebuild(Common),
}

impl Command {
    /// The `service.name` of the process's traces unless `OTEL_SERVICE_NAME` says otherwise.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Dev(_) => "loyalty-dev",
            Command::Node(_) => "loyalty-node",
            Command::Gateway(_) => "loyalty-gateway",
            Command::Engine(_) => "loyalty-engine",
            Command::Migrate(_) => "loyalty-migrate",
            Command::Cache { .. } => "loyalty-cache",
            Command::Projections { .. } => "loyalty-projections",
            Command::Audit { .. } => "loyalty-audit",
            Command::DeadLetters { .. } => "loyalty-dead-letters",
            Command::Privacy { .. } => "loyalty-privacy",
        }
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    // Flushes the last spans when dropped, whichever way `main` returns.
    let mut telemetry = loyalty::telemetry::start(command.service_name())?;
    loyalty::startup::survive_file_size_limit()?;
    let result = run(command).await;
    telemetry.shutdown();
    result
}

async fn run(command: Command) -> anyhow::Result<()> {
    let mut no_demo_history = false;
    let (mode, common) = match command {
        Command::Dev(c) => {
            no_demo_history = c.no_demo_history;
            (None, c.common)
        }
        Command::Node(c) => (Some(Mode::All), c),
        Command::Gateway(c) => (Some(Mode::Gateway), c),
        Command::Engine(c) => (Some(Mode::Engine), c),
        Command::Migrate(c) => return migrate(c.load(Profile::Production)?).await,
        Command::Cache {
            command: CacheCommand::Rebuild(c),
        } => return rebuild(c.load(Profile::Production)?).await,
        Command::Audit {
            common,
            franchise,
            repair_cache,
        } => {
            let c = common.load(Profile::Production)?;
            if !loyalty::audit::run(&c, franchise.as_deref(), repair_cache).await? {
                anyhow::bail!("the audit found differences (listed above)");
            }
            return Ok(());
        }
        Command::DeadLetters {
            command:
                DeadLettersCommand::Replay {
                    common,
                    topic,
                    reason,
                    dry_run,
                },
        } => {
            let c = common.load(Profile::Production)?;
            let options = loyalty_core::dead_letters::ReplayOptions { reason, dry_run };
            return loyalty::dead_letters::replay(&c, topic.as_deref(), &options).await;
        }
        Command::Privacy {
            command: PrivacyCommand::NewKey { id },
        } => {
            println!("{}", loyalty_core::sealing::KeyRing::new_key_spec(&id)?);
            return Ok(());
        }
        Command::Privacy {
            command: PrivacyCommand::Reseal(common),
        } => return loyalty::privacy::reseal(&common.load(Profile::Production)?).await,
        Command::Projections {
            command: ProjectionsCommand::Rebuild { common, franchise },
        } => {
            let c = common.load(Profile::Production)?;
            return loyalty::projections::rebuild(&c, franchise.as_deref()).await;
        }
    };
    let profile = match mode {
        None => Profile::Dev,
        Some(_) => Profile::Production,
    };
    let mut c = common.load(profile)?;
    if no_demo_history {
        c.demo_history = false;
    }
    let keys = c.keys()?;
    // Only `loyalty dev` gives the demo franchise it creates a history.
    let demo_history = mode.is_none() && c.demo && c.demo_history;
    let (data_dir, topic) = (c.data_dir.clone(), c.topic.clone());
    let ip = c.listen.ip();
    let (name, app) = match mode {
        None => ("dev", Application::build(c).await?),
        Some(Mode::All) => ("node", Application::build_distributed(c, Mode::All).await?),
        Some(Mode::Gateway) => (
            "gateway",
            Application::build_distributed(c, Mode::Gateway).await?,
        ),
        Some(Mode::Engine) => (
            "engine",
            Application::build_distributed(c, Mode::Engine).await?,
        ),
    };
    loyalty::demo::append_pending_history(
        &app.ports.log,
        app.ports.store.as_ref(),
        &keys,
        &topic,
        &data_dir,
        demo_history,
    )
    .await;
    println!("loyalty {name}: listening on http://{ip}:{}", app.port());
    app.run_until_stopped().await
}

/// `loyalty migrate`: the migrations of whichever shared store is configured.
async fn migrate(c: DevConfig) -> anyhow::Result<()> {
    let store = match c.shared_store()? {
        None => {
            println!(
                "nothing to migrate: no shared store is configured, and the embedded store \
                 needs no migration (it creates its tables when it opens). To migrate a shared \
                 store, set LOYALTY_POSTGRES_URL or LOYALTY_SCYLLA_NODES"
            );
            return Ok(());
        }
        Some(s) => s,
    };
    let what = store.describe();
    let applied = match &store {
        SharedStore::Postgres(pg) => loyalty_postgres::migrate(pg).await.map_err(|e| {
            anyhow::anyhow!(
                "migrating {what}: {}",
                loyalty::configuration::scrub_password(&e.to_string(), &pg.url)
            )
        })?,
        SharedStore::Scylla(scylla) => {
            let session = loyalty_scylla::session(scylla)
                .await
                .map_err(|e| anyhow::anyhow!("connecting to {what}: {e}"))?;
            loyalty_scylla::migrate(&session, scylla)
                .await
                .map_err(|e| anyhow::anyhow!("migrating {what}: {e}"))?
        }
    };
    if applied.is_empty() {
        println!("schema of {what} is up to date");
    } else {
        println!("applied migrations {applied:?} to {what}");
    }
    Ok(())
}

async fn rebuild(c: DevConfig) -> anyhow::Result<()> {
    let Some(url) = c.redis_url.clone() else {
        anyhow::bail!("loyalty cache rebuild needs LOYALTY_REDIS_URL");
    };
    // With the embedded store, the lock keeps a running node from being read behind its back.
    let loyalty::startup::OpenStore { store, lock: _lock } =
        loyalty::startup::open_store(&c).await?;
    let cache =
        loyalty_redis::RedisCache::connect(&url, loyalty_redis::RedisCacheOptions::default())
            .await?;
    let programs = loyalty_core::programs::ProgramCache::new(std::sync::Arc::clone(&store));
    let started = std::time::Instant::now();
    let n = loyalty_core::rebuild::rebuild(
        store.as_ref(),
        &programs,
        &cache,
        loyalty_core::rebuild::DEFAULT_REBUILD_PAGE,
    )
    .await?;
    println!(
        "rebuilt {n} member statuses in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
