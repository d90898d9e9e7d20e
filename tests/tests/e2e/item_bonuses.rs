//! Item bonuses (README "Item bonuses") through every entry: HQ puts a program with
//! `item_bonuses`, a till sends purchases with `items` over HTTP and on the POS topic, and each
//! bonus is its own `item_bonus:<name>` earn entry, part of what the purchase earned. Items are
//! part of the event's content (another set under the same event id is a conflict), and bad
//! items are refused (422, or a dead letter `invalid`) without changing anything.

use std::time::Duration;

use bytes::Bytes;
use loyalty_core::identity::pos_signing_secret;
use loyalty_core::ports::{EventLog, StateStore};
use loyalty_core::pos_topic;
use loyalty_domain::{FranchiseId, MemberId, StoreId};
use loyalty_tests::{assert_problem, demo_program, spawn_app, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::{json, Value};

const POS_TOPIC: &str = "pos-events";
const POS_DLQ: &str = "pos-events-dlq";

/// The demo program with a café's item bonuses.
fn cafe_program() -> Value {
    let mut p = demo_program();
    p["item_bonuses"] = json!([
        { "name": "Beans", "categories": ["beans"], "points_per_item": 20 },
        { "name": "Pastry double", "categories": ["pastry"], "multiplier_pct": 200 },
        { "name": "Croissant of the month", "skus": ["CROI-AMANDE"], "points_per_item": 5,
          "multiplier_pct": 300 },
    ]);
    p
}

/// Two bags of beans, two pastries and a latte: 20 + 40 + 3 points for a Bronze member.
fn basket() -> Value {
    json!([
        { "sku": "BEANS-1KG", "category": "beans", "quantity": 2, "amount_cents": 1200 },
        { "sku": "PAIN-CHOC", "category": "pastry", "quantity": 2, "amount_cents": 300 },
        { "sku": "LATTE", "category": "drinks", "quantity": 1, "amount_cents": 450 },
    ])
}

async fn buy(app: &TestApp, f: &TestFranchise, body: Value) -> reqwest::Response {
    app.post("/v1/purchases?wait_ms=5000", &f.store_key, body)
        .await
}

/// The member's ledger entries of `event`, oldest first: `(kind, detail, points)`.
async fn entries_of(
    app: &TestApp,
    f: &TestFranchise,
    m: &str,
    event: &str,
) -> Vec<(String, String, i64)> {
    let mut out: Vec<(String, String, i64)> = app
        .ledger(f, m)
        .await
        .iter()
        .filter(|e| e["event_id"] == event)
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
                e["points"].as_i64().unwrap(),
            )
        })
        .collect();
    out.reverse();
    out
}

fn entry(kind: &str, detail: &str, points: i64) -> (String, String, i64) {
    (kind.into(), detail.into(), points)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_bonuses_through_the_api_are_ledger_entries_refunded_pro_rata() {
    let app = spawn_app().await;
    let f = app.franchise_with("Café Articles", cafe_program()).await;
    // The server answers the bonuses in full.
    let r = app
        .get(&format!("/v1/franchises/{}/program", f.id), &f.hq_key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(
        doc["program"]["item_bonuses"][0],
        json!({ "name": "Beans", "skus": null, "categories": ["beans"], "points_per_item": 20,
                "multiplier_pct": 100 })
    );
    let m = app.enrol_id(&f, "+33612340101").await;
    let purchase = json!({ "event_id": "ib-1", "member_id": m, "amount_cents": 2000,
                           "currency": "EUR", "items": basket() });
    let r = buy(&app, &f, purchase.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["points_earned"], 63, "{v}");
    assert_eq!(v["member"]["points"], 50 + 63, "{v}");
    assert_eq!(
        entries_of(&app, &f, &m, "ib-1").await,
        vec![
            entry("earn", "purchase", 20),
            entry("earn", "item_bonus:Beans", 40),
            entry("earn", "item_bonus:Pastry double", 3),
        ]
    );

    // The same request again is a replay; the same event id with other items (or none) is a
    // conflict, and changes nothing.
    let r = buy(&app, &f, purchase.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["replayed"], true);
    let mut other = purchase.clone();
    other["items"][0]["quantity"] = json!(3);
    let mut none = purchase.clone();
    none.as_object_mut().unwrap().remove("items");
    for body in [other, none] {
        assert_problem(
            buy(&app, &f, body).await,
            StatusCode::CONFLICT,
            "idempotency-conflict",
        )
        .await;
    }
    assert_eq!(app.status(&f, &m).await["points"], 50 + 63);

    // Half refunded: half of the 63 points, the bonuses included (floor of 31.5).
    let r = app
        .post(
            "/v1/refunds?wait_ms=5000",
            &f.store_key,
            json!({ "event_id": "ib-1-r", "purchase_event_id": "ib-1", "amount_cents": 1000 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"]["points_reversed"], 31, "{v}");
    assert_eq!(app.status(&f, &m).await["points"], 50 + 63 - 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_and_bad_bonuses_are_refused_with_their_reason_and_change_nothing() {
    let app = spawn_app().await;
    let f = app.franchise_with("Café Refus", cafe_program()).await;
    let m = app.enrol_id(&f, "+33612340102").await;
    let before = app.status(&f, &m).await;
    let line =
        |sku: &str, q: i64, cents: i64| json!({ "sku": sku, "quantity": q, "amount_cents": cents });
    for (items, detail) in [
        (
            json!([line("BEANS-1KG", 1, 1500), line("LATTE", 1, 501)]),
            "the items' amounts add up to 2001 cents, more than the purchase's amount_cents (2000)",
        ),
        (
            json!([line("BEANS-1KG", 0, 100)]),
            "items[0].quantity must be between 1 and 10000, got 0",
        ),
        (
            json!([line("BEANS 1KG", 1, 100)]),
            "items[0].sku must be 1 to 64 characters",
        ),
        (
            json!([line("A", 1, -1)]),
            "items[0].amount_cents must be between 0 and",
        ),
    ] {
        let p = assert_problem(
            buy(
                &app,
                &f,
                json!({ "event_id": "ib-bad", "member_id": m, "amount_cents": 2000,
                        "currency": "EUR", "items": items }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains(detail), "{p}");
    }
    assert_eq!(app.status(&f, &m).await, before, "nothing changed");
    // The event id was not used up.
    let r = buy(
        &app,
        &f,
        json!({ "event_id": "ib-bad", "member_id": m, "amount_cents": 2000, "currency": "EUR",
                "items": [line("CROI-AMANDE", 1, 250)] }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    // 20 points, and the croissant's 5 + 5 (triple on 2.50 €) rather than the pastry double.
    assert_eq!(v["outcome"]["points_earned"], 30, "{v}");

    // A bonus that names nothing is refused, naming the field, and the program stays.
    let mut bad = cafe_program();
    bad["item_bonuses"][1] = json!({ "name": "Nothing", "multiplier_pct": 200 });
    let path = format!("/v1/franchises/{}/program", f.id);
    let p = assert_problem(
        app.put(&path, &f.hq_key, json!({ "program": bad })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("item_bonuses[1] must name skus or categories"),
        "{p}"
    );
    let doc: Value = app.get(&path, &f.hq_key).await.json().await.unwrap();
    assert_eq!(doc["program_version"], 1);
}

/// Bounded wait for `member` to have `points` in the durable store.
async fn wait_points(app: &TestApp, member: &MemberId, points: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = app.store.member(member).await.unwrap();
        if s.as_ref().map(|s| s.points) == Some(points) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the member has {:?} points, not {points}",
            s.map(|s| s.points)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bounded wait for a dead letter of the POS topic whose payload has `event`; its headers.
async fn wait_dead_letter(app: &TestApp, event: &str) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let letters = app.log.read(POS_DLQ, 0, 0, 10_000).unwrap_or_default();
        if let Some(l) = letters
            .iter()
            .find(|l| String::from_utf8_lossy(&l.payload).contains(event))
        {
            return l
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter for {event}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_bonuses_through_the_pos_topic_and_bad_items_dead_lettered() {
    let app = spawn_app().await;
    let f = app.franchise_with("Café Flux", cafe_program()).await;
    let m = app.enrol_id(&f, "+33612340103").await;
    let mid = MemberId::parse(&m).unwrap();
    let fid = FranchiseId::parse(&f.id).unwrap();
    let sid = StoreId::parse(&f.store_id).unwrap();
    let secret = app.store.franchise(&fid).await.unwrap().unwrap().secret;
    let signing = pos_signing_secret(&secret, &sid);
    // A second ago, to the millisecond (as the platform keeps it).
    let at =
        jiff::Timestamp::from_millisecond(jiff::Timestamp::now().as_millisecond() - 1000).unwrap();
    let record = |event: &str, items: Value| {
        json!({ "type": "purchase", "franchise_id": f.id, "store_id": f.store_id,
                "event_id": event, "occurred_at": at.to_string(), "member_id": m,
                "amount_cents": 2000, "currency": "EUR", "items": items })
    };
    let send = |v: Value| {
        let payload = serde_json::to_vec(&v).unwrap();
        let sig = pos_topic::sign(&signing, &payload);
        let headers = vec![
            (
                pos_topic::SCHEMA_VERSION_HEADER.to_string(),
                Bytes::from_static(b"1"),
            ),
            (pos_topic::SIGNATURE_HEADER.to_string(), Bytes::from(sig)),
        ];
        let log = app.log.clone();
        let key = f.store_id.clone();
        async move {
            log.append(POS_TOPIC, key.as_bytes(), Bytes::from(payload), headers)
                .await
                .expect("append to the POS topic");
        }
    };
    // A bad record first: refused as a dead letter naming the reason, and nothing changes;
    // the good one behind it is applied.
    let too_much = json!([{ "sku": "BEANS-1KG", "category": "beans", "quantity": 1,
                            "amount_cents": 2001 }]);
    send(record("pos-ib-bad", too_much)).await;
    send(record("pos-ib-1", basket())).await;
    wait_points(&app, &mid, 50 + 63).await;
    let headers = wait_dead_letter(&app, "pos-ib-bad").await;
    let get = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("dlq-reason"), "invalid");
    assert!(
        get("dlq-detail").contains("the items' amounts add up to 2001 cents"),
        "{headers:?}"
    );
    assert_eq!(
        entries_of(&app, &f, &m, "pos-ib-1").await,
        vec![
            entry("earn", "purchase", 20),
            entry("earn", "item_bonus:Beans", 40),
            entry("earn", "item_bonus:Pastry double", 3),
        ]
    );
    assert!(entries_of(&app, &f, &m, "pos-ib-bad").await.is_empty());
    // The same record over HTTP is the same event: a replay, not a second earn.
    let r = buy(
        &app,
        &f,
        json!({ "event_id": "pos-ib-1", "member_id": m, "amount_cents": 2000,
                "currency": "EUR", "occurred_at": at.to_string(), "items": basket() }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["replayed"], true, "{v}");
    assert_eq!(app.status(&f, &m).await["points"], 50 + 63);
}
