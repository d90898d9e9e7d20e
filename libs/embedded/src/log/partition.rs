//! Topics, partition files and the group-commit writer.
//!
//! Each partition is one append-only file. Only the writer thread writes to it; readers use
//! positional reads of the same file handle. A record becomes visible (its position is published
//! in the index, `end_offset` counts it, consumers are woken) only after the journal's
//! `fdatasync` that made it durable (`super::journal`): a reader never sees a record a crash
//! could take back.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use loyalty_core::ports::{Appended, Offset, Partition, Record};
use loyalty_core::{Error, Result};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use super::frame;
use super::io_error;
use super::journal::{Entry, Journal};

/// One topic: its partitions and the signal that wakes its consumers.
pub(crate) struct Topic {
    pub name: String,
    pub dir: PathBuf,
    pub partitions: Vec<Arc<PartitionLog>>,
    /// Bumped after every durable batch that touched the topic; consumers wait on it.
    pub changes: Arc<watch::Sender<u64>>,
}

impl Topic {
    /// The partition `partition`, or `Error::Invalid` if the topic has no such partition.
    pub fn partition(&self, partition: Partition) -> Result<&Arc<PartitionLog>> {
        self.partitions.get(partition as usize).ok_or_else(|| {
            Error::Invalid(format!(
                "topic {} has {} partitions, no partition {partition}",
                self.name,
                self.partitions.len()
            ))
        })
    }
}

/// The durable, published part of a partition.
struct Index {
    /// File position of each record, by offset.
    positions: Vec<u64>,
    /// End of the last durable record: where the next frame is written.
    end: u64,
}

/// One partition file and its in-memory index.
pub(crate) struct PartitionLog {
    pub id: Partition,
    topic: String,
    path: PathBuf,
    file: File,
    index: RwLock<Index>,
    changes: Arc<watch::Sender<u64>>,
    /// Set when a failed `fdatasync` left the file in an unknown state: the partition refuses
    /// appends until the log is reopened (and the file rescanned).
    failed: Mutex<Option<String>>,
}

/// The file name of a partition inside its topic directory.
pub(crate) fn partition_file(dir: &Path, partition: Partition) -> PathBuf {
    dir.join(format!("p{partition:05}.log"))
}

impl PartitionLog {
    /// Opens an existing partition file, scans it and cuts a torn tail.
    pub fn open(
        topic: &str,
        dir: &Path,
        id: Partition,
        changes: Arc<watch::Sender<u64>>,
    ) -> Result<PartitionLog> {
        let path = partition_file(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::Corrupt(format!(
                    "topic {topic}: partition file {} is missing",
                    path.display()
                )),
                _ => io_error(&format!("opening {}", path.display()), e),
            })?;
        let file_len = file
            .metadata()
            .map_err(|e| io_error(&format!("stat {}", path.display()), e))?
            .len();
        let scan = // Any length the file can hold is accepted: a record written under a larger
        // `max_record_bytes` must survive a reopen with a smaller one.
        frame::scan(&file, file_len, u32::MAX as usize)
            .map_err(|e| io_error(&format!("scanning {}", path.display()), e))?;
        if let Some(why) = &scan.cut {
            tracing::warn!(
                topic,
                partition = id,
                kept_records = scan.positions.len(),
                cut_bytes = file_len - scan.valid_len,
                "cutting the torn tail of a partition file: {why}"
            );
            file.set_len(scan.valid_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error(&format!("truncating {}", path.display()), e))?;
        }
        Ok(PartitionLog {
            id,
            topic: topic.to_string(),
            path,
            file,
            index: RwLock::new(Index {
                positions: scan.positions,
                end: scan.valid_len,
            }),
            changes,
            failed: Mutex::new(None),
        })
    }

    /// The topic the partition belongs to.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The offset the next record will get.
    pub fn end_offset(&self) -> Offset {
        self.index.read().positions.len() as Offset
    }

    /// Reads up to `max` records from `from` (fewer if they would exceed `max_bytes`, but at
    /// least one if there is one). Returns the records and the bytes they took on disk.
    pub fn read(&self, from: Offset, max: usize, max_bytes: usize) -> Result<(Vec<Record>, usize)> {
        let (start, stop, count) = {
            let ix = self.index.read();
            let len = ix.positions.len();
            let Ok(from_idx) = usize::try_from(from) else {
                return Ok((Vec::new(), 0));
            };
            if from_idx >= len || max == 0 {
                return Ok((Vec::new(), 0));
            }
            let end_of = |i: usize| ix.positions.get(i).copied().unwrap_or(ix.end);
            let start = ix.positions[from_idx];
            let mut to = len.min(from_idx.saturating_add(max));
            if end_of(to) - start > max_bytes as u64 {
                // Largest `to` in (from_idx, to] whose bytes fit, but at least one record.
                let (mut lo, mut hi) = (from_idx + 1, to);
                while lo < hi {
                    let mid = (lo + hi).div_ceil(2);
                    if end_of(mid) - start <= max_bytes as u64 {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                to = lo;
            }
            (start, end_of(to), to - from_idx)
        };
        let size = usize::try_from(stop - start)
            .map_err(|_| Error::Corrupt(format!("{}: read too large", self.path.display())))?;
        let mut buf = vec![0u8; size];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(|e| io_error(&format!("reading {}", self.path.display()), e))?;
        let records =
            frame::decode_frames(Bytes::from(buf), self.id, from, count).map_err(|e| match e {
                Error::Corrupt(why) => Error::Corrupt(format!("topic {}: {why}", self.topic)),
                other => other,
            })?;
        Ok((records, size))
    }
}

/// One append waiting for the writer.
pub(crate) struct AppendRequest {
    pub partition: Arc<PartitionLog>,
    /// The encoded frame (header included).
    pub frame: Vec<u8>,
    pub ack: oneshot::Sender<Result<Appended>>,
}

/// Limits of one group commit.
#[derive(Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// The writer thread: takes every append waiting in the queue (up to the batch limits), writes
/// each partition's share with one positional write, makes the whole group durable with one
/// journal write and one `fdatasync` (see [`super::journal`]), publishes the new records and
/// only then acknowledges every appender. Appends that arrive while a batch is being synced
/// wait in the queue and form the next batch, so the cost of a sync is shared by every
/// concurrent appender (group commit). Checkpoints run between batches, and once more when
/// the queue closes.
pub(crate) fn run_writer(
    queue: mpsc::Receiver<AppendRequest>,
    limits: BatchLimits,
    mut journal: Journal,
) {
    let syncers = Syncers::start(SYNC_THREADS);
    let mut batch: Vec<AppendRequest> = Vec::new();
    loop {
        let first = match queue.recv_timeout(journal.idle_wait()) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if journal.checkpoint_due(true) {
                    journal.checkpoint(&syncers);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut bytes = first.frame.len();
        batch.push(first);
        while batch.len() < limits.max_records && bytes < limits.max_bytes {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.frame.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        commit_batch(&mut batch, &mut journal);
        if journal.checkpoint_due(false) {
            journal.checkpoint(&syncers);
        }
    }
    journal.checkpoint(&syncers);
    tracing::debug!("embedded log writer stopped");
}

/// Threads syncing the partition files of one group commit.
const SYNC_THREADS: usize = 8;

type SyncJob = (
    Arc<PartitionLog>,
    usize,
    mpsc::Sender<(usize, std::io::Result<()>)>,
);

/// Threads that `fdatasync` the files of a group commit concurrently, so that a batch that
/// touched many partitions waits for about the slowest flush rather than for all of them in a
/// row (the filesystem's journal and the disk merge concurrent flushes).
pub(crate) struct Syncers {
    jobs: Option<mpsc::Sender<SyncJob>>,
}

impl Syncers {
    fn start(threads: usize) -> Syncers {
        let (tx, rx) = mpsc::channel::<SyncJob>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("embedded-log-sync-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().recv();
                    let Ok((part, i, done)) = job else { return };
                    let _ = done.send((i, part.file.sync_data()));
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        // Without helper threads every file is synced by the writer itself.
        Syncers {
            jobs: (started > 0).then_some(tx),
        }
    }

    /// Syncs every file, concurrently when there are several; results in the same order.
    pub(crate) fn sync_all<'a>(
        &self,
        parts: impl ExactSizeIterator<Item = &'a Arc<PartitionLog>>,
    ) -> Vec<std::io::Result<()>> {
        let n = parts.len();
        let Some(jobs) = self.jobs.as_ref().filter(|_| n > 1) else {
            return parts.map(|p| p.file.sync_data()).collect();
        };
        let (done_tx, done_rx) = mpsc::channel();
        let mut results: Vec<Option<std::io::Result<()>>> = (0..n).map(|_| None).collect();
        for (i, part) in parts.enumerate() {
            if let Err(mpsc::SendError((part, i, _))) =
                jobs.send((Arc::clone(part), i, done_tx.clone()))
            {
                results[i] = Some(part.file.sync_data());
            }
        }
        drop(done_tx);
        while let Ok((i, r)) = done_rx.recv() {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(std::io::Error::other("sync thread stopped"))))
            .collect()
    }
}

/// The appends of one batch that go to one partition, in arrival order.
struct Share {
    partition: Arc<PartitionLog>,
    requests: Vec<AppendRequest>,
}

fn commit_batch(batch: &mut Vec<AppendRequest>, journal: &mut Journal) {
    let mut shares: Vec<Share> = Vec::new();
    let mut by_partition: HashMap<*const PartitionLog, usize> = HashMap::new();
    for request in batch.drain(..) {
        let key = Arc::as_ptr(&request.partition);
        let slot = *by_partition.entry(key).or_insert_with(|| {
            shares.push(Share {
                partition: request.partition.clone(),
                requests: Vec::new(),
            });
            shares.len() - 1
        });
        shares[slot].requests.push(request);
    }

    // Write every share, then make them all durable in the journal, then publish and
    // acknowledge.
    if let Some(why) = journal.failed().map(str::to_string) {
        for share in shares {
            fail(share.requests, &why);
        }
        return;
    }
    let mut written = Vec::with_capacity(shares.len());
    for share in shares {
        let part = &share.partition;
        if let Some(why) = part.failed.lock().clone() {
            fail(share.requests, &why);
            continue;
        }
        let (base, start) = {
            let ix = part.index.read();
            (ix.positions.len() as Offset, ix.end)
        };
        let total: usize = share.requests.iter().map(|r| r.frame.len()).sum();
        let mut buf = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(share.requests.len());
        for request in &share.requests {
            positions.push(start + buf.len() as u64);
            buf.extend_from_slice(&request.frame);
        }
        match part.file.write_all_at(&buf, start) {
            Ok(()) => written.push(Written {
                share,
                base,
                start,
                positions,
                buf,
            }),
            Err(e) => {
                let why = format!("writing {}: {e}", part.path.display());
                tracing::error!(topic = part.topic, partition = part.id, "{why}");
                roll_back(part, start);
                fail(share.requests, &why);
            }
        }
    }
    if written.is_empty() {
        return;
    }
    let entries: Vec<Entry<'_>> = written
        .iter()
        .map(|w| Entry {
            partition: &w.share.partition,
            position: w.start,
            bytes: &w.buf,
        })
        .collect();
    let durable = journal.commit(&entries);
    drop(entries);
    for w in written {
        let part = &w.share.partition;
        if let Err(why) = &durable {
            // Not acknowledged: cut what this batch wrote (the next batch writes there again).
            roll_back(part, w.start);
            fail(w.share.requests, why);
            continue;
        }
        {
            let mut ix = part.index.write();
            ix.positions.extend_from_slice(&w.positions);
            ix.end = w.start + w.buf.len() as u64;
        }
        part.changes.send_modify(|v| *v = v.wrapping_add(1));
        for (i, request) in w.share.requests.into_iter().enumerate() {
            // The appender may have given up waiting; the record is durable all the same.
            let _ = request.ack.send(Ok(Appended {
                partition: part.id,
                offset: w.base + i as Offset,
            }));
        }
    }
}

/// A share written to its partition file, waiting for the journal's sync.
struct Written {
    share: Share,
    /// The offset of its first record.
    base: Offset,
    /// Where it starts in the file.
    start: u64,
    /// The position of each of its records.
    positions: Vec<u64>,
    /// What was written.
    buf: Vec<u8>,
}

/// Cuts the file back to `len` after a failed write; fences the partition if even that fails.
fn roll_back(part: &PartitionLog, len: u64) {
    if let Err(e) = part.file.set_len(len) {
        let why = format!(
            "truncating {} after a failed write: {e}",
            part.path.display()
        );
        tracing::error!(topic = part.topic, partition = part.id, "{why}");
        *part.failed.lock() = Some(why);
    }
}

fn fail(requests: Vec<AppendRequest>, why: &str) {
    for request in requests {
        let _ = request.ack.send(Err(Error::Unavailable(why.to_string())));
    }
}
