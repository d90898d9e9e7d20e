//! Token buckets that bound how fast one API key, or one client address, may ask who a phone
//! number belongs to (issue 14, defect 10: a store key made 2 000 phone lookups in 0.2 s).
//!
//! A bucket holds at most `burst` tokens and gains `per_minute / 60` a second; each request
//! takes one, and a request that finds less than one is refused with the time until the next
//! token ([`Decision::retry_after`]). The arithmetic is here, once ([`TokenBucket`]); the
//! buckets live in a [`RateLimiter`]: in process for one gateway (`loyalty_embedded`), in Redis
//! when several gateways must share them (`loyalty_redis`, which runs the same rule in a Lua
//! script against Redis's own clock).

use std::time::Duration;

use async_trait::async_trait;

use crate::Result;

/// How fast a bucket refills and how much it holds. `per_minute == 0` means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests a minute.
    pub per_minute: u32,
    /// Requests that may come at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl RateLimit {
    /// No limit at all.
    pub const OFF: RateLimit = RateLimit {
        per_minute: 0,
        burst: 1,
    };

    pub fn is_off(&self) -> bool {
        self.per_minute == 0
    }

    /// Tokens gained per millisecond.
    pub fn per_ms(&self) -> f64 {
        f64::from(self.per_minute) / 60_000.0
    }
}

/// The answer of a bucket to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// `None`: allowed. `Some(d)`: refused; a token is back in `d`.
    pub retry_after: Option<Duration>,
}

impl Decision {
    pub const ALLOWED: Decision = Decision { retry_after: None };

    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }
}

/// One bucket's state: its tokens at `at_ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    pub tokens: f64,
    pub at_ms: u64,
}

impl TokenBucket {
    /// A bucket first seen at `now_ms`: full.
    pub fn full(limit: &RateLimit, now_ms: u64) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(limit.burst.max(1)),
            at_ms: now_ms,
        }
    }

    /// Takes one token at `now_ms` if there is one. A clock that went back refills nothing.
    pub fn take(&mut self, limit: &RateLimit, now_ms: u64) -> Decision {
        if limit.is_off() {
            return Decision::ALLOWED;
        }
        let cap = f64::from(limit.burst.max(1));
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens = (self.tokens + elapsed * limit.per_ms()).min(cap);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Decision::ALLOWED
        } else {
            let ms = ((1.0 - self.tokens) / limit.per_ms()).ceil().max(1.0);
            Decision {
                retry_after: Some(Duration::from_millis(ms as u64)),
            }
        }
    }

    /// How long until an untouched bucket is full again (when it can be forgotten).
    pub fn idle_ttl(limit: &RateLimit) -> Duration {
        if limit.is_off() {
            return Duration::ZERO;
        }
        let ms = (f64::from(limit.burst.max(1)) / limit.per_ms()).ceil() as u64;
        Duration::from_millis(ms.saturating_add(1000))
    }
}

/// Where the buckets live. `take` answers for the bucket named `bucket` (created full).
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    async fn take(&self, bucket: &str, limit: &RateLimit) -> Result<Decision>;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_minute: 60,
        burst: 10,
    };

    #[test]
    fn a_burst_then_one_a_second() {
        let mut b = TokenBucket::full(&LIMIT, 0);
        for _ in 0..10 {
            assert!(b.take(&LIMIT, 0).allowed());
        }
        let refused = b.take(&LIMIT, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(1000)));
        assert!(!b.take(&LIMIT, 999).allowed());
        assert!(b.take(&LIMIT, 1000).allowed());
        assert!(!b.take(&LIMIT, 1000).allowed());
    }

    #[test]
    fn off_allows_everything() {
        let mut b = TokenBucket::full(&RateLimit::OFF, 0);
        for _ in 0..10_000 {
            assert!(b.take(&RateLimit::OFF, 0).allowed());
        }
    }

    proptest! {
        /// However requests are spread in time, a bucket never allows more than its burst plus
        /// what it refilled over the span, and a refusal always names a positive wait.
        #[test]
        fn never_more_than_burst_plus_refill(
            per_minute in 1u32..100_000,
            burst in 1u32..1000,
            gaps in proptest::collection::vec(0u64..5_000, 1..400),
        ) {
            let limit = RateLimit { per_minute, burst };
            let mut b = TokenBucket::full(&limit, 0);
            let (mut now, mut allowed) = (0u64, 0u64);
            for g in gaps {
                now += g;
                let d = b.take(&limit, now);
                if d.allowed() {
                    allowed += 1;
                } else {
                    prop_assert!(d.retry_after.is_some_and(|w| w > Duration::ZERO));
                }
            }
            let bound = f64::from(burst) + now as f64 * limit.per_ms();
            prop_assert!(allowed as f64 <= bound + 1e-6, "{allowed} > {bound}");
        }

        /// Waiting as long as a refusal says is enough for the next request.
        #[test]
        fn retry_after_is_enough(per_minute in 1u32..100_000, burst in 1u32..50) {
            let limit = RateLimit { per_minute, burst };
            let mut b = TokenBucket::full(&limit, 0);
            // Empty the bucket at one instant; the first refusal names the wait.
            let wait = loop {
                if let Some(w) = b.take(&limit, 0).retry_after {
                    break w;
                }
            };
            let now = wait.as_millis() as u64;
            prop_assert!(b.take(&limit, now).allowed());
        }
    }
}
