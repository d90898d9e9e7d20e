//! Concurrent program updates (`PUT /v1/franchises/{fid}/program`): never a 5xx. Through one
//! gateway they are applied one after the other with consecutive versions; an update that
//! loses the race for a version to another writer is a clear 409 `program-conflict` with
//! `Retry-After`, and changes nothing.

use std::collections::BTreeMap;

use futures::future::join_all;
use loyalty_core::ports::StateStore;
use loyalty_domain::{FranchiseId, Program};
use loyalty_tests::{assert_problem, demo_program, spawn_app};
use reqwest::StatusCode;
use serde_json::{json, Value};

const UPDATES: i64 = 16;

/// The demo program with its signup bonus set to `bonus` (tells the updates apart).
fn program_with_bonus(bonus: i64) -> Value {
    let mut p = demo_program();
    p["signup_bonus"] = json!(bonus);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_program_updates_are_serialized_or_refused_never_5xx() {
    let app = spawn_app().await;
    let f = app.franchise("Café Concurrent").await;
    let path = format!("/v1/franchises/{}/program", f.id);

    let puts = (0..UPDATES).map(|i| {
        let body = json!({ "program": program_with_bonus(100 + i) });
        let (app, path, key) = (&app, path.clone(), f.hq_key.clone());
        async move { (i, app.put(&path, &key, &body).await) }
    });
    // version -> the bonus of the update that got it.
    let mut won: BTreeMap<u64, i64> = BTreeMap::new();
    let mut refused = 0;
    for (i, r) in join_all(puts).await {
        match r.status() {
            StatusCode::OK => {
                let v: Value = r.json().await.expect("json");
                let version = v["program_version"].as_u64().expect("program_version");
                assert_eq!(v["program"]["signup_bonus"], 100 + i, "{v}");
                assert!(
                    won.insert(version, 100 + i).is_none(),
                    "version {version} answered twice"
                );
            }
            StatusCode::CONFLICT => {
                assert!(
                    r.headers().contains_key("retry-after"),
                    "409 without Retry-After"
                );
                assert_problem(r, StatusCode::CONFLICT, "program-conflict").await;
                refused += 1;
            }
            other => {
                let body = r.text().await.unwrap_or_default();
                panic!("update {i} answered {other}: {body}");
            }
        }
    }
    println!(
        "{UPDATES} concurrent updates: {} applied (versions {:?}), {refused} refused",
        won.len(),
        won.keys().collect::<Vec<_>>()
    );
    // Through one gateway they are serialized: every update applied, versions 2, 3, ...
    assert_eq!(refused, 0, "one gateway serializes its updates");
    let versions: Vec<u64> = won.keys().copied().collect();
    assert_eq!(versions, (2..2 + UPDATES as u64).collect::<Vec<_>>());

    // The current program is the one of the last update that was answered 200.
    let (last_version, last_bonus) = won.iter().next_back().map(|(v, b)| (*v, *b)).unwrap();
    let r = app.get(&path, &f.hq_key).await;
    assert_eq!(r.status(), StatusCode::OK);
    let current: Value = r.json().await.expect("json");
    assert_eq!(current["program_version"], last_version);
    assert_eq!(current["program"]["signup_bonus"], last_bonus);

    // A member enrolled now gets the last program's bonus.
    let e = app.enrol(&f, "+33600000077").await;
    assert_eq!(e["status"]["points"], last_bonus);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_loses_its_version_to_another_writer_is_a_409() {
    let app = spawn_app().await;
    let f = app.franchise("Café Raced").await;
    let path = format!("/v1/franchises/{}/program", f.id);

    // Another gateway has written version 2 of the program and not yet the franchise (it is
    // between its two writes, or died there).
    let fid = FranchiseId::parse(&f.id).expect("franchise id");
    let theirs: Program = serde_json::from_value(program_with_bonus(7)).expect("a valid program");
    app.store
        .put_program(&fid, 2, &theirs)
        .await
        .expect("the other writer's program");

    let r = app
        .put(
            &path,
            &f.hq_key,
            json!({ "program": program_with_bonus(9) }),
        )
        .await;
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let p = assert_problem(r, StatusCode::CONFLICT, "program-conflict").await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("version 2"),
        "{p}"
    );

    // Nothing changed: still version 1, the program it was created with.
    let r = app.get(&path, &f.hq_key).await;
    assert_eq!(r.status(), StatusCode::OK);
    let current: Value = r.json().await.expect("json");
    assert_eq!(current["program_version"], 1);
    assert_eq!(current["program"]["signup_bonus"], 50);
}

/// Issue 14, defect 8: after a program change, every member's status follows it at once (not
/// at their next event), and a voucher for a reward that left the catalogue is still honoured.
#[tokio::test]
async fn statuses_follow_a_program_change_and_vouchers_outlive_their_reward() {
    let app = spawn_app().await;
    let f = app.franchise("Café Changing").await;
    let member = app.enrol(&f, "+33655555555").await;
    let id = member["member_id"].as_str().expect("member id").to_owned();
    for i in 0..10 {
        let r = app.purchase(&f, &format!("p-{i}"), &id, 500).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let before = app.status(&f, &id).await;
    assert_eq!(before["stamp_card_size"], 10, "{before}");
    assert_eq!(
        before["vouchers"],
        json!([{"reward_id": "free-coffee", "count": 1}])
    );

    // The coffee leaves the catalogue; the card now gives a pastry after 6 stamps.
    let mut program = demo_program();
    program["rewards"] = json!([{"id": "free-pastry", "name": "Free pastry", "cost_points": 150}]);
    program["stamp_card"] = json!({"size": 6, "reward_id": "free-pastry"});
    let path = format!("/v1/franchises/{}/program", f.id);
    let r = app
        .put(&path, &f.hq_key, &json!({ "program": program }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // No event since: the status follows the program anyway.
    let after = app.status(&f, &id).await;
    assert_eq!(after["stamp_card_size"], 6, "{after}");
    assert_eq!(after["version"], before["version"], "no event was applied");
    let available: Vec<&str> = after["rewards_available"]
        .as_array()
        .expect("rewards_available")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert_eq!(available, vec!["free-coffee"], "{after}");

    // The voucher is redeemed once; then the coffee is unknown.
    let redeem =
        |event: &str| json!({"event_id": event, "member_id": id, "reward_id": "free-coffee"});
    let r = app
        .post("/v1/redemptions?wait_ms=5000", &f.store_key, &redeem("r-1"))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let r = app
        .post("/v1/redemptions?wait_ms=5000", &f.store_key, &redeem("r-2"))
        .await;
    assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "unknown-reward").await;
    let last = app.status(&f, &id).await;
    assert_eq!(last["vouchers"], json!([]), "{last}");
}
