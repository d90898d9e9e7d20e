//! Prometheus metrics of the platform, in one registry served at `/metrics` by every process
//! (`loyalty dev`, `node`, `gateway`, `engine`). Names follow `loyalty_<thing>_<unit>`:
//! counters end in `_total`, durations are `_seconds` histograms, sizes are in base units
//! (records, not thousands of them). Labels take bounded values only (route templates, command
//! kinds, outcome codes, operation names, partitions): never a member id, a phone number or an
//! event id. README.md ("Observability") lists every metric.

use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::Mutex;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub events_applied: IntCounterVec,
    pub events_replayed: IntCounter,
    pub events_rejected: IntCounterVec,
    pub idempotency_conflicts: IntCounter,
    pub dead_letters: IntCounterVec,
    pub store_commit_seconds: Histogram,
    pub checkpoint_seconds: Histogram,
    pub store_conflicts: IntCounter,
    pub engine_batch_records: Histogram,
    pub engine_batch_seconds: Histogram,
    pub engine_lag_seconds: Histogram,
    pub actors_active: IntGauge,
    pub actors_activated: IntCounter,
    pub actors_passivated: IntCounter,
    pub log_append_seconds: Histogram,
    /// The embedded log's checkpoints: partition files synced, journal emptied.
    pub log_checkpoint_seconds: Histogram,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub http_body_timeouts: IntCounter,
    /// API key changes announced to the other gateways, and heard from them.
    pub key_changes: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_errors: IntCounter,
    /// One-time codes of the self-enrolment page, by what became of them.
    pub enrolment_codes: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub reply_timeouts: IntCounter,
    /// API keys created, rotated and revoked, by operation and the key's role.
    pub api_key_operations: IntCounterVec,
    // POS topic ingestion (pos_ingest).
    pub pos_records: IntCounterVec,
    pub pos_dead_letters: IntCounterVec,
    pub pos_retries: IntCounterVec,
    pub pos_batch_seconds: Histogram,
    pub engine_retries: IntCounterVec,
    pub engine_partitions_owned: IntGauge,
    pub engine_partitions_paused: IntGauge,
    pub engine_partitions_stopped: IntGauge,
    pub engine_partitions_retrying: IntGauge,
    pub event_claims: IntCounterVec,
    pub dashboard_updates: IntCounterVec,
    pub audit_differences: IntCounter,
    /// Members whose personal data was erased (README "Privacy"), counted once the store has it.
    pub member_erasures: IntCounter,
    /// Personal values sealed and opened (README "Personal data at rest"), by key id.
    pub pii_sealed: IntCounterVec,
    pub pii_opened: IntCounterVec,
    /// Pages of segment exports served (README "Segments"), by how phones were shown
    /// (`masked`, `full`).
    pub segment_exports: IntCounterVec,
    /// Refunds of purchases not seen yet (README "Refunds and voids"), counted once the store
    /// has them: `held` when held, `applied` when their purchase arrived and took them.
    pub held_refunds: IntCounterVec,
    /// Commands the engine consumed, by kind and result (applied, replayed, ...).
    pub engine_commands: IntCounterVec,
    /// From the time a POS says a command happened until its effect is in the store.
    pub engine_pos_lag_seconds: Histogram,
    /// Store and hot cache calls, at the ports ([`crate::trace::ports`]).
    pub ports: PortMetrics,
    /// The engine's consumer: lag, rebalances, checkpoint age.
    pub consumer: ConsumerMetrics,
    /// The scheduler of expiry and tier re-evaluation ([`crate::engine::scheduler`]).
    pub scheduler: SchedulerMetrics,
    /// Campaign firings the engine committed (README "Campaigns").
    pub campaign_firings: IntCounter,
    /// Outbox messages by channel and result of an attempt (`delivered`, `retry`, `failed`,
    /// `skipped`), counted once the outbox records it ([`crate::engine::delivery`]).
    pub campaign_messages: IntCounterVec,
    /// The time an adapter took to accept (or refuse) a message, by channel.
    pub campaign_send_seconds: HistogramVec,
    /// Opt-out links used (README "Privacy"), by channel and result (`withdrawn`: the
    /// consent was withdrawn; `already`: there was none to withdraw).
    pub opt_outs: IntCounterVec,
    /// Changes of consent applied through the API or the card page, by source (`api`, `card`).
    pub consent_changes: IntCounterVec,
    /// Wallet passes of the card page (README "Members without an app"), by kind (`apple`,
    /// `google`) and result (`signed`, `unsigned`, `not_configured`, `failed`).
    pub wallet_passes: IntCounterVec,
}

/// What the scheduler of each owned partition did, counted once the store has it.
pub struct SchedulerMetrics {
    /// Runs (one per partition and interval), by result (`ok`, `error`).
    pub runs: IntCounterVec,
    /// Members whose clock a run moved (an advance that changed them).
    pub members_applied: IntCounter,
    /// Points the scheduler's advances expired.
    pub points_expired: IntCounter,
    /// From a member's due time until its advance was in the store.
    pub due_lag_seconds: Histogram,
    /// Members whose due entry a re-index sweep wrote ([`crate::engine::reindex`]).
    pub reindexed_members: IntCounter,
    /// Members a re-index sweep read and checked.
    pub reindex_scanned: IntCounter,
    /// Re-index sweeps, by kind (`all`, `program`) and result (`done`, `error`).
    pub reindex_sweeps: IntCounterVec,
}

impl SchedulerMetrics {
    fn new(r: &Registry) -> SchedulerMetrics {
        SchedulerMetrics {
            runs: counter_vec(
                r,
                "loyalty_scheduler_runs_total",
                "Scheduler runs (one per owned partition and interval: read the members due, advance them), by result (ok, error).",
                &["result"],
            ),
            members_applied: counter(
                r,
                "loyalty_scheduler_members_applied_total",
                "Members whose clock the scheduler moved (expiring lots, dropping window days, re-evaluating the tier), counted once the store has it.",
            ),
            points_expired: counter(
                r,
                "loyalty_scheduler_points_expired_total",
                "Points expired by the scheduler's advances.",
            ),
            due_lag_seconds: histogram(
                r,
                "loyalty_scheduler_due_lag_seconds",
                "From a member's due time (next expiry or window day leaving) until the scheduler's advance was in the store.",
                POS_LAG_BUCKETS.to_vec(),
            ),
            reindexed_members: counter(
                r,
                "loyalty_scheduler_reindexed_members_total",
                "Members whose due entry a re-index sweep of their partition wrote (a member stored before the due index, or a program change moving their due time).",
            ),
            reindex_scanned: counter(
                r,
                "loyalty_scheduler_reindex_scanned_members_total",
                "Members a re-index sweep of their partition read and checked.",
            ),
            reindex_sweeps: counter_vec(
                r,
                "loyalty_scheduler_reindex_sweeps_total",
                "Re-index sweeps of a partition's due entries, by kind (all: every member, once per partition; program: a franchise's members after a program change) and result (done, error; a failed sweep is redone).",
                &["kind", "result"],
            ),
        }
    }
}

/// Latency and errors of every call to the store and the hot cache, by the port's method.
pub struct PortMetrics {
    pub store_seconds: HistogramVec,
    pub store_errors: IntCounterVec,
    pub cache_seconds: HistogramVec,
    pub cache_errors: IntCounterVec,
}

/// What the engine's consumer group membership looks like from this node.
pub struct ConsumerMetrics {
    /// End offset minus committed offset, per owned partition of the command topic.
    pub lag_records: IntGaugeVec,
    /// Assignments and revocations delivered to the engine, by event.
    pub rebalances: IntCounterVec,
    /// How long each phase of a rebalance took, by phase (`revoke`, `assign`).
    pub rebalance_seconds: HistogramVec,
    /// Seconds since the committed offsets were last known current (see [`CheckpointClock`]).
    pub checkpoint_age_seconds: Gauge,
    pub checkpoint_clock: CheckpointClock,
}

/// When the engine's committed offsets were last known to be current: an offset commit, or a
/// lag sample that found every owned partition committed up to its end. Read at each scrape
/// into `loyalty_engine_checkpoint_age_seconds`; unset (the gauge stays 0) in a process
/// without an engine.
#[derive(Default)]
pub struct CheckpointClock {
    last: Mutex<Option<Instant>>,
}

impl CheckpointClock {
    /// The offsets are current now.
    pub fn touch(&self) {
        *self.last.lock() = Some(Instant::now());
    }

    /// Seconds since the last [`CheckpointClock::touch`], if any.
    pub fn age_seconds(&self) -> Option<f64> {
        self.last.lock().map(|t| t.elapsed().as_secs_f64())
    }
}

/// The `class` label of an error: whether retrying can succeed.
pub fn error_class(e: &crate::Error) -> &'static str {
    if e.is_transient() {
        "transient"
    } else {
        "permanent"
    }
}

/// The status class of an HTTP status (`2xx`, `4xx`...), as the `status_class` label.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(g.clone()));
    g
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// From milliseconds to a day: a POS that was offline sends its commands hours late.
const POS_LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0,
];

/// Rebalances take from milliseconds (the embedded log) to a session timeout and more (Kafka).
const REBALANCE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(g.clone()));
    g
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = HistogramVec::new(opts, labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(h.clone()));
    h
}

impl PortMetrics {
    fn new(r: &Registry) -> PortMetrics {
        const ERROR_LABELS: &[&str] = &["operation", "error", "class"];
        PortMetrics {
            store_seconds: histogram_vec(
                r,
                "loyalty_store_operation_duration_seconds",
                "Calls to the durable store, by the port's method (member, processed, claim_events, commit, sync...), failed ones included.",
                &["operation"],
                LATENCY_BUCKETS,
            ),
            store_errors: counter_vec(
                r,
                "loyalty_store_operation_errors_total",
                "Failed calls to the durable store, by method, error kind (unavailable, conflict, corrupt, invalid, shutting-down) and class (transient, permanent).",
                ERROR_LABELS,
            ),
            cache_seconds: histogram_vec(
                r,
                "loyalty_cache_operation_duration_seconds",
                "Calls to the hot cache (Redis, or the in-process cache of loyalty dev), by method (status, put_statuses, evict), failed ones included.",
                &["operation"],
                LATENCY_BUCKETS,
            ),
            cache_errors: counter_vec(
                r,
                "loyalty_cache_operation_errors_total",
                "Failed calls to the hot cache, by method, error kind and class (transient, permanent).",
                ERROR_LABELS,
            ),
        }
    }
}

impl ConsumerMetrics {
    fn new(r: &Registry) -> ConsumerMetrics {
        let age = Gauge::new(
            "loyalty_engine_checkpoint_age_seconds",
            "Seconds since the engine's committed offsets were last current: its last offset commit, or a lag sample that found every owned partition committed up to its end.",
        )
        .unwrap_or_else(|e| panic!("metric loyalty_engine_checkpoint_age_seconds: {e}"));
        register(r, Box::new(age.clone()));
        ConsumerMetrics {
            lag_records: gauge_vec(
                r,
                "loyalty_engine_consumer_lag_records",
                "Records of the command topic not yet committed by this engine, per owned partition (end offset minus committed offset), sampled every few seconds.",
                &["partition"],
            ),
            rebalances: counter_vec(
                r,
                "loyalty_engine_rebalances_total",
                "Consumer group events delivered to the engine, by event (assigned, revoked).",
                &["event"],
            ),
            rebalance_seconds: histogram_vec(
                r,
                "loyalty_engine_rebalance_duration_seconds",
                "Rebalance phases: revoke (from a revocation until the engine released its partitions: batches in flight stored, offsets committed) and assign (from joining, or a revocation released, until the next assignment).",
                &["phase"],
                REBALANCE_BUCKETS,
            ),
            checkpoint_age_seconds: age,
            checkpoint_clock: CheckpointClock::default(),
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(c.clone()));
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(c.clone()));
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(h.clone()));
    h
}

fn register(r: &Registry, c: Box<dyn prometheus::core::Collector>) {
    // Names are static and distinct: a failure here is a programming error found by any test.
    if let Err(e) = r.register(c) {
        panic!("registering a metric: {e}");
    }
}

/// The labels of `loyalty_http_requests_total`, in order.
pub const HTTP_LABELS: &[&str] = &["route", "method", "status", "status_class"];

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let lat = LATENCY_BUCKETS.to_vec();
        Metrics {
            events_applied: counter_vec(
                &r,
                "loyalty_events_applied_total",
                "POS events applied, by kind.",
                &["kind"],
            ),
            member_erasures: counter(
                &r,
                "loyalty_member_erasures_total",
                "Members whose personal data was erased (README \"Privacy\").",
            ),
            pii_sealed: counter_vec(
                &r,
                "loyalty_pii_sealed_total",
                "Personal values sealed for the store or the log (README \"Personal data at rest\"), by key id.",
                &["key_id"],
            ),
            pii_opened: counter_vec(
                &r,
                "loyalty_pii_opened_total",
                "Sealed personal values opened, by key id and result (ok; failed: a missing key or data that does not authenticate).",
                &["key_id", "result"],
            ),
            segment_exports: counter_vec(
                &r,
                "loyalty_segment_exports_total",
                "Pages of segment member exports served (README \"Segments\"), by how phone numbers were shown (masked, full).",
                &["phone"],
            ),
            opt_outs: counter_vec(
                &r,
                "loyalty_opt_outs_total",
                "Opt-out links used (README \"Privacy\"), by channel (sms, email) and result (withdrawn, already).",
                &["channel", "result"],
            ),
            consent_changes: counter_vec(
                &r,
                "loyalty_consent_changes_total",
                "Changes of consent to offers applied through the API or the card page, by source (api, card).",
                &["source"],
            ),
            wallet_passes: counter_vec(
                &r,
                "loyalty_wallet_passes_total",
                "Wallet passes of the card page, by kind (apple, google) and result (signed, unsigned, not_configured, failed).",
                &["kind", "result"],
            ),
            held_refunds: counter_vec(
                &r,
                "loyalty_held_refunds_total",
                "Refunds of purchases not seen yet: held, or applied with their purchase.",
                &["event"],
            ),
            events_replayed: counter(
                &r,
                "loyalty_events_replayed_total",
                "Deliveries of already applied events (no effect).",
            ),
            events_rejected: counter_vec(
                &r,
                "loyalty_events_rejected_total",
                "Events refused by the rules, by reason.",
                &["reason"],
            ),
            idempotency_conflicts: counter(
                &r,
                "loyalty_idempotency_conflicts_total",
                "Event ids reused with different content.",
            ),
            dead_letters: counter_vec(
                &r,
                "loyalty_dead_letters_total",
                "Records sent to the dead-letter topic, by reason.",
                &["reason"],
            ),
            store_commit_seconds: histogram(
                &r,
                "loyalty_store_commit_seconds",
                "Write of a group of effect batches (on the embedded store one durable commit, one fsync).",
                lat.clone(),
            ),
            checkpoint_seconds: histogram(
                &r,
                "loyalty_checkpoint_seconds",
                "Engine checkpoint: store made durable, then the offsets committed.",
                lat.clone(),
            ),
            store_conflicts: counter(
                &r,
                "loyalty_store_conflicts_total",
                "Batches refused by the store's conditional write.",
            ),
            engine_batch_seconds: histogram(
                &r,
                "loyalty_engine_batch_seconds",
                "One batch of a partition, from its worker taking it until its effects are in the store and published (summed over worker threads, it can exceed wall time).",
                lat.clone(),
            ),
            engine_lag_seconds: histogram(
                &r,
                "loyalty_engine_lag_seconds",
                "From a command's receipt by a gateway until its effect is published (millisecond clock; across hosts, clock skew included).",
                lat.clone(),
            ),
            engine_batch_records: histogram(
                &r,
                "loyalty_engine_batch_records",
                "Records per engine batch.",
                vec![1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0],
            ),
            actors_active: {
                let g = IntGauge::new("loyalty_member_actors_active", "Member actors in memory.")
                    .unwrap_or_else(|e| panic!("{e}"));
                register(&r, Box::new(g.clone()));
                g
            },
            actors_activated: counter(
                &r,
                "loyalty_member_actors_activated_total",
                "Member actors activated (rehydrated from the store).",
            ),
            actors_passivated: counter(
                &r,
                "loyalty_member_actors_passivated_total",
                "Member actors stopped after idling.",
            ),
            log_append_seconds: histogram(
                &r,
                "loyalty_log_append_seconds",
                "Durable append of a command to the event log.",
                lat.clone(),
            ),
            log_checkpoint_seconds: histogram(
                &r,
                "loyalty_log_checkpoint_seconds",
                "Checkpoint of the embedded log: partition files synced, journal emptied.",
                lat.clone(),
            ),
            http_requests: counter_vec(
                &r,
                "loyalty_http_requests_total",
                "HTTP requests, by route template (unmatched for no route), method, status and status class.",
                HTTP_LABELS,
            ),
            http_request_seconds: histogram_vec(
                &r,
                "loyalty_http_request_duration_seconds",
                "HTTP request latency, by route template, method and status class.",
                &["route", "method", "status_class"],
                &lat,
            ),
            http_body_timeouts: counter(
                &r,
                "loyalty_http_body_timeouts_total",
                "Request bodies that did not arrive whole within LOYALTY_BODY_TIMEOUT_MS (answered 408, connection closed).",
            ),
            key_changes: counter_vec(
                &r,
                "loyalty_key_changes_total",
                "API key rotations and revocations announced to the other gateways (announced), \
                 announcements heard (received), and re-subscriptions that forgot every key \
                 (resubscribed).",
                &["event"],
            ),
            rate_limited: counter_vec(
                &r,
                "loyalty_rate_limited_total",
                "Phone lookups refused 429, by the bucket that was empty (key, address).",
                &["scope"],
            ),
            rate_limit_errors: counter(
                &r,
                "loyalty_rate_limit_errors_total",
                "Rate limit checks that could not reach the buckets (the request was let through).",
            ),
            enrolment_codes: counter_vec(
                &r,
                "loyalty_enrolment_codes_total",
                "One-time codes of the self-enrolment page, by result (sent, send_failed, no_notifier, rate_limited, confirmed, wrong, expired, too_many_attempts, store_unavailable).",
                &["result"],
            ),
            cache_lookups: counter_vec(
                &r,
                "loyalty_cache_lookups_total",
                "Hot cache lookups, by result (hit, miss, stale, error).",
                &["result"],
            ),
            reply_timeouts: counter(
                &r,
                "loyalty_reply_timeouts_total",
                "Requests answered 202 because the reply deadline passed.",
            ),
            api_key_operations: counter_vec(
                &r,
                "loyalty_api_key_operations_total",
                "API keys created, rotated and revoked, by operation (create, rotate, revoke) and the key's role.",
                &["operation", "role"],
            ),
            engine_retries: counter_vec(
                &r,
                "loyalty_engine_batch_retries_total",
                "Batches of a partition tried again after a transient error, by error kind (the partition backs off; others keep flowing).",
                &["error"],
            ),
            engine_partitions_owned: gauge(
                &r,
                "loyalty_engine_partitions_owned",
                "Partitions of the command topic this engine node owns.",
            ),
            engine_partitions_paused: gauge(
                &r,
                "loyalty_engine_partitions_paused",
                "Owned partitions whose reading is paused because their worker is behind or stopped.",
            ),
            engine_partitions_stopped: gauge(
                &r,
                "loyalty_engine_partitions_stopped",
                "Owned partitions stopped by a permanent error (corrupt or invalid data): nothing of them is applied until an operator acts.",
            ),
            engine_partitions_retrying: gauge(
                &r,
                "loyalty_engine_partitions_retrying",
                "Owned partitions backing off after a transient error.",
            ),
            event_claims: counter_vec(
                &r,
                "loyalty_event_claims_total",
                "Event ids claimed by the engine before applying, by result (won, lost).",
                &["result"],
            ),
            dashboard_updates: counter_vec(
                &r,
                "loyalty_dashboard_updates_total",
                "Dashboard aggregate rows updated with the engine's commits, by kind (totals, visits, tiers, segments).",
                &["kind"],
            ),
            audit_differences: counter(
                &r,
                "loyalty_audit_differences_total",
                "Differences found by audits (a member's state and its ledger, the cache and the store).",
            ),
            pos_records: counter_vec(
                &r,
                "loyalty_pos_records_total",
                "Records of the POS topic handled, by result (forwarded to the command topic, dead-lettered).",
                &["result"],
            ),
            pos_dead_letters: counter_vec(
                &r,
                "loyalty_pos_dead_letters_total",
                "Records of the POS topic sent to its dead-letter topic, by reason.",
                &["reason"],
            ),
            pos_retries: counter_vec(
                &r,
                "loyalty_pos_retries_total",
                "POS ingestion operations retried after a transient error, by operation (lookup, append, dead-letter, commit).",
                &["operation"],
            ),
            pos_batch_seconds: histogram(
                &r,
                "loyalty_pos_batch_seconds",
                "One poll of POS records, from delivery until forwarded or dead-lettered and committed.",
                LATENCY_BUCKETS.to_vec(),
            ),
            engine_commands: counter_vec(
                &r,
                "loyalty_engine_commands_total",
                "Commands consumed by the engine, counted once their batch is in the store, by kind (enrol, purchase, refund, redemption, cancel_redemption, consume_code, erase; unknown when undecodable) and result (applied, rejected, replayed, conflict, dead-lettered).",
                &["kind", "result"],
            ),
            engine_pos_lag_seconds: histogram(
                &r,
                "loyalty_engine_pos_lag_seconds",
                "From the time a POS says a command happened (its occurred_at, when it sent one) until the effect is in the store (the POS's clock against the engine's).",
                POS_LAG_BUCKETS.to_vec(),
            ),
            ports: PortMetrics::new(&r),
            consumer: ConsumerMetrics::new(&r),
            scheduler: SchedulerMetrics::new(&r),
            campaign_firings: counter(
                &r,
                "loyalty_campaign_firings_total",
                "Campaign firings committed (README \"Campaigns\"): offers given, messages put in the outbox.",
            ),
            campaign_messages: counter_vec(
                &r,
                "loyalty_campaign_messages_total",
                "Campaign messages by channel and result of an attempt (delivered, retry, failed, skipped), once the outbox records it.",
                &["channel", "result"],
            ),
            campaign_send_seconds: histogram_vec(
                &r,
                "loyalty_campaign_send_seconds",
                "Time an adapter took to accept or refuse a campaign message, by channel.",
                &["channel"],
                &lat,
            ),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(age) = self.consumer.checkpoint_clock.age_seconds() {
            self.consumer.checkpoint_age_seconds.set(age);
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(304), "3xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
    }

    #[test]
    fn error_classes() {
        assert_eq!(
            error_class(&crate::Error::Unavailable("down".into())),
            "transient"
        );
        assert_eq!(
            error_class(&crate::Error::Corrupt("bad".into())),
            "permanent"
        );
    }

    #[test]
    fn the_checkpoint_age_is_read_at_each_scrape() {
        let m = metrics();
        m.consumer.checkpoint_clock.touch();
        let text = m.render();
        assert!(text.contains("# TYPE loyalty_engine_checkpoint_age_seconds gauge"));
        let age = m
            .consumer
            .checkpoint_clock
            .age_seconds()
            .unwrap_or(f64::MAX);
        assert!(age < 60.0, "{age}");
    }
}
