//! The rewards rules of issue 12 through the API (README "Rewards"): a reward's validity dates
//! and per-member limit, and the cancellation of a redemption within the program's window
//! (`POST /v1/redemption-cancellations`), exactly once.

use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The demo program with a coffee once per member, a pastry whose dates are over, and
/// redemptions cancellable for 15 minutes.
fn program() -> Value {
    let mut p = loyalty_tests::demo_program();
    p["rewards"][0]["limit_per_member"] = json!(1);
    p["rewards"][1]["valid_from"] = json!("2019-12-01");
    p["rewards"][1]["valid_to"] = json!("2020-01-01");
    p["redemption_cancel_minutes"] = json!(15);
    p
}

async fn setup(app: &TestApp, name: &str, phone: &str) -> (TestFranchise, String) {
    let f = app.franchise_with(name, program()).await;
    let m = app.enrol(&f, phone).await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 50 points of signup bonus and 300 of the purchase.
    let r = app.purchase(&f, "buy-1", &m, 30_000).await;
    assert_eq!(r.status(), StatusCode::OK);
    (f, m)
}

async fn cancel(app: &TestApp, key: &str, event: &str, redemption: &str) -> reqwest::Response {
    let body = json!({ "event_id": event, "redemption_event_id": redemption });
    app.post("/v1/redemption-cancellations?wait_ms=5000", key, &body)
        .await
}

fn available(status: &Value) -> Vec<&str> {
    let list = status["rewards_available"].as_array().unwrap();
    list.iter().map(|v| v.as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reward_outside_its_dates_or_past_its_limit_is_refused_with_its_problem() {
    let app = spawn_app().await;
    let (f, m) = setup(&app, "Café Limites", "+33612340101").await;

    // The program reads back with its settings, in the server's form.
    let r = app
        .get(&format!("/v1/franchises/{}/program", f.id), &f.hq_key)
        .await;
    let stored: Value = r.json().await.unwrap();
    let rewards = &stored["program"]["rewards"];
    assert_eq!(rewards[0]["limit_per_member"], 1);
    assert_eq!(rewards[0]["valid_from"], Value::Null);
    assert_eq!(rewards[1]["valid_to"], "2020-01-01");
    assert_eq!(stored["program"]["redemption_cancel_minutes"], 15);

    // 350 points cover both, but the pastry's dates are over.
    assert_eq!(available(&app.status(&f, &m).await), ["free-coffee"]);
    let p = assert_problem(
        app.redeem(&f, "red-1", &m, "free-pastry").await,
        StatusCode::CONFLICT,
        "reward-not-valid",
    )
    .await;
    assert_eq!(
        (&p["valid_from"], &p["valid_to"]),
        (&json!("2019-12-01"), &json!("2020-01-01"))
    );
    assert_eq!(p["reward_id"], "free-pastry");
    // Recorded: the same request gets the same answer.
    assert_problem(
        app.redeem(&f, "red-1", &m, "free-pastry").await,
        StatusCode::CONFLICT,
        "reward-not-valid",
    )
    .await;

    let r = app.redeem(&f, "red-2", &m, "free-coffee").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["points_spent"], 100);
    assert_eq!(v["outcome"]["cancelled_by"], Value::Null);
    let taken = v["outcome"]["lots_taken"].as_array().unwrap();
    assert_eq!(
        taken
            .iter()
            .map(|l| l["points"].as_u64().unwrap())
            .sum::<u64>(),
        100
    );
    assert_eq!(v["member"]["points"], 250);
    assert!(
        available(&v["member"]).is_empty(),
        "the coffee's limit is reached"
    );

    let p = assert_problem(
        app.redeem(&f, "red-3", &m, "free-coffee").await,
        StatusCode::CONFLICT,
        "redemption-limit-reached",
    )
    .await;
    assert_eq!(p["limit_per_member"], 1);
    assert_eq!(
        app.status(&f, &m).await["points"],
        250,
        "refusals change nothing"
    );

    // A bad setting is refused with its field named, and changes nothing.
    let mut bad = program();
    bad["rewards"][0]["limit_per_member"] = json!(0);
    let path = format!("/v1/franchises/{}/program", f.id);
    let r = app.put(&path, &f.hq_key, &json!({ "program": bad })).await;
    let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("rewards[0].limit_per_member"),
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_gives_the_points_back_once_and_only_within_the_window() {
    let app = spawn_app().await;
    let (f, m) = setup(&app, "Café Annulations", "+33612340102").await;
    let r = app.redeem(&f, "red-1", &m, "free-coffee").await;
    assert_eq!(r.status(), StatusCode::OK);

    let r = cancel(&app, &f.store_key, "cancel-1", "red-1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let outcome = json!({ "type": "redemption_cancelled", "redemption_event_id": "red-1",
        "reward_id": "free-coffee", "points_returned": 100, "voucher_returned": false });
    assert_eq!(v["outcome"], outcome);
    assert_eq!(v["replayed"], false);
    assert_eq!(v["member"]["points"], 350);
    assert_eq!(
        available(&v["member"]),
        ["free-coffee"],
        "the limit is free again"
    );

    // The same request again: the first answer, nothing more given back.
    let r = cancel(&app, &f.store_key, "cancel-1", "red-1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!((&v["outcome"], &v["replayed"]), (&outcome, &json!(true)));
    // Another cancellation of it: refused, naming the first.
    let p = assert_problem(
        cancel(&app, &f.store_key, "cancel-2", "red-1").await,
        StatusCode::CONFLICT,
        "redemption-already-cancelled",
    )
    .await;
    assert_eq!(
        (&p["redemption_event_id"], &p["cancelled_by"]),
        (&json!("red-1"), &json!("cancel-1"))
    );
    assert_eq!(app.status(&f, &m).await["points"], 350);
    let ledger = app.ledger(&f, &m).await;
    let gave_back: Vec<&Value> = ledger.iter().filter(|e| e["points"] == 100).collect();
    assert_eq!(gave_back.len(), 1, "{ledger:?}");
    assert_eq!(
        (&gave_back[0]["points"], &gave_back[0]["detail"]),
        (&json!(100), &json!("cancel:red-1"))
    );
    assert_eq!(gave_back[0]["event_id"], "cancel-1");

    // Past the window (a redemption 20 minutes ago, by the till's clock): refused.
    let at = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(20);
    let body = json!({ "event_id": "red-old", "member_id": m, "reward_id": "free-coffee",
        "occurred_at": at.to_string() });
    let r = app
        .post("/v1/redemptions?wait_ms=5000", &f.store_key, &body)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let p = assert_problem(
        cancel(&app, &f.store_key, "cancel-3", "red-old").await,
        StatusCode::CONFLICT,
        "cancellation-window-closed",
    )
    .await;
    assert_eq!(p["cancel_minutes"], 15);
    assert_eq!(app.status(&f, &m).await["points"], 250);

    // No such redemption: a purchase's id, an unknown id, or another franchise's redemption.
    for id in ["buy-1", "red-none"] {
        let p = assert_problem(
            cancel(&app, &f.store_key, "cancel-4", id).await,
            StatusCode::NOT_FOUND,
            "unknown-redemption",
        )
        .await;
        assert_eq!(p["redemption_event_id"], id);
    }
    let other = app.franchise_with("Autre Café", program()).await;
    assert_problem(
        cancel(&app, &other.store_key, "cancel-5", "red-old").await,
        StatusCode::NOT_FOUND,
        "unknown-redemption",
    )
    .await;
    // A body with a field missing is the client's to fix.
    let r = app
        .post(
            "/v1/redemption-cancellations",
            &f.store_key,
            &json!({ "event_id": "x" }),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_voucher_is_credited_at_its_threshold_and_redeemed_for_no_points() {
    let app = spawn_app().await;
    let mut p = loyalty_tests::demo_program();
    p["rewards"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "id": "voucher-5", "name": "5 € off", "cost_points": 600 }));
    p["auto_vouchers"] = json!([{ "at_points": 500, "reward_id": "voucher-5" }]);
    let f = app.franchise_with("Boutique Bons", p).await;
    let m = app.enrol(&f, "+33612340103").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 50 + 1 200 points: two vouchers, 250 points left.
    let r = app.purchase(&f, "buy-1", &m, 120_000).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["points_earned"], 1_200);
    assert_eq!(v["member"]["points"], 250);
    let vouchers = v["member"]["vouchers"].as_array().unwrap();
    assert!(
        vouchers.contains(&json!({ "reward_id": "voucher-5", "count": 2 })),
        "{vouchers:?}"
    );
    let ledger = app.ledger(&f, &m).await;
    let auto: Vec<&Value> = ledger
        .iter()
        .filter(|e| e["detail"] == "auto_voucher:voucher-5")
        .collect();
    assert_eq!(auto.len(), 1, "{ledger:?}");
    assert_eq!(
        (&auto[0]["kind"], &auto[0]["points"]),
        (&json!("redeem"), &json!(-1_000))
    );

    let r = app.redeem(&f, "red-1", &m, "voucher-5").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (&v["outcome"]["used_voucher"], &v["outcome"]["points_spent"]),
        (&json!(true), &json!(0))
    );
    assert_eq!(v["member"]["points"], 250);

    // A program naming a reward it does not have is refused, the field named.
    let mut bad = loyalty_tests::demo_program();
    bad["auto_vouchers"] = json!([{ "at_points": 500, "reward_id": "voucher-5" }]);
    let path = format!("/v1/franchises/{}/program", f.id);
    let r = app.put(&path, &f.hq_key, &json!({ "program": bad })).await;
    let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("auto_vouchers[0].reward_id"),
        "{p}"
    );
}
