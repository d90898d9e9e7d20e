//! README "Designing your program" works as written: each program block of that section is
//! read from README.md, installed in a fresh franchise, and the story told under it is played
//! through the API.

use loyalty_core::notify::Channel;
use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The JSON block after `<!-- program: {name} -->` in README.md.
fn readme_program(name: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let marker = format!("<!-- program: {name} -->\n```json\n");
    let start = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no program {name}"))
        + marker.len();
    let end = start + readme[start..].find("\n```").expect("the block ends");
    serde_json::from_str(&readme[start..end])
        .unwrap_or_else(|e| panic!("README program {name} is not JSON: {e}"))
}

async fn buy(app: &TestApp, f: &TestFranchise, body: Value) -> Value {
    let r = app
        .post("/v1/purchases?wait_ms=5000", &f.store_key, &body)
        .await;
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}: {answer}");
    answer
}

async fn spend(app: &TestApp, f: &TestFranchise, event: &str, m: &str, cents: i64) -> Value {
    let body =
        json!({ "event_id": event, "member_id": m, "amount_cents": cents, "currency": "EUR" });
    buy(app, f, body).await
}

fn available(status: &Value) -> Vec<&str> {
    let list = status["rewards_available"].as_array().unwrap();
    list.iter().map(|v| v.as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cafe_fills_its_stamp_card_and_names_its_regulars() {
    let app = spawn_app().await;
    let f = app
        .franchise_with("Café du Moulin", readme_program("cafe"))
        .await;
    let m = app.enrol_id(&f, "+33612340501").await;
    let mut last = Value::Null;
    for i in 1..=10 {
        last = spend(&app, &f, &format!("coffee-{i}"), &m, 280).await;
        if i == 5 {
            assert_eq!(
                last["member"]["tier"], "Habitué du Moulin",
                "five visits in the month"
            );
        }
    }
    assert_eq!(
        last["member"]["stamps"], 0,
        "the card is full and starts again"
    );
    assert_eq!(
        last["member"]["vouchers"],
        json!([{ "reward_id": "free-coffee", "count": 1 }])
    );
    let ledger = app.ledger(&f, &m).await;
    let moves: Vec<&Value> = ledger.iter().filter(|e| e["kind"] == "tier").collect();
    assert_eq!(moves.len(), 1, "{ledger:?}");
    assert_eq!(moves[0]["tier_change"]["reason"], "qualified");
    let r = app.redeem(&f, "free-1", &m, "free-coffee").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["member"]["vouchers"],
        json!([]),
        "the voucher is used, not points"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_salon_offers_its_upgrade_and_its_tiers() {
    let app = spawn_app().await;
    let program = readme_program("salon");
    let f = app.franchise_with("Salon Lumière", program.clone()).await;
    let m = app.enrol_id(&f, "+33612340502").await;
    let v = spend(&app, &f, "cut-1", &m, 6_000).await;
    assert_eq!(v["member"]["points"], 110);
    let v = spend(&app, &f, "cut-2", &m, 9_500).await;
    assert_eq!(v["member"]["points"], 205);
    assert_eq!(available(&v["member"]), ["soin-profond"]);
    let v = spend(&app, &f, "cut-3", &m, 4_000).await;
    assert_eq!(v["member"]["tier"], "Habituée");
    let v = spend(&app, &f, "cut-4", &m, 4_000).await;
    assert_eq!(
        v["member"]["points"],
        245 + 50,
        "125 % of 40 € on the fourth visit"
    );
    // The program reads back with its rules in full.
    let r = app
        .get(&format!("/v1/franchises/{}/program", f.id), &f.hq_key)
        .await;
    let stored: Value = r.json().await.unwrap();
    assert_eq!(
        stored["program"]["tier_qualification"],
        json!({ "metric": "visits", "window_days": null, "period": "quarter",
                "grace_days": 30, "one_tier_at_a_time": true })
    );
    assert_eq!(
        stored["program"]["birthday_reward"]["reward_id"],
        "soin-profond"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_boutique_earns_by_the_euro_and_converts_its_points() {
    let app = spawn_app().await;
    let f = app
        .franchise_with("Boutique Iconique", readme_program("boutique"))
        .await;
    let m = app.enrol_id(&f, "+33612340503").await;
    let v = spend(&app, &f, "socks", &m, 990).await;
    assert_eq!(
        v["member"]["points"], 100,
        "under the minimum basket: nothing earned"
    );
    let v = spend(&app, &f, "jacket", &m, 12_000).await;
    assert_eq!(v["member"]["points"], 700);
    assert_eq!(available(&v["member"]), ["tote-bag", "early-access"]);
    let r = app.redeem(&f, "early-1", &m, "early-access").await;
    assert_eq!(r.status(), StatusCode::OK);
    let p = assert_problem(
        app.redeem(&f, "early-2", &m, "early-access").await,
        StatusCode::CONFLICT,
        "redemption-limit-reached",
    )
    .await;
    assert_eq!(p["limit_per_member"], 1);
    // Jeans at 80 €: 400 points and 400 more for denim, 1 000 in all: a 10 € voucher.
    let body = json!({ "event_id": "jeans", "member_id": m, "amount_cents": 8_000,
        "currency": "EUR",
        "items": [{ "sku": "JEAN-501", "category": "denim", "quantity": 1, "amount_cents": 8_000 }] });
    let v = buy(&app, &f, body).await;
    assert_eq!(
        v["member"]["points"], 0,
        "the 1 000 points became the voucher"
    );
    assert_eq!(
        v["member"]["vouchers"],
        json!([{ "reward_id": "voucher-10", "count": 1 }])
    );
    let ledger = app.ledger(&f, &m).await;
    let detail = |d: &str| {
        ledger
            .iter()
            .find(|e| e["detail"] == d)
            .map(|e| e["points"].clone())
    };
    assert_eq!(detail("item_bonus:Denim"), Some(json!(400)));
    assert_eq!(detail("auto_voucher:voucher-10"), Some(json!(-1000)));
    // 500 € in the year: Trendsetter.
    let v = spend(&app, &f, "coat", &m, 30_000).await;
    assert_eq!(v["member"]["tier"], "Trendsetter");
}

/// README "A campaign walkthrough", steps 1, 2, 5 and 6: the welcome campaign fires at
/// enrolment with its points, its SMS goes out (to the `dev` sender) with the opt-out link,
/// headquarters read the results, and the link withdraws the SMS consent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cafe_s_welcome_campaign_texts_its_new_member_who_can_opt_out() {
    let app = loyalty_tests::spawn_app_with(|c| c.delivery_ms = 20).await;
    let f = app
        .franchise_with("Café du Moulin", readme_program("cafe-campaigns"))
        .await;
    let body = json!({"phone": "+33612340601", "name": "Ana", "consent": {"sms": true}});
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
        30,
        "10 for joining, 20 welcome"
    );
    let ledger = app.ledger(&f, &m).await;
    assert!(ledger
        .iter()
        .any(|e| e["detail"] == "campaign:bienvenue" && e["points"] == 20));
    // A member without consent: the points, no message.
    let silent = app.enrol_id(&f, "+33612340602").await;
    assert_eq!(app.status(&f, &silent).await["points"], 30);

    let sms = app
        .messages
        .iter()
        .find(|s| loyalty_core::notify::MessageSender::channel(s.as_ref()) == Channel::Sms)
        .expect("the dev SMS sender");
    let sent = tokio::time::timeout(std::time::Duration::from_secs(20), sms.wait_for(1))
        .await
        .expect("the welcome SMS is delivered");
    assert_eq!(
        sent.len(),
        1,
        "one message: the other member gave no consent"
    );
    let text = &sent[0].body;
    assert!(
        text.starts_with("Bienvenue Ana ! +20 points au Café du Moulin.\n\nhttp"),
        "{text}"
    );
    assert!(text.ends_with(&sent[0].opt_out_url));

    let r = app.get("/v1/campaigns", &f.hq_key).await;
    assert_eq!(r.status(), StatusCode::OK);
    let results: Value = r.json().await.unwrap();
    let welcome = &results["campaigns"][0];
    assert_eq!(welcome["id"], "bienvenue");
    assert_eq!(
        (welcome["fired"].clone(), welcome["messages"].clone()),
        (json!(2), json!(1))
    );

    // STOP through the link: the SMS consent is withdrawn.
    let r = app
        .client
        .post(&sent[0].opt_out_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let export: Value = app
        .get(&format!("/v1/members/{m}/export"), &f.hq_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(export["profile"]["consent"]["sms"], false);
}
