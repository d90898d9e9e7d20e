//! Replaying a dead-letter topic: every dead letter not replayed yet is appended again, with
//! its key, payload and original headers, to the topic it came from (its `dlq-source` header),
//! after the cause was fixed (a program version written, a bug fixed in a new release).
//!
//! Replaying is safe at any time: a command carries its event id, so one that was applied
//! after all is answered as a replay and changes nothing, and one that is still bad is
//! dead-lettered again with its reason. Progress is a consumer group of its own on the
//! dead-letter topic ([`REPLAY_GROUP`]), committed after each batch is appended: a second run
//! replays only what arrived since, and a run stopped half-way resumes where it stopped. Dead
//! letters of other reasons than the one asked for are passed over (and not replayed by a later
//! run either: replay a reason before passing over it).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;

use crate::ports::{ConsumerEvent, EventLog, LogConsumer, Offset, Partition, Record};
use crate::{Error, Result};

/// A dead letter's headers after the record's own: why it was refused, in detail, and where
/// it was read (`<topic>/<partition>/<offset>`).
pub const REASON: &str = "dlq-reason";
pub const DETAIL: &str = "dlq-detail";
pub const SOURCE: &str = "dlq-source";

/// The headers of the dead letter of `record`, read at `topic`: the record's own, then
/// [`REASON`], [`DETAIL`] and [`SOURCE`]. What the engine and the POS ingester append, and
/// what [`replay`] reads back.
pub fn headers(record: &Record, topic: &str, reason: &str, detail: String) -> Vec<(String, Bytes)> {
    let mut headers = record.headers.clone();
    headers.push((REASON.into(), Bytes::copy_from_slice(reason.as_bytes())));
    headers.push((DETAIL.into(), Bytes::from(detail)));
    headers.push((
        SOURCE.into(),
        Bytes::from(format!("{topic}/{}/{}", record.partition, record.offset)),
    ));
    headers
}

/// The consumer group whose committed offsets say what was replayed.
pub const REPLAY_GROUP: &str = "loyalty-dead-letter-replay";

/// How long the replay waits for records it knows exist before it gives up.
const STALL: Duration = Duration::from_secs(30);

/// What to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Only dead letters of this reason (`unknown-program`, `undecodable`, ...); others are
    /// passed over.
    pub reason: Option<String>,
    /// Count what would be replayed, append and commit nothing.
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters read, by reason.
    pub read: BTreeMap<String, u64>,
    /// Appended again (or, in a dry run, that would be), by reason.
    pub replayed: BTreeMap<String, u64>,
}

impl ReplayReport {
    pub fn total_replayed(&self) -> u64 {
        self.replayed.values().sum()
    }
}

fn header<'a>(r: &'a Record, name: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_ref())
}

/// The topic a dead letter came from (`dlq-source` is `<topic>/<partition>/<offset>`).
fn source_topic(r: &Record) -> Result<String> {
    let source = header(r, SOURCE)
        .and_then(|v| std::str::from_utf8(v).ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "dead letter at offset {} of partition {} has no {SOURCE} header",
                r.offset, r.partition
            ))
        })?;
    match source.rsplitn(3, '/').nth(2) {
        Some(topic) if !topic.is_empty() => Ok(topic.to_string()),
        _ => Err(Error::Invalid(format!(
            "dlq-source {source:?} names no topic"
        ))),
    }
}

/// Replays `dead_letter_topic` (see the module's docs) up to its end as it was when the
/// replay started.
pub async fn replay(
    log: &dyn EventLog,
    dead_letter_topic: &str,
    options: &ReplayOptions,
) -> Result<ReplayReport> {
    let partitions = log.ensure_topic(dead_letter_topic, 1).await?;
    let mut end: HashMap<Partition, Offset> = HashMap::new();
    for p in 0..partitions {
        end.insert(p, log.end_offset(dead_letter_topic, p).await?);
    }
    let consumer = log.subscribe(REPLAY_GROUP, dead_letter_topic).await?;
    let result = replay_from(log, consumer.as_ref(), &end, options).await;
    consumer.close().await?;
    result
}

async fn replay_from(
    log: &dyn EventLog,
    consumer: &dyn LogConsumer,
    end: &HashMap<Partition, Offset>,
    options: &ReplayOptions,
) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    // Where each partition stands: the next offset to read.
    let mut next: HashMap<Partition, Offset> = HashMap::new();
    let mut last_progress = tokio::time::Instant::now();
    loop {
        let done = end
            .iter()
            .all(|(p, e)| *e == 0 || next.get(p).is_some_and(|n| n >= e));
        if done {
            return Ok(report);
        }
        if last_progress.elapsed() > STALL {
            return Err(Error::Unavailable(format!(
                "dead-letter replay: no record for {} s before the topic's end",
                STALL.as_secs()
            )));
        }
        match consumer.next(500).await? {
            ConsumerEvent::Assigned(parts) => {
                for p in parts {
                    let at = consumer.committed(p).await?.unwrap_or(0);
                    next.insert(p, at);
                }
                last_progress = tokio::time::Instant::now();
            }
            ConsumerEvent::Revoked { partitions, done } => {
                for p in partitions {
                    next.remove(&p);
                }
                let _ = done.send(());
            }
            ConsumerEvent::Records(records) if !records.is_empty() => {
                last_progress = tokio::time::Instant::now();
                replay_batch(
                    log,
                    consumer,
                    &records,
                    end,
                    options,
                    &mut report,
                    &mut next,
                )
                .await?;
            }
            ConsumerEvent::Records(_) => {}
        }
    }
}

/// Appends again each record of `records` below its partition's end (and of the reason
/// asked), then commits past them.
async fn replay_batch(
    log: &dyn EventLog,
    consumer: &dyn LogConsumer,
    records: &[Record],
    end: &HashMap<Partition, Offset>,
    options: &ReplayOptions,
    report: &mut ReplayReport,
    next: &mut HashMap<Partition, Offset>,
) -> Result<()> {
    let mut commit: HashMap<Partition, Offset> = HashMap::new();
    for r in records {
        if end.get(&r.partition).is_none_or(|e| r.offset >= *e) {
            continue;
        }
        let reason = header(r, REASON)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "unknown".into());
        *report.read.entry(reason.clone()).or_default() += 1;
        if options.reason.as_ref().is_none_or(|want| *want == reason) {
            if !options.dry_run {
                let headers = r
                    .headers
                    .iter()
                    .filter(|(n, _)| ![REASON, DETAIL, SOURCE].contains(&n.as_str()))
                    .cloned()
                    .collect();
                log.append(&source_topic(r)?, &r.key, r.payload.clone(), headers)
                    .await?;
            }
            *report.replayed.entry(reason).or_default() += 1;
        }
        commit.insert(r.partition, r.offset + 1);
        next.insert(r.partition, r.offset + 1);
    }
    if !options.dry_run {
        for (p, offset) in commit {
            consumer.commit(p, offset).await?;
        }
    }
    Ok(())
}
