//! `loyalty dev` gives the demo franchise a few months of generated history on its first
//! start (unless told not to), applied by the engine like POS traffic: the dashboard is alive
//! at once, a restart adds nothing, and with the history off it stays empty.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loyalty_domain::{Day, Timestamp};
use loyalty_tests::DevProcess;
use serde_json::Value;

/// What the history line of the first start announced.
#[derive(Debug, Default)]
struct Announced {
    total: u64,
    enrolments: u64,
    member_purchases: u64,
    anonymous_purchases: u64,
    redemptions: u64,
}

/// The number before `label` in `line`.
fn count_before(line: &str, label: &str) -> u64 {
    let head = line.split(label).next().unwrap_or_default();
    head.rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of {label} in {line:?}"))
}

fn announced(dev: &DevProcess) -> Option<Announced> {
    let line = dev.banner.iter().find(|l| l.starts_with("demo history:"))?;
    Some(Announced {
        total: count_before(line, " events"),
        enrolments: count_before(line, " enrolments"),
        member_purchases: count_before(line, " member purchases"),
        anonymous_purchases: count_before(line, " anonymous sales"),
        redemptions: count_before(line, " redemptions"),
    })
}

/// The last 90 days (the demo program is on UTC), and one more in case midnight passed
/// between the history's generation and now.
fn last_days() -> (String, String) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let today = Timestamp(ms).day();
    (Day(today.0 - 90).iso(), today.iso())
}

async fn dashboard(c: &reqwest::Client, dev: &DevProcess) -> Value {
    let (from, to) = last_days();
    let r = c
        .get(format!(
            "{}/v1/franchises/{}/dashboard?from={from}&to={to}",
            dev.address,
            dev.key("FRANCHISE_ID")
        ))
        .bearer_auth(dev.key("HQ_KEY"))
        .send()
        .await
        .expect("dashboard answered");
    assert_eq!(r.status(), 200);
    r.json().await.expect("dashboard json")
}

fn kpi(v: &Value, name: &str) -> u64 {
    v["kpis"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {}", v["kpis"]))
}

/// The dashboard once the engine has applied the announced history.
async fn applied(c: &reqwest::Client, dev: &DevProcess, want: &Announced) -> Value {
    let started = Instant::now();
    loop {
        let v = dashboard(c, dev).await;
        if kpi(&v, "member_purchases") == want.member_purchases
            && kpi(&v, "anonymous_purchases") == want.anonymous_purchases
            && kpi(&v, "enrolments") == want.enrolments
        {
            println!(
                "the engine applied {} events within {:.2} s of the process being ready",
                want.total,
                started.elapsed().as_secs_f64()
            );
            // The refunds and redemptions behind the last purchases, if any are still on their way.
            let mut v = v;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let next = dashboard(c, dev).await;
                if next == v {
                    return v;
                }
                v = next;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "history not applied after 60 s: {} of {want:?}",
            v["kpis"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `loyalty dev` as a user starts it: the demo history with its defaults.
async fn start_default(dir: &Path) -> DevProcess {
    DevProcess::start_with(dir, |c| {
        c.env_remove("LOYALTY_DEMO_HISTORY");
    })
    .await
    .expect("loyalty dev starts")
}

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
    let dev = start_default(dir.path()).await;
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
    let dev = start_default(dir.path()).await;
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
    let dev = start_default(dir.path()).await;
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
