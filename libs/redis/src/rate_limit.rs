//! The Redis [`RateLimiter`]: buckets shared by every gateway, so that a key (or an address)
//! gets one budget however many gateways its requests are spread over.
//!
//! One hash per bucket, `{prefix}rl:{bucket}` with fields `t` (tokens) and `ms` (when), updated
//! by one Lua script that applies [`loyalty_core::rate_limit::TokenBucket`]'s rule atomically
//! with Redis's own clock (`TIME`), so gateways with skewed clocks agree. The key expires once
//! the bucket would be full again, so idle buckets cost nothing.

use async_trait::async_trait;
use loyalty_core::rate_limit::{Decision, RateLimit, RateLimiter, TokenBucket};
use loyalty_core::Result;

use crate::RedisCache;

/// ARGV: burst, tokens per millisecond, idle TTL in ms. Returns {allowed (0/1), wait in ms}.
const TAKE: &str = r#"
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 't', 'ms')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
if now > at then
  tokens = math.min(cap, tokens + (now - at) * rate)
  at = now
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.max(1, math.ceil((1 - tokens) / rate))
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ms', at)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {allowed, wait}
"#;

/// Token buckets in Redis, on the hot cache's connection.
#[derive(Clone)]
pub struct RedisRateLimiter {
    cache: RedisCache,
    script: redis::Script,
}

impl RedisRateLimiter {
    /// Buckets on the server (and under the prefix) of `cache`.
    pub fn new(cache: &RedisCache) -> RedisRateLimiter {
        RedisRateLimiter {
            cache: cache.clone(),
            script: redis::Script::new(TAKE),
        }
    }

    fn key(&self, bucket: &str) -> String {
        format!("{}rl:{bucket}", self.cache.prefix())
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn take(&self, bucket: &str, limit: &RateLimit) -> Result<Decision> {
        if limit.is_off() {
            return Ok(Decision::ALLOWED);
        }
        let ttl_ms = u64::try_from(TokenBucket::idle_ttl(limit).as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(self.key(bucket))
            .arg(limit.burst.max(1))
            .arg(format!("{:.17e}", limit.per_ms()))
            .arg(ttl_ms);
        let mut conn = self.cache.connection();
        let (allowed, wait): (i64, i64) = self
            .cache
            .bounded(async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(if allowed == 1 {
            Decision::ALLOWED
        } else {
            Decision {
                retry_after: Some(std::time::Duration::from_millis(wait.max(1) as u64)),
            }
        })
    }
}
