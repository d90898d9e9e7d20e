//! The in-process [`RateLimiter`]: the buckets of one gateway, in memory, bounded.
//!
//! A bucket is created full and forgotten once idle long enough to be full again (which is
//! the same as never having been seen), so memory follows the keys and addresses active in the
//! last minutes, up to `capacity` buckets; past it the least recently used are dropped first
//! (a dropped bucket comes back full: the bound errs on the side of letting requests through).

use std::time::Instant;

use async_trait::async_trait;
use loyalty_core::rate_limit::{Decision, RateLimit, RateLimiter, TokenBucket};
use loyalty_core::Result;
use parking_lot::Mutex;

/// Token buckets in process memory.
pub struct EmbeddedRateLimiter {
    buckets: Mutex<lru_map::LruMap>,
    epoch: Instant,
}

impl EmbeddedRateLimiter {
    /// At most `capacity` buckets at once.
    pub fn new(capacity: usize) -> EmbeddedRateLimiter {
        EmbeddedRateLimiter {
            buckets: Mutex::new(lru_map::LruMap::new(capacity.max(1))),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl RateLimiter for EmbeddedRateLimiter {
    async fn take(&self, bucket: &str, limit: &RateLimit) -> Result<Decision> {
        if limit.is_off() {
            return Ok(Decision::ALLOWED);
        }
        let now = self.now_ms();
        let ttl = u64::try_from(TokenBucket::idle_ttl(limit).as_millis()).unwrap_or(u64::MAX);
        let mut buckets = self.buckets.lock();
        let b = buckets.get_or_insert(bucket, now, ttl, || TokenBucket::full(limit, now));
        Ok(b.take(limit, now))
    }
}

/// A small least-recently-used map of buckets with idle expiry (no dependency for it).
mod lru_map {
    use std::collections::{BTreeMap, HashMap};

    use loyalty_core::rate_limit::TokenBucket;

    pub struct LruMap {
        capacity: usize,
        /// Bucket name → (bucket, its last use as a sequence number).
        entries: HashMap<String, (TokenBucket, u64)>,
        /// Last use → bucket name, oldest first.
        order: BTreeMap<u64, String>,
        seq: u64,
    }

    impl LruMap {
        pub fn new(capacity: usize) -> LruMap {
            LruMap {
                capacity,
                entries: HashMap::new(),
                order: BTreeMap::new(),
                seq: 0,
            }
        }

        pub fn len(&self) -> usize {
            self.entries.len()
        }

        /// The bucket `name`, created by `new` when absent or idle for `ttl_ms` or longer.
        pub fn get_or_insert(
            &mut self,
            name: &str,
            now_ms: u64,
            ttl_ms: u64,
            new: impl FnOnce() -> TokenBucket,
        ) -> &mut TokenBucket {
            self.seq += 1;
            let seq = self.seq;
            if let Some((b, used)) = self.entries.get_mut(name) {
                self.order.remove(used);
                *used = seq;
                if now_ms.saturating_sub(b.at_ms) >= ttl_ms {
                    *b = new();
                }
            } else {
                while self.entries.len() >= self.capacity {
                    let Some((_, oldest)) = self.order.pop_first() else {
                        break;
                    };
                    self.entries.remove(&oldest);
                }
                self.entries.insert(name.to_owned(), (new(), seq));
            }
            self.order.insert(seq, name.to_owned());
            match self.entries.get_mut(name) {
                Some((b, _)) => b,
                None => unreachable!("the bucket was just inserted"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_minute: 60,
        burst: 3,
    };

    #[tokio::test]
    async fn buckets_are_per_name_and_bounded() {
        let l = EmbeddedRateLimiter::new(2);
        for _ in 0..3 {
            assert!(l.take("a", &LIMIT).await.unwrap().allowed());
        }
        let refused = l.take("a", &LIMIT).await.unwrap();
        assert!(!refused.allowed());
        assert!(refused.retry_after.unwrap().as_millis() > 0);
        // Another name has its own bucket.
        assert!(l.take("b", &LIMIT).await.unwrap().allowed());
        // A third evicts the least recently used ("a"), which comes back full.
        assert!(l.take("c", &LIMIT).await.unwrap().allowed());
        assert_eq!(l.len(), 2);
        assert!(l.take("a", &LIMIT).await.unwrap().allowed());
    }

    #[tokio::test]
    async fn off_keeps_nothing() {
        let l = EmbeddedRateLimiter::new(10);
        for _ in 0..100 {
            assert!(l.take("a", &RateLimit::OFF).await.unwrap().allowed());
        }
        assert!(l.is_empty());
    }
}
