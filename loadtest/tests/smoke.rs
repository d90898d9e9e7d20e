//! The CI smoke scenario against the real platform started in this process: setup through the
//! API, a few seconds of checkout traffic at a tiny rate, then the correctness check.

use std::time::{Duration, Instant};

use loyalty_loadtest::{smoke, SmokeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_passes_the_correctness_check() {
    let app = loyalty_tests::spawn_app().await;
    let started = Instant::now();
    let mut opts = SmokeOptions::new(&app.address, loyalty_tests::ADMIN_KEY);
    opts.duration = Duration::from_secs(3);
    let report = smoke(&opts, "cargo test -p loyalty-loadtest (smoke)")
        .await
        .expect("smoke run");
    let md = report.to_markdown();
    println!("{md}");

    assert!(report.correctness.passed, "correctness check failed:\n{md}");
    assert_eq!(report.unexpected_errors(), 0, "unexpected errors:\n{md}");
    assert_eq!(report.total.dropped, 0);
    // Every operation of the mix ran, and the check looked at members.
    for op in ["identify", "status", "purchase", "redeem", "enrol"] {
        let r = &report.ops[op];
        assert!(r.counts.sent > 0, "no {op} sent:\n{md}");
    }
    let purchases = &report.ops["purchase"];
    assert!(purchases.counts.ok > 0, "no purchase answered 2xx:\n{md}");
    assert!(report.correctness.members_checked > 0);
    assert!(purchases.latency_ms.count > 0 && purchases.latency_ms.p50 > 0.0);
    // The reports serialise.
    let json = serde_json::to_value(&report).expect("json report");
    assert_eq!(json["correctness"]["passed"], true);
    assert!(json["machine"]["cores"].as_u64().is_some_and(|c| c > 0));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the smoke run took {:?}",
        started.elapsed()
    );
}

/// The check is not vacuous: a purchase the generator did not send (another till, say) for a
/// member it touches makes the balance differ from the expectation, and the check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_points_it_did_not_expect() {
    use loyalty_loadtest::{client, setup, LoadModel, Mix, RunOptions, SetupOptions};

    let app = loyalty_tests::spawn_app().await;
    let api = client(&app.address, 64).expect("client");
    let state = setup::setup(
        &api,
        &SetupOptions {
            url: app.address.clone(),
            admin_key: loyalty_tests::ADMIN_KEY.into(),
            state_path: None,
            stores: 1,
            members: 10,
            concurrency: 4,
            franchise_name: "Rogue".into(),
            verbose: false,
        },
    )
    .await
    .expect("setup");
    let member = state.members[0].id.clone();
    let store_key = state.stores[0].api_key.clone();
    let rogue = {
        let (client, url, member) = (app.client.clone(), app.address.clone(), member.clone());
        tokio::spawn(async move {
            // After the baseline is read, before the run ends.
            tokio::time::sleep(Duration::from_millis(800)).await;
            let r = client
                .post(format!("{url}/v1/purchases?wait_ms=5000"))
                .bearer_auth(store_key)
                .json(&serde_json::json!({
                    "event_id": "rogue-1", "member_id": member,
                    "amount_cents": 10_000, "currency": "EUR"
                }))
                .send()
                .await
                .expect("rogue purchase");
            assert_eq!(r.status(), 200);
        })
    };
    let opts = RunOptions {
        model: LoadModel::Open {
            rate: 40.0,
            max_in_flight: 64,
        },
        duration: Duration::from_secs(2),
        mix: "purchase=1".parse::<Mix>().expect("mix"),
        anonymous_pct: 0.0,
        // Everyone is touched.
        zipf_s: 0.0,
        progress: false,
        resolve_timeout: Duration::from_secs(5),
        ..RunOptions::default()
    };
    let report = loyalty_loadtest::run(&api, state, &opts, "rogue")
        .await
        .expect("run");
    rogue.await.expect("rogue task");
    let c = &report.correctness;
    assert!(!c.passed, "the check missed the rogue purchase");
    assert_eq!(c.mismatches.len(), 1, "{:?}", c.mismatches);
    let m = &c.mismatches[0];
    assert_eq!(m.member_id, member);
    assert_eq!(m.actual, Some(m.expected + 100));
}
