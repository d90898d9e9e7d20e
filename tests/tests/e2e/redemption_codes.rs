//! Single-use redemption codes through the API (README "Redemption codes"): a redemption with
//! `as_code` takes the points now and answers a code; a cashier consumes it at any store of
//! the franchise (`POST /v1/redemption-codes/consume`), once; cancelling the redemption voids
//! it; a forged or foreign code is unknown; unused at its expiry, the points come back on time
//! (the scheduler on a manual clock) and the till is told `code-expired`.

use std::sync::Arc;
use std::time::Duration;

use loyalty_core::command::PosCommand;
use loyalty_core::engine::scheduler::SchedulerConfig;
use loyalty_core::engine::EngineConfig;
use loyalty_core::identity::redemption_code;
use loyalty_core::metrics::metrics;
use loyalty_core::ports::{ManualClock, StateStore};
use loyalty_core::provisioning::now;
use loyalty_domain::{
    Cents, Currency, EventId, LedgerKind, Outcome, Program, RedemptionCodes, Rejection, RewardId,
    Timestamp,
};
use loyalty_tests::cluster::{Backend, World};
use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;

/// The demo program with codes valid a day and redemptions cancellable for 15 minutes.
fn program() -> Value {
    let mut p = loyalty_tests::demo_program();
    p["redemption_codes"] = json!({ "valid_days": 1 });
    p["redemption_cancel_minutes"] = json!(15);
    p
}

/// A franchise with the codes program, a member with 350 points, and a second store's key.
async fn setup(app: &TestApp, name: &str, phone: &str) -> (TestFranchise, String, String) {
    let f = app.franchise_with(name, program()).await;
    let m = app.enrol_id(&f, phone).await;
    let r = app.purchase(&f, "buy-1", &m, 30_000).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post(
            &format!("/v1/franchises/{}/stores", f.id),
            &f.hq_key,
            &json!({"name": "Store 2"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let store2: Value = r.json().await.unwrap();
    (f, m, store2["api_key"].as_str().unwrap().to_owned())
}

async fn redeem_code(app: &TestApp, f: &TestFranchise, event: &str, m: &str) -> reqwest::Response {
    let body =
        json!({ "event_id": event, "member_id": m, "reward_id": "free-coffee", "as_code": true });
    app.post("/v1/redemptions?wait_ms=5000", &f.store_key, &body)
        .await
}

async fn consume(app: &TestApp, key: &str, event: &str, code: &str) -> reqwest::Response {
    let body = json!({ "event_id": event, "code": code });
    app.post("/v1/redemption-codes/consume?wait_ms=5000", key, &body)
        .await
}

async fn ok(r: reqwest::Response) -> Value {
    let s = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_issued_consumed_once_at_another_store_and_replayed_the_same() {
    let app = spawn_app().await;
    let (f, m, store2) = setup(&app, "Café Codes", "+33612340201").await;

    let before = now();
    let a = ok(redeem_code(&app, &f, "code-1", &m).await).await;
    let code = a["outcome"]["code"]["code"].as_str().unwrap().to_owned();
    assert!(code.starts_with(&format!("{m}-")), "{code}");
    assert_eq!(code.len(), m.len() + 13);
    let expires = a["outcome"]["code"]["expires_at"].as_i64().unwrap();
    assert!((before.0 + DAY..=now().0 + DAY).contains(&expires), "{a}");
    assert_eq!(a["outcome"]["points_spent"], 100);
    assert_eq!(a["member"]["points"], 250, "taken at issue");
    assert_eq!(a["member"]["redemption_codes"][0]["code"], code.as_str());
    assert_eq!(
        a["member"]["redemption_codes"][0]["redemption_event_id"],
        "code-1"
    );
    // A resend is a replay with the same code.
    let again = ok(redeem_code(&app, &f, "code-1", &m).await).await;
    assert_eq!(again["replayed"], true);
    assert_eq!(again["outcome"]["code"]["code"], code.as_str());

    // The member's card page shows it, with its QR code.
    let r = app
        .get(&format!("/v1/members/{m}/card-link"), &f.store_key)
        .await;
    let link: Value = r.json().await.unwrap();
    let page = reqwest::Client::new()
        .get(link["url"].as_str().unwrap())
        .header("Accept-Language", "en")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("data-code=\"{code}\"")), "{html}");
    assert!(html.contains("My reward codes") && html.contains("Valid until"));
    assert!(html.contains("aria-label=\"QR code of the reward: Free coffee\""));

    // Consumed at the other store, typed in upper case: the reward to hand over.
    let used = ok(consume(&app, &store2, "scan-1", &code.to_uppercase()).await).await;
    assert_eq!(
        used["outcome"],
        json!({
            "type": "code_consumed",
            "redemption_event_id": "code-1",
            "reward_id": "free-coffee"
        })
    );
    assert_eq!(used["member"]["points"], 250, "nothing more is taken");
    assert!(used["member"].get("redemption_codes").is_none());
    // The same scan sent again: its answer again.
    let replay = ok(consume(&app, &store2, "scan-1", &code.to_uppercase()).await).await;
    assert_eq!(replay["replayed"], true);

    // Counted like every command (`loyalty_engine_commands_total`, by kind and result).
    let counted = metrics()
        .engine_commands
        .with_label_values(&["consume_code", "applied"])
        .get();
    assert!(counted >= 1, "{counted}");

    // A second scan: 409, with when and where it was used.
    let p = assert_problem(
        consume(&app, &f.store_key, "scan-2", &code).await,
        StatusCode::CONFLICT,
        "code-already-used",
    )
    .await;
    assert!(p["store_id"].as_str().unwrap().starts_with("s_"));
    assert_ne!(p["store_id"], f.store_id.as_str(), "the other store");
    assert!(p["used_at"].as_i64().unwrap() >= before.0);
    // Its redemption can no longer be cancelled.
    let body = json!({ "event_id": "cancel-1", "redemption_event_id": "code-1" });
    let r = app
        .post(
            "/v1/redemption-cancellations?wait_ms=5000",
            &f.store_key,
            &body,
        )
        .await;
    assert_problem(r, StatusCode::CONFLICT, "code-already-used").await;
    assert_eq!(app.status(&f, &m).await["points"], 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_cancelled_are_void_and_forged_or_foreign_codes_are_unknown() {
    let app = spawn_app().await;
    let (f, m, _) = setup(&app, "Café Annule", "+33612340202").await;
    let other = app.franchise_with("Autre Café", program()).await;
    let a = ok(redeem_code(&app, &f, "code-1", &m).await).await;
    let code = a["outcome"]["code"]["code"].as_str().unwrap().to_owned();

    // Forged (one character changed), not a code at all, or another franchise's: unknown,
    // and nothing about the member in the answer.
    let last = code.chars().last().unwrap();
    let forged = format!(
        "{}{}",
        &code[..code.len() - 1],
        if last == 'a' { 'b' } else { 'a' }
    );
    for (key, event, text) in [
        (&f.store_key, "scan-f", forged.as_str()),
        (&f.store_key, "scan-g", "not a code"),
        (&other.store_key, "scan-o", code.as_str()),
    ] {
        let p = assert_problem(
            consume(&app, key, event, text).await,
            StatusCode::NOT_FOUND,
            "unknown-code",
        )
        .await;
        let fields: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields.len(), 5, "only the problem's own fields: {p}");
        assert!(!p.to_string().contains(&m), "{p}");
    }
    assert_eq!(app.status(&f, &m).await["points"], 250);

    // Cancelled within the window: the points come back, the code is void.
    let body = json!({ "event_id": "cancel-1", "redemption_event_id": "code-1" });
    let c = app
        .post(
            "/v1/redemption-cancellations?wait_ms=5000",
            &f.store_key,
            &body,
        )
        .await;
    let c = ok(c).await;
    assert_eq!(c["outcome"]["points_returned"], 100);
    assert_eq!(c["member"]["points"], 350);
    assert!(c["member"].get("redemption_codes").is_none());
    let p = assert_problem(
        consume(&app, &f.store_key, "scan-1", &code).await,
        StatusCode::CONFLICT,
        "code-voided",
    )
    .await;
    assert_eq!(p["cancelled_by"], "cancel-1");
    assert_eq!(app.status(&f, &m).await["points"], 350, "given back once");

    // A program without codes: a typed refusal, nothing taken.
    let plain = app.franchise("Café Simple").await;
    let pm = app.enrol_id(&plain, "+33612340203").await;
    assert_eq!(
        app.purchase(&plain, "buy-1", &pm, 30_000).await.status(),
        StatusCode::OK
    );
    let body = json!({
        "event_id": "code-1", "member_id": pm, "reward_id": "free-coffee", "as_code": true
    });
    let r = app
        .post("/v1/redemptions?wait_ms=5000", &plain.store_key, &body)
        .await;
    assert_problem(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "redemption-codes-not-offered",
    )
    .await;
    assert_eq!(app.status(&plain, &pm).await["points"], 350);
}

/// Polls `check` until it holds (the engine's effects land asynchronously), for at most 60 s.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_unused_give_the_points_back_on_time_and_are_refused_as_expired() {
    let mut p = Program::demo();
    p.redemption_codes = Some(RedemptionCodes { valid_days: 1 });
    let w = World::with_program(Backend::Embedded, &p).await.unwrap();
    let t0 = now();
    let clock = Arc::new(ManualClock::new(t0));
    let mut node = w.node_with(
        "a",
        EngineConfig {
            max_batch: 256,
            scheduler: SchedulerConfig {
                every: Duration::from_millis(10),
                batch: 64,
                clock: Arc::clone(&clock) as _,
            },
            ..EngineConfig::default()
        },
    );
    w.enrol(1).await;
    let m = w.member(0);
    let buy = PosCommand::Purchase {
        member_id: Some(m.clone()),
        amount_cents: Cents::new(30_000).unwrap(),
        currency: Currency::parse("EUR").unwrap(),
        items: Vec::new(),
    };
    w.send(w.envelope("buy-1".into(), buy)).await;
    // What the gateway sends for `as_code`.
    let redemption = EventId::parse("code-1").unwrap();
    let code = redemption_code(&w.franchise.secret, &m, &redemption);
    let redeem = PosCommand::Redemption {
        member_id: m.clone(),
        reward_id: RewardId::parse("free-coffee").unwrap(),
        code: Some(code.clone()),
    };
    w.send(w.envelope("code-1".into(), redeem)).await;
    let points = || async {
        let s = w.cache.status(&m).await.unwrap();
        s.map(|s| serde_json::from_slice::<Value>(&s.json).unwrap()["points"].clone())
    };
    until("the code issued", || async {
        points().await == Some(json!(250))
    })
    .await;

    // A day and more later, with no event of the member's: the points come back on time.
    clock.set(Timestamp(t0.0 + 2 * DAY));
    until("the points came back", || async {
        points().await == Some(json!(350))
    })
    .await;
    let ledger = w.store.ledger(&m, None, 100).await.unwrap();
    let back: Vec<_> = ledger
        .iter()
        .filter(|e| e.detail == "code_expired:code-1")
        .collect();
    assert_eq!(back.len(), 1, "{ledger:?}");
    assert_eq!((back[0].kind, back[0].points), (LedgerKind::Redeem, 100));
    let sum: i64 = ledger.iter().map(|e| e.points).sum();
    assert_eq!(sum, 350, "the balance is the ledger's sum");

    // Scanned now: refused as expired (the API answers it 422, `code-expired`: the gateway's
    // one mapping, checked against the document by libs/gateway/tests/openapi.rs).
    let scan = PosCommand::ConsumeCode {
        member_id: m.clone(),
        code,
    };
    w.send(w.envelope("scan-1".into(), scan)).await;
    let scan_id = EventId::parse("scan-1").unwrap();
    let outcome = || async {
        let rec = w
            .store
            .processed(&w.franchise.id, std::slice::from_ref(&scan_id));
        rec.await
            .unwrap()
            .into_iter()
            .next()
            .flatten()
            .map(|r| r.outcome)
    };
    until("the scan applied", || async { outcome().await.is_some() }).await;
    let Some(Outcome::Rejected(r)) = outcome().await else {
        panic!("the scan is refused")
    };
    assert!(matches!(r, Rejection::CodeExpired { expired_at } if expired_at.0 >= t0.0 + DAY));
    assert_eq!(r.code(), "code-expired");
    assert_eq!(points().await, Some(json!(350)), "given back once");
    node.stop();
}
