//! The birthday reward through the API (README "Birthdays"): a member whose birthday month it
//! is gets it once, at enrolment already; one whose birthday is months away gets nothing yet;
//! bad settings are refused with their field. The rule over years, windows and time zones is
//! in the domain's property tests (libs/domain/tests/birthdays.rs).

use loyalty_tests::{assert_problem, spawn_app};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The demo program (UTC) with 100 points in the birthday month.
fn program() -> Value {
    let mut p = loyalty_tests::demo_program();
    p["time_zone"] = json!("UTC");
    p["birthday_reward"] = json!({ "points": 100, "window": "month" });
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birthday_month_gives_the_reward_once() {
    let app = spawn_app().await;
    let f = app.franchise_with("Café Anniversaire", program()).await;
    let (year, month, day) = loyalty_core::provisioning::now().day().ymd();
    let this_month = format!("1990-{month:02}-{day:02}");
    let far = format!("1990-{:02}-01", (month + 5) % 12 + 1);

    let body = json!({ "phone": "+33612340401", "birthday": this_month });
    let r = app
        .post("/v1/members?wait_ms=5000", &f.store_key, &body)
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let m = r.json::<Value>().await.unwrap()["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.status(&f, &m).await["points"],
        150,
        "50 to join, 100 for the birthday"
    );
    // A purchase later in the month gives no second reward.
    let r = app.purchase(&f, "buy-1", &m, 1_000).await;
    assert_eq!(r.status(), StatusCode::OK);
    let ledger = app.ledger(&f, &m).await;
    let birthday: Vec<&Value> = ledger
        .iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("birthday:"))
        })
        .collect();
    assert_eq!(birthday.len(), 1, "{ledger:?}");
    assert_eq!(
        (
            &birthday[0]["kind"],
            &birthday[0]["points"],
            &birthday[0]["detail"]
        ),
        (
            &json!("earn"),
            &json!(100),
            &json!(format!("birthday:{year}"))
        )
    );

    let body = json!({ "phone": "+33612340402", "birthday": far });
    let r = app
        .post("/v1/members?wait_ms=5000", &f.store_key, &body)
        .await;
    let other = r.json::<Value>().await.unwrap()["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.status(&f, &other).await["points"],
        50,
        "not their month"
    );

    let mut bad = program();
    bad["birthday_reward"] = json!({ "reward_id": "caviar" });
    let path = format!("/v1/franchises/{}/program", f.id);
    let r = app.put(&path, &f.hq_key, &json!({ "program": bad })).await;
    let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("birthday_reward.reward_id"),
        "{p}"
    );
}
