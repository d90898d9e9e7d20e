//! POS ingestion: a consumer of the POS topic (`docs/pos-topic.md`) that turns each record
//! into its command and appends it to the command topic, keyed by the member, for the engine
//! to apply like any command from the gateway.
//!
//! It is a member of its own consumer group (`loyalty-pos-ingest`) through the [`EventLog`]
//! port, so it runs on the embedded log and on Kafka alike, in every process that runs an
//! engine: the POS topic's partitions are shared among them.
//!
//! For each poll: every record is decoded and checked ([`pos_topic::decode`]); a valid one is
//! appended to the command topic, a refused one to the POS dead-letter topic with the headers
//! `dlq-reason`, `dlq-detail` and `dlq-source` (`topic/partition/offset`) after the record's
//! own; only once every append of the poll is durable are its offsets committed. The commands
//! of one member keep their order (one member's appends are made one after the other, and a
//! poll's before the next poll's); different members are appended concurrently.
//!
//! **Exactly once** follows from the engine's idempotency: after a crash or a rebalance the
//! records past the committed offset are read and appended again, with the same event id and
//! the same fingerprint (which leaves out what ingestion adds: the arrival time, the program
//! version, the request id), so the engine treats the copy as a replay.
//!
//! Transient errors (a store read, an append) are retried with a capped exponential backoff,
//! counted in `loyalty_pos_retries_total`; permanent ones dead-letter the record with reason
//! `internal`. On revocation nothing is in flight (a poll is committed before the next one is
//! taken), so the partitions are let go at once. Logs name partitions, offsets, reasons and
//! ids, never a payload (which holds phone numbers).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tracing::Instrument;

use crate::command::CommandEnvelope;
use crate::metrics::metrics;
use crate::ports::{ConsumerEvent, EventLog, LogConsumer, Partition, Record, StateStore};
use crate::pos_topic::{self, Limits, Reason, Rejected, StoreDirectory};
use crate::provisioning::now;
use crate::{Error, Result};

/// Settings of POS ingestion.
#[derive(Clone, Debug)]
pub struct PosIngestConfig {
    /// The POS topic read.
    pub topic: String,
    /// Where refused records go, with the reason in headers.
    pub dead_letter_topic: String,
    /// The command topic the engine consumes.
    pub command_topic: String,
    /// The consumer group of the ingesters.
    pub group: String,
    /// Most records taken in one poll.
    pub max_batch: usize,
    /// The largest payload accepted.
    pub max_record_bytes: usize,
    /// First wait after a transient error; doubled on each retry up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Seals the personal values of the commands it appends (README "Personal data at rest").
    pub keys: crate::sealing::KeyRing,
}

impl Default for PosIngestConfig {
    fn default() -> Self {
        PosIngestConfig {
            topic: "pos-events".into(),
            dead_letter_topic: "pos-events-dlq".into(),
            command_topic: "pos-commands".into(),
            group: "loyalty-pos-ingest".into(),
            max_batch: 512,
            max_record_bytes: pos_topic::DEFAULT_MAX_RECORD_BYTES,
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_secs(5),
            keys: crate::sealing::KeyRing::dev(),
        }
    }
}

/// A POS ingester: what it reads, where it writes, what it checks records against.
pub struct PosIngest {
    pub log: Arc<dyn EventLog>,
    pub config: PosIngestConfig,
    directory: StoreDirectory,
}

/// Longest `dlq-detail` kept.
const MAX_DETAIL: usize = 512;

fn transient(e: &Error) -> bool {
    matches!(e, Error::Unavailable(_) | Error::Conflict(_))
}

/// Waits `delay` (then doubles it, up to `max`), or returns `ShuttingDown` if asked to stop.
async fn back_off(
    delay: &mut Duration,
    max: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()> {
    if *shutdown.borrow() {
        return Err(Error::ShuttingDown);
    }
    tokio::select! {
        _ = tokio::time::sleep(*delay) => {}
        _ = shutdown.changed() => return Err(Error::ShuttingDown),
    }
    *delay = (*delay * 2).min(max);
    Ok(())
}

impl PosIngest {
    pub fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn StateStore>,
        config: PosIngestConfig,
    ) -> Self {
        PosIngest {
            log,
            config,
            directory: StoreDirectory::new(store),
        }
    }

    /// Runs until `shutdown` turns true: joins the group, then forwards and dead-letters the
    /// records of its partitions. Fails only if the topic cannot be subscribed to for a
    /// permanent reason (it does not exist).
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<()> {
        let span = tracing::info_span!(
            "pos_ingest",
            topic = %self.config.topic,
            group = %self.config.group
        );
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut delay = self.config.retry_min;
        let consumer = loop {
            match self
                .log
                .subscribe(&self.config.group, &self.config.topic)
                .await
            {
                Ok(c) => break c,
                Err(e) if transient(&e) => {
                    tracing::warn!(error = %e, "cannot join the POS ingestion group; retrying");
                    metrics()
                        .pos_retries
                        .with_label_values(&["subscribe"])
                        .inc();
                    if back_off(&mut delay, self.config.retry_max, &mut shutdown)
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        };
        tracing::info!(
            dead_letter_topic = %self.config.dead_letter_topic,
            command_topic = %self.config.command_topic,
            "POS ingestion started"
        );
        loop {
            if *shutdown.borrow() {
                break;
            }
            let event = tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                ev = consumer.next(self.config.max_batch) => ev,
            };
            match event {
                Ok(ConsumerEvent::Assigned(ps)) => {
                    tracing::info!(partitions = ?ps, "POS partitions assigned");
                }
                Ok(ConsumerEvent::Revoked { partitions, done }) => {
                    // Every poll is committed before the next one is taken: nothing is in
                    // flight here.
                    tracing::info!(partitions = ?partitions, "POS partitions revoked");
                    let _ = done.send(());
                }
                Ok(ConsumerEvent::Records(records)) => {
                    if records.is_empty() {
                        continue;
                    }
                    let timer = metrics().pos_batch_seconds.start_timer();
                    let span = tracing::debug_span!("pos_batch", records = records.len());
                    let handled = self
                        .handle(consumer.as_ref(), records, &mut shutdown)
                        .instrument(span)
                        .await;
                    timer.observe_duration();
                    if let Err(Error::ShuttingDown) = handled {
                        break;
                    }
                }
                Err(Error::ShuttingDown) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "POS poll failed");
                    let mut d = self.config.retry_min;
                    if back_off(&mut d, self.config.retry_max, &mut shutdown)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        if let Err(e) = consumer.close().await {
            tracing::warn!(error = %e, "leaving the POS ingestion group");
        }
        tracing::info!("POS ingestion stopped");
        Ok(())
    }

    /// One poll: decide every record, append them all (durably), then commit. `ShuttingDown`
    /// leaves the poll uncommitted: it is read again after a restart (and replayed).
    async fn handle(
        &self,
        consumer: &dyn LogConsumer,
        records: Vec<Record>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let mut forwards: Vec<(CommandEnvelope, &Record)> = Vec::new();
        let mut dead: Vec<(Rejected, &Record)> = Vec::new();
        for r in &records {
            match self.decide(r, shutdown).await? {
                Ok(env) => {
                    self.directory.forwarded(&env);
                    forwards.push((env, r));
                }
                Err(rej) => dead.push((rej, r)),
            }
        }

        // One chain of appends per member, in record order; chains run concurrently.
        let mut chains: Vec<Vec<(CommandEnvelope, &Record)>> = Vec::new();
        let mut chain_of: HashMap<Vec<u8>, usize> = HashMap::new();
        for (env, r) in forwards {
            let i = *chain_of.entry(env.key()).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[i].push((env, r));
        }
        let forwarded = chains.iter().map(Vec::len).sum::<usize>();
        let results = join_all(chains.into_iter().map(|chain| {
            let mut shutdown = shutdown.clone();
            async move {
                let mut refused = Vec::new();
                for (env, r) in chain {
                    if let Some(rej) = self.forward(&env, r, &mut shutdown).await? {
                        refused.push((rej, r));
                    }
                }
                Ok::<_, Error>(refused)
            }
        }))
        .await;
        let mut refused_by_log = 0;
        for result in results {
            let refused = result?;
            refused_by_log += refused.len();
            dead.extend(refused);
        }
        let dead_count = dead.len();
        let results = join_all(dead.into_iter().map(|(rej, r)| {
            let mut shutdown = shutdown.clone();
            async move { self.dead_letter(rej, r, &mut shutdown).await }
        }))
        .await;
        for result in results {
            result?;
        }
        metrics()
            .pos_records
            .with_label_values(&["forwarded"])
            .inc_by((forwarded - refused_by_log) as u64);
        metrics()
            .pos_records
            .with_label_values(&["dead-lettered"])
            .inc_by(dead_count as u64);

        // Everything of the poll is durable in the log: commit.
        let mut next: BTreeMap<Partition, u64> = BTreeMap::new();
        for r in &records {
            let e = next.entry(r.partition).or_insert(r.offset + 1);
            *e = (*e).max(r.offset + 1);
        }
        for (partition, offset) in next {
            match consumer.commit(partition, offset).await {
                Ok(()) => {}
                Err(Error::Conflict(e)) => {
                    // The partition moved during the poll: its new owner reads these records
                    // again, and the engine finds the copies to be replays.
                    tracing::info!(partition, error = %e, "POS offset not committed (partition moved)");
                }
                Err(e) => {
                    metrics().pos_retries.with_label_values(&["commit"]).inc();
                    tracing::warn!(partition, error = %e, "POS offset commit failed; the records will be read again");
                }
            }
        }
        Ok(())
    }

    /// Decodes one record, retrying while the store is unavailable: the command to forward, or
    /// why the record is dead-lettered.
    async fn decide(
        &self,
        r: &Record,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Result<CommandEnvelope, Rejected>> {
        let limits = Limits {
            max_record_bytes: self.config.max_record_bytes,
        };
        let mut delay = self.config.retry_min;
        loop {
            match pos_topic::decode(&self.directory, &r.payload, &r.headers, limits, now()).await {
                Ok(Ok(mut env)) => {
                    env.request_id = Some(self.source(r));
                    return Ok(Ok(env));
                }
                Ok(Err(rej)) => return Ok(Err(rej)),
                Err(Error::ShuttingDown) => return Err(Error::ShuttingDown),
                Err(e) if transient(&e) => {
                    metrics().pos_retries.with_label_values(&["lookup"]).inc();
                    tracing::warn!(partition = r.partition, offset = r.offset, error = %e, "POS record lookup failed; retrying");
                    back_off(&mut delay, self.config.retry_max, shutdown).await?;
                }
                Err(e) => return Ok(Err(Rejected::new(Reason::Internal, e.to_string()))),
            }
        }
    }

    /// `topic/partition/offset` of a record.
    fn source(&self, r: &Record) -> String {
        format!("{}/{}/{}", self.config.topic, r.partition, r.offset)
    }

    /// Appends the command until the log has it durably; `Some` if the log refuses it for good.
    async fn forward(
        &self,
        env: &CommandEnvelope,
        r: &Record,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Rejected>> {
        let payload = match env.encode(&self.config.keys) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Some(Rejected::new(
                    Reason::Internal,
                    format!("the command cannot be encoded: {e}"),
                )))
            }
        };
        let mut delay = self.config.retry_min;
        loop {
            let timer = metrics().log_append_seconds.start_timer();
            let result = self
                .log
                .append(
                    &self.config.command_topic,
                    &env.key(),
                    payload.clone(),
                    Vec::new(),
                )
                .await;
            match result {
                Ok(at) => {
                    timer.observe_duration();
                    tracing::debug!(
                        partition = r.partition,
                        offset = r.offset,
                        franchise = %env.franchise_id,
                        store = %env.store_id,
                        event = %env.event_id,
                        kind = env.command.kind(),
                        command_partition = at.partition,
                        "POS record forwarded"
                    );
                    return Ok(None);
                }
                Err(Error::ShuttingDown) => return Err(Error::ShuttingDown),
                Err(e) if transient(&e) => {
                    metrics().pos_retries.with_label_values(&["append"]).inc();
                    tracing::warn!(partition = r.partition, offset = r.offset, error = %e, "appending a POS command failed; retrying");
                    back_off(&mut delay, self.config.retry_max, shutdown).await?;
                }
                Err(e) => {
                    return Ok(Some(Rejected::new(
                        Reason::Internal,
                        format!("the command topic refused the command: {e}"),
                    )))
                }
            }
        }
    }

    /// Appends the record to the dead-letter topic with its reason, until the log has it.
    async fn dead_letter(
        &self,
        rej: Rejected,
        r: &Record,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let code = rej.reason.code();
        metrics().pos_dead_letters.with_label_values(&[code]).inc();
        // The detail names fields, not their values; the payload itself is never logged.
        tracing::warn!(
            partition = r.partition,
            offset = r.offset,
            reason = code,
            "POS record dead-lettered"
        );
        let mut detail = rej.detail;
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        let headers = crate::dead_letters::headers(r, &self.config.topic, code, detail);
        let mut delay = self.config.retry_min;
        loop {
            match self
                .log
                .append(
                    &self.config.dead_letter_topic,
                    &r.key,
                    r.payload.clone(),
                    headers.clone(),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(Error::ShuttingDown) => return Err(Error::ShuttingDown),
                Err(e) if transient(&e) => {
                    metrics()
                        .pos_retries
                        .with_label_values(&["dead-letter"])
                        .inc();
                    tracing::warn!(partition = r.partition, offset = r.offset, error = %e, "POS dead-letter append failed; retrying");
                    back_off(&mut delay, self.config.retry_max, shutdown).await?;
                }
                Err(e) => {
                    // Nothing more can be done with it; say so loudly rather than block.
                    tracing::error!(partition = r.partition, offset = r.offset, reason = code, error = %e, "the POS dead-letter topic refused a record; it is dropped");
                    return Ok(());
                }
            }
        }
    }
}
