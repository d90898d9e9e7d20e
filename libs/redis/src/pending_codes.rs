//! The Redis [`PendingCodes`]: one-time codes shared by every gateway, so that a code sent by
//! one gateway is confirmed through any other (no session affinity needed).
//!
//! # Key layout
//!
//! - `{prefix}{otp}:c:{key}`: a hash per pending code, fields `s` (scope), `h` (the code's
//!   keyed hash, hex: never the code), `u` (tries used), `m` (tries allowed), `p` (the
//!   caller's payload), expiring with the code (`PEXPIRE`).
//! - `{prefix}{otp}:index`: a sorted set of the pending keys by expiry (ms, Redis's clock), that
//!   bounds how many codes are held: a put drops the expired members, then refuses
//!   ([`Put::Full`]) past the capacity. It expires once its last code has.
//!
//! The `{otp}` hash tag puts both keys in one slot, so the scripts stay valid on a cluster.
//! Each operation is one Lua script (a put checks and writes; a verify counts the try, compares
//! and deletes on success), so concurrent tries from several gateways cannot use more tries
//! than allowed, and only one of them can see the right code.

use async_trait::async_trait;
use loyalty_core::pending_codes::{
    check_name, check_put, CodeHash, PendingCode, PendingCodes, Put, Verdict,
};
use loyalty_core::{Error, Result};

use crate::RedisCache;

/// KEYS: entry, index. ARGV: scope, hash (hex), payload, ttl ms, tries, capacity.
/// Returns 1 (stored), 0 (full) or -1 (the key is pending already).
const PUT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'h', ARGV[2], 'p', ARGV[3], 'u', 0, 'm', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"#;

/// KEYS: entry, index. ARGV: scope, hash (hex). Returns {kind, n, payload}: kind 0 gone,
/// 1 right, 2 locked (n: ms until expiry), 3 wrong (n: tries left).
const VERIFY: &str = r#"
local e = redis.call('HMGET', KEYS[1], 's', 'h', 'u', 'm', 'p')
if not e[1] or e[1] ~= ARGV[1] then return {0, 0, ''} end
local max = tonumber(e[4])
if tonumber(e[3]) >= max then
  return {2, math.max(redis.call('PTTL', KEYS[1]), 0), ''}
end
local used = redis.call('HINCRBY', KEYS[1], 'u', 1)
if e[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
  return {1, 0, e[5]}
end
if used >= max then
  return {2, math.max(redis.call('PTTL', KEYS[1]), 0), ''}
end
return {3, max - used, e[5]}
"#;

/// Pending codes in Redis, on the hot cache's connection (and under its prefix).
#[derive(Clone)]
pub struct RedisPendingCodes {
    cache: RedisCache,
    put: redis::Script,
    verify: redis::Script,
    capacity: u64,
}

impl RedisPendingCodes {
    /// Codes on the server (and under the prefix) of `cache`, at most `capacity` pending.
    pub fn new(cache: &RedisCache, capacity: u64) -> RedisPendingCodes {
        RedisPendingCodes {
            cache: cache.clone(),
            put: redis::Script::new(PUT),
            verify: redis::Script::new(VERIFY),
            capacity: capacity.max(1),
        }
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}{{otp}}:c:{key}", self.cache.prefix())
    }

    fn index_key(&self) -> String {
        format!("{}{{otp}}:index", self.cache.prefix())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[async_trait]
impl PendingCodes for RedisPendingCodes {
    async fn put(&self, key: &str, code: PendingCode) -> Result<Put> {
        check_put(key, &code)?;
        let ttl_ms = u64::try_from(code.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.put.prepare_invoke();
        invocation
            .key(self.entry_key(key))
            .key(self.index_key())
            .arg(&code.scope)
            .arg(hex(&code.code_hash))
            .arg(code.payload)
            .arg(ttl_ms)
            .arg(code.max_attempts)
            .arg(self.capacity);
        let mut conn = self.cache.connection();
        let answer: i64 = self
            .cache
            .bounded(async move { invocation.invoke_async(&mut conn).await })
            .await?;
        match answer {
            1 => Ok(Put::Stored),
            0 => Ok(Put::Full),
            _ => Err(Error::Conflict(format!("pending code {key} exists"))),
        }
    }

    async fn verify(&self, key: &str, scope: &str, code_hash: &CodeHash) -> Result<Verdict> {
        check_name("key", key)?;
        check_name("scope", scope)?;
        let mut invocation = self.verify.prepare_invoke();
        invocation
            .key(self.entry_key(key))
            .key(self.index_key())
            .arg(scope)
            .arg(hex(code_hash));
        let mut conn = self.cache.connection();
        let (kind, n, payload): (i64, i64, Vec<u8>) = self
            .cache
            .bounded(async move { invocation.invoke_async(&mut conn).await })
            .await?;
        let n = u64::try_from(n).unwrap_or(0);
        Ok(match kind {
            1 => Verdict::Right { payload },
            2 => Verdict::Locked {
                retry_after: std::time::Duration::from_millis(n),
            },
            3 => Verdict::Wrong {
                left: u32::try_from(n).unwrap_or(u32::MAX),
                payload,
            },
            _ => Verdict::Gone,
        })
    }

    async fn remove(&self, key: &str) -> Result<()> {
        check_name("key", key)?;
        let (entry, index) = (self.entry_key(key), self.index_key());
        let mut conn = self.cache.connection();
        let _: (i64, i64) = self
            .cache
            .bounded(async move {
                redis::pipe()
                    .atomic()
                    .del(&entry)
                    .zrem(&index, &entry)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
