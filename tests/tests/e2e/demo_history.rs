//! `loyalty dev` gives the demo franchise a few months of generated history on its first
//! start (unless told not to), applied by the engine like POS traffic: the dashboard is alive
//! at once, a restart adds nothing, and with the history off it stays empty.

use std::time::Duration;

use loyalty_tests::demo_history::{announced, applied, dashboard, kpi, start_with_history};
use loyalty_tests::DevProcess;
use serde_json::Value;

fn assert_empty(v: &Value) {
    for name in [
        "member_purchases",
        "anonymous_purchases",
        "enrolments",
        "active_members",
        "redemptions",
        "refunded_cents",
    ] {
        assert_eq!(kpi(v, name), 0, "{name} of an empty dashboard");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_dev_shows_months_of_history_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let c = reqwest::Client::new();
    let dev = start_with_history(dir.path()).await;
    let want = announced(&dev).expect("the first start announces its history");
    println!("{want:?}");
    assert!(want.total > 1_000 && want.total < 8_000, "{want:?}");
    let v = applied(&c, &dev, &want).await;

    // A living dashboard: purchases with and without members, refunds, redemptions, members
    // who come back, a spend lift.
    for name in [
        "member_purchases",
        "anonymous_purchases",
        "active_members",
        "repeat_members",
        "refunded_cents",
        "redemptions",
        "points_issued",
        "points_redeemed",
    ] {
        assert!(kpi(&v, name) > 0, "{name}: {}", v["kpis"]);
    }
    assert!(kpi(&v, "redemptions") <= want.redemptions);
    assert!(v["kpis"]["spend_lift_pct"].as_f64().unwrap_or(0.0) > 0.0);
    let busy_days = v["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter(|d| d["member_purchases"].as_u64() > Some(0))
        .count();
    assert!(busy_days >= 85, "purchases on {busy_days} days only");
    // At several stores of different sizes.
    let stores = v["stores"].as_array().expect("stores");
    let with = |name: &str| stores.iter().filter(|s| s[name].as_u64() > Some(0)).count();
    assert!(
        with("active_members") >= 2 && with("repeat_members") >= 2,
        "{stores:?}"
    );
    let mut sizes: Vec<u64> = stores
        .iter()
        .map(|s| {
            s["member_purchases"].as_u64().unwrap_or(0)
                + s["anonymous_purchases"].as_u64().unwrap_or(0)
        })
        .collect();
    sizes.sort_unstable();
    assert!(
        sizes.len() >= 3 && sizes[sizes.len() - 1] > 2 * sizes[0],
        "{sizes:?}"
    );
    assert!(!dir.path().join("demo-history.pending").exists());

    // A second start on the same data: no new history, the same numbers.
    drop(dev);
    let dev = start_with_history(dir.path()).await;
    assert!(announced(&dev).is_none(), "{:?}", dev.banner);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let again = dashboard(&c, &dev).await;
    assert_eq!(again["kpis"], v["kpis"]);
    assert_eq!(again["stores"], v["stores"]);
    assert_eq!(again["series"], v["series"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_history_off_the_demo_dashboard_stays_empty() {
    let c = reqwest::Client::new();
    // The flag.
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = DevProcess::start_with(dir.path(), |c| {
        c.env_remove("LOYALTY_DEMO_HISTORY")
            .arg("--no-demo-history");
    })
    .await
    .expect("loyalty dev starts");
    assert!(announced(&dev).is_none(), "{:?}", dev.banner);
    assert!(
        !dev.key("FRANCHISE_ID").is_empty(),
        "the demo franchise still exists"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_empty(&dashboard(&c, &dev).await);
    // History comes with the franchise's creation only: turning it on later adds none.
    drop(dev);
    let dev = start_with_history(dir.path()).await;
    assert!(announced(&dev).is_none(), "{:?}", dev.banner);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_empty(&dashboard(&c, &dev).await);
    drop(dev);

    // The environment (what `DevProcess::start` sets for the other tests).
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = DevProcess::start(dir.path())
        .await
        .expect("loyalty dev starts");
    assert!(announced(&dev).is_none(), "{:?}", dev.banner);
    assert_empty(&dashboard(&c, &dev).await);
}
