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
