//! Benchmark (ignored by default): the dashboard request of a franchise with one year of
//! history, 50 stores and 100 000 members, on `loyalty dev` in this process.
//!
//! The history goes through the platform's own path: enrolments, member purchases, anonymous
//! sales, refunds and redemptions appended to the command log as the gateway appends them
//! (past `occurred_at`), applied by the engine, which writes the dashboards' aggregates with
//! their effects. Then the dashboard API is called for ranges of a day to a year, franchise
//! wide and for one store, and its latency printed (p50, p99), next to the time the store read
//! alone takes. Run it with
//! `cargo test --release -p loyalty-tests --test dashboard_bench -- --ignored --nocapture`
//! (`LOYALTY_BENCH_MEMBERS`, default 100 000; `LOYALTY_BENCH_STORES`, default 50).

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use loyalty_core::command::{CommandEnvelope, PosCommand};
use loyalty_core::metrics::metrics;
use loyalty_core::ports::{EventLog, StateStore};
use loyalty_domain::{
    Cents, Currency, Day, EventId, FranchiseId, Phone, Profile, StoreId, Timestamp,
};
use loyalty_tests::{spawn_app_with, ADMIN_KEY};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const DAY_MS: i64 = 86_400_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The history: (enrolments, other commands), each an envelope.
fn history(
    f: &FranchiseId,
    secret: &str,
    stores: &[StoreId],
    members: usize,
    today: Day,
) -> (Vec<CommandEnvelope>, Vec<CommandEnvelope>) {
    let mut rng = SmallRng::seed_from_u64(2026);
    let eur = Currency::parse("EUR").expect("currency");
    let first = today.0 - 365;
    let mut n = 0u64;
    let mut env = |store: &StoreId, day: u32, command: PosCommand, rng: &mut SmallRng| {
        n += 1;
        let at = Timestamp(day as i64 * DAY_MS + rng.random_range(8 * 3_600_000..21 * 3_600_000));
        CommandEnvelope {
            franchise_id: f.clone(),
            store_id: store.clone(),
            event_id: EventId::parse(&format!("b{n}")).expect("id"),
            program_version: 1,
            occurred_at: Some(at),
            received_at: at,
            request_id: None,
            reply_to: None,
            command,
        }
    };
    let (mut enrolments, mut rest) = (Vec::new(), Vec::new());
    for m in 0..members {
        let phone = Phone::parse(&format!("+336{m:08}")).expect("phone");
        let member_id = loyalty_core::identity::member_id(secret, &phone);
        // Bigger stores get more members.
        let home =
            &stores[(rng.random_range(0..stores.len() * stores.len()) as f64).sqrt() as usize];
        let joined = first + rng.random_range(0..300);
        enrolments.push(env(
            home,
            joined,
            PosCommand::Enrol {
                member_id: member_id.clone(),
                profile: Profile {
                    phone,
                    name: None,
                    birthday: None,
                    consent: Default::default(),
                    email: None,
                },
            },
            &mut rng,
        ));
        let visits: Vec<u32> = match rng.random_range(0..10) {
            0..=1 => (joined..today.0).step_by(rng.random_range(6..9)).collect(),
            2..=4 => (joined..today.0)
                .step_by(rng.random_range(25..40))
                .collect(),
            _ => (0..rng.random_range(1..4))
                .map(|_| rng.random_range(joined..today.0))
                .collect(),
        };
        for d in visits {
            let store = if rng.random_bool(0.85) {
                home
            } else {
                &stores[rng.random_range(0..stores.len())]
            };
            rest.push(env(
                store,
                d,
                PosCommand::Purchase {
                    member_id: Some(member_id.clone()),
                    amount_cents: Cents::new(rng.random_range(300..9_000)).expect("amount"),
                    currency: eur.clone(),
                    items: Vec::new(),
                },
                &mut rng,
            ));
        }
        if rng.random_bool(0.1) {
            rest.push(env(
                home,
                today.0 - rng.random_range(1..30),
                PosCommand::Redemption {
                    member_id: member_id.clone(),
                    reward_id: loyalty_domain::RewardId::parse("free-coffee").expect("reward"),
                    code: None,
                },
                &mut rng,
            ));
        }
    }
    for (i, s) in stores.iter().enumerate() {
        let per_day = 40 - (i * 30 / stores.len());
        for d in first..today.0 {
            for _ in 0..rng.random_range(per_day / 2..per_day) {
                rest.push(env(
                    s,
                    d,
                    PosCommand::Purchase {
                        member_id: None,
                        amount_cents: Cents::new(rng.random_range(200..6_000)).expect("amount"),
                        currency: eur.clone(),
                        items: Vec::new(),
                    },
                    &mut rng,
                ));
            }
        }
    }
    (enrolments, rest)
}

fn applied_or_rejected() -> f64 {
    let m = metrics();
    let sum = |v: &prometheus::IntCounterVec| -> f64 {
        use prometheus::core::Collector;
        v.collect()
            .iter()
            .flat_map(|mf| mf.get_metric().iter().map(|m| m.get_counter().get_value()))
            .sum()
    };
    sum(&m.events_applied) + sum(&m.events_rejected)
}

async fn append_all(log: &loyalty_embedded::log::EmbeddedLog, envs: &[CommandEnvelope]) {
    stream::iter(envs)
        .map(|e| async move {
            log.append(
                "pos-commands",
                &e.key(),
                e.encode(&loyalty_core::sealing::KeyRing::dev()).unwrap(),
                Vec::new(),
            )
            .await
            .expect("appended");
        })
        .buffer_unordered(512)
        .collect::<Vec<_>>()
        .await;
}

async fn wait_applied(target: f64, what: &str) {
    let t = Instant::now();
    while applied_or_rejected() < target {
        if t.elapsed() > Duration::from_secs(1800) {
            panic!(
                "{what}: {} of {target} applied after 30 min",
                applied_or_rejected()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (about 2 minutes in release): run by loadtest/bench.sh and scripts/run-ignored.sh"]
async fn dashboard_of_a_year_50_stores_100k_members() {
    let members = env_usize("LOYALTY_BENCH_MEMBERS", 100_000);
    let n_stores = env_usize("LOYALTY_BENCH_STORES", 50);
    let app = spawn_app_with(|c| {
        c.partitions = 12;
    })
    .await;
    let mut program = loyalty_tests::demo_program();
    program["monthly_fee_cents"] = json!(500_000);
    let r: Value = app
        .post(
            "/v1/franchises",
            ADMIN_KEY,
            &json!({"name": "Bench", "program": program}),
        )
        .await
        .json()
        .await
        .expect("json");
    let (fid, hq) = (
        r["id"].as_str().expect("id").to_owned(),
        r["hq_api_key"].as_str().expect("key").to_owned(),
    );
    let mut stores = Vec::new();
    for i in 0..n_stores {
        let v: Value = app
            .post(
                &format!("/v1/franchises/{fid}/stores"),
                &hq,
                &json!({"name": format!("Store {i}")}),
            )
            .await
            .json()
            .await
            .expect("json");
        stores.push(StoreId::parse(v["id"].as_str().expect("id")).expect("store id"));
    }
    let f = FranchiseId::parse(&fid).expect("id");
    let secret = app
        .store
        .franchise(&f)
        .await
        .expect("read")
        .expect("franchise")
        .secret;
    let today = loyalty_core::provisioning::now().day();
    let (enrolments, rest) = history(&f, &secret, &stores, members, today);
    // Purchases of the last 365 days: what the year's dashboard must count once all is applied
    // (the engine counts an event applied before its batch is committed).
    let year_from = today.0 - 364;
    let in_year = rest
        .iter()
        .filter(|e| matches!(e.command, PosCommand::Purchase { .. }))
        .filter(|e| e.at().day().0 >= year_from)
        .count() as u64;
    let total = (enrolments.len() + rest.len()) as f64;
    let base = applied_or_rejected();
    let t = Instant::now();
    append_all(&app.log, &enrolments).await;
    wait_applied(base + enrolments.len() as f64, "enrolments").await;
    append_all(&app.log, &rest).await;
    wait_applied(base + total, "history").await;
    let year_q = format!("from={}&to={}", Day(year_from).iso(), today.iso());
    loop {
        let v: Value = app
            .get(&format!("/v1/franchises/{fid}/dashboard?{year_q}"), &hq)
            .await
            .json()
            .await
            .expect("json");
        let k = &v["kpis"];
        let counted = k["member_purchases"].as_u64().unwrap_or(0)
            + k["anonymous_purchases"].as_u64().unwrap_or(0);
        if counted == in_year {
            break;
        }
        assert!(
            counted < in_year,
            "{counted} purchases counted, {in_year} sent"
        );
        assert!(t.elapsed() < Duration::from_secs(1800), "not all applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    println!(
        "history: {} enrolments and {} other events ({} stores, 365 days) applied with their \
         dashboard aggregates in {:.1} s ({:.0} events/s)",
        enrolments.len(),
        rest.len(),
        n_stores,
        took.as_secs_f64(),
        total / took.as_secs_f64()
    );

    let iso = |d: u32| Day(d).iso();
    let kinds: Vec<(&str, String)> = vec![
        (
            "year",
            format!("from={}&to={}", iso(today.0 - 364), iso(today.0)),
        ),
        (
            "year+compare",
            format!(
                "from={}&to={}&compare=previous",
                iso(today.0 - 364),
                iso(today.0)
            ),
        ),
        (
            "quarter",
            format!("from={}&to={}", iso(today.0 - 90), iso(today.0)),
        ),
        (
            "30 days, one store",
            format!(
                "from={}&to={}&store={}",
                iso(today.0 - 29),
                iso(today.0),
                stores[0]
            ),
        ),
        (
            "one day",
            format!("from={}&to={}", iso(today.0 - 10), iso(today.0 - 10)),
        ),
    ];
    let mut all = Vec::new();
    let rounds = env_usize("LOYALTY_BENCH_ROUNDS", 40);
    let body: Value = app
        .get(
            &format!("/v1/franchises/{fid}/dashboard?{}", kinds[0].1),
            &hq,
        )
        .await
        .json()
        .await
        .expect("json");
    println!(
        "year: {} member purchases, {} anonymous, {} active members, {} repeat",
        body["kpis"]["member_purchases"],
        body["kpis"]["anonymous_purchases"],
        body["kpis"]["active_members"],
        body["kpis"]["repeat_members"]
    );
    for (name, q) in &kinds {
        let mut times = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            let r = app
                .get(&format!("/v1/franchises/{fid}/dashboard?{q}"), &hq)
                .await;
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.expect("body");
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "dashboard {name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({rounds} requests)",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
        );
        all.extend(times);
    }
    all.sort();
    // The store read alone, for the year (what the request cannot go below).
    let mut reads = Vec::new();
    let mut rows = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let r = app
            .store
            .dashboard_rows(&f, Day(today.0 - 364 - 365), Day(today.0))
            .await
            .expect("read");
        reads.push(t.elapsed());
        rows = r.totals.len() + r.visits.len();
    }
    reads.sort();
    println!(
        "dashboard all kinds: p50 {:.1} ms, p99 {:.1} ms ({} requests); target p99 < 50 ms; \
         store read of the year and the year before alone: p50 {:.1} ms, p99 {:.1} ms ({rows} rows)",
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.len(),
        percentile(&reads, 0.5).as_secs_f64() * 1e3,
        percentile(&reads, 0.99).as_secs_f64() * 1e3,
    );
}
