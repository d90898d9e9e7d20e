//! The demo franchise's generated history as tests see it: `loyalty dev` started with the
//! history on, what its first start announced, and a wait until the engine has applied it.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loyalty_domain::{Day, Timestamp};
use serde_json::Value;

use crate::DevProcess;

/// What the history line of the first start announced.
#[derive(Debug, Default)]
pub struct Announced {
    pub total: u64,
    pub enrolments: u64,
    pub member_purchases: u64,
    pub anonymous_purchases: u64,
    pub redemptions: u64,
}

/// The number before `label` in `line`.
fn count_before(line: &str, label: &str) -> u64 {
    let head = line.split(label).next().unwrap_or_default();
    head.rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of {label} in {line:?}"))
}

/// What the first start's history line announced, if it printed one.
pub fn announced(dev: &DevProcess) -> Option<Announced> {
    let line = dev.banner.iter().find(|l| l.starts_with("demo history:"))?;
    Some(Announced {
        total: count_before(line, " events"),
        enrolments: count_before(line, " enrolments"),
        member_purchases: count_before(line, " member purchases"),
        anonymous_purchases: count_before(line, " anonymous sales"),
        redemptions: count_before(line, " redemptions"),
    })
}

/// `loyalty dev` as a user starts it: the demo history with its defaults.
pub async fn start_with_history(dir: &Path) -> DevProcess {
    DevProcess::start_with(dir, |c| {
        c.env_remove("LOYALTY_DEMO_HISTORY");
    })
    .await
    .expect("loyalty dev starts")
}

/// The last 90 days (the demo program is on UTC), and one more in case midnight passed
/// between the history's generation and now.
pub fn last_days() -> (String, String) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let today = Timestamp(ms).day();
    (Day(today.0 - 90).iso(), today.iso())
}

/// The demo franchise's dashboard over [`last_days`], by its HQ key.
pub async fn dashboard(c: &reqwest::Client, dev: &DevProcess) -> Value {
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

/// A count among the dashboard's KPIs.
pub fn kpi(v: &Value, name: &str) -> u64 {
    v["kpis"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {}", v["kpis"]))
}

/// The dashboard once the engine has applied the announced history.
pub async fn applied(c: &reqwest::Client, dev: &DevProcess, want: &Announced) -> Value {
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
