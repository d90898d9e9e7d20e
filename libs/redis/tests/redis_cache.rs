//! The Redis hot cache against a real `redis-server` (started by the test kit on a free
//! loopback port). Without a `redis-server` on the machine each test prints
//! `SKIPPED: <reason>` and passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loyalty_core::engine::shard::render_status;
use loyalty_core::model::Franchise;
use loyalty_core::ports::{CachedStatus, EffectBatch, HotCache, MemberWrite, StateStore};
use loyalty_core::programs::ProgramCache;
use loyalty_core::Error;
use loyalty_domain::{
    apply, Cents, EventContext, EventId, FranchiseId, MemberCommand, MemberId, MemberState, Phone,
    Profile, Program, StoreId, Timestamp,
};
use loyalty_embedded::{EmbeddedCache, EmbeddedStore};
use loyalty_redis::{rebuild, RedisCache, RedisCacheOptions};
use loyalty_testkit::redis::RedisServer;

/// A running server, or `None` (after printing why) when this machine has no redis-server.
fn server() -> Option<RedisServer> {
    match RedisServer::available() {
        Err(reason) => {
            println!("SKIPPED: {reason}");
            None
        }
        Ok(_) => Some(RedisServer::start().expect("starting redis-server")),
    }
}

fn options(prefix: &str) -> RedisCacheOptions {
    RedisCacheOptions {
        prefix: prefix.to_owned(),
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(200),
        ..RedisCacheOptions::default()
    }
}

async fn connect(server: &RedisServer, prefix: &str) -> RedisCache {
    RedisCache::connect(&server.url(), options(prefix))
        .await
        .expect("connecting to redis")
}

fn member(id: &str) -> MemberId {
    MemberId::parse(id).unwrap()
}

fn status(franchise: &str, version: u64) -> CachedStatus {
    CachedStatus {
        program_version: 1,
        franchise_id: FranchiseId::parse(franchise).unwrap(),
        version,
        json: Bytes::from(format!(
            "{{\"franchise\":\"{franchise}\",\"version\":{version}}}"
        )),
    }
}

async fn version_of(cache: &dyn HotCache, m: &MemberId) -> Option<u64> {
    cache.status(m).await.unwrap().map(|s| s.version)
}

/// A raw connection, to look at (or spoil) what the adapter stored.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_status_round_trips_with_its_key_layout() {
    let Some(server) = server() else { return };
    let cache = connect(&server, "t1:").await;
    let m = member("m-1");
    assert_eq!(cache.status(&m).await.unwrap(), None);

    let s = status("fr-a", 3);
    cache
        .put_statuses(vec![(m.clone(), s.clone())])
        .await
        .unwrap();
    assert_eq!(cache.status(&m).await.unwrap(), Some(s.clone()));

    // The documented layout: one string key per member, header then the JSON.
    assert_eq!(cache.status_key(&m), "t1:status:m-1");
    let stored: Vec<u8> = redis::cmd("GET")
        .arg("t1:status:m-1")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    let mut expected = b"v2 00000000000000000003 0000000001 fr-a\n".to_vec();
    expected.extend_from_slice(&s.json);
    assert_eq!(stored, expected);

    // No TTL by default.
    let ttl: i64 = redis::cmd("PTTL")
        .arg("t1:status:m-1")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert_eq!(ttl, -1);
    // An empty batch is a no-op, not an error.
    cache.put_statuses(Vec::new()).await.unwrap();
}

#[tokio::test]
async fn an_older_version_never_replaces_a_newer_one() {
    let Some(server) = server() else { return };
    let cache = connect(&server, "t2:").await;
    let m = member("m-1");

    cache
        .put_statuses(vec![(m.clone(), status("f", 5))])
        .await
        .unwrap();
    cache
        .put_statuses(vec![(m.clone(), status("f", 3))])
        .await
        .unwrap();
    assert_eq!(cache.status(&m).await.unwrap(), Some(status("f", 5)));
    // The same version is replaced (a re-render), a newer one too.
    assert_eq!(
        cache
            .put_statuses_counted(&[(m.clone(), status("f", 5))])
            .await
            .unwrap(),
        1
    );
    cache
        .put_statuses(vec![(m.clone(), status("f", 6))])
        .await
        .unwrap();
    assert_eq!(version_of(&cache, &m).await, Some(6));

    // Within one pipelined batch: applied in order, the newest wins either way.
    let written = cache
        .put_statuses_counted(&[(m.clone(), status("f", 8)), (m.clone(), status("f", 7))])
        .await
        .unwrap();
    assert_eq!(written, 1);
    assert_eq!(cache.status(&m).await.unwrap(), Some(status("f", 8)));
    cache
        .put_statuses(vec![
            (m.clone(), status("f", 9)),
            (m.clone(), status("f", 10)),
        ])
        .await
        .unwrap();
    assert_eq!(version_of(&cache, &m).await, Some(10));

    // Versions compare exactly beyond 2^53, where Lua numbers (doubles) could not tell
    // them apart.
    let big = 1u64 << 53;
    cache
        .put_statuses(vec![(m.clone(), status("f", big + 1))])
        .await
        .unwrap();
    cache
        .put_statuses(vec![(m.clone(), status("f", big))])
        .await
        .unwrap();
    assert_eq!(version_of(&cache, &m).await, Some(big + 1));
    cache
        .put_statuses(vec![(m.clone(), status("f", u64::MAX))])
        .await
        .unwrap();
    cache
        .put_statuses(vec![(m.clone(), status("f", big + 2))])
        .await
        .unwrap();
    assert_eq!(version_of(&cache, &m).await, Some(u64::MAX));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_leave_the_newest_version() {
    let Some(server) = server() else { return };
    const WRITERS: u64 = 8;
    const VERSIONS: u64 = 60;
    let members: Vec<MemberId> = (0..20).map(|i| member(&format!("m-{i}"))).collect();

    // Writers on their own connections, each sending every version of every member in its
    // own order (a permutation of 1..=VERSIONS), in batches of varying size.
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let cache = connect(&server, "t3:").await;
        let members = members.clone();
        tasks.push(tokio::spawn(async move {
            let stride = [7u64, 11, 13, 17, 19, 23, 29, 31][w as usize];
            let mut batch = Vec::new();
            for i in 0..VERSIONS {
                let v = (i * stride + w) % VERSIONS + 1;
                for m in &members {
                    batch.push((m.clone(), status("f", v)));
                }
                if batch.len() >= (w as usize + 1) * 15 {
                    cache
                        .put_statuses(std::mem::take(&mut batch))
                        .await
                        .unwrap();
                }
            }
            cache.put_statuses(batch).await.unwrap();
        }));
    }
    // Meanwhile a reader never sees a member's version go back.
    let reader = {
        let cache = connect(&server, "t3:").await;
        let m = members[0].clone();
        tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..300 {
                if let Some(v) = version_of(&cache, &m).await {
                    assert!(v >= last, "version went back from {last} to {v}");
                    last = v;
                }
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    reader.await.unwrap();

    let cache = connect(&server, "t3:").await;
    for m in &members {
        assert_eq!(cache.status(m).await.unwrap(), Some(status("f", VERSIONS)));
    }
}

#[tokio::test]
async fn tenant_data_survives_and_bad_values_are_reported() {
    let Some(server) = server() else { return };
    let cache = connect(&server, "t4:").await;
    let (a, b) = (member("m-a"), member("m-b"));
    let sa = status("franchise-a", 1);
    let sb = status("franchise_b.eu:2", 2);
    cache
        .put_statuses(vec![(a.clone(), sa.clone()), (b.clone(), sb.clone())])
        .await
        .unwrap();
    assert_eq!(
        cache.status(&a).await.unwrap().unwrap().franchise_id,
        sa.franchise_id
    );
    assert_eq!(cache.status(&b).await.unwrap(), Some(sb.clone()));

    // A value not written by the adapter is reported, not served...
    let _: () = redis::cmd("SET")
        .arg(cache.status_key(&a))
        .arg("{\"points\":1000000}")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert!(matches!(cache.status(&a).await, Err(Error::Corrupt(_))));
    // ...and the next write replaces it.
    cache
        .put_statuses(vec![(a.clone(), sa.clone())])
        .await
        .unwrap();
    assert_eq!(cache.status(&a).await.unwrap(), Some(sa));
}

#[tokio::test]
async fn a_ttl_applies_to_every_write() {
    let Some(server) = server() else { return };
    let cache = RedisCache::connect(
        &server.url(),
        RedisCacheOptions {
            ttl: Some(Duration::from_secs(60)),
            ..options("t5:")
        },
    )
    .await
    .unwrap();
    let m = member("m-1");
    cache
        .put_statuses(vec![(m.clone(), status("f", 1))])
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(cache.status_key(&m))
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "ttl {ttl}");
}

const PROFILE_PHONE: &str = "+33612345678";

/// Enrols `m` in `franchise` and applies `purchases` purchases of 12.50, committing each
/// change through the store as the engine does; returns the final state.
async fn enrol(
    store: &EmbeddedStore,
    franchise: &FranchiseId,
    program: &Program,
    m: &MemberId,
    purchases: u32,
) -> MemberState {
    let store_id = StoreId::parse("store-1").unwrap();
    let mut state: Option<MemberState> = None;
    let mut commands = vec![MemberCommand::Enrol {
        profile: Profile {
            phone: Phone::parse(PROFILE_PHONE).unwrap(),
            name: None,
            birthday: None,
            consent: Default::default(),
            email: None,
        },
    }];
    for _ in 0..purchases {
        commands.push(MemberCommand::Purchase {
            amount: Cents::new(1250).unwrap(),
            currency: program.currency.clone(),
            items: Vec::new(),
        });
    }
    for (i, cmd) in commands.iter().enumerate() {
        let event_id = EventId::parse(&format!("{m}-e{i}")).unwrap();
        let ctx = EventContext {
            event_id: &event_id,
            store_id: &store_id,
            at: Timestamp(1_760_000_000_000 + i as i64 * 60_000),
            program,
            program_version: 1,
        };
        let expected_version = state.as_ref().map_or(0, |s| s.version);
        let applied = apply(&mut state, m, franchise, cmd, &ctx).unwrap();
        let s = state.clone().unwrap();
        store
            .commit(EffectBatch {
                members: vec![MemberWrite {
                    state: s,
                    expected_version,
                    due: None,
                }],
                ledger: applied
                    .entries
                    .into_iter()
                    .map(|e| (m.clone(), e))
                    .collect(),
                processed: Vec::new(),
                ..EffectBatch::default()
            })
            .await
            .unwrap();
    }
    state.unwrap()
}

#[tokio::test]
async fn clear_empties_the_cache_and_rebuild_restores_every_status() {
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), loyalty_core::sealing::KeyRing::dev()).unwrap();

    // Two franchises; the second is on program version 2.
    let mut expected = Vec::new();
    for (f, version) in [("fr-a", 1u32), ("fr-b", 2)] {
        let id = FranchiseId::parse(f).unwrap();
        let program = Program::demo();
        store
            .put_franchise(&Franchise {
                id: id.clone(),
                name: f.to_owned(),
                secret: "00".repeat(32),
                program_version: version,
                created_at: Timestamp(1_700_000_000_000),
            })
            .await
            .unwrap();
        store.put_program(&id, version, &program).await.unwrap();
        for i in 0..12u32 {
            let m = member(&format!("{f}-m{i:02}"));
            let state = enrol(&store, &id, &program, &m, i % 4).await;
            expected.push((m, render_status(&state, &program, version)));
        }
    }
    // A member whose franchise is unknown cannot be rendered: skipped, not counted.
    enrol(
        &store,
        &FranchiseId::parse("ghost").unwrap(),
        &Program::demo(),
        &member("ghost-m"),
        0,
    )
    .await;

    let cache = connect(&server, "t6:").await;
    let other = connect(&server, "t6-other:").await;
    other
        .put_statuses(vec![(member("x"), status("f", 1))])
        .await
        .unwrap();

    let programs = ProgramCache::new(store.clone() as Arc<dyn StateStore>);
    // Page size 5 does not divide the 25 members: the last page is partial.
    let written = rebuild(store.as_ref(), &programs, &cache, 5).await.unwrap();
    assert_eq!(written, expected.len() as u64);
    for (m, s) in &expected {
        assert_eq!(cache.status(m).await.unwrap().as_ref(), Some(s), "{m}");
    }
    assert_eq!(cache.status(&member("ghost-m")).await.unwrap(), None);

    // The JSON served is the member's status as the engine renders it.
    let json: serde_json::Value =
        serde_json::from_slice(&cache.status(&expected[3].0).await.unwrap().unwrap().json).unwrap();
    assert_eq!(json["points"], 50 + 3 * 12);

    // clear() deletes this prefix's keys only.
    assert_eq!(cache.clear().await.unwrap(), expected.len() as u64);
    for (m, _) in &expected {
        assert_eq!(cache.status(m).await.unwrap(), None);
    }
    assert_eq!(version_of(&other, &member("x")).await, Some(1));

    // A newer status already in the cache is kept by a rebuild.
    let (first, _) = &expected[0];
    cache
        .put_statuses(vec![(first.clone(), status("fr-a", 1000))])
        .await
        .unwrap();
    let written = rebuild(store.as_ref(), &programs, &cache, 7).await.unwrap();
    assert_eq!(written, expected.len() as u64);
    assert_eq!(version_of(&cache, first).await, Some(1000));
    for (m, s) in &expected[1..] {
        assert_eq!(cache.status(m).await.unwrap().as_ref(), Some(s), "{m}");
    }

    // The same function fills the embedded cache.
    let embedded = EmbeddedCache::new(100);
    let written = rebuild(store.as_ref(), &programs, &embedded, 1000)
        .await
        .unwrap();
    assert_eq!(written, expected.len() as u64);
    for (m, s) in &expected {
        assert_eq!(embedded.status(m).await.unwrap().as_ref(), Some(s));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_fast_and_the_connection_comes_back() {
    let Some(mut server) = server() else { return };
    let cache = connect(&server, "t7:").await;
    let m = member("m-1");
    cache
        .put_statuses(vec![(m.clone(), status("f", 1))])
        .await
        .unwrap();
    assert_eq!(version_of(&cache, &m).await, Some(1));

    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let read = cache.status(&m).await;
        assert!(matches!(read, Err(Error::Unavailable(_))), "{read:?}");
        let write = cache.put_statuses(vec![(m.clone(), status("f", 2))]).await;
        assert!(matches!(write, Err(Error::Unavailable(_))), "{write:?}");
        println!("outage: read + write failed in {:?}", started.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "an outage took {:?} to report",
            started.elapsed()
        );
    }
    // Connecting to a server that is down fails too, and quickly.
    let started = Instant::now();
    let connect = RedisCache::connect(&server.url(), options("t7:")).await;
    assert!(matches!(connect, Err(Error::Unavailable(_))), "{connect:?}");
    println!("outage: connect failed in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3));

    // A new, empty server on the same port: the same cache reconnects by itself.
    server.restart().unwrap();
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.status(&m).await {
            Ok(found) => {
                println!("restart: reconnected in {:?}", restarted.elapsed());
                assert_eq!(found, None, "the restarted server is empty");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "no reconnection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    cache
        .put_statuses(vec![(m.clone(), status("f", 3))])
        .await
        .unwrap();
    assert_eq!(version_of(&cache, &m).await, Some(3));
}

/// Two gateways (two limiters, two connections) on one Redis share one budget per bucket: a
/// key spread over both gets its burst once, not once per gateway; a refusal names the wait.
#[tokio::test]
async fn rate_limit_buckets_are_shared_by_every_gateway() {
    use loyalty_core::rate_limit::{RateLimit, RateLimiter};
    use loyalty_redis::RedisRateLimiter;
    let Some(server) = server() else { return };
    let a = RedisRateLimiter::new(&connect(&server, "rl-test:").await);
    let b = RedisRateLimiter::new(&connect(&server, "rl-test:").await);
    let limit = RateLimit {
        per_minute: 60,
        burst: 5,
    };
    let mut allowed = 0;
    let mut refused = Vec::new();
    for i in 0..20 {
        let limiter: &dyn RateLimiter = if i % 2 == 0 { &a } else { &b };
        let d = limiter.take("lookup:key:k1", &limit).await.expect("take");
        match d.retry_after {
            None => allowed += 1,
            Some(w) => refused.push(w),
        }
    }
    // One token a second: at most one more may have come back while the loop ran.
    assert!((5..=6).contains(&allowed), "allowed {allowed} of 20");
    assert!(refused
        .iter()
        .all(|w| *w > Duration::ZERO && *w <= Duration::from_secs(1)));
    // Another bucket is untouched.
    assert!(a
        .take("lookup:key:k2", &limit)
        .await
        .expect("take")
        .allowed());
    // The buckets expire once they would be full again (no key left behind for ever).
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("rl-test:rl:lookup:key:k1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 6_000, "ttl {ttl} ms");
}

/// With Redis down the limiter says so (an error, which the gateway turns into letting the
/// request through): it never blocks on a dead server.
#[tokio::test]
async fn rate_limit_on_a_dead_redis_is_an_error_not_a_hang() {
    use loyalty_core::rate_limit::{RateLimit, RateLimiter};
    use loyalty_redis::RedisRateLimiter;
    let Some(mut server) = server() else { return };
    let cache = connect(&server, "rl-dead:").await;
    let limiter = RedisRateLimiter::new(&cache);
    server.stop();
    let start = Instant::now();
    let r = limiter
        .take(
            "lookup:key:k",
            &RateLimit {
                per_minute: 60,
                burst: 5,
            },
        )
        .await;
    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}
