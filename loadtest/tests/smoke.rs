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
