//! Wiring of `loyalty dev`: the embedded adapters, the engine on its own actix system, and the
//! HTTP gateway, in one process. [`Application::build`] binds the listener first (port 0 works),
//! so tests start the real server and learn its port.

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
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

/// A running platform: gateway and engine.
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

impl Application {
    /// Opens the data directory, starts the engine and binds the HTTP listener.
    pub async fn build(config: DevConfig) -> anyhow::Result<Application> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        let log = EmbeddedLog::open(config.data_dir.join("log"))
            .with_context(|| format!("opening the event log in {}", config.data_dir.display()))?;
        let store = EmbeddedStore::open(&config.data_dir.join("store"))
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        let cache = Arc::new(EmbeddedCache::new(config.cache_capacity));
        let ports = Ports {
            log: log.clone(),
            store: store.clone(),
            cache: cache.clone(),
        };
        Self::build_with(config, ports, Some(Embedded { log, store, cache })).await
    }

    /// `loyalty node`: gateway and engine in one process on Kafka (the log, shared with the
    /// other nodes of the consumer group) and Redis (the hot cache, shared with every gateway),
    /// with the embedded store in the data directory. Without ScyllaDB the store is this
    /// process's own, so one node owns the data: run more nodes only with a shared store.
    pub async fn build_node(config: DevConfig) -> anyhow::Result<Application> {
        config.validate_node()?;
        let brokers = config.kafka_brokers.clone().unwrap_or_default();
        let mut kafka = loyalty_kafka::KafkaConfig::new(brokers.clone());
        kafka.group_instance_id = config.kafka_instance_id.clone();
        kafka.replication_factor = config.kafka_replication;
        let log = loyalty_kafka::KafkaLog::new(kafka)
            .with_context(|| format!("connecting to Kafka at {brokers}"))?;
        let redis_url = config.redis_url.clone().unwrap_or_default();
        let cache = loyalty_redis::RedisCache::connect_lazy(
            &redis_url,
            loyalty_redis::RedisCacheOptions::default(),
        )
        .with_context(|| format!("configuring Redis at {redis_url}"))?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        let store = EmbeddedStore::open(&config.data_dir.join("store"))
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        let ports = Ports {
            log,
            store,
            cache: Arc::new(cache),
        };
        Self::build_with(config, ports, None).await
    }

    /// Starts the engine and binds the HTTP listener on the given adapters.
    pub async fn build_with(
        config: DevConfig,
        ports: Ports,
        embedded: Option<Embedded>,
    ) -> anyhow::Result<Application> {
        config.validate()?;
        let Ports { log, store, cache } = ports.clone();
        let engine_config = EngineConfig {
            passivate_after: config.passivate_after(),
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

        if config.demo {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("creating the data directory {}", config.data_dir.display())
            })?;
            demo::ensure_demo(store.as_ref(), &config.data_dir).await?;
        }

        let store_port = store;
        let cache_port = cache;
        let log_port = log;
        let programs = Arc::new(ProgramCache::new(Arc::clone(&store_port)));
        let replies = ReplyWaiters::new();
        let ready = Arc::new(AtomicBool::new(false));

        let (shutdown, shutdown_rx) = watch::channel(false);
        let engine = Engine {
            log: Arc::clone(&log_port),
            store: Arc::clone(&store_port),
            cache: Arc::clone(&cache_port),
            programs: Arc::clone(&programs),
            replies: Arc::clone(&replies) as Arc<dyn ReplySink>,
            config: engine_config.clone(),
            ready: Arc::clone(&ready),
        };
        let engine = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                if let Err(e) = system.block_on(engine.run(shutdown_rx)) {
                    tracing::error!(error = %e, "engine failed");
                }
            })
            .context("starting the engine thread")?;

        let gateway = web::Data::new(Gateway::new(
            store_port,
            cache_port,
            log_port,
            programs,
            replies,
            GatewayConfig {
                admin_key: config.admin_key.clone(),
                topic: engine_config.topic.clone(),
                max_body_bytes: config.max_body_bytes,
                ..GatewayConfig::default()
            },
            ready,
        ));
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        let port = listener.local_addr()?.port();
        let max_body = config.max_body_bytes;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(gateway.clone())
                .wrap(from_fn(loyalty_gateway::observe))
                .configure(|c| loyalty_gateway::configure(c, max_body))
        })
        .listen(listener)?;
        if config.http_workers > 0 {
            server = server.workers(config.http_workers);
        }
        let server = server.run();
        Ok(Application {
            port,
            server,
            engine: Some(engine),
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
        self.stop_engine().await;
        result.context("HTTP server")
    }

    async fn stop_engine(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(h) = self.engine.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}
