//! Tier rules through the API (README "Tiers"): the qualification's period, grace and
//! one-step settings are validated, stored and read back in the server's form; a tier move is
//! a `tier` ledger entry naming its reason (a purchase qualifies, its void takes it back).
//! Downgrades applied on time by the scheduler are in `scheduler.rs`, the rules themselves in
//! the domain's property tests (libs/domain/tests/tiers.rs).

use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn program(qualification: Value) -> Value {
    let mut p = loyalty_tests::demo_program();
    p["tier_qualification"] = qualification;
    p
}

async fn put_program(app: &TestApp, f: &TestFranchise, program: Value) -> reqwest::Response {
    let path = format!("/v1/franchises/{}/program", f.id);
    app.put(&path, &f.hq_key, &json!({ "program": program }))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_rules_are_validated_and_read_back_in_full() {
    let app = spawn_app().await;
    let f = app.franchise("Salon Niveaux").await;
    let q = json!({ "metric": "visits", "period": "quarter", "grace_days": 10,
        "one_tier_at_a_time": true });
    let r = put_program(&app, &f, program(q)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .get(&format!("/v1/franchises/{}/program", f.id), &f.hq_key)
        .await;
    let stored: Value = r.json().await.unwrap();
    assert_eq!(
        stored["program"]["tier_qualification"],
        json!({ "metric": "visits", "window_days": null, "period": "quarter",
            "grace_days": 10, "one_tier_at_a_time": true })
    );

    for (q, names) in [
        (
            json!({ "metric": "visits", "period": "year", "window_days": 30 }),
            "rolling period only",
        ),
        (json!({ "metric": "visits" }), "window_days is required"),
        (
            json!({ "metric": "visits", "window_days": 30, "grace_days": 400 }),
            "grace_days",
        ),
    ] {
        let r = put_program(&app, &f, program(q.clone())).await;
        let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains(names), "{q}: {detail}");
    }
    let r = put_program(
        &app,
        &f,
        program(json!({ "metric": "visits", "period": "week" })),
    )
    .await;
    let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("unknown variant `week`"),
        "{p}"
    );
    // Refusals changed nothing.
    let r = app
        .get(&format!("/v1/franchises/{}/program", f.id), &f.hq_key)
        .await;
    let now: Value = r.json().await.unwrap();
    assert_eq!(
        now["program"]["tier_qualification"],
        stored["program"]["tier_qualification"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_move_is_a_ledger_entry_with_its_reason() {
    let app = spawn_app().await;
    let q = json!({ "metric": "spend_cents", "period": "year" });
    let f = app.franchise_with("Boutique Niveaux", program(q)).await;
    let m = app.enrol(&f, "+33612340301").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 300 € reach Silver (250 €) at once.
    let r = app.purchase(&f, "buy-1", &m, 30_000).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["member"]["tier"], "Silver");
    let ledger = app.ledger(&f, &m).await;
    let tier: Vec<&Value> = ledger.iter().filter(|e| e["kind"] == "tier").collect();
    assert_eq!(tier.len(), 1, "{ledger:?}");
    assert_eq!(
        (&tier[0]["points"], &tier[0]["detail"], &tier[0]["event_id"]),
        (&json!(0), &json!("tier:qualified"), &json!("buy-1"))
    );
    assert_eq!(
        tier[0]["tier_change"],
        json!({ "from": "Bronze", "to": "Silver", "reason": "qualified" })
    );

    // Its void takes the progress back, and the tier with it.
    let body = json!({ "event_id": "void-1", "purchase_event_id": "buy-1" });
    let r = app
        .post("/v1/refunds?wait_ms=5000", &f.store_key, &body)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let status = app.status(&f, &m).await;
    assert_eq!(status["tier"], "Bronze");
    let ledger = app.ledger(&f, &m).await;
    assert_eq!(
        ledger[0]["tier_change"],
        json!({ "from": "Silver", "to": "Bronze", "reason": "refund" }),
        "newest first: {ledger:?}"
    );
    let sum: i64 = ledger.iter().map(|e| e["points"].as_i64().unwrap()).sum();
    assert_eq!(
        sum,
        status["points"].as_i64().unwrap(),
        "the balance is the ledger's sum"
    );
}
