//! Wiring of the `loyalty` processes: which adapters, which parts (gateway, engine, both), and
//! how replies travel. [`Application::build`] binds the listener first (port 0 works), so tests
//! start the real server and learn its port.
//!
//! | command          | log      | cache    | store                                          | replies                   |
//! |------------------|----------|----------|------------------------------------------------|---------------------------|
//! | `loyalty dev`    | embedded | embedded | embedded (data dir locked)                     | in process                |
//! | `loyalty node`   | Kafka    | Redis    | PostgreSQL or ScyllaDB, else embedded (locked) | in process                |
//! | `loyalty gateway`| Kafka    | Redis    | PostgreSQL or ScyllaDB (required)              | Redis pub/sub (subscribe) |
//! | `loyalty engine` | Kafka    | Redis    | PostgreSQL or ScyllaDB (required)              | Redis pub/sub (publish)   |
//!
//! The shared store is PostgreSQL when `LOYALTY_POSTGRES_URL` is set, ScyllaDB when
//! `LOYALTY_SCYLLA_NODES` is (both is an error), else the embedded store. The embedded store
//! belongs to one process: its data directory is locked ([`DataDirLock`]) before the log or
//! the store is opened, and `loyalty gateway` / `loyalty engine`, which only make sense next
//! to other processes, refuse to start on it. The production commands (`node`, `gateway`,
//! `engine`) refuse the dev admin key ([`DevConfig::refuse_dev_defaults`]).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{bail, Context};
use loyalty_core::engine::delivery::DeliveryConfig;
use loyalty_core::engine::health::EngineHealth;
use loyalty_core::engine::{Engine, EngineConfig};
use loyalty_core::notify::{Channel, MessageSender, Notifier};
use loyalty_core::ports::{EventLog, HotCache, StateStore};
use loyalty_core::programs::ProgramCache;
use loyalty_core::replies::{ReplySink, ReplyWaiters};
use loyalty_core::sealing::KeyRing;
use loyalty_core::trace::ports::{TracedCache, TracedStore};
use loyalty_embedded::log::EmbeddedLog;
use loyalty_embedded::{DataDirLock, EmbeddedCache, EmbeddedStore};
use loyalty_gateway::{Gateway, GatewayConfig};
use tokio::sync::{oneshot, watch};

use crate::configuration::{redact_url, scrub_password, DevConfig, SharedStore};
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
    /// Gets the engine's error if it stops on one.
    engine_failed: Option<oneshot::Receiver<String>>,
    health: Arc<EngineHealth>,
    /// The POS topic ingester, stopped with the engine (it commits what it forwarded).
    pos_ingest: Option<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    /// The ports the platform runs on.
    pub ports: Ports,
    /// The embedded adapters behind the ports, when they are the embedded ones (tests look
    /// under the hood through them).
    pub embedded: Option<Embedded>,
    /// The `dev` notifier, when this process runs it (tests read the one-time codes it
    /// "sent" through it).
    pub notifier: Option<Arc<loyalty_embedded::EmbeddedNotifier>>,
    /// The `dev` senders of campaign messages (SMS, e-mail) where no adapter is configured:
    /// tests read what would have been sent through them.
    pub messages: Vec<Arc<loyalty_embedded::EmbeddedMessages>>,
    /// The lock of the embedded data directory, held as long as this process runs on it.
    lock: Option<DataDirLock>,
}

/// The adapters that reach members: campaign messages by channel, and the self-enrolment
/// page's one-time codes.
struct Senders {
    campaign: Vec<Arc<dyn MessageSender>>,
    codes: Option<Arc<dyn Notifier>>,
    dev_notifier: Option<Arc<loyalty_embedded::EmbeddedNotifier>>,
    dev_messages: Vec<Arc<loyalty_embedded::EmbeddedMessages>>,
}

impl Senders {
    /// The configured adapters (README "Campaign delivery adapters"); where none is configured
    /// and `dev` (embedded adapters), the in-memory ones, which log instead of sending.
    fn new(config: &DevConfig, dev: bool) -> anyhow::Result<Senders> {
        let mut s = Senders {
            campaign: Vec::new(),
            codes: None,
            dev_notifier: None,
            dev_messages: Vec::new(),
        };
        match config.sms_webhook()? {
            Some(c) => {
                let w = Arc::new(
                    loyalty_webhook::WebhookSender::new(&c, Channel::Sms)
                        .map_err(|e| anyhow::anyhow!("the SMS webhook: {e}"))?,
                );
                s.campaign.push(Arc::clone(&w) as Arc<dyn MessageSender>);
                s.codes = Some(w as Arc<dyn Notifier>);
            }
            None if dev => {
                let n = Arc::new(loyalty_embedded::EmbeddedNotifier::new());
                s.codes = Some(Arc::clone(&n) as Arc<dyn Notifier>);
                s.dev_notifier = Some(n);
                s.dev_messages
                    .push(loyalty_embedded::EmbeddedMessages::new(Channel::Sms));
            }
            None => tracing::warn!(
                "no SMS adapter configured (LOYALTY_SMS_WEBHOOK_URL): campaign SMS are skipped \
                 and the self-enrolment page cannot send codes"
            ),
        }
        match config.smtp()? {
            Some(c) => s.campaign.push(Arc::new(
                loyalty_smtp::SmtpSender::new(&c)
                    .map_err(|e| anyhow::anyhow!("the SMTP relay: {e}"))?,
            )),
            None if dev => s
                .dev_messages
                .push(loyalty_embedded::EmbeddedMessages::new(Channel::Email)),
            None => tracing::warn!(
                "no e-mail adapter configured (LOYALTY_SMTP_HOST): campaign e-mails are skipped"
            ),
        }
        s.campaign.extend(
            s.dev_messages
                .iter()
                .map(|m| Arc::clone(m) as Arc<dyn MessageSender>),
        );
        Ok(s)
    }
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
    kafka.session_timeout = config.kafka_session_timeout();
    kafka.heartbeat_interval = config.kafka_heartbeat();
    Ok(loyalty_kafka::KafkaLog::new(kafka)
        .with_context(|| format!("connecting to Kafka at {brokers}"))?)
}

fn redis_cache(config: &DevConfig) -> anyhow::Result<Arc<dyn HotCache>> {
    let url = config.redis_url.clone().unwrap_or_default();
    // Lazy: a process starts while Redis is down, and reads fall back to the store.
    let cache =
        loyalty_redis::RedisCache::connect_lazy(&url, loyalty_redis::RedisCacheOptions::default())
            .with_context(|| format!("configuring Redis at {}", redact_url(&url)))?;
    Ok(Arc::new(cache))
}

/// The phone-lookup rate limits ([`loyalty_gateway::limits`]): buckets in Redis when several
/// gateways share them (`distributed`), in process otherwise.
fn lookup_limits(
    config: &DevConfig,
    distributed: bool,
) -> anyhow::Result<loyalty_gateway::limits::LookupLimits> {
    use loyalty_core::rate_limit::{RateLimit, RateLimiter};
    let limiter: Arc<dyn RateLimiter> = match (&config.redis_url, distributed) {
        (Some(url), true) => {
            let cache = loyalty_redis::RedisCache::connect_lazy(
                url,
                loyalty_redis::RedisCacheOptions::default(),
            )
            .with_context(|| format!("configuring Redis at {}", redact_url(url)))?;
            Arc::new(loyalty_redis::RedisRateLimiter::new(&cache))
        }
        // A bucket is about 100 bytes: 100 000 of them bound the memory to ~10 MB.
        _ => Arc::new(loyalty_embedded::EmbeddedRateLimiter::new(100_000)),
    };
    let address_header = match &config.client_address_header {
        Some(h) => Some(
            actix_web::http::header::HeaderName::from_bytes(h.as_bytes())
                .with_context(|| format!("client_address_header {h:?}"))?,
        ),
        None => None,
    };
    Ok(loyalty_gateway::limits::LookupLimits {
        limiter,
        per_key: RateLimit {
            per_minute: config.lookup_limit_per_minute,
            burst: config.lookup_burst,
        },
        per_address: RateLimit {
            per_minute: config.lookup_address_limit_per_minute,
            burst: config.lookup_burst,
        },
        address_header,
    })
}

/// Where the self-enrolment page's pending one-time codes wait: in Redis when `shared` (a
/// distributed process: a code sent by one gateway must be confirmed through any other) and
/// Redis is configured, else in the process (`loyalty dev`).
fn pending_codes(
    config: &DevConfig,
    shared: bool,
) -> anyhow::Result<Arc<dyn loyalty_core::pending_codes::PendingCodes>> {
    use loyalty_gateway::pages::join::MAX_PENDING;
    Ok(match (&config.redis_url, shared) {
        (Some(url), true) => {
            let cache = loyalty_redis::RedisCache::connect_lazy(
                url,
                loyalty_redis::RedisCacheOptions::default(),
            )
            .with_context(|| format!("configuring Redis at {}", redact_url(url)))?;
            let capacity = u64::try_from(MAX_PENDING).unwrap_or(u64::MAX);
            Arc::new(loyalty_redis::RedisPendingCodes::new(&cache, capacity))
        }
        _ => Arc::new(loyalty_embedded::EmbeddedPendingCodes::new(MAX_PENDING)),
    })
}

/// What the adapters of a process are, as traces name them (`messaging.system`,
/// `db.system.name`).
struct Systems {
    log: &'static str,
    store: &'static str,
    /// `None`: the in-process cache, whose lookups get no span (they take a microsecond).
    cache: Option<&'static str>,
}

/// Wraps the store and the cache of every process so that each call is measured (latency and
/// errors by operation, `loyalty_core::trace::ports`); when this process exports traces
/// ([`crate::telemetry::start`]), also turns on the spans of the log and the engine, and each
/// store and cache call is then a span too (`loyalty_core::trace`).
fn instrumented(ports: Ports, systems: Systems) -> Ports {
    if crate::telemetry::exporting() {
        loyalty_core::trace::enable(systems.log);
    }
    Ports {
        log: ports.log,
        store: TracedStore::wrap(ports.store, systems.store),
        cache: TracedCache::wrap(ports.cache, systems.cache),
    }
}

/// Where the gateways share Redis, each announces the keys it rotates or revokes and forgets
/// those the others announce (see `loyalty_core::key_changes`).
async fn announce_key_changes(
    gateway: Gateway,
    redis_url: &str,
    prefix: &str,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<web::Data<Gateway>> {
    let changes = loyalty_redis::key_changes::RedisKeyChanges::connect(redis_url, prefix)
        .await
        .with_context(|| {
            format!(
                "connecting to Redis at {} for key changes",
                redact_url(redis_url)
            )
        })?;
    let gateway = web::Data::new(gateway.announcing_key_changes(Arc::new(changes)));
    let listener = gateway.clone();
    let forget: loyalty_redis::key_changes::Forget =
        Arc::new(move |hash| listener.forget_announced(hash));
    tokio::spawn(loyalty_redis::key_changes::serve_key_changes(
        redis_url.to_owned(),
        prefix.to_owned(),
        forget,
        shutdown,
    ));
    Ok(gateway)
}

/// Keeps the process alive when a write goes past its file size limit (`RLIMIT_FSIZE`, which
/// some hosts set as a quota): the kernel then raises SIGXFSZ, whose default action kills the
/// process in the middle of the write. Like PostgreSQL, the process takes the signal instead
/// (logged at WARN): the write fails with EFBIG, as on a full disk (ENOSPC), and the store or
/// the log reports it as an error, so the engine retries and the gateway answers 503 rather
/// than the process dying. Must run inside the runtime; the handler stays for the process's
/// life.
pub fn survive_file_size_limit() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut signals =
        signal(SignalKind::from_raw(libc::SIGXFSZ)).context("installing the SIGXFSZ handler")?;
    tokio::spawn(async move {
        while signals.recv().await.is_some() {
            tracing::warn!(
                "a write went past the file size limit (SIGXFSZ): it failed as on a full disk"
            );
        }
    });
    Ok(())
}

/// Locks the embedded data directory (created if missing) for this process: taken before the
/// log or the store is opened, so that a second process on the same directory stops here,
/// having changed nothing.
pub fn lock_data_dir(config: &DevConfig) -> anyhow::Result<DataDirLock> {
    Ok(DataDirLock::acquire(&config.data_dir)?)
}

/// The configured event log, for the tools that read or write it outside a node (`loyalty
/// dead-letters replay`): Kafka when `LOYALTY_KAFKA_BROKERS` is set, else the embedded log of
/// the data directory, locked (so the node must be stopped).
pub fn open_log(config: &DevConfig) -> anyhow::Result<(Arc<dyn EventLog>, Option<DataDirLock>)> {
    if config.kafka_brokers.is_some() {
        return Ok((kafka_log(config)?, None));
    }
    let lock = lock_data_dir(config)?;
    let log = EmbeddedLog::open(config.data_dir.join("log"))
        .with_context(|| format!("opening the event log in {}", config.data_dir.display()))?;
    Ok((log, Some(lock)))
}

/// The embedded store in the data directory, with the configured page cache. The caller holds
/// the directory's lock.
fn open_embedded_store(
    config: &DevConfig,
    _lock: &DataDirLock,
) -> anyhow::Result<Arc<EmbeddedStore>> {
    EmbeddedStore::open_with(
        &config.data_dir.join("store"),
        config.store_cache_mib << 20,
        config.keys()?,
    )
    .with_context(|| format!("opening the store in {}", config.data_dir.display()))
}

/// An open durable store, and the data directory's lock when it is the embedded one (hold it
/// as long as the store is used).
pub struct OpenStore {
    pub store: Arc<dyn StateStore>,
    pub lock: Option<DataDirLock>,
}

/// Connects to a shared store, members' personal data sealed and opened with `keys`.
pub async fn open_shared_store(
    shared: &SharedStore,
    keys: KeyRing,
) -> anyhow::Result<Arc<dyn StateStore>> {
    let what = shared.describe();
    Ok(match shared {
        SharedStore::Postgres(pg) => {
            let store = loyalty_postgres::PostgresStore::connect(pg, keys)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "connecting to {what}: {} (has `loyalty migrate` been run?)",
                        scrub_password(&e.to_string(), &pg.url)
                    )
                })?;
            Arc::new(store)
        }
        SharedStore::Scylla(scylla) => {
            let store = loyalty_scylla::ScyllaStore::connect(scylla, keys)
                .await
                .with_context(|| format!("connecting to {what}"))?;
            Arc::new(store)
        }
    })
}

/// The durable store: the shared one when `postgres_url` or `scylla_nodes` is set, else the
/// embedded store in the data directory, locked for this process (one process owns it).
pub async fn open_store(config: &DevConfig) -> anyhow::Result<OpenStore> {
    if let Some(shared) = config.shared_store()? {
        return Ok(OpenStore {
            store: open_shared_store(&shared, config.keys()?).await?,
            lock: None,
        });
    }
    let lock = lock_data_dir(config)?;
    let store = open_embedded_store(config, &lock)?;
    Ok(OpenStore {
        store,
        lock: Some(lock),
    })
}

impl Application {
    /// `loyalty dev`: everything embedded, in one process.
    pub async fn build(config: DevConfig) -> anyhow::Result<Application> {
        config.validate()?;
        if let Some(shared) = config.shared_store()? {
            tracing::warn!(
                store = %shared.describe(),
                "loyalty dev runs on the embedded store only: the shared store setting is \
                 ignored (use `loyalty node`, `gateway` or `engine` to run on it)"
            );
        }
        // Before anything in the directory is opened: a second process stops here.
        let lock = lock_data_dir(&config)?;
        let log = EmbeddedLog::open(config.data_dir.join("log"))
            .with_context(|| format!("opening the event log in {}", config.data_dir.display()))?;
        let store = open_embedded_store(&config, &lock)?;
        let cache = Arc::new(EmbeddedCache::new(config.cache_capacity));
        let ports = instrumented(
            Ports {
                log: log.clone(),
                store: store.clone(),
                cache: cache.clone(),
            },
            Systems {
                log: "embedded",
                store: "redb",
                cache: None,
            },
        );
        let mut app = Self::build_with(
            config,
            ports,
            Some(Embedded { log, store, cache }),
            Mode::All,
        )
        .await?;
        app.lock = Some(lock);
        Ok(app)
    }

    /// `loyalty node`, `loyalty gateway` or `loyalty engine`: on Kafka and Redis, with a shared
    /// store (PostgreSQL or ScyllaDB) or, for `node` only, the embedded store.
    pub async fn build_distributed(config: DevConfig, mode: Mode) -> anyhow::Result<Application> {
        let command = match mode {
            Mode::All => "node",
            Mode::Gateway => "gateway",
            Mode::Engine => "engine",
        };
        config.refuse_dev_defaults(command)?;
        config.validate_node()?;
        let shared = config.shared_store()?;
        if shared.is_none() && mode != Mode::All {
            bail!(
                "`loyalty {command}` runs next to other processes, so it needs a store they \
                 share, and the embedded store belongs to one process: set LOYALTY_POSTGRES_URL \
                 (PostgreSQL, e.g. postgres://loyalty@127.0.0.1:5432/loyalty) or \
                 LOYALTY_SCYLLA_NODES (ScyllaDB), then run `loyalty migrate`. Without a shared \
                 store, run the gateway and the engine as one process: `loyalty node` (on Kafka \
                 and Redis) or `loyalty dev` (no server at all)"
            );
        }
        if config.demo && mode != Mode::Engine {
            tracing::warn!(
                keys = %config.data_dir.join(demo::KEYS_FILE).display(),
                "LOYALTY_DEMO is on: the demo franchise's keys are written in clear to this file \
                 if it is created"
            );
        }
        let (store, lock) = match &shared {
            Some(s) => (open_shared_store(s, config.keys()?).await?, None),
            None => {
                let OpenStore { store, lock } = open_store(&config).await?;
                (store, lock)
            }
        };
        let store_system = match &shared {
            Some(SharedStore::Postgres(_)) => "postgresql",
            Some(SharedStore::Scylla(_)) => "scylladb",
            None => "redb",
        };
        let ports = instrumented(
            Ports {
                log: kafka_log(&config)?,
                store,
                cache: redis_cache(&config)?,
            },
            Systems {
                log: "kafka",
                store: store_system,
                cache: Some("redis"),
            },
        );
        let mut app = Self::build_with(config, ports, None, mode).await?;
        app.lock = lock;
        Ok(app)
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
        let mut engine_config = EngineConfig {
            passivate_after: config.passivate_after(),
            checkpoint_every: config.checkpoint_every(),
            scheduler: config.scheduler(),
            topic: config.topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            workers: config.engine_workers,
            keys: config.keys()?,
            ..EngineConfig::default()
        };
        let partitions = log
            .ensure_topic(&engine_config.topic, config.partitions)
            .await?;
        // On a store no other process shares, this engine must own every partition: were
        // another one to join the group, members would be split across two stores.
        if config.shared_store()?.is_none() {
            engine_config.exclusive = Some(partitions);
        }
        engine_config.partitions = partitions;
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
        let health: Arc<EngineHealth> = Default::default();
        let (engine_failed_tx, engine_failed) = oneshot::channel::<String>();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let redis_url = config.redis_url.clone().unwrap_or_default();
        let prefix = loyalty_redis::RedisCacheOptions::default().prefix;

        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        // Campaign messages and one-time codes: the configured adapters, else (where the
        // adapters are embedded, `loyalty dev`) the in-memory ones.
        let senders = Senders::new(&config, embedded.is_some())?;
        engine_config.delivery = DeliveryConfig {
            senders: senders.campaign.clone(),
            public_url: config.public_base_url(listener.local_addr()?),
            ..config.delivery()
        };

        let engine = if mode == Mode::Gateway {
            None
        } else {
            let replies: Arc<dyn ReplySink> = if mode == Mode::Engine {
                Arc::new(
                    loyalty_redis::replies::RedisReplySink::connect(&redis_url, &prefix)
                        .await
                        .with_context(|| {
                            format!(
                                "connecting to Redis at {} for replies",
                                redact_url(&redis_url)
                            )
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
                health: Arc::clone(&health),
            };
            let rx = shutdown_rx.clone();
            Some(
                std::thread::Builder::new()
                    .name("engine".into())
                    .spawn(move || {
                        let system = actix_rt::System::new();
                        if let Err(e) = system.block_on(engine.run(rx)) {
                            tracing::error!(error = %e, "engine failed; stopping the process");
                            // A process that cannot apply commands must not accept them.
                            let _ = engine_failed_tx.send(e.to_string());
                        }
                    })
                    .context("starting the engine thread")?,
            )
        };

        // ---- POS topic ingestion (docs/pos-topic.md): wherever an engine runs. ----
        let mut pos_ingest = None;
        if let (true, Some(pos_dlq)) = (mode != Mode::Gateway, config.pos_dead_letter_topic()) {
            log.ensure_topic(&config.pos_topic, config.partitions)
                .await?;
            log.ensure_topic(&pos_dlq, 1).await?;
            let ingest = loyalty_core::pos_ingest::PosIngest::new(
                Arc::clone(&log),
                Arc::clone(&store),
                loyalty_core::pos_ingest::PosIngestConfig {
                    topic: config.pos_topic.clone(),
                    dead_letter_topic: pos_dlq,
                    command_topic: engine_config.topic.clone(),
                    max_record_bytes: config.max_body_bytes,
                    keys: engine_config.keys.clone(),
                    ..Default::default()
                },
            );
            let rx = shutdown_rx.clone();
            pos_ingest = Some(tokio::spawn(async move {
                if let Err(e) = ingest.run(rx).await {
                    tracing::error!(error = %e, "POS ingestion failed");
                }
            }));
        }
        // ---- end of POS topic ingestion ----

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

        let port = listener.local_addr()?.port();
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .with_context(|| format!("binding metrics listener {addr}"))?,
            ),
            None => None,
        };
        let metrics_access = loyalty_gateway::routes::ops::MetricsAccess {
            listener_port: match &metrics_listener {
                Some(l) => Some(l.local_addr()?.port()),
                None => None,
            },
            key: config.metrics_key.clone(),
        };
        let lookup_limits = web::Data::new(lookup_limits(&config, embedded.is_none())?);
        // The self-enrolment page's one-time codes: the SMS webhook when configured, the `dev`
        // notifier where the adapters are embedded; else none, and the page says codes cannot
        // be sent.
        let notifier = senders.dev_notifier.clone();
        let self_enrolment = web::Data::new(loyalty_gateway::pages::join::SelfEnrolment::new(
            senders.codes.clone(),
            Duration::from_secs(config.enrolment_code_ttl_secs),
            pending_codes(&config, embedded.is_none() || mode == Mode::Gateway)?,
        ));
        let body_limit = loyalty_gateway::json::BodyLimit {
            max_bytes: config.max_body_bytes,
            timeout: Duration::from_millis(config.body_timeout_ms),
        };
        let workers = match config.http_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let server = if mode == Mode::Engine {
            let ready = web::Data::new(EngineReadiness {
                ready: Arc::clone(&ready),
                health: Arc::clone(&health),
            });
            let server = HttpServer::new(move || {
                use loyalty_gateway::routing::endpoint;
                App::new()
                    .app_data(ready.clone())
                    .app_data(metrics_access.clone())
                    .wrap(from_fn(loyalty_gateway::routes::ops::metrics_listener))
                    .wrap(from_fn(loyalty_gateway::limit_request_head))
                    .wrap(from_fn(loyalty_gateway::observe))
                    .service(endpoint("/healthz").get(loyalty_gateway::routes::ops::healthz))
                    .service(endpoint("/readyz").get(engine_ready))
                    .service(endpoint("/metrics").get(loyalty_gateway::routes::ops::metrics))
                    .default_service(web::to(loyalty_gateway::not_found))
            })
            .workers(1)
            .listen(listener)?;
            match metrics_listener {
                Some(l) => server.listen(l)?.run(),
                None => server.run(),
            }
        } else {
            let gateway = Gateway::new(
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
                    public_url: config.public_base_url(listener.local_addr()?),
                    principal_ttl: Duration::from_millis(config.principal_ttl_ms),
                    wallet: config.wallet()?,
                    keys: engine_config.keys.clone(),
                    ..GatewayConfig::default()
                },
                ready,
            );
            let gateway = if redis_url.is_empty() {
                web::Data::new(gateway)
            } else {
                announce_key_changes(gateway, &redis_url, &prefix, shutdown_rx.clone()).await?
            };
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(gateway.clone())
                    .app_data(lookup_limits.clone())
                    .app_data(self_enrolment.clone())
                    .app_data(metrics_access.clone())
                    .wrap(from_fn(loyalty_gateway::routes::ops::metrics_listener))
                    .wrap(from_fn(loyalty_gateway::limit_request_head))
                    .wrap(from_fn(loyalty_gateway::observe))
                    .configure(|c| loyalty_gateway::configure(c, body_limit))
            })
            .workers(workers)
            .listen(listener)?;
            match metrics_listener {
                Some(l) => server.listen(l)?.run(),
                None => server.run(),
            }
        };
        Ok(Application {
            port,
            server,
            engine_failed: engine.as_ref().map(|_| engine_failed),
            health,
            pos_ingest,
            engine,
            shutdown,
            ports,
            embedded,
            notifier,
            messages: senders.dev_messages,
            lock: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server stops (SIGINT/SIGTERM), then stops the engine after its
    /// current batch is durable.
    ///
    /// If the engine fails (it can apply nothing more: a refused configuration, a broken log),
    /// the server is stopped too and this returns the engine's error, so the process exits
    /// non-zero instead of accepting commands it cannot apply.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let failed = async {
            match self.engine_failed.take() {
                Some(rx) => rx.await.ok(),
                None => std::future::pending().await,
            }
        };
        let (result, engine_error) = tokio::select! {
            r = &mut self.server => (r, None),
            Some(e) = failed => {
                // The stop command is sent now; the server future (polled below) carries it out.
                drop(handle.stop(true));
                ((&mut self.server).await, Some(e))
            }
        };
        let _ = self.shutdown.send(true);
        if let Some(h) = self.pos_ingest.take() {
            let _ = h.await;
        }
        if let Some(h) = self.engine.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        if let Some(e) = engine_error {
            anyhow::bail!("the engine stopped: {e}");
        }
        result.context("HTTP server")
    }

    /// The engine's partitions (owned, retrying, stopped), when this process runs one.
    pub fn health(&self) -> &Arc<EngineHealth> {
        &self.health
    }
}

/// What the engine-only process's `/readyz` reads.
struct EngineReadiness {
    ready: Arc<AtomicBool>,
    health: Arc<EngineHealth>,
}

/// `/readyz` of `loyalty engine`: 200 while it owns partitions and applies all of them; 503
/// (a problem naming why) before its first assignment, when a partition is stopped by a
/// permanent error, or when the engine failed. Partitions backing off after a transient error
/// are listed but keep it ready: they recover by themselves.
async fn engine_ready(r: web::Data<EngineReadiness>) -> HttpResponse {
    let report = r.health.report();
    let detail = if let Some(e) = &report.failed {
        Some(format!("the engine stopped: {e}"))
    } else if !report.stopped.is_empty() {
        Some(format!(
            "partitions stopped by a permanent error: {:?}",
            report.stopped
        ))
    } else if !r.ready.load(Ordering::Relaxed) {
        Some("the engine has no partition assigned yet".to_owned())
    } else {
        None
    };
    match detail {
        None => HttpResponse::Ok().json(serde_json::json!({
            "status": "ready",
            "partitions": report.owned,
            "retrying": report.retrying,
        })),
        Some(detail) => HttpResponse::ServiceUnavailable()
            .content_type("application/problem+json")
            .insert_header(("Retry-After", "5"))
            .json(serde_json::json!({
                "type": "urn:loyalty:problem:not-ready",
                "title": "Not ready",
                "status": 503,
                "detail": detail,
                "code": "not-ready",
                "partitions": report.owned,
                "retrying": report.retrying,
                "stopped": report.stopped,
            })),
    }
}
