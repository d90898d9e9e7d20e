//! The embedded event log: a durable, partitioned, append-only log with consumer groups, in
//! Kafka's model, for `dev` mode and tests in place of Kafka.
//!
//! # Layout on disk
//! ```text
//! <dir>/journal.wal                           the group commits since the last checkpoint
//! <dir>/<topic>/topic.json                    {"partitions": N}, written atomically
//! <dir>/<topic>/p00000.log ...                one append-only file per partition
//! <dir>/<topic>/groups/<group>.offsets.json   committed offsets of a group, written atomically
//! ```
//! A partition file is a sequence of frames `[len u32][crc32 u32][body]` (see `frame`). On
//! [`EmbeddedLog::open`] every file is scanned, each frame verified, and a torn tail (a crash in
//! the middle of a write) is cut; the scan rebuilds the in-memory index offset → file position
//! that reads use with positional reads.
//!
//! # Durability
//! `append` returns once its record is on disk (`fdatasync`). All appends go through one writer
//! thread that commits them in groups: everything queued while the previous sync ran is
//! written with one write per partition, then recorded in the journal and made durable with
//! one sync of the journal alone, however many partitions the group touched (module `journal`:
//! checkpoints sync the partition files and empty it; opening the log replays it first). So
//! many concurrent appenders share the cost of each sync. A record becomes visible to readers
//! only once it is durable. Topic metadata and offsets are written to a temporary file, synced,
//! renamed over the old one, and the directory synced.
//!
//! # Consumer groups
//! See [`EmbeddedConsumer`] and the `group` module: eager rebalancing (revoke all, wait for
//! every `done`, then assign), ownership fencing of commits, at-least-once redelivery from the
//! committed offsets.
//!
//! One process at a time may open a directory: `loyalty` takes the data directory's lock
//! ([`crate::lock::DataDirLock`]) before it opens the log, so a second process stops before it
//! reads (or repairs) anything.

mod frame;
mod group;
mod journal;
mod partition;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use loyalty_core::ports::{
    partition_for, Appended, EventLog, LogConsumer, Offset, Partition, Record,
};
use loyalty_core::{Error, Result};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

pub use group::EmbeddedConsumer;
use group::Group;
use partition::{partition_file, AppendRequest, BatchLimits, PartitionLog, Topic};

/// The most partitions a topic may have (each is an open file).
pub const MAX_PARTITIONS: u32 = 4096;

/// Tuning of an [`EmbeddedLog`]. The defaults suit dev mode and tests.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// How long [`LogConsumer::next`] waits for an event or a record before returning an empty
    /// `Records`. Default 100 ms.
    pub poll_interval: Duration,
    /// The largest record accepted by `append` (key, payload and headers, encoded). Larger
    /// ones fail with `Error::Invalid`. Default 8 MiB.
    pub max_record_bytes: usize,
    /// The most bytes one `next` (or [`EmbeddedLog::read`]) returns, beyond which it returns
    /// fewer records than asked (but always at least one). Default 4 MiB.
    pub max_read_bytes: usize,
    /// The most appends one group commit takes. Default 8192.
    pub max_batch_records: usize,
    /// The most bytes one group commit takes (it always takes at least one append).
    /// Default 16 MiB.
    pub max_batch_bytes: usize,
    /// How often the writer syncs the partition files and empties the journal while it
    /// writes, and after how long idle (module `journal`). Default 1 s.
    pub checkpoint_every: Duration,
    /// The journal's size that makes a checkpoint due at once. Default 64 MiB.
    pub checkpoint_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            poll_interval: Duration::from_millis(100),
            max_record_bytes: 8 << 20,
            max_read_bytes: 4 << 20,
            max_batch_records: 8192,
            max_batch_bytes: 16 << 20,
            checkpoint_every: Duration::from_secs(1),
            checkpoint_bytes: 64 << 20,
        }
    }
}

/// The topic metadata file.
#[derive(Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
}

const META_FILE: &str = "topic.json";

/// The embedded event log. Open it with [`EmbeddedLog::open`]; use it through [`EventLog`].
pub struct EmbeddedLog {
    dir: PathBuf,
    config: LogConfig,
    topics: Arc<RwLock<HashMap<String, Arc<Topic>>>>,
    /// Serialises topic creation (held on a blocking thread only).
    create_lock: Arc<Mutex<()>>,
    groups: Mutex<HashMap<(String, String), Arc<Group>>>,
    /// The queue of the writer thread; `None` once the log is being dropped.
    writer: Option<mpsc::Sender<AppendRequest>>,
    writer_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("dir", &self.dir)
            .field("topics", &self.topics.read().len())
            .finish()
    }
}

impl EmbeddedLog {
    /// Opens (creating it if needed) the log in `dir` with the default [`LogConfig`].
    /// Blocking: it scans every partition file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Arc<EmbeddedLog>> {
        Self::open_with(dir, LogConfig::default())
    }

    /// Opens (creating it if needed) the log in `dir`: reads every topic's metadata, scans and
    /// repairs every partition file, and starts the writer thread. Blocking.
    pub fn open_with(dir: impl AsRef<Path>, config: LogConfig) -> Result<Arc<EmbeddedLog>> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| io_error(&format!("creating {}", dir.display()), e))?;
        // Before any partition file is scanned: the journal holds what a crash may have taken
        // from them.
        journal::replay(&dir)?;
        let mut topics = HashMap::new();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| io_error(&format!("listing {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&format!("listing {}", dir.display()), e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = entry.path();
            if !path.is_dir() || validate_name("topic", &name).is_err() {
                continue;
            }
            let meta_path = path.join(META_FILE);
            let meta = match std::fs::read(&meta_path) {
                Ok(bytes) => serde_json::from_slice::<TopicMeta>(&bytes)
                    .map_err(|e| Error::Corrupt(format!("{}: {e}", meta_path.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // A creation interrupted before its metadata was durable: the topic never
                    // existed (no append could have reached it). `ensure_topic` redoes it.
                    tracing::warn!(topic = name, "ignoring a topic directory without metadata");
                    continue;
                }
                Err(e) => return Err(io_error(&format!("reading {}", meta_path.display()), e)),
            };
            if meta.partitions == 0 || meta.partitions > MAX_PARTITIONS {
                return Err(Error::Corrupt(format!(
                    "{}: {} partitions",
                    meta_path.display(),
                    meta.partitions
                )));
            }
            let topic = load_topic(&name, &path, meta.partitions)?;
            topics.insert(name, Arc::new(topic));
        }

        let (tx, rx) = mpsc::channel();
        let limits = BatchLimits {
            max_records: config.max_batch_records.max(1),
            max_bytes: config.max_batch_bytes.max(1),
        };
        let journal = journal::Journal::open(
            &dir,
            journal::CheckpointPolicy {
                every: config.checkpoint_every.max(Duration::from_millis(1)),
                bytes: config.checkpoint_bytes.max(1),
            },
        )?;
        let writer_thread = std::thread::Builder::new()
            .name("embedded-log-writer".into())
            .spawn(move || partition::run_writer(rx, limits, journal))
            .map_err(|e| Error::Unavailable(format!("cannot start the log writer: {e}")))?;
        tracing::info!(dir = %dir.display(), topics = topics.len(), "embedded log open");
        Ok(Arc::new(EmbeddedLog {
            dir,
            config,
            topics: Arc::new(RwLock::new(topics)),
            create_lock: Arc::new(Mutex::new(())),
            groups: Mutex::new(HashMap::new()),
            writer: Some(tx),
            writer_thread: Some(writer_thread),
        }))
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The partition count of `topic`, if it exists.
    pub fn partitions(&self, topic: &str) -> Option<u32> {
        self.topics
            .read()
            .get(topic)
            .map(|t| t.partitions.len() as u32)
    }

    /// The existing topics, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut names: Vec<String> = self.topics.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Reads up to `max` durable records of a partition from `from_offset`, in offset order
    /// (fewer if they exceed [`LogConfig::max_read_bytes`]; none at or past the end). For tests
    /// and inspection (e.g. of a dead-letter topic); it does not touch any group's offsets.
    /// Blocking (positional reads, normally served from the page cache).
    pub fn read(
        &self,
        topic: &str,
        partition: Partition,
        from_offset: Offset,
        max: usize,
    ) -> Result<Vec<Record>> {
        let topic = self.topic(topic)?;
        let (records, _) =
            topic
                .partition(partition)?
                .read(from_offset, max, self.config.max_read_bytes)?;
        Ok(records)
    }

    /// The append itself: a frame to the writer thread, awaited until it is durable.
    async fn write(
        &self,
        topic: &str,
        key: &[u8],
        payload: Bytes,
        headers: Vec<(String, Bytes)>,
    ) -> Result<Appended> {
        let topic = self.topic(topic)?;
        let p = partition_for(key, topic.partitions.len() as u32);
        let partition = topic.partition(p)?.clone();
        let frame = frame::encode(key, &payload, &headers, self.config.max_record_bytes)?;
        let (ack, done) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or(Error::ShuttingDown)?
            .send(AppendRequest {
                partition,
                frame,
                ack,
            })
            .map_err(|_| Error::ShuttingDown)?;
        done.await.map_err(|_| Error::ShuttingDown)?
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("unknown topic {name:?}")))
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has acknowledged what it holds.
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            if thread.join().is_err() {
                tracing::error!("the embedded log writer panicked");
            }
        }
    }
}

/// Opens the partitions of an existing topic.
fn load_topic(name: &str, dir: &Path, partitions: u32) -> Result<Topic> {
    let changes = Arc::new(watch::channel(0u64).0);
    let parts = (0..partitions)
        .map(|p| PartitionLog::open(name, dir, p, changes.clone()).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    Ok(Topic {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        partitions: parts,
        changes,
    })
}

/// Creates a topic on disk (blocking): partition files first, then the metadata that makes the
/// topic exist, so metadata on disk always names files that exist.
fn create_topic(root: &Path, name: &str, partitions: u32) -> Result<Topic> {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("groups"))
        .map_err(|e| io_error(&format!("creating {}", dir.display()), e))?;
    for p in 0..partitions {
        let path = partition_file(&dir, p);
        // No metadata means no append ever reached these files: start them empty.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_error(&format!("creating {}", path.display()), e))?;
        file.sync_all()
            .map_err(|e| io_error(&format!("syncing {}", path.display()), e))?;
    }
    sync_dir(&dir.join("groups"))?;
    sync_dir(&dir)?;
    sync_dir(root)?;
    let meta = serde_json::to_vec(&TopicMeta { partitions })
        .map_err(|e| Error::Corrupt(format!("encoding topic metadata: {e}")))?;
    write_atomically(&dir.join(META_FILE), &meta)?;
    load_topic(name, &dir, partitions)
}

/// Replaces `path` with `bytes` atomically and durably: temporary file, fsync, rename, fsync of
/// the directory. A crash leaves either the old or the new content.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let ctx = |what: &str, e: std::io::Error| io_error(&format!("{what} {}", tmp.display()), e);
    let mut file = File::create(&tmp).map_err(|e| ctx("creating", e))?;
    file.write_all(bytes).map_err(|e| ctx("writing", e))?;
    file.sync_all().map_err(|e| ctx("syncing", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| ctx("renaming", e))?;
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(&format!("syncing directory {}", dir.display()), e))
}

/// Maps an IO error onto the port's error: the log is unavailable, the caller may retry.
pub(crate) fn io_error(context: &str, e: std::io::Error) -> Error {
    Error::Unavailable(format!("{context}: {e}"))
}

/// Topic and group names: `[A-Za-z0-9._-]{1,200}`, and not `.` or `..` (they become paths).
fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = (1..=200).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid {what} name {name:?}: expected 1 to 200 of [A-Za-z0-9._-]"
        )))
    }
}

/// Runs blocking work off the async executor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("blocking task failed: {e}")))?
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        validate_name("topic", topic)?;
        if let Some(n) = self.partitions(topic) {
            return Ok(n);
        }
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(Error::Invalid(format!(
                "a topic needs 1 to {MAX_PARTITIONS} partitions, not {partitions}"
            )));
        }
        let (root, name) = (self.dir.clone(), topic.to_string());
        let (topics, create_lock) = (self.topics.clone(), self.create_lock.clone());
        blocking(move || {
            let _creating = create_lock.lock();
            if let Some(existing) = topics.read().get(&name) {
                return Ok(existing.partitions.len() as u32);
            }
            let created = create_topic(&root, &name, partitions)?;
            tracing::info!(topic = name, partitions, "created topic");
            topics.write().insert(name, Arc::new(created));
            Ok(partitions)
        })
        .await
    }

    /// Appends through the writer thread, durable on return. When traces are on, the append
    /// is a `send <topic>` span whose W3C trace context goes in the record's headers
    /// ([`loyalty_core::trace::send_span`]), as with Kafka.
    async fn append(
        &self,
        topic: &str,
        key: &[u8],
        payload: Bytes,
        mut headers: Vec<(String, Bytes)>,
    ) -> Result<Appended> {
        let span = loyalty_core::trace::send_span("embedded", topic, &mut headers);
        let result = self
            .write(topic, key, payload, headers)
            .instrument(span.clone())
            .await;
        loyalty_core::trace::record_append(&span, &result);
        result
    }

    async fn end_offset(&self, topic: &str, partition: Partition) -> Result<Offset> {
        Ok(self.topic(topic)?.partition(partition)?.end_offset())
    }

    async fn subscribe(&self, group: &str, topic: &str) -> Result<Box<dyn LogConsumer>> {
        validate_name("group", group)?;
        let topic = self.topic(topic)?;
        let key = (group.to_string(), topic.name.clone());
        let existing = self.groups.lock().get(&key).cloned();
        let group = match existing {
            Some(g) => g,
            None => {
                let (name, t) = (group.to_string(), topic.clone());
                let (poll, max_bytes) = (self.config.poll_interval, self.config.max_read_bytes);
                let loaded = blocking(move || Group::load(&name, t, poll, max_bytes)).await?;
                // Another subscriber may have loaded it meanwhile: keep the first.
                self.groups
                    .lock()
                    .entry(key)
                    .or_insert_with(|| Arc::new(loaded))
                    .clone()
            }
        };
        Ok(Box::new(group.join()))
    }
}
