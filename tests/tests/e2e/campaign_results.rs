//! Campaign results through the API (README "Campaigns"): a program with a campaign fired at
//! enrolment (a bonus and an SMS), two members enrolled (one consenting to SMS), then
//! `GET /v1/franchises/{fid}/campaigns` and the dashboard's `campaigns` rows counting two
//! firings and one message; a program without campaigns has an empty list and no dashboard
//! rows; who may read (a store key and the admin key 403, another franchise 404) and the
//! problems of bad ranges; the program echoing its campaign with the defaults filled in.

use std::time::Duration;

use loyalty_domain::Day;
use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The demo program with one campaign: 25 points and an SMS at enrolment.
fn program() -> Value {
    let mut p = loyalty_tests::demo_program();
    p["campaigns"] = json!([{
        "id": "welcome",
        "name": "Welcome bonus",
        "trigger": { "type": "enrolled", "after_days": 0 },
        "offer": { "type": "bonus_points", "points": 25 },
        "messages": { "sms": "Welcome {first_name}: {offer} at {franchise}" }
    }]);
    p
}

/// Yesterday and tomorrow (UTC, the program's zone): today whatever midnight does meanwhile.
fn range() -> (String, String) {
    let today = jiff::Timestamp::now().as_second().div_euclid(86_400);
    let day = |n: i64| Day(u32::try_from(today + n).expect("after 1970")).iso();
    (day(-1), day(1))
}

async fn enrol(app: &TestApp, f: &TestFranchise, phone: &str, consent: Value) -> String {
    let body = json!({ "phone": phone, "consent": consent });
    let r = app
        .post("/v1/members?wait_ms=5000", &f.store_key, &body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "{phone}");
    let v: Value = r.json().await.expect("json");
    v["member_id"].as_str().expect("member id").to_owned()
}

async fn get_json(app: &TestApp, path: &str, key: &str) -> Value {
    let r = app.get(path, key).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.expect("json")
}

/// A read of figures that move with every event: never cached.
async fn get_figures(app: &TestApp, path: &str, key: &str) -> Value {
    let r = app.get(path, key).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("private, no-store"),
        "{path}"
    );
    r.json().await.expect("json")
}

/// The results, once `fired` reaches `want` (the series are written with each applied event;
/// the bound only keeps a broken build from hanging).
async fn results_once_fired(app: &TestApp, f: &TestFranchise, path: &str, want: i64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = get_figures(app, path, &f.hq_key).await;
        if v["campaigns"][0]["fired"].as_i64() == Some(want) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fired never reached {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fields of a results row that no delivery worker moves meanwhile.
fn settled(row: &Value) -> Value {
    let mut row = row.clone();
    let o = row.as_object_mut().expect("a row");
    o.remove("delivered");
    o.remove("failed");
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_results_count_firings_and_consented_messages() {
    let app = spawn_app().await;
    let f = app.franchise_with("Café Campaigns", program()).await;
    let (from, to) = range();

    // The program echoes the campaign with every default filled in.
    let p = get_json(&app, &format!("/v1/franchises/{}/program", f.id), &f.hq_key).await;
    let c = &p["program"]["campaigns"][0];
    assert_eq!(c["audience"], json!({ "segments": null, "stores": null }));
    assert_eq!(c["frequency_cap"], json!({ "max": 1, "days": 30 }));
    assert_eq!(
        (&c["redeem_within_days"], &c["valid_from"], &c["valid_to"]),
        (&json!(30), &Value::Null, &Value::Null)
    );

    let texted = enrol(&app, &f, "+33612340001", json!({ "sms": true })).await;
    let silent = enrol(&app, &f, "+33612340002", json!({ "sms": false })).await;
    // Both were given the offer: the signup bonus and the campaign's 25 points.
    for m in [&texted, &silent] {
        assert_eq!(app.status(&f, m).await["points"], 75, "{m}");
    }

    let path = format!("/v1/franchises/{}/campaigns?from={from}&to={to}", f.id);
    let v = results_once_fired(&app, &f, &path, 2).await;
    assert_eq!(
        (&v["franchise_id"], &v["from"], &v["to"], &v["time_zone"]),
        (&json!(f.id), &json!(from), &json!(to), &json!("UTC"))
    );
    let rows = v["campaigns"].as_array().expect("campaigns");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        settled(row),
        json!({
            "id": "welcome", "name": "Welcome bonus", "trigger": "enrolled", "channels": ["sms"],
            "fired": 2, "messages": 1, "redeemed": 0, "revenue_cents": 0, "redemption_rate": 0.0
        })
    );
    let sent = row["delivered"].as_i64().unwrap() + row["failed"].as_i64().unwrap();
    assert!(
        (0..=1).contains(&sent),
        "delivered and failed of 1 message: {row}"
    );
    // A read-only HQ key reads them too.
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", f.id),
            &f.hq_key,
            &json!({ "role": "hq_read_only" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let ro: Value = r.json().await.expect("json");
    let ro_key = ro["api_key"].as_str().expect("the key's secret");
    let again = get_figures(&app, &path, ro_key).await;
    assert_eq!(settled(&again["campaigns"][0]), settled(row));

    // The dashboard shows the same row.
    let dash = format!("/v1/franchises/{}/dashboard?from={from}&to={to}", f.id);
    let d = get_figures(&app, &dash, &f.hq_key).await;
    let rows = d["campaigns"].as_array().expect("dashboard campaigns");
    assert_eq!(rows.len(), 1);
    assert_eq!(settled(&rows[0]), settled(row));
    // Franchise-wide whatever the store asked.
    let one = format!("{dash}&store={}", f.store_id);
    let d = get_figures(&app, &one, &f.hq_key).await;
    assert_eq!(settled(&d["campaigns"][0]), settled(row));

    // A range before the firings counts none.
    let before = format!(
        "/v1/franchises/{}/campaigns?from=2020-01-01&to=2020-01-31",
        f.id
    );
    let v = get_figures(&app, &before, &f.hq_key).await;
    assert_eq!(v["campaigns"][0]["fired"], 0);
    assert_eq!(v["campaigns"][0]["redemption_rate"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_results_without_campaigns_are_empty_and_left_out_of_the_dashboard() {
    let app = spawn_app().await;
    let f = app.franchise("Café Plain").await;
    app.enrol_id(&f, "+33612340003").await;
    let (from, to) = range();
    let v = get_json(
        &app,
        &format!("/v1/franchises/{}/campaigns?from={from}&to={to}", f.id),
        &f.hq_key,
    )
    .await;
    assert_eq!(v["campaigns"], json!([]));
    let d = get_json(
        &app,
        &format!("/v1/franchises/{}/dashboard?from={from}&to={to}", f.id),
        &f.hq_key,
    )
    .await;
    assert!(d.get("campaigns").is_none(), "no campaigns: {d}");
    let p = get_json(&app, &format!("/v1/franchises/{}/program", f.id), &f.hq_key).await;
    assert!(p["program"].get("campaigns").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_results_check_keys_franchises_and_ranges() {
    let app = spawn_app().await;
    let f = app.franchise_with("Café Checks", program()).await;
    let other = app.franchise("Café Other").await;
    let (from, to) = range();
    let path = |fid: &str, q: &str| format!("/v1/franchises/{fid}/campaigns{q}");
    let ok = format!("?from={from}&to={to}");

    // Who asks comes first: a store key and the admin key are 403, another franchise 404,
    // whatever the query.
    for q in [ok.as_str(), "?from=nope"] {
        let r = app.get(&path(&f.id, q), &f.store_key).await;
        assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
        let r = app.get(&path(&f.id, q), ADMIN_KEY).await;
        assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
        let r = app.get(&path(&f.id, q), &other.hq_key).await;
        assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    }
    let r = app.get(&path(&f.id, &ok), "lk_hq_nope").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Bad ranges: the dashboard's rules, 400 `invalid-query`.
    for (q, words) in [
        ("", "from and to are required"),
        ("?from=2026-01-01", "from and to are required"),
        ("?from=2026-13-01&to=2026-12-31", "from must be a date"),
        ("?from=2026-01-01&to=tomorrow", "to must be a date"),
        ("?from=2026-02-01&to=2026-01-01", "is after to"),
        ("?from=2020-01-01&to=2026-01-01", "at most 1096"),
        ("?from=2026-01-01&to=2026-01-02&store=x", "query string"),
    ] {
        let r = app.get(&path(&f.id, q), &f.hq_key).await;
        let p = assert_problem(r, StatusCode::BAD_REQUEST, "invalid-query").await;
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains(words), "{q}: {detail}");
    }

    // A campaign's program is refused 422 where the schema says it is invalid.
    let program_path = format!("/v1/franchises/{}/program", f.id);
    for (campaign, words) in [
        (
            json!({ "id": "b", "name": "B", "trigger": { "type": "birthday", "after_days": 3 },
                    "offer": { "type": "none" } }),
            "unknown field `after_days`",
        ),
        (
            json!({ "id": "n", "name": "N", "trigger": { "type": "birthday" },
                    "offer": { "type": "none", "points": 3 } }),
            "unknown field `points`",
        ),
        (
            json!({ "id": "c", "name": "Tab\there", "trigger": { "type": "birthday" },
                    "offer": { "type": "none" } }),
            "campaigns[0].name",
        ),
        (
            json!({ "id": "t", "name": "T", "trigger": { "type": "enrolled" },
                    "offer": { "type": "none" }, "messages": { "sms": "Hi {name}" } }),
            "{name}",
        ),
    ] {
        let mut p = loyalty_tests::demo_program();
        p["campaigns"] = json!([campaign]);
        let r = app
            .put(&program_path, &f.hq_key, &json!({ "program": p }))
            .await;
        let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains(words), "{campaign}: {detail}");
    }
}
