//! HQ dashboards against a real `loyalty dev` process: a seeded dataset of several stores,
//! regulars and one-off visitors, anonymous sales, refunds and redemptions over months, sent
//! with past POS times in a shuffled order; the test computes the KPIs itself from what it sent
//! (`loyalty_tests::dashboard_data`) and compares them with the API for several ranges, with
//! and without `store`, before and after a kill -9 and a restart.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::Span;
use loyalty_tests::dashboard_data::{
    self, call, enrol, send, setup, Answer, Dataset, Franchise, Sent,
};
use loyalty_tests::DevProcess;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn days_before(d: Date, n: i64) -> Date {
    d.checked_sub(Span::new().days(n)).expect("date")
}

async fn dashboard(
    c: &reqwest::Client,
    base: &str,
    f: &Franchise,
    from: Date,
    to: Date,
    store: Option<usize>,
) -> Value {
    let mut url = format!(
        "{base}/v1/franchises/{}/dashboard?from={from}&to={to}&compare=previous",
        f.id
    );
    if let Some(s) = store {
        url.push_str(&format!("&store={}", f.store_ids[s]));
    }
    let (s, v) = call(c, url, &f.hq, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Compares the API's KPIs with the direct computation; rates within a rounding step.
fn assert_kpis(what: &str, got: &Value, want: &BTreeMap<&'static str, Value>) {
    for (name, w) in want {
        let g = &got[*name];
        let same = match (g.as_f64(), w.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() <= 0.011,
            _ => g == w,
        };
        assert!(same, "{what}: {name} is {g}, computed {w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpis_match_the_events_sent_across_ranges_stores_and_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut dev = DevProcess::start(dir.path())
        .await
        .expect("loyalty dev starts");
    let c = reqwest::Client::new();
    let base = dev.address.clone();
    let data = Dataset::generate(7, 3, 60, 120);
    let f = setup(&c, &base, data.stores).await;
    let members = enrol(&c, &base, &f, &data).await;
    let mut answers = send(&c, &base, &f, &members, &data.sales).await;
    answers.extend(send(&c, &base, &f, &members, &data.after).await);
    let rejected = answers.values().filter(|a| **a == Answer::Rejected).count();
    println!(
        "sent {} sales and {} refunds/redemptions for {} members at {} stores; {rejected} refused",
        data.sales.len(),
        data.after.len(),
        data.members,
        data.stores
    );
    let ledgers = dashboard_data::ledgers(&c, &base, &f, &members).await;
    let sent = Sent {
        data: &data,
        store_ids: &f.store_ids,
        answers: &answers,
        ledgers: &ledgers,
        enrolled: data.today,
    };
    let today = data.today;
    let ranges = [
        (days_before(today, 125), today),
        (days_before(today, 30), today),
        (days_before(today, 60), days_before(today, 54)),
        (days_before(today, 40), days_before(today, 40)),
    ];
    let mut answered = Vec::new();
    for (from, to) in ranges {
        for store in [None, Some(0), Some(2)] {
            let v = dashboard(&c, &base, &f, from, to, store).await;
            let what = format!("{from}..{to} store {store:?}");
            let want = dashboard_data::expected(&sent, from, to, store);
            assert_kpis(&what, &v["kpis"], &want);
            // The previous period, computed the same way.
            let days = (to - from).get_days() as i64 + 1;
            let (pf, pt) = (days_before(from, days), days_before(from, 1));
            let want_prev = dashboard_data::expected(&sent, pf, pt, store);
            assert_kpis(
                &format!("{what} previous"),
                &v["previous"]["kpis"],
                &want_prev,
            );
            // The series has every day, and adds up to the period.
            let series = v["series"].as_array().expect("series");
            assert_eq!(series.len() as i64, days, "{what}: one entry per day");
            let sum: u64 = series
                .iter()
                .map(|d| d["member_purchases"].as_u64().unwrap_or(0))
                .sum();
            assert_eq!(json!(sum), want["member_purchases"], "{what}: series");
            // Each store of the table, as if asked alone.
            for row in v["stores"].as_array().expect("stores") {
                let i = f
                    .store_ids
                    .iter()
                    .position(|s| row["store_id"] == json!(s))
                    .expect("a known store");
                let alone = dashboard_data::expected(&sent, from, to, Some(i));
                for name in [
                    "member_purchases",
                    "anonymous_purchases",
                    "member_revenue_cents",
                    "enrolments",
                    "active_members",
                    "repeat_members",
                ] {
                    assert_eq!(row[name], alone[name], "{what}: store {i} {name}");
                }
            }
            answered.push(v);
        }
    }
    // Members per tier: what the members' statuses say.
    let mut tiers: BTreeMap<String, i64> = BTreeMap::new();
    for m in &members {
        let (s, v) = call(&c, format!("{base}/v1/members/{m}"), &f.store_keys[0], None).await;
        assert_eq!(s, StatusCode::OK);
        *tiers
            .entry(v["tier"].as_str().expect("tier").to_owned())
            .or_default() += 1;
    }
    for t in answered[0]["tiers"].as_array().expect("tiers") {
        let name = t["name"].as_str().expect("name");
        assert_eq!(
            t["members"].as_i64(),
            Some(*tiers.get(name).unwrap_or(&0)),
            "tier {name}"
        );
    }
    let redeemed: u64 = answered[0]["top_rewards"]
        .as_array()
        .expect("rewards")
        .iter()
        .map(|r| r["redemptions"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(json!(redeemed), answered[0]["kpis"]["redemptions"]);

    // kill -9 and a restart: the same answers.
    dev.kill9().expect("killed");
    let dev = DevProcess::start(dir.path()).await.expect("restarts");
    let mut i = 0;
    for (from, to) in ranges {
        for store in [None, Some(0), Some(2)] {
            let v = dashboard(&c, &dev.address, &f, from, to, store).await;
            assert_eq!(v, answered[i], "{from}..{to} {store:?} after a restart");
            i += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_for_its_franchise_hq_only_and_checks_its_range() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = DevProcess::start(dir.path())
        .await
        .expect("loyalty dev starts");
    let c = reqwest::Client::new();
    let base = dev.address.clone();
    let f = setup(&c, &base, 1).await;
    let other = setup(&c, &base, 1).await;
    let q = "from=2026-01-01&to=2026-01-31";
    let url = |fid: &str, form: &str| format!("{base}/v1/franchises/{fid}/{form}?{q}");
    for form in ["dashboard", "dashboard.csv"] {
        let (s, _) = call(&c, url(&f.id, form), &f.hq, None).await;
        assert_eq!(s, StatusCode::OK, "{form}");
        let (s, v) = call(&c, url(&f.id, form), &f.store_keys[0], None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{form} with a store key: {v}");
        let (s, v) = call(&c, url(&f.id, form), &other.hq, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{form} of another franchise: {v}");
        let (s, v) = call(&c, url(&f.id, form), "wrong", None).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{form} without a valid key: {v}"
        );
        // Another franchise's store is not a store of this one.
        let u = format!("{}&store={}", url(&f.id, form), other.store_ids[0]);
        let (s, v) = call(&c, u, &f.hq, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{form}: {v}");
    }
    for bad in [
        "from=2026-02-01&to=2026-01-01",
        "from=2020-01-01&to=2023-01-02",
        "from=2026-02-30&to=2026-03-01",
        "from=2026-01-01",
        "from=2026-01-01&to=2026-01-02&compare=next",
        "from=2026-01-01&to=2026-01-02&limit=3",
    ] {
        let (s, v) = call(
            &c,
            format!("{base}/v1/franchises/{}/dashboard?{bad}", f.id),
            &f.hq,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["status"], 400, "{bad}: a problem");
    }
    // Exactly three years (one leap day) is answered.
    let (s, v) = call(
        &c,
        format!(
            "{base}/v1/franchises/{}/dashboard?from=2023-01-01&to=2025-12-31",
            f.id
        ),
        &f.hq,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["series"].as_array().map(Vec::len), Some(1096));
    // The CSV: its type, a file name, a header.
    let r = c
        .get(url(&f.id, "dashboard.csv"))
        .bearer_auth(&f.hq)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"dashboard-"),
        "{disposition}"
    );
    let body = r.text().await.expect("body");
    let mut lines = body.lines();
    assert!(lines
        .next()
        .expect("header")
        .starts_with("day,store_id,store_name,member_purchases,"));
    assert_eq!(lines.count(), 31, "one row per store per day");
}

/// Sends `events` without waiting for their effects (202 once durable in the log).
async fn send_nowait(
    c: &reqwest::Client,
    base: &str,
    f: &Franchise,
    members: &[String],
    events: &[dashboard_data::Event],
) {
    for e in events {
        let (path, body) = dashboard_data::request(e, members);
        let (s, v) = call(
            c,
            format!("{base}{path}"),
            &f.store_keys[e.store],
            Some(body),
        )
        .await;
        assert!(
            s == StatusCode::ACCEPTED || s == StatusCode::OK,
            "{}: {s} {v}",
            e.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_then_rebuilt_from_zero_gives_the_same_numbers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut dev = DevProcess::start(dir.path())
        .await
        .expect("loyalty dev starts");
    let c = reqwest::Client::new();
    let data = Dataset::generate(11, 3, 50, 90);
    let f = setup(&c, &dev.address, data.stores).await;
    let members = enrol(&c, &dev.address, &f, &data).await;
    let half = data.sales.len() / 2;
    send(&c, &dev.address, &f, &members, &data.sales[..half]).await;
    // The rest is accepted (durable in the log) and the process killed while applying it.
    send_nowait(&c, &dev.address, &f, &members, &data.sales[half..]).await;
    dev.kill9().expect("killed");

    // The tills retry everything with the same event ids.
    let dev = DevProcess::start(dir.path()).await.expect("restarts");
    let mut answers = send(&c, &dev.address, &f, &members, &data.sales).await;
    answers.extend(send(&c, &dev.address, &f, &members, &data.after).await);
    let ledgers = dashboard_data::ledgers(&c, &dev.address, &f, &members).await;
    let sent = Sent {
        data: &data,
        store_ids: &f.store_ids,
        answers: &answers,
        ledgers: &ledgers,
        enrolled: data.today,
    };
    let ranges = [
        (days_before(data.today, 95), data.today),
        (days_before(data.today, 20), days_before(data.today, 6)),
    ];
    let mut before = Vec::new();
    for (from, to) in ranges {
        for store in [None, Some(1)] {
            let v = dashboard(&c, &dev.address, &f, from, to, store).await;
            let want = dashboard_data::expected(&sent, from, to, store);
            assert_kpis(
                &format!("after kill -9: {from}..{to} {store:?}"),
                &v["kpis"],
                &want,
            );
            before.push(v);
        }
    }
    drop(dev);

    // From zero: the aggregates wiped, then rebuilt from the store's records.
    {
        let store = loyalty_embedded::EmbeddedStore::open(
            &dir.path().join("store"),
            loyalty_core::sealing::KeyRing::dev(),
        )
        .expect("store opens");
        let fid = loyalty_domain::FranchiseId::parse(&f.id).expect("id");
        use loyalty_core::ports::StateStore;
        store
            .replace_dashboard(&fid, &Default::default())
            .await
            .expect("wiped");
        let rows = store
            .dashboard_rows(&fid, loyalty_domain::Day(0), loyalty_domain::Day(u32::MAX))
            .await
            .expect("read");
        assert!(
            rows.totals.is_empty() && rows.visits.is_empty(),
            "nothing left after the wipe"
        );
    }
    let out = std::process::Command::new(loyalty_tests::loyalty_bin().expect("binary"))
        .args(["projections", "rebuild", "--franchise", &f.id, "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("rebuild runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rebuild failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(
        stdout.contains(" 0 members' purchase days rewritten"),
        "the engine kept every member's purchase days: {stdout}"
    );
    let dev = DevProcess::start(dir.path())
        .await
        .expect("starts after the rebuild");
    let mut i = 0;
    for (from, to) in ranges {
        for store in [None, Some(1)] {
            let v = dashboard(&c, &dev.address, &f, from, to, store).await;
            assert_eq!(v, before[i], "{from}..{to} {store:?}: rebuilt from zero");
            i += 1;
        }
    }
}
