//! The store's redb database, reopened after an I/O error when that is safe.
//!
//! Once a write fails at the file level (a full disk, a file size limit, an EIO), redb refuses
//! every later transaction with `PreviousIo` until the database is closed and opened again, and
//! opening it again brings back its last *durable* commit. [`DbSlot`] holds the database so
//! that the writer thread can close and reopen it. Every commit the store answers is durable,
//! so the reopened file is exactly what the engine believes is stored: the store goes on by
//! itself once the file can be written again (meanwhile every operation fails as unavailable,
//! a transient error: the engine backs off and retries, and nothing new is acknowledged).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redb::{Database, DatabaseError, ReadTransaction, ReadableDatabase, WriteTransaction};

/// How often a closed database is tried again.
const REOPEN_EVERY: Duration = Duration::from_millis(500);

pub(super) struct DbSlot {
    path: PathBuf,
    cache_bytes: usize,
    /// `None` while closed: after an I/O error, until a reopen succeeds.
    db: RwLock<Option<Arc<Database>>>,
    last_attempt: Mutex<Option<Instant>>,
}

impl DbSlot {
    pub(super) fn open(path: PathBuf, cache_bytes: usize) -> Result<DbSlot, DatabaseError> {
        let db = Self::create(&path, cache_bytes)?;
        Ok(DbSlot {
            path,
            cache_bytes,
            db: RwLock::new(Some(Arc::new(db))),
            last_attempt: Mutex::new(None),
        })
    }

    fn create(path: &PathBuf, cache_bytes: usize) -> Result<Database, DatabaseError> {
        redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
    }

    /// The open database; `PreviousIo` while it is closed after an I/O error.
    pub(super) fn get(&self) -> Result<Arc<Database>, redb::Error> {
        self.db.read().clone().ok_or(redb::Error::PreviousIo)
    }

    pub(super) fn begin_read(&self) -> Result<ReadTransaction, redb::Error> {
        Ok(self.get()?.begin_read()?)
    }

    pub(super) fn begin_write(&self) -> Result<WriteTransaction, redb::Error> {
        Ok(self.get()?.begin_write()?)
    }

    /// Whether the database refuses work since an I/O error (closed, or redb answers
    /// `PreviousIo`). Called by the writer thread, the only writer, after a failed group.
    pub(super) fn poisoned(&self) -> bool {
        match self.begin_write() {
            Ok(_) => false, // dropped: aborted, nothing written
            Err(redb::Error::PreviousIo) => true,
            Err(_) => false,
        }
    }

    /// Closed after an I/O error and waiting to be reopened.
    pub(super) fn awaits_reopen(&self) -> bool {
        self.db.read().is_none()
    }

    /// Closes the database and opens it again, at most once per [`REOPEN_EVERY`]; `true` when
    /// it is open afterwards. A reader in the middle of starting a transaction keeps the old
    /// database alive: the close then waits for the next attempt.
    pub(super) fn reopen(&self) -> bool {
        {
            let mut last = self.last_attempt.lock();
            if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let mut slot = self.db.write();
        if let Some(db) = slot.take() {
            match Arc::try_unwrap(db) {
                Ok(db) => drop(db),
                Err(db) => {
                    *slot = Some(db);
                    return false;
                }
            }
        }
        match Self::create(&self.path, self.cache_bytes) {
            Ok(db) => {
                *slot = Some(Arc::new(db));
                tracing::info!("embedded store: reopened after an I/O error");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "embedded store: still cannot open its file");
                false
            }
        }
    }
}
