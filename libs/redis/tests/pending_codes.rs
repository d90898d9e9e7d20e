//! The pending codes contract (`loyalty_testkit::pending_codes_contract`) against Redis, on a
//! `redis-server` of the testkit; and two adapters (two gateways) on one server see the same
//! codes. Without `redis-server` the tests print `SKIPPED: <reason>` and pass.

use std::sync::Arc;
use std::time::Duration;

use loyalty_core::pending_codes::{PendingCode, PendingCodes, Put, Verdict};
use loyalty_core::Error;
use loyalty_redis::{RedisCache, RedisCacheOptions, RedisPendingCodes};
use loyalty_testkit::pending_codes_contract;
use loyalty_testkit::redis::RedisServer;

fn server() -> Option<RedisServer> {
    match RedisServer::available() {
        Err(reason) => {
            println!("SKIPPED: {reason}");
            None
        }
        Ok(_) => Some(RedisServer::start().expect("starting redis-server")),
    }
}

async fn codes(url: &str, capacity: u64) -> RedisPendingCodes {
    let options = RedisCacheOptions {
        prefix: "t:".into(),
        ..RedisCacheOptions::default()
    };
    let cache = RedisCache::connect(url, options).await.expect("connects");
    RedisPendingCodes::new(&cache, capacity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pending_codes_meet_the_contract() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let codes = Arc::new(codes(&server.url(), 10).await);
    pending_codes_contract::run_all(codes as Arc<dyn PendingCodes>, 10, "red").await
}

/// A code put through one gateway's adapter is confirmed through another's; the stored entry
/// holds the code's hash, not the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_put_by_one_gateway_is_confirmed_by_another() -> anyhow::Result<()> {
    let Some(server) = server() else {
        return Ok(());
    };
    let (a, b) = (
        codes(&server.url(), 100).await,
        codes(&server.url(), 100).await,
    );
    let code = PendingCode {
        scope: "f/s".into(),
        code_hash: [7; 32],
        payload: b"profile".to_vec(),
        ttl: Duration::from_secs(60),
        max_attempts: 2,
    };
    assert_eq!(a.put("challenge1", code).await?, Put::Stored);
    let mut conn = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;
    let stored: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg("t:{otp}:c:challenge1")
        .query_async(&mut conn)
        .await?;
    let h = stored.iter().find(|(f, _)| f == "h").expect("a hash field");
    assert_eq!(h.1, "07".repeat(32).into_bytes());
    assert!(matches!(
        b.verify("challenge1", "f/s", &[1; 32]).await?,
        Verdict::Wrong { left: 1, .. }
    ));
    assert_eq!(
        a.verify("challenge1", "f/s", &[7; 32]).await?,
        Verdict::Right {
            payload: b"profile".to_vec()
        }
    );
    assert_eq!(
        b.verify("challenge1", "f/s", &[7; 32]).await?,
        Verdict::Gone
    );
    Ok(())
}

/// With Redis down the adapter answers `Unavailable` (the page then sends no code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable() -> anyhow::Result<()> {
    let Some(mut server) = server() else {
        return Ok(());
    };
    let codes = codes(&server.url(), 10).await;
    server.stop();
    let code = PendingCode {
        scope: "f/s".into(),
        code_hash: [7; 32],
        payload: vec![],
        ttl: Duration::from_secs(60),
        max_attempts: 2,
    };
    let put = codes.put("k", code).await;
    assert!(matches!(put, Err(Error::Unavailable(_))), "{put:?}");
    let v = codes.verify("k", "f/s", &[7; 32]).await;
    assert!(matches!(v, Err(Error::Unavailable(_))), "{v:?}");
    Ok(())
}
