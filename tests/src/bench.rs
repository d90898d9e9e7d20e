//! Shared pieces of the benchmarks (the ignored tests `tests/tests/bench/ingest_bench.rs` and
//! `tests/tests/bench/multiprocess_bench.rs`, run by `loadtest/bench.sh`): the raw broker rate that
//! the platform's ingestion is compared with, the per-process CPU time that says where the time
//! goes, and the PostgreSQL queries of the exactly-once checks (through `psql`, the client of
//! the server the test runs).
//!
//! The figures are printed as lines that `loadtest/bench.sh` greps; nothing here asserts a
//! timing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use loyalty_core::ports::EventLog;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Appends in flight at once, on the raw side and the platform's.
pub const IN_FLIGHT: usize = 512;

/// `LOYALTY_BENCH_EVENTS`, else `default`.
pub fn events(default: usize) -> usize {
    std::env::var("LOYALTY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` per `d`, per second.
pub fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// The raw broker rate, as the limit of the platform's ingestion: rdkafka produces `n`
/// records of `payload` (idempotent, `acks=all`, `IN_FLIGHT` at once, keys `k0..k{keys}`) into
/// `topic` (created with `partitions` through `log`) while a consumer that has already joined
/// its group reads them. Returns (time until the last produce was acknowledged, time until the
/// last record was read), both from the first produce.
pub async fn raw_kafka_produce_consume(
    log: &dyn EventLog,
    brokers: &str,
    topic: &str,
    partitions: u32,
    n: usize,
    payload: Bytes,
    keys: usize,
) -> (Duration, Duration) {
    log.ensure_topic(topic, partitions).await.unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", topic)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(Instant::now() < deadline, "the raw consumer never joined");
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            panic!("records before any was produced");
        }
    }
    let reader = tokio::task::spawn_blocking(move || {
        let mut read = 0;
        let deadline = Instant::now() + Duration::from_secs(300);
        while read < n && Instant::now() < deadline {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                read += 1;
            }
        }
        read
    });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let t0 = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let producer = &producer;
            let payload = payload.clone();
            async move {
                let key = format!("k{}", i % keys.max(1));
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(payload.as_ref()),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let produced = t0.elapsed();
    let read = reader.await.unwrap();
    let consumed = t0.elapsed();
    assert_eq!(read, n, "the raw consumer read everything");
    (produced, consumed)
}

/// The raw broker latency of single records: `k` records produced one at a time (each
/// acknowledged, then a pause of 50 to 350 ms, so that the sends do not lock onto the
/// consumer's fetch cycle), each timed from its produce until a consumer of its own group,
/// already joined, reads it. `extra`: librdkafka properties of the consumer (e.g.
/// `fetch.wait.max.ms`). Returns each record's (produce acknowledged, read) times.
pub async fn raw_kafka_latency(
    log: &dyn EventLog,
    brokers: &str,
    topic: &str,
    k: usize,
    payload: Bytes,
    extra: &[(&str, &str)],
) -> Vec<(Duration, Duration)> {
    log.ensure_topic(topic, 1).await.unwrap();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", topic)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for (key, v) in extra {
        config.set(*key, *v);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(
            Instant::now() < deadline,
            "the latency consumer never joined"
        );
        let _ = consumer.poll(Duration::from_millis(100));
    }
    // The first record (not counted) lets the consumer settle on its fetch cycle.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let consumer = Arc::new(consumer);
    let read_one = |c: Arc<BaseConsumer>| {
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Some(Ok(_)) = c.poll(Duration::from_millis(5)) {
                    return Some(Instant::now());
                }
            }
            None
        })
    };
    let mut out = Vec::new();
    for j in 0..=k {
        let reader = read_one(Arc::clone(&consumer));
        let t = Instant::now();
        producer
            .send(
                FutureRecord::to(topic).key("k").payload(payload.as_ref()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        let acked = t.elapsed();
        let read = reader.await.unwrap().expect("the record is read");
        if j > 0 {
            out.push((acked, read - t));
        }
        tokio::time::sleep(Duration::from_millis(50 + (j as u64 * 97) % 300)).await;
    }
    out
}

/// p-quantile (0..=1) of `v` (sorted here), in milliseconds.
pub fn quantile_ms(v: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return f64::NAN;
    }
    ms[((ms.len() - 1) as f64 * q).round() as usize]
}

// ---------------------------------------------------------------------------------------------
// CPU time by process, from /proc.

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ: 100 on every Linux build here).
const TICKS: f64 = 100.0;

/// User + system CPU seconds of process `pid` (all its threads) so far; 0 once it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    // After the command: state (3), ppid (4), ... utime (14), stime (15).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(14) + tick(15)) / TICKS
}

/// CPU seconds of this process's threads so far, summed by thread name (`store-writer`,
/// `actix-rt|system`, ...): where one process's time goes, whatever else the machine runs.
pub fn thread_cpu_seconds() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *out.entry(comm.trim().to_string()).or_insert(0.0) += (tick(14) + tick(15)) / TICKS;
    }
    out
}

/// The CPU seconds each thread name spent between two [`thread_cpu_seconds`] readings, one
/// line, largest first.
pub fn thread_cpu_report(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> String {
    let mut spent: Vec<(&String, f64)> = after
        .iter()
        .map(|(name, s)| (name, s - before.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, s)| *s >= 0.01)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    spent
        .iter()
        .map(|(name, s)| format!("{name} {s:.2} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every process id on the machine, with its parent and its command line.
fn processes() -> Vec<(u32, u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            Some((pid, ppid, cmd))
        })
        .collect()
}

/// `pid` and its children (e.g. a postmaster and its backends).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    out.extend(
        processes()
            .into_iter()
            .filter(|(_, ppid, _)| *ppid == pid)
            .map(|(p, _, _)| p),
    );
    out
}

/// The processes whose command line contains every one of `parts` (e.g. the binary's name and
/// its port, which tells this test's server from another test's).
pub fn find_processes(parts: &[&str]) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, _, cmd)| parts.iter().all(|p| cmd.contains(p)))
        .map(|(p, _, _)| p)
        .collect()
}

/// Named groups of processes whose CPU time is compared before and after a measured span.
#[derive(Default)]
pub struct CpuProbe {
    groups: Vec<(String, Vec<u32>)>,
    start: Vec<f64>,
    started: Option<Instant>,
}

impl CpuProbe {
    /// Adds a group (`name`: what the report calls it).
    pub fn group(&mut self, name: &str, pids: Vec<u32>) {
        self.groups.push((name.to_owned(), pids));
    }

    fn sample(&self) -> Vec<f64> {
        self.groups
            .iter()
            .map(|(_, pids)| pids.iter().map(|p| cpu_seconds(*p)).sum())
            .collect()
    }

    /// Starts the span.
    pub fn start(&mut self) {
        self.start = self.sample();
        self.started = Some(Instant::now());
    }

    /// CPU seconds of each group since [`CpuProbe::start`], and the wall time.
    pub fn stop(&self) -> (Vec<(String, f64)>, Duration) {
        let wall = self.started.map_or(Duration::ZERO, |t| t.elapsed());
        let now = self.sample();
        let spent = self
            .groups
            .iter()
            .zip(now.iter().zip(&self.start))
            .map(|((name, _), (b, a))| (name.clone(), (b - a).max(0.0)))
            .collect();
        (spent, wall)
    }
}

/// One line: `what: wall W s; cores used C; per event: group X µs (Y s), ...`.
pub fn cpu_line(what: &str, spent: &[(String, f64)], wall: Duration, events: usize) -> String {
    let total: f64 = spent.iter().map(|(_, s)| s).sum();
    let parts: Vec<String> = spent
        .iter()
        .map(|(name, s)| format!("{name} {:.0} µs ({s:.2} s)", 1e6 * s / events.max(1) as f64))
        .collect();
    format!(
        "cpu {what}: wall {:.2} s, {:.2} cores busy of {}; CPU per event: {} (total {:.0} µs)",
        wall.as_secs_f64(),
        total / wall.as_secs_f64().max(1e-9),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        parts.join(", "),
        1e6 * total / events.max(1) as f64
    )
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL through psql.

/// The `psql` of the PostgreSQL installation the test cluster runs on.
pub fn psql_binary() -> PathBuf {
    let dir = loyalty_testkit::postgres::PostgresServer::available().unwrap_or_default();
    let beside = dir.join("psql");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("psql")
    }
}

/// Runs `sql` on the database at `url` (unaligned, tuples only, `|` between fields) and
/// returns its rows.
pub fn psql(url: &str, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    psql_with(&psql_binary(), url, sql)
}

fn psql_with(bin: &Path, url: &str, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let out = std::process::Command::new(bin)
        .args(["-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1"])
        .arg("-d")
        .arg(url)
        .arg("-c")
        .arg(sql)
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "psql failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect())
}

/// The single value of a one-row, one-column query, as a number.
pub fn psql_number(url: &str, sql: &str) -> anyhow::Result<f64> {
    let rows = psql(url, sql)?;
    let v = rows
        .first()
        .and_then(|r| r.first())
        .ok_or_else(|| anyhow::anyhow!("no row: {sql}"))?;
    Ok(v.trim().parse::<f64>()?)
}

/// Exactly once, from the store: of the ledger entries (tier moves aside) whose event id starts
/// with `prefix`, (entries, distinct event ids, idempotency records), and the members whose
/// balance is not the sum of their ledger.
pub fn applied_once(url: &str, prefix: &str) -> anyhow::Result<(u64, u64, u64, u64)> {
    let like = format!("{}%", prefix.replace('\'', "''"));
    // A tier move (0 points) names the command that caused it: not a second entry of it.
    let not_tier = "convert_from(body, 'UTF8')::jsonb->>'kind' <> 'tier'";
    let row = psql(
        url,
        &format!(
            "SELECT (SELECT count(*) FROM ledger WHERE event_id LIKE '{like}' AND {not_tier}), \
                    (SELECT count(DISTINCT event_id) FROM ledger \
                        WHERE event_id LIKE '{like}' AND {not_tier}), \
                    (SELECT count(*) FROM processed WHERE event_id LIKE '{like}'), \
                    (SELECT count(*) FROM members m WHERE \
                        (convert_from(m.state, 'UTF8')::jsonb->>'points')::bigint <> \
                        (SELECT coalesce(sum((convert_from(l.body, 'UTF8')::jsonb->>'points')::bigint), 0) \
                           FROM ledger l WHERE l.member_id = m.member_id))"
        ),
    )?;
    let r = row.first().ok_or_else(|| anyhow::anyhow!("no row"))?;
    let n = |i: usize| {
        r.get(i)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((n(0), n(1), n(2), n(3)))
}
