//! The log's journal: one file that makes a group commit durable with one `fdatasync`, however
//! many partitions the group touched.
//!
//! A group commit writes each partition's share to its partition file (not synced), then one
//! journal entry per share, in one write at the journal's end, and syncs the journal alone:
//! once that sync returns, every record of the group is on disk (in the journal), and only then
//! is it published and acknowledged. A sync costs about the same for one file or another (on
//! a virtual machine mostly the device's cache flush), so a group that touched every
//! partition now pays one instead of one per partition file.
//!
//! A checkpoint syncs the partition files written since the last one, then empties the
//! journal. The writer takes one every [`super::LogConfig::checkpoint_every`] while it writes,
//! whenever it has been idle that long, once the journal holds
//! [`super::LogConfig::checkpoint_bytes`], and when the log closes (so a clean close leaves an
//! empty journal).
//!
//! Opening the log replays the journal before it scans any partition file: each entry's bytes
//! are written again at their place in their file (which changes nothing when the file has
//! them already), the files are synced, and the journal is emptied. A crash can take back what
//! the kernel had not written of a partition file, never what the journal holds.
//!
//! An entry is a frame, `[len u32][crc32 u32][body]` with the CRC-32 of the body, whose body is
//! `[topic_len u16][topic][partition u32][position u64][bytes]`: whole record frames written
//! at `position` of the partition's file. A torn or corrupt entry ends the replay: it and
//! everything after it were never synced, so never acknowledged. An append that failed may
//! still be found in its partition after a restart (as with Kafka, a producer that saw an error
//! does not know); one that succeeded is never lost.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loyalty_core::{Error, Result};

use super::frame;
use super::io_error;
use super::partition::{partition_file, PartitionLog, Syncers};

/// The journal's file name in the log's directory (a file: topics are directories).
pub(crate) const JOURNAL_FILE: &str = "journal.wal";

/// When the writer empties the journal.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CheckpointPolicy {
    pub every: Duration,
    pub bytes: u64,
}

/// The open journal, owned by the writer thread.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// Where the next entry goes.
    len: u64,
    /// Partitions written since the last checkpoint (by address): their files are not synced
    /// yet.
    dirty: HashMap<usize, Arc<PartitionLog>>,
    last_checkpoint: Instant,
    policy: CheckpointPolicy,
    /// Set when a sync of the journal (or a checkpoint) failed: what is on disk is then
    /// unknown, so every append fails until the log is reopened and the journal replayed.
    failed: Option<String>,
}

/// One partition's share of a group commit, as the journal records it.
pub(crate) struct Entry<'a> {
    pub partition: &'a Arc<PartitionLog>,
    /// Where `bytes` were written in the partition's file.
    pub position: u64,
    pub bytes: &'a [u8],
}

impl Journal {
    /// Opens the journal of the log in `dir` for writing; [`replay`] must have run first (it
    /// leaves the journal empty).
    pub fn open(dir: &Path, policy: CheckpointPolicy) -> Result<Journal> {
        let path = dir.join(JOURNAL_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&format!("opening {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error(&format!("stat {}", path.display()), e))?
            .len();
        Ok(Journal {
            path,
            file,
            len,
            dirty: HashMap::new(),
            last_checkpoint: Instant::now(),
            policy,
            failed: None,
        })
    }

    /// Why the journal refuses appends, if it does.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Records a group's shares (already written to their files) and makes them durable: one
    /// write and one sync. On `Err` nothing of the group is durable; after a failed sync the
    /// journal is fenced ([`Journal::failed`]).
    pub fn commit(&mut self, entries: &[Entry<'_>]) -> std::result::Result<(), String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.bytes.len() + 64).sum());
        for e in entries {
            encode_entry(&mut buf, e);
        }
        if let Err(e) = self.file.write_all_at(&buf, self.len) {
            // A full disk, a file size limit: cut what part of the entries was written (a
            // complete entry left past the end would be replayed), and go on.
            let why = format!("writing the journal {}: {e}", self.path.display());
            if let Err(e) = self.file.set_len(self.len) {
                self.fence(format!("{why}; then cutting it back: {e}"));
            }
            return Err(why);
        }
        if let Err(e) = self.file.sync_data() {
            // After a failed sync the kernel may have dropped dirty pages: what the journal
            // holds is unknown.
            let why = format!("syncing the journal {}: {e}", self.path.display());
            self.fence(why.clone());
            return Err(why);
        }
        self.len += buf.len() as u64;
        for e in entries {
            self.dirty
                .entry(Arc::as_ptr(e.partition) as usize)
                .or_insert_with(|| Arc::clone(e.partition));
        }
        Ok(())
    }

    /// Refuses every append from now on, loudly, until the log is reopened.
    fn fence(&mut self, why: String) {
        tracing::error!("{why}; the log refuses appends until it is reopened");
        self.failed = Some(why);
    }

    /// Whether a checkpoint is due now (`idle`: the writer has nothing queued).
    pub fn checkpoint_due(&self, idle: bool) -> bool {
        if self.dirty.is_empty() && self.len == 0 {
            return false;
        }
        idle || self.len >= self.policy.bytes || self.last_checkpoint.elapsed() >= self.policy.every
    }

    /// How long the writer may wait for an append before a checkpoint is due.
    pub fn idle_wait(&self) -> Duration {
        self.policy.every
    }

    /// Syncs every partition file written since the last checkpoint, then empties the journal.
    /// A failure fences the journal (what the files hold is then known only from it).
    pub fn checkpoint(&mut self, syncers: &Syncers) {
        if self.failed.is_some() {
            return;
        }
        let _timer = loyalty_core::metrics::metrics()
            .log_checkpoint_seconds
            .start_timer();
        let synced = syncers.sync_all(self.dirty.values());
        if let Some((part, Err(e))) = self.dirty.values().zip(synced).find(|(_, r)| r.is_err()) {
            let why = format!("syncing {} at a checkpoint: {e}", part.path().display());
            self.fence(why);
            return;
        }
        if let Err(e) = self.file.set_len(0).and_then(|()| self.file.sync_data()) {
            let why = format!("emptying the journal {}: {e}", self.path.display());
            self.fence(why);
            return;
        }
        tracing::debug!(
            bytes = self.len,
            partitions = self.dirty.len(),
            "embedded log checkpoint"
        );
        self.len = 0;
        self.dirty.clear();
        self.last_checkpoint = Instant::now();
    }
}

/// Appends `e` to `buf` as one frame (a share is at most a group commit's bytes, 16 MiB by
/// default, so its body fits in `u32`).
fn encode_entry(buf: &mut Vec<u8>, e: &Entry<'_>) {
    let topic = e.partition.topic().as_bytes();
    let start = frame::begin(buf);
    buf.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    buf.extend_from_slice(topic);
    buf.extend_from_slice(&e.partition.id.to_le_bytes());
    buf.extend_from_slice(&e.position.to_le_bytes());
    buf.extend_from_slice(e.bytes);
    frame::seal(buf, start);
}

/// One decoded journal entry.
struct Replayed {
    topic: String,
    partition: u32,
    position: u64,
    bytes: Vec<u8>,
}

fn decode_entry(body: &[u8]) -> Option<Replayed> {
    let topic_len = u16::from_le_bytes(body.get(0..2)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(body.get(2..2 + topic_len)?).ok()?;
    let rest = body.get(2 + topic_len..)?;
    let partition = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?);
    let position = u64::from_le_bytes(rest.get(4..12)?.try_into().ok()?);
    Some(Replayed {
        topic: topic.to_string(),
        partition,
        position,
        bytes: rest.get(12..)?.to_vec(),
    })
}

/// Writes every entry of the journal of the log in `dir` back into its partition file, syncs
/// those files, then empties the journal (blocking; before any partition file is scanned).
pub(crate) fn replay(dir: &Path) -> Result<()> {
    let path = dir.join(JOURNAL_FILE);
    let journal = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(&format!("opening {}", path.display()), e)),
    };
    let len = journal
        .metadata()
        .map_err(|e| io_error(&format!("stat {}", path.display()), e))?
        .len();
    if len == 0 {
        return Ok(());
    }
    // A torn or corrupt entry ends the entries: it was never synced, so never acknowledged.
    let mut entries = Vec::new();
    frame::walk(&journal, len, u32::MAX as usize, |pos, body| {
        entries.push(decode_entry(body).ok_or(format!("undecodable entry at {pos}"))?);
        Ok(())
    })
    .map_err(|e| io_error(&format!("reading {}", path.display()), e))?;
    let mut files: HashMap<PathBuf, File> = HashMap::new();
    for entry in &entries {
        let target = partition_file(&dir.join(&entry.topic), entry.partition);
        let file = match files.entry(target.clone()) {
            Slot::Occupied(o) => o.into_mut(),
            Slot::Vacant(v) => {
                let f = OpenOptions::new().write(true).open(&target).map_err(|e| {
                    Error::Corrupt(format!(
                        "the journal {} names {}, which cannot be opened: {e}",
                        path.display(),
                        target.display()
                    ))
                })?;
                v.insert(f)
            }
        };
        file.write_all_at(&entry.bytes, entry.position)
            .map_err(|e| io_error(&format!("replaying into {}", target.display()), e))?;
    }
    for (target, f) in &files {
        f.sync_data()
            .map_err(|e| io_error(&format!("syncing {}", target.display()), e))?;
    }
    journal
        .set_len(0)
        .and_then(|()| journal.sync_data())
        .map_err(|e| io_error(&format!("emptying {}", path.display()), e))?;
    tracing::info!(
        entries = entries.len(),
        files = files.len(),
        "embedded log: journal replayed into the partition files"
    );
    Ok(())
}
