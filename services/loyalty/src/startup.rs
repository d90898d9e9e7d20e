//! Wiring of the `loyalty` processes: which adapters, which parts (gateway, engine, both), and
//! how replies travel. [`Application::build`] binds the listener first (port 0 works), so tests
//! start the real server and learn its port.
//!
//! | command          | log            | cache          | store                     | replies                   |
//! |------------------|----------------|----------------|---------------------------|---------------------------|
//! | `loyalty dev`    | embedded       | embedded       | embedded                  | in process                |
//! | `loyalty node`   | Kafka          | Redis          | ScyllaDB, else embedded   | in process                |
//! | `loyalty gateway`| Kafka          | Redis          | ScyllaDB (required)       | Redis pub/sub (subscribe) |
//! | `loyalty engine` | Kafka          | Redis          | ScyllaDB, else embedded   | Redis pub/sub (publish)   |

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{bail, Context};
use loyalty_core::engine::{Engine, EngineConfig};
use loyalty_core::ports::{EventLog, HotCache, StateStore};
use loyalty_core::programs::ProgramCache;
use loyalty_core::replies::{ReplySink, ReplyWaiters};
use loyalty_embedded::log::EmbeddedLog;
use loyalty_embedded::{EmbeddedCache, EmbeddedStore};
use loyalty_gateway::{Gateway, GatewayConfig};
use tokio::sync::watch;

use crate::configuration::DevConfig;
use crate::demo;

/// Which parts a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Gateway and engine in one process; replies stay in process.
    All,
    /// The HTTP gateway only; replies come from the engines over Redis pub/sub.
    Gateway,
    /// The engine only (with `/healthz`, `/readyz`, `/metrics`); replies go over Redis pub/sub.
    Engine,
}

/// A running platform process.
pub struct Application {
    port: u16,
    server: Server,
    engine: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    /// The ports the platform runs on.
    pub ports: Ports,
    /// The embedded adapters behind the ports, when they are the embedded ones (tests look
    /// under the hood through them).
    pub embedded: Option<Embedded>,
}

/// The adapters of one process.
#[derive(Clone)]
pub struct Ports {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn StateStore>,
    pub cache: Arc<dyn HotCache>,
}

/// The embedded adapters, by their concrete types.
#[derive(Clone)]
pub struct Embedded {
    pub log: Arc<EmbeddedLog>,
    pub store: Arc<EmbeddedStore>,
    pub cache: Arc<EmbeddedCache>,
}

fn kafka_log(config: &DevConfig) -> anyhow::Result<Arc<dyn EventLog>> {
    let brokers = config.kafka_brokers.clone().unwrap_or_default();
    let mut kafka = loyalty_kafka::KafkaConfig::new(brokers.clone());
    kafka.group_instance_id = config.kafka_instance_id.clone();
    kafka.replication_factor = config.kafka_replication;
    Ok(loyalty_kafka::KafkaLog::new(kafka)
        .with_context(|| format!("connecting to Kafka at {brokers}"))?)
}

fn redis_cache(config: &DevConfig) -> anyhow::Result<Arc<dyn HotCache>> {
    let url = config.redis_url.clone().unwrap_or_default();
    // Lazy: a process starts while Redis is down, and reads fall back to the store.
    let cache =
        loyalty_redis::RedisCache::connect_lazy(&url, loyalty_redis::RedisCacheOptions::default())
            .with_context(|| format!("configuring Redis at {url}"))?;
    Ok(Arc::new(cache))
}

/// The embedded store in the data directory, with the configured page cache.
fn open_embedded_store(config: &DevConfig) -> anyhow::Result<Arc<EmbeddedStore>> {
    EmbeddedStore::open_with(&config.data_dir.join("store"), config.store_cache_mib << 20)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))
}

/// The durable store: ScyllaDB when `scylla_nodes` is set, else the embedded store in the data
/// directory (one process owns it).
pub async fn open_store(config: &DevConfig) -> anyhow::Result<Arc<dyn StateStore>> {
    if let Some(scylla) = config.scylla()? {
        let store = loyalty_scylla::ScyllaStore::connect(&scylla)
            .await
            .with_context(|| format!("connecting to ScyllaDB at {}", scylla.nodes.join(",")))?;
        return Ok(Arc::new(store));
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    Ok(open_embedded_store(config)?)
}

impl Application {
    /// `loyalty dev`: everything embedded, in one process.
    pub async fn build(config: DevConfig) -> anyhow::Result<Application> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        let log = EmbeddedLog::open(config.data_dir.join("log"))
            .with_context(|| format!("opening the event log in {}", config.data_dir.display()))?;
        let store = open_embedded_store(&config)?;
        let cache = Arc::new(EmbeddedCache::new(config.cache_capacity));
        let ports = Ports {
            log: log.clone(),
            store: store.clone(),
            cache: cache.clone(),
        };
        Self::build_with(
            config,
            ports,
            Some(Embedded { log, store, cache }),
            Mode::All,
        )
        .await
    }

    /// `loyalty node`, `loyalty gateway` or `loyalty engine`: on Kafka and Redis, with
    /// ScyllaDB or (node and engine only) the embedded store.
    pub async fn build_distributed(config: DevConfig, mode: Mode) -> anyhow::Result<Application> {
        config.validate_node()?;
        if mode == Mode::Gateway && config.scylla_nodes.is_none() {
            bail!(
                "loyalty gateway needs a store shared with the engines: set LOYALTY_SCYLLA_NODES. \
                 Without ScyllaDB, run `loyalty node` (gateway and engine in one process)"
            );
        }
        let ports = Ports {
            log: kafka_log(&config)?,
            store: open_store(&config).await?,
            cache: redis_cache(&config)?,
        };
        Self::build_with(config, ports, None, mode).await
    }

    /// Starts the parts of `mode` on the given adapters and binds the HTTP listener.
    pub async fn build_with(
        config: DevConfig,
        ports: Ports,
        embedded: Option<Embedded>,
        mode: Mode,
    ) -> anyhow::Result<Application> {
        config.validate()?;
        let Ports { log, store, cache } = ports.clone();
        let engine_config = EngineConfig {
            passivate_after: config.passivate_after(),
            checkpoint_every: config.checkpoint_every(),
            topic: config.topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            ..EngineConfig::default()
        };
        let partitions = log
            .ensure_topic(&engine_config.topic, config.partitions)
            .await?;
        if partitions != config.partitions {
            tracing::warn!(
                existing = partitions,
                configured = config.partitions,
                "the command topic exists with another partition count; keeping it"
            );
        }
        log.ensure_topic(&engine_config.dead_letter_topic, 1)
            .await?;

        if config.demo && mode != Mode::Engine {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("creating the data directory {}", config.data_dir.display())
            })?;
            demo::ensure_demo(store.as_ref(), &config.data_dir).await?;
        }

        let programs = Arc::new(ProgramCache::new(Arc::clone(&store)));
        let waiters = ReplyWaiters::new();
        let ready = Arc::new(AtomicBool::new(false));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let redis_url = config.redis_url.clone().unwrap_or_default();
        let prefix = loyalty_redis::RedisCacheOptions::default().prefix;

        let engine = if mode == Mode::Gateway {
            None
        } else {
            let replies: Arc<dyn ReplySink> = if mode == Mode::Engine {
                Arc::new(
                    loyalty_redis::replies::RedisReplySink::connect(&redis_url, &prefix)
                        .await
                        .with_context(|| {
                            format!("connecting to Redis at {redis_url} for replies")
                        })?,
                )
            } else {
                Arc::clone(&waiters) as Arc<dyn ReplySink>
            };
            let engine = Engine {
                log: Arc::clone(&log),
                store: Arc::clone(&store),
                cache: Arc::clone(&cache),
                programs: Arc::clone(&programs),
                replies,
                config: engine_config.clone(),
                ready: Arc::clone(&ready),
            };
            let rx = shutdown_rx.clone();
            Some(
                std::thread::Builder::new()
                    .name("engine".into())
                    .spawn(move || {
                        let system = actix_rt::System::new();
                        if let Err(e) = system.block_on(engine.run(rx)) {
                            tracing::error!(error = %e, "engine failed");
                        }
                    })
                    .context("starting the engine thread")?,
            )
        };

        let mut reply_to = None;
        if mode == Mode::Gateway {
            let id = format!("gw-{}", uuid::Uuid::new_v4().simple());
            tokio::spawn(loyalty_redis::replies::serve_replies(
                redis_url.clone(),
                prefix.clone(),
                id.clone(),
                Arc::clone(&waiters),
                shutdown_rx.clone(),
            ));
            reply_to = Some(id);
            // The gateway is ready once the log is reachable (checked by ensure_topic above).
            ready.store(true, Ordering::Relaxed);
        }

        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        let port = listener.local_addr()?.port();
        let max_body = config.max_body_bytes;
        let workers = match config.http_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let server = if mode == Mode::Engine {
            let ready = web::Data::new(Arc::clone(&ready));
            HttpServer::new(move || {
                App::new()
                    .app_data(ready.clone())
                    .wrap(from_fn(loyalty_gateway::observe))
                    .route(
                        "/healthz",
                        web::get().to(loyalty_gateway::routes::ops::healthz),
                    )
                    .route("/readyz", web::get().to(engine_ready))
                    .route(
                        "/metrics",
                        web::get().to(loyalty_gateway::routes::ops::metrics),
                    )
            })
            .workers(1)
            .listen(listener)?
            .run()
        } else {
            let gateway = web::Data::new(Gateway::new(
                store,
                cache,
                log,
                programs,
                waiters,
                GatewayConfig {
                    admin_key: config.admin_key.clone(),
                    topic: engine_config.topic.clone(),
                    max_body_bytes: config.max_body_bytes,
                    reply_to,
                    ..GatewayConfig::default()
                },
                ready,
            ));
            HttpServer::new(move || {
                App::new()
                    .app_data(gateway.clone())
                    .wrap(from_fn(loyalty_gateway::observe))
                    .configure(|c| loyalty_gateway::configure(c, max_body))
            })
            .workers(workers)
            .listen(listener)?
            .run()
        };
        Ok(Application {
            port,
            server,
            engine,
            shutdown,
            ports,
            embedded,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server stops (SIGINT/SIGTERM), then stops the engine after its
    /// current batch is durable.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let result = (&mut self.server).await;
        let _ = self.shutdown.send(true);
        if let Some(h) = self.engine.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        result.context("HTTP server")
    }
}

async fn engine_ready(ready: web::Data<Arc<AtomicBool>>) -> HttpResponse {
    if ready.load(Ordering::Relaxed) {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("application/problem+json")
            .body(r#"{"type":"urn:loyalty:problem:not-ready","title":"Not ready","status":503,"detail":"the engine has no partition assigned yet","code":"not-ready"}"#)
    }
}
