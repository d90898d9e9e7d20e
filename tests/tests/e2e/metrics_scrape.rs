//! `/metrics` of every kind of process, scraped as Prometheus would and checked by name, type,
//! convention and label:
//! - `loyalty dev` (the real binary) after an enrolment, a purchase, a status read and a request
//!   to no route;
//! - `loyalty gateway` and `loyalty engine` as two processes on tansu, PostgreSQL and Redis,
//!   after the same traffic. Skipped (`SKIPPED: <reason>`) without those servers, failed
//!   instead with `LOYALTY_REQUIRE_SERVERS=1`.
//!
//! Each exposition is parsed; every expected family must be there, and every `loyalty_` family
//! must be listed in README.md's metrics table with the same type and labels. Conventions:
//! counters end in `_total`, histograms in a unit (`_seconds`, `_records`), anything measuring a
//! time (lag, age, duration) is in seconds or records, nothing in milliseconds. Labels: no label
//! naming a member, phone, event, franchise or path; no value carrying the test's member id,
//! event id or phone number, nor anything shaped like an id (a run of 6 digits or 12 hex
//! characters); few values per label. Values move: the purchase is counted as applied, the
//! consumer lag has one series per owned partition and falls to 0, the checkpoint is recent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use loyalty_testkit::process::Cluster;
use loyalty_tests::{demo_program, DevProcess};
use serde_json::{json, Value};

const PHONE: &str = "+33611223344";
const PHONE_DIGITS: &str = "611223344";
const EVENT_ID: &str = "metrics-purchase-0001";
/// Partitions of the command topic, in both set-ups.
const PARTITIONS: usize = 4;
/// How often an engine samples its consumer lag (`EngineConfig::lag_every`): the lag is read
/// only once a sample taken after the traffic is certain.
const LAG_SAMPLE: Duration = Duration::from_millis(5_500);
/// How long the values may take to settle after that.
const SETTLE: Duration = Duration::from_secs(30);
/// Most distinct values a label may take in one family (`le` aside).
const MAX_LABEL_VALUES: usize = 32;

/// Labels whose values would be unbounded or personal.
const FORBIDDEN_LABELS: [&str; 12] = [
    "member",
    "member_id",
    "phone",
    "event_id",
    "id",
    "franchise",
    "franchise_id",
    "store_id",
    "path",
    "url",
    "name",
    "key",
];

/// What every process exposes once it served requests: the HTTP, store and cache families.
const COMMON: [&str; 4] = [
    "loyalty_http_requests_total",
    "loyalty_http_request_duration_seconds",
    "loyalty_store_operation_duration_seconds",
    "loyalty_cache_operation_duration_seconds",
];

/// What a gateway exposes after the traffic (besides [`COMMON`]); the franchise and store it
/// provisioned made their keys.
const GATEWAY: [&str; 5] = [
    "loyalty_api_key_operations_total",
    "loyalty_cache_lookups_total",
    "loyalty_log_append_seconds",
    "loyalty_events_replayed_total",
    "loyalty_reply_timeouts_total",
];

/// What an engine exposes after the traffic (besides [`COMMON`]).
const ENGINE: [&str; 17] = [
    "loyalty_events_applied_total",
    "loyalty_engine_commands_total",
    "loyalty_engine_lag_seconds",
    "loyalty_engine_pos_lag_seconds",
    "loyalty_engine_consumer_lag_records",
    "loyalty_engine_partitions_owned",
    "loyalty_engine_rebalances_total",
    "loyalty_engine_rebalance_duration_seconds",
    "loyalty_engine_checkpoint_age_seconds",
    "loyalty_checkpoint_seconds",
    "loyalty_store_commit_seconds",
    "loyalty_engine_batch_seconds",
    "loyalty_engine_batch_records",
    "loyalty_member_actors_active",
    "loyalty_member_actors_activated_total",
    "loyalty_member_actors_passivated_total",
    "loyalty_dashboard_updates_total",
];

/// Families only an engine has series of.
const ENGINE_ONLY: [&str; 3] = [
    "loyalty_engine_consumer_lag_records",
    "loyalty_engine_commands_total",
    "loyalty_engine_rebalances_total",
];

// ---------------------------------------------------------------------------------------------
// The exposition format.

/// One sample: its series name (`x_bucket`, `x_count`...), labels and value.
#[derive(Debug)]
struct Sample {
    series: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A metric family: its `# TYPE` and samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: Vec<Sample>,
}

type Exposition = BTreeMap<String, Family>;

/// Parses the text format (version 0.0.4): `# TYPE` lines, then samples.
fn parse(text: &str) -> anyhow::Result<Exposition> {
    let mut out = Exposition::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("TYPE line")?;
            out.entry(name.to_owned()).or_default().kind = kind.trim().to_owned();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).with_context(|| format!("sample line {line:?}"))?;
        let family = family_of(&out, &sample.series)
            .with_context(|| format!("{} has no # TYPE", sample.series))?;
        out.entry(family).or_default().samples.push(sample);
    }
    Ok(out)
}

/// The family of a series: itself, or a histogram's without `_bucket`/`_sum`/`_count`.
fn family_of(exp: &Exposition, series: &str) -> Option<String> {
    if exp.contains_key(series) {
        return Some(series.to_owned());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| series.strip_suffix(s))
        .find(|base| exp.get(*base).is_some_and(|f| f.kind == "histogram"))
        .map(str::to_owned)
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let (series, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}').context("unclosed labels")?;
            let labels = parse_labels(&line[open + 1..close])?;
            (&line[..open], labels, &line[close + 1..])
        }
        None => {
            let (series, rest) = line.split_once(' ').context("no value")?;
            (series, BTreeMap::new(), rest)
        }
    };
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("value {v:?}"))?,
    };
    Ok(Sample {
        series: series.to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y\"z"` into a map (escapes: `\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        ensure!(chars.next() == Some('"'), "label {name} is not quoted");
        let mut value = String::new();
        loop {
            match chars.next().context("unterminated label value")? {
                '"' => break,
                '\\' => match chars.next().context("dangling escape")? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        out.insert(name.trim().to_owned(), value);
    }
}

/// The sum of the samples of `series` whose labels include `labels`.
fn value(exp: &Exposition, series: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(family) = family_of(exp, series) else {
        return 0.0;
    };
    exp[&family]
        .samples
        .iter()
        .filter(|s| s.series == series)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// README's table: the documented type and labels of each metric.

/// A documented metric: its type and labels.
#[derive(Debug)]
struct Documented {
    kind: String,
    labels: BTreeSet<String>,
}

/// The rows of README.md's metrics table (`| `name` | type | `label`, ... | what |`).
fn documented() -> anyhow::Result<BTreeMap<String, Documented>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `loyalty_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        ensure!(cells.len() >= 5, "README metrics row {line:?}");
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        let doc = Documented {
            kind: cells[2].to_owned(),
            labels,
        };
        out.insert(cells[1].trim_matches('`').to_owned(), doc);
    }
    ensure!(!out.is_empty(), "no metrics table in README.md");
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Checks: each returns what is wrong.

/// Every name of `expected` is there, with a type.
fn missing(exp: &Exposition, expected: &[&str]) -> Vec<String> {
    expected
        .iter()
        .filter(|n| exp.get(**n).is_none_or(|f| f.samples.is_empty()))
        .map(|n| format!("{n} is not exposed"))
        .collect()
}

/// Prometheus naming: counters `_total`, histograms a unit, times in seconds.
fn naming(name: &str, kind: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let counter = name.ends_with("_total");
    match kind {
        "counter" if !counter => bad.push(format!("counter {name} must end in _total")),
        "gauge" | "histogram" if counter => bad.push(format!("{kind} {name} ends in _total")),
        "counter" | "gauge" | "histogram" => {}
        other => bad.push(format!("{name} has type {other}")),
    }
    let unit = name.ends_with("_seconds") || name.ends_with("_records");
    if kind == "histogram" && !unit {
        bad.push(format!("histogram {name} must end in _seconds or _records"));
    }
    let time = ["_lag", "_age", "duration", "latency"]
        .iter()
        .any(|w| name.contains(w));
    if time && !unit {
        bad.push(format!("{name} measures a time: _seconds (or _records)"));
    }
    if ["_ms", "_millis", "milliseconds", "_micro"]
        .iter()
        .any(|w| name.contains(w))
    {
        bad.push(format!("{name} is not in base units"));
    }
    bad
}

/// Whether a label value looks like an id: 6 digits or 12 hex characters in a row.
fn id_shaped(v: &str) -> bool {
    let run = |pred: fn(char) -> bool| {
        v.chars()
            .fold((0, 0), |(best, cur), c| {
                let cur = if pred(c) { cur + 1 } else { 0 };
                (best.max(cur), cur)
            })
            .0
    };
    run(|c| c.is_ascii_digit()) >= 6 || run(|c| c.is_ascii_hexdigit()) >= 12
}

/// Labels: none personal or unbounded, no value carrying `secrets` or shaped like an id, few
/// values per label.
fn labels_ok(name: &str, family: &Family, secrets: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in &family.samples {
        for (k, v) in &s.labels {
            if k == "le" {
                continue;
            }
            if FORBIDDEN_LABELS.contains(&k.as_str()) {
                bad.push(format!("{name} has a label {k}"));
            }
            if secrets.iter().any(|x| v.contains(x)) || id_shaped(v) {
                bad.push(format!("{name}{{{k}={v:?}}} carries an id or a phone"));
            }
            if k == "route" && v != "unmatched" && !v.starts_with('/') {
                bad.push(format!("{name}: route {v:?} is not a template"));
            }
            values.entry(k).or_default().insert(v);
        }
    }
    for (k, vs) in values {
        if vs.len() > MAX_LABEL_VALUES {
            bad.push(format!("{name}: label {k} has {} values", vs.len()));
        }
    }
    bad
}

/// The family's labels (`le` aside) are README's.
fn documented_ok(name: &str, family: &Family, docs: &BTreeMap<String, Documented>) -> Vec<String> {
    let Some(doc) = docs.get(name) else {
        return vec![format!("{name} is not in README.md's metrics table")];
    };
    let mut bad = Vec::new();
    if doc.kind != family.kind {
        bad.push(format!(
            "{name}: README says {}, /metrics {}",
            doc.kind, family.kind
        ));
    }
    let labels: BTreeSet<String> = family
        .samples
        .iter()
        .flat_map(|s| s.labels.keys().cloned())
        .filter(|k| k != "le")
        .collect();
    if labels != doc.labels {
        bad.push(format!(
            "{name}: labels {labels:?}, README {:?}",
            doc.labels
        ));
    }
    bad
}

/// Every check of every `loyalty_` family of `exp`, then `expected` present; fails listing
/// every problem.
fn check(
    process: &str,
    exp: &Exposition,
    expected: &[&str],
    secrets: &[&str],
) -> anyhow::Result<()> {
    let docs = documented()?;
    let mut bad = missing(exp, expected);
    for (name, family) in exp.iter().filter(|(n, _)| n.starts_with("loyalty_")) {
        bad.extend(naming(name, &family.kind));
        bad.extend(labels_ok(name, family, secrets));
        bad.extend(documented_ok(name, family, &docs));
    }
    if !bad.is_empty() {
        bail!("{process} /metrics:\n  {}", bad.join("\n  "));
    }
    println!(
        "{process}: {} loyalty_ families checked",
        exp.keys().filter(|n| n.starts_with("loyalty_")).count()
    );
    Ok(())
}

/// The engine's values once it applied the purchase and sampled its lag: the purchase counted,
/// one lag series per owned partition, all at 0, and a fresh checkpoint.
fn engine_settled(exp: &Exposition) -> anyhow::Result<()> {
    let applied = [("kind", "purchase"), ("result", "applied")];
    ensure!(
        value(exp, "loyalty_engine_commands_total", &applied) >= 1.0,
        "purchase not counted"
    );
    ensure!(value(exp, "loyalty_events_applied_total", &[("kind", "purchase")]) >= 1.0);
    let owned = value(exp, "loyalty_engine_partitions_owned", &[]);
    ensure!(owned == PARTITIONS as f64, "owns {owned} partitions");
    let lags = exp
        .get("loyalty_engine_consumer_lag_records")
        .map_or(&[][..], |f| &f.samples[..]);
    let partitions: BTreeSet<&str> = lags
        .iter()
        .filter_map(|s| s.labels.get("partition").map(String::as_str))
        .collect();
    ensure!(
        partitions.len() == PARTITIONS,
        "lag series of partitions {partitions:?}"
    );
    ensure!(
        lags.iter().all(|s| s.value == 0.0),
        "lag not 0 yet: {lags:?}"
    );
    let age = value(exp, "loyalty_engine_checkpoint_age_seconds", &[]);
    ensure!(age < 20.0, "checkpoint age {age}");
    ensure!(
        value(
            exp,
            "loyalty_engine_rebalances_total",
            &[("event", "assigned")]
        ) >= 1.0
    );
    let assign = [("phase", "assign")];
    ensure!(
        value(
            exp,
            "loyalty_engine_rebalance_duration_seconds_count",
            &assign
        ) >= 1.0
    );
    ensure!(value(exp, "loyalty_engine_pos_lag_seconds_count", &[]) >= 1.0);
    let commit = [("operation", "commit")];
    ensure!(
        value(
            exp,
            "loyalty_store_operation_duration_seconds_count",
            &commit
        ) >= 1.0
    );
    let put = [("operation", "put_statuses")];
    ensure!(value(exp, "loyalty_cache_operation_duration_seconds_count", &put) >= 1.0);
    Ok(())
}

/// The gateway's values after the traffic: the purchase's request by template and class, the
/// request to no route as `unmatched`, the store and cache reads, the log append.
fn gateway_counted(exp: &Exposition) -> anyhow::Result<()> {
    let purchase = [
        ("route", "/v1/purchases"),
        ("method", "POST"),
        ("status", "200"),
        ("status_class", "2xx"),
    ];
    ensure!(
        value(exp, "loyalty_http_requests_total", &purchase) >= 1.0,
        "purchase request"
    );
    let status = [
        ("route", "/v1/members/{member_id}"),
        ("status_class", "2xx"),
    ];
    ensure!(value(exp, "loyalty_http_request_duration_seconds_count", &status) >= 1.0);
    let unmatched = [
        ("route", "unmatched"),
        ("status", "404"),
        ("status_class", "4xx"),
    ];
    ensure!(
        value(exp, "loyalty_http_requests_total", &unmatched) >= 1.0,
        "unmatched"
    );
    let processed = [("operation", "processed")];
    ensure!(
        value(
            exp,
            "loyalty_store_operation_duration_seconds_count",
            &processed
        ) >= 1.0
    );
    let status_read = [("operation", "status")];
    ensure!(
        value(
            exp,
            "loyalty_cache_operation_duration_seconds_count",
            &status_read
        ) >= 1.0
    );
    ensure!(value(exp, "loyalty_log_append_seconds_count", &[]) >= 1.0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Traffic.

/// A POST answering JSON with status `expect`.
async fn post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: Value,
    expect: u16,
) -> anyhow::Result<Value> {
    let r = http.post(url).bearer_auth(key).json(&body).send().await?;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    ensure!(status == expect, "POST {url}: {status} {v}");
    Ok(v)
}

/// Enrols a member, buys (with the POS's time, two seconds ago), reads the member's status and
/// asks for a path no route has (with the member's id in it); the member's id.
async fn traffic(base: &str, store_key: &str) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/members?wait_ms=5000");
    let v = post(&http, &url, store_key, json!({"phone": PHONE}), 201).await?;
    let member = v["member_id"].as_str().context("member_id")?.to_owned();
    let occurred = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(2))?
        .to_string();
    let body = json!({"event_id": EVENT_ID, "member_id": member, "amount_cents": 1250,
        "currency": "EUR", "occurred_at": occurred});
    let url = format!("{base}/v1/purchases?wait_ms=5000");
    let v = post(&http, &url, store_key, body, 200).await?;
    ensure!(v["status"] == "applied", "{v}");
    for (path, expect) in [
        (format!("/v1/members/{member}"), 200),
        (format!("/v1/members/{member}/no-such-thing"), 404),
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(store_key)
            .send()
            .await?;
        ensure!(r.status().as_u16() == expect, "GET {path}: {}", r.status());
    }
    Ok(member)
}

/// `GET url` (a `/metrics`), its text.
async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let r = http.get(url).send().await?;
    ensure!(r.status().is_success(), "{url}: {}", r.status());
    Ok(r.text().await?)
}

/// Scrapes with `scrape` until `settled` accepts the exposition (at most [`SETTLE`]), from
/// [`LAG_SAMPLE`] after `since` on; the last exposition.
async fn settle<F, Fut>(
    since: tokio::time::Instant,
    mut scrape: F,
    settled: fn(&Exposition) -> anyhow::Result<()>,
) -> anyhow::Result<Exposition>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    tokio::time::sleep_until(since + LAG_SAMPLE).await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let exp = parse(&scrape().await?)?;
        match settled(&exp) {
            Ok(()) => return Ok(exp),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e.context("not settled"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The `loyalty_engine_*` lines and a few others of an exposition, to print.
fn excerpt(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
        .filter(|l| {
            [
                "loyalty_engine_",
                "loyalty_store_operation",
                "loyalty_cache_operation",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_metrics_are_complete_named_and_bounded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(dir.path()).await?;
    let member = traffic(&dev.address, &dev.key("STORE1_KEY")).await?;
    let since = tokio::time::Instant::now();
    let http = reqwest::Client::new();
    let url = format!("{}/metrics", dev.address);
    let (client, url) = (&http, url.as_str());
    let exp = settle(
        since,
        move || scrape(client, url),
        |e| engine_settled(e).and_then(|()| gateway_counted(e)),
    )
    .await?;
    let expected: Vec<&str> = COMMON
        .iter()
        .chain(&GATEWAY)
        .chain(&ENGINE)
        .copied()
        .collect();
    check(
        "loyalty dev",
        &exp,
        &expected,
        &[&member, EVENT_ID, PHONE_DIGITS],
    )?;
    ensure!(dev.stop()?, "loyalty dev exited with an error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_engine_metrics_are_complete_named_and_bounded() -> anyhow::Result<()> {
    if let Err(reason) = Cluster::available() {
        println!("SKIPPED: {}", loyalty_testkit::missing(reason));
        return Ok(());
    }
    let mut cluster = Cluster::builder()
        .gateways(1)
        .engines(1)
        .partitions(PARTITIONS as u32)
        .start()
        .await?;
    let franchise = cluster.provision("Metrics", demo_program(), 1).await?;
    let base = cluster
        .gateway_urls()
        .into_iter()
        .next()
        .context("gateway")?;
    let member = traffic(&base, &franchise.stores[0].1).await?;
    let since = tokio::time::Instant::now();
    let secrets = [member.as_str(), EVENT_ID, PHONE_DIGITS];

    let gateway = &*cluster.gateway(0);
    let exp = settle(since, move || gateway.metrics(), gateway_counted).await?;
    let expected: Vec<&str> = COMMON.iter().chain(&GATEWAY).copied().collect();
    check("loyalty gateway", &exp, &expected, &secrets)?;
    for name in ENGINE_ONLY {
        ensure!(
            exp.get(name).is_none_or(|f| f.samples.is_empty()),
            "the gateway has {name}"
        );
    }

    let engine = &*cluster.engine(0);
    // The engine's first scrape is counted in its HTTP metrics from the second one on.
    engine.metrics().await?;
    let exp = settle(since, move || engine.metrics(), engine_settled).await?;
    let expected: Vec<&str> = COMMON.iter().chain(&ENGINE).copied().collect();
    check("loyalty engine", &exp, &expected, &secrets)?;
    println!(
        "loyalty engine /metrics (excerpt):\n{}",
        excerpt(&engine.metrics().await?)
    );
    Ok(())
}

#[test]
fn the_parser_reads_labels_escapes_and_histograms() -> anyhow::Result<()> {
    let text = "# HELP a_seconds x\n# TYPE a_seconds histogram\n\
        a_seconds_bucket{op=\"x\\\"y\",le=\"+Inf\"} 2\na_seconds_sum{op=\"x\\\"y\"} 0.5\n\
        a_seconds_count{op=\"x\\\"y\"} 2\n# TYPE b_total counter\nb_total 3\n";
    let exp = parse(text)?;
    assert_eq!(exp["a_seconds"].kind, "histogram");
    assert_eq!(exp["a_seconds"].samples.len(), 3);
    assert_eq!(value(&exp, "a_seconds_count", &[("op", "x\"y")]), 2.0);
    assert_eq!(value(&exp, "b_total", &[]), 3.0);
    assert!(naming("b_seconds_total", "gauge").len() == 1);
    assert!(naming("c_lag_ms", "gauge").len() == 2);
    assert!(id_shaped("m_0f3a9c2d81b7e4") && id_shaped("33611223344") && !id_shaped("0.00025"));
    Ok(())
}
