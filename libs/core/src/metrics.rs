//! Prometheus metrics of the platform, in one registry served by the gateway at `/metrics`.
//! Names follow `loyalty_<thing>_<unit>`: counters end in `_total`, durations are `_seconds`
//! histograms.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
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
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub cache_lookups: IntCounterVec,
    pub reply_timeouts: IntCounter,
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
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, Box::new(g.clone()));
    g
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

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
                "Write of a group of effect batches (the embedded store's includes an fsync only for a checkpoint).",
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
            http_requests: counter_vec(
                &r,
                "loyalty_http_requests_total",
                "HTTP requests, by route and status.",
                &["route", "status"],
            ),
            http_request_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "loyalty_http_request_duration_seconds",
                        "HTTP request latency by route.",
                    )
                    .buckets(lat),
                    &["route"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                register(&r, Box::new(h.clone()));
                h
            },
            cache_lookups: counter_vec(
                &r,
                "loyalty_cache_lookups_total",
                "Hot cache lookups, by result (hit, miss, error).",
                &["result"],
            ),
            reply_timeouts: counter(
                &r,
                "loyalty_reply_timeouts_total",
                "Requests answered 202 because the reply deadline passed.",
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
                "Dashboard aggregate rows updated with the engine's commits, by kind (totals, visits, tiers).",
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
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
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
