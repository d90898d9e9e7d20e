use std::path::PathBuf;

use clap::{Parser, Subcommand};
use loyalty::configuration::DevConfig;
use loyalty::startup::Application;

/// The loyalty platform for franchises.
#[derive(Parser)]
#[command(name = "loyalty", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway + engine + embedded adapters in one process (no server needed).
    Dev {
        /// Address to listen on [env: LOYALTY_LISTEN] [default: 127.0.0.1:8080]
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory [env: LOYALTY_DATA_DIR] [default: ./data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A TOML configuration file (settings of `DevConfig`) [env: LOYALTY_CONFIG]
        #[arg(long, env = "LOYALTY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Gateway + engine on Kafka (LOYALTY_KAFKA_BROKERS) and Redis (LOYALTY_REDIS_URL), with
    /// the embedded store; several nodes form one consumer group.
    Node {
        /// Address to listen on [env: LOYALTY_LISTEN] [default: 127.0.0.1:8080]
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory of the store [env: LOYALTY_DATA_DIR] [default: ./data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A TOML configuration file [env: LOYALTY_CONFIG]
        #[arg(long, env = "LOYALTY_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    loyalty::telemetry::init();
    let (node, listen, data_dir, config) = match Cli::parse().command {
        Command::Dev {
            listen,
            data_dir,
            config,
        } => (false, listen, data_dir, config),
        Command::Node {
            listen,
            data_dir,
            config,
        } => (true, listen, data_dir, config),
    };
    let mut c = DevConfig::load(config.as_deref())?;
    if let Some(l) = listen {
        c.listen = l;
    }
    if let Some(d) = data_dir {
        c.data_dir = d;
    }
    let ip = c.listen.ip();
    let app = if node {
        Application::build_node(c).await?
    } else {
        Application::build(c).await?
    };
    let mode = if node { "node" } else { "dev" };
    println!("loyalty {mode}: listening on http://{ip}:{}", app.port());
    app.run_until_stopped().await
}
