//! Traces from the real `loyalty` processes, received over OTLP/HTTP (protobuf `POST
//! /v1/traces`) by a receiver in the test ([`loyalty_tests::otlp`]), as a collector would get
//! them:
//! - `loyalty dev`: a purchase sent with a caller's W3C `traceparent` is one trace: the HTTP
//!   request's server span is the child of the caller's span, and the member actor's
//!   `apply purchase` span reaches it through its parents (the engine's `process` span and the
//!   log's `send` span, whose context travelled in the record's headers); the attributes follow
//!   the semantic conventions; no span carries the member's phone number, name or id; the JSON
//!   log line of a request carries its trace id.
//! - `loyalty dev` with a batch delay of ten minutes: the spans queued are exported when the
//!   process exits after SIGTERM.
//! - a trace setting this build cannot honour (a gRPC protocol, an unknown sampler) stops the
//!   process at startup, naming the variable.
//! - `loyalty gateway` and `loyalty engine` as two processes on tansu, PostgreSQL and Redis:
//!   the gateway's and the engine's spans of one purchase share its trace id and form one tree
//!   across the Kafka record headers. Skipped (`SKIPPED: <reason>`) without those servers,
//!   failed instead with `LOYALTY_REQUIRE_SERVERS=1`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use loyalty_testkit::process::{loyalty_binary, Cluster, LoyaltyProcess};
use loyalty_tests::demo_program;
use loyalty_tests::otlp::{ancestry, of_trace, render_tree, OtlpReceiver, ReceivedSpan};
use serde_json::{json, Value};

/// The caller's trace (a POS that traces its own requests).
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const PHONE: &str = "+33698765432";
/// The phone's digits, as any rendering of it would contain them.
const PHONE_DIGITS: &str = "698765432";
const NAME: &str = "Camille-Traced";
/// How long spans may take to arrive (the processes export every 100 ms).
const ARRIVAL: Duration = Duration::from_secs(30);

/// OTLP kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// Attributes shown in the printed span trees.
const TREE_KEYS: [&str; 7] = [
    "http.route",
    "http.response.status_code",
    "messaging.system",
    "messaging.destination.partition.id",
    "db.system.name",
    "loyalty.outcome",
    "error.type",
];

fn traceparent() -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
}

/// The environment of a process exporting to `receiver`.
fn otel_env(receiver: &OtlpReceiver, delay_ms: u64) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", delay_ms.to_string()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".into()),
        ("LOYALTY_LOG_FORMAT", "json".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `loyalty dev` on `dir` (demo franchise, no history) exporting to `receiver`, ready, and the
/// demo keys.
async fn start_dev(
    receiver: &OtlpReceiver,
    dir: &Path,
    delay_ms: u64,
) -> anyhow::Result<(LoyaltyProcess, HashMap<String, String>)> {
    let binary = loyalty_binary().map_err(anyhow::Error::msg)?;
    let data = dir.join("data");
    let mut env = otel_env(receiver, delay_ms);
    env.extend([
        ("LOYALTY_DATA_DIR".to_owned(), data.display().to_string()),
        ("LOYALTY_DEMO_HISTORY".to_owned(), "false".to_owned()),
        ("LOYALTY_PARTITIONS".to_owned(), "4".to_owned()),
    ]);
    let mut dev = LoyaltyProcess::spawn_named(&binary, "dev", "dev", &env, dir).await?;
    dev.wait_ready(Duration::from_secs(60)).await?;
    let text = std::fs::read_to_string(data.join("demo-keys.env")).context("demo keys")?;
    let keys = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok((dev, keys))
}

/// A POST answering JSON; `Err` unless the status is `expect`.
async fn post(
    http: &reqwest::Client,
    url: String,
    key: &str,
    body: Value,
    traceparent: Option<&str>,
    expect: u16,
) -> anyhow::Result<Value> {
    let mut req = http.post(&url).bearer_auth(key).json(&body);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status == expect, "POST {url}: {status} {v}");
    Ok(v)
}

/// Enrols the test's member at `base` with `store_key`, looks it up by phone; its id.
async fn enrol(http: &reqwest::Client, base: &str, store_key: &str) -> anyhow::Result<String> {
    let url = format!("{base}/v1/members?wait_ms=5000");
    let v = post(
        http,
        url,
        store_key,
        json!({"phone": PHONE, "name": NAME}),
        None,
        201,
    )
    .await?;
    let member = v["member_id"].as_str().context("member_id")?.to_owned();
    let r = http
        .get(format!("{base}/v1/members/lookup?phone=%2B{}", &PHONE[1..]))
        .bearer_auth(store_key)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "lookup: {}", r.status());
    Ok(member)
}

/// A purchase by `member` waiting for its effect, in the caller's trace.
async fn purchase(
    http: &reqwest::Client,
    base: &str,
    store_key: &str,
    member: &str,
) -> anyhow::Result<()> {
    let body = json!({"event_id": "traced-0001", "member_id": member, "amount_cents": 1250,
        "currency": "EUR"});
    let url = format!("{base}/v1/purchases?wait_ms=5000");
    let v = post(http, url, store_key, body, Some(&traceparent()), 200).await?;
    anyhow::ensure!(v["status"] == "applied", "{v}");
    Ok(())
}

/// Whether the purchase's whole chain has arrived: the apply span and every ancestor up to the
/// request's server span. The processes export in batches of their own, so the apply span can
/// arrive before the engine's batch span that parents it; waiting for the two ends alone would
/// read a chain with a hole in it.
fn purchase_traced(spans: &[ReceivedSpan]) -> bool {
    let of = of_trace(spans, CALLER_TRACE);
    let Some(apply) = of.iter().find(|s| s.name == "apply purchase") else {
        return false;
    };
    ancestry(spans, apply)
        .last()
        .is_some_and(|root| root.name == "POST /v1/purchases" && root.parent_span_id == CALLER_SPAN)
}

/// Whether the engine's status-cache write arrived as a redis client span.
fn engine_cache_write(spans: &[ReceivedSpan]) -> bool {
    spans.iter().any(|s| {
        s.service == "loyalty-engine"
            && s.attr("db.system.name") == Some("redis")
            && s.name == "put_statuses"
    })
}

fn find<'a>(spans: &[&'a ReceivedSpan], name: &str) -> anyhow::Result<&'a ReceivedSpan> {
    spans
        .iter()
        .copied()
        .find(|s| s.name == name)
        .with_context(|| format!("no span {name:?} among {:?}", names(spans)))
}

fn names(spans: &[&ReceivedSpan]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{}:{}", s.service, s.name))
        .collect()
}

fn assert_attr(span: &ReceivedSpan, key: &str, value: &str) {
    assert_eq!(
        span.attr(key),
        Some(value),
        "{key} of {:?} ({}): {:?}",
        span.name,
        span.service,
        span.attributes
    );
}

/// The checks common to both shapes: the purchase's trace is one tree from the caller's span
/// to the actor's apply, with the conventions' attributes; returns the trace's spans.
fn check_purchase_trace<'a>(
    spans: &'a [ReceivedSpan],
    gateway: &str,
    engine: &str,
    log_system: &str,
) -> anyhow::Result<Vec<&'a ReceivedSpan>> {
    println!(
        "the purchase's trace {CALLER_TRACE}:\n{}",
        render_tree(spans, CALLER_TRACE, &TREE_KEYS)
    );
    let trace = of_trace(spans, CALLER_TRACE);
    let http = check_request(&trace, gateway)?;
    let apply = find(&trace, "apply purchase")?;
    assert_eq!(apply.service, engine);
    assert_attr(apply, "loyalty.command.kind", "purchase");
    assert_attr(apply, "loyalty.outcome", "applied");
    let chain = ancestry(spans, apply);
    println!("apply purchase ← {:?}", names(&chain));
    let root = chain.last().copied().context("a chain")?;
    assert_eq!(root.span_id, http.span_id, "apply reaches the request");
    let send = chain
        .iter()
        .copied()
        .find(|s| s.name == "send pos-commands")
        .context("the log append is an ancestor of apply")?;
    check_messaging(spans, send, gateway, engine, log_system)?;
    Ok(trace)
}

/// The request's server span: the caller's span is its parent.
fn check_request<'a>(
    trace: &[&'a ReceivedSpan],
    gateway: &str,
) -> anyhow::Result<&'a ReceivedSpan> {
    let http = find(trace, "POST /v1/purchases")?;
    assert_eq!(http.service, gateway);
    assert_eq!(http.kind, SERVER);
    assert_eq!(
        http.parent_span_id, CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_attr(http, "http.request.method", "POST");
    assert_attr(http, "http.route", "/v1/purchases");
    assert_attr(http, "http.response.status_code", "200");
    assert_attr(http, "url.scheme", "http");
    Ok(http)
}

/// The log's producer span, and the engine's batch span that follows it (its child for a
/// batch of one record, else linked to it).
fn check_messaging(
    spans: &[ReceivedSpan],
    send: &ReceivedSpan,
    gateway: &str,
    engine: &str,
    log_system: &str,
) -> anyhow::Result<()> {
    assert_eq!(send.service, gateway);
    assert_eq!(send.kind, PRODUCER);
    assert_attr(send, "messaging.system", log_system);
    assert_attr(send, "messaging.destination.name", "pos-commands");
    assert_attr(send, "messaging.operation.type", "send");
    assert!(send.attr("messaging.destination.partition.id").is_some());
    let link = (send.trace_id.clone(), send.span_id.clone());
    let process = spans
        .iter()
        .find(|s| {
            s.name == "process pos-commands"
                && (s.parent_span_id == send.span_id || s.links.contains(&link))
        })
        .context("the engine's batch span follows the append")?;
    assert_eq!(process.service, engine);
    assert_eq!(process.kind, CONSUMER);
    assert_attr(process, "messaging.system", log_system);
    assert_attr(process, "messaging.operation.type", "process");
    Ok(())
}

/// No span name or attribute carries the member's phone, name or id.
fn assert_no_personal_data(spans: &[ReceivedSpan], member: &str) {
    for s in spans {
        let texts = std::iter::once(&s.name).chain(s.attributes.values());
        for t in texts {
            for secret in [PHONE_DIGITS, NAME, member] {
                assert!(
                    !t.contains(secret),
                    "{:?} of {} carries {secret:?}: {t}",
                    s.name,
                    s.service
                );
            }
        }
    }
}

/// The store (and cache) calls of the trace are client spans of `system`.
fn assert_db_spans(trace: &[&ReceivedSpan], system: &str) {
    let db: Vec<_> = trace
        .iter()
        .filter(|s| s.attr("db.system.name") == Some(system))
        .collect();
    assert!(!db.is_empty(), "no {system} span in {:?}", names(trace));
    for s in &db {
        assert_eq!(s.kind, CLIENT, "{:?}", s.name);
        assert_eq!(s.attr("db.operation.name"), Some(s.name.as_str()));
    }
}

/// The JSON log line with `message` (from `log`), parsed.
fn log_line(log: &Path, message: &str) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(log)?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == message)
        .with_context(|| format!("no JSON log line {message:?} in {}", log.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_purchase_is_one_trace_from_the_request_to_the_actor() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let dir = tempfile::tempdir()?;
    let (mut dev, keys) = start_dev(&receiver, dir.path(), 100).await?;
    let (base, key) = (dev.url().to_owned(), keys["STORE1_KEY"].clone());
    let http = reqwest::Client::new();
    let member = enrol(&http, &base, &key).await?;
    purchase(&http, &base, &key, &member).await?;
    // A request that logs (at info, inside its span).
    let url = format!("{base}/v1/franchises/{}/stores", keys["FRANCHISE_ID"]);
    post(
        &http,
        url,
        &keys["HQ_KEY"],
        json!({"name": "Traced store"}),
        None,
        201,
    )
    .await?;

    let store_span = |s: &ReceivedSpan| s.name == "POST /v1/franchises/{fid}/stores";
    let spans = receiver
        .wait_for(ARRIVAL, "purchase and store spans", |s| {
            purchase_traced(s) && s.iter().any(store_span)
        })
        .await?;
    let trace = check_purchase_trace(&spans, "loyalty-dev", "loyalty-dev", "embedded")?;
    assert_db_spans(&trace, "redb");
    assert_no_personal_data(&spans, &member);

    // The log line of the store's creation names the request's trace.
    let created = spans.iter().find(|s| store_span(s)).context("store span")?;
    let line = log_line(&dev.stderr_path(), "store created")?;
    assert_eq!(line["trace_id"], created.trace_id.as_str(), "{line}");
    assert!(line["span_id"].is_string(), "{line}");
    let outside = log_line(&dev.stderr_path(), "engine started")?;
    assert!(outside.get("trace_id").is_none(), "{outside}");

    dev.sigterm()?;
    let status = dev.wait_exit(Duration::from_secs(30)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_spans_are_exported_on_a_graceful_exit() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let dir = tempfile::tempdir()?;
    // Ten minutes between exports: only the shutdown's flush can deliver them.
    let (mut dev, keys) = start_dev(&receiver, dir.path(), 600_000).await?;
    let (base, key) = (dev.url().to_owned(), keys["STORE1_KEY"].clone());
    let http = reqwest::Client::new();
    let member = enrol(&http, &base, &key).await?;
    purchase(&http, &base, &key, &member).await?;
    assert_eq!(receiver.requests(), 0, "nothing exported before the exit");

    dev.sigterm()?;
    let status = dev.wait_exit(Duration::from_secs(30)).await?;
    assert!(status.success(), "{status}");
    let spans = receiver
        .wait_for(ARRIVAL, "the purchase's spans", purchase_traced)
        .await?;
    check_purchase_trace(&spans, "loyalty-dev", "loyalty-dev", "embedded")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_engine_spans_share_the_trace_across_kafka() -> anyhow::Result<()> {
    if let Err(reason) = Cluster::available() {
        println!("SKIPPED: {reason}");
        return Ok(());
    }
    let receiver = OtlpReceiver::start().await?;
    let mut builder = Cluster::builder().gateways(1).engines(1).partitions(4);
    for (k, v) in otel_env(&receiver, 100) {
        builder = builder.env(&k, &v);
    }
    let mut cluster = builder.start().await?;
    let franchise = cluster.provision("Traced", demo_program(), 1).await?;
    let base = cluster
        .gateway_urls()
        .into_iter()
        .next()
        .context("gateway")?;
    let key = franchise.stores[0].1.clone();
    let http = reqwest::Client::new();
    let member = enrol(&http, &base, &key).await?;
    purchase(&http, &base, &key, &member).await?;

    // The engine's cache write may travel in a later export batch than the apply span, so it
    // is waited for, not looked up once; its absence fails the wait.
    let spans = receiver
        .wait_for(
            ARRIVAL,
            "the purchase's spans and the engine's redis cache write",
            |spans| purchase_traced(spans) && engine_cache_write(spans),
        )
        .await?;
    let trace = check_purchase_trace(&spans, "loyalty-gateway", "loyalty-engine", "kafka")?;
    assert_db_spans(&trace, "postgresql");
    assert_no_personal_data(&spans, &member);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_setting_this_build_cannot_honour_stops_the_process() -> anyhow::Result<()> {
    let binary = loyalty_binary().map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    for (name, value) in [
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ] {
        let env = [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                "http://127.0.0.1:9".to_owned(),
            ),
            (name.to_owned(), value.to_owned()),
            (
                "LOYALTY_DATA_DIR".to_owned(),
                dir.path().display().to_string(),
            ),
        ];
        let out = LoyaltyProcess::run(&binary, &["dev"], &env, Duration::from_secs(30)).await;
        let e = out.err().context("the process must refuse the setting")?;
        assert!(e.to_string().contains(&format!("{name}={value}")), "{e}");
    }
    Ok(())
}
