//! Benchmarks of the distributed shape as real OS processes (ignored by default; run by
//! `loadtest/bench.sh`): `loyalty engine` processes on PostgreSQL (the shared store), tansu
//! (Kafka) and redis-server, started by [`Cluster`].
//!
//! - **Ingestion with 1 and 3 engine processes**: `N` purchase commands appended straight into
//!   the command topic through the Kafka `EventLog` adapter (what a gateway does once a request
//!   is validated), timed from the first append until the engines' `/metrics` say that every
//!   one is applied (`loyalty_events_applied_total{kind="purchase"}`, summed), next to the raw
//!   broker produce→consume rate measured on the same broker just before, with records of the
//!   same size ([`loyalty_tests::bench::raw_kafka_produce_consume`], shared with
//!   `ingest_bench.rs`).
//! - **Handoff after kill -9**: a steady stream of purchases on every partition; one engine of
//!   three is killed; from the event claims in PostgreSQL (`event_claims.claimed_at`, written
//!   by the engine that applies an event, before it applies it) the time from the kill until
//!   each partition applies a new event again.
//! - **The checkout mix through two gateways**: `loyalty-loadtest` pointed at both gateways
//!   (three engines behind them), closed model for the maximum, then the open model at half
//!   of it.
//!
//! Where the time goes: CPU seconds of every process (engines, gateways, tansu, PostgreSQL and
//! its backends, redis-server, this test's producer) over each measured span, the engines'
//! stage metrics, and PostgreSQL's statement times (`pg_stat_statements`, preloaded by a
//! restart of the test's server before any `loyalty` process starts). With
//! `LOYALTY_BENCH_PERF=1` a `perf record -e cpu-clock` of the single engine.
//!
//! Correctness only is asserted (after the figures are printed): every event id sent applied
//! exactly once (ledger entries, distinct event ids and idempotency records in PostgreSQL equal
//! the count sent), every balance the sum of its ledger. Run with
//! `cargo test --release -p loyalty-tests --test multiprocess_bench -- --ignored --nocapture
//! --test-threads 1` (`LOYALTY_BENCH_EVENTS`, default 20 000; `LOYALTY_BENCH_SECS`, default
//! 10; needs `target/release/loyalty` and, for the checkout mix, `loyalty-loadtest`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use loyalty_core::command::{CommandEnvelope, PosCommand};
use loyalty_core::ports::{partition_for, EventLog};
use loyalty_core::provisioning::now;
use loyalty_domain::{Cents, Currency, EventId, FranchiseId, MemberId, StoreId};
use loyalty_kafka::{KafkaConfig, KafkaLog};
use loyalty_testkit::process::{metric_matching, metric_sum, Cluster, Provisioned};
use loyalty_tests::bench::{
    applied_once, cpu_line, events, find_processes, psql, psql_number, quantile_ms, rate,
    raw_kafka_latency, raw_kafka_produce_consume, with_children, CpuProbe, IN_FLIGHT,
};
use loyalty_tests::demo_program;
use loyalty_tests::invariants::wait_lag_zero;
use loyalty_tests::traffic::{http_client, post};
use serde_json::{json, Value};

const MEMBERS: usize = 1000;
const PARTITIONS: u32 = 12;
const TOPIC: &str = "pos-commands";
const GROUP: &str = "loyalty-engine";
/// The engines' `session.timeout.ms`, given to every `loyalty engine` as
/// `LOYALTY_KAFKA_SESSION_TIMEOUT_MS`: `LOYALTY_BENCH_SESSION_TIMEOUT_MS`, else 10 s (the
/// engine's default).
fn session_timeout() -> Duration {
    Duration::from_millis(secs_env("LOYALTY_BENCH_SESSION_TIMEOUT_MS", 10_000))
}

/// The engines' `heartbeat.interval.ms`, given as `LOYALTY_KAFKA_HEARTBEAT_MS`:
/// `LOYALTY_BENCH_HEARTBEAT_MS`, else a tenth of the session timeout (the engine's default).
fn heartbeat() -> Duration {
    Duration::from_millis(secs_env(
        "LOYALTY_BENCH_HEARTBEAT_MS",
        session_timeout().as_millis() as u64 / 10,
    ))
}

fn secs_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Appends purchase commands of the bench's franchise straight into the command topic.
#[derive(Clone)]
struct Sender {
    log: Arc<KafkaLog>,
    franchise_id: FranchiseId,
    store_id: StoreId,
}

impl Sender {
    fn purchase(&self, event_id: &str, member: &MemberId, cents: i64) -> CommandEnvelope {
        CommandEnvelope {
            franchise_id: self.franchise_id.clone(),
            store_id: self.store_id.clone(),
            event_id: EventId::parse(event_id).unwrap(),
            program_version: 1,
            occurred_at: None,
            received_at: now(),
            request_id: None,
            reply_to: None,
            command: PosCommand::Purchase {
                member_id: Some(member.clone()),
                amount_cents: Cents::new(cents).unwrap(),
                currency: Currency::parse("EUR").unwrap(),
                items: Vec::new(),
            },
        }
    }

    /// Appends `env` (what a gateway does once a request is validated); retried a few times
    /// with the same event id on a broker error.
    async fn append(&self, env: &CommandEnvelope) {
        let mut tries = 0;
        loop {
            match self
                .log
                .append(
                    TOPIC,
                    &env.key(),
                    env.encode(&loyalty_core::sealing::KeyRing::dev()).unwrap(),
                    Vec::new(),
                )
                .await
            {
                Ok(_) => return,
                Err(e) if tries < 5 => {
                    tries += 1;
                    eprintln!("append {}: {e}; again", env.event_id);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("append {}: {e}", env.event_id),
            }
        }
    }
}

struct Bench {
    cluster: Cluster,
    franchise: Provisioned,
    members: Vec<MemberId>,
    sender: Sender,
    statements: bool,
}

impl Bench {
    /// The cluster (no `loyalty` process yet), PostgreSQL restarted with `pg_stat_statements`,
    /// then `gateways` gateways and `engines` engines; a franchise and `MEMBERS` members.
    async fn start(gateways: usize, engines: usize) -> Option<Bench> {
        if let Err(reason) = Cluster::available() {
            println!("SKIPPED: {reason}");
            return None;
        }
        let t = Instant::now();
        let mut cluster = Cluster::builder()
            .gateways(0)
            .engines(0)
            .partitions(PARTITIONS)
            .env(
                "LOYALTY_KAFKA_SESSION_TIMEOUT_MS",
                &session_timeout().as_millis().to_string(),
            )
            .env(
                "LOYALTY_KAFKA_HEARTBEAT_MS",
                &heartbeat().as_millis().to_string(),
            )
            // The checkout mix looks phones up far faster than a till: limits off.
            .env("LOYALTY_LOOKUP_LIMIT_PER_MINUTE", "0")
            .env("LOYALTY_LOOKUP_ADDRESS_LIMIT_PER_MINUTE", "0")
            .start()
            .await
            .expect("cluster starts");
        let url = cluster.postgres_url().to_owned();
        let statements = psql(
            &url,
            "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
        )
        .and_then(|_| cluster.postgres.restart())
        .and_then(|_| psql(&url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        .map_err(|e| println!("pg_stat_statements not enabled: {e:#}"))
        .is_ok();
        for _ in 0..gateways {
            cluster.add_gateway().await.expect("gateway starts");
        }
        let mut started = Vec::new();
        for _ in 0..engines {
            started.push(cluster.start_engine().await.expect("engine starts"));
        }
        for i in started {
            cluster
                .engine(i)
                .wait_ready(Duration::from_secs(120))
                .await
                .expect("engine ready");
        }
        let franchise = cluster
            .provision("Bench", demo_program(), 1)
            .await
            .expect("provisioned");
        let log = KafkaLog::new(KafkaConfig::new(cluster.broker.brokers())).expect("kafka log");
        let mut b = Bench {
            sender: Sender {
                log,
                franchise_id: FranchiseId::parse(&franchise.id).unwrap(),
                store_id: StoreId::parse(&franchise.stores[0].0).unwrap(),
            },
            franchise,
            cluster,
            members: Vec::new(),
            statements,
        };
        b.enrol().await;
        b.wait_settled(engines, Duration::from_secs(120)).await;
        println!(
            "cluster: {gateways} gateway(s), {engines} engine(s), {PARTITIONS} partitions, \
             {MEMBERS} members enrolled; PostgreSQL + redis-server + tansu; ready in {:.1} s; \
             logs in {}",
            t.elapsed().as_secs_f64(),
            b.cluster.log_dir().display()
        );
        Some(b)
    }

    /// `MEMBERS` members, enrolled through the gateways (the answer names the member id).
    async fn enrol(&mut self) {
        let http = http_client();
        let gateways = self.cluster.gateway_urls();
        let key = self.franchise.stores[0].1.clone();
        let ids: Vec<String> = stream::iter(0..MEMBERS)
            .map(|i| {
                let (http, gw, key) = (http.clone(), gateways[i % gateways.len()].clone(), &key);
                async move {
                    let url = format!("{gw}/v1/members?wait_ms=5000");
                    let body = json!({"phone": format!("+3368{i:07}")});
                    for _ in 0..20 {
                        match post(&http, &url, key, &body).await {
                            Ok((201, v)) | Ok((200, v)) => {
                                return v["member_id"].as_str().unwrap_or_default().to_owned()
                            }
                            _ => tokio::time::sleep(Duration::from_millis(500)).await,
                        }
                    }
                    panic!("enrolment {i} never answered 201");
                }
            })
            .buffered(32)
            .collect()
            .await;
        self.members = ids.iter().map(|m| MemberId::parse(m).unwrap()).collect();
    }

    /// A purchase record as the benchmark appends it, for the raw side's record size.
    fn sample(&self) -> Bytes {
        self.sender
            .purchase("mb1-99999", &self.members[MEMBERS - 1], 1234)
            .encode(&loyalty_core::sealing::KeyRing::dev())
            .unwrap()
    }

    /// Sum of a metric over the live engines.
    async fn engines_metric(&mut self, name: &str, labels: &str) -> f64 {
        let mut total = 0.0;
        for (_, m) in self.cluster.engine_metrics().await {
            if let Ok(text) = m {
                total += metric_matching(&text, name, labels);
            }
        }
        total
    }

    /// Waits until the live engines own every partition between them, each owning some when
    /// there are at most `PARTITIONS` of them, three readings in a row.
    async fn wait_settled(&mut self, engines: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut good = 0;
        loop {
            let owned: Vec<f64> = self
                .cluster
                .engine_metrics()
                .await
                .into_iter()
                .map(|(_, m)| m.map_or(0.0, |t| metric_sum(&t, "loyalty_engine_partitions_owned")))
                .collect();
            let total: f64 = owned.iter().sum();
            let all_own = owned.iter().filter(|o| **o > 0.0).count() >= engines.min(12);
            if total as u32 == PARTITIONS && owned.len() == engines && all_own {
                good += 1;
                if good >= 3 {
                    return;
                }
            } else {
                good = 0;
            }
            assert!(
                Instant::now() < deadline,
                "the group never settled: partitions owned by engine {owned:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The CPU probe of every process of the cluster and of this test.
    fn cpu_probe(&mut self) -> CpuProbe {
        let mut p = CpuProbe::default();
        let engines: Vec<u32> = self
            .cluster
            .live_engines()
            .into_iter()
            .map(|i| self.cluster.engine(i).pid())
            .collect();
        p.group("engines", engines);
        let gateways: Vec<u32> = self
            .cluster
            .live_gateways()
            .into_iter()
            .map(|i| self.cluster.gateway(i).pid())
            .collect();
        p.group("gateways", gateways);
        let broker = self.cluster.broker.brokers();
        p.group("tansu", find_processes(&["tansu", &broker]));
        let pg = self
            .cluster
            .postgres
            .pid()
            .map_or_else(Vec::new, with_children);
        p.group("postgres", pg);
        let redis = format!("{}", self.cluster.redis.port());
        p.group("redis", find_processes(&["redis-server", &redis]));
        p.group("bench (producer)", vec![std::process::id()]);
        p
    }

    /// The engines' stage counters: summed over the live engines.
    async fn stages(&mut self) -> Stages {
        let mut s = Stages::default();
        for (_, m) in self.cluster.engine_metrics().await {
            let Ok(t) = m else { continue };
            s.busy += metric_sum(&t, "loyalty_engine_batch_seconds_sum");
            s.batches += metric_sum(&t, "loyalty_engine_batch_seconds_count");
            s.records += metric_sum(&t, "loyalty_engine_batch_records_sum");
            s.commit += metric_sum(&t, "loyalty_store_commit_seconds_sum");
            s.commits += metric_sum(&t, "loyalty_store_commit_seconds_count");
            s.checkpoint += metric_sum(&t, "loyalty_checkpoint_seconds_sum");
            s.checkpoints += metric_sum(&t, "loyalty_checkpoint_seconds_count");
            s.claims += metric_matching(&t, "loyalty_event_claims_total", "won");
            s.lag += metric_sum(&t, "loyalty_engine_lag_seconds_sum");
            s.lags += metric_sum(&t, "loyalty_engine_lag_seconds_count");
            s.replayed += metric_sum(&t, "loyalty_events_replayed_total");
        }
        s
    }

    /// `loyalty_events_replayed_total` of each live engine, by index.
    async fn replayed_by_engine(&mut self) -> HashMap<usize, f64> {
        let mut out = HashMap::new();
        for (i, m) in self.cluster.engine_metrics().await {
            if let Ok(t) = m {
                out.insert(i, metric_sum(&t, "loyalty_events_replayed_total"));
            }
        }
        out
    }

    fn reset_statements(&self) {
        if self.statements {
            let _ = psql(
                self.cluster.postgres_url(),
                "SELECT pg_stat_statements_reset()",
            );
        }
    }

    /// PostgreSQL's statements by total time since the last reset.
    fn statements_lines(&self, what: &str, wall: Duration) -> Vec<String> {
        if !self.statements {
            return vec![format!("pg {what}: pg_stat_statements not enabled")];
        }
        let rows = psql(
            self.cluster.postgres_url(),
            "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3), \
                    rows, regexp_replace(left(query, 90), '\\s+', ' ', 'g') \
               FROM pg_stat_statements WHERE calls > 0 AND query NOT LIKE '%pg_stat_statements%' \
                AND query NOT LIKE '%event_claims WHERE event_id LIKE%' \
              ORDER BY total_exec_time DESC LIMIT 6",
        )
        .unwrap_or_default();
        let total = psql_number(
            self.cluster.postgres_url(),
            "SELECT coalesce(round(sum(total_exec_time)::numeric, 1), 0) FROM pg_stat_statements",
        )
        .unwrap_or(0.0);
        let mut out = vec![format!(
            "pg {what}: statements executed for {:.2} s in all over {:.2} s of wall time",
            total / 1000.0,
            wall.as_secs_f64()
        )];
        for r in rows {
            if r.len() >= 5 {
                out.push(format!(
                    "pg {what}: {} calls, {} ms total, {} ms mean, {} rows: {}",
                    r[0], r[1], r[2], r[3], r[4]
                ));
            }
        }
        out
    }

    /// Appends `n` purchases (event ids `{prefix}-{i}`) and waits until the engines applied
    /// them all. Prints its lines; returns (append, append→applied) from the first append.
    async fn ingest(&mut self, what: &str, prefix: &str, n: usize) -> (Duration, Duration) {
        let kind = "kind=\"purchase\"";
        let applied0 = self
            .engines_metric("loyalty_events_applied_total", kind)
            .await;
        let stages0 = self.stages().await;
        self.reset_statements();
        let perf = perf_start(self);
        let mut cpu = self.cpu_probe();
        cpu.start();
        let t0 = Instant::now();
        let this = &*self;
        stream::iter(0..n)
            .map(|i| async move {
                let member = &this.members[i % MEMBERS];
                let cents = 100 + ((i * 37) % 900) as i64;
                let env = this
                    .sender
                    .purchase(&format!("{prefix}-{i}"), member, cents);
                this.sender.append(&env).await;
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        let appended = t0.elapsed();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let applied = self
                .engines_metric("loyalty_events_applied_total", kind)
                .await;
            if applied - applied0 >= n as f64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} applied",
                applied - applied0
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e2e = t0.elapsed();
        let (spent, wall) = cpu.stop();
        let perf = perf_stop(perf);
        let s = self.stages().await.since(&stages0);
        println!("{}", cpu_line(what, &spent, wall, n));
        println!("{}", s.line(what, wall));
        for l in self.statements_lines(what, wall) {
            println!("{l}");
        }
        for l in perf {
            println!("perf {what}: {l}");
        }
        (appended, e2e)
    }

    /// `k` purchases one at a time on an idle cluster: from the append until the engines'
    /// counter shows it applied (polled every 5 ms), and the engines' own receipt→published
    /// lag. Prints one line.
    async fn latency_probe(&mut self, what: &str, prefix: &str, k: usize) {
        let kind = "kind=\"purchase\"";
        let s0 = self.stages().await;
        let mut took = Vec::new();
        for j in 0..k {
            let a0 = self
                .engines_metric("loyalty_events_applied_total", kind)
                .await;
            let env =
                self.sender
                    .purchase(&format!("{prefix}-{j}"), &self.members[j % MEMBERS], 500);
            let t = Instant::now();
            self.sender.append(&env).await;
            let appended = t.elapsed();
            let deadline = Instant::now() + Duration::from_secs(10);
            while self
                .engines_metric("loyalty_events_applied_total", kind)
                .await
                < a0 + 1.0
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            took.push((appended, t.elapsed()));
            // 50 to 350 ms apart, so that the sends do not lock onto the engine's fetch cycle.
            tokio::time::sleep(Duration::from_millis(50 + (j as u64 * 97) % 300)).await;
        }
        let s = self.stages().await.since(&s0);
        let mut applied: Vec<f64> = took.iter().map(|t| t.1.as_secs_f64() * 1e3).collect();
        let mut appends: Vec<f64> = took.iter().map(|t| t.0.as_secs_f64() * 1e3).collect();
        applied.sort_by(f64::total_cmp);
        appends.sort_by(f64::total_cmp);
        let pct = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!(
            "latency {what}: {k} purchases one at a time on an idle cluster: append (acks=all) \
             p50 {:.1} ms, max {:.1} ms; append→applied p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms; \
             engines' receipt→published lag {:.1} ms mean; batch {:.2} ms mean, store commit \
             {:.2} ms mean",
            pct(&appends, 0.5),
            pct(&appends, 1.0),
            pct(&applied, 0.5),
            pct(&applied, 0.9),
            pct(&applied, 1.0),
            if s.lags > 0.0 {
                1e3 * s.lag / s.lags
            } else {
                0.0
            },
            if s.batches > 0.0 {
                1e3 * s.busy / s.batches
            } else {
                0.0
            },
            if s.commits > 0.0 {
                1e3 * s.commit / s.commits
            } else {
                0.0
            },
        );
    }

    /// CPU of every process over `d` with no traffic at all: what the cluster costs idle (the
    /// consumers' fetches, heartbeats, checkpoints). Prints one line.
    async fn idle_cpu(&mut self, what: &str, d: Duration) {
        let mut cpu = self.cpu_probe();
        cpu.start();
        tokio::time::sleep(d).await;
        let (spent, wall) = cpu.stop();
        let parts: Vec<String> = spent
            .iter()
            .map(|(name, s)| format!("{name} {:.1} %", 100.0 * s / wall.as_secs_f64()))
            .collect();
        println!(
            "cpu idle {what}: {:.1} s with no traffic; share of one core: {}",
            wall.as_secs_f64(),
            parts.join(", ")
        );
    }

    /// Every event id of `prefix` applied exactly once, `n` of them, and every balance the sum
    /// of its ledger; prints the counts, returns whether they hold.
    async fn check_once(&mut self, what: &str, prefix: &str, n: usize) -> bool {
        let url = self.cluster.postgres_url().to_owned();
        // The applied counter is bumped once the store has the effect; allow the last commits
        // a moment to be visible to another connection.
        let deadline = Instant::now() + Duration::from_secs(120);
        let (entries, distinct, records, off) = loop {
            let r = applied_once(&url, &format!("{prefix}-")).expect("psql");
            if r.1 as usize >= n || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ok =
            entries as usize == n && distinct as usize == n && records as usize == n && off == 0;
        println!(
            "exactly once ({what}): {n} sent; in PostgreSQL {entries} ledger entries, {distinct} \
             distinct event ids, {records} idempotency records; {} lost, {} applied twice; {off} \
             balances not the sum of their ledger: {}",
            n.saturating_sub(distinct as usize),
            entries.saturating_sub(distinct),
            if ok { "ok" } else { "DIFFERENCES" }
        );
        ok
    }
}

/// The engines' stage counters (sums of their histograms and counters).
#[derive(Default, Clone, Copy)]
struct Stages {
    busy: f64,
    batches: f64,
    records: f64,
    commit: f64,
    commits: f64,
    checkpoint: f64,
    checkpoints: f64,
    claims: f64,
    lag: f64,
    lags: f64,
    replayed: f64,
}

impl Stages {
    fn since(&self, a: &Stages) -> Stages {
        Stages {
            busy: self.busy - a.busy,
            batches: self.batches - a.batches,
            records: self.records - a.records,
            commit: self.commit - a.commit,
            commits: self.commits - a.commits,
            checkpoint: self.checkpoint - a.checkpoint,
            checkpoints: self.checkpoints - a.checkpoints,
            claims: self.claims - a.claims,
            lag: self.lag - a.lag,
            lags: self.lags - a.lags,
            replayed: self.replayed - a.replayed,
        }
    }

    fn line(&self, what: &str, wall: Duration) -> String {
        let per = |sum: f64, n: f64| if n > 0.0 { 1000.0 * sum / n } else { 0.0 };
        format!(
            "stages {what}: engine batches busy {:.2} s (summed over worker threads) of {:.2} s \
             wall, {:.0} batches of {:.1} records, {:.2} ms each; store commits {:.0}, {:.2} ms \
             each ({:.2} s in all); checkpoints {:.0}, {:.2} ms each; event ids claimed {:.0}; \
             receipt→published lag {:.1} ms mean; replayed {:.0}",
            self.busy,
            wall.as_secs_f64(),
            self.batches,
            if self.batches > 0.0 {
                self.records / self.batches
            } else {
                0.0
            },
            per(self.busy, self.batches),
            self.commits,
            per(self.commit, self.commits),
            self.commit,
            self.checkpoints,
            per(self.checkpoint, self.checkpoints),
            self.claims,
            per(self.lag, self.lags),
            self.replayed
        )
    }
}

/// `perf record -e cpu-clock -g` of the single engine, when `LOYALTY_BENCH_PERF=1` and there
/// is one engine.
fn perf_start(b: &mut Bench) -> Option<(std::process::Child, PathBuf)> {
    if std::env::var("LOYALTY_BENCH_PERF").map_or(true, |v| v != "1") {
        return None;
    }
    let live = b.cluster.live_engines();
    if live.len() != 1 {
        return None;
    }
    let pid = b.cluster.engine(live[0]).pid();
    let file = b.cluster.log_dir().join("perf-engine.data");
    let child = std::process::Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "499", "-g", "-o"])
        .arg(&file)
        .args(["-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some((child, file))
}

/// Stops the recording; the profile's top entries by thread and by function.
fn perf_stop(p: Option<(std::process::Child, PathBuf)>) -> Vec<String> {
    let Some((mut child, file)) = p else {
        return Vec::new();
    };
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let report = |sort: &str, limit: &str| {
        std::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--sort",
                sort,
            ])
            .args(["--percent-limit", limit, "-i"])
            .arg(&file)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (sort, limit) in [("comm", "2"), ("dso,sym", "1.5")] {
        out.extend(
            report(sort, limit)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .take(25)
                .map(|l| format!("[{sort}] {}", l.trim())),
        );
    }
    out
}

fn ingestion_line(what: &str, n: usize, raw: (Duration, Duration), p: (Duration, Duration)) {
    println!(
        "raw rdkafka ({what}): append {:.0}/s; append→consume (consumer reading meanwhile) {:.0}/s",
        rate(n, raw.0),
        rate(n, raw.1)
    );
    println!(
        "multiprocess {what}: append {:.0}/s; append→applied on PostgreSQL: {:.0}/s ({:.0} % of raw append→consume)",
        rate(n, p.0),
        rate(n, p.1),
        100.0 * raw.1.as_secs_f64() / p.1.as_secs_f64()
    );
}

/// The partitions an engine owned last, from its log (`partitions assigned partitions=[..]`).
fn owned_from_log(path: &std::path::Path) -> Vec<u32> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let mut owned = Vec::new();
    for l in plain.lines() {
        if !l.contains("loyalty_core::engine") {
            continue;
        }
        if l.contains("partitions revoked") {
            owned.clear();
        }
        if l.contains("partitions assigned") {
            if let Some(list) = l
                .split("partitions=[")
                .nth(1)
                .and_then(|r| r.split(']').next())
            {
                owned = list
                    .split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect();
            }
        }
    }
    owned
}

/// Per partition: the newest claim time (seconds since the epoch) of the event ids of
/// `prefix` (`{prefix}-{partition}-{n}`).
fn newest_claims(url: &str, prefix: &str) -> HashMap<u32, f64> {
    psql(
        url,
        &format!(
            "SELECT split_part(event_id, '-', 2), extract(epoch FROM max(claimed_at)) \
               FROM event_claims WHERE event_id LIKE '{prefix}-%' GROUP BY 1"
        ),
    )
    .unwrap_or_default()
    .into_iter()
    .filter_map(|r| Some((r.first()?.parse().ok()?, r.get(1)?.parse().ok()?)))
    .collect()
}

/// Handoff: a steady stream on every partition, kill -9 of one engine of three, the gap until
/// each partition applies a new event again (from `event_claims.claimed_at`). Prints its lines;
/// returns whether every event was applied exactly once.
/// What one handoff round found, for the summary line.
struct Handoff {
    /// The killed engine's partitions applying again: `"14.29 s"` or `"never within 30 s"`.
    victims: String,
    others_pause: f64,
    met: bool,
    replacement: String,
    once_ok: bool,
}

async fn handoff(b: &mut Bench, round: usize) -> Handoff {
    let prefix = format!("ho{round}");
    let what = format!("handoff {round}");
    let per_s = secs_env("LOYALTY_BENCH_HANDOFF_RATE", 600) as f64;
    let before = Duration::from_secs(5);
    let after = Duration::from_secs(3);
    let url = b.cluster.postgres_url().to_owned();
    let mut by_partition: Vec<Vec<MemberId>> = vec![Vec::new(); PARTITIONS as usize];
    for m in &b.members {
        by_partition[partition_for(m.as_str().as_bytes(), PARTITIONS) as usize].push(m.clone());
    }
    assert!(
        by_partition.iter().all(|m| !m.is_empty()),
        "a partition without members"
    );
    let live = b.cluster.live_engines();
    assert_eq!(live.len(), 3, "three engines before the kill");
    let victim = live[0];
    let replayed0 = b.replayed_by_engine().await;

    // The stream: `per_s` purchases a second, partition after partition.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (sender, stop, sent) = (b.sender.clone(), Arc::clone(&stop), Arc::clone(&sent));
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(256));
            let mut tasks = tokio::task::JoinSet::new();
            let t0 = Instant::now();
            let mut seq = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let due = (t0.elapsed().as_secs_f64() * per_s) as usize;
                while seq < due {
                    let p = seq % PARTITIONS as usize;
                    let k = seq / PARTITIONS as usize;
                    let members = &by_partition[p];
                    let env = sender.purchase(
                        &format!("{prefix}-{p}-{k}"),
                        &members[k % members.len()],
                        100 + (k % 900) as i64,
                    );
                    let permit = Arc::clone(&limit).acquire_owned().await.unwrap();
                    let sender = sender.clone();
                    tasks.spawn(async move {
                        sender.append(&env).await;
                        drop(permit);
                    });
                    seq += 1;
                }
                while tasks.try_join_next().is_some() {}
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            while tasks.join_next().await.is_some() {}
            sent.store(seq, Ordering::Relaxed);
        })
    };
    tokio::time::sleep(before).await;
    let victim_owned = owned_from_log(&b.cluster.engine(victim).stderr_path());
    let kill_epoch = epoch_now();
    let killed_at = Instant::now();
    b.cluster.kill9_engine(victim);

    // Until every partition has applied an event claimed after `since` (or `timeout`).
    let all_applying = |since: f64, timeout: Duration| {
        let (url, prefix) = (url.clone(), prefix.clone());
        async move {
            let t = Instant::now();
            while t.elapsed() < timeout {
                let newest = newest_claims(&url, &prefix);
                if (0..PARTITIONS).all(|p| newest.get(&p).is_some_and(|t| *t > since)) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            false
        }
    };
    let wait = Duration::from_secs(secs_env("LOYALTY_BENCH_HANDOFF_WAIT", 30));
    let handed_over = all_applying(kill_epoch, wait).await;
    // Not handed over: an engine is started in place of the killed one, as its pod would be
    // restarted, so that the stream's events can be checked (and how long that takes is known).
    let mut replacement = None;
    if !handed_over {
        let at = killed_at.elapsed();
        let epoch = epoch_now();
        let i = b
            .cluster
            .start_engine()
            .await
            .expect("replacement engine starts");
        let applying = all_applying(epoch, Duration::from_secs(120)).await;
        replacement = Some((i, at, epoch, applying));
    }
    tokio::time::sleep(after).await;
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let sent = sent.load(Ordering::Relaxed);
    let stream_secs = killed_at.elapsed().as_secs_f64() + before.as_secs_f64();

    // Every event applied once, then the group's lag back to 0.
    let ok = b.check_once(&what, &prefix, sent).await;
    let (lag, lag_wait) = wait_lag_zero(
        &b.cluster.broker.brokers(),
        GROUP,
        TOPIC,
        PARTITIONS,
        Duration::from_secs(60),
    )
    .await;
    let lag_total: u64 = lag
        .as_ref()
        .map_or(u64::MAX, |l| l.iter().map(|p| p.lag()).sum());

    // The gaps, from every claim of the stream.
    let mut claims: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for r in psql(
        &url,
        &format!(
            "SELECT split_part(event_id, '-', 2), extract(epoch FROM claimed_at) \
               FROM event_claims WHERE event_id LIKE '{prefix}-%'"
        ),
    )
    .unwrap_or_default()
    {
        if let (Some(Ok(p)), Some(Ok(t))) = (
            r.first().map(|v| v.parse::<u32>()),
            r.get(1).map(|v| v.parse::<f64>()),
        ) {
            claims.entry(p).or_default().push(t);
        }
    }
    // Per partition: from the kill to its first new claim, and the longest pause between two
    // claims after the kill (the kill itself counting as a claim).
    let (mut first, mut pause): (BTreeMap<u32, Option<f64>>, BTreeMap<u32, f64>) =
        Default::default();
    let horizon = replacement.map_or(kill_epoch + wait.as_secs_f64(), |r| r.2 + 120.0);
    for p in 0..PARTITIONS {
        let mut ts: Vec<f64> = claims.get(&p).cloned().unwrap_or_default();
        ts.retain(|t| *t > kill_epoch);
        ts.sort_by(f64::total_cmp);
        first.insert(p, ts.first().map(|t| t - kill_epoch));
        let mut prev = kill_epoch;
        let mut longest: f64 = 0.0;
        for t in &ts {
            longest = longest.max(t - prev);
            prev = *t;
        }
        if ts.is_empty() {
            longest = horizon - kill_epoch;
        }
        pause.insert(p, longest);
    }
    let victims_first: Option<f64> = victim_owned
        .iter()
        .map(|p| first[p])
        .try_fold(0.0f64, |m, g| g.map(|g| m.max(g)));
    let others_pause = (0..PARTITIONS)
        .filter(|p| !victim_owned.contains(p))
        .map(|p| pause[&p])
        .fold(0.0f64, f64::max);
    let fmt = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.2} s"));
    let per: Vec<String> = first
        .iter()
        .map(|(p, g)| {
            format!(
                "{p}{}={}",
                if victim_owned.contains(p) { "*" } else { "" },
                g.map_or("never".into(), |g| format!("{g:.2}"))
            )
        })
        .collect();
    let target = session_timeout().as_secs_f64() + 2.0;
    // Deliveries of already applied events on the engines that survived (a killed engine's
    // counter goes with it).
    let replayed: f64 = b
        .replayed_by_engine()
        .await
        .iter()
        .map(|(i, r)| r - replayed0.get(i).copied().unwrap_or(0.0))
        .sum();
    let verdict = if handed_over && victims_first.is_some_and(|v| v <= target) {
        "met"
    } else {
        "missed"
    };
    let handoff_text = if handed_over {
        fmt(victims_first)
    } else {
        format!("never within {} s", wait.as_secs())
    };
    println!(
        "{what}: kill -9 of engine-{victim} (of 3; it owned partitions {victim_owned:?}) {:.0} s \
         into a stream of {per_s:.0} purchases/s; its partitions applying again on the others \
         after {handoff_text}; the other partitions paused at most {others_pause:.2} s (the \
         rebalance); engines' session timeout {} s (heartbeat {} ms), target ≤ {target:.1} s: \
         {verdict}",
        before.as_secs_f64(),
        session_timeout().as_secs_f64(),
        heartbeat().as_millis(),
    );
    let mut repl_text = String::new();
    if let Some((i, at, epoch, applying)) = replacement {
        let back: Option<f64> = victim_owned
            .iter()
            .map(|p| {
                claims.get(p).and_then(|ts| {
                    ts.iter()
                        .copied()
                        .filter(|t| *t > epoch)
                        .reduce(f64::min)
                        .map(|t| t - epoch)
                })
            })
            .try_fold(0.0f64, |m, g| g.map(|g| m.max(g)));
        println!(
            "{what} replacement: engine-{i} started {:.1} s after the kill (no handoff by then); \
             the killed engine's partitions applying again {} after it started ({}); {:.1} s \
             from the kill",
            at.as_secs_f64(),
            fmt(back),
            if applying {
                "every partition applying"
            } else {
                "NOT every partition within 120 s"
            },
            at.as_secs_f64() + back.unwrap_or(f64::NAN)
        );
        repl_text = format!(
            "replacement engine started {:.1} s after the kill: applying {} later",
            at.as_secs_f64(),
            fmt(back)
        );
    }
    println!(
        "{what} per partition (seconds from the kill to its first new claim; * = the killed \
         engine's): {}",
        per.join(" ")
    );
    println!(
        "{what} stream: {sent} purchases in {stream_secs:.1} s; engines replayed {:.0} \
         deliveries of already applied events (no effect); consumer lag {} after {:.1} s",
        replayed,
        if lag_total == u64::MAX {
            "not read".to_owned()
        } else {
            lag_total.to_string()
        },
        lag_wait.as_secs_f64()
    );
    Handoff {
        victims: handoff_text,
        others_pause,
        met: verdict == "met",
        replacement: repl_text,
        once_ok: ok && lag_total == 0,
    }
}

/// The ingestion part: 1 engine, then 3, each next to the raw broker; whether every event was
/// applied exactly once.
async fn ingestion_1_and_3_engines(b: &mut Bench, n: usize) -> bool {
    let sample = b.sample();
    let mut ok = true;
    let brokers = b.cluster.broker.brokers();

    // 1 engine.
    b.idle_cpu("1 engine", Duration::from_secs(5)).await;
    b.latency_probe("1 engine", "lp1", 30).await;
    // The same one-at-a-time latency of the broker alone: a plain consumer with librdkafka's
    // defaults (fetch.wait.max.ms=500), then with fetch.wait.max.ms=10 (the engines' setting,
    // KafkaConfig::fetch_wait_max, since 2026-12-01).
    for (what, extra) in [
        ("librdkafka defaults", vec![]),
        ("fetch.wait.max.ms=10", vec![("fetch.wait.max.ms", "10")]),
    ] {
        let topic = format!("raw-latency-{}", what.len());
        let took = raw_kafka_latency(
            b.sender.log.as_ref(),
            &brokers,
            &topic,
            20,
            sample.clone(),
            &extra,
        )
        .await;
        let acked: Vec<Duration> = took.iter().map(|t| t.0).collect();
        let read: Vec<Duration> = took.iter().map(|t| t.1).collect();
        println!(
            "latency raw rdkafka ({what}): {} records one at a time: produce acknowledged p50 \
             {:.1} ms; produce→read p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
            took.len(),
            quantile_ms(&acked, 0.5),
            quantile_ms(&read, 0.5),
            quantile_ms(&read, 0.9),
            quantile_ms(&read, 1.0)
        );
    }
    let mut cpu = b.cpu_probe();
    cpu.start();
    let raw1 = raw_kafka_produce_consume(
        b.sender.log.as_ref(),
        &brokers,
        "raw-bench-1",
        PARTITIONS,
        n,
        sample.clone(),
        MEMBERS,
    )
    .await;
    let (spent, wall) = cpu.stop();
    println!("{}", cpu_line("raw broker", &spent, wall, n));
    let one = b.ingest("1 engine", "mb1", n).await;
    ingestion_line("1 engine", n, raw1, one);
    ok &= b.check_once("1 engine", "mb1", n).await;

    // 3 engines.
    for _ in 0..2 {
        b.cluster.add_engine().await.expect("engine starts");
    }
    b.wait_settled(3, Duration::from_secs(120)).await;
    b.idle_cpu("3 engines", Duration::from_secs(5)).await;
    let raw3 = raw_kafka_produce_consume(
        b.sender.log.as_ref(),
        &brokers,
        "raw-bench-3",
        PARTITIONS,
        n,
        sample.clone(),
        MEMBERS,
    )
    .await;
    let three = b.ingest("3 engines", "mb3", n).await;
    ingestion_line("3 engines", n, raw3, three);
    ok &= b.check_once("3 engines", "mb3", n).await;
    ok
}

/// Copies the cluster's logs (engines, gateways, tansu) to `$LOYALTY_BENCH_LOGS/<now>/`, when
/// that is set, before the cluster's directory goes with it.
fn keep_logs(b: &Bench) {
    let Some(root) = std::env::var_os("LOYALTY_BENCH_LOGS") else {
        return;
    };
    let to = PathBuf::from(root).join(format!("{:.0}", epoch_now()));
    if let Err(e) = std::fs::create_dir_all(&to) {
        println!("logs not kept: {e}");
        return;
    }
    let mut from: Vec<PathBuf> = std::fs::read_dir(b.cluster.log_dir())
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    from.push(b.cluster.broker.dir().join("tansu.log"));
    for f in from
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
    {
        if let Some(name) = f.file_name() {
            let _ = std::fs::copy(f, to.join(name));
        }
    }
    println!("logs kept in {}", to.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by loadtest/bench.sh and scripts/run-ignored.sh (about 2 minutes in release; PostgreSQL, tansu, redis-server)"]
async fn multiprocess_ingestion_1_and_3_engines_and_handoff_on_postgres() {
    let n = events(20_000);
    // `LOYALTY_BENCH_HANDOFF_ONLY=1`: three engines from the start, the handoff rounds only.
    let handoff_only = std::env::var("LOYALTY_BENCH_HANDOFF_ONLY").is_ok_and(|v| v == "1");
    let Some(mut b) = Bench::start(1, if handoff_only { 3 } else { 1 }).await else {
        return;
    };
    println!(
        "records: {n} of {} bytes, {IN_FLIGHT} in flight, {PARTITIONS} partitions, one tansu \
         broker (sqlite), PostgreSQL {} (shared store), redis-server; engine session timeout {} \
         s, heartbeat {} ms",
        b.sample().len(),
        psql(b.cluster.postgres_url(), "SHOW server_version")
            .ok()
            .and_then(|r| r.first().and_then(|r| r.first().cloned()))
            .unwrap_or_default(),
        session_timeout().as_secs_f64(),
        heartbeat().as_millis()
    );
    let mut ok = true;
    if !handoff_only {
        ok &= ingestion_1_and_3_engines(&mut b, n).await;
    }

    // Handoff, `LOYALTY_BENCH_HANDOFF_ROUNDS` times (2), each with three engines at the kill.
    let rounds = secs_env("LOYALTY_BENCH_HANDOFF_ROUNDS", 2) as usize;
    let mut results = Vec::new();
    for round in 1..=rounds {
        while b.cluster.live_engines().len() < 3 {
            b.cluster.add_engine().await.expect("engine starts");
        }
        b.wait_settled(3, Duration::from_secs(120)).await;
        let h = handoff(&mut b, round).await;
        ok &= h.once_ok;
        results.push(h);
    }
    // For loadtest/bench.sh (shell assignments).
    let join =
        |f: &dyn Fn(&Handoff) -> String| results.iter().map(f).collect::<Vec<_>>().join("; ");
    println!(
        "handoff figures: HO_ROUNDS='{rounds}' HO_VICTIMS='{}' HO_OTHERS='{}' HO_TARGET='{:.0}' \
         HO_SESSION='{}' HO_VERDICT='{}' HO_REPL='{}' HO_ONCE='{}'",
        join(&|h| h.victims.clone()),
        join(&|h| format!("{:.2} s", h.others_pause)),
        session_timeout().as_secs_f64() + 2.0,
        session_timeout().as_secs_f64(),
        if results.iter().all(|h| h.met) {
            "met"
        } else if results.iter().any(|h| h.met) {
            "met in some rounds only"
        } else {
            "missed"
        },
        join(&|h| h.replacement.clone()).trim_matches(&[';', ' '][..]),
        if results.iter().all(|h| h.once_ok) {
            "every round: nothing lost, nothing applied twice, lag 0"
        } else {
            "DIFFERENCES (see above)"
        }
    );
    keep_logs(&b);
    assert!(ok, "differences (see the lines above)");
}

/// `loyalty-loadtest`: `$LOYALTY_LOADTEST_BIN`, else beside the `loyalty` binary.
fn loadtest_binary(cluster: &Cluster) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOYALTY_LOADTEST_BIN") {
        return Some(PathBuf::from(p));
    }
    let p = cluster.binary().parent()?.join("loyalty-loadtest");
    p.is_file().then_some(p)
}

/// Runs `loyalty-loadtest run` with `args`, its CPU probed; returns its JSON report.
async fn loadtest(
    b: &mut Bench,
    bin: &std::path::Path,
    what: &str,
    args: Vec<String>,
    json_path: PathBuf,
) -> Option<Value> {
    let mut cpu = b.cpu_probe();
    let child = std::process::Command::new(bin)
        .arg("run")
        .args(&args)
        .arg("--out")
        .arg(&json_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("loyalty-loadtest starts");
    cpu.group("loyalty-loadtest", vec![child.id()]);
    cpu.start();
    // Its CPU is read while it runs (a reaped process has no /proc entry): just before it ends.
    let pid = child.id();
    let watcher = tokio::spawn(async move {
        let mut last = 0.0;
        loop {
            let now = loyalty_tests::bench::cpu_seconds(pid);
            if now == 0.0 && last > 0.0 {
                return last;
            }
            last = now.max(last);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let out = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output();
        out.expect("loyalty-loadtest runs")
    })
    .await
    .unwrap();
    let (mut spent, wall) = cpu.stop();
    let lt_cpu = tokio::time::timeout(Duration::from_secs(1), watcher)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0.0);
    if let Some(e) = spent.iter_mut().find(|(n, _)| n == "loyalty-loadtest") {
        e.1 = lt_cpu;
    }
    spent.retain(|(n, _)| n != "bench (producer)");
    let report: Option<Value> = std::fs::read(&json_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let requests = report
        .as_ref()
        .and_then(|r| r["total"]["latency_ms"]["count"].as_u64())
        .unwrap_or(0) as usize;
    println!("{}", cpu_line(what, &spent, wall, requests));
    if report.is_none() || !out.status.success() {
        println!(
            "loyalty-loadtest ({what}) exited with {}:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by loadtest/bench.sh and scripts/run-ignored.sh (about 1 minute in release; PostgreSQL, tansu, redis-server, loyalty-loadtest)"]
async fn checkout_mix_through_two_gateways_on_postgres() {
    let secs = secs_env("LOYALTY_BENCH_SECS", 10);
    let users = secs_env("LOYALTY_BENCH_USERS", 64);
    let members = secs_env("LOYALTY_BENCH_MEMBERS", 10_000);
    let engines = secs_env("LOYALTY_BENCH_ENGINES", 3) as usize;
    let Some(mut b) = Bench::start(2, engines).await else {
        return;
    };
    let Some(bin) = loadtest_binary(&b.cluster) else {
        println!(
            "SKIPPED: no loyalty-loadtest beside {} (cargo build --release -p loyalty-loadtest) \
             and LOYALTY_LOADTEST_BIN unset",
            b.cluster.binary().display()
        );
        return;
    };
    let out_dir = std::env::var_os("LOYALTY_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| b.cluster.log_dir().to_path_buf());
    let targets = b.cluster.gateway_urls().join(",");
    let state = b.cluster.log_dir().join("loadtest-state.json");
    let admin_key = b.cluster.admin_key().to_owned();
    let common = |model: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--url".into(),
            targets.clone(),
            "--admin-key".into(),
            admin_key.clone(),
            "--members".into(),
            members.to_string(),
            "--no-progress".into(),
            "--state".into(),
            state.display().to_string(),
            "--ramp-up".into(),
            "2s".into(),
            "--duration".into(),
            format!("{secs}s"),
        ];
        a.extend(model.iter().map(|s| s.to_string()));
        a
    };
    let closed = loadtest(
        &mut b,
        &bin,
        "checkout closed",
        common(&["--model", "closed", "--users", &users.to_string()]),
        out_dir.join("mp-closed.json"),
    )
    .await;
    let max = closed
        .as_ref()
        .and_then(|r| r["total"]["throughput"].as_f64())
        .unwrap_or(0.0);
    let half = (max / 2.0).round().max(1.0);
    b.reset_statements();
    let open = loadtest(
        &mut b,
        &bin,
        "checkout open",
        common(&["--model", "open", "--rate", &half.to_string()]),
        out_dir.join("mp-open.json"),
    )
    .await;
    for l in b.statements_lines("checkout open", Duration::from_secs(secs + 2)) {
        println!("{l}");
    }
    let lat = |r: &Option<Value>, p: &str| {
        r.as_ref()
            .and_then(|r| r["total"]["latency_ms"][p].as_f64())
            .unwrap_or(f64::NAN)
    };
    let passed = |r: &Option<Value>| {
        r.as_ref()
            .and_then(|r| r["correctness"]["passed"].as_bool())
            .unwrap_or(false)
    };
    let ops = open
        .as_ref()
        .and_then(|r| r["ops"].as_object().cloned())
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v["latency_ms"]["count"].as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k} {:.1}", v["latency_ms"]["p99"].as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!(
        "checkout 2 gateways: {engines} engines, {users} tills (closed): max {max:.0} req/s p99 \
         {:.1} ms, errors {}, check {}; open at {half:.0} req/s: {:.0} req/s p50 {:.2} ms p99 \
         {:.2} ms p99.9 {:.2} ms, errors {}, check {}; p99 per operation, ms: {ops}",
        lat(&closed, "p99"),
        closed
            .as_ref()
            .map_or(-1, |r| r["total"]["errors"].as_i64().unwrap_or(-1)),
        if passed(&closed) { "passed" } else { "failed" },
        open.as_ref()
            .and_then(|r| r["total"]["throughput"].as_f64())
            .unwrap_or(0.0),
        lat(&open, "p50"),
        lat(&open, "p99"),
        lat(&open, "p999"),
        open.as_ref()
            .map_or(-1, |r| r["total"]["errors"].as_i64().unwrap_or(-1)),
        if passed(&open) { "passed" } else { "failed" },
    );
    // For loadtest/bench.sh (shell assignments).
    println!(
        "checkout figures: CO_ENGINES='{engines}' CO_MAX='{max:.0}' CO_CP99='{:.1}' \
         CO_HALF='{half:.0}' CO_RATE='{:.0}' CO_P50='{:.2}' CO_P99='{:.2}' CO_P999='{:.2}' \
         CO_ERR='{}' CO_CHECK='{}' CO_OPS='{ops}'",
        lat(&closed, "p99"),
        open.as_ref()
            .and_then(|r| r["total"]["throughput"].as_f64())
            .unwrap_or(0.0),
        lat(&open, "p50"),
        lat(&open, "p99"),
        lat(&open, "p999"),
        open.as_ref()
            .map_or(-1, |r| r["total"]["errors"].as_i64().unwrap_or(-1)),
        if passed(&closed) && passed(&open) {
            "passed"
        } else {
            "failed"
        },
    );
    assert!(
        passed(&closed) && passed(&open),
        "the load generator's exactly-once check failed (see above)"
    );
}
