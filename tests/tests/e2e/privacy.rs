//! Privacy (README "Privacy"): a member's data exported, and erased through the API.
//!
//! The export holds the profile, the state, the status and the whole ledger of that member and
//! nothing of another; it is an attachment no cache keeps, HQ's (read-only too) only, and
//! another franchise's HQ gets 404. The erasure goes through the log to the member's actor: the
//! phone, name and birthday leave the store's state and the export, the balance and ledger stay,
//! a second request is a replay (and two at once erase once), the cached status says `erased`,
//! the phone is found no more, the member takes no more commands (re-enrolment included: 409
//! `member-erased`), and `loyalty audit` finds the erased member clean.

use std::collections::BTreeSet;
use std::sync::Arc;

use loyalty_core::audit::{audit, AuditOptions};
use loyalty_core::ports::{HotCache, StateStore};
use loyalty_core::programs::ProgramCache;
use loyalty_domain::{MemberId, Phone};
use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DOC: &str = include_str!("../../../libs/gateway/src/openapi.json");
const PHONE: &str = "+33655507001";
const NAME: &str = "Zélie Privée";
const BIRTHDAY: &str = "1988-02-29";
const OTHER_PHONE: &str = "+33655507002";
const EMAIL: &str = "zelie.privee@example.fr";

/// A member of `f` with a name and a birthday, two purchases and a redemption; and another
/// member of `f` with a purchase of its own. Returns both member ids and the first's QR token.
/// Consent is an object of booleans: anything else is refused and enrols no one.
#[tokio::test]
async fn a_consent_that_is_not_an_object_of_booleans_is_refused() {
    let app = spawn_app().await;
    let f = app.franchise("Privacy consent").await;
    for consent in [
        json!([true, false]),
        json!("yes"),
        json!({"sms": "yes"}),
        json!({"fax": true}),
    ] {
        let body = json!({"phone": "+33612340777", "consent": consent});
        let r = app
            .post("/v1/members?wait_ms=5000", &f.store_key, &body)
            .await;
        assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
    }
    let r = app
        .post(
            "/v1/members?wait_ms=5000",
            &f.store_key,
            &json!({"phone": "+33612340777"}),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "no one was enrolled before"
    );
}

async fn members(app: &TestApp, f: &TestFranchise) -> (String, String, String) {
    let r = app
        .post(
            "/v1/members?wait_ms=5000",
            &f.store_key,
            &json!({"phone": PHONE, "name": NAME, "birthday": BIRTHDAY,
                    "consent": {"sms": true}, "email": EMAIL}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let e: Value = r.json().await.unwrap();
    let member = e["member_id"].as_str().unwrap().to_owned();
    let qr = e["qr_token"].as_str().unwrap().to_owned();
    for (i, cents) in [12_000, 2_550].into_iter().enumerate() {
        let r = app
            .purchase(f, &format!("priv-buy-{i}"), &member, cents)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = app
        .post(
            "/v1/redemptions",
            &f.store_key,
            &json!({"event_id": "priv-redeem-0", "member_id": member, "reward_id": "free-coffee"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let other = app.enrol(f, OTHER_PHONE).await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app.purchase(f, "other-buy-0", &other, 999).await;
    assert_eq!(r.status(), StatusCode::OK);
    (member, other, qr)
}

async fn export(app: &TestApp, key: &str, member: &str) -> reqwest::Response {
    app.get(&format!("/v1/members/{member}/export"), key).await
}

async fn erase(app: &TestApp, key: &str, member: &str) -> reqwest::Response {
    app.post(
        &format!("/v1/members/{member}/erasure?wait_ms=5000"),
        key,
        &json!({}),
    )
    .await
}

/// A read-only HQ key of `f`.
async fn read_only_key(app: &TestApp, f: &TestFranchise) -> String {
    let r = app
        .post(
            &format!("/v1/franchises/{}/api-keys", f.id),
            &f.hq_key,
            &json!({"role": "hq_read_only"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    v["api_key"].as_str().unwrap().to_owned()
}

fn required(schema: &str) -> BTreeSet<String> {
    let d: Value = serde_json::from_str(DOC).unwrap();
    d["components"]["schemas"][schema]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

async fn erasures_counted(app: &TestApp) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("loyalty_member_erasures_total "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

async fn audit_clean(app: &TestApp) {
    let store: Arc<dyn StateStore> = app.store.clone();
    let programs = ProgramCache::new(Arc::clone(&store));
    let cache: &dyn HotCache = app.cache.as_ref();
    let report = audit(
        store.as_ref(),
        &programs,
        Some(cache),
        &AuditOptions::default(),
    )
    .await
    .unwrap();
    assert!(report.members >= 1, "{report:?}");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_holds_everything_of_the_member_and_nothing_else() {
    let app = spawn_app().await;
    let f = app.franchise("Privacy export").await;
    let (member, other, _) = members(&app, &f).await;

    let r = export(&app, &f.hq_key, &member).await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(
        h["content-disposition"],
        format!("attachment; filename=\"member-{member}.json\"").as_str()
    );
    assert_eq!(h["content-type"], "application/json");
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys(&v), required("MemberExport"), "the documented fields");
    assert_eq!(v["format"], "loyalty-member-export/v1");
    assert_eq!(v["member_id"], member.as_str());
    assert_eq!(v["franchise"]["id"], f.id.as_str());
    assert_eq!(v["franchise"]["program_version"], 1);
    assert_eq!(v["enrolled_store"], f.store_id.as_str());
    assert_eq!(
        v["profile"],
        json!({"phone": PHONE, "name": NAME, "birthday": BIRTHDAY,
               "consent": {"sms": true, "email": false}, "email": EMAIL}),
        "the consent and the address given at enrolment are kept with the profile"
    );
    assert_eq!(
        (&v["erased"], &v["erased_at"]),
        (&json!(false), &json!(null))
    );
    // The state: balance, lots, tier, stamps, vouchers, counters.
    let state = &v["state"];
    // 50 (signup) + 120 + 25 − 100 (a free coffee).
    assert_eq!(state["points"], 95);
    assert_eq!(state["points_earned"], 195);
    assert_eq!(state["points_redeemed"], 100);
    assert_eq!(state["stamps"], 2);
    assert_eq!(state["visits"], 2);
    assert_eq!(state["spend_cents"], 14_550);
    assert_eq!(state["tier"], "Bronze");
    for k in ["lots", "vouchers", "window", "last_seq", "version", "clock"] {
        assert!(state.get(k).is_some(), "state.{k} in {state}");
    }
    assert!(state.get("profile").is_none(), "the profile once, above");
    assert_eq!(v["status"], app.status(&f, &member).await);
    // The whole ledger, oldest first: what the ledger API pages, reversed.
    let mut ledger = app.ledger(&f, &member).await;
    ledger.reverse();
    assert_eq!(v["ledger"], Value::Array(ledger.clone()));
    assert_eq!(ledger.len(), 4, "signup, two purchases, a redemption");
    let sum: i64 = ledger.iter().map(|e| e["points"].as_i64().unwrap()).sum();
    assert_eq!(sum, 95, "the balance is the sum of the ledger");
    // Nothing of the other member.
    for theirs in [other.as_str(), &OTHER_PHONE[1..], "other-buy-0"] {
        assert!(!text.contains(theirs), "the export holds {theirs}");
    }

    // Read-only HQ reads it too; a store key may not; another franchise's HQ finds nothing.
    let ro = read_only_key(&app, &f).await;
    assert_eq!(export(&app, &ro, &member).await.status(), StatusCode::OK);
    assert_problem(
        export(&app, &f.store_key, &member).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let g = app.franchise("Privacy elsewhere").await;
    for key in [&g.hq_key, &read_only_key(&app, &g).await] {
        let p = assert_problem(
            export(&app, key, &member).await,
            StatusCode::NOT_FOUND,
            "unknown-member",
        )
        .await;
        assert!(!p.to_string().contains(PHONE));
    }
    assert_problem(
        export(&app, ADMIN_KEY, &member).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_problem(
        export(&app, &f.hq_key, "m-no-such-member").await,
        StatusCode::NOT_FOUND,
        "unknown-member",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_removes_the_personal_data_and_keeps_the_books() {
    let app = spawn_app().await;
    let f = app.franchise("Privacy erasure").await;
    let (member, other, qr) = members(&app, &f).await;
    let id = MemberId::parse(&member).unwrap();
    let before = app.store.member(&id).await.unwrap().unwrap();
    let ledger_before = app.store.ledger(&id, None, 500).await.unwrap();
    let export_before: Value = export(&app, &f.hq_key, &member).await.json().await.unwrap();
    let counted = erasures_counted(&app).await;

    // Not by a store key, a read-only HQ key, the admin, or another franchise's HQ.
    let ro = read_only_key(&app, &f).await;
    for key in [f.store_key.as_str(), &ro, ADMIN_KEY] {
        assert_problem(
            erase(&app, key, &member).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    let g = app.franchise("Privacy elsewhere").await;
    assert_problem(
        erase(&app, &g.hq_key, &member).await,
        StatusCode::NOT_FOUND,
        "unknown-member",
    )
    .await;
    assert_problem(
        erase(&app, &f.hq_key, "m-no-such-member").await,
        StatusCode::NOT_FOUND,
        "unknown-member",
    )
    .await;
    assert!(app
        .store
        .member(&id)
        .await
        .unwrap()
        .unwrap()
        .erased_at
        .is_none());

    let r = erase(&app, &f.hq_key, &member).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "erased");
    assert_eq!(v["replayed"], false);
    assert_eq!(v["event_id"], format!("erase.{member}"));
    assert_eq!(v["member"]["erased"], true);
    assert_eq!(v["member"]["points"], 95);
    assert_eq!(keys(&v), required("Erasure"));
    let erased_at = v["erased_at"].clone();
    assert!(erased_at.as_i64().is_some());

    // The store's state: no phone, name or birthday; the books as they were.
    let after = app.store.member(&id).await.unwrap().unwrap();
    assert!(after.profile.phone.is_erased());
    assert_eq!(after.profile.phone.as_str(), Phone::ERASED);
    assert_eq!(
        (&after.profile.name, &after.profile.birthday),
        (&None, &None)
    );
    assert_eq!(after.erased_at.map(|t| t.0), erased_at.as_i64());
    assert_eq!(after.version, before.version + 1);
    assert_eq!(
        (after.points, &after.lots, after.last_seq, &after.vouchers),
        (
            before.points,
            &before.lots,
            before.last_seq,
            &before.vouchers
        )
    );
    let stored = serde_json::to_string(&after).unwrap();
    for personal in [&PHONE[1..], NAME, BIRTHDAY, EMAIL] {
        assert!(!stored.contains(personal), "the state holds {personal}");
    }
    assert_eq!(
        app.store.ledger(&id, None, 500).await.unwrap(),
        ledger_before
    );

    // The export says so, and still holds the books.
    let r = export(&app, &f.hq_key, &member).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    for personal in [&PHONE[1..], NAME, BIRTHDAY, EMAIL] {
        assert!(!text.contains(personal), "the export holds {personal}");
    }
    let x: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        x["profile"],
        json!({"phone": null, "name": null, "birthday": null, "consent": null, "email": null}),
        "the consent and the address go with the profile"
    );
    assert_eq!((&x["erased"], &x["erased_at"]), (&json!(true), &erased_at));
    assert_eq!(x["ledger"], export_before["ledger"]);
    assert_eq!(x["state"]["points"], export_before["state"]["points"]);
    assert_eq!(x["status"]["erased"], true);

    // The same request again: a replay, nothing changes.
    let r = erase(&app, &f.hq_key, &member).await;
    assert_eq!(r.status(), StatusCode::OK);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["replayed"], true);
    assert_eq!(again["erased_at"], erased_at);
    assert_eq!(app.store.member(&id).await.unwrap().unwrap(), after);
    assert_eq!(erasures_counted(&app).await, counted + 1.0, "one erasure");

    // The hot cache serves the erased status; the till and HQ still read it.
    let cached = app.cache.status(&id).await.unwrap().expect("cached");
    assert_eq!(cached.version, after.version);
    let s: Value = serde_json::from_slice(&cached.json).unwrap();
    assert_eq!((&s["erased"], &s["points"]), (&json!(true), &json!(95)));
    assert_eq!(app.status(&f, &member).await["erased"], true);
    assert_eq!(app.ledger(&f, &member).await.len(), ledger_before.len());

    // The phone and the card are no one's any more.
    for q in [
        format!("phone={}", PHONE.replace('+', "%2B")),
        format!("qr={qr}"),
    ] {
        assert_problem(
            app.get(&format!("/v1/members/lookup?{q}"), &f.store_key)
                .await,
            StatusCode::NOT_FOUND,
            "unknown-member",
        )
        .await;
    }
    assert_problem(
        app.get(&format!("/v1/members/{member}/card-link"), &f.store_key)
            .await,
        StatusCode::NOT_FOUND,
        "unknown-member",
    )
    .await;

    // No more commands: re-enrolment of the phone, purchases, redemptions, refunds.
    assert_problem(
        app.post(
            "/v1/members?wait_ms=5000",
            &f.store_key,
            &json!({"phone": PHONE, "name": NAME}),
        )
        .await,
        StatusCode::CONFLICT,
        "member-erased",
    )
    .await;
    assert_problem(
        app.purchase(&f, "after-erasure-0", &member, 1_000).await,
        StatusCode::CONFLICT,
        "member-erased",
    )
    .await;
    assert_problem(
        app.post(
            "/v1/purchases?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "after-erasure-1", "phone": PHONE,
                    "amount_cents": 1_000, "currency": "EUR"}),
        )
        .await,
        StatusCode::CONFLICT,
        "member-erased",
    )
    .await;
    assert_problem(
        app.post(
            "/v1/redemptions",
            &f.store_key,
            &json!({"event_id": "after-erasure-2", "member_id": member, "reward_id": "free-coffee"}),
        )
        .await,
        StatusCode::CONFLICT,
        "member-erased",
    )
    .await;
    assert_problem(
        app.post(
            "/v1/refunds?wait_ms=5000",
            &f.store_key,
            &json!({"event_id": "after-erasure-3", "purchase_event_id": "priv-buy-0", "amount_cents": 100}),
        )
        .await,
        StatusCode::CONFLICT,
        "member-erased",
    )
    .await;
    assert_eq!(app.store.member(&id).await.unwrap().unwrap(), after);

    // The other member is untouched.
    let o = app
        .store
        .member(&MemberId::parse(&other).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.profile.phone.as_str(), OTHER_PHONE);
    assert!(o.erased_at.is_none());
    assert_eq!(
        app.purchase(&f, "other-buy-1", &other, 500).await.status(),
        StatusCode::OK
    );

    audit_clean(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_erasures_at_once_erase_once() {
    let app = spawn_app().await;
    let f = app.franchise("Privacy race").await;
    let member = app.enrol(&f, PHONE).await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let counted = erasures_counted(&app).await;
    let (a, b) = tokio::join!(
        erase(&app, &f.hq_key, &member),
        erase(&app, &f.hq_key, &member)
    );
    let mut replayed = Vec::new();
    for r in [a, b] {
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        replayed.push(v["replayed"].as_bool().unwrap());
    }
    replayed.sort();
    assert_eq!(replayed, [false, true], "one erasure, one replay");
    assert_eq!(erasures_counted(&app).await, counted + 1.0);
    let s = app
        .store
        .member(&MemberId::parse(&member).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(s.profile.phone.is_erased());
    assert_eq!(s.version, 2, "enrolled, then erased once");
    audit_clean(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_past_its_deadline_is_applied_once() {
    let app = spawn_app().await;
    let f = app.franchise("Privacy accepted").await;
    let member = app.enrol(&f, PHONE).await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // `wait_ms=0`: 202 once durable in the log, applied regardless.
    let r = app
        .post(
            &format!("/v1/members/{member}/erasure?wait_ms=0"),
            &f.hq_key,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(keys(&v), required("ErasureAccepted"));
    assert_eq!(v["status"], "accepted");
    let id = MemberId::parse(&member).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app
        .store
        .member(&id)
        .await
        .unwrap()
        .unwrap()
        .erased_at
        .is_none()
    {
        assert!(std::time::Instant::now() < deadline, "never applied");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = erase(&app, &f.hq_key, &member).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["replayed"], true);
}

/// `loyalty audit` itself (the command, on a stopped node's data directory) finds an erased
/// member clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_audit_finds_an_erased_member_clean() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dev = loyalty_tests::DevProcess::start(data.path()).await?;
    let client = reqwest::Client::new();
    let (store, hq) = (dev.key("STORE1_KEY"), dev.key("HQ_KEY"));
    let r = client
        .post(format!("{}/v1/members?wait_ms=5000", dev.address))
        .bearer_auth(&store)
        .json(&json!({"phone": PHONE, "name": NAME, "birthday": BIRTHDAY}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "enrolment: {}", r.status());
    let member = r.json::<Value>().await?["member_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = client
        .post(format!("{}/v1/purchases?wait_ms=5000", dev.address))
        .bearer_auth(&store)
        .json(&json!({"event_id": "audit-erased-0", "member_id": member,
                      "amount_cents": 4_200, "currency": "EUR"}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "purchase: {}", r.status());
    let r = client
        .post(format!(
            "{}/v1/members/{member}/erasure?wait_ms=5000",
            dev.address
        ))
        .bearer_auth(&hq)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "erasure: {}", r.status());
    assert!(dev.stop()?, "loyalty dev exits 0 on SIGTERM");
    let dir = data.path().to_string_lossy().into_owned();
    let run = loyalty_tests::run_audit(&["--data-dir", &dir], &[])?;
    assert!(run.clean, "{}", run.stdout);
    Ok(())
}
