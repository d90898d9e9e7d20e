use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use loyalty::configuration::DevConfig;
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
    fn load(&self) -> anyhow::Result<DevConfig> {
        let mut c = DevConfig::load(self.config.as_deref())?;
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        Ok(c)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Gateway + engine + embedded adapters in one process (no server needed).
    Dev(Common),
    /// Gateway + engine on Kafka (LOYALTY_KAFKA_BROKERS) and Redis (LOYALTY_REDIS_URL), with
    /// ScyllaDB (LOYALTY_SCYLLA_NODES) or the embedded store.
    Node(Common),
    /// The HTTP gateway alone, on Kafka, Redis and ScyllaDB; replies over Redis pub/sub.
    Gateway(Common),
    /// An engine node alone (a member of the consumer group), on Kafka, Redis and ScyllaDB or
    /// the embedded store (then a single engine node); serves /healthz, /readyz, /metrics.
    Engine(Common),
    /// Applies the ScyllaDB schema migrations (LOYALTY_SCYLLA_NODES, LOYALTY_SCYLLA_KEYSPACE,
    /// LOYALTY_SCYLLA_REPLICATION). Idempotent.
    Migrate(Common),
    /// Hot cache maintenance.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Writes every member's status from the store into Redis (after a flush or failover).
    /// With the embedded store, stop the node first (or use POST /v1/admin/cache/rebuild).
    Rebuild(Common),
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    loyalty::telemetry::init();
    let (mode, common) = match Cli::parse().command {
        Command::Dev(c) => (None, c),
        Command::Node(c) => (Some(Mode::All), c),
        Command::Gateway(c) => (Some(Mode::Gateway), c),
        Command::Engine(c) => (Some(Mode::Engine), c),
        Command::Migrate(c) => return migrate(c.load()?).await,
        Command::Cache {
            command: CacheCommand::Rebuild(c),
        } => return rebuild(c.load()?).await,
    };
    let c = common.load()?;
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
    println!("loyalty {name}: listening on http://{ip}:{}", app.port());
    app.run_until_stopped().await
}

async fn migrate(c: DevConfig) -> anyhow::Result<()> {
    let Some(scylla) = c.scylla()? else {
        anyhow::bail!(
            "loyalty migrate needs LOYALTY_SCYLLA_NODES (the embedded store needs no migration)"
        );
    };
    let session = loyalty_scylla::session(&scylla).await?;
    let applied = loyalty_scylla::migrate(&session, &scylla).await?;
    if applied.is_empty() {
        println!("schema of keyspace {} is up to date", scylla.keyspace);
    } else {
        println!(
            "applied migrations {applied:?} to keyspace {}",
            scylla.keyspace
        );
    }
    Ok(())
}

async fn rebuild(c: DevConfig) -> anyhow::Result<()> {
    let Some(url) = c.redis_url.clone() else {
        anyhow::bail!("loyalty cache rebuild needs LOYALTY_REDIS_URL");
    };
    let store = loyalty::startup::open_store(&c).await?;
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
