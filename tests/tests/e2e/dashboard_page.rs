//! The headquarters' dashboard page (`/dashboard`) in a real headless Chromium, against a real
//! `loyalty dev` process holding the seeded dataset of `loyalty_tests::dashboard_data`: the
//! sign-in form, a store key refused, the HQ key's session (a Secure, HttpOnly, SameSite=Strict
//! cookie that script cannot read), the KPI cards showing what the test computes from the
//! events it sent, a range picked, a store switched, the store table sorted, the CSV
//! downloaded, the page on a phone's width, no request to another origin, and sign-out.
//! It saves `target/dashboard-page.png` (and `-phone.png`).
//!
//! Another browser test signs in on the demo franchise of `loyalty dev`, with its generated
//! history applied, shows its last 90 days and saves `target/dashboard-demo.png`; with
//! `LOYALTY_UPDATE_SCREENSHOT=1` it also refreshes docs/img/dashboard.png, the README's picture.
//!
//! A second test checks the page's HTTP contract without a browser: headers, CSRF refusals,
//! cookie flags, problems for bad queries, tenant isolation and the assets' caching.
//!
//! Needs `chromium` and `chromedriver` (Debian `chromium`, `chromium-driver`): without them the
//! browser tests say SKIPPED, and fails under `LOYALTY_REQUIRE_SERVERS=1`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jiff::civil::Date;
use jiff::Span;
use loyalty_testkit::chromium::{Browser, ChromeDriver};
use loyalty_tests::dashboard_data::{self, call, enrol, send, setup, Dataset, Franchise, Sent};
use loyalty_tests::demo_history::{announced, applied, start_with_history};
use loyalty_tests::{DevProcess, TestApp};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const COOKIE: &str = "loyalty_dashboard";

fn days_before(d: Date, n: i64) -> Date {
    d.checked_sub(Span::new().days(n)).expect("date")
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// Waits until the page shows the answer to `query` (`from=…&to=…[&store=…]`).
async fn wait_shown(b: &Browser, query: &str) {
    let script = format!(
        "return document.body.dataset.state === 'ready' && document.body.dataset.query === {}",
        json!(query)
    );
    if let Err(e) = b.wait_for(&script, WAIT).await {
        let state = b
            .execute(
                "return [document.body.dataset.state, document.body.dataset.query, \
                 (document.getElementById('status') || {}).textContent]",
                vec![],
            )
            .await;
        panic!("the page did not show {query}: {e:#}; it shows {state:?}");
    }
}

/// The cards' values, by KPI name (raw JSON numbers, `null` for none).
async fn cards(b: &Browser) -> BTreeMap<String, Value> {
    let v = b
        .execute(
            "return [...document.querySelectorAll('#cards .card')].map(c => \
             [c.dataset.kpi, JSON.parse(c.dataset.value), \
              c.querySelector('.value').textContent, c.querySelector('.delta').textContent])",
            vec![],
        )
        .await
        .expect("cards");
    let mut out = BTreeMap::new();
    for c in v.as_array().expect("cards") {
        let name = c[0].as_str().expect("name").to_owned();
        let shown = c[2].as_str().unwrap_or_default();
        assert!(!shown.is_empty(), "card {name} shows a value");
        if c[1].is_null() {
            assert_eq!(shown, "—", "card {name}: no value is a dash");
        }
        assert!(
            !c[3].as_str().unwrap_or_default().is_empty(),
            "card {name} shows a change"
        );
        out.insert(name, c[1].clone());
    }
    out
}

/// The cards match the KPIs computed from the events sent (rates within a rounding step).
fn assert_cards(what: &str, got: &BTreeMap<String, Value>, want: &BTreeMap<&'static str, Value>) {
    for name in [
        "member_purchases",
        "anonymous_purchases",
        "member_revenue_cents",
        "anonymous_revenue_cents",
        "active_members",
        "repeat_purchase_rate_pct",
        "visit_frequency",
        "spend_lift_pct",
        "redemption_rate_pct",
        "customer_retention_rate_pct",
        "ltv_cents",
        "roi_pct",
    ] {
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no card {name}"));
        let w = want
            .get(name)
            .unwrap_or_else(|| panic!("{what}: nothing computed for {name}"));
        let same = match (g.as_f64(), w.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() <= 0.011,
            _ => g == w,
        };
        assert!(same, "{what}: card {name} is {g}, computed {w}");
    }
}

/// Where two JSON values first differ (numbers compared by value), if they do.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64() != y.as_f64()).then(|| format!("{at}: {x} vs {y}"))
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{at}: {} vs {} items", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (x, y))| first_difference(x, y, &format!("{at}[{i}]")))
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{at}.{k}"),
                )
            })
        }
        _ => (a != b).then(|| format!("{at}: {a} vs {b}")),
    }
}

/// Picks a range with the date inputs, as a user typing dates would (their `change` events).
async fn pick_range(b: &Browser, from: Date, to: Date) {
    b.execute(
        "const [f, t] = arguments; \
         const set = (id, v) => { const e = document.getElementById(id); e.value = v; \
           e.dispatchEvent(new Event('change', {bubbles: true})); }; \
         set('from', f); set('to', t);",
        vec![json!(from.to_string()), json!(to.to_string())],
    )
    .await
    .expect("dates set");
}

/// The table's column `key`, top to bottom.
async fn column(b: &Browser, key: &str) -> Vec<Value> {
    let v = b
        .execute(
            "const k = arguments[0]; \
             const i = [...document.querySelectorAll('#stores-table thead th')] \
               .findIndex(th => th.dataset.key === k); \
             return [...document.querySelectorAll('#stores-table tbody tr')] \
               .map(tr => JSON.parse(tr.children[i].dataset.value));",
            vec![json!(key)],
        )
        .await
        .expect("column");
    v.as_array().cloned().unwrap_or_default()
}

async fn sort_by(b: &Browser, key: &str) {
    let h = b
        .find(&format!("#stores-table th[data-key='{key}'] button"))
        .await
        .expect("header");
    b.click(&h).await.expect("sorted");
}

fn sorted_desc(v: &[Value]) -> bool {
    v.windows(2)
        .all(|w| w[0].as_f64().unwrap_or(f64::MIN) >= w[1].as_f64().unwrap_or(f64::MIN))
}

async fn sign_in(b: &Browser, base: &str, key: &str) {
    b.goto(&format!("{base}/dashboard")).await.expect("loaded");
    let input = b.find("#sign-in input[name=key]").await.expect("the form");
    b.send_keys(&input, key).await.expect("typed");
    let submit = b
        .find("#sign-in button[type=submit]")
        .await
        .expect("button");
    b.click(&submit).await.expect("submitted");
    b.wait_for("return document.readyState === 'complete'", WAIT)
        .await
        .expect("answered");
}

async fn session_cookie(b: &Browser) -> Option<Value> {
    b.cookies()
        .await
        .expect("cookies")
        .into_iter()
        .find(|c| c["name"] == COOKIE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_in_a_headless_browser() {
    if let Err(reason) = ChromeDriver::available() {
        println!("SKIPPED: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = DevProcess::start(dir.path())
        .await
        .expect("loyalty dev starts");
    let base = dev.address.clone();
    let c = reqwest::Client::new();

    // The dataset: 3 stores, 50 members, 100 days.
    let data = Dataset::generate(21, 3, 50, 100);
    let f: Franchise = setup(&c, &base, data.stores).await;
    let members = enrol(&c, &base, &f, &data).await;
    let mut answers = send(&c, &base, &f, &members, &data.sales).await;
    answers.extend(send(&c, &base, &f, &members, &data.after).await);
    let ledgers = dashboard_data::ledgers(&c, &base, &f, &members).await;
    let sent = Sent {
        data: &data,
        store_ids: &f.store_ids,
        answers: &answers,
        ledgers: &ledgers,
        enrolled: data.today,
    };
    let today = data.today;
    let expected = |from, to, store| dashboard_data::expected(&sent, from, to, store);

    let driver = ChromeDriver::start().expect("chromedriver starts");
    let b = driver.browser().await.expect("a browser");

    // Without a session: the sign-in form, and no cookie.
    b.goto(&format!("{base}/dashboard")).await.expect("loaded");
    b.find("#sign-in input[name=key][type=password]")
        .await
        .expect("the sign-in form");
    assert!(session_cookie(&b).await.is_none());

    // A store key, or no key at all, does not open the dashboard.
    for (key, why) in [
        (f.store_keys[0].as_str(), "store key"),
        ("lk_hq_nope", "wrong key"),
    ] {
        sign_in(&b, &base, key).await;
        let err = b.find("#sign-in-error").await.expect("a message");
        let text = b.text(&err).await.expect("text");
        assert!(!text.is_empty(), "{why}: {text}");
        assert!(
            b.find_all("#cards").await.expect("find").is_empty(),
            "{why}"
        );
        assert!(session_cookie(&b).await.is_none(), "{why}: no session");
    }

    // The HQ key: the dashboard, the key in a cookie script cannot read, none in the URL.
    sign_in(&b, &base, &f.hq).await;
    assert_eq!(
        b.current_url().await.expect("url").split('?').next(),
        Some(format!("{base}/dashboard").as_str())
    );
    let default_query = format!("from={}&to={today}", days_before(today, 29));
    wait_shown(&b, &default_query).await;
    let cookie = session_cookie(&b).await.expect("a session cookie");
    assert_eq!(cookie["httpOnly"], json!(true), "{cookie}");
    assert_eq!(cookie["secure"], json!(true), "{cookie}");
    assert_eq!(cookie["sameSite"], json!("Strict"), "{cookie}");
    assert_eq!(cookie["path"], json!("/dashboard"), "{cookie}");
    assert_eq!(
        b.execute("return document.cookie", vec![])
            .await
            .expect("js"),
        json!(""),
        "script cannot read the session"
    );
    let url = b.current_url().await.expect("url");
    assert!(!url.contains(&f.hq), "the key is not in the URL: {url}");
    let html = b
        .execute("return document.documentElement.outerHTML", vec![])
        .await
        .expect("html");
    assert!(
        !html.as_str().unwrap_or_default().contains(&f.hq),
        "nor in the page"
    );

    // The default range's cards are the dataset's numbers.
    assert_cards(
        "last 30 days",
        &cards(&b).await,
        &expected(days_before(today, 29), today, None),
    );

    // A range picked with the date inputs.
    let (from, to) = (days_before(today, 75), days_before(today, 20));
    pick_range(&b, from, to).await;
    let q = format!("from={from}&to={to}");
    wait_shown(&b, &q).await;
    let shown = cards(&b).await;
    assert_cards(&q, &shown, &expected(from, to, None));
    // The page's JSON is the API's, and the changes are from the previous period.
    let page_json = b
        .execute(
            "return fetch('/dashboard/data?' + arguments[0] + '&compare=previous') \
             .then(r => r.json())",
            vec![json!(q)],
        )
        .await
        .expect("fetched");
    let (s, api) = call(
        &c,
        format!(
            "{base}/v1/franchises/{}/dashboard?{q}&compare=previous",
            f.id
        ),
        &f.hq,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // (Numbers compared as numbers: script has no 251576.0 beside 251576.)
    if let Some(path) = first_difference(&page_json, &api, "") {
        panic!("the page reads the API's answer, but they differ at {path}");
    }
    let prev = &api["previous"]["kpis"];
    let delta = b
        .execute(
            "return document.querySelector('[data-kpi=member_purchases] .delta').textContent",
            vec![],
        )
        .await
        .expect("delta");
    let (now_n, prev_n) = (
        api["kpis"]["member_purchases"].as_f64().unwrap(),
        prev["member_purchases"].as_f64().unwrap(),
    );
    let delta = delta.as_str().unwrap_or_default();
    if prev_n > 0.0 {
        let pct = (now_n - prev_n) / prev_n * 100.0;
        let shown: f64 = delta
            .trim_start_matches('+')
            .trim_end_matches(" %")
            .replace(',', "")
            .parse()
            .unwrap_or_else(|_| panic!("a change in %: {delta}"));
        assert!(
            (shown - pct).abs() < 0.01,
            "change {delta}, computed {pct:.2}"
        );
    }
    // The chart is drawn, the tiers and rewards listed.
    assert!(
        !b.find_all("#chart canvas").await.expect("find").is_empty(),
        "a chart"
    );
    let tiers = b.find_all("#tiers-table tbody tr").await.expect("tiers");
    assert_eq!(tiers.len(), api["tiers"].as_array().expect("tiers").len());
    let rewards = b
        .find_all("#rewards-table tbody tr[data-reward]")
        .await
        .expect("rewards");
    assert_eq!(
        rewards.len(),
        api["top_rewards"].as_array().expect("top").len()
    );

    // Another store: its numbers.
    let option = b
        .find(&format!("#store option[value='{}']", f.store_ids[1]))
        .await
        .expect("the store in the picker");
    assert_eq!(b.text(&option).await.expect("name"), "Store 2");
    b.click(&option).await.expect("picked");
    let qs = format!("{q}&store={}", f.store_ids[1]);
    wait_shown(&b, &qs).await;
    assert_cards(&qs, &cards(&b).await, &expected(from, to, Some(1)));

    let rows = b.find_all("#stores-table tbody tr").await.expect("rows");
    assert_eq!(rows.len(), 1, "the store's row only");

    // A preset: the last 7 days, for the store still picked.
    let preset = b
        .find(".presets button[data-days='7']")
        .await
        .expect("preset");
    b.click(&preset).await.expect("clicked");
    let q7 = format!(
        "from={}&to={today}&store={}",
        days_before(today, 6),
        f.store_ids[1]
    );
    wait_shown(&b, &q7).await;
    assert_cards(
        &q7,
        &cards(&b).await,
        &expected(days_before(today, 6), today, Some(1)),
    );

    // Back to all stores and the picked range, for the CSV and the screenshot.
    let all = b.find("#store option[value='']").await.expect("all stores");
    b.click(&all).await.expect("picked");
    pick_range(&b, from, to).await;
    wait_shown(&b, &q).await;

    // The store table sorts by any column, both ways.
    sort_by(&b, "member_purchases").await;
    let col = column(&b, "member_purchases").await;
    assert_eq!(col.len(), 3);
    assert!(sorted_desc(&col), "descending: {col:?}");
    sort_by(&b, "member_purchases").await;
    let mut asc = column(&b, "member_purchases").await;
    asc.reverse();
    assert!(sorted_desc(&asc), "ascending: {asc:?}");
    sort_by(&b, "name").await;
    let names = column(&b, "name").await;
    assert_eq!(
        names,
        vec![json!("Store 1"), json!("Store 2"), json!("Store 3")]
    );
    sort_by(&b, "repeat_purchase_rate_pct").await;
    assert!(sorted_desc(&column(&b, "repeat_purchase_rate_pct").await));

    // The CSV: the link downloads the API's CSV for the range shown.
    let link = b.find("#csv").await.expect("the CSV link");
    let href = b.attr(&link, "href").await.expect("href").expect("an href");
    assert!(
        href.ends_with(&format!("/dashboard/export.csv?{q}")),
        "{href}"
    );
    b.click(&link).await.expect("clicked");
    let file = b.downloaded(WAIT).await.expect("downloaded");
    assert_eq!(
        file.file_name().and_then(|n| n.to_str()),
        Some(format!("dashboard-{}-{from}-{to}.csv", f.id).as_str())
    );
    let downloaded = std::fs::read_to_string(&file).expect("csv");
    let api_csv = c
        .get(format!("{base}/v1/franchises/{}/dashboard.csv?{q}", f.id))
        .bearer_auth(&f.hq)
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("csv");
    assert_eq!(downloaded, api_csv, "the download is the API's CSV");
    assert_eq!(
        downloaded.lines().count() as i64,
        1 + 3 * ((to - from).get_days() as i64 + 1),
        "a header and a row per store per day"
    );

    // Nothing from another origin: every resource the page loaded is from the gateway.
    let loaded = b
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .expect("entries");
    let loaded: Vec<&str> = loaded
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        loaded.iter().any(|u| u.contains("uPlot.iife.min.js")),
        "{loaded:?}"
    );
    for u in &loaded {
        assert!(
            u.starts_with(&format!("{base}/dashboard/")),
            "{u} is from another origin"
        );
    }

    // The screenshot: the last 90 days, the whole page at a desktop width.
    let preset = b
        .find(".presets button[data-days='90']")
        .await
        .expect("preset");
    b.click(&preset).await.expect("clicked");
    wait_shown(&b, &format!("from={}&to={today}", days_before(today, 89))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let png = b.screenshot_full_page().await.expect("screenshot");
    let target = repo_root().join("target");
    std::fs::create_dir_all(&target).expect("target/");
    std::fs::write(target.join("dashboard-page.png"), &png).expect("saved");
    println!(
        "screenshot: {}",
        target.join("dashboard-page.png").display()
    );

    // On a phone: 390 px wide, nothing wider than the screen but the table's own scroller.
    b.resize(390, 844).await.expect("resized");
    let width = b
        .wait_for("return window.innerWidth <= 400 && window.innerWidth", WAIT)
        .await
        .expect("a phone's width");
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.execute("window.scrollTo(0, 0)", vec![])
        .await
        .expect("scrolled");
    let overflow = b
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth, \
             document.querySelector('#cards .card').getBoundingClientRect().width, \
             document.querySelector('#chart canvas').getBoundingClientRect().width]",
            vec![],
        )
        .await
        .expect("sizes");
    let n = |i: usize| overflow[i].as_f64().unwrap_or(f64::MAX);
    assert!(
        n(0) <= n(1),
        "no horizontal scroll at {width} px: {overflow}"
    );
    assert!(n(2) < n(1) / 2.0 + 1.0, "two cards a row: {overflow}");
    assert!(n(3) <= n(1), "the chart fits: {overflow}");
    let png = b.screenshot().await.expect("screenshot");
    std::fs::write(target.join("dashboard-page-phone.png"), &png).expect("saved");

    // Sign out: the cookie is gone, the form is back, the data refused.
    b.resize(1280, 1000).await.expect("resized");
    let out = b.find("#sign-out button").await.expect("sign out");
    b.click(&out).await.expect("clicked");
    b.wait_for("return document.getElementById('sign-in') !== null", WAIT)
        .await
        .expect("the form again");
    assert!(session_cookie(&b).await.is_none(), "signed out");
    let status = b
        .execute(
            "return fetch('/dashboard/data?' + arguments[0]).then(r => r.status)",
            vec![json!(q)],
        )
        .await
        .expect("fetched");
    assert_eq!(status, json!(401));
    b.close().await.expect("closed");
    drop(driver);
    drop(dev);
}

/// The stores `loyalty dev` gives its demo franchise (`services/loyalty/src/demo.rs`).
const DEMO_STORES: [&str; 3] = [
    "Demo Coffee Bastille",
    "Demo Coffee Gare du Nord",
    "Demo Coffee Opéra",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_franchise_dashboard() {
    if let Err(reason) = ChromeDriver::available() {
        println!("SKIPPED: {reason}");
        return;
    }
    // `loyalty dev` as a user starts it, its history applied by the engine.
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = start_with_history(dir.path()).await;
    let want = announced(&dev).expect("the first start announces its history");
    let c = reqwest::Client::new();
    applied(&c, &dev, &want).await;
    let base = dev.address.clone();
    let hq = dev.key("HQ_KEY");
    assert!(!hq.is_empty(), "the demo HQ key in demo-keys.env");

    let driver = ChromeDriver::start().expect("chromedriver starts");
    let b = driver.browser().await.expect("a browser");
    sign_in(&b, &base, &hq).await;
    // The page's today (the program's time zone) is the default range's end.
    b.wait_for("return document.body.dataset.state === 'ready'", WAIT)
        .await
        .expect("the dashboard");
    let today: Date = b
        .execute("return document.getElementById('to').value", vec![])
        .await
        .expect("to")
        .as_str()
        .expect("a date")
        .parse()
        .expect("an ISO date");

    // The last 90 days.
    let preset = b
        .find(".presets button[data-days='90']")
        .await
        .expect("preset");
    b.click(&preset).await.expect("clicked");
    let q = format!("from={}&to={today}", days_before(today, 89));
    wait_shown(&b, &q).await;

    // The cards: the demo's members buying, as the API counts them.
    let shown = cards(&b).await;
    let (s, api) = call(
        &c,
        format!(
            "{base}/v1/franchises/{}/dashboard?{q}",
            dev.key("FRANCHISE_ID")
        ),
        &hq,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for name in ["member_purchases", "active_members"] {
        let n = shown[name].as_u64().unwrap_or(0);
        assert!(n > 0, "card {name} is {}", shown[name]);
        assert_eq!(shown[name], api["kpis"][name], "card {name}");
    }

    // The stores table: the demo's three stores, each with member purchases.
    sort_by(&b, "name").await;
    let names = column(&b, "name").await;
    assert_eq!(names, DEMO_STORES.map(|n| json!(n)).to_vec());
    let purchases = column(&b, "member_purchases").await;
    assert!(
        purchases.iter().all(|p| p.as_u64() > Some(0)),
        "{purchases:?}"
    );
    // Back to the page's own order (by member revenue) for the picture.
    sort_by(&b, "member_revenue_cents").await;
    assert!(sorted_desc(&column(&b, "member_revenue_cents").await));
    assert!(
        !b.find_all("#chart canvas").await.expect("find").is_empty(),
        "a chart"
    );

    // The screenshot: the whole page at a desktop width.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let png = b.screenshot_full_page().await.expect("screenshot");
    let target = repo_root().join("target");
    std::fs::create_dir_all(&target).expect("target/");
    std::fs::write(target.join("dashboard-demo.png"), &png).expect("saved");
    println!(
        "screenshot: {}",
        target.join("dashboard-demo.png").display()
    );
    // The README's picture is refreshed on demand only, so that a test run leaves the tree clean.
    if std::env::var("LOYALTY_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let img = repo_root().join("docs/img");
        std::fs::create_dir_all(&img).expect("docs/img/");
        std::fs::write(img.join("dashboard.png"), &png).expect("saved");
        println!(
            "screenshot copied to {}",
            img.join("dashboard.png").display()
        );
    }
    b.close().await.expect("closed");
    drop(driver);
    drop(dev);
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The sign-in form's body: `key=…`, URL-encoded.
fn form(key: &str) -> String {
    let mut out = String::from("key=");
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_checks_origins_keys_queries_and_tenants() {
    let app: TestApp = loyalty_tests::spawn_app().await;
    let a = app.franchise("A").await;
    let other = app.franchise("B").await;
    let c = no_redirects();
    let base = app.address.clone();
    let host = base.trim_start_matches("http://").to_owned();
    let sign_in = |key: &str, origin: Option<&str>| {
        let mut r = c
            .post(format!("{base}/dashboard/session"))
            .header("Content-Type", FORM)
            .body(form(key));
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        r.send()
    };

    // The form, with the page's headers.
    let r = c
        .get(format!("{base}/dashboard"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    let csp = h["content-security-policy"].to_str().expect("ascii");
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let body = r.text().await.expect("html");
    assert!(body.contains("name=\"key\""), "the sign-in form");

    // Cross-site POSTs are refused, with or without a valid key.
    for (origin, fetch_site) in [
        (Some("http://evil.example"), None),
        (Some("null"), Some("cross-site")),
        (Some(&*format!("http://{host}")), Some("cross-site")),
        (None, None),
    ] {
        let mut r = c
            .post(format!("{base}/dashboard/session"))
            .header("Content-Type", FORM)
            .body(form(&a.hq_key));
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        if let Some(s) = fetch_site {
            r = r.header("Sec-Fetch-Site", s);
        }
        let r = r.send().await.expect("sent");
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{origin:?} {fetch_site:?}"
        );
        assert!(r.headers().get("set-cookie").is_none());
    }
    let own = format!("http://{host}");
    // A store key, the admin key, a wrong key: the form again, no cookie.
    for (key, status) in [
        (a.store_key.as_str(), StatusCode::FORBIDDEN),
        ("dev-admin-key", StatusCode::UNAUTHORIZED),
        (loyalty_tests::ADMIN_KEY, StatusCode::FORBIDDEN),
        ("lk_hq_wrong", StatusCode::UNAUTHORIZED),
        ("", StatusCode::UNAUTHORIZED),
        ("a key; Path=/", StatusCode::UNAUTHORIZED),
    ] {
        let r = sign_in(key, Some(&own)).await.expect("sent");
        assert_eq!(r.status(), status, "{key}");
        assert!(r.headers().get("set-cookie").is_none(), "{key}");
        assert!(r
            .text()
            .await
            .expect("html")
            .contains("id=\"sign-in-error\""));
    }
    // The HQ key: 303 to the page, the cookie with its flags.
    let r = sign_in(&a.hq_key, Some(&own)).await.expect("sent");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/dashboard");
    let set = r.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(set.contains(flag), "{set}");
    }
    let cookie = set.split(';').next().expect("name=value").to_owned();
    assert_eq!(cookie, format!("{COOKIE}={}", a.hq_key));
    // A browser behind `Referrer-Policy: no-referrer` sends `Origin: null`, and says where
    // the form came from in Sec-Fetch-Site.
    let r = c
        .post(format!("{base}/dashboard/session"))
        .header("Origin", "null")
        .header("Sec-Fetch-Site", "same-origin")
        .header("Content-Type", FORM)
        .body(form(&a.hq_key))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    let get = |path: String, cookie: Option<&str>| {
        let mut r = c.get(format!("{base}{path}"));
        if let Some(v) = cookie {
            r = r.header("Cookie", v);
        }
        r.send()
    };
    // The page, its data and its CSV by cookie; the same as the API.
    let r = get("/dashboard".into(), Some(&cookie)).await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.expect("html");
    assert!(
        html.contains("id=\"cards\"") && html.contains(&a.store_id),
        "the page"
    );
    assert!(!html.contains(&a.hq_key), "no key in the page");
    let q = "from=2026-01-01&to=2026-01-31";
    let r = get(
        format!("/dashboard/data?{q}&compare=previous"),
        Some(&cookie),
    )
    .await
    .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "private, no-store");
    let page: Value = r.json().await.expect("json");
    let api: Value = app
        .get(
            &format!("/v1/franchises/{}/dashboard?{q}&compare=previous", a.id),
            &a.hq_key,
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page, api);
    let r = get(format!("/dashboard/export.csv?{q}"), Some(&cookie))
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        r.headers()["content-disposition"],
        format!(
            "attachment; filename=\"dashboard-{}-2026-01-01-2026-01-31.csv\"",
            a.id
        )
        .as_str()
    );
    let api_csv = app
        .get(
            &format!("/v1/franchises/{}/dashboard.csv?{q}", a.id),
            &a.hq_key,
        )
        .await
        .text()
        .await
        .expect("csv");
    assert_eq!(r.text().await.expect("csv"), api_csv);

    // Bad queries: the API's problems.
    for bad in [
        "from=2026-02-01&to=2026-01-01",
        "from=2026-01-01",
        "from=2026-01-01&to=2026-01-02&compare=next",
        "from=2026-01-01&to=2026-01-02&limit=3",
    ] {
        for form in ["data", "export.csv"] {
            let r = get(format!("/dashboard/{form}?{bad}"), Some(&cookie))
                .await
                .expect("sent");
            let p =
                loyalty_tests::assert_problem(r, StatusCode::BAD_REQUEST, "invalid-query").await;
            assert_eq!(p["status"], 400, "{form}?{bad}");
        }
    }
    // Tenancy: another franchise's store is not found; no session, a store key's or a wrong
    // cookie is 401 (the page then shows the form).
    let r = get(
        format!("/dashboard/data?{q}&store={}", other.store_id),
        Some(&cookie),
    )
    .await
    .expect("sent");
    loyalty_tests::assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let r = get(
        format!("/dashboard/data?{q}&store={}", a.store_id),
        Some(&cookie),
    )
    .await
    .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let other_cookie = format!("{COOKIE}={}", other.hq_key);
    let r = get(format!("/dashboard/data?{q}"), Some(&other_cookie))
        .await
        .expect("sent");
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["franchise_id"],
        json!(other.id),
        "a session sees its own franchise"
    );
    for bad in [
        None,
        Some(format!("{COOKIE}={}", a.store_key)),
        Some(format!("{COOKIE}=lk_hq_wrong")),
        Some(format!("{COOKIE}={}", loyalty_tests::ADMIN_KEY)),
    ] {
        for form in ["data", "export.csv"] {
            let r = get(format!("/dashboard/{form}?{q}"), bad.as_deref())
                .await
                .expect("sent");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{form} {bad:?}");
        }
        let r = get("/dashboard".into(), bad.as_deref())
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.text().await.expect("html").contains("id=\"sign-in\""),
            "{bad:?}"
        );
    }
    // A Bearer header is not a session.
    let r = c
        .get(format!("{base}/dashboard/data?{q}"))
        .bearer_auth(&a.hq_key)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Sign out: the cookie cleared; cross-site sign-outs refused.
    let r = c
        .post(format!("{base}/dashboard/session/end"))
        .header("Origin", "http://evil.example")
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .post(format!("{base}/dashboard/session/end"))
        .header("Origin", &own)
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().expect("ascii");
    assert!(
        set.starts_with(&format!("{COOKIE}=;")) && set.contains("Max-Age=0"),
        "{set}"
    );

    // Assets: long-lived, revalidated by ETag, with their types; unknown ones 404.
    let html = get("/dashboard".into(), Some(&cookie))
        .await
        .expect("sent")
        .text()
        .await
        .expect("html");
    let js = html
        .split('"')
        .find(|s| s.starts_with("/dashboard/assets/dashboard.js?v="))
        .expect("the script's versioned URL")
        .to_owned();
    let r = get(js.clone(), None).await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age=31536000"));
    let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
    assert!(js.ends_with(etag.trim_matches('"')), "{js} {etag}");
    let r = c
        .get(format!("{base}{js}"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    for path in [
        "vendor/uplot/uPlot.iife.min.js",
        "vendor/uplot/uPlot.min.css",
        "vendor/uplot/LICENSE",
        "dashboard.css",
    ] {
        let r = get(format!("/dashboard/assets/{path}"), None)
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let r = get("/dashboard/assets/../Cargo.toml".into(), None)
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = get("/dashboard/assets/nope.js".into(), None)
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// The page's "Campaigns" table (README "Campaign results"), in headless Chromium against an
/// in-process platform: a program with a campaign fired at enrolment for two members shows one
/// row with its name, its trigger in words and the API's counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_shows_campaign_results() {
    if let Err(reason) = ChromeDriver::available() {
        println!("SKIPPED: {reason}");
        return;
    }
    let app = loyalty_tests::spawn_app().await;
    let mut program = loyalty_tests::demo_program();
    program["campaigns"] = json!([{
        "id": "welcome", "name": "Welcome <b>bonus</b>",
        "trigger": { "type": "enrolled" }, "offer": { "type": "bonus_points", "points": 25 }
    }]);
    let f = app.franchise_with("Café Page Campaigns", program).await;
    for phone in ["+33612340011", "+33612340012"] {
        app.enrol_id(&f, phone).await;
    }

    let driver = ChromeDriver::start().expect("chromedriver starts");
    let b = driver.browser().await.expect("a browser");
    sign_in(&b, &app.address, &f.hq_key).await;
    b.wait_for("return document.body.dataset.state === 'ready'", WAIT)
        .await
        .expect("the dashboard");
    let row = "#campaigns-table tbody tr[data-campaign='welcome']";
    let cells = b
        .wait_for(
            &format!(
                "const r = document.querySelector(\"{row}\"); \
                 if (document.getElementById('campaigns').hidden || !r) return null; \
                 return [...r.cells].map((c) => [c.textContent, c.dataset.value || null]);"
            ),
            WAIT,
        )
        .await
        .expect("the campaigns table");
    let cells = cells.as_array().expect("cells");
    let texts: Vec<&str> = cells.iter().map(|c| c[0].as_str().unwrap()).collect();
    let values: Vec<&Value> = cells.iter().map(|c| &c[1]).collect();
    // The name as text (never markup), the trigger in words.
    assert_eq!(texts[..2], ["Welcome <b>bonus</b>", "Enrolment"]);
    assert_eq!(cells.len(), 8, "name, trigger and six figures: {texts:?}");
    // fired, delivered, failed, redeemed, redemption rate, revenue: the API's figures.
    assert_eq!(
        values[2..],
        [
            &json!("2"),
            &json!("0"),
            &json!("0"),
            &json!("0"),
            &json!("0"),
            &json!("0")
        ]
    );
    assert!(
        b.find_all("#campaigns-table b")
            .await
            .expect("find")
            .is_empty(),
        "no markup from a name"
    );
}
