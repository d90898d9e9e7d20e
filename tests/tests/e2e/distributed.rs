//! Distributed mode against real servers: a gateway process and an engine process (here two
//! applications in one test process, sharing the store as they would share ScyllaDB) talk only
//! through Kafka (tansu) and Redis: commands over the log, replies over Redis pub/sub, statuses in
//! the Redis hot cache. Without tansu or redis-server the test prints `SKIPPED: <reason>`.

use std::sync::Arc;
use std::time::Duration;

use loyalty::configuration::DevConfig;
use loyalty::startup::{Application, Mode, Ports};
use loyalty_embedded::EmbeddedStore;
use loyalty_kafka::{KafkaConfig, KafkaLog};
use loyalty_redis::{RedisCache, RedisCacheOptions};
use loyalty_testkit::redis::RedisServer;
use loyalty_testkit::tansu::TansuBroker;
use loyalty_tests::{demo_program, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request sent");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, key, Some(body))
            .await
    }
    async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, key, None).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_engine_talk_through_kafka_and_redis_and_survive_a_redis_flush_and_outage() {
    let missing = [
        TansuBroker::available().err(),
        RedisServer::available().err(),
    ];
    if let Some(reason) = missing.into_iter().flatten().next() {
        println!("SKIPPED: {reason}");
        return;
    }
    loyalty::telemetry::init_with_default("warn");
    let broker = TansuBroker::start().await.expect("tansu starts");
    let mut redis = RedisServer::start().expect("redis-server starts");
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        admin_key: ADMIN_KEY.into(),
        partitions: 4,
        http_workers: 2,
        demo: false,
        kafka_brokers: Some(broker.brokers()),
        redis_url: Some(redis.url()),
        ..DevConfig::default()
    };
    config.validate_node().unwrap();
    let ports = Ports {
        log: KafkaLog::new(KafkaConfig::new(broker.brokers())).unwrap(),
        store: EmbeddedStore::open(
            &dir.path().join("store"),
            loyalty_core::sealing::KeyRing::dev(),
        )
        .unwrap(),
        cache: Arc::new(
            RedisCache::connect_lazy(&redis.url(), RedisCacheOptions::default()).unwrap(),
        ),
    };
    let engine = Application::build_with(config.clone(), ports.clone(), None, Mode::Engine)
        .await
        .unwrap();
    let engine_url = format!("http://127.0.0.1:{}", engine.port());
    tokio::spawn(engine.run_until_stopped());
    let gateway = Application::build_with(config, ports.clone(), None, Mode::Gateway)
        .await
        .unwrap();
    let gw = Http {
        client: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{}", gateway.port()),
    };
    tokio::spawn(gateway.run_until_stopped());
    let engine_http = Http {
        client: reqwest::Client::new(),
        base: engine_url,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while engine_http.get("/readyz", "").await.0 != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine never got its partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (s, f) = gw
        .post(
            "/v1/franchises",
            ADMIN_KEY,
            json!({"name": "Split", "program": demo_program()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (fid, hq) = (
        f["id"].as_str().unwrap().to_owned(),
        f["hq_api_key"].as_str().unwrap().to_owned(),
    );
    let (_, st) = gw
        .post(
            &format!("/v1/franchises/{fid}/stores"),
            &hq,
            json!({"name": "S1"}),
        )
        .await;
    let key = st["api_key"].as_str().unwrap().to_owned();

    // The enrolment's reply travels engine → Redis pub/sub → this gateway.
    let (s, e) = gw
        .post(
            "/v1/members?wait_ms=5000",
            &key,
            json!({"phone": "+33611111111"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let m = e["member_id"].as_str().unwrap().to_owned();
    let (s, p) = gw
        .post(
            "/v1/purchases?wait_ms=5000",
            &key,
            json!({"event_id": "d-1", "member_id": m, "amount_cents": 2000, "currency": "EUR"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["member"]["points"], 70);
    let cache = RedisCache::connect(&redis.url(), RedisCacheOptions::default())
        .await
        .unwrap();
    let key_name = cache.status_key(&loyalty_domain::MemberId::parse(&m).unwrap());
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key_name)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists, "the engine wrote the status to Redis");

    // Flushed: reads answer from the store; the rebuild restores the cache.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let (s, status) = gw.get(&format!("/v1/members/{m}"), &key).await;
    assert_eq!((s, status["points"].clone()), (StatusCode::OK, json!(70)));
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let (s, r) = gw
        .post("/v1/admin/cache/rebuild", ADMIN_KEY, json!({}))
        .await;
    assert_eq!((s, r["rebuilt"].clone()), (StatusCode::OK, json!(1)));
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key_name)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists, "rebuilt");

    // Redis down: reads fall back to the store, purchases are still accepted and applied.
    redis.kill();
    let (s, status) = gw.get(&format!("/v1/members/{m}"), &key).await;
    assert_eq!((s, status["points"].clone()), (StatusCode::OK, json!(70)));
    let (s, _) = gw
        .post(
            "/v1/purchases",
            &key,
            json!({"event_id": "d-2", "member_id": m, "amount_cents": 3000, "currency": "EUR"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = ports
            .store
            .member(&loyalty_domain::MemberId::parse(&m).unwrap())
            .await
            .unwrap()
            .unwrap();
        if s.visits == 2 {
            assert_eq!(s.points, 100);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the purchase was never applied during the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.restart().unwrap();
    let (s, status) = gw.get(&format!("/v1/members/{m}"), &key).await;
    assert_eq!((s, status["points"].clone()), (StatusCode::OK, json!(100)));
}
