//! The Kafka adapter of the event log port ([`EventLog`] / [`LogConsumer`]), on `rdkafka`
//! (librdkafka, built from source by its own configure/make: no cmake needed).
//!
//! It keeps the semantics of the embedded log (`loyalty-embedded`), so the engine cannot tell
//! them apart:
//! - **Partitioning**: every record is produced to an explicit partition chosen by
//!   [`partition_for`] (FNV-1a of the key), never by librdkafka's partitioner, so the embedded
//!   log and Kafka put a key on the same partition.
//! - **Durable on return**: [`KafkaLog::append`] returns once the broker acknowledged the
//!   record with `acks=all` from an idempotent producer (`enable.idempotence=true`): a retried
//!   send is never written twice, and records of a partition keep their order.
//! - **Consumer groups**: [`KafkaConsumer`] (see its docs): eager rebalancing, a revocation that
//!   waits for the engine's `done`, manual commits only, commits fenced by ownership.
//!
//! # Known traps, and the setting that handles each
//! - *The offset store records an offset before processing.* With the defaults
//!   (`enable.auto.commit=true`, `enable.auto.offset.store=true`) librdkafka stores the offset
//!   of a message as soon as `poll` returns it and commits it in the background: a crash after
//!   the commit and before the effect is durable loses the record. This adapter sets
//!   `enable.auto.commit=false` and `enable.auto.offset.store=false` and only commits what the
//!   engine passes to [`LogConsumer::commit`], after its effects are durable.
//! - *A revocation handler that only signals.* If the rebalance callback returned right after
//!   telling the engine, librdkafka would unassign at once and the new owner could start from an
//!   offset the old owner had not committed yet (double processing, or a commit by a node that
//!   no longer owns the partition). Here the callback blocks the poll thread until the engine
//!   sends `done` (or [`KafkaConfig::revoke_timeout`] passes), as quickwit's Kafka source does;
//!   the broker does not complete the rebalance before this member rejoins, so the other members
//!   get the partitions only after `done`.
//! - *`max.poll.interval.ms` exceeded.* A consumer that does not call `poll` within
//!   `max.poll.interval.ms` is silently removed from the group (its partitions move, its commits
//!   fail). Here a dedicated thread polls all the time, whatever the engine's pace: records go
//!   to a bounded buffer, and when it is full the thread pauses the assigned partitions (and
//!   keeps polling) instead of blocking; the only long wait inside `poll` is the revocation
//!   wait, bounded by `revoke_timeout`, which must be below `max_poll_interval` (checked by
//!   [`KafkaConfig::validate`]).
//! - *Needless rebalances on rolling restarts.* Set [`KafkaConfig::group_instance_id`] (static
//!   membership, `group.instance.id`, unique per node and stable across restarts): a node that
//!   restarts within `session_timeout` gets its partitions back without a rebalance. The flip
//!   side: a statically-identified consumer that closes does not leave the group, its
//!   partitions move only after `session_timeout`.
//! - *Cooperative rebalancing.* The engine's contract is "revoke all, then assign"; the adapter
//!   pins `partition.assignment.strategy=range,roundrobin` (eager). `cooperative-sticky` in
//!   [`KafkaConfig::extra`] is refused.
//!
//! # Against tansu 0.6.0
//! Apache Kafka cannot be installed on these machines; `tests/kafka_log.rs` runs against a real
//! tansu 0.6.0 broker (`scripts/install-tansu.sh`, SQLite storage). Checked to work there:
//! - topic creation through the admin API (a second create answers `TopicAlreadyExists`), the
//!   partition count from the metadata;
//! - the idempotent producer (`enable.idempotence=true`, `acks=all`), explicit partitions,
//!   headers (binary values included), the high watermark (`ListOffsets`);
//! - a consumer group: 6 partitions split 3/3 by the eager range assignor; the revocation
//!   blocks the rebalance until `done` (the second member is assigned only after it); a commit
//!   during the pending revocation is accepted; `OffsetFetch`; a new member resumes at the
//!   committed offsets; a member that closes or is dropped leaves (LeaveGroup) and the survivor
//!   gets all 6, reading nothing again past the committed offsets;
//! - pause/resume of the assignment under back-pressure (a 4-record buffer, 200 records, none
//!   lost or reordered);
//! - records and committed offsets kept across a SIGKILL of the broker.
//!
//! Not handled by tansu 0.6.0, worked around here: a member killed with SIGKILL is expired
//! after `session_timeout` (the survivors rejoin), but the group stays at its generation with
//! the dead member as leader and its assignment, so its partitions are never handed over. A
//! survivor that gets back exactly what it had, while the topic has other partitions, rejoins
//! with a fresh member id ([`KafkaConfig::rejoin_on_stale_assignment`]), and the coordinator
//! then assigns every partition to the live members.
//!
//! Not working reliably against tansu 0.6.0: **static membership** (`group.instance.id`). The
//! ignored probe `kafka_static_membership_probe` restarts a static member ("node-2") of a
//! two-member group. Kafka >= 2.3 (KIP-345) gives the restarted member its partitions back
//! without a rebalance. tansu: the other member is revoked 54 ms after node-2 closes
//! (`c1 revoked [0, 1] after 54.3ms`), node-2 gets its partitions back only ~6 s later (the
//! session timeout: `node-2 again: [2, 3] after 6.06s`), and in about 1 run in 4 the group does
//! not settle: a second rebalance starts right after the rejoin
//! (`assigned partitions=[2, 3]` then at once `revoking partitions=[2, 3]`) and the first member
//! is never assigned again within 45 s, or a first member sees no revocation within 20 s of a
//! second static member joining. So with tansu leave [`KafkaConfig::group_instance_id`] unset;
//! the setting is passed through for a real Kafka, where it is the fix for rolling restarts.
//!
//! Where the time of a handoff after a SIGKILL goes on tansu 0.6.0 (its coordinator,
//! `tansu-broker/src/coordinator/group/administrator.rs`, and engine logs of 2026-12-01):
//! - tansu checks for silent members only when a live one calls it (heartbeat, join, sync,
//!   leave): the dead member is expired at the first heartbeat of a survivor after its last
//!   contact + `session_timeout`, so up to one [`KafkaConfig::heartbeat_interval`] late (with
//!   librdkafka's 3 s default: 12.1 s after its last heartbeat, for a 10 s session). The
//!   default here is a tenth of the session (1 s).
//! - That heartbeat answers `REBALANCE_IN_PROGRESS` to that survivor only; the group keeps its
//!   generation and assignment, and the rejoin gives the survivor back what it had.
//! - tansu holds every JoinGroup of a member that is not the group's leader for 3 s (`PAUSE_MS`,
//!   `join_follower_pause`), including when the leader is the dead member: a survivor that is
//!   not the leader learns of the stale assignment 3 s after the expiry. Only a leader's join,
//!   or a join when the group has no leader (a LeaveGroup of the leader, or of anyone while the
//!   leader is the dead member, clears it), goes through at once.
//! - So the rejoin on a stale assignment leaves the group and stays out for two heartbeats and a
//!   second (`consumer::rejoin_delay`): the other survivor learns of the new generation at its
//!   next heartbeat, joins a group without a leader, leads it alone and takes every partition at
//!   once; the member that left joins again later (a follower: 3 s) and the partitions are split
//!   once more. Measured (10 s session, 1 s heartbeat, 3 engines, one killed): the killed
//!   engine's partitions apply again 10 s + 1.3 s after the kill when the first survivor to
//!   notice leads the group, 10 s + 3.5 to 5.2 s when it does not (its own 3 s pause first).
//!   That pause is the broker's and no client setting removes it.
//!
//! Seen with dynamic membership too: when a revocation holds a rebalance for seconds, tansu
//! sometimes completes it for one member first, the other ~3 s later, and then starts another
//! rebalance at once (log: `assigned partitions=[0]` at T, the other member
//! `assigned partitions=[1]` at T+3.0 s, `revoking partitions=[0]` 3 ms later). The adapter
//! reports each as `Revoked`/`Assigned`; nothing may assume one rebalance per membership change.
//! Also not verified against tansu: the broker-side refusal of a commit from a stale
//! generation (the adapter fences commits itself, see [`KafkaConsumer`]).

mod consumer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use loyalty_core::ports::{partition_for, Appended, EventLog, LogConsumer, Offset, Partition};
use loyalty_core::{Error, Result};
use parking_lot::RwLock;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tracing::Instrument;

pub use consumer::KafkaConsumer;

/// How to reach Kafka and how the clients behave.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// `client.id` of every client this log creates (seen in broker logs and metrics).
    pub client_id: String,
    /// `group.instance.id` (static membership) for consumers; unique per engine node and stable
    /// across its restarts. `None`: dynamic membership.
    pub group_instance_id: Option<String>,
    /// `session.timeout.ms`: how long the group waits for a silent member (crashed node)
    /// before moving its partitions.
    pub session_timeout: Duration,
    /// `heartbeat.interval.ms`: how often a member tells the coordinator it is alive (and
    /// learns that a rebalance started). At most a third of `session_timeout`
    /// ([`KafkaConfig::validate`]); [`KafkaConfig::new`] takes a tenth. It bounds two delays of
    /// a handoff after a crash: the coordinator expires a silent member only when a live one
    /// heartbeats (tansu 0.6), so up to one interval after `session_timeout`; and the other
    /// members learn of the new generation at their next heartbeat.
    pub heartbeat_interval: Duration,
    /// `max.poll.interval.ms`: the longest gap between two polls before the member is evicted;
    /// also the broker's rebalance timeout (how long it waits for members to rejoin).
    pub max_poll_interval: Duration,
    /// How long a revocation waits for the engine's `done` before letting the partitions go
    /// anyway. Must be below `max_poll_interval`.
    pub revoke_timeout: Duration,
    /// How long [`LogConsumer::next`] waits before returning an empty `Records`.
    pub poll_interval: Duration,
    /// `fetch.wait.max.ms`: the longest a fetch waits at the broker for new records. It bounds
    /// the time from an append to its delivery to an idle engine, hence the latency of a
    /// checkout waiting for its effect (librdkafka's default, 500 ms, made the request-reply
    /// path wait about 300 ms on tansu; 10 ms measured 9 ms). Overridable through `extra`.
    pub fetch_wait_max: Duration,
    /// The most fetched records buffered between the poll thread and `next`; past it the
    /// assigned partitions are paused until half of it is free. Large enough (16 384 by default,
    /// a few MiB) that a burst of fetched records does not pause a consumer that keeps up: a
    /// pause and resume costs the fetcher a restart.
    pub buffer_records: usize,
    /// Timeout of admin, metadata, watermark and committed-offset requests.
    pub request_timeout: Duration,
    /// `message.timeout.ms`: how long a record may take to be acknowledged before `append`
    /// fails with `Unavailable` (it may still have been written: the caller retries with the
    /// same idempotency key).
    pub delivery_timeout: Duration,
    /// Replication factor of topics created by `ensure_topic` (3 in production, 1 for a single
    /// broker).
    pub replication_factor: i32,
    /// Leave the group and join again with a fresh member id when a rebalance hands this member
    /// back exactly the partitions it had while others of the topic remain elsewhere (at most
    /// once per this delay; `None`: never). A guard against group coordinators that expire a
    /// crashed member but keep its assignment (tansu 0.6 keeps the dead member as the group's
    /// leader, so its partitions are never handed over): the leave, and the new member joining,
    /// make the coordinator compute a fresh assignment. The member stays out for two heartbeats
    /// and a second before joining again, so that another member leads the group of the
    /// others first and takes the crashed member's partitions at once (see the crate's notes on
    /// tansu). On Apache Kafka it costs at most two extra rebalances when a member that owned
    /// nothing joins or leaves.
    pub rejoin_on_stale_assignment: Option<Duration>,
    /// Any other librdkafka property, applied to every client after the adapter's own (so they
    /// can override e.g. `heartbeat.interval.ms` or `linger.ms`; the settings the adapter's
    /// guarantees rest on are re-applied after them). They go to every client: librdkafka
    /// logs a harmless `CONFWARN` when a producer is given a consumer-only property.
    pub extra: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Defaults for `brokers`: client id `loyalty`, dynamic membership, 10 s session, 1 s
    /// heartbeat, 5 min poll interval, 60 s revocation wait.
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            client_id: "loyalty".into(),
            group_instance_id: None,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            max_poll_interval: Duration::from_secs(300),
            revoke_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
            fetch_wait_max: Duration::from_millis(10),
            buffer_records: 16_384,
            request_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            replication_factor: 1,
            rejoin_on_stale_assignment: Some(Duration::from_secs(30)),
            extra: Vec::new(),
        }
    }

    /// Checks the settings that the guarantees rest on.
    pub fn validate(&self) -> Result<()> {
        if self.brokers.trim().is_empty() {
            return Err(Error::Invalid("kafka: no brokers given".into()));
        }
        if self.session_timeout.is_zero() || self.session_timeout > Duration::from_secs(3600) {
            return Err(Error::Invalid(format!(
                "kafka: session_timeout ({:?}) must be between 1 ms and 1 h",
                self.session_timeout
            )));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 3 > self.session_timeout {
            return Err(Error::Invalid(format!(
                "kafka: heartbeat_interval ({:?}) must be above 0 and at most a third of \
                 session_timeout ({:?}), or a member that misses a heartbeat or two is evicted",
                self.heartbeat_interval, self.session_timeout
            )));
        }
        if self.session_timeout > self.max_poll_interval {
            return Err(Error::Invalid(format!(
                "kafka: session_timeout ({:?}) must not exceed max_poll_interval ({:?})",
                self.session_timeout, self.max_poll_interval
            )));
        }
        if self.revoke_timeout >= self.max_poll_interval {
            return Err(Error::Invalid(format!(
                "kafka: revoke_timeout ({:?}) must be below max_poll_interval ({:?}), or a slow \
                 revocation gets the consumer evicted",
                self.revoke_timeout, self.max_poll_interval
            )));
        }
        if self.replication_factor < 1 {
            return Err(Error::Invalid(
                "kafka: replication_factor must be >= 1".into(),
            ));
        }
        for (k, v) in &self.extra {
            if k == "partition.assignment.strategy" && v.contains("cooperative") {
                return Err(Error::Invalid(
                    "kafka: cooperative rebalancing is not supported (the engine expects eager \
                     revoke-all-then-assign)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The common client configuration, with `extra` applied.
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("socket.keepalive.enable", "true");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// The producer configuration: idempotent, `acks=all`.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client();
        c.set(
            "message.timeout.ms",
            millis(self.delivery_timeout).to_string(),
        )
        // The guarantees: set last so `extra` cannot weaken them.
        .set("enable.idempotence", "true")
        .set("acks", "all");
        c
    }

    /// The consumer configuration of group `group`: manual commits only, eager rebalancing,
    /// reading from the earliest offset when the group has no committed one.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set(
            "session.timeout.ms",
            millis(self.session_timeout).to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            millis(self.heartbeat_interval).to_string(),
        )
        .set(
            "max.poll.interval.ms",
            millis(self.max_poll_interval).to_string(),
        )
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", millis(self.fetch_wait_max).to_string());
        // `extra` after the defaults above, before the guarantees below.
        let base = self.client();
        for (k, v) in base.config_map() {
            c.set(k, v);
        }
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "range,roundrobin");
        if let Some(id) = &self.group_instance_id {
            c.set("group.instance.id", id);
        }
        c
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// Maps a client error onto the port's error: the broker is unavailable, retry later.
pub(crate) fn unavailable(context: &str, e: KafkaError) -> Error {
    Error::Unavailable(format!("kafka: {context}: {e}"))
}

/// Runs blocking librdkafka calls off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("kafka: blocking task failed: {e}")))?
}

/// The Kafka event log: one idempotent producer shared by every append, an admin client for
/// topic creation, and one consumer (with its own poll thread) per [`EventLog::subscribe`].
pub struct KafkaLog {
    config: KafkaConfig,
    producer: FutureProducer,
    producer_config: ClientConfig,
    admin: AdminClient<DefaultClientContext>,
    /// Partition counts of the topics seen so far (the count of a topic is taken as fixed:
    /// adding partitions to a live topic would move keys between partitions).
    partitions: Arc<RwLock<HashMap<String, u32>>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.config.brokers)
            .field("client_id", &self.config.client_id)
            .finish()
    }
}

impl KafkaLog {
    /// Creates the clients (no connection is made until the first request).
    pub fn new(config: KafkaConfig) -> Result<Arc<KafkaLog>> {
        config.validate()?;
        let producer_config = config.producer_config();
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| unavailable("creating the producer", e))?;
        let admin: AdminClient<DefaultClientContext> = config
            .client()
            .create()
            .map_err(|e| unavailable("creating the admin client", e))?;
        Ok(Arc::new(KafkaLog {
            config,
            producer,
            producer_config,
            admin,
            partitions: Arc::new(RwLock::new(HashMap::new())),
        }))
    }

    /// The configuration of this log.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// A property of the producer's configuration as librdkafka resolved it (e.g.
    /// `enable.idempotence`, `acks`: librdkafka reports `acks=all` as `-1`).
    pub fn producer_setting(&self, key: &str) -> Result<String> {
        self.producer_config
            .create_native_config()
            .and_then(|native| native.get(key))
            .map_err(|e| Error::Invalid(format!("kafka: producer setting {key}: {e}")))
    }

    /// The partition count of `topic` from the broker's metadata, cached.
    async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self.partitions.read().get(topic) {
            return Ok(*n);
        }
        let n = self.fetch_partition_count(topic).await?;
        self.partitions.write().insert(topic.to_string(), n);
        Ok(n)
    }

    /// Asks the broker for the partition count of `topic` (`Invalid` if it does not exist).
    async fn fetch_partition_count(&self, topic: &str) -> Result<u32> {
        let producer = self.producer.clone();
        let (name, timeout) = (topic.to_string(), self.config.request_timeout);
        blocking(move || metadata_partitions(producer.client(), &name, timeout)).await
    }

    /// The append itself: to the partition [`partition_for`] gives, once acknowledged.
    async fn produce(
        &self,
        topic: &str,
        key: &[u8],
        payload: Bytes,
        headers: Vec<(String, Bytes)>,
    ) -> Result<Appended> {
        let partitions = self.partition_count(topic).await?;
        let partition = partition_for(key, partitions);
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in &headers {
            owned = owned.insert(Header {
                key: k.as_str(),
                value: Some(v.as_ref()),
            });
        }
        let record = FutureRecord::to(topic)
            .partition(kafka_partition(partition)?)
            .key(key)
            .payload(payload.as_ref())
            .headers(owned);
        // The queue timeout covers a full local queue; delivery is bounded by message.timeout.ms.
        match self
            .producer
            .send(record, self.config.delivery_timeout)
            .await
        {
            Ok(delivery) => Ok(Appended {
                partition: delivery.partition as Partition,
                offset: u64::try_from(delivery.offset).map_err(|_| {
                    Error::Unavailable(format!(
                        "kafka: delivery to {topic} without an offset ({})",
                        delivery.offset
                    ))
                })?,
            }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                Err(Error::Invalid(format!("record too large for {topic}")))
            }
            Err((e, _)) => Err(unavailable(&format!("producing to {topic}"), e)),
        }
    }
}

/// The partition count of `topic` from a metadata request.
pub(crate) fn metadata_partitions<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<u32> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| unavailable(&format!("metadata of {topic}"), e))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(Error::Invalid(format!("unknown topic {topic:?}")));
    };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        return Err(match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                Error::Invalid(format!("unknown topic {topic:?}"))
            }
            _ => Error::Unavailable(format!("kafka: metadata of {topic}: {code}")),
        });
    }
    match t.partitions().len() {
        0 => Err(Error::Invalid(format!("unknown topic {topic:?}"))),
        n => Ok(n as u32),
    }
}

/// Kafka's partition id from ours.
pub(crate) fn kafka_partition(p: Partition) -> Result<i32> {
    i32::try_from(p).map_err(|_| Error::Invalid(format!("partition {p} out of range")))
}

#[async_trait]
impl EventLog for KafkaLog {
    /// Creates the topic through the admin API (an existing topic is fine, its partition count
    /// is kept), then reads the partition count back from the metadata, waiting for a new topic
    /// to show up there.
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        if topic.is_empty() || topic.len() > 249 {
            return Err(Error::Invalid(format!("invalid topic name {topic:?}")));
        }
        if partitions == 0 {
            return Err(Error::Invalid("a topic needs at least 1 partition".into()));
        }
        let count = i32::try_from(partitions)
            .map_err(|_| Error::Invalid(format!("{partitions} partitions is too many")))?;
        let new = NewTopic::new(
            topic,
            count,
            TopicReplication::Fixed(self.config.replication_factor),
        );
        let opts = AdminOptions::new()
            .request_timeout(Some(self.config.request_timeout))
            .operation_timeout(Some(self.config.request_timeout));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| unavailable(&format!("creating topic {topic}"), e))?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Error::Unavailable(format!(
                        "kafka: creating topic {topic}: {code}"
                    )))
                }
            }
        }
        // Metadata may lag behind the creation for a moment.
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        loop {
            match self.fetch_partition_count(topic).await {
                Ok(n) => {
                    self.partitions.write().insert(topic.to_string(), n);
                    return Ok(n);
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Produces to the partition [`partition_for`] gives (explicitly, never librdkafka's
    /// partitioner) and returns once the broker acknowledged it (`acks=all`). When traces are
    /// on, the append is a `send <topic>` span whose W3C trace context goes in the record's
    /// headers ([`loyalty_core::trace::send_span`]).
    async fn append(
        &self,
        topic: &str,
        key: &[u8],
        payload: Bytes,
        mut headers: Vec<(String, Bytes)>,
    ) -> Result<Appended> {
        let span = loyalty_core::trace::send_span("kafka", topic, &mut headers);
        let result = self
            .produce(topic, key, payload, headers)
            .instrument(span.clone())
            .await;
        loyalty_core::trace::record_append(&span, &result);
        result
    }

    /// The high watermark of the partition (the offset of the next record).
    async fn end_offset(&self, topic: &str, partition: Partition) -> Result<Offset> {
        let partitions = self.partition_count(topic).await?;
        if partition >= partitions {
            return Err(Error::Invalid(format!(
                "topic {topic} has no partition {partition}"
            )));
        }
        let p = kafka_partition(partition)?;
        let producer = self.producer.clone();
        let (name, timeout) = (topic.to_string(), self.config.request_timeout);
        blocking(move || {
            let (_, high) = producer
                .client()
                .fetch_watermarks(&name, p, timeout)
                .map_err(|e| unavailable(&format!("watermarks of {name}/{p}"), e))?;
            Ok(u64::try_from(high).unwrap_or(0))
        })
        .await
    }

    /// Starts a consumer of `group` on `topic` (a new group member with its own poll thread).
    async fn subscribe(&self, group: &str, topic: &str) -> Result<Box<dyn LogConsumer>> {
        if group.is_empty() {
            return Err(Error::Invalid("empty group name".into()));
        }
        let partitions = self.partition_count(topic).await?;
        let consumer = KafkaConsumer::start(&self.config, group, topic, partitions)?;
        Ok(Box::new(consumer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarantees_cannot_be_overridden_by_extra() {
        let mut c = KafkaConfig::new("127.0.0.1:9092");
        c.extra = vec![
            ("enable.auto.commit".into(), "true".into()),
            ("enable.auto.offset.store".into(), "true".into()),
            ("enable.idempotence".into(), "false".into()),
            ("acks".into(), "1".into()),
            ("heartbeat.interval.ms".into(), "500".into()),
        ];
        let consumer = c.consumer_config("g");
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(consumer.get("group.id"), Some("g"));
        assert_eq!(consumer.get("group.instance.id"), None);
        assert_eq!(consumer.get("heartbeat.interval.ms"), Some("500"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("10000"));
        c.extra.clear();
        assert_eq!(
            c.consumer_config("g").get("heartbeat.interval.ms"),
            Some("1000")
        );
        let producer = c.producer_config();
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));

        c.group_instance_id = Some("node-1".into());
        assert_eq!(
            c.consumer_config("g").get("group.instance.id"),
            Some("node-1")
        );
    }

    #[test]
    fn validation_catches_unsafe_settings() {
        let mut c = KafkaConfig::new("127.0.0.1:9092");
        c.validate().unwrap();
        c.revoke_timeout = c.max_poll_interval;
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
        // The heartbeat: above 0, at most a third of the session.
        let mut c = KafkaConfig::new("127.0.0.1:9092");
        c.heartbeat_interval = Duration::from_millis(3334);
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
        c.heartbeat_interval = Duration::from_millis(3333);
        c.validate().unwrap();
        c.heartbeat_interval = Duration::ZERO;
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
        c.heartbeat_interval = Duration::from_millis(100);
        c.session_timeout = Duration::ZERO;
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
        c.session_timeout = c.max_poll_interval + Duration::from_millis(1);
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
        let mut c = KafkaConfig::new("");
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
        c.brokers = "b:9092".into();
        c.extra = vec![(
            "partition.assignment.strategy".into(),
            "cooperative-sticky".into(),
        )];
        assert!(matches!(c.validate(), Err(Error::Invalid(_))));
    }
}
