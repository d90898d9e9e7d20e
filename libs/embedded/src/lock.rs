//! The lock of an embedded data directory: the embedded log and store belong to one process.
//!
//! Two processes on one directory would each scan the live log, take the other's half-written
//! frames for a torn tail and cut them, and write the store behind each other's back. So a
//! process takes [`DataDirLock::acquire`] on the directory *before* it opens the log or the
//! store, and holds it for as long as it uses them. The lock is an exclusive OS file lock
//! (`flock(2)` on Linux, through [`std::fs::File::try_lock`]) on `<dir>/LOCK`: the kernel
//! releases it when the process exits, however it exits (`kill -9` included), so a crash never
//! leaves a stale lock behind. The file holds the holder's pid, for the message the next
//! process gives.
//!
//! A process that finds the directory locked changes nothing in it: it opens `LOCK` without
//! truncating it, reads the holder's pid and gives up.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The name of the lock file in a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the directory.
    #[error(
        "the data directory {} is in use by another loyalty process ({}): one process at a time owns the embedded log and store. Stop that process, give this one another directory (--data-dir / LOYALTY_DATA_DIR), or share a store between processes with LOYALTY_POSTGRES_URL or LOYALTY_SCYLLA_NODES",
        dir.display(),
        holder_text(*holder)
    )]
    Held {
        dir: PathBuf,
        /// The holder's pid, as it wrote it in the lock file (if it could be read).
        holder: Option<u32>,
    },
    /// The lock file could not be created, opened, locked or written.
    #[error("locking the data directory {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn holder_text(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

/// An exclusive lock on a data directory, held until it is dropped (or the process exits).
#[derive(Debug)]
pub struct DataDirLock {
    dir: PathBuf,
    /// The locked file: closing it releases the lock.
    _file: File,
}

impl DataDirLock {
    /// Locks `dir` (created if missing) for this process, or fails with [`LockError::Held`]
    /// naming the holder's pid if another process (or another lock in this one) holds it.
    /// Never waits.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Not truncated on open: a loser must not wipe the holder's pid.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder: read_pid(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Ours: record who holds it. A crash between these writes leaves no pid (the lock is
        // released with the process anyway).
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(DataDirLock {
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        assert_eq!(first.dir(), dir.path());
        let before = std::fs::read(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&before).trim(),
            std::process::id().to_string()
        );

        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        match &err {
            LockError::Held { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert_eq!(std::fs::read(dir.path().join(LOCK_FILE)).unwrap(), before);

        // Released on drop: the next one gets it.
        drop(first);
        let _again = DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let _lock = DataDirLock::acquire(&nested).unwrap();
        assert!(nested.join(LOCK_FILE).exists());
    }
}
