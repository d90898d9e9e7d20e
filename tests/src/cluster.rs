//! Engine nodes in one test process, sharing the log, the store and the cache as separate
//! processes would share Kafka, ScyllaDB and Redis. A node can be stopped gracefully or killed:
//! a kill drops the node's work wherever it is (mid-batch, before its commit), leaving the group
//! without any of the shutdown path, which is what `kill -9` does to a process.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use loyalty_core::engine::health::EngineHealth;
use loyalty_core::engine::{Engine, EngineConfig};
use loyalty_core::ports::{EventLog, HotCache, StateStore};
use loyalty_core::programs::ProgramCache;
use loyalty_core::replies::{ReplySink, ReplyWaiters};
use tokio::sync::{oneshot, watch};

/// One engine node on its own thread and actix system.
pub struct EngineNode {
    pub name: String,
    shutdown: watch::Sender<bool>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub ready: Arc<AtomicBool>,
    /// The node's partitions: owned, retrying, stopped.
    pub health: Arc<EngineHealth>,
}

impl EngineNode {
    pub fn start(
        name: &str,
        log: Arc<dyn EventLog>,
        store: Arc<dyn StateStore>,
        cache: Arc<dyn HotCache>,
        config: EngineConfig,
    ) -> EngineNode {
        Self::start_with_replies(
            name,
            log,
            store,
            cache,
            config,
            ReplyWaiters::new() as Arc<dyn ReplySink>,
        )
    }

    /// A node whose replies (what a gateway would tell its client) go to `replies`.
    pub fn start_with_replies(
        name: &str,
        log: Arc<dyn EventLog>,
        store: Arc<dyn StateStore>,
        cache: Arc<dyn HotCache>,
        config: EngineConfig,
        replies: Arc<dyn ReplySink>,
    ) -> EngineNode {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let health: Arc<EngineHealth> = Default::default();
        let (kill, kill_rx) = oneshot::channel::<()>();
        let ready = Arc::new(AtomicBool::new(false));
        let engine = Engine {
            log,
            programs: Arc::new(ProgramCache::new(Arc::clone(&store))),
            store,
            cache,
            replies,
            config,
            ready: Arc::clone(&ready),
            health: Arc::clone(&health),
        };
        let thread = std::thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    tokio::select! {
                        r = engine.run(shutdown_rx) => {
                            if let Err(e) = r {
                                eprintln!("engine failed: {e}");
                            }
                        }
                        _ = kill_rx => {}
                    }
                });
            })
            .expect("engine thread");
        EngineNode {
            name: name.to_owned(),
            shutdown,
            kill: Some(kill),
            thread: Some(thread),
            ready,
            health,
        }
    }

    /// Drops the node's work wherever it is: no drain, no commit, no goodbye.
    pub fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Finishes the current batch, commits, leaves the group.
    pub fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EngineNode {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// A world of engine nodes: the shared log, store and cache, a franchise, and helpers to send
// commands straight to the log (what a gateway does after validation) and check the outcome.

use std::time::Duration;

use futures::future::join_all;
use loyalty_core::command::{CommandEnvelope, PosCommand};
use loyalty_core::identity::member_id;
use loyalty_core::model::Franchise;
use loyalty_core::provisioning::{create_franchise, create_store, now};
use loyalty_domain::{Cents, Currency, EventId, MemberId, Phone, Profile, Program, StoreId};
use loyalty_embedded::log::EmbeddedLog;
use loyalty_embedded::{EmbeddedCache, EmbeddedStore};
use loyalty_kafka::{KafkaConfig, KafkaLog};
use loyalty_redis::{RedisCache, RedisCacheOptions};
use loyalty_testkit::redis::RedisServer;
use loyalty_testkit::tansu::TansuBroker;

/// Partitions of the command topic in these worlds.
pub const PARTITIONS: u32 = 12;

/// Where the shared log and cache live.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// The embedded log and in-process cache.
    Embedded,
    /// A real Kafka-compatible broker (tansu) and a real redis-server.
    KafkaRedis,
}

pub struct World {
    _dir: tempfile::TempDir,
    _servers: Option<(TansuBroker, RedisServer)>,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<EmbeddedStore>,
    pub cache: Arc<dyn HotCache>,
    pub franchise: Franchise,
    pub store_id: StoreId,
}

impl World {
    /// `None` (with the reason printed) when the backend's servers are not on this machine.
    pub async fn new(backend: Backend) -> Option<World> {
        World::with_program(backend, &Program::demo()).await
    }

    /// A world whose franchise runs `program`.
    pub async fn with_program(backend: Backend, program: &Program) -> Option<World> {
        let dir = tempfile::tempdir().unwrap();
        let (log, cache, servers): (Arc<dyn EventLog>, Arc<dyn HotCache>, _) = match backend {
            Backend::Embedded => (
                EmbeddedLog::open(dir.path().join("log")).unwrap(),
                Arc::new(EmbeddedCache::new(100_000)),
                None,
            ),
            Backend::KafkaRedis => {
                if let Err(reason) = TansuBroker::available() {
                    println!("SKIPPED: {reason}");
                    return None;
                }
                if let Err(reason) = RedisServer::available() {
                    println!("SKIPPED: {reason}");
                    return None;
                }
                let broker = TansuBroker::start().await.expect("tansu starts");
                let redis = RedisServer::start().expect("redis-server starts");
                let mut kafka = KafkaConfig::new(broker.brokers());
                kafka.session_timeout = Duration::from_secs(6);
                let log = KafkaLog::new(kafka).expect("kafka log");
                let cache = RedisCache::connect(&redis.url(), RedisCacheOptions::default())
                    .await
                    .expect("redis cache");
                (
                    log as Arc<dyn EventLog>,
                    Arc::new(cache) as Arc<dyn HotCache>,
                    Some((broker, redis)),
                )
            }
        };
        log.ensure_topic("pos-commands", PARTITIONS).await.unwrap();
        log.ensure_topic("pos-commands-dlq", 1).await.unwrap();
        let store = EmbeddedStore::open(
            &dir.path().join("store"),
            loyalty_core::sealing::KeyRing::dev(),
        )
        .unwrap();
        let (franchise, _) = create_franchise(store.as_ref(), "Sharded", program)
            .await
            .unwrap();
        let (s, _) = create_store(store.as_ref(), &franchise.id, "Store")
            .await
            .unwrap();
        Some(World {
            _dir: dir,
            _servers: servers,
            log,
            store,
            cache,
            franchise,
            store_id: s.id,
        })
    }

    /// The Kafka bootstrap servers, in a Kafka world.
    pub fn brokers(&self) -> Option<String> {
        self._servers.as_ref().map(|(b, _)| b.brokers())
    }

    /// A node with small batches, so that rebalances and kills land mid-stream.
    pub fn node(&self, name: &str) -> EngineNode {
        self.node_with(
            name,
            EngineConfig {
                max_batch: 256,
                ..EngineConfig::default()
            },
        )
    }

    pub fn node_with(&self, name: &str, config: EngineConfig) -> EngineNode {
        EngineNode::start(
            name,
            Arc::clone(&self.log),
            self.store.clone() as Arc<dyn StateStore>,
            Arc::clone(&self.cache),
            config,
        )
    }

    pub fn member(&self, i: usize) -> MemberId {
        member_id(&self.franchise.secret, &self.phone(i))
    }

    pub fn phone(&self, i: usize) -> Phone {
        Phone::parse(&format!("+3362{i:07}")).unwrap()
    }

    pub fn envelope(&self, event_id: String, command: PosCommand) -> CommandEnvelope {
        CommandEnvelope {
            franchise_id: self.franchise.id.clone(),
            store_id: self.store_id.clone(),
            event_id: EventId::parse(&event_id).unwrap(),
            program_version: 1,
            occurred_at: None,
            received_at: now(),
            request_id: None,
            reply_to: None,
            command,
        }
    }

    pub async fn send(&self, env: CommandEnvelope) {
        self.log
            .append(
                "pos-commands",
                &env.key(),
                env.encode(&loyalty_core::sealing::KeyRing::dev()).unwrap(),
                Vec::new(),
            )
            .await
            .unwrap();
    }

    pub async fn enrol(&self, members: usize) {
        for chunk in (0..members).collect::<Vec<_>>().chunks(100) {
            join_all(chunk.iter().map(|&i| {
                self.send(self.envelope(
                    format!("enrol.{}", self.member(i)),
                    PosCommand::Enrol {
                        member_id: self.member(i),
                        profile: Profile {
                            phone: self.phone(i),
                            name: None,
                            birthday: None,
                            consent: Default::default(),
                            email: None,
                        },
                    },
                ))
            }))
            .await;
        }
    }

    /// Sends purchase `n` of member `i` (amount derived from both); returns the cents.
    pub async fn purchase(&self, i: usize, n: usize) -> i64 {
        let cents = 100 + ((i * 37 + n * 11) % 900) as i64;
        self.send(self.envelope(
            format!("p-{i}-{n}"),
            PosCommand::Purchase {
                member_id: Some(self.member(i)),
                amount_cents: Cents::new(cents).unwrap(),
                currency: Currency::parse("EUR").unwrap(),
                items: Vec::new(),
            },
        ))
        .await;
        cents
    }

    /// Waits (bounded) until members `0..members` are enrolled in the store.
    pub async fn wait_enrolled(&self, members: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        for i in 0..members {
            while self.store.member(&self.member(i)).await.unwrap().is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "member {i} never enrolled"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Waits (bounded) until every member has `visits[i]` visits in the store.
    pub async fn wait_applied(&self, visits: &[u64]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let mut behind = 0;
            for (i, v) in visits.iter().enumerate() {
                let s = self.store.member(&self.member(i)).await.unwrap();
                if s.map_or(0, |s| s.visits) < *v {
                    behind += 1;
                }
            }
            if behind == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{behind} members never caught up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every member's balance is exactly its expected sum, its ledger names each event once,
    /// and the hot cache agrees with the store.
    pub async fn check(&self, spend: &[i64], visits: &[u64]) {
        for i in 0..spend.len() {
            let m = self.member(i);
            let s = self.store.member(&m).await.unwrap().expect("member exists");
            assert_eq!(s.visits, visits[i], "member {i} visits");
            assert_eq!(s.spend_cents as i64, spend[i], "member {i} spend");
            let ledger = self.store.ledger(&m, None, 10_000).await.unwrap();
            let points: i64 = ledger.iter().map(|e| e.points).sum();
            assert_eq!(
                points, s.points as i64,
                "member {i}: balance is not the sum of its ledger"
            );
            // A tier move (0 points) names the purchase that caused it: not a second entry of it.
            let mut ids: Vec<&str> = ledger
                .iter()
                .filter(|e| e.kind != loyalty_domain::LedgerKind::Tier)
                .map(|e| e.event_id.as_str())
                .collect();
            ids.sort();
            let n = ids.len();
            ids.dedup();
            assert_eq!(ids.len(), n, "member {i} has an event twice in its ledger");
            assert_eq!(
                n as u64,
                visits[i] + 1,
                "member {i}: one entry per purchase and the bonus"
            );
            // The engine writes the cache right after the store: allow it a moment.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let cached = loop {
                match self.cache.status(&m).await.unwrap() {
                    Some(c) if c.version >= s.version => break c,
                    _ if tokio::time::Instant::now() > deadline => {
                        panic!("member {i}: cache never caught up")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            assert_eq!(cached.version, s.version, "member {i}: cache version");
            let json: serde_json::Value = serde_json::from_slice(&cached.json).unwrap();
            assert_eq!(json["points"], s.points, "member {i}: cache points");
        }
    }
}
