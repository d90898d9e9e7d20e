//! The POS topic (docs/pos-topic.md): records streamed by tills straight into the log are
//! applied like HTTP commands, exactly once, and bad ones are dead-lettered with their reason.
//!
//! - `pos_topic_examples_match_the_schema_and_decode`: every example record of the doc decodes,
//!   and the schema and the decoder agree on what is refused (so the doc and the code cannot
//!   drift). The JSON Schema itself is checked with Python's `jsonschema` (Draft 2020-12) when it
//!   is installed.
//! - `pos_records_on_the_embedded_log_are_applied_once_and_bad_ones_dead_lettered`: the whole
//!   scenario in `loyalty dev` (embedded log), always.
//! - `pos_records_produced_with_kcat_are_applied_once_and_bad_ones_dead_lettered`: the same
//!   scenario on a `loyalty node` on a real broker (tansu) and redis-server, the records produced
//!   and the dead letters read by Debian's `kcat`, a Kafka client no one here wrote. Skipped,
//!   with the reason, without tansu, redis-server or kcat (`apt-get install -y kcat`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use loyalty::configuration::DevConfig;
use loyalty::startup::{Application, Mode, Ports};
use loyalty_core::identity::{member_id, pos_signing_secret};
use loyalty_core::model::{Franchise, Store};
use loyalty_core::ports::{EventLog, StateStore};
use loyalty_core::pos_topic::{self, Limits, StoreDirectory};
use loyalty_core::provisioning::now;
use loyalty_domain::{EventId, FranchiseId, MemberId, Phone, Program, StoreId, Timestamp};
use loyalty_embedded::log::EmbeddedLog;
use loyalty_embedded::EmbeddedStore;
use loyalty_kafka::{KafkaConfig, KafkaLog};
use loyalty_redis::{RedisCache, RedisCacheOptions};
use loyalty_testkit::redis::RedisServer;
use loyalty_testkit::tansu::TansuBroker;
use loyalty_tests::{demo_program, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const POS_TOPIC: &str = "pos-events";
const POS_DLQ: &str = "pos-events-dlq";

// ---------------------------------------------------------------------------------------------
// The doc's examples and the schema.

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("pos-topic")
}

/// The examples, by file name (sorted: a refund comes after the purchase it refunds).
/// The platform's clock for the documented examples (their day, 2026-11-25T12:00:00Z): their
/// `occurred_at` must stay within the accepted horizon (at most 365 days back) whenever the
/// test runs.
const EXAMPLES_NOW: Timestamp = Timestamp(1_795_608_000_000);

fn examples() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(docs().join("examples")).expect("docs/pos-topic/examples") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            out.insert(path.file_name().unwrap().to_string_lossy().into_owned(), v);
        }
    }
    assert!(out.len() >= 4, "the examples are missing");
    out
}

fn headers(signature: String) -> Vec<(String, Bytes)> {
    vec![
        (
            pos_topic::SCHEMA_VERSION_HEADER.to_string(),
            Bytes::from_static(b"1"),
        ),
        (
            pos_topic::SIGNATURE_HEADER.to_string(),
            Bytes::from(signature),
        ),
    ]
}

#[tokio::test]
async fn pos_topic_examples_match_the_schema_and_decode() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(docs().join("v1.schema.json")).unwrap())
            .expect("the schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let examples = examples();

    // The examples' franchise and store, with a known secret and the demo program.
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(
        &dir.path().join("store"),
        loyalty_core::sealing::KeyRing::dev(),
    )
    .unwrap();
    let first = examples.values().next().unwrap();
    let fid = FranchiseId::parse(first["franchise_id"].as_str().unwrap()).unwrap();
    let sid = StoreId::parse(first["store_id"].as_str().unwrap()).unwrap();
    let secret = "example-franchise-secret";
    store.put_program(&fid, 1, &Program::demo()).await.unwrap();
    store
        .put_franchise(&Franchise {
            id: fid.clone(),
            name: "Example".into(),
            secret: secret.into(),
            program_version: 1,
            created_at: Timestamp(0),
        })
        .await
        .unwrap();
    store
        .put_store(&Store {
            id: sid.clone(),
            franchise_id: fid.clone(),
            name: "Example store".into(),
            created_at: Timestamp(0),
        })
        .await
        .unwrap();
    let signing = pos_signing_secret(secret, &sid);
    let directory = StoreDirectory::new(store.clone() as Arc<dyn StateStore>);
    let decode = |v: &Value| {
        let payload = serde_json::to_vec(v).unwrap();
        let h = headers(pos_topic::sign(&signing, &payload));
        let directory = &directory;
        async move {
            pos_topic::decode(directory, &payload, &h, Limits::default(), EXAMPLES_NOW)
                .await
                .expect("the embedded store answers")
        }
    };

    let example_member = member_id(secret, &Phone::parse("+33698765432").unwrap());
    for (name, example) in &examples {
        assert_eq!(example["franchise_id"], fid.as_str(), "{name}");
        assert_eq!(example["store_id"], sid.as_str(), "{name}");
        let env = decode(example)
            .await
            .unwrap_or_else(|r| panic!("{name} does not decode: {r:?}"));
        // The examples tell one member's story.
        if let Some(m) = env.command.member_id() {
            assert_eq!(m, &example_member, "{name}");
        }
        directory.forwarded(&env);

        // What the schema requires, the decoder requires; what it does not list, the decoder
        // refuses.
        let kind = example["type"].as_str().unwrap();
        let def = &schema["$defs"][kind];
        assert_eq!(def["additionalProperties"], false, "{kind}");
        let properties = def["properties"].as_object().unwrap();
        for field in example.as_object().unwrap().keys() {
            assert!(
                properties.contains_key(field),
                "{name}: {field} is not in the schema"
            );
        }
        for field in def["required"].as_array().unwrap() {
            let field = field.as_str().unwrap();
            let mut v = example.clone();
            v.as_object_mut().unwrap().remove(field);
            let r = decode(&v).await.expect_err(field);
            assert_eq!(
                r.reason,
                pos_topic::Reason::Invalid,
                "{name} without {field}"
            );
        }
        let mut v = example.clone();
        v["not_in_the_schema"] = json!(1);
        let r = decode(&v).await.expect_err("unknown field");
        assert_eq!(r.reason, pos_topic::Reason::Invalid, "{name}: {r:?}");
    }
    // Every kind of the schema has an example.
    for kind in schema["properties"]["type"]["enum"].as_array().unwrap() {
        assert!(
            examples.values().any(|e| &e["type"] == kind),
            "no example of {kind}"
        );
    }

    // The schema itself, by a JSON Schema implementation (Draft 2020-12, formats checked).
    let check = r#"
import glob, json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
v = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
bad = 0
for path in sorted(glob.glob(sys.argv[2] + "/*.json")):
    record = json.load(open(path))
    for e in v.iter_errors(record):
        print(path, e.message); bad += 1
    wrong = dict(record, not_in_the_schema=1)
    if v.is_valid(wrong):
        print(path, "accepts an unknown field"); bad += 1
    for field in schema["$defs"][record["type"]]["required"]:
        if v.is_valid({k: x for k, x in record.items() if k != field}):
            print(path, "accepts a record without", field); bad += 1
    if record["type"] == "purchase":
        if v.is_valid(dict(record, amount_cents=-1)) or v.is_valid(dict(record, member_id="m1", phone="+33612345678")):
            print(path, "accepts a negative amount or two members"); bad += 1
print("checked")
sys.exit(1 if bad else 0)
"#;
    let has_jsonschema = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_jsonschema {
        let out = Command::new("python3")
            .args(["-c", check])
            .arg(docs().join("v1.schema.json"))
            .arg(docs().join("examples"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the schema refuses an example: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        println!(
            "SKIPPED (schema validation only): python3 jsonschema not installed \
             (apt-get install -y python3-jsonschema)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A platform with a POS topic, and a way to produce to it and read its dead letters.

enum Bus {
    Embedded(Arc<EmbeddedLog>),
    Kcat { kcat: PathBuf, brokers: String },
}

struct DeadLetter {
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

struct Platform {
    client: reqwest::Client,
    base: String,
    store: Arc<dyn StateStore>,
    bus: Bus,
}

/// A franchise made through the API, with the signing secret of each of its stores.
struct Chain {
    id: FranchiseId,
    secret: String,
    stores: Vec<(StoreId, String, String)>, // (id, store key, signing secret)
}

impl Platform {
    async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, key: &str) -> (StatusCode, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent");
        let status = r.status();
        (status, r.text().await.unwrap_or_default())
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while self.get("/readyz", "").await.0 != StatusCode::OK {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the engine never got its partitions"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A franchise with the demo program and `stores` stores.
    async fn chain(&self, name: &str, stores: usize) -> Chain {
        let (s, f) = self
            .post(
                "/v1/franchises",
                ADMIN_KEY,
                json!({"name": name, "program": demo_program()}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{f}");
        let id = FranchiseId::parse(f["id"].as_str().unwrap()).unwrap();
        let hq = f["hq_api_key"].as_str().unwrap().to_owned();
        // HQ would fetch the signing secrets; the test derives them as the platform does.
        let secret = self.store.franchise(&id).await.unwrap().unwrap().secret;
        let mut out = Vec::new();
        for i in 0..stores {
            let (s, st) = self
                .post(
                    &format!("/v1/franchises/{id}/stores"),
                    &hq,
                    json!({"name": format!("{name} {i}")}),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{st}");
            let sid = StoreId::parse(st["id"].as_str().unwrap()).unwrap();
            let signing = pos_signing_secret(&secret, &sid);
            out.push((sid, st["api_key"].as_str().unwrap().to_owned(), signing));
        }
        Chain {
            id,
            secret,
            stores: out,
        }
    }

    /// Produces one record to the POS topic.
    async fn produce(&self, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
        match &self.bus {
            Bus::Embedded(log) => {
                let hs = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), Bytes::from(v.to_string())))
                    .collect();
                log.append(POS_TOPIC, key.as_bytes(), Bytes::from(payload.to_vec()), hs)
                    .await
                    .expect("append to the POS topic");
            }
            Bus::Kcat { kcat, brokers } => {
                // A file is sent as one message, byte for byte.
                let file = tempfile::NamedTempFile::new().unwrap();
                std::fs::write(file.path(), payload).unwrap();
                let mut cmd = Command::new(kcat);
                cmd.args(["-b", brokers, "-P", "-t", POS_TOPIC, "-k", key, "-q"]);
                for (k, v) in headers {
                    cmd.arg("-H").arg(format!("{k}={v}"));
                }
                cmd.arg(file.path());
                let out = tokio::task::spawn_blocking(move || cmd.output())
                    .await
                    .unwrap()
                    .expect("kcat runs");
                assert!(
                    out.status.success(),
                    "kcat failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// A record signed by `signer` (a signing secret), with the schema version header.
    async fn send(&self, key: &StoreId, record: &Value, signer: &str) {
        let payload = serde_json::to_vec(record).unwrap();
        let sig = pos_topic::sign(signer, &payload);
        self.produce(
            key.as_str(),
            &payload,
            &[("loyalty-schema-version", "1"), ("loyalty-signature", &sig)],
        )
        .await;
    }

    /// Every dead letter of the POS topic so far.
    async fn dead_letters(&self) -> Vec<DeadLetter> {
        match &self.bus {
            Bus::Embedded(log) => log
                .read(POS_DLQ, 0, 0, 10_000)
                .unwrap()
                .into_iter()
                .map(|r| DeadLetter {
                    payload: r.payload.to_vec(),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                        .collect(),
                })
                .collect(),
            Bus::Kcat { kcat, brokers } => {
                let mut cmd = Command::new(kcat);
                cmd.args([
                    "-b",
                    brokers,
                    "-C",
                    "-t",
                    POS_DLQ,
                    "-o",
                    "beginning",
                    "-e",
                    "-J",
                    "-q",
                ]);
                let out = tokio::task::spawn_blocking(move || cmd.output())
                    .await
                    .unwrap()
                    .expect("kcat runs");
                assert!(
                    out.status.success(),
                    "kcat failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| {
                        let v: Value = serde_json::from_str(l)
                            .unwrap_or_else(|e| panic!("kcat -J printed {l:?}: {e}"));
                        // kcat -J: "headers": ["name", "value", ...]
                        let hs = v["headers"].as_array().cloned().unwrap_or_default();
                        let headers = hs
                            .chunks(2)
                            .map(|kv| {
                                (
                                    kv[0].as_str().unwrap_or_default().to_owned(),
                                    kv.get(1)
                                        .and_then(|x| x.as_str())
                                        .unwrap_or_default()
                                        .to_owned(),
                                )
                            })
                            .collect();
                        DeadLetter {
                            payload: v["payload"]
                                .as_str()
                                .unwrap_or_default()
                                .as_bytes()
                                .to_vec(),
                            headers,
                        }
                    })
                    .collect()
            }
        }
    }

    /// Waits (bounded) until `member` has `points`.
    async fn wait_points(&self, member: &MemberId, points: u64, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.store.member(member).await.unwrap();
            if s.as_ref().map(|s| s.points) == Some(points) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the member has {:?} points, not {points}",
                s.map(|s| s.points)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The member's balance is the sum of its ledger, which names each event once; returns the
    /// ledger's event ids.
    async fn check_ledger(&self, member: &MemberId) -> Vec<String> {
        let s = self.store.member(member).await.unwrap().expect("member");
        let ledger = self.store.ledger(member, None, 10_000).await.unwrap();
        let sum: i64 = ledger.iter().map(|e| e.points).sum();
        assert_eq!(sum, s.points as i64, "balance is not the sum of its ledger");
        let mut ids: Vec<String> = ledger.iter().map(|e| e.event_id.to_string()).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "an event is twice in the ledger: {ids:?}");
        ids
    }

    async fn metrics(&self) -> String {
        self.get("/metrics", "").await.1
    }
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn record(kind: &str, chain: &Chain, store: usize, event: &str, fields: Value) -> Value {
    let mut v = json!({
        "type": kind,
        "franchise_id": chain.id.as_str(),
        "store_id": chain.stores[store].0.as_str(),
        "event_id": event,
        "occurred_at": time_now(),
    });
    for (k, x) in fields.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// The current time in RFC 3339 (UTC), a second in the past.
fn time_now() -> String {
    rfc3339(now().0 - 1000)
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (days to civil date: H. Hinnant).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn pos_test_clock_formats_rfc3339() {
    assert_eq!(rfc3339(1_764_064_800_000), "2025-11-25T10:00:00Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
}

/// The scenario: one franchise's member through enrolment, purchases, a refund, a redemption
/// and an anonymous sale; everything sent twice; then bad records, including records signed
/// with another franchise's store secret.
async fn scenario(p: &Platform) {
    let a = p.chain("Café A", 2).await;
    let b = p.chain("Café B", 1).await;
    let (a1, a2) = (&a.stores[0], &a.stores[1]);
    let b1 = &b.stores[0];
    let phone = "+33655500001";
    let m = member_id(&a.secret, &Phone::parse(phone).unwrap());
    // A member of B, enrolled over HTTP: 50 points, which nothing below may change.
    let (s, enrolled) = p
        .post("/v1/members", &b1.1, json!({"phone": "+33655500002"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{enrolled}");
    let mb = MemberId::parse(enrolled["member_id"].as_str().unwrap()).unwrap();

    // 1. Enrolment and a purchase by phone at store a1 (keyed by the store: one till's order).
    let good = vec![
        (
            &a1.0,
            record(
                "enrolment",
                &a,
                0,
                "a1:0001",
                json!({"phone": phone, "name": "Ana"}),
            ),
            &a1.2,
        ),
        (
            &a1.0,
            record(
                "purchase",
                &a,
                0,
                "a1:0002",
                json!({"phone": phone, "amount_cents": 10_000, "currency": "EUR"}),
            ),
            &a1.2,
        ),
    ];
    for (key, r, signer) in &good {
        p.send(key, r, signer).await;
    }
    p.wait_points(&m, 50 + 100, "after enrolment and purchase")
        .await;

    // 2. At the other store, a purchase by member id; at a1, a refund of the first purchase
    //    that does not name the member, then a redemption; an anonymous sale at a2.
    let more = vec![
        (
            &a2.0,
            record(
                "purchase",
                &a,
                1,
                "a2:0001",
                json!({"member_id": m.as_str(), "amount_cents": 5_000, "currency": "EUR"}),
            ),
            &a2.2,
        ),
        (
            &a1.0,
            record(
                "refund",
                &a,
                0,
                "a1:0003",
                json!({"purchase_event_id": "a1:0002", "amount_cents": 4_000}),
            ),
            &a1.2,
        ),
        (
            &a1.0,
            record(
                "redemption",
                &a,
                0,
                "a1:0004",
                json!({"member_id": m.as_str(), "reward_id": "free-coffee"}),
            ),
            &a1.2,
        ),
        (
            &a2.0,
            record(
                "purchase",
                &a,
                1,
                "a2:0002",
                json!({"amount_cents": 3_000, "currency": "EUR"}),
            ),
            &a2.2,
        ),
    ];
    for (key, r, signer) in &more {
        p.send(key, r, signer).await;
    }
    // 150 + 50 (purchase) - 40 (refund) - 100 (free coffee)
    p.wait_points(&m, 60, "after the refund and the redemption")
        .await;
    let ids = p.check_ledger(&m).await;
    println!("ledger of the member: {ids:?}");
    // The anonymous sale is on another partition, applied by another worker: wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let anon = loop {
        let anon = p
            .store
            .processed(&a.id, &[EventId::parse("a2:0002").unwrap()])
            .await
            .unwrap();
        if anon[0].is_some() || tokio::time::Instant::now() > deadline {
            break anon;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        matches!(
            anon[0].as_ref().map(|r| &r.outcome),
            Some(loyalty_domain::Outcome::AnonymousSale { .. })
        ),
        "the anonymous sale is recorded: {anon:?}"
    );

    // 3. Exactly once: every record again, byte for byte, then a marker on each store's
    //    partition; once the markers are applied, the copies before them were replays.
    for (key, r, signer) in good.iter().chain(more.iter()) {
        p.send(key, r, signer).await;
    }
    p.send(
        &a1.0,
        &record(
            "purchase",
            &a,
            0,
            "a1:0005",
            json!({"member_id": m.as_str(), "amount_cents": 1_000, "currency": "EUR"}),
        ),
        &a1.2,
    )
    .await;
    p.send(
        &a2.0,
        &record(
            "purchase",
            &a,
            1,
            "a2:0003",
            json!({"member_id": m.as_str(), "amount_cents": 2_000, "currency": "EUR"}),
        ),
        &a2.2,
    )
    .await;
    p.wait_points(&m, 60 + 10 + 20, "after the copies and the markers")
        .await;
    let ids = p.check_ledger(&m).await;
    for e in [
        "a1:0002", "a2:0001", "a1:0003", "a1:0004", "a1:0005", "a2:0003",
    ] {
        assert!(ids.iter().any(|i| i == e), "{e} is not in the ledger");
    }
    let mb_before = p.store.member(&mb).await.unwrap().unwrap();

    // 4. Bad records, each dead-lettered with its reason, all on a1's partition.
    let purchase = |event: &str, cents: i64| {
        record(
            "purchase",
            &a,
            0,
            event,
            json!({"member_id": m.as_str(), "amount_cents": cents, "currency": "EUR"}),
        )
    };
    let not_json = b"{\"type\": \"purchase\", \"franchise_id\": ".to_vec();
    p.produce(
        a1.0.as_str(),
        &not_json,
        &[
            ("loyalty-schema-version", "1"),
            ("loyalty-signature", &pos_topic::sign(&a1.2, &not_json)),
        ],
    )
    .await;
    let forged = serde_json::to_vec(&purchase("bad:forged", 900_000)).unwrap();
    p.produce(
        a1.0.as_str(),
        &forged,
        &[
            ("loyalty-schema-version", "1"),
            ("loyalty-signature", &format!("v1={}", "ab".repeat(32))),
        ],
    )
    .await;
    let mut unknown_store = purchase("bad:unknown-store", 900_000);
    unknown_store["store_id"] = json!("s_no_such_store");
    p.send(&a1.0, &unknown_store, &a1.2).await;
    // A's record signed with B's store secret; B's record signed with A's store secret.
    p.send(&a1.0, &purchase("bad:signed-by-b", 900_000), &b1.2)
        .await;
    let for_b = json!({
        "type": "purchase", "franchise_id": b.id.as_str(), "store_id": b1.0.as_str(),
        "event_id": "bad:signed-by-a", "occurred_at": time_now(),
        "member_id": mb.as_str(), "amount_cents": 900_000, "currency": "EUR"
    });
    p.send(&a1.0, &for_b, &a1.2).await;
    // A's franchise with B's store, signed by that store: the store is not A's.
    let mut foreign_store = purchase("bad:foreign-store", 900_000);
    foreign_store["store_id"] = json!(b1.0.as_str());
    p.send(&a1.0, &foreign_store, &b1.2).await;
    let unversioned = serde_json::to_vec(&purchase("bad:no-version", 900_000)).unwrap();
    p.produce(
        a1.0.as_str(),
        &unversioned,
        &[("loyalty-signature", &pos_topic::sign(&a1.2, &unversioned))],
    )
    .await;
    p.send(&a1.0, &purchase("bad:negative", -5), &a1.2).await;
    // A marker behind them.
    p.send(&a1.0, &purchase("a1:0006", 1_000), &a1.2).await;
    p.wait_points(&m, 100, "after the bad records and the marker")
        .await;

    let expected: BTreeMap<&str, &str> = [
        ("bad:forged", "bad-signature"),
        ("bad:unknown-store", "unknown-store"),
        ("bad:signed-by-b", "bad-signature"),
        ("bad:signed-by-a", "bad-signature"),
        ("bad:foreign-store", "unknown-store"),
        ("bad:no-version", "schema-version"),
        ("bad:negative", "invalid"),
        ("not json", "undecodable"),
    ]
    .into_iter()
    .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let letters = loop {
        let letters = p.dead_letters().await;
        if letters.len() >= expected.len() {
            break letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} dead letters, not {}",
            letters.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        letters.len(),
        expected.len(),
        "one dead letter per bad record"
    );
    let mut seen = BTreeMap::new();
    for l in &letters {
        let event = serde_json::from_slice::<Value>(&l.payload)
            .ok()
            .and_then(|v| v["event_id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "not json".into());
        let reason = l.headers.get("dlq-reason").cloned().unwrap_or_default();
        println!(
            "dead letter {event}: {reason} ({})",
            l.headers.get("dlq-detail").cloned().unwrap_or_default()
        );
        let source = l.headers.get("dlq-source").cloned().unwrap_or_default();
        assert!(
            source.starts_with("pos-events/"),
            "{event}: dlq-source {source:?}"
        );
        assert!(
            !l.headers
                .get("dlq-detail")
                .cloned()
                .unwrap_or_default()
                .is_empty(),
            "{event}: no dlq-detail"
        );
        if event != "bad:no-version" {
            assert_eq!(
                l.headers.get("loyalty-schema-version").map(String::as_str),
                Some("1"),
                "{event}: the record's own headers are kept"
            );
        }
        seen.insert(event, reason);
    }
    let seen: BTreeMap<&str, &str> = seen.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(seen, expected);

    // Nothing of the bad records reached either franchise.
    p.wait_points(&m, 100, "the member of A").await;
    let mb_after = p.store.member(&mb).await.unwrap().unwrap();
    assert_eq!(mb_after.points, mb_before.points, "B's member changed");
    assert_eq!(mb_after.version, mb_before.version, "B's member changed");
    for (f, e) in [
        (&a.id, "bad:forged"),
        (&a.id, "bad:signed-by-b"),
        (&b.id, "bad:signed-by-a"),
        (&a.id, "bad:foreign-store"),
        (&b.id, "bad:foreign-store"),
        (&a.id, "bad:negative"),
    ] {
        let rec = p
            .store
            .processed(f, &[EventId::parse(e).unwrap()])
            .await
            .unwrap();
        assert!(rec[0].is_none(), "{e} was recorded for {f}");
    }
    p.check_ledger(&m).await;

    // The till's view and the metrics.
    let (s, status) = p.get(&format!("/v1/members/{m}"), &a1.1).await;
    assert_eq!(s, StatusCode::OK);
    let status: Value = serde_json::from_str(&status).unwrap();
    // The hot cache follows the store: allow it a moment.
    if status["points"] != 100 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, again) = p.get(&format!("/v1/members/{m}"), &a1.1).await;
        let again: Value = serde_json::from_str(&again).unwrap();
        assert_eq!(again["points"], 100, "{again}");
    }
    let text = p.metrics().await;
    let forwarded = metric(&text, "loyalty_pos_records_total{result=\"forwarded\"}");
    let dead = metric(&text, "loyalty_pos_records_total{result=\"dead-lettered\"}");
    let bad_sig = metric(
        &text,
        "loyalty_pos_dead_letters_total{reason=\"bad-signature\"}",
    );
    println!("metrics: forwarded {forwarded}, dead-lettered {dead}, bad-signature {bad_sig}");
    // At least (another test in this process may add to them): 6 + 6 copies + 3 markers.
    assert!(forwarded >= 15, "{forwarded} forwarded");
    assert!(dead >= 8, "{dead} dead-lettered");
    assert!(bad_sig >= 3, "{bad_sig} bad signatures");
    // The copies of the member's five events, at least (the anonymous sale's copy is on
    // another partition, not ordered before the markers).
    let replayed = metric(&text, "loyalty_events_replayed_total");
    assert!(replayed >= 5, "{replayed} replays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pos_records_on_the_embedded_log_are_applied_once_and_bad_ones_dead_lettered() {
    let app = loyalty_tests::spawn_app().await;
    let p = Platform {
        client: reqwest::Client::new(),
        base: app.address.clone(),
        store: app.store.clone() as Arc<dyn StateStore>,
        bus: Bus::Embedded(app.log.clone()),
    };
    scenario(&p).await;
}

/// `kcat` on this machine, or why not.
fn kcat() -> Result<PathBuf, String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kcat"))
            .find(|p| p.is_file())
    });
    found
        .or_else(|| Some(PathBuf::from("/usr/bin/kcat")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            loyalty_testkit::missing(
                "kcat not installed (apt-get install -y kcat): the POS topic test produces with it"
                    .into(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pos_records_produced_with_kcat_are_applied_once_and_bad_ones_dead_lettered() {
    let missing = [
        TansuBroker::available().err(),
        RedisServer::available().err(),
        kcat().err(),
    ];
    if let Some(reason) = missing.into_iter().flatten().next() {
        println!("SKIPPED: {reason}");
        return;
    }
    let kcat = kcat().unwrap();
    loyalty::telemetry::init_with_default("warn");
    let broker = TansuBroker::start().await.expect("tansu starts");
    let redis = RedisServer::start().expect("redis-server starts");
    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        admin_key: ADMIN_KEY.into(),
        partitions: 4,
        http_workers: 2,
        demo: false,
        kafka_brokers: Some(broker.brokers()),
        redis_url: Some(redis.url()),
        ..DevConfig::default()
    };
    assert_eq!(
        config.pos_topic, POS_TOPIC,
        "POS ingestion is on by default"
    );
    let mut kafka = KafkaConfig::new(broker.brokers());
    kafka.session_timeout = Duration::from_secs(6);
    let store = EmbeddedStore::open(
        &dir.path().join("store"),
        loyalty_core::sealing::KeyRing::dev(),
    )
    .unwrap();
    let ports = Ports {
        log: KafkaLog::new(kafka).unwrap(),
        store: store.clone(),
        cache: Arc::new(
            RedisCache::connect_lazy(&redis.url(), RedisCacheOptions::default()).unwrap(),
        ),
    };
    // `loyalty node`: gateway and engine, and with the engine the POS ingester.
    let app = Application::build_with(config, ports, None, Mode::All)
        .await
        .expect("the node starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let p = Platform {
        client: reqwest::Client::new(),
        base,
        store,
        bus: Bus::Kcat {
            kcat,
            brokers: broker.brokers(),
        },
    };
    p.wait_ready().await;
    scenario(&p).await;
    drop(redis);
    drop(broker);
}

// ---------------------------------------------------------------------------------------------
// The ingester under faults: a log that refuses appends to one topic while told to.

struct FlakyLog {
    inner: Arc<EmbeddedLog>,
    refuse_topic: &'static str,
    refusing: std::sync::atomic::AtomicBool,
    refused: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl EventLog for FlakyLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> loyalty_core::Result<u32> {
        self.inner.ensure_topic(topic, partitions).await
    }

    async fn append(
        &self,
        topic: &str,
        key: &[u8],
        payload: Bytes,
        headers: Vec<(String, Bytes)>,
    ) -> loyalty_core::Result<loyalty_core::ports::Appended> {
        use std::sync::atomic::Ordering;
        if topic == self.refuse_topic && self.refusing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(loyalty_core::Error::Unavailable("the test says no".into()));
        }
        self.inner.append(topic, key, payload, headers).await
    }

    async fn end_offset(
        &self,
        topic: &str,
        partition: loyalty_core::ports::Partition,
    ) -> loyalty_core::Result<loyalty_core::ports::Offset> {
        self.inner.end_offset(topic, partition).await
    }

    async fn subscribe(
        &self,
        group: &str,
        topic: &str,
    ) -> loyalty_core::Result<Box<dyn loyalty_core::ports::LogConsumer>> {
        self.inner.subscribe(group, topic).await
    }
}

/// While the dead-letter topic refuses appends, the ingester backs off and commits nothing of
/// the poll (a forwarded command included); killed then, its successor reads the poll again and
/// appends the same command (same event id, same fingerprint: a replay for the engine), then
/// commits, so a third one reads nothing again. A graceful stop returns promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pos_ingest_backs_off_commits_only_durable_work_and_is_read_again_after_a_kill() {
    use loyalty_core::pos_ingest::{PosIngest, PosIngestConfig};
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedLog::open(dir.path().join("log")).unwrap();
    let store = EmbeddedStore::open(
        &dir.path().join("store"),
        loyalty_core::sealing::KeyRing::dev(),
    )
    .unwrap();
    let (f, _) =
        loyalty_core::provisioning::create_franchise(store.as_ref(), "Flaky", &Program::demo())
            .await
            .unwrap();
    let (s, _) = loyalty_core::provisioning::create_store(store.as_ref(), &f.id, "Till")
        .await
        .unwrap();
    let log = Arc::new(FlakyLog {
        inner: inner.clone(),
        refuse_topic: POS_DLQ,
        refusing: true.into(),
        refused: 0.into(),
    });
    for (t, n) in [(POS_TOPIC, 2), (POS_DLQ, 1), ("pos-commands", 4)] {
        log.ensure_topic(t, n).await.unwrap();
    }
    let signing = pos_signing_secret(&f.secret, &s.id);
    let sale = serde_json::to_vec(&json!({
        "type": "purchase", "franchise_id": f.id.as_str(), "store_id": s.id.as_str(),
        "event_id": "till:0001", "occurred_at": time_now(),
        "amount_cents": 700, "currency": "EUR"
    }))
    .unwrap();
    for payload in [&sale[..], b"not json"] {
        inner
            .append(
                POS_TOPIC,
                s.id.as_str().as_bytes(),
                Bytes::from(payload.to_vec()),
                headers(pos_topic::sign(&signing, payload)),
            )
            .await
            .unwrap();
    }
    let commands = || {
        (0..4)
            .flat_map(|p| inner.read("pos-commands", p, 0, 100).unwrap())
            .collect::<Vec<_>>()
    };
    let config = PosIngestConfig {
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        ..PosIngestConfig::default()
    };
    let ingester = |log: &Arc<FlakyLog>| {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(
            PosIngest::new(
                Arc::clone(log) as Arc<dyn EventLog>,
                store.clone() as Arc<dyn StateStore>,
                config.clone(),
            )
            .run(rx),
        );
        (tx, task)
    };
    // A forwards the sale, then backs off on the refused dead letter.
    let (_tx_a, a) = ingester(&log);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(commands().len() == 1 && log.refused.load(Ordering::SeqCst) >= 4) {
        assert!(tokio::time::Instant::now() < deadline, "A never backed off");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(inner.read(POS_DLQ, 0, 0, 10).unwrap().is_empty());
    let retries = loyalty_core::metrics::metrics()
        .pos_retries
        .with_label_values(&["dead-letter"])
        .get();
    assert!(retries >= 4, "{retries} retries counted");
    // kill -9 of A: no drain, no commit.
    a.abort();
    let _ = a.await;

    // B reads the poll again: the sale is appended a second time, the bad record dead-lettered.
    log.refusing.store(false, Ordering::SeqCst);
    let (tx_b, b) = ingester(&log);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(commands().len() == 2 && inner.read(POS_DLQ, 0, 0, 10).unwrap().len() == 1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B did not read the uncommitted poll again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let copies: Vec<_> = commands()
        .iter()
        .map(|r| {
            loyalty_core::command::CommandEnvelope::decode(
                &r.payload,
                &loyalty_core::sealing::KeyRing::dev(),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(copies[0].event_id, copies[1].event_id);
    assert_eq!(copies[0].fingerprint(), copies[1].fingerprint());
    let dlq = inner.read(POS_DLQ, 0, 0, 10).unwrap();
    let reason = dlq[0]
        .headers
        .iter()
        .find(|(k, _)| k == "dlq-reason")
        .map(|(_, v)| v.clone());
    assert_eq!(reason.as_deref(), Some(&b"undecodable"[..]));
    // A graceful stop returns promptly, having committed.
    tx_b.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("B stops")
        .unwrap()
        .unwrap();

    // C finds everything committed: nothing is appended again.
    let (tx_c, c) = ingester(&log);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(commands().len(), 2, "a committed poll was read again");
    assert_eq!(inner.read(POS_DLQ, 0, 0, 10).unwrap().len(), 1);
    tx_c.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), c)
        .await
        .expect("C stops")
        .unwrap()
        .unwrap();
}
