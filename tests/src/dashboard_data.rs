//! A seeded dataset for the dashboards, and its KPIs computed directly from the events sent
//! (never from the platform's aggregates): what the dashboard API must answer.
//!
//! Members are regulars (about weekly at their home store), occasional visitors (a few visits
//! anywhere) and store-hoppers; stores also sell anonymously; some purchases are refunded in
//! part and some members redeem rewards. Every event carries a past `occurred_at` in the
//! franchise's zone, some late in the evening (the next UTC day east of Greenwich), and they
//! are sent in a shuffled order, as offline tills replaying their day would.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The franchise's zone in the dataset.
pub const ZONE: &str = "Europe/Paris";

/// The program's costs and lifespan, which the KPIs below use.
const MONTHLY_FEE_CENTS: u64 = 30_000;
const LIFESPAN_YEARS: u32 = 4;
const COFFEE_COST_CENTS: u64 = 90;
const PASTRY_COST_CENTS: u64 = 140;

/// The program the dataset's franchise runs: the demo program in Paris, with costs.
pub fn program() -> Value {
    let mut p = crate::demo_program();
    p["time_zone"] = json!(ZONE);
    p["monthly_fee_cents"] = json!(MONTHLY_FEE_CENTS);
    p["expected_lifespan_years"] = json!(LIFESPAN_YEARS);
    p["rewards"][0]["cost_cents"] = json!(COFFEE_COST_CENTS);
    p["rewards"][1]["cost_cents"] = json!(PASTRY_COST_CENTS);
    p
}

/// What one event of the dataset is.
#[derive(Clone, Debug)]
pub enum Kind {
    Purchase {
        member: Option<usize>,
        cents: i64,
    },
    /// A refund of the purchase with this event id.
    Refund {
        member: usize,
        purchase: String,
        cents: i64,
    },
    Redemption {
        member: usize,
        reward: &'static str,
    },
}

#[derive(Clone, Debug)]
pub struct Event {
    pub id: String,
    pub store: usize,
    /// The local day (in [`ZONE`]) of its POS time.
    pub day: Date,
    /// RFC 3339, UTC.
    pub occurred_at: String,
    pub kind: Kind,
}

/// The dataset: `members` members over `days` days before `today`, at `stores` stores.
pub struct Dataset {
    pub today: Date,
    pub stores: usize,
    pub members: usize,
    /// The member's home store (where it enrols).
    pub home: Vec<usize>,
    /// Purchases and anonymous sales, in sending order (shuffled).
    pub sales: Vec<Event>,
    /// Refunds and redemptions, sent after the sales.
    pub after: Vec<Event>,
}

fn at(day: Date, hour: i8, minute: i8) -> String {
    let tz = TimeZone::get(ZONE).expect("zone");
    let ts = day
        .at(hour, minute, 0, 0)
        .to_zoned_datetime(tz)
        .expect("a local time")
        .timestamp();
    ts.to_string()
}

impl Dataset {
    pub fn generate(seed: u64, stores: usize, members: usize, days: i32) -> Dataset {
        let mut rng = SmallRng::seed_from_u64(seed);
        let tz = TimeZone::get(ZONE).expect("zone");
        let today = jiff::Timestamp::now().to_zoned_datetime(tz).date();
        let first = today
            .checked_sub(jiff::Span::new().days(days))
            .expect("date");
        let mut sales = Vec::new();
        let mut after = Vec::new();
        let mut home = Vec::new();
        let mut n = 0usize;
        let mut id = |prefix: &str| {
            n += 1;
            format!("{prefix}-{seed}-{n}")
        };
        let day_at = |offset: i32| {
            first
                .checked_add(jiff::Span::new().days(offset))
                .expect("date")
        };
        for m in 0..members {
            let h = rng.random_range(0..stores);
            home.push(h);
            let pattern = rng.random_range(0..10);
            let visits: Vec<(usize, i32)> = match pattern {
                // Regulars: about weekly at home, from some day on.
                0..=3 => {
                    let start = rng.random_range(0..days / 2);
                    let every = rng.random_range(5..10);
                    (0..)
                        .map(|k| start + k * every + rng.random_range(0..2))
                        .take_while(|d| *d < days)
                        .map(|d| (h, d))
                        .collect()
                }
                // Store-hoppers: a dozen visits anywhere.
                4..=5 => (0..rng.random_range(4..12))
                    .map(|_| (rng.random_range(0..stores), rng.random_range(0..days)))
                    .collect(),
                // Occasional: one to three visits, sometimes two the same day.
                _ => {
                    let d = rng.random_range(0..days);
                    let mut v = vec![(h, d)];
                    for _ in 0..rng.random_range(0..3) {
                        v.push((h, (d + rng.random_range(0..20)).min(days - 1)));
                    }
                    v
                }
            };
            for (store, d) in visits {
                let day = day_at(d);
                // Some late in the evening: the next UTC day in summer, the same in winter.
                let (hh, mm) = if rng.random_bool(0.2) {
                    (23, rng.random_range(0..59))
                } else {
                    (rng.random_range(8..21), rng.random_range(0..59))
                };
                let cents = rng.random_range(300..9_000);
                let pid = id("p");
                sales.push(Event {
                    id: pid.clone(),
                    store,
                    day,
                    occurred_at: at(day, hh, mm),
                    kind: Kind::Purchase {
                        member: Some(m),
                        cents,
                    },
                });
                if rng.random_bool(0.08) && d + 1 < days {
                    let rday = day_at(d + 1);
                    after.push(Event {
                        id: id("r"),
                        store,
                        day: rday,
                        occurred_at: at(rday, 12, 0),
                        kind: Kind::Refund {
                            member: m,
                            purchase: pid,
                            cents: cents / 3,
                        },
                    });
                }
            }
            if rng.random_bool(0.3) {
                let rday = day_at(days - 1 - rng.random_range(0..5));
                let reward = if rng.random_bool(0.7) {
                    "free-coffee"
                } else {
                    "free-pastry"
                };
                after.push(Event {
                    id: id("x"),
                    store: h,
                    day: rday,
                    occurred_at: at(rday, 19, 30),
                    kind: Kind::Redemption { member: m, reward },
                });
            }
        }
        for s in 0..stores {
            for _ in 0..rng.random_range(10..30) {
                let day = day_at(rng.random_range(0..days));
                sales.push(Event {
                    id: id("a"),
                    store: s,
                    day,
                    occurred_at: at(day, rng.random_range(8..23), rng.random_range(0..59)),
                    kind: Kind::Purchase {
                        member: None,
                        cents: rng.random_range(200..6_000),
                    },
                });
            }
        }
        // Offline tills: the sales arrive in any order.
        for i in (1..sales.len()).rev() {
            let j = rng.random_range(0..=i);
            sales.swap(i, j);
        }
        Dataset {
            today,
            stores,
            members,
            home,
            sales,
            after,
        }
    }
}

/// What the platform did with an event, as its answer said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Applied,
    Rejected,
}

/// A ledger entry as the API returns it, with its local day.
#[derive(Clone, Debug)]
pub struct Entry {
    pub store: String,
    pub day: Date,
    pub kind: String,
    pub points: i64,
}

impl Entry {
    pub fn of(v: &Value) -> Entry {
        let tz = TimeZone::get(ZONE).expect("zone");
        let ms = v["at"].as_i64().expect("at");
        let day = jiff::Timestamp::from_millisecond(ms)
            .expect("time")
            .to_zoned_datetime(tz)
            .date();
        Entry {
            store: v["store_id"].as_str().unwrap_or_default().to_owned(),
            day,
            kind: v["kind"].as_str().unwrap_or_default().to_owned(),
            points: v["points"].as_i64().unwrap_or_default(),
        }
    }
}

/// Everything the expected KPIs are computed from.
pub struct Sent<'a> {
    pub data: &'a Dataset,
    pub store_ids: &'a [String],
    pub answers: &'a BTreeMap<String, Answer>,
    /// Every member's ledger.
    pub ledgers: &'a [Vec<Entry>],
    /// The day members were enrolled (today, by arrival) and where.
    pub enrolled: Date,
}

/// KPIs computed directly; field names as in the API.
pub fn expected(
    s: &Sent<'_>,
    from: Date,
    to: Date,
    store: Option<usize>,
) -> BTreeMap<&'static str, Value> {
    let (program_fee, lifespan) = (MONTHLY_FEE_CENTS as f64, f64::from(LIFESPAN_YEARS));
    let in_range = |d: Date, f: Date, t: Date| d >= f && d <= t;
    let at_store = |st: usize| store.is_none_or(|x| x == st);
    let applied = |e: &Event| s.answers.get(&e.id) == Some(&Answer::Applied);
    let mut k: BTreeMap<&'static str, u64> = BTreeMap::new();
    let members_in = |f: Date, t: Date| -> (BTreeSet<usize>, BTreeSet<usize>, BTreeSet<usize>) {
        let mut count: BTreeMap<usize, u32> = BTreeMap::new();
        let mut first: BTreeMap<usize, Date> = BTreeMap::new();
        for e in s
            .data
            .sales
            .iter()
            .filter(|e| applied(e) && at_store(e.store))
        {
            if let Kind::Purchase {
                member: Some(m), ..
            } = e.kind
            {
                let fd = first.entry(m).or_insert(e.day);
                *fd = (*fd).min(e.day);
                if in_range(e.day, f, t) {
                    *count.entry(m).or_default() += 1;
                }
            }
        }
        let active: BTreeSet<usize> = count.keys().copied().collect();
        let repeat = count
            .iter()
            .filter(|(_, n)| **n >= 2)
            .map(|(m, _)| *m)
            .collect();
        let new = active
            .iter()
            .filter(|m| first.get(m).is_some_and(|d| in_range(*d, f, t)))
            .copied()
            .collect();
        (active, repeat, new)
    };
    let (active, repeat, new) = members_in(from, to);
    let days = (to - from).get_days() as i64 + 1;
    let pf = from
        .checked_sub(jiff::Span::new().days(days))
        .expect("date");
    let pt = from.checked_sub(jiff::Span::new().days(1)).expect("date");
    let (prev_active, _, _) = members_in(pf, pt);
    let mut reward_cost = 0u64;
    for e in s.data.sales.iter().chain(&s.data.after) {
        if !applied(e) || !at_store(e.store) || !in_range(e.day, from, to) {
            continue;
        }
        match &e.kind {
            Kind::Purchase {
                member: Some(_),
                cents,
            } => {
                *k.entry("member_purchases").or_default() += 1;
                *k.entry("member_revenue_cents").or_default() += *cents as u64;
            }
            Kind::Purchase {
                member: None,
                cents,
            } => {
                *k.entry("anonymous_purchases").or_default() += 1;
                *k.entry("anonymous_revenue_cents").or_default() += *cents as u64;
            }
            Kind::Refund { cents, .. } => *k.entry("refunded_cents").or_default() += *cents as u64,
            Kind::Redemption { reward, .. } => {
                *k.entry("redemptions").or_default() += 1;
                reward_cost += if *reward == "free-coffee" {
                    COFFEE_COST_CENTS
                } else {
                    PASTRY_COST_CENTS
                };
            }
        }
    }
    if in_range(s.enrolled, from, to) {
        k.insert(
            "enrolments",
            s.data.home.iter().filter(|h| at_store(**h)).count() as u64,
        );
    }
    for e in s.ledgers.iter().flatten() {
        let here = store.is_none_or(|x| s.store_ids[x] == e.store);
        if !here || !in_range(e.day, from, to) {
            continue;
        }
        match e.kind.as_str() {
            "earn" if e.points > 0 => *k.entry("points_issued").or_default() += e.points as u64,
            "redeem" => *k.entry("points_redeemed").or_default() += e.points.unsigned_abs(),
            "expire" => *k.entry("points_expired").or_default() += e.points.unsigned_abs(),
            _ => {}
        }
    }
    let g = |name: &str| *k.get(name).unwrap_or(&0) as f64;
    let ratio = |a: f64, b: f64| (b != 0.0).then(|| a / b);
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let opt = |x: Option<f64>| x.map_or(Value::Null, |v| json!(r2(v)));
    let (act, rep, nw) = (active.len() as f64, repeat.len() as f64, new.len() as f64);
    let avg_m = ratio(g("member_revenue_cents"), g("member_purchases"));
    let avg_a = ratio(g("anonymous_revenue_cents"), g("anonymous_purchases"));
    let freq = ratio(g("member_purchases"), act);
    let ltv = avg_m
        .zip(freq)
        .map(|(a, f)| a * f * 365.0 / days as f64 * lifespan);
    let incremental = avg_m
        .zip(avg_a)
        .map(|(m, a)| (m - a) * g("member_purchases"));
    let cost = program_fee * days as f64 * 12.0 / 365.0 + reward_cost as f64;
    let mut out: BTreeMap<&'static str, Value> = BTreeMap::new();
    for name in [
        "member_purchases",
        "anonymous_purchases",
        "member_revenue_cents",
        "anonymous_revenue_cents",
        "refunded_cents",
        "enrolments",
        "points_issued",
        "points_redeemed",
        "points_expired",
        "redemptions",
    ] {
        out.insert(name, json!(*k.get(name).unwrap_or(&0)));
    }
    out.insert("active_members", json!(active.len()));
    out.insert("repeat_members", json!(repeat.len()));
    out.insert("new_members", json!(new.len()));
    out.insert("repeat_purchase_rate_pct", opt(ratio(rep * 100.0, act)));
    out.insert("visit_frequency", opt(freq));
    out.insert("avg_spend_member_cents", opt(avg_m));
    out.insert("avg_spend_anonymous_cents", opt(avg_a));
    out.insert(
        "spend_lift_pct",
        opt(avg_m
            .zip(avg_a)
            .and_then(|(m, a)| ratio(m, a))
            .map(|r| (r - 1.0) * 100.0)),
    );
    out.insert(
        "redemption_rate_pct",
        opt(ratio(g("points_redeemed") * 100.0, g("points_issued"))),
    );
    out.insert(
        "customer_retention_rate_pct",
        opt(ratio((act - nw) * 100.0, prev_active.len() as f64)),
    );
    out.insert("ltv_cents", opt(ltv));
    out.insert(
        "roi_pct",
        opt(incremental.and_then(|i| ratio((i - cost) * 100.0, cost))),
    );
    out
}

/// `loyalty dev`'s default admin key.
pub const ADMIN: &str = "dev-admin-key";

/// A franchise set up through the API: its HQ key, and its stores' ids and keys.
pub struct Franchise {
    pub id: String,
    pub hq: String,
    pub store_ids: Vec<String>,
    pub store_keys: Vec<String>,
}

/// A GET (no body) or POST of JSON; the status and the JSON answer (a string if not JSON).
pub async fn call(
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

/// A franchise running [`program`] with `stores` stores.
pub async fn setup(c: &reqwest::Client, base: &str, stores: usize) -> Franchise {
    let (s, f) = call(
        c,
        format!("{base}/v1/franchises"),
        ADMIN,
        Some(json!({"name": "Dashboards", "program": program()})),
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

/// Enrols every member of `d` at its home store; their ids.
pub async fn enrol(c: &reqwest::Client, base: &str, f: &Franchise, d: &Dataset) -> Vec<String> {
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
pub fn request(e: &Event, members: &[String]) -> (&'static str, Value) {
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
pub async fn send(
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

/// Every member's ledger, as HQ reads it, with local days.
pub async fn ledgers(
    c: &reqwest::Client,
    base: &str,
    f: &Franchise,
    members: &[String],
) -> Vec<Vec<Entry>> {
    let mut out = Vec::new();
    for m in members {
        let (s, v) = call(
            c,
            format!("{base}/v1/members/{m}/ledger?limit=500"),
            &f.hq,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "ledger of {m}: {v}");
        out.push(
            v["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .map(Entry::of)
                .collect(),
        );
    }
    out
}
