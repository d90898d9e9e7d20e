//! The embedded hot cache: member statuses in process memory, bounded, with the same
//! ordering rule as the Redis adapter (an older version never replaces a newer one).

use std::hash::BuildHasher;

use async_trait::async_trait;
use loyalty_core::ports::{CachedStatus, HotCache};
use loyalty_core::Result;
use loyalty_domain::MemberId;
use parking_lot::Mutex;

const STRIPES: usize = 64;

/// A bounded in-process [`HotCache`].
pub struct EmbeddedCache {
    entries: quick_cache::sync::Cache<MemberId, CachedStatus>,
    /// Serialises the compare-and-set of one member's entry (striped by hash).
    stripes: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl EmbeddedCache {
    /// A cache holding at most `capacity` statuses (least recently useful ones go first).
    pub fn new(capacity: usize) -> EmbeddedCache {
        EmbeddedCache {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }

    fn stripe(&self, m: &MemberId) -> &Mutex<()> {
        &self.stripes[(self.hasher.hash_one(m) as usize) % STRIPES]
    }

    /// Drops every entry (what `FLUSHALL` does to Redis).
    pub fn clear(&self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[async_trait]
impl HotCache for EmbeddedCache {
    async fn status(&self, member: &MemberId) -> Result<Option<CachedStatus>> {
        Ok(self.entries.get(member))
    }

    async fn put_statuses(&self, statuses: Vec<(MemberId, CachedStatus)>) -> Result<()> {
        for (m, s) in statuses {
            let _guard = self.stripe(&m).lock();
            if self
                .entries
                .get(&m)
                .is_some_and(|old| old.version > s.version)
            {
                continue;
            }
            self.entries.insert(m, s);
        }
        Ok(())
    }

    async fn evict(&self, members: &[MemberId]) -> Result<()> {
        for m in members {
            let _guard = self.stripe(m).lock();
            self.entries.remove(m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loyalty_domain::FranchiseId;

    fn status(v: u64) -> CachedStatus {
        CachedStatus {
            program_version: 1,
            franchise_id: FranchiseId::parse("f1").unwrap(),
            version: v,
            json: bytes::Bytes::from(format!("{{\"version\":{v}}}")),
        }
    }

    #[tokio::test]
    async fn an_older_version_never_replaces_a_newer_one() {
        let c = EmbeddedCache::new(10);
        let m = MemberId::parse("m1").unwrap();
        c.put_statuses(vec![(m.clone(), status(5))]).await.unwrap();
        c.put_statuses(vec![(m.clone(), status(3))]).await.unwrap();
        assert_eq!(c.status(&m).await.unwrap().unwrap().version, 5);
        c.put_statuses(vec![(m.clone(), status(6))]).await.unwrap();
        assert_eq!(c.status(&m).await.unwrap().unwrap().version, 6);
        c.clear();
        assert!(c.status(&m).await.unwrap().is_none());
    }
}
