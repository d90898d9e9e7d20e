//! [`RedisCache`]: the hot cache on a Redis server through one multiplexed, self-reconnecting
//! connection (the `redis` crate's `ConnectionManager`). The layout of keys and values is
//! described in the crate documentation.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use loyalty_core::ports::{CachedStatus, HotCache};
use loyalty_core::{Error, Result};
use loyalty_domain::{FranchiseId, MemberId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The format tag that starts every value this adapter writes.
const TAG: &[u8] = b"v2 ";
/// The first format's tag (no program version), still read.
const TAG_V1: &[u8] = b"v1 ";
/// Digits of the program version in a `v2` header.
const PROGRAM_DIGITS: usize = 10;
/// Digits of the zero-padded version (`u64::MAX` has 20).
const VERSION_DIGITS: usize = 20;
/// Where the version starts and ends in a value.
const VERSION_AT: std::ops::Range<usize> = TAG.len()..TAG.len() + VERSION_DIGITS;

/// The compare-and-set run for every key written. `KEYS[1]`: the status key; `ARGV[1]`: the
/// new value (header + JSON); `ARGV[2]`: time to live in milliseconds, `0` for none. Returns 1
/// when the value was written, 0 when the stored value is newer. A stored value that is not in
/// this format (written by something else) is replaced.
const PUT_IF_NOT_OLDER: &str = r#"
local new = ARGV[1]
local old = redis.call('GET', KEYS[1])
local tag = old and string.sub(old, 1, 3)
if (tag == 'v1 ' or tag == 'v2 ') and string.sub(old, 4, 23) > string.sub(new, 4, 23) then
  return 0
end
local ttl = tonumber(ARGV[2])
if ttl and ttl > 0 then
  redis.call('SET', KEYS[1], new, 'PX', ttl)
else
  redis.call('SET', KEYS[1], new)
end
return 1
"#;

/// How [`RedisCache`] names its keys and bounds its waits.
#[derive(Clone, Debug)]
pub struct RedisCacheOptions {
    /// Prepended to every key (`loyalty:` by default), so that several platforms, or tests, can
    /// share one Redis server; [`RedisCache::clear`] deletes exactly the keys under it.
    pub prefix: String,
    /// Time to live of each status (`None`, the default: statuses stay until replaced, since
    /// the engine rewrites a member's status on every change). A TTL bounds the memory taken by
    /// members who stopped coming, at the price of a store read on their next visit. Applied
    /// in whole milliseconds (at least one), reset by every write of the status.
    pub ttl: Option<Duration>,
    /// The longest any one operation may take, waiting for a reconnection included. Past it the
    /// operation fails with [`Error::Unavailable`], so a Redis outage costs the checkout path
    /// this much at most before it falls back to the store. Default 500 ms (a healthy Redis
    /// answers a batch in milliseconds).
    pub timeout: Duration,
    /// Bound on one TCP connection attempt. Default 500 ms.
    pub connect_timeout: Duration,
    /// Connection attempts made by one reconnection before it gives up (the next operation
    /// starts another one). Default 3.
    pub reconnect_retries: usize,
    /// Longest pause between two attempts of a reconnection (they back off exponentially from
    /// 50 ms). Default 1 s.
    pub reconnect_max_delay: Duration,
}

impl Default for RedisCacheOptions {
    fn default() -> Self {
        RedisCacheOptions {
            prefix: "loyalty:".to_owned(),
            ttl: None,
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            reconnect_retries: 3,
            reconnect_max_delay: Duration::from_secs(1),
        }
    }
}

/// The hot cache on Redis. Cheap to clone: clones share one multiplexed connection, which
/// pipelines the commands of concurrent callers and reconnects by itself after a failure.
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    /// The TTL argument of the script, in milliseconds (`0`: none).
    ttl_ms: u64,
    timeout: Duration,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}

impl RedisCache {
    /// Connects to the server at `url` (`redis://[user:password@]host:port/[db]`) and checks
    /// that it answers. Fails with [`Error::Invalid`] for a malformed URL and
    /// [`Error::Unavailable`] when the server cannot be reached within the options' bounds.
    pub async fn connect(url: &str, options: RedisCacheOptions) -> Result<RedisCache> {
        let cache = Self::connect_lazy(url, options)?;
        cache.ping().await?;
        Ok(cache)
    }

    /// Like [`RedisCache::connect`], but connects on first use: a process can start while
    /// Redis is down (its reads then fail with [`Error::Unavailable`] until Redis is back).
    pub fn connect_lazy(url: &str, options: RedisCacheOptions) -> Result<RedisCache> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Invalid(format!("redis url {url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(options.reconnect_retries)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(options.reconnect_max_delay);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        let ttl_ms = options
            .ttl
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
            .unwrap_or(0);
        Ok(RedisCache {
            conn,
            script: redis::Script::new(PUT_IF_NOT_OLDER),
            prefix: options.prefix,
            ttl_ms,
            timeout: options.timeout,
        })
    }

    /// The shared connection, for the other adapters on the same server (rate limits).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The prefix of every key this cache writes.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of a member's status.
    pub fn status_key(&self, member: &MemberId) -> String {
        format!("{}status:{}", self.prefix, member.as_str())
    }

    /// Checks that the server answers (a `PING`), for readiness probes.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let pong: String = self
            .bounded(async move { redis::cmd("PING").query_async(&mut conn).await })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "redis: unexpected answer to PING: {pong:?}"
            )))
        }
    }

    /// Deletes every key under this cache's prefix (`SCAN` + `UNLINK`, a page at a time, so
    /// the server never blocks on a large keyspace) and returns how many were deleted. Keys
    /// written concurrently may survive. What a `FLUSHALL` does, limited to this cache: used by
    /// tests and before a full [`crate::rebuild`].
    pub async fn clear(&self) -> Result<u64> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut conn = self.conn.clone();
            let pattern = pattern.clone();
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .bounded(async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let mut conn = self.conn.clone();
                let n: u64 = self
                    .bounded(
                        async move { redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await },
                    )
                    .await?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(deleted)
    }

    /// Writes `statuses` in one pipelined round trip and returns how many were written (the
    /// others were older than what Redis holds).
    pub async fn put_statuses_counted(&self, statuses: &[(MemberId, CachedStatus)]) -> Result<u64> {
        if statuses.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        // Loading the script first in the same round trip makes EVALSHA succeed even on a
        // server that restarted (or ran SCRIPT FLUSH) since the last batch; loading an already
        // loaded script costs the server one hash.
        pipe.load_script(&self.script).ignore();
        for (member, status) in statuses {
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(self.status_key(member))
                .arg(encode(status))
                .arg(self.ttl_ms);
            pipe.invoke_script(&invocation);
        }
        let mut conn = self.conn.clone();
        let written: Vec<i64> = self
            .bounded(async move { pipe.query_async(&mut conn).await })
            .await?;
        let written = written.iter().filter(|w| **w == 1).count() as u64;
        let stale = (statuses.len() as u64).saturating_sub(written);
        if stale > 0 {
            tracing::debug!(stale, "redis kept newer statuses over older ones");
        }
        Ok(written)
    }

    /// Runs one Redis operation within the cache's timeout, mapping every failure onto
    /// [`Error::Unavailable`].
    pub(crate) async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis operation failed");
                Err(unavailable(e))
            }
            Err(_) => Err(Error::Unavailable(format!(
                "redis: no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

#[async_trait]
impl HotCache for RedisCache {
    async fn status(&self, member: &MemberId) -> Result<Option<CachedStatus>> {
        let key = self.status_key(member);
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = self
            .bounded(async move { redis::cmd("GET").arg(&key).query_async(&mut conn).await })
            .await?;
        raw.map(|raw| decode(Bytes::from(raw))).transpose()
    }

    async fn put_statuses(&self, statuses: Vec<(MemberId, CachedStatus)>) -> Result<()> {
        self.put_statuses_counted(&statuses).await.map(|_| ())
    }

    async fn evict(&self, members: &[MemberId]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = members.iter().map(|m| self.status_key(m)).collect();
        let mut conn = self.conn.clone();
        let _removed: i64 = self
            .bounded(async move { redis::cmd("DEL").arg(&keys).query_async(&mut conn).await })
            .await?;
        Ok(())
    }
}

/// The stored value of a status:
/// `v2 <version, 20 digits> <program version, 10 digits> <franchise id>\n<json>`.
fn encode(status: &CachedStatus) -> Vec<u8> {
    let franchise = status.franchise_id.as_str().as_bytes();
    let mut v = Vec::with_capacity(
        TAG.len() + VERSION_DIGITS + PROGRAM_DIGITS + 3 + franchise.len() + status.json.len(),
    );
    v.extend_from_slice(TAG);
    v.extend_from_slice(format!("{:020}", status.version).as_bytes());
    v.push(b' ');
    v.extend_from_slice(format!("{:010}", status.program_version).as_bytes());
    v.push(b' ');
    v.extend_from_slice(franchise);
    v.push(b'\n');
    v.extend_from_slice(&status.json);
    v
}

/// Decodes a stored value; anything not written by [`encode`] is [`Error::Corrupt`]. The JSON
/// is not parsed (it is served as it is) and shares the buffer read from Redis.
fn decode(raw: Bytes) -> Result<CachedStatus> {
    let corrupt = |why: &str| Error::Corrupt(format!("redis status value: {why}"));
    let v2 = raw.starts_with(TAG);
    if !v2 && !raw.starts_with(TAG_V1) {
        return Err(corrupt("unknown format tag"));
    }
    let digits = raw
        .get(VERSION_AT)
        .ok_or_else(|| corrupt("truncated header"))?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(corrupt("version is not a number"));
    }
    let version = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or_else(|| corrupt("version out of range"))?;
    if raw.get(VERSION_AT.end) != Some(&b' ') {
        return Err(corrupt("no separator after the version"));
    }
    let mut franchise_at = VERSION_AT.end + 1;
    let mut program_version = 0;
    if v2 {
        let end = franchise_at + PROGRAM_DIGITS;
        let digits = raw
            .get(franchise_at..end)
            .ok_or_else(|| corrupt("truncated header"))?;
        program_version = std::str::from_utf8(digits)
            .ok()
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u32>().ok())
            .ok_or_else(|| corrupt("program version is not a number"))?;
        if raw.get(end) != Some(&b' ') {
            return Err(corrupt("no separator after the program version"));
        }
        franchise_at = end + 1;
    }
    let newline = raw[franchise_at..]
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no end of header"))?
        + franchise_at;
    let franchise = std::str::from_utf8(&raw[franchise_at..newline])
        .ok()
        .and_then(|f| FranchiseId::parse(f).ok())
        .ok_or_else(|| corrupt("invalid franchise id"))?;
    Ok(CachedStatus {
        franchise_id: franchise,
        version,
        program_version,
        json: raw.slice(newline + 1..),
    })
}

/// Escapes the glob characters of `s` for a `SCAN MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(version: u64, franchise: &str, json: &str) -> CachedStatus {
        CachedStatus {
            franchise_id: FranchiseId::parse(franchise).unwrap(),
            version,
            program_version: 7,
            json: Bytes::from(json.to_owned()),
        }
    }

    #[test]
    fn values_round_trip_with_exact_versions() {
        for v in [0, 1, 42, 1 << 53, (1 << 53) + 1, u64::MAX] {
            for pv in [0, 1, u32::MAX] {
                let s = CachedStatus {
                    program_version: pv,
                    ..status(v, "f-1:a.b_c", "{\"points\":12}\n{}")
                };
                let raw = encode(&s);
                assert_eq!(
                    raw.len(),
                    TAG.len() + VERSION_DIGITS + PROGRAM_DIGITS + 3 + 9 + s.json.len()
                );
                assert_eq!(decode(Bytes::from(raw)).unwrap(), s);
            }
        }
    }

    #[test]
    fn first_format_values_are_read_with_an_unknown_program() {
        let raw = Bytes::from_static(b"v1 00000000000000000042 f-1\n{\"points\":1}");
        let s = decode(raw).unwrap();
        assert_eq!((s.version, s.program_version), (42, 0));
        assert_eq!(s.franchise_id.as_str(), "f-1");
        assert_eq!(&s.json[..], b"{\"points\":1}");
    }

    #[test]
    fn versions_order_as_their_headers_do() {
        // The Lua script compares the 20 header digits as strings.
        let a = encode(&status(9, "f", "{}"));
        let b = encode(&status(10, "f", "{}"));
        let c = encode(&status(u64::MAX, "f", "{}"));
        assert!(a[VERSION_AT] < b[VERSION_AT]);
        assert!(b[VERSION_AT] < c[VERSION_AT]);
    }

    #[test]
    fn foreign_values_are_corrupt() {
        for raw in [
            &b""[..],
            b"{\"points\":1}",
            b"v1 12 f\n{}",
            b"v1 0000000000000000000x f\n{}",
            b"v1 99999999999999999999 f\n{}",
            b"v1 00000000000000000001f\n{}",
            b"v1 00000000000000000001 f{}",
            b"v1 00000000000000000001 bad id!\n{}",
            b"v2 00000000000000000001 f\n{}",
            b"v2 00000000000000000001 000000000x f\n{}",
            b"v2 00000000000000000001 9999999999 f\n{}",
            b"v3 00000000000000000001 f\n{}",
        ] {
            assert!(
                matches!(decode(Bytes::from_static(raw)), Err(Error::Corrupt(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn prefixes_are_escaped_for_scan() {
        assert_eq!(glob_escape("a*b?[c]\\:"), "a\\*b\\?\\[c\\]\\\\:");
    }
}
