//! The distributed shape as real OS processes: `loyalty gateway` ×2 and `loyalty engine` ×1…3
//! on PostgreSQL (the shared store), tansu (Kafka) and redis-server, all started by the test on
//! loopback ports ([`loyalty_testkit::process::Cluster`]).
//!
//! Clients stream purchases, refunds and redemptions for many members through both gateways
//! and record every answer. One scenario, in phases, one fault at a time while the stream runs:
//! 1. a new engine joins (1 → 2 engines);
//! 2. SIGTERM of an engine (2 → 1): its partitions are handed over after the drain and nothing
//!    is delivered again (the engines' `loyalty_events_replayed_total` does not move);
//! 3. scaling 1 → 3 → 1 (two engines join, then two are stopped with SIGTERM);
//! 4. kill -9 of an engine (2 → 1): its partitions move after the broker's session timeout;
//! 5. kill -9 of a gateway: its clients retry on the other gateway with the same event ids.
//!
//! After each phase, with the stream stopped: the consumer lag is back to 0 (committed offsets
//! equal end offsets, read from the broker); every command of the phase is sent again and each
//! acknowledged one answers as a replay with the outcome told; every member's ledger holds each
//! applied command exactly once with its outcome's points, its balance is the ledger's sum, the
//! store holds what the outcomes add up to, and Redis equals the store. Each phase prints its
//! counts (sent, acknowledged, applied, differences), and the whole report is written to
//! `target/multiprocess-report.txt`.
//!
//! A second scenario, [`server_faults_lose_and_double_nothing`], is the fault matrix of the
//! servers on 2 gateways and 2 engines: Redis flushed, Redis restarted empty, PostgreSQL killed
//! and restarted, PostgreSQL unavailable for 10 s, the broker killed and restarted, an engine
//! frozen past its session timeout (cut off: it loses its partitions and comes back a zombie).
//! Same checks; its table (fault, sent, acknowledged, applied, lost, doubled, recovery) goes to
//! `target/fault-matrix-report.txt`. Without PostgreSQL, redis-server, tansu or the `loyalty`
//! binary the test prints `SKIPPED: <reason>` (it fails instead with
//! `LOYALTY_REQUIRE_SERVERS=1`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use loyalty_core::ports::{partition_for, HotCache, StateStore};
use loyalty_redis::{RedisCache, RedisCacheOptions};
use loyalty_testkit::process::{metric_sum, Cluster};
use loyalty_tests::demo_program;
use loyalty_tests::invariants::{
    check_members, resend, wait_lag_zero, Differences, PhaseReport, StreamCounts,
};
use loyalty_tests::traffic::{http_client, post, Answer, ClientState, Sent, Stream, Traffic};
use serde_json::json;
use tokio::time::Instant;

const MEMBERS: usize = 120;
const CLIENTS: usize = 8;
const PARTITIONS: u32 = 12;
/// Acknowledgements in a phase before its fault.
const BEFORE_FAULT: usize = 300;
/// Acknowledgements after the fault (once every partition is applying again).
const AFTER_FAULT: usize = 400;
/// How long the partitions of a killed engine may take to apply again elsewhere: the broker's
/// session timeout (10 s), the rebalance, and slack for this 2-core machine.
const KILL_HANDOVER: Duration = Duration::from_secs(30);
const TOPIC: &str = "pos-commands";
const GROUP: &str = "loyalty-engine";

struct Scenario {
    cluster: Cluster,
    traffic: Arc<Traffic>,
    states: Vec<ClientState>,
    /// Every command of every phase, and the answer of its resend.
    sent: Vec<Sent>,
    finals: Vec<Option<Answer>>,
    store: Option<Arc<dyn StateStore>>,
    store_note: String,
    redis: Arc<dyn HotCache>,
    reports: Vec<PhaseReport>,
    /// Engine index → (replayed, applied) at the start of the phase.
    baseline: HashMap<usize, (f64, f64)>,
    phase_started: Option<Instant>,
    /// The same instant on the wall clock, to compare with the engines' log lines.
    phase_started_at: jiff::Timestamp,
    text: String,
    /// Set by a phase that emptied Redis: before the checks, Redis is refilled as the runbook
    /// says (`POST /v1/admin/cache/rebuild`, docs/operations.md "Rebuilding Redis").
    rebuild_cache: bool,
    /// Set by a phase that measured it: from the end of its fault until every partition applied
    /// again.
    recovery: Option<Duration>,
    /// Where the report is written, under the target directory.
    report_file: &'static str,
}

/// The shared store, opened the way `loyalty` opens it (`postgres_url` in a configuration
/// file), so the check reads members straight from PostgreSQL rather than through the API.
async fn open_shared_store(
    url: &str,
    pii_keys: &str,
    franchise: &str,
) -> anyhow::Result<(Arc<dyn StateStore>, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("store.toml");
    std::fs::write(
        &file,
        format!(
            "postgres_url = {:?}\npii_keys = {:?}\ndata_dir = {:?}\n",
            url,
            pii_keys,
            dir.path().join("unused").display().to_string()
        ),
    )?;
    let config = loyalty::configuration::DevConfig::load(Some(&file))?;
    let opened = loyalty::startup::open_store(&config).await?;
    let store = opened.store;
    let id = loyalty_domain::FranchiseId::parse(franchise)
        .map_err(|e| anyhow::anyhow!("franchise id: {e}"))?;
    anyhow::ensure!(
        store.franchise(&id).await?.is_some(),
        "the store opened is not the cluster's (no franchise {franchise})"
    );
    Ok((store, dir))
}

impl Scenario {
    async fn start(
        engines: usize,
        report_file: &'static str,
    ) -> anyhow::Result<Option<(Scenario, Option<tempfile::TempDir>)>> {
        if let Err(reason) = Cluster::available() {
            println!("SKIPPED: {reason}");
            return Ok(None);
        }
        let started = Instant::now();
        let mut cluster = Cluster::builder()
            .gateways(2)
            .engines(engines)
            .partitions(PARTITIONS)
            .start()
            .await?;
        let franchise = cluster.provision("Multiprocess", demo_program(), 2).await?;
        let gateways = cluster.gateway_urls();
        // Members, enrolled through both gateways.
        let http = http_client();
        let enrolled: Vec<anyhow::Result<String>> = stream::iter(0..MEMBERS)
            .map(|i| {
                let (http, gw, key) = (
                    http.clone(),
                    gateways[i % gateways.len()].clone(),
                    franchise.stores[i % franchise.stores.len()].1.clone(),
                );
                async move {
                    let url = format!("{gw}/v1/members?wait_ms=5000");
                    let body = json!({"phone": format!("+3369{i:07}")});
                    let (status, v) = post(&http, &url, &key, &body).await?;
                    anyhow::ensure!(status == 201, "enrolment {i} answered {status}: {v}");
                    Ok(v["member_id"].as_str().unwrap_or_default().to_owned())
                }
            })
            .buffered(16)
            .collect()
            .await;
        let members = enrolled.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let traffic = Arc::new(Traffic {
            gateways: gateways.clone(),
            stores: franchise.stores.iter().map(|(_, k)| k.clone()).collect(),
            hq_key: franchise.hq_key.clone(),
            partition_of: members
                .iter()
                .map(|m| partition_for(m.as_bytes(), PARTITIONS))
                .collect(),
            members,
            clients: CLIENTS,
            reward: "free-coffee".into(),
            retry_for: Duration::from_secs(30),
            partitions: PARTITIONS,
        });
        let (store, store_dir, store_note) = match open_shared_store(
            cluster.postgres_url(),
            cluster.pii_keys(),
            &franchise.id,
        )
        .await
        {
            Ok((s, d)) => (Some(s), Some(d), "read directly from PostgreSQL".to_owned()),
            Err(e) => (
                None,
                None,
                format!("not opened ({e:#}); checked through the ledger and the model"),
            ),
        };
        let redis: Arc<dyn HotCache> = Arc::new(
            RedisCache::connect(&cluster.redis.url(), RedisCacheOptions::default()).await?,
        );
        let mut text = String::new();
        text.push_str(&format!(
            "multi-process run: {} gateways, {} engine at the start, {PARTITIONS} partitions, \
             {MEMBERS} members, {CLIENTS} clients; PostgreSQL + redis-server + tansu; started \
             and provisioned in {:.1} s; logs in {}\nstore: {store_note}\n",
            gateways.len(),
            cluster.live_engines().len(),
            started.elapsed().as_secs_f64(),
            cluster.log_dir().display()
        ));
        print!("{text}");
        Ok(Some((
            Scenario {
                cluster,
                traffic,
                states: (0..CLIENTS).map(ClientState::new).collect(),
                sent: Vec::new(),
                finals: Vec::new(),
                store,
                store_note,
                redis,
                reports: Vec::new(),
                baseline: HashMap::new(),
                phase_started: None,
                phase_started_at: jiff::Timestamp::now(),
                text,
                rebuild_cache: false,
                recovery: None,
                report_file,
            },
            store_dir,
        )))
    }

    /// (replayed, applied) of every live engine.
    async fn engine_counters(&mut self) -> HashMap<usize, (f64, f64)> {
        let mut out = HashMap::new();
        for (i, m) in self.cluster.engine_metrics().await {
            if let Ok(text) = m {
                out.insert(
                    i,
                    (
                        metric_sum(&text, "loyalty_events_replayed_total"),
                        metric_sum(&text, "loyalty_events_applied_total"),
                    ),
                );
            }
        }
        out
    }

    /// Starts the clients for the next phase.
    async fn begin(&mut self) -> Stream {
        self.baseline = self.engine_counters().await;
        self.phase_started = Some(Instant::now());
        self.phase_started_at = jiff::Timestamp::now();
        let phase = self.reports.len() + 1;
        Stream::start(
            Arc::clone(&self.traffic),
            std::mem::take(&mut self.states),
            phase,
        )
    }

    /// Stops the clients and checks everything; prints and keeps the phase's report.
    async fn end(
        &mut self,
        name: &str,
        stream: Stream,
        fault: String,
        replays_allowed: bool,
        found: Differences,
    ) {
        let (states, sent) = stream.stop().await;
        self.states = states;
        let started = self.phase_started.take().unwrap_or_else(Instant::now);
        let mut report = PhaseReport {
            name: format!("phase {}: {name}", self.reports.len() + 1),
            fault,
            stream: StreamCounts::of(&sent),
            replays_allowed,
            other: found,
            recovery: self.recovery.take(),
            ..PhaseReport::default()
        };
        if std::mem::take(&mut self.rebuild_cache) {
            match self.rebuild_cache().await {
                Ok(note) => report.notes.push(note),
                Err(e) => report.other.add("Redis not rebuilt", format!("{e:#}")),
            }
        }
        // The engines catch up: every partition's committed offset reaches its end.
        let (lag, waited) = wait_lag_zero(
            &self.cluster.broker.brokers(),
            GROUP,
            TOPIC,
            PARTITIONS,
            Duration::from_secs(90),
        )
        .await;
        report.lag_wait = waited;
        match lag {
            Ok(l) => {
                let behind: u64 = l.iter().map(|p| p.lag()).sum();
                if behind > 0 {
                    report
                        .other
                        .add("consumer lag not back to 0", format!("{l:?}"));
                }
                report.lag = l;
            }
            Err(e) => {
                report.lag_error = Some(format!("{e:#}"));
                report.other.add("consumer lag not read", format!("{e:#}"));
            }
        }
        // What the engines counted during the phase (those still running).
        let now = self.engine_counters().await;
        for (i, (replayed, applied)) in &now {
            let (r0, a0) = self.baseline.get(i).copied().unwrap_or((0.0, 0.0));
            report.engine_replays += replayed - r0;
            report.engine_applied += applied - a0;
        }
        // A command a client retried may be in the log twice: its second delivery is a replay.
        let retried_attempts: u32 = sent.iter().map(|s| s.attempts.saturating_sub(1)).sum();
        let logs = self.cluster.engine_logs();
        let logs: Vec<(String, &std::path::Path)> =
            logs.iter().map(|(n, p)| (n.clone(), p.as_path())).collect();
        // Only where every engine that left logged its exit (no kill -9 in the phase).
        let overlaps = if replays_allowed {
            Vec::new()
        } else {
            loyalty_tests::ownership::overlaps(&logs, self.phase_started_at)
        };
        for o in &overlaps {
            report.notes.push(format!(
                "the broker handed a partition to two engines at once ({o}): their deliveries \
                 of it may be replays (the store's version fence lets one write through)"
            ));
        }
        if !replays_allowed
            && report.engine_replays > retried_attempts as f64
            && overlaps.is_empty()
        {
            report.other.add(
                "delivered again after a clean handover",
                format!(
                    "{} deliveries of already applied events ({} retried requests)",
                    report.engine_replays, retried_attempts
                ),
            );
        }
        let gateways = self.cluster.gateway_urls();
        let (finals, r) = resend(&self.traffic, &gateways, &sent, Duration::from_secs(120)).await;
        report.resend = r;
        self.sent.extend(sent);
        self.finals.extend(finals);
        // The test's own Redis connection may have been cut by the phase's fault (a restart):
        // its first use fails and it reconnects, so the check is tried again, a few times.
        let mut attempts = 0;
        let checked = loop {
            attempts += 1;
            let r = check_members(
                &self.traffic,
                &gateways[0],
                &self.sent,
                &self.finals,
                self.store.as_ref(),
                &self.redis,
            )
            .await;
            match r {
                Err(e) if attempts < 3 => {
                    report
                        .notes
                        .push(format!("members check attempt {attempts} failed: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                r => break r,
            }
        };
        match checked {
            Ok(m) => report.members = m,
            Err(e) => report.other.add("members not checked", format!("{e:#}")),
        }
        // `loyalty audit` on the cluster's store and Redis agrees.
        let redis_url = self.cluster.redis.url();
        let env = [
            ("LOYALTY_POSTGRES_URL", self.cluster.postgres_url()),
            ("LOYALTY_PII_KEYS", self.cluster.pii_keys()),
            ("LOYALTY_REDIS_URL", redis_url.as_str()),
        ];
        match loyalty_tests::run_audit(&[], &env) {
            Ok(run) if run.clean => {}
            Ok(run) => report
                .other
                .add("loyalty audit found differences", run.stdout),
            Err(e) => report
                .other
                .add("loyalty audit did not run", format!("{e:#}")),
        }
        report.duration = started.elapsed();
        let text = report.text();
        print!("{text}");
        self.text.push_str(&text);
        // Written after every phase, so a run that stops half-way still leaves its report.
        write_report(self.report_file, &self.text, false);
        self.reports.push(report);
    }

    /// Prints `table` after the phases, writes the whole report, and fails on any phase with a
    /// difference.
    fn finish(&mut self, table: &str) {
        print!("{table}");
        self.text.push_str(table);
        write_report(self.report_file, &self.text, true);
        let failed: Vec<String> = self
            .reports
            .iter()
            .filter(|r| r.differences() > 0)
            .map(|r| r.name.clone())
            .collect();
        assert!(
            failed.is_empty(),
            "differences in {failed:?} (see the report above)"
        );
    }

    /// The runbook's refill of an emptied Redis, through the first live gateway.
    async fn rebuild_cache(&mut self) -> anyhow::Result<String> {
        let gateway = self
            .cluster
            .gateway_urls()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no gateway left"))?;
        let t = Instant::now();
        let r = http_client()
            .post(format!("{gateway}/v1/admin/cache/rebuild"))
            .bearer_auth(self.cluster.admin_key())
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        anyhow::ensure!(status == 200, "cache rebuild answered {status}: {body}");
        Ok(format!(
            "Redis refilled by POST /v1/admin/cache/rebuild in {:.2} s: {body}",
            t.elapsed().as_secs_f64()
        ))
    }

    /// The fault matrix's table: fault, sent, acknowledged, applied, lost, doubled, recovery.
    fn matrix(&self) -> String {
        let mut t = String::from(
            "\n| fault | sent | acknowledged | applied | refused after 202 | lost | doubled | \
             recovery |\n|---|---|---|---|---|---|---|---|\n",
        );
        // The ledger check counts every phase so far, enrolments included: a phase's share is
        // the difference.
        let mut before = self.traffic.members.len();
        for r in &self.reports {
            let so_far = r.members.applied_once + r.members.applied_without_entry;
            let applied = so_far.saturating_sub(before);
            before = so_far;
            let recovery = r.recovery.map_or("not measured".to_owned(), |d| {
                format!("{:.1} s", d.as_secs_f64())
            });
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.name,
                r.stream.sent,
                r.stream.acked(),
                applied,
                r.resend.accepted_then_refused,
                r.lost(),
                r.doubled(),
                recovery
            ));
        }
        t.push_str(
            "applied: the phase's commands found once in their member's ledger (with refunds that \
             forgave every point); refused after 202: acknowledged without an outcome, then \
             refused by the rules; lost: acknowledged commands missing from the ledger, applied \
             only by their resend, or answering otherwise than told; doubled: applied twice; \
             recovery: from the end of the fault until every partition applied again\n",
        );
        t
    }

    fn summary(&self) -> String {
        let mut t = String::from(
            "\n| phase | sent | acknowledged | 200 | 202 | rejected | unanswered | retried | \
             engine replays | differences |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        let mut total = StreamCounts::default();
        let mut diffs = 0;
        for r in &self.reports {
            let s = &r.stream;
            let rejected: usize = s.rejected.values().sum();
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.name,
                s.sent,
                s.acked(),
                s.applied_200,
                s.accepted_202,
                rejected,
                s.unanswered,
                s.retried,
                r.engine_replays,
                r.differences()
            ));
            total.sent += s.sent;
            total.applied_200 += s.applied_200;
            total.accepted_202 += s.accepted_202;
            total.unanswered += s.unanswered;
            total.retried += s.retried;
            diffs += r.differences();
        }
        t.push_str(&format!(
            "| total | {} | {} | {} | {} | | {} | {} | | {} |\n",
            total.sent,
            total.acked(),
            total.applied_200,
            total.accepted_202,
            total.unanswered,
            total.retried,
            diffs
        ));
        t.push_str(&format!("store: {}\n", self.store_note));
        t
    }
}

/// `target/<file>`, beside the test executable's profile directory.
fn write_report(file: &str, text: &str, say: bool) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if let Some(target) = exe
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
    {
        let path = target.join(file);
        if std::fs::write(&path, text).is_ok() && say {
            println!("report written to {}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiprocess_faults_one_at_a_time_apply_every_acknowledged_command_exactly_once() {
    let Some((mut sc, _store_dir)) = Scenario::start(1, "multiprocess-report.txt")
        .await
        .expect("cluster starts")
    else {
        return;
    };
    let long = Duration::from_secs(120);

    // 1. A new engine joins while the stream runs.
    let s = sc.begin().await;
    s.wait_acked(BEFORE_FAULT, long)
        .await
        .expect("stream flows");
    let at = s.elapsed();
    let e1 = sc.cluster.start_engine().await.expect("engine starts");
    sc.cluster
        .engine(e1)
        .wait_ready(long)
        .await
        .expect("new engine ready");
    let ready_at = s.elapsed();
    let ready = ready_at - at;
    // Applied after the rebalance: both engines apply what they own.
    let moved = s
        .wait_partitions_applied_since(ready_at, long)
        .await
        .expect("every partition applies after the join");
    let acked = s.counters.acked.load(std::sync::atomic::Ordering::Relaxed);
    s.wait_acked(acked + AFTER_FAULT, long)
        .await
        .expect("stream flows");
    sc.end(
        "a new engine joins (1 → 2 engines)",
        s,
        format!(
            "engine-{e1} started at {:.1} s into the stream; ready (partitions assigned) {:.1} s \
             later; every partition applying again {:.1} s after that",
            at.as_secs_f64(),
            ready.as_secs_f64(),
            moved.as_secs_f64()
        ),
        false,
        Differences::default(),
    )
    .await;

    // 2. SIGTERM of an engine: it drains, then its partitions move; nothing is applied twice.
    let s = sc.begin().await;
    s.wait_acked(BEFORE_FAULT, long)
        .await
        .expect("stream flows");
    let at = s.elapsed();
    let t = Instant::now();
    sc.cluster
        .sigterm_engine(0, long)
        .await
        .expect("engine-0 drains and exits");
    let exited = t.elapsed();
    // Sent once engine-0 is gone: whatever it owned is applied by engine-1 now.
    let moved = s
        .wait_partitions_applied_since(at + exited, long)
        .await
        .expect("every partition applies after the SIGTERM");
    let acked = s.counters.acked.load(std::sync::atomic::Ordering::Relaxed);
    s.wait_acked(acked + AFTER_FAULT, long)
        .await
        .expect("stream flows");
    sc.end(
        "SIGTERM of an engine (2 → 1 engines)",
        s,
        format!(
            "SIGTERM to engine-0 at {:.1} s; exited cleanly {:.1} s later (drained); every \
             partition applying again {:.1} s after its exit",
            at.as_secs_f64(),
            exited.as_secs_f64(),
            moved.as_secs_f64()
        ),
        false,
        Differences::default(),
    )
    .await;

    // 3. Scaling 1 → 3 → 1.
    let s = sc.begin().await;
    s.wait_acked(BEFORE_FAULT, long)
        .await
        .expect("stream flows");
    let at = s.elapsed();
    let a = sc.cluster.start_engine().await.expect("engine starts");
    let b = sc.cluster.start_engine().await.expect("engine starts");
    for i in [a, b] {
        sc.cluster
            .engine(i)
            .wait_ready(long)
            .await
            .expect("engine ready");
    }
    let up = s.elapsed() - at;
    s.wait_partitions_applied_since(at + up, long)
        .await
        .expect("every partition applies on three engines");
    let acked = s.counters.acked.load(std::sync::atomic::Ordering::Relaxed);
    s.wait_acked(acked + BEFORE_FAULT, long)
        .await
        .expect("stream flows");
    let down_at = s.elapsed();
    for i in [e1, a] {
        sc.cluster
            .sigterm_engine(i, long)
            .await
            .expect("engine drains and exits");
    }
    let down = s.elapsed() - down_at;
    let moved = s
        .wait_partitions_applied_since(down_at + down, long)
        .await
        .expect("every partition applies after scaling down");
    let acked = s.counters.acked.load(std::sync::atomic::Ordering::Relaxed);
    s.wait_acked(acked + AFTER_FAULT, long)
        .await
        .expect("stream flows");
    sc.end(
        "scaling 1 → 3 → 1 engines",
        s,
        format!(
            "engine-{a} and engine-{b} started at {:.1} s, both ready {:.1} s later; SIGTERM to \
             engine-{e1} then engine-{a} at {:.1} s, both exited cleanly {:.1} s later; every \
             partition applying on engine-{b} {:.1} s after that",
            at.as_secs_f64(),
            up.as_secs_f64(),
            down_at.as_secs_f64(),
            down.as_secs_f64(),
            moved.as_secs_f64()
        ),
        false,
        Differences::default(),
    )
    .await;

    // 4. kill -9 of an engine (a second one joins first, outside the stream).
    let c = sc.cluster.add_engine().await.expect("engine starts");
    let s = sc.begin().await;
    s.wait_acked(BEFORE_FAULT, long)
        .await
        .expect("stream flows");
    let at = s.elapsed();
    sc.cluster.kill9_engine(b);
    let mut found = Differences::default();
    let fault = match s.wait_partitions_applied_since(at, KILL_HANDOVER).await {
        Ok(moved) => format!(
            "engine-{c} joined before the stream; kill -9 of engine-{b} at {:.1} s; every \
             partition applying again on engine-{c} {:.1} s later (the broker's session timeout \
             is 10 s)",
            at.as_secs_f64(),
            moved.as_secs_f64()
        ),
        Err(e) => {
            // Seen on tansu 0.6.0: the group notices the missed heartbeats after the session
            // timeout and rebalances, but hands the survivor its old assignment; the dead
            // member's partitions stay assigned to it. A member joining forces a new
            // assignment: the scenario goes on from there, with the defect recorded.
            found.add(
                "no handover after kill -9",
                format!("{e:#} (the session timeout is 10 s)"),
            );
            let d = sc.cluster.add_engine().await.expect("engine starts");
            let moved = s
                .wait_partitions_applied_since(at, long)
                .await
                .expect("every partition applies once an engine joins");
            format!(
                "engine-{c} joined before the stream; kill -9 of engine-{b} at {:.1} s; NO \
                 HANDOVER: {e}; engine-{d} joined to recover, and every partition applied again \
                 {:.1} s after the kill",
                at.as_secs_f64(),
                moved.as_secs_f64()
            )
        }
    };
    let acked = s.counters.acked.load(std::sync::atomic::Ordering::Relaxed);
    s.wait_acked(acked + AFTER_FAULT, long)
        .await
        .expect("stream flows");
    sc.end(
        "kill -9 of an engine (2 → 1 engines)",
        s,
        fault,
        true,
        found,
    )
    .await;

    // 5. kill -9 of a gateway: its clients go on through the other one, same event ids.
    let s = sc.begin().await;
    s.wait_acked(BEFORE_FAULT, long)
        .await
        .expect("stream flows");
    let at = s.elapsed();
    sc.cluster.kill9_gateway(0);
    let acked = s.counters.acked.load(std::sync::atomic::Ordering::Relaxed);
    s.wait_acked(acked + AFTER_FAULT, long)
        .await
        .expect("stream flows");
    sc.end(
        "kill -9 of a gateway",
        s,
        format!(
            "kill -9 of gateway-0 at {:.1} s; its clients retried on gateway-1",
            at.as_secs_f64()
        ),
        true,
        Differences::default(),
    )
    .await;
    let gw_phase = sc.reports.last().expect("phase 5");
    if gw_phase.stream.switched == 0 {
        let mut d = Differences::default();
        d.add(
            "no client moved to the other gateway",
            "the kill of gateway-0 went unnoticed".into(),
        );
        sc.reports.last_mut().expect("phase 5").other.extend(d);
        let note = "   phase 5: no client moved to the other gateway (a difference)\n";
        print!("{note}");
        sc.text.push_str(note);
    }

    let summary = sc.summary();
    sc.finish(&summary);
}

/// A fault of the fault matrix: what it does to the cluster, returning what it did.
type Fault = for<'a> fn(&'a mut Cluster) -> futures::future::BoxFuture<'a, anyhow::Result<String>>;

/// One phase of the fault matrix: the stream flows, `fault` runs, then every partition must
/// apply again (the time that takes is the phase's recovery) and the stream goes on; the
/// phase's checks follow (Redis is refilled first as the runbook says if `empties_redis`).
async fn matrix_phase(sc: &mut Scenario, name: &str, empties_redis: bool, fault: Fault) {
    let long = Duration::from_secs(120);
    let s = sc.begin().await;
    s.wait_acked(BEFORE_FAULT, long)
        .await
        .expect("stream flows");
    let at = s.elapsed();
    let did = match fault(&mut sc.cluster).await {
        Ok(did) => did,
        Err(e) => panic!("fault {name:?} could not be made: {e:#}"),
    };
    let fault_end = s.elapsed();
    let mut found = Differences::default();
    match s.wait_partitions_applied_since(fault_end, long).await {
        Ok(recovery) => sc.recovery = Some(recovery),
        Err(e) => found.add("no recovery", format!("{e:#}")),
    }
    let acked = s.counters.acked.load(std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = s.wait_acked(acked + AFTER_FAULT, long).await {
        found.add("stream stalled after the fault", format!("{e:#}"));
    }
    sc.rebuild_cache = empties_redis;
    let fault_text = format!(
        "{did} at {:.1} s into the stream (the fault took {:.1} s)",
        at.as_secs_f64(),
        (fault_end - at).as_secs_f64()
    );
    // A server fault can fail a write after it reached the server: the engine's retry is then
    // a replay of its own write, so replays are allowed here.
    sc.end(name, s, fault_text, true, found).await;
}

/// Blocks the calling worker thread for a server's own synchronous start or stop (`pg_ctl -w`)
/// without starving the clients' tasks on the other workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn redis_flush(c: &mut Cluster) -> futures::future::BoxFuture<'_, anyhow::Result<String>> {
    Box::pin(async move {
        let client = redis::Client::open(c.redis.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
        Ok("FLUSHALL of Redis".to_owned())
    })
}

fn redis_restart(c: &mut Cluster) -> futures::future::BoxFuture<'_, anyhow::Result<String>> {
    Box::pin(async move {
        c.redis.kill();
        // The outage lasts as long as a restart of a real Redis may take.
        tokio::time::sleep(Duration::from_secs(3)).await;
        blocking(|| c.redis.restart())?;
        Ok("kill -9 of redis-server, down for 3 s, started again empty".to_owned())
    })
}

fn postgres_crash(c: &mut Cluster) -> futures::future::BoxFuture<'_, anyhow::Result<String>> {
    Box::pin(async move {
        blocking(|| c.postgres.kill());
        blocking(|| c.postgres.restart())?;
        Ok("kill -9 of PostgreSQL, restarted at once (crash recovery from the WAL)".to_owned())
    })
}

fn postgres_down(c: &mut Cluster) -> futures::future::BoxFuture<'_, anyhow::Result<String>> {
    Box::pin(async move {
        blocking(|| c.postgres.stop())?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        blocking(|| c.postgres.restart())?;
        Ok("PostgreSQL stopped (pg_ctl stop -m fast), unavailable for 10 s, started".to_owned())
    })
}

fn broker_restart(c: &mut Cluster) -> futures::future::BoxFuture<'_, anyhow::Result<String>> {
    Box::pin(async move {
        c.broker.kill9();
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.broker.restart().await?;
        Ok("kill -9 of the broker (tansu), down for 3 s, restarted on its data".to_owned())
    })
}

/// An engine cut off from everything long enough to lose its partitions: frozen (SIGSTOP) past
/// the broker's session timeout, so that the group hands its partitions to the other engine,
/// then thawed (SIGCONT) with its in-flight batch still in hand. It comes back as a zombie: its
/// writes of partitions it no longer owns must be fenced by the store, and it must rejoin.
fn engine_cut_off(c: &mut Cluster) -> futures::future::BoxFuture<'_, anyhow::Result<String>> {
    Box::pin(async move {
        let e = *c
            .live_engines()
            .first()
            .ok_or_else(|| anyhow::anyhow!("no engine"))?;
        c.engine(e).pause()?;
        // The broker's session timeout is 10 s; 15 s makes the loss of the partitions certain.
        tokio::time::sleep(Duration::from_secs(15)).await;
        c.engine(e).resume()?;
        Ok(format!(
            "engine-{e} frozen (SIGSTOP) for 15 s, past the broker's 10 s session timeout, then \
             thawed (SIGCONT)"
        ))
    })
}

/// Several faults at once: a gateway killed (its clients move to the other one), Redis killed
/// and PostgreSQL killed together, both restarted after 3 s.
fn mixed(c: &mut Cluster) -> futures::future::BoxFuture<'_, anyhow::Result<String>> {
    Box::pin(async move {
        let g = *c
            .live_gateways()
            .first()
            .ok_or_else(|| anyhow::anyhow!("no gateway"))?;
        c.kill9_gateway(g);
        c.redis.kill();
        blocking(|| c.postgres.kill());
        tokio::time::sleep(Duration::from_secs(3)).await;
        blocking(|| c.redis.restart())?;
        blocking(|| c.postgres.restart())?;
        Ok(format!(
            "at once: kill -9 of gateway-{g}, of redis-server and of PostgreSQL; both servers \
             restarted 3 s later (Redis empty, PostgreSQL from its WAL)"
        ))
    })
}

/// The fault matrix on the servers (issue "Faults, audit and bad input"): 2 gateways and 2
/// engines while the stream runs, one fault per phase: Redis flushed, Redis restarted empty,
/// PostgreSQL killed and restarted, PostgreSQL unavailable for 10 s, the broker killed and
/// restarted, an engine cut off past its session timeout, then a gateway, Redis and PostgreSQL
/// killed at once. After each, the checks of
/// [`Scenario::end`] (lag 0, resends answer as told, every acknowledged command once in its
/// member's ledger, balances the ledger's sum, Redis equal to the store, `loyalty audit` clean).
/// The table (fault, sent, acknowledged, applied, lost, doubled, recovery) is written to
/// `target/fault-matrix-report.txt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_faults_lose_and_double_nothing() {
    let Some((mut sc, _store_dir)) = Scenario::start(2, "fault-matrix-report.txt")
        .await
        .expect("cluster starts")
    else {
        return;
    };
    matrix_phase(&mut sc, "Redis flush", true, redis_flush).await;
    matrix_phase(&mut sc, "Redis restart", true, redis_restart).await;
    matrix_phase(
        &mut sc,
        "PostgreSQL crash and restart",
        false,
        postgres_crash,
    )
    .await;
    matrix_phase(&mut sc, "PostgreSQL unavailable 10 s", false, postgres_down).await;
    matrix_phase(&mut sc, "broker restart", false, broker_restart).await;
    matrix_phase(
        &mut sc,
        "engine cut off (lost its partitions)",
        false,
        engine_cut_off,
    )
    .await;
    matrix_phase(
        &mut sc,
        "mixed: a gateway, Redis and PostgreSQL killed at once",
        true,
        mixed,
    )
    .await;

    let matrix = sc.matrix();
    sc.finish(&matrix);
}
