//! The hot-cache adapter's own rate on a Redis server, to set next to `redis-benchmark`:
//! `concurrency` tasks (like redis-benchmark's clients) drive `loyalty_redis::RedisCache` for
//! `seconds` per phase with realistic member statuses (about 400 bytes of JSON):
//! 1. `put_statuses` of one status per call (the compare-and-set script; vs SET);
//! 2. `status` gets of those members (vs GET);
//! 3. `put_statuses` in batches of 32 (how the engine writes), in statuses per second.
//!
//! Usage: `cache-bench <redis-url> [seconds=5] [concurrency=50] [members=10000]`.
//! Prints one `cache-bench <phase>: <n> ops/s` line per phase.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loyalty_core::ports::{CachedStatus, HotCache};
use loyalty_domain::{FranchiseId, MemberId};
use loyalty_redis::{RedisCache, RedisCacheOptions};

fn status_json(i: usize) -> Bytes {
    // The shape of a member status served at the till, padded to ~400 bytes.
    Bytes::from(format!(
        concat!(
            r#"{{"member_id":"m-{:016x}bench","franchise_id":"f-bench-franchise","points":{},"#,
            r#""tier":{{"id":"habitue","name":"Habitué du Moulin","rank":1}},"#,
            r#""next_tier":{{"id":"maitre","name":"Maître Torréfacteur","missing_points":{}}},"#,
            r#""stamps":{{"card":"coffee","count":{},"of":10}},"visits":{},"spend_cents":{},"#,
            r#""next_reward":{{"id":"pastry","name":"Free pastry","cost":100,"missing":{}}},"#,
            r#""vouchers":[],"enrolled_at":"2026-11-25T12:00:00Z","version":{}}}"#
        ),
        i,
        i % 1000,
        250 - (i % 250),
        i % 10,
        i % 50,
        (i % 50) * 1234,
        100 - (i % 100),
        i
    ))
}

async fn phase<F, Fut>(name: &str, seconds: u64, concurrency: usize, per_call: u64, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = loyalty_core::Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let (stop, done, errors, op) = (stop.clone(), done.clone(), errors.clone(), op.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match op(c, n).await {
                        Ok(()) => done.fetch_add(per_call, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "cache-bench {name}: {rate:.0} ops/s ({concurrency} tasks, {} errors)",
        errors.load(Ordering::Relaxed)
    );
    rate
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: cache-bench <redis-url> [seconds] [concurrency] [members]")
    })?;
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let members: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let cache = RedisCache::connect(
        &url,
        RedisCacheOptions {
            prefix: "cache-bench:".into(),
            timeout: Duration::from_secs(5),
            ..RedisCacheOptions::default()
        },
    )
    .await?;
    cache.clear().await?;
    let franchise = FranchiseId::parse("f-bench-franchise")?;
    let ids: Arc<Vec<MemberId>> = Arc::new(
        (0..members)
            .map(|i| MemberId::parse(&format!("m-{i:016x}bench")))
            .collect::<Result<_, _>>()?,
    );
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..members).map(status_json).collect());
    let avg = bodies.iter().map(Bytes::len).sum::<usize>() / members;
    println!("cache-bench: {members} members, status JSON of {avg} bytes on average, {url}");
    let version = Arc::new(AtomicU64::new(1));

    let (c, i, b, f, v) = (
        cache.clone(),
        ids.clone(),
        bodies.clone(),
        franchise.clone(),
        version.clone(),
    );
    phase(
        "put_statuses (1 per call)",
        seconds,
        concurrency,
        1,
        move |task, n| {
            let (c, i, b, f, v) = (c.clone(), i.clone(), b.clone(), f.clone(), v.clone());
            async move {
                let m = (task * 7919 + n as usize * 31) % i.len();
                let status = CachedStatus {
                    program_version: 1,
                    franchise_id: f,
                    version: v.fetch_add(1, Ordering::Relaxed),
                    json: b[m].clone(),
                };
                c.put_statuses(vec![(i[m].clone(), status)]).await
            }
        },
    )
    .await;

    let (c, i) = (cache.clone(), ids.clone());
    phase("status get", seconds, concurrency, 1, move |task, n| {
        let (c, i) = (c.clone(), i.clone());
        async move {
            let m = (task * 7919 + n as usize * 31) % i.len();
            c.status(&i[m]).await.map(|s| {
                debug_assert!(s.is_some());
            })
        }
    })
    .await;

    let (c, i, b, f, v) = (
        cache.clone(),
        ids.clone(),
        bodies.clone(),
        franchise.clone(),
        version.clone(),
    );
    phase(
        "put_statuses (batches of 32, statuses/s)",
        seconds,
        concurrency,
        32,
        move |task, n| {
            let (c, i, b, f, v) = (c.clone(), i.clone(), b.clone(), f.clone(), v.clone());
            async move {
                let batch = (0..32)
                    .map(|k| {
                        let m = (task * 7919 + n as usize * 31 * 32 + k) % i.len();
                        let status = CachedStatus {
                            program_version: 1,
                            franchise_id: f.clone(),
                            version: v.fetch_add(1, Ordering::Relaxed),
                            json: b[m].clone(),
                        };
                        (i[m].clone(), status)
                    })
                    .collect();
                c.put_statuses(batch).await
            }
        },
    )
    .await;
    cache.clear().await?;
    Ok(())
}
