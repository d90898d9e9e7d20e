//! The in-process [`PendingCodes`]: the codes of one gateway, in memory, bounded (`loyalty
//! dev`, or a single gateway). The semantics are the port's (TTL, single use, tries counted
//! under one lock, scope), checked by `loyalty_testkit::pending_codes_contract`.
//!
//! At most `capacity` entries: when full, the expired ones are dropped first, then new codes
//! are refused ([`Put::Full`]) rather than a live one evicted.

use std::collections::HashMap;
use std::time::Instant;

use async_trait::async_trait;
use loyalty_core::pending_codes::{
    check_name, check_put, CodeHash, PendingCode, PendingCodes, Put, Verdict,
};
use loyalty_core::{Error, Result};
use parking_lot::Mutex;

struct Entry {
    scope: String,
    code_hash: CodeHash,
    payload: Vec<u8>,
    expires: Instant,
    used: u32,
    max_attempts: u32,
}

/// Pending one-time codes in process memory.
pub struct EmbeddedPendingCodes {
    entries: Mutex<HashMap<String, Entry>>,
    capacity: usize,
}

impl EmbeddedPendingCodes {
    /// At most `capacity` codes pending at once (at least 1).
    pub fn new(capacity: usize) -> EmbeddedPendingCodes {
        EmbeddedPendingCodes {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Entries held now (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl PendingCodes for EmbeddedPendingCodes {
    async fn put(&self, key: &str, code: PendingCode) -> Result<Put> {
        check_put(key, &code)?;
        let now = Instant::now();
        let expires = now
            .checked_add(code.ttl)
            .ok_or_else(|| Error::Invalid("pending code lifetime too long".into()))?;
        let mut entries = self.entries.lock();
        if let Some(e) = entries.get(key) {
            if e.expires > now {
                return Err(Error::Conflict(format!("pending code {key} exists")));
            }
        }
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires > now);
        }
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            return Ok(Put::Full);
        }
        entries.insert(
            key.to_owned(),
            Entry {
                scope: code.scope,
                code_hash: code.code_hash,
                payload: code.payload,
                expires,
                used: 0,
                max_attempts: code.max_attempts,
            },
        );
        Ok(Put::Stored)
    }

    async fn verify(&self, key: &str, scope: &str, code_hash: &CodeHash) -> Result<Verdict> {
        check_name("key", key)?;
        check_name("scope", scope)?;
        let now = Instant::now();
        let mut entries = self.entries.lock();
        let Some(e) = entries.get_mut(key) else {
            return Ok(Verdict::Gone);
        };
        if e.expires <= now {
            entries.remove(key);
            return Ok(Verdict::Gone);
        }
        if e.scope != scope {
            return Ok(Verdict::Gone);
        }
        if e.used >= e.max_attempts {
            return Ok(Verdict::Locked {
                retry_after: e.expires.saturating_duration_since(now),
            });
        }
        e.used = e.used.saturating_add(1);
        if &e.code_hash == code_hash {
            let payload = entries.remove(key).map(|e| e.payload).unwrap_or_default();
            return Ok(Verdict::Right { payload });
        }
        match e.max_attempts.checked_sub(e.used) {
            Some(left) if left > 0 => Ok(Verdict::Wrong {
                left,
                payload: e.payload.clone(),
            }),
            _ => Ok(Verdict::Locked {
                retry_after: e.expires.saturating_duration_since(now),
            }),
        }
    }

    async fn remove(&self, key: &str) -> Result<()> {
        check_name("key", key)?;
        self.entries.lock().remove(key);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}
