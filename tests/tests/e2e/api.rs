//! API scenarios through the real server (in process, port 0, its own data directory).

use futures::future::join_all;
use loyalty_tests::{assert_problem, demo_program, spawn_app, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn enrol_then_purchase_shows_points_tier_and_stamps() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;

    let r = app
        .post(
            "/v1/members",
            &f.store_key,
            &json!({"phone": "+33612345678", "name": "Alice"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let e: Value = r.json().await.unwrap();
    let m = e["member_id"].as_str().unwrap().to_owned();
    let qr = e["qr_token"].as_str().unwrap().to_owned();
    assert_eq!(e["created"], true);
    assert_eq!(e["status"]["points"], 50, "signup bonus");

    // The same phone again: the existing member, 200.
    let r = app
        .post(
            "/v1/members",
            &f.store_key,
            &json!({"phone": "+33612345678"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["member_id"], m.as_str());
    assert_eq!(again["created"], false);

    let r = app.purchase(&f, "p-1", &m, 1234).await;
    assert_eq!(r.status(), StatusCode::OK);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["status"], "applied");
    assert_eq!(p["outcome"]["points_earned"], 12);
    assert_eq!(p["member"]["points"], 62);

    let s = app.status(&f, &m).await;
    assert_eq!(s["points"], 62);
    assert_eq!(s["tier"], "Bronze");
    assert_eq!(s["next_tier"]["name"], "Silver");
    assert_eq!(s["next_tier"]["remaining"], 25000 - 1234);
    assert_eq!(s["stamps"], 1);
    assert_eq!(s["stamp_card_size"], 10);
    assert_eq!(s["visits"], 1);
    assert_eq!(s["spend_cents"], 1234);

    // Big enough to reach Silver: earned at Bronze, then the tier moves.
    let r = app.purchase(&f, "p-2", &m, 30000).await;
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["outcome"]["points_earned"], 300);
    assert_eq!(p["member"]["tier"], "Silver");
    assert_eq!(
        p["member"]["rewards_available"],
        json!(["free-coffee", "free-pastry"])
    );

    for (q, v) in [
        ("phone=%2B33612345678", "phone"),
        (&*format!("qr={qr}"), "qr"),
    ] {
        let r = app
            .get(&format!("/v1/members/lookup?{q}"), &f.store_key)
            .await;
        assert_eq!(r.status(), StatusCode::OK, "lookup by {v}");
        let s: Value = r.json().await.unwrap();
        assert_eq!(s["member_id"], m.as_str());
        assert_eq!(s["points"], 362);
    }
    // HQ may look members up too.
    let r = app.get(&format!("/v1/members/{m}"), &f.hq_key).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_replayed_event_is_applied_once() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol(&f, "+33600000001").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let first: Value = app
        .purchase(&f, "dup-1", &m, 1000)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["replayed"], false);
    // Resent with and without waiting, concurrently: one effect.
    let resends = (0..6).map(|i| {
        let path = if i % 2 == 0 {
            "/v1/purchases?wait_ms=5000"
        } else {
            "/v1/purchases"
        };
        app.post(
            path,
            &f.store_key,
            json!({"event_id": "dup-1", "member_id": m, "amount_cents": 1000, "currency": "EUR"}),
        )
    });
    for r in join_all(resends).await {
        assert!(
            r.status() == StatusCode::OK || r.status() == StatusCode::ACCEPTED,
            "{}",
            r.status()
        );
        if r.status() == StatusCode::OK {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["replayed"], true);
            assert_eq!(v["outcome"], first["outcome"]);
        }
    }
    let s = app.status(&f, &m).await;
    assert_eq!(s["points"], 60);
    assert_eq!(s["visits"], 1);
    let ledger = app.ledger(&f, &m).await;
    assert_eq!(
        ledger.iter().filter(|e| e["event_id"] == "dup-1").count(),
        1
    );

    // Same id, different body: refused, nothing changes.
    let r = app
        .post(
            "/v1/purchases?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "dup-1", "member_id": m, "amount_cents": 999, "currency": "EUR"}),
        )
        .await;
    assert_problem(r, StatusCode::CONFLICT, "idempotency-conflict").await;
    assert_eq!(app.status(&f, &m).await, s);
}

#[tokio::test]
async fn concurrent_purchases_for_one_member_are_all_counted() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol(&f, "+33600000002").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let n = 60;
    let sends = (0..n).map(|i| {
        let path = if i % 3 == 0 { "/v1/purchases?wait_ms=5000" } else { "/v1/purchases" };
        app.post(path, &f.store_key, json!({"event_id": format!("c-{i}"), "member_id": m, "amount_cents": 100 + i, "currency": "EUR"}))
    });
    for r in join_all(sends).await {
        assert!(r.status().is_success(), "{}", r.status());
    }
    // Waiting on the last one orders us after all of them (same member, same partition).
    let last: Value = app
        .purchase(&f, "c-last", &m, 100)
        .await
        .json()
        .await
        .unwrap();
    let expected_spend: i64 = (0..n).map(|i| 100 + i).sum::<i64>() + 100;
    let expected_points: i64 = 50 + (0..n).map(|i| (100 + i) / 100).sum::<i64>() + 1;
    assert_eq!(last["member"]["spend_cents"], expected_spend);
    assert_eq!(last["member"]["visits"], n + 1);
    assert_eq!(last["member"]["points"], expected_points);
    assert_eq!(last["member"]["stamps"], (n + 1) % 10);
    let vouchers = &last["member"]["vouchers"];
    assert_eq!(vouchers[0]["count"], (n + 1) / 10, "{vouchers}");
    // The ledger names every event once; the balance is the sum of the ledger.
    let ledger = app.ledger(&f, &m).await;
    let sum: i64 = ledger.iter().map(|e| e["points"].as_i64().unwrap()).sum();
    assert_eq!(sum, expected_points);
    let mut ids: Vec<&str> = ledger
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "an event appears twice in the ledger");
}

#[tokio::test]
async fn redemption_with_too_few_points_is_409_and_changes_nothing() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol(&f, "+33600000003").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.status(&f, &m).await;
    let r = app
        .post(
            "/v1/redemptions",
            &f.store_key,
            &json!({"event_id": "r-1", "member_id": m, "reward_id": "free-coffee"}),
        )
        .await;
    let p = assert_problem(r, StatusCode::CONFLICT, "insufficient-points").await;
    assert_eq!(p["needed"], 100);
    assert_eq!(p["available"], 50);
    assert_eq!(app.status(&f, &m).await, before);
    assert_eq!(app.ledger(&f, &m).await.len(), 1, "only the signup bonus");

    // With enough points it applies and spends them; a voucher goes before points.
    app.purchase(&f, "big", &m, 10000).await;
    let r = app
        .post(
            "/v1/redemptions",
            &f.store_key,
            &json!({"event_id": "r-2", "member_id": m, "reward_id": "free-coffee"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["points_spent"], 100);
    assert_eq!(v["member"]["points"], 50);
    for i in 0..9 {
        app.purchase(&f, &format!("s-{i}"), &m, 0).await;
        app.purchase(&f, &format!("t-{i}"), &m, 1).await;
    }
    let s = app.status(&f, &m).await;
    assert_eq!(s["vouchers"][0]["reward_id"], "free-coffee", "{s}");
    let r = app
        .post(
            "/v1/redemptions",
            &f.store_key,
            &json!({"event_id": "r-3", "member_id": m, "reward_id": "free-coffee"}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["used_voucher"], true);
    assert_eq!(v["member"]["points"], s["points"]);
}

#[tokio::test]
async fn refunds_reverse_points_and_are_bounded() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol(&f, "+33600000004").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.purchase(&f, "buy", &m, 5000).await;
    let r = app
        .post(
            "/v1/refunds?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "rf-1", "purchase_event_id": "buy", "amount_cents": 2500}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["points_reversed"], 25);
    assert_eq!(v["member"]["points"], 75);
    assert_eq!(v["member"]["spend_cents"], 2500);
    let r = app
        .post(
            "/v1/refunds?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "rf-2", "purchase_event_id": "buy", "amount_cents": 2501}),
        )
        .await;
    assert_problem(r, StatusCode::CONFLICT, "refund-exceeds-purchase").await;
    let r = app
        .post(
            "/v1/refunds?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "rf-3", "purchase_event_id": "nope", "amount_cents": 1}),
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-purchase").await;
    assert_eq!(app.status(&f, &m).await["points"], 75);
}

#[tokio::test]
async fn anonymous_sales_are_accepted_and_kept() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let r = app
        .post(
            "/v1/purchases?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "anon-1", "amount_cents": 700, "currency": "EUR"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["type"], "anonymous_sale");
    assert_eq!(v["member"], Value::Null);
    let r = app
        .post(
            "/v1/refunds",
            &f.store_key,
            &json!({"event_id": "anon-rf", "purchase_event_id": "anon-1", "amount_cents": 100}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "anonymous-refund").await;
}

#[tokio::test]
async fn a_program_change_applies_to_later_events_only() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol(&f, "+33600000005").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v: Value = app
        .purchase(&f, "before", &m, 1000)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["outcome"]["points_earned"], 10);

    let mut program = demo_program();
    program["points_per_unit"] = json!(5);
    let r = app
        .put(
            &format!("/v1/franchises/{}/program", f.id),
            &f.hq_key,
            &json!({"program": program}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["program_version"], 2);

    let v: Value = app
        .purchase(&f, "after", &m, 1000)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["outcome"]["points_earned"], 50);
    // The earlier event keeps what it earned (a replay shows the original outcome).
    let v: Value = app
        .purchase(&f, "before", &m, 1000)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["replayed"], true);
    assert_eq!(v["outcome"]["points_earned"], 10);

    let mut bad = demo_program();
    bad["tiers"] = json!([{"name": "Gold", "threshold": 0, "multiplier_pct": 200}, {"name": "Bronze", "threshold": 0, "multiplier_pct": 100}]);
    let r = app
        .put(
            &format!("/v1/franchises/{}/program", f.id),
            &f.hq_key,
            &json!({"program": bad}),
        )
        .await;
    let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    assert!(p["detail"].as_str().unwrap().contains("tiers"), "{p}");
    let mut bad = demo_program();
    bad["stamp_card"]["reward_id"] = json!("no-such-reward");
    let r = app
        .post(
            "/v1/franchises",
            ADMIN_KEY,
            &json!({"name": "X", "program": bad}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let mut bad = demo_program();
    bad["signup_bonus"] = json!(-5);
    let r = app
        .post(
            "/v1/franchises",
            ADMIN_KEY,
            &json!({"name": "X", "program": bad}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
}

#[tokio::test]
async fn keys_act_only_within_their_franchise_and_role() {
    let app = spawn_app().await;
    let a = app.franchise("Franchise A").await;
    let b = app.franchise("Franchise B").await;
    let mb = app.enrol(&b, "+33600000006").await;
    let mb_id = mb["member_id"].as_str().unwrap().to_owned();
    let mb_qr = mb["qr_token"].as_str().unwrap().to_owned();
    app.purchase(&b, "b-buy", &mb_id, 5000).await;
    let b_before = app.status(&b, &mb_id).await;

    // Reads of B's member with A's keys: 404, never B's data.
    for key in [&a.store_key, &a.hq_key] {
        let r = app.get(&format!("/v1/members/{mb_id}"), key).await;
        assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
        let r = app
            .get(&format!("/v1/members/lookup?qr={mb_qr}"), key)
            .await;
        assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
        let r = app
            .get("/v1/members/lookup?phone=%2B33600000006", key)
            .await;
        assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    }
    let r = app
        .get(&format!("/v1/members/{mb_id}/ledger"), &a.hq_key)
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    // Writes aimed at B with A's keys: 404, nothing changes.
    let r = app
        .post(
            "/v1/purchases",
            &a.store_key,
            &json!({"event_id": "x1", "member_id": mb_id, "amount_cents": 100, "currency": "EUR"}),
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    let r = app
        .post(
            "/v1/purchases",
            &a.store_key,
            &json!({"event_id": "x1b", "qr": mb_qr, "amount_cents": 100, "currency": "EUR"}),
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    let r = app
        .post(
            "/v1/redemptions",
            &a.store_key,
            &json!({"event_id": "x2", "member_id": mb_id, "reward_id": "free-coffee"}),
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    let r = app
        .post(
            "/v1/refunds",
            &a.store_key,
            &json!({"event_id": "x3", "purchase_event_id": "b-buy", "amount_cents": 100}),
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-purchase").await;
    let r = app
        .put(
            &format!("/v1/franchises/{}/program", b.id),
            &a.hq_key,
            &json!({"program": demo_program()}),
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let r = app
        .get(&format!("/v1/franchises/{}/program", b.id), &a.hq_key)
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let r = app
        .post(
            &format!("/v1/franchises/{}/stores", b.id),
            &a.hq_key,
            &json!({"name": "Intruder"}),
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    // The same phone enrolled at A is a different member of A.
    let ma = app.enrol(&a, "+33600000006").await;
    assert_eq!(ma["created"], true);
    assert_ne!(ma["member_id"], mb_id.as_str());
    assert_eq!(app.status(&b, &mb_id).await, b_before);

    // Roles.
    let r = app
        .post(
            "/v1/franchises",
            &a.store_key,
            &json!({"name": "X", "program": demo_program()}),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            "/v1/franchises",
            &a.hq_key,
            &json!({"name": "X", "program": demo_program()}),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            "/v1/purchases",
            &a.hq_key,
            &json!({"event_id": "x4", "amount_cents": 100, "currency": "EUR"}),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .get(&format!("/v1/members/{mb_id}/ledger"), &b.store_key)
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app.get(&format!("/v1/members/{mb_id}"), ADMIN_KEY).await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .get(&format!("/v1/members/{mb_id}"), "lk_store_notakey")
        .await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = app
        .client
        .get(app.url(&format!("/v1/members/{mb_id}")))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The key is checked before the body is read: no key, bad body → 401.
    let r = app
        .client
        .post(app.url("/v1/purchases"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn two_tills_enrolling_one_phone_at_once_get_one_member() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let r = app
        .post(
            &format!("/v1/franchises/{}/stores", f.id),
            &f.hq_key,
            &json!({"name": "Store 2"}),
        )
        .await;
    let store2: Value = r.json().await.unwrap();
    let key2 = store2["api_key"].as_str().unwrap().to_owned();
    let enrolments = (0..8).map(|i| {
        let key: &str = if i % 2 == 0 { &f.store_key } else { &key2 };
        app.post("/v1/members", key, json!({"phone": "+33600000042"}))
    });
    let mut ids = Vec::new();
    let mut created = 0;
    for r in join_all(enrolments).await {
        assert!(
            r.status() == StatusCode::CREATED || r.status() == StatusCode::OK,
            "{}",
            r.status()
        );
        let v: Value = r.json().await.unwrap();
        if v["created"] == true {
            created += 1;
        }
        ids.push(v["member_id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one member");
    assert_eq!(created, 1, "created once");
    assert_eq!(
        app.status(&f, &ids[0]).await["points"],
        50,
        "one signup bonus"
    );
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_changes_nothing() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let m = app.enrol(&f, "+33600000007").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.status(&f, &m).await;
    let purchase = |body: Value| app.post("/v1/purchases?wait_ms=1000", &f.store_key, body);

    let r = app
        .client
        .post(app.url("/v1/purchases"))
        .bearer_auth(&f.store_key)
        .header("content-type", "application/json")
        .body("{\"event_id\": \"x\", ")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::BAD_REQUEST, "malformed-json").await;
    let r =
        purchase(json!({"event_id": "n1", "member_id": m, "amount_cents": -5, "currency": "EUR"}))
            .await;
    let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    assert!(p["detail"].as_str().unwrap().contains("negative"), "{p}");
    let r =
        purchase(json!({"event_id": "n2", "member_id": m, "amount_cents": 1.5, "currency": "EUR"}))
            .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let r =
        purchase(json!({"event_id": "n3", "member_id": m, "amount_cents": 100, "currency": "USD"}))
            .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "currency-mismatch").await;
    let r = purchase(
        json!({"event_id": "bad id!", "member_id": m, "amount_cents": 100, "currency": "EUR"}),
    )
    .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let r = purchase(json!({"event_id": "n4", "member_id": m, "amount_cents": 100, "currency": "EUR", "extra": 1})).await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let r = purchase(json!({"event_id": "n5", "member_id": "mnosuchmember", "amount_cents": 100, "currency": "EUR"})).await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    let r = purchase(
        json!({"event_id": "n6", "phone": "+33699999999", "amount_cents": 100, "currency": "EUR"}),
    )
    .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    let r = purchase(json!({"event_id": "n7", "member_id": m, "phone": "+33600000007", "amount_cents": 100, "currency": "EUR"})).await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let r = purchase(json!({"event_id": "n8", "member_id": m, "amount_cents": 100, "currency": "EUR", "occurred_at": "yesterday"})).await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let r = app
        .post(
            "/v1/purchases?wait_ms=6000",
            &f.store_key,
            &json!({"event_id": "n9", "member_id": m, "amount_cents": 100, "currency": "EUR"}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let r = purchase(json!({"event_id": "n10", "member_id": m, "amount_cents": 100, "currency": "EUR", "pad": "x".repeat(20_000)})).await;
    assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    let r = app
        .client
        .post(app.url("/v1/purchases"))
        .bearer_auth(&f.store_key)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    )
    .await;
    let r = app
        .post(
            "/v1/redemptions",
            &f.store_key,
            &json!({"event_id": "n11", "member_id": m, "reward_id": "golden-unicorn"}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "unknown-reward").await;
    for phone in [
        "0612345678",
        "+33 6 12 34 56 78",
        "+0612345678",
        "",
        "+1234",
    ] {
        let r = app
            .post("/v1/members", &f.store_key, &json!({"phone": phone}))
            .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    }
    let r = app
        .post(
            "/v1/members",
            &f.store_key,
            &json!({"phone": "+33600000099", "birthday": "31/12/1990"}),
        )
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let r = app.get("/v1/members/lookup", &f.store_key).await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    let r = app.get("/v1/no/such/route", &f.store_key).await;
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;

    assert_eq!(
        app.status(&f, &m).await,
        before,
        "bad input changed the member"
    );
    assert_eq!(app.ledger(&f, &m).await.len(), 1);
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let f = app.franchise("Café A").await;
    app.enrol(&f, "+33600000008").await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("loyalty_events_applied_total{kind=\"enrol\"}"),
        "{text}"
    );
    assert!(text.contains("loyalty_http_requests_total"));
}

#[tokio::test]
async fn a_flushed_cache_is_read_through_and_rebuilt_by_the_admin() {
    let app = spawn_app().await;
    let f = app.franchise("Café A").await;
    let mut members = Vec::new();
    for i in 0..5 {
        let m = app.enrol(&f, &format!("+3360000020{i}")).await["member_id"]
            .as_str()
            .unwrap()
            .to_owned();
        app.purchase(&f, &format!("fl-{i}"), &m, 1000 + i).await;
        members.push(m);
    }
    let before = app.status(&f, &members[0]).await;
    app.cache.clear();
    assert!(app.cache.is_empty());
    // Reads keep answering from the store (and fill the cache back one by one).
    assert_eq!(app.status(&f, &members[0]).await, before);
    assert_eq!(app.cache.len(), 1);
    app.cache.clear();
    let r = app
        .post("/v1/admin/cache/rebuild", &f.hq_key, json!({}))
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post("/v1/admin/cache/rebuild", ADMIN_KEY, json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["rebuilt"], 5);
    assert_eq!(app.cache.len(), 5);
    assert_eq!(app.status(&f, &members[0]).await, before);
}

/// HQ fetches a store's POS topic signing secret (the same every time); a store key may not,
/// and another franchise's HQ, or an unknown store, is answered as unknown.
#[tokio::test]
async fn hq_fetches_a_stores_pos_signing_secret_and_no_one_else_does() {
    let app = spawn_app().await;
    let a = app.franchise("Franchise A").await;
    let b = app.franchise("Franchise B").await;
    let path = |f: &loyalty_tests::TestFranchise| {
        format!(
            "/v1/franchises/{}/stores/{}/pos-signing-secret",
            f.id, f.store_id
        )
    };
    let r = app.get(&path(&a), &a.hq_key).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body: serde_json::Value = r.json().await.unwrap();
    let secret = body["signing_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(body["store_id"], a.store_id.as_str());
    let again: serde_json::Value = app.get(&path(&a), &a.hq_key).await.json().await.unwrap();
    assert_eq!(
        again["signing_secret"],
        secret.as_str(),
        "the secret is stable"
    );
    let other: serde_json::Value = app.get(&path(&b), &b.hq_key).await.json().await.unwrap();
    assert_ne!(
        other["signing_secret"],
        secret.as_str(),
        "secrets differ per store"
    );

    let r = app.get(&path(&a), &a.store_key).await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app.get(&path(&a), &b.hq_key).await;
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    // B's store under A's franchise path: unknown.
    let r = app
        .get(
            &format!(
                "/v1/franchises/{}/stores/{}/pos-signing-secret",
                a.id, b.store_id
            ),
            &a.hq_key,
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
}

/// Generated from the OpenAPI document the server serves: every documented GET of a franchise
/// (`{fid}` in its path) answers the franchise's own HQ key, answers another franchise's HQ key
/// as if the franchise did not exist (404), answers a store of another franchise (`{sid}`, or a
/// `store` query parameter) as unknown (404), and refuses the roles its `x-roles` does not list
/// (403). Path parameters come from the franchise, required query parameters from their
/// `example` (a required one without an example is a bug of the document).
#[tokio::test]
async fn documented_franchise_reads_are_isolated_by_tenant_and_role() {
    let app = spawn_app().await;
    // With segments, so that a segment's path names one (`{segment}`: `new`).
    let mut program = loyalty_tests::demo_program();
    program["segments"] = json!({});
    let a = app.franchise_with("Franchise A", program.clone()).await;
    let b = app.franchise_with("Franchise B", program).await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resolve = |p: &Value| match p["$ref"].as_str() {
        Some(r) => doc
            .pointer(&r[1..])
            .unwrap_or_else(|| panic!("{r}"))
            .clone(),
        None => p.clone(),
    };
    // The id of each franchise's store key, for the paths that name a key (`{kid}`).
    let mut kids = std::collections::HashMap::new();
    for f in [&a, &b] {
        let keys: Value = app
            .get(&format!("/v1/franchises/{}/api-keys", f.id), &f.hq_key)
            .await
            .json()
            .await
            .unwrap();
        let kid = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["role"] == "store")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        kids.insert(f.id.clone(), kid);
    }
    let mut tested = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(op) = item.get("get").filter(|_| path.contains("{fid}")) else {
            continue;
        };
        let params: Vec<Value> = [&item["parameters"], &op["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(resolve)
            .collect();
        let has_store_query = params
            .iter()
            .any(|p| p["in"] == "query" && p["name"] == "store");
        // The URL of franchise `f`'s resource, naming `store` as the store.
        let url = |f: &loyalty_tests::TestFranchise, store: &str| {
            let mut query: Vec<String> = params
                .iter()
                .filter(|p| p["in"] == "query" && p["required"] == true)
                .map(|p| {
                    let name = p["name"].as_str().unwrap();
                    let example = p["example"].as_str().unwrap_or_else(|| {
                        panic!("{path}: required query parameter {name} has no example")
                    });
                    format!("{name}={example}")
                })
                .collect();
            if store != f.store_id && has_store_query {
                query.push(format!("store={store}"));
            }
            let mut url = path
                .replace("{fid}", &f.id)
                .replace("{sid}", store)
                .replace("{kid}", &kids[&f.id])
                .replace("{segment}", "new");
            if !query.is_empty() {
                url = format!("{url}?{}", query.join("&"));
            }
            assert!(
                !url.contains('{'),
                "{path}: a path parameter this test cannot fill"
            );
            url
        };
        let roles: Vec<&str> = op["x-roles"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no x-roles"))
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let own = url(&a, &a.store_id);
        if roles.contains(&"hq") {
            // The owner's HQ key is answered: the requests below are well-formed.
            let r = app.get(&own, &a.hq_key).await;
            assert!(
                r.status().is_success(),
                "GET {own} as its HQ: {}",
                r.status()
            );
            let r = app.get(&own, &b.hq_key).await;
            assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
            if path.contains("{sid}") || has_store_query {
                let r = app.get(&url(&a, &b.store_id), &a.hq_key).await;
                assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
            }
        }
        for (role, key) in [("store", &a.store_key), ("admin", &ADMIN_KEY.to_owned())] {
            if !roles.contains(&role) {
                let r = app.get(&own, key).await;
                assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
            }
        }
        tested.push(path.clone());
    }
    for p in [
        "/v1/franchises/{fid}/program",
        "/v1/franchises/{fid}/stores/{sid}/pos-signing-secret",
        "/v1/franchises/{fid}/dashboard",
        "/v1/franchises/{fid}/dashboard.csv",
        "/v1/franchises/{fid}/segments",
        "/v1/franchises/{fid}/segments/{segment}/members",
    ] {
        assert!(
            tested.iter().any(|t| t == p),
            "{p} not exercised: {tested:?}"
        );
    }
}
