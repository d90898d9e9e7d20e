//! HQ dashboards against a real `loyalty dev` process: a seeded dataset of several stores,
//! regulars and one-off visitors, anonymous sales, refunds and redemptions over months, sent
//! with past POS times in a shuffled order; the test computes the KPIs itself from what it sent
//! (`loyalty_tests::dashboard_data`) and compares them with the API for several ranges, with
//! and without `store`, before and after a kill -9 and a restart.

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt};
use jiff::civil::Date;
use jiff::Span;
use loyalty_tests::dashboard_data::{self, Answer, Dataset, Entry, Event, Kind, Sent};
use loyalty_tests::DevProcess;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "dev-admin-key";

struct Franchise {
    id: String,
    hq: String,
    store_ids: Vec<String>,
    store_keys: Vec<String>,
}

async fn call(
    c: &reqwest::Client,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = match body {
        Some(b) => c.post(url).json(&b),
        None => c.get(url),
    };
    let r = req.bearer_auth(key).send().await.expect("request sent");
    let status = r.status();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn setup(c: &reqwest::Client, base: &str, stores: usize) -> Franchise {
    let (s, f) = call(
        c,
        format!("{base}/v1/franchises"),
        ADMIN,
        Some(json!({"name": "Dashboards", "program": dashboard_data::program()})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{f}");
    let id = f["id"].as_str().expect("id").to_owned();
    let hq = f["hq_api_key"].as_str().expect("key").to_owned();
    let (mut store_ids, mut store_keys) = (Vec::new(), Vec::new());
    for i in 0..stores {
        let (s, v) = call(
            c,
            format!("{base}/v1/franchises/{id}/stores"),
            &hq,
            Some(json!({"name": format!("Store {}", i + 1)})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        store_ids.push(v["id"].as_str().expect("id").to_owned());
        store_keys.push(v["api_key"].as_str().expect("key").to_owned());
    }
    Franchise {
        id,
        hq,
        store_ids,
        store_keys,
    }
}

async fn enrol(c: &reqwest::Client, base: &str, f: &Franchise, d: &Dataset) -> Vec<String> {
    let mut ids = Vec::new();
    for m in 0..d.members {
        let (s, v) = call(
            c,
            format!("{base}/v1/members?wait_ms=5000"),
            &f.store_keys[d.home[m]],
            Some(json!({"phone": format!("+3361{m:07}")})),
        )
        .await;
        assert!(s.is_success(), "enrolment: {s} {v}");
        ids.push(v["member_id"].as_str().expect("member id").to_owned());
    }
    ids
}

/// The request of an event: path and body.
fn request(e: &Event, members: &[String]) -> (&'static str, Value) {
    match &e.kind {
        Kind::Purchase { member, cents } => {
            let mut b = json!({"event_id": e.id, "amount_cents": cents, "currency": "EUR", "occurred_at": e.occurred_at});
            if let Some(m) = member {
                b["member_id"] = json!(members[*m]);
            }
            ("/v1/purchases", b)
        }
        Kind::Refund {
            purchase, cents, ..
        } => (
            "/v1/refunds",
            json!({"event_id": e.id, "purchase_event_id": purchase, "amount_cents": cents, "occurred_at": e.occurred_at}),
        ),
        Kind::Redemption { member, reward } => (
            "/v1/redemptions",
            json!({"event_id": e.id, "member_id": members[*member], "reward_id": reward, "occurred_at": e.occurred_at}),
        ),
    }
}

/// Sends `events` (8 at a time), each waiting for its effect; returns each one's answer.
async fn send(
    c: &reqwest::Client,
    base: &str,
    f: &Franchise,
    members: &[String],
    events: &[Event],
) -> BTreeMap<String, Answer> {
    stream::iter(events)
        .map(|e| async move {
            let (path, body) = request(e, members);
            let (s, v) = call(
                c,
                format!("{base}{path}?wait_ms=5000"),
                &f.store_keys[e.store],
                Some(body),
            )
            .await;
            let refused = [
                "insufficient-points",
                "refund-exceeds-purchase",
                "unknown-purchase",
            ];
            let answer = match s {
                StatusCode::OK => Answer::Applied,
                _ if refused.iter().any(|c| v["code"] == json!(c)) => Answer::Rejected,
                other => panic!("{} answered {other}: {v}", e.id),
            };
            (e.id.clone(), answer)
        })
        .buffer_unordered(8)
        .collect()
        .await
}

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
    let mut ledgers = Vec::new();
    for m in &members {
        let (s, v) = call(
            &c,
            format!("{base}/v1/members/{m}/ledger?limit=500"),
            &f.hq,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        ledgers.push(
            v["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .map(Entry::of)
                .collect::<Vec<_>>(),
        );
    }
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
            let want = dashboard_data::expected(&sent, from, to, store, 30_000.0, 4.0);
            assert_kpis(&what, &v["kpis"], &want);
            // The previous period, computed the same way.
            let days = (to - from).get_days() as i64 + 1;
            let (pf, pt) = (days_before(from, days), days_before(from, 1));
            let want_prev = dashboard_data::expected(&sent, pf, pt, store, 30_000.0, 4.0);
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
                let alone = dashboard_data::expected(&sent, from, to, Some(i), 30_000.0, 4.0);
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
