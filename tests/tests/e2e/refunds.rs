//! Refunds and voids of issue 12 through the HTTP API in dev mode (README "Refunds and voids",
//! "Program versions"): ledger entries show the program version of their event; a full refund
//! takes back the purchase's stamp, its card's voucher (or says it was used), its visit and the
//! tier it gave; a partial refund takes points pro rata; a refund sent before its purchase (an
//! offline till) is held, answered `held` again on a replay, and applied when the purchase
//! arrives.

use loyalty_tests::{assert_problem, demo_program, spawn_app, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A café whose card has 2 stamps and whose Silver tier takes 2 visits in 30 days.
fn two_stamp_cafe() -> Value {
    let mut p = demo_program();
    p["signup_bonus"] = json!(0);
    p["stamp_card"]["size"] = json!(2);
    p["tier_qualification"] = json!({"metric": "visits", "window_days": 30});
    p["tiers"] = json!([{"name": "Bronze", "threshold": 0, "multiplier_pct": 100},
                        {"name": "Silver", "threshold": 2, "multiplier_pct": 200}]);
    p
}

async fn buy(app: &TestApp, f: &TestFranchise, id: &str, m: &str, cents: i64) -> Value {
    let r = app.purchase(f, id, m, cents).await;
    assert_eq!(r.status(), StatusCode::OK, "{id}");
    r.json().await.unwrap()
}

/// Posts a refund (waiting for its outcome); `body` gets the event ids.
async fn refund(app: &TestApp, f: &TestFranchise, id: &str, purchase: &str, body: Value) -> Value {
    let mut body = body;
    body["event_id"] = json!(id);
    body["purchase_event_id"] = json!(purchase);
    let r = app
        .post("/v1/refunds?wait_ms=5000", &f.store_key, &body)
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{id}");
    r.json().await.unwrap()
}

fn voucher_count(status: &Value) -> u64 {
    status["vouchers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["reward_id"] == "free-coffee")
        .map(|v| v["count"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_entries_show_the_program_version_before_and_after_a_change() {
    let app = spawn_app().await;
    let f = app.franchise("Café Versions").await;
    let m = app.enrol_id(&f, "+33612340101").await;
    buy(&app, &f, "v-before", &m, 1_000).await;
    let mut program = demo_program();
    program["points_per_unit"] = json!(5);
    let r = app
        .put(
            &format!("/v1/franchises/{}/program", f.id),
            &f.hq_key,
            &json!({ "program": program }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["program_version"], 2);
    buy(&app, &f, "v-after", &m, 1_000).await;
    // Refunded under version 2, the purchase of version 1 gives back what it earned then.
    let v = refund(&app, &f, "v-refund", "v-before", json!({})).await;
    assert_eq!(v["outcome"]["points_reversed"], 10);

    let ledger = app.ledger(&f, &m).await;
    let entry = |id: &str| {
        ledger
            .iter()
            .find(|e| e["event_id"] == id)
            .unwrap_or_else(|| panic!("an entry of {id}: {ledger:?}"))
    };
    let enrol = format!("enrol.{m}");
    assert_eq!(entry(&enrol)["program_version"], 1);
    assert_eq!(entry("v-before")["program_version"], 1);
    assert_eq!(entry("v-before")["points"], 10);
    assert_eq!(entry("v-after")["program_version"], 2);
    assert_eq!(entry("v-after")["points"], 50);
    assert_eq!(entry("v-refund")["program_version"], 2);
    assert_eq!(entry("v-refund")["kind"], "reverse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refund_takes_back_the_stamp_the_voucher_the_visit_and_the_tier() {
    let app = spawn_app().await;
    let f = app.franchise_with("Café Deux", two_stamp_cafe()).await;
    let m = app.enrol_id(&f, "+33612340102").await;
    buy(&app, &f, "full-1", &m, 1_000).await;
    let v = buy(&app, &f, "full-2", &m, 1_000).await;
    assert_eq!(v["outcome"]["voucher"], "free-coffee");
    assert_eq!(v["outcome"]["card_size"], 2);
    let s = &v["member"];
    assert_eq!((s["stamps"].as_u64(), voucher_count(s)), (Some(0), 1));
    assert_eq!(
        (s["visits"].as_u64(), s["tier"].as_str()),
        (Some(2), Some("Silver"))
    );

    // A void (no amount): all of it, with the unused voucher and its card's stamp.
    let v = refund(&app, &f, "full-2-void", "full-2", json!({})).await;
    let o = &v["outcome"];
    assert_eq!(o["type"], "refund");
    assert_eq!(o["amount_cents"], 1_000);
    assert_eq!(o["points_reversed"], 10);
    assert_eq!(o["visit_reversed"], true);
    assert_eq!(o["stamp_reversed"], true);
    assert_eq!(o["voucher_reversed"], "free-coffee");
    assert_eq!(o["voucher_kept"], Value::Null);
    let s = &v["member"];
    assert_eq!((s["stamps"].as_u64(), voucher_count(s)), (Some(1), 0));
    assert_eq!(
        (s["visits"].as_u64(), s["tier"].as_str()),
        (Some(1), Some("Bronze"))
    );
    assert_eq!(
        (s["points"].as_u64(), s["spend_cents"].as_u64()),
        (Some(10), Some(1_000))
    );
    // The same void again is its replay, not a second one.
    let again = refund(&app, &f, "full-2-void", "full-2", json!({})).await;
    assert_eq!(again["replayed"], true);
    assert_eq!(again["outcome"], v["outcome"]);
    // Nothing is left of it: a new void is refused.
    let r = app
        .post(
            "/v1/refunds?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "full-2-void-2", "purchase_event_id": "full-2"}),
        )
        .await;
    let p = assert_problem(r, StatusCode::CONFLICT, "refund-exceeds-purchase").await;
    assert_eq!(p["remaining_cents"], 0);

    // A voucher already used stays used; the refund says so and takes nothing else for it.
    let v = buy(&app, &f, "full-3", &m, 1_000).await;
    assert_eq!(voucher_count(&v["member"]), 1);
    let r = app
        .post(
            "/v1/redemptions?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "full-3-coffee", "member_id": m, "reward_id": "free-coffee"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let before: Value = app.status(&f, &m).await;
    let v = refund(
        &app,
        &f,
        "full-3-refund",
        "full-3",
        json!({"amount_cents": 1_000}),
    )
    .await;
    let o = &v["outcome"];
    assert_eq!(o["voucher_kept"], "free-coffee");
    assert_eq!(o["voucher_reversed"], Value::Null);
    assert_eq!(o["stamp_reversed"], false);
    assert_eq!(o["visit_reversed"], true);
    let s = &v["member"];
    assert_eq!(s["stamps"], before["stamps"]);
    assert_eq!(
        s["points"].as_u64().unwrap(),
        before["points"].as_u64().unwrap() - o["points_reversed"].as_u64().unwrap()
    );
    assert_eq!(
        s["visits"].as_u64(),
        Some(before["visits"].as_u64().unwrap() - 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_refund_takes_points_pro_rata_and_the_last_one_the_stamp_and_visit() {
    let app = spawn_app().await;
    let f = app.franchise("Café Partiel").await;
    let m = app.enrol_id(&f, "+33612340103").await;
    buy(&app, &f, "part-1", &m, 5_000).await;
    let v = refund(
        &app,
        &f,
        "part-1-a",
        "part-1",
        json!({"amount_cents": 2_000}),
    )
    .await;
    let o = &v["outcome"];
    assert_eq!(o["points_reversed"], 20);
    assert_eq!(o["visit_reversed"], false);
    assert_eq!(o["stamp_reversed"], false);
    assert_eq!(o["purchase"]["refunded_cents"], 2_000);
    let s = &v["member"];
    assert_eq!(s["points"], 50 + 50 - 20);
    assert_eq!(
        (s["stamps"].as_u64(), s["visits"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(s["spend_cents"], 3_000);
    // The rest of it: now the stamp and the visit go too.
    let v = refund(
        &app,
        &f,
        "part-1-b",
        "part-1",
        json!({"amount_cents": 3_000}),
    )
    .await;
    let o = &v["outcome"];
    assert_eq!(o["points_reversed"], 30);
    assert_eq!(o["visit_reversed"], true);
    assert_eq!(o["stamp_reversed"], true);
    assert_eq!(o["purchase"]["reversed_in_full"], true);
    let s = &v["member"];
    assert_eq!(s["points"], 50);
    assert_eq!(
        (s["stamps"].as_u64(), s["visits"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(s["spend_cents"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_before_its_purchase_is_held_and_applied_when_the_purchase_arrives() {
    let app = spawn_app().await;
    let f = app.franchise("Café Hors Ligne").await;
    let m = app.enrol_id(&f, "+33612340104").await;
    let other = app.enrol_id(&f, "+33612340105").await;
    let body = json!({"amount_cents": 400, "member_id": m});
    let v = refund(&app, &f, "till-9:0002", "till-9:0001", body.clone()).await;
    assert_eq!(v["replayed"], false);
    let held = v["outcome"].clone();
    assert_eq!(held["type"], "held");
    assert_eq!(held["purchase_event_id"], "till-9:0001");
    assert_eq!(held["amount_cents"], 400);
    assert!(held["lapses_at"].as_i64().unwrap() > 0);
    assert_eq!(v["member"]["points"], 50, "nothing moved yet");
    // Replayed, the refund answers `held` again.
    let v = refund(&app, &f, "till-9:0002", "till-9:0001", body.clone()).await;
    assert_eq!(v["replayed"], true);
    assert_eq!(v["outcome"], held);

    // The purchase arrives: the held refund applies within it.
    let v = buy(&app, &f, "till-9:0001", &m, 1_000).await;
    let o = &v["outcome"];
    assert_eq!(o["type"], "purchase");
    assert_eq!(o["points_earned"], 10);
    assert_eq!(o["refunded_cents"], 400);
    assert_eq!(o["reversed_points"], 4);
    assert_eq!(v["member"]["points"], 50 + 10 - 4);
    assert_eq!(v["member"]["spend_cents"], 600);
    let ledger = app.ledger(&f, &m).await;
    let reverse = ledger
        .iter()
        .find(|e| e["kind"] == "reverse")
        .expect("a reverse entry");
    assert_eq!(reverse["event_id"], "till-9:0002", "it names the refund");
    assert_eq!(reverse["points"], -4);
    assert_eq!(reverse["detail"], "refund:till-9:0001");
    // An outcome told never changes: the refund still answers `held`.
    let v = refund(&app, &f, "till-9:0002", "till-9:0001", body).await;
    assert_eq!(
        (v["replayed"].as_bool(), &v["outcome"]),
        (Some(true), &held)
    );
    // What is left can be refunded, no more.
    let r = app
        .post(
            "/v1/refunds?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "till-9:0003", "purchase_event_id": "till-9:0001",
                    "amount_cents": 601}),
        )
        .await;
    assert_problem(r, StatusCode::CONFLICT, "refund-exceeds-purchase").await;

    // Still refused: a purchase not applied with no member named; a known purchase of another
    // member; an event that is not a purchase.
    let refused = [
        json!({"event_id": "r-1", "purchase_event_id": "till-9:0099", "amount_cents": 1}),
        json!({"event_id": "r-2", "purchase_event_id": "till-9:0001", "amount_cents": 1,
               "member_id": other}),
        json!({"event_id": "r-3", "purchase_event_id": "till-9:0002", "amount_cents": 1,
               "member_id": m}),
    ];
    for body in refused {
        let r = app
            .post("/v1/refunds?wait_ms=5000", &f.store_key, &body)
            .await;
        assert_problem(r, StatusCode::NOT_FOUND, "unknown-purchase").await;
    }
    // A member named must be enrolled.
    let r = app
        .post(
            "/v1/refunds?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "r-4", "purchase_event_id": "till-9:0098",
                    "amount_cents": 1, "member_id": "m-not-enrolled"}),
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    let s = app.status(&f, &m).await;
    assert_eq!(s["points"], 56, "the refused refunds changed nothing");
}
