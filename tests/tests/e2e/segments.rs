//! Segments through the API (README "Segments"): members made new, loyal, at-risk, lapsed and
//! big spenders by purchases replayed with past POS times (an offline till's), their statuses'
//! `segments`, the sizes endpoint (now and day by day), the export of a segment's members
//! (paged, phones masked unless `phones=full`, hq only, counted), its problems, and another
//! franchise kept out.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use loyalty_core::command::PosCommand;
use loyalty_core::engine::scheduler::SchedulerConfig;
use loyalty_core::engine::EngineConfig;
use loyalty_core::ports::ManualClock;
use loyalty_core::provisioning::now;
use loyalty_domain::{Cents, Currency, Program, Timestamp};
use loyalty_tests::cluster::{Backend, World};

use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DAY_MS: i64 = 86_400_000;

fn program() -> Value {
    let mut p = loyalty_tests::demo_program();
    p["segments"] = json!({
        "new_days": 30,
        "loyal": { "min_visits": 3, "window_days": 30 },
        "regular_min_visits": 2,
        "at_risk_days": 60,
        "lapsed_days": 90,
        "custom": [{ "name": "big-spenders", "min_spend_cents": 20000 }]
    });
    p
}

/// RFC 3339 of `days` ago.
fn days_ago(days: i64) -> String {
    let now = jiff::Timestamp::now().as_millisecond();
    jiff::Timestamp::from_millisecond(now - days * DAY_MS)
        .expect("a time")
        .to_string()
}

async fn buy(app: &TestApp, f: &TestFranchise, event: &str, m: &str, cents: i64, ago: i64) {
    let body = json!({
        "event_id": event, "member_id": m, "amount_cents": cents, "currency": "EUR",
        "occurred_at": days_ago(ago)
    });
    let r = app
        .post("/v1/purchases?wait_ms=5000", &f.store_key, &body)
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{event}");
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

async fn get_json(app: &TestApp, path: &str, key: &str) -> Value {
    let r = app.get(path, key).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.expect("json")
}

/// The members of the segment, following `next_after`, `limit` a page.
async fn export_all(app: &TestApp, f: &TestFranchise, segment: &str, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    for _ in 0..100 {
        let path = format!(
            "/v1/franchises/{}/segments/{segment}/members?limit={limit}&after={after}",
            f.id
        );
        let page = get_json(app, &path, &f.hq_key).await;
        let members = page["members"].as_array().expect("members");
        assert!(members.len() <= limit as usize);
        out.extend(members.iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return out,
        }
    }
    panic!("the export did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_follow_the_rules_show_at_the_till_and_export_for_hq_only() {
    let app = spawn_app().await;
    let f = app.franchise_with("Café Segments", program()).await;
    let loyal = app.enrol_id(&f, "+33611110001").await;
    let at_risk = app.enrol_id(&f, "+33611110002").await;
    let lapsed = app.enrol_id(&f, "+33611110003").await;
    let big = app.enrol_id(&f, "+33611110004").await;
    for (i, ago) in [2, 1, 0].iter().enumerate() {
        buy(&app, &f, &format!("l-{i}"), &loyal, 500, *ago).await;
    }
    buy(&app, &f, "r-1", &at_risk, 500, 70).await;
    buy(&app, &f, "r-2", &at_risk, 500, 69).await;
    buy(&app, &f, "x-1", &lapsed, 500, 100).await;
    buy(&app, &f, "b-1", &big, 25_000, 0).await;

    // The till sees each member's segments.
    for (m, want) in [
        (&loyal, vec!["new", "loyal"]),
        (&at_risk, vec!["new", "at_risk"]),
        (&lapsed, vec!["new", "lapsed"]),
        (&big, vec!["new", "big-spenders"]),
    ] {
        let status = app.status(&f, m).await;
        assert_eq!(names(&status["segments"]), want, "{m}");
    }

    // Sizes now, and day by day (the last 30 days by default, today last).
    let sizes = get_json(
        &app,
        &format!("/v1/franchises/{}/segments", f.id),
        &f.hq_key,
    )
    .await;
    let got: Vec<(&str, &str, i64)> = sizes["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| {
            let series = s["series"].as_array().expect("series");
            assert_eq!(series.len(), 30);
            assert_eq!(
                series[29]["size"], s["size"],
                "today's size is the size now"
            );
            (
                s["name"].as_str().unwrap(),
                s["kind"].as_str().unwrap(),
                s["size"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("new", "built_in", 4),
            ("loyal", "built_in", 1),
            ("at_risk", "built_in", 1),
            ("lapsed", "built_in", 1),
            ("big-spenders", "custom", 1)
        ]
    );
    let path = format!(
        "/v1/franchises/{}/segments?from=2026-01-01&to=2026-01-03",
        f.id
    );
    let range = get_json(&app, &path, &f.hq_key).await;
    assert_eq!(range["segments"][0]["series"].as_array().unwrap().len(), 3);

    // The dashboard shows each segment now, before the range and at its end.
    let now = loyalty_domain::Timestamp(jiff::Timestamp::now().as_millisecond()).day();
    let (week_ago, today) = (loyalty_domain::Day(now.0 - 6).iso(), now.iso());
    let path = format!(
        "/v1/franchises/{}/dashboard?from={week_ago}&to={today}",
        f.id
    );
    let dash = get_json(&app, &path, &f.hq_key).await;
    assert_eq!(
        dash["segments"][0],
        json!({"name": "new", "members": 4, "members_at_start": 0, "members_at_end": 4})
    );
    assert_eq!(dash["segments"].as_array().map(Vec::len), Some(5));

    // The export: masked phones by default, in full when asked, paged.
    let exports = loyalty_core::metrics::metrics()
        .segment_exports
        .with_label_values(&["full"]);
    let full_before = exports.get();
    let path = format!("/v1/franchises/{}/segments/at_risk/members", f.id);
    let page = get_json(&app, &path, &f.hq_key).await;
    assert_eq!(page["phone"], "masked");
    assert_eq!(page["members"].as_array().unwrap().len(), 1);
    let m = &page["members"][0];
    assert_eq!(m["member_id"], json!(at_risk));
    assert_eq!(m["phone"], "+33*******02");
    assert_eq!((&m["visits"], &m["tier"]), (&json!(2), &json!("Bronze")));
    assert!(page["next_after"].is_null());
    let full = get_json(&app, &format!("{path}?phones=full"), &f.hq_key).await;
    assert_eq!(full["members"][0]["phone"], "+33611110002");
    assert_eq!(exports.get(), full_before + 1, "the full export is counted");
    let all = export_all(&app, &f, "new", 1).await;
    let ids: BTreeSet<&str> = all.iter().filter_map(|m| m["member_id"].as_str()).collect();
    let want: BTreeSet<&str> = [&loyal, &at_risk, &lapsed, &big]
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(ids, want, "every new member once, one a page");
    assert!(all
        .iter()
        .all(|m| m["phone"].as_str().unwrap().contains("*******")));

    // Problems: an unknown segment, a bad query.
    let unknown = format!("/v1/franchises/{}/segments/vip/members", f.id);
    assert_problem(
        app.get(&unknown, &f.hq_key).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    for q in [
        "limit=0",
        "limit=501",
        "phones=yes",
        "after=not%20an%20id",
        "sort=name",
    ] {
        let r = app.get(&format!("{path}?{q}"), &f.hq_key).await;
        assert_problem(r, StatusCode::BAD_REQUEST, "invalid-query").await;
    }
    for q in [
        "from=2026-13-01",
        "from=2026-01-05&to=2026-01-01",
        "from=2020-01-01&to=2026-01-01",
    ] {
        let r = app
            .get(&format!("/v1/franchises/{}/segments?{q}", f.id), &f.hq_key)
            .await;
        assert_problem(r, StatusCode::BAD_REQUEST, "invalid-query").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_for_hq_keys_of_the_franchise_only() {
    let app = spawn_app().await;
    let f = app.franchise_with("Café Export", program()).await;
    let other = app.franchise_with("Café Voisin", program()).await;
    let m = app.enrol_id(&f, "+33611110009").await;
    buy(&app, &f, "p-1", &m, 500, 0).await;
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", f.id),
            &f.hq_key,
            &json!({"role": "hq_read_only"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let read_only = r.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let sizes = format!("/v1/franchises/{}/segments", f.id);
    let export = format!("/v1/franchises/{}/segments/new/members", f.id);

    // A read-only HQ key reads the sizes, not the members; a store key neither.
    get_json(&app, &sizes, &read_only).await;
    assert_problem(
        app.get(&export, &read_only).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    for path in [&sizes, &export] {
        let r = app.get(path, &f.store_key).await;
        assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    }
    // Another franchise's HQ key learns nothing, not even that the segment exists.
    for path in [&sizes, &export] {
        let r = app.get(path, &other.hq_key).await;
        let body = assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
        assert!(!body.to_string().contains(&m));
    }
    // Its own export holds only its members (none).
    let mine = get_json(
        &app,
        &format!("/v1/franchises/{}/segments/new/members", other.id),
        &other.hq_key,
    )
    .await;
    assert_eq!(mine["members"], json!([]));

    // A program without segments lists none, and has no segment to export.
    let plain = app.franchise("Café Sans Segments").await;
    let v = get_json(
        &app,
        &format!("/v1/franchises/{}/segments", plain.id),
        &plain.hq_key,
    )
    .await;
    assert_eq!(v["segments"], json!([]));
    let r = app
        .get(
            &format!("/v1/franchises/{}/segments/new/members", plain.id),
            &plain.hq_key,
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let status = app.status(&f, &m).await;
    assert_eq!(names(&status["segments"]), ["new"]);
}

/// The member's segments as the till reads them (from the hot cache).
async fn cached_segments(w: &World, m: &loyalty_domain::MemberId) -> Option<Vec<String>> {
    let cached = w.cache.status(m).await.ok()??;
    let v: Value = serde_json::from_slice(&cached.json).ok()?;
    Some(
        names(&v["segments"])
            .into_iter()
            .map(str::to_owned)
            .collect(),
    )
}

/// Polls until the member's cached segments are `want`, for at most 60 s.
async fn until_segments(w: &World, m: &loyalty_domain::MemberId, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = cached_segments(w, m).await;
        if got.as_deref().is_some_and(|g| g == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {want:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time alone moves a member from new to nothing, to at-risk, to lapsed: the scheduler
/// advances it on each day its segments change (a manual clock moved by months), the status
/// shows it, and the sizes follow day by day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_moves_members_between_segments_without_an_event() {
    let mut program = serde_json::to_value(Program::demo()).unwrap();
    program["segments"] = json!({});
    let program: Program = serde_json::from_value(program).unwrap();
    let w = World::with_program(Backend::Embedded, &program)
        .await
        .unwrap();
    let t0 = now();
    let clock = Arc::new(ManualClock::new(t0));
    let mut node = w.node_with(
        "a",
        EngineConfig {
            max_batch: 256,
            scheduler: SchedulerConfig {
                every: Duration::from_millis(10),
                batch: 64,
                clock: Arc::clone(&clock) as _,
            },
            ..EngineConfig::default()
        },
    );
    w.enrol(1).await;
    let m = w.member(0);
    for n in 0..2 {
        let mut env = w.envelope(
            format!("p-{n}"),
            PosCommand::Purchase {
                member_id: Some(m.clone()),
                amount_cents: Cents::new(500).unwrap(),
                currency: Currency::parse("EUR").unwrap(),
                items: Vec::new(),
            },
        );
        env.occurred_at = Some(t0);
        w.send(env).await;
    }
    until_segments(&w, &m, &["new"]).await;
    for (days, want) in [(31, &[][..]), (61, &["at_risk"][..]), (91, &["lapsed"][..])] {
        clock.set(Timestamp(t0.0 + days * DAY_MS));
        until_segments(&w, &m, want).await;
    }
    let day0 = t0.day();
    let (from, to) = (
        loyalty_domain::Day(day0.0 - 1),
        loyalty_domain::Day(day0.0 + 95),
    );
    let sizes =
        loyalty_core::segments::segment_sizes(w.store.as_ref(), &w.franchise, &program, from, to)
            .await
            .unwrap();
    let size_on = |name: &str, day: u32| {
        let s = sizes.segments.iter().find(|s| s.name == name).unwrap();
        s.series[(day - from.0) as usize].size
    };
    for (name, now) in [("new", 0), ("loyal", 0), ("at_risk", 0), ("lapsed", 1)] {
        let s = sizes.segments.iter().find(|s| s.name == name).unwrap();
        assert_eq!(s.size, now, "{name} now");
    }
    assert_eq!(size_on("new", day0.0 - 1), 0);
    assert_eq!(size_on("new", day0.0 + 29), 1, "new for 30 days");
    assert_eq!(size_on("new", day0.0 + 30), 0);
    assert_eq!(size_on("at_risk", day0.0 + 59), 0);
    assert_eq!(
        size_on("at_risk", day0.0 + 60),
        1,
        "at risk after 60 days away"
    );
    assert_eq!(size_on("at_risk", day0.0 + 90), 0);
    assert_eq!(size_on("lapsed", day0.0 + 90), 1, "lapsed after 90");
    node.stop();
}
