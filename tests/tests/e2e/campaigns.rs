//! Campaign delivery end to end (README "Campaigns"), on the in-process platform with the
//! real adapters: a campaign fires at enrolment; its SMS goes to a signed webhook (a local
//! HTTP sink that fails the first attempts: retried with backoff under the same message id)
//! and its e-mail to a real SMTP server (aiosmtpd) with the opt-out link, which withdraws the
//! consent when followed; a receiver that refuses for good dead-letters the message; nothing
//! is sent without consent; and the results count each once.

use std::time::{Duration, SystemTime};

use loyalty_core::ports::{OutboxState, StateStore};
use loyalty_testkit::http_sink::{HttpSink, HttpSinkOptions};
use loyalty_testkit::smtp_sink::SmtpSink;
use loyalty_tests::{demo_program, spawn_app_with, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
const WAIT: Duration = Duration::from_secs(20);

/// The demo program with a welcome campaign at enrolment: 25 points, an SMS and an e-mail.
fn program() -> Value {
    let mut p = demo_program();
    p["campaigns"] = json!([{
        "id": "welcome",
        "name": "Welcome",
        "trigger": { "type": "enrolled" },
        "offer": { "type": "bonus_points", "points": 25 },
        "messages": {
            "sms": "Hi {first_name}, {offer} at {franchise}. Stop: {opt_out_url}",
            "email": { "subject": "Welcome {first_name}", "body": "You have {points} points." }
        }
    }]);
    p
}

async fn app_with(sms: &HttpSink, smtp: Option<&SmtpSink>, max_attempts: u32) -> TestApp {
    let (sms_url, smtp_port) = (sms.url(), smtp.map(|s| s.port()));
    spawn_app_with(move |c| {
        c.sms_webhook_url = Some(sms_url);
        c.sms_webhook_secret = Some(SECRET.into());
        if let Some(port) = smtp_port {
            c.smtp_host = Some("127.0.0.1".into());
            c.smtp_port = port;
            c.smtp_from = Some("Café Lune <offers@cafe-lune.example>".into());
        }
        c.delivery_ms = 20;
        c.delivery_backoff_ms = 50;
        c.delivery_max_attempts = max_attempts;
    })
    .await
}

/// Enrols `phone` as Ana with `consent`, and an e-mail address; the member id.
async fn enrol(app: &TestApp, f: &TestFranchise, phone: &str, consent: Value) -> String {
    let body = json!({"phone": phone, "name": "Ana Diaz", "email": "ana@example.com",
                      "consent": consent});
    let r = app
        .post("/v1/members?wait_ms=5000", &f.store_key, &body)
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let v: Value = r.json().await.unwrap();
    v["member_id"].as_str().unwrap().to_owned()
}

/// Waits until the outbox entry `id` is no longer pending; returns it.
async fn settled(app: &TestApp, id: &str) -> loyalty_core::ports::OutboxEntry {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // The entry moves on the delivery worker's own schedule: polled, there is no signal.
        if let Some(e) = app.store.outbox_entry(id).await.unwrap() {
            if e.state != OutboxState::Pending {
                return e;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} still pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn results(app: &TestApp, f: &TestFranchise) -> loyalty_core::campaigns::CampaignResult {
    let franchise_id = loyalty_domain::FranchiseId::parse(&f.id).unwrap();
    let franchise = app.store.franchise(&franchise_id).await.unwrap().unwrap();
    let program = app
        .store
        .program(&franchise_id, franchise.program_version)
        .await
        .unwrap()
        .unwrap();
    let r = loyalty_core::campaigns::campaign_results(
        app.store.as_ref(),
        &franchise,
        &program,
        loyalty_domain::Day(0),
        loyalty_domain::Day(100_000),
    )
    .await
    .unwrap();
    r.campaigns.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_sms_is_retried_signed_and_email_carries_a_working_opt_out_link() {
    let sms = HttpSink::start_with(HttpSinkOptions::failing(503, 2))
        .await
        .unwrap();
    let smtp = SmtpSink::start().expect("the SMTP sink (aiosmtpd) starts");
    let app = app_with(&sms, Some(&smtp), 8).await;
    let f = app.franchise_with("Café Lune", program()).await;
    let m = enrol(
        &app,
        &f,
        "+33612345601",
        json!({"sms": true, "email": true}),
    )
    .await;
    assert_eq!(app.status(&f, &m).await["points"], 50 + 25);

    // The SMS: two 503s, then delivered, each attempt signed, under one message id.
    let reqs = sms.wait_for(3, WAIT).await.unwrap();
    let ids: Vec<&str> = reqs
        .iter()
        .map(|r| r.header("loyalty-message-id").unwrap())
        .collect();
    let id = format!("{m}/welcome/enrolled/sms");
    assert_eq!(ids, [id.as_str(); 3], "one id across the retries");
    let answered: Vec<_> = reqs.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [Some(503), Some(503), Some(200)]);
    for r in &reqs {
        let sig = r.header("loyalty-signature").unwrap();
        loyalty_webhook::verify_signature(
            SECRET.as_bytes(),
            sig,
            &r.body,
            SystemTime::now(),
            Duration::from_secs(300),
        )
        .expect("signed with the webhook secret");
    }
    let body = reqs[2].json().unwrap();
    assert_eq!(body["to"], "+33612345601");
    assert_eq!(body["campaign_id"], "welcome");
    let text = body["body"].as_str().unwrap();
    assert!(
        text.starts_with("Hi Ana, +25 points at Café Lune. Stop: http"),
        "{text}"
    );
    let e = settled(&app, &id).await;
    assert!(matches!(e.state, OutboxState::Delivered { .. }), "{e:?}");
    assert_eq!(e.attempts, 3);

    // The e-mail: subject and body rendered, the opt-out link appended and in the headers.
    let mails = smtp.wait_for(1, WAIT).await.unwrap();
    let mail = &mails[0];
    assert_eq!(mail.to, ["ana@example.com"]);
    assert_eq!(mail.subject, "Welcome Ana");
    assert!(mail.body.contains("You have 75 points."), "{}", mail.body);
    let link = mail
        .header("list-unsubscribe")
        .unwrap()
        .trim_matches(['<', '>'])
        .to_owned();
    assert!(mail.body.contains(&link), "the link is in the text too");
    assert!(link.contains("/optout/") && link.ends_with(|c: char| c.is_alphanumeric()));
    settled(&app, &format!("{m}/welcome/enrolled/email")).await;

    // Following the link (RFC 8058 one-click) withdraws the e-mail consent only.
    let r = app
        .client
        .post(&link)
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
    assert_eq!(
        export["profile"]["consent"],
        json!({"sms": true, "email": false})
    );

    let r = results(&app, &f).await;
    assert_eq!(
        (r.fired, r.messages, r.delivered, r.failed),
        (1, 2, 2, 0),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_receiver_dead_letters_and_no_consent_sends_nothing() {
    // 400 for good: permanent, dead-lettered at the first attempt.
    let sms = HttpSink::start_with(HttpSinkOptions::failing(400, usize::MAX))
        .await
        .unwrap();
    let app = app_with(&sms, None, 8).await;
    let f = app.franchise_with("Café Lune", program()).await;
    let silent = enrol(&app, &f, "+33612345602", json!({})).await;
    let m = enrol(&app, &f, "+33612345603", json!({"sms": true})).await;
    let e = settled(&app, &format!("{m}/welcome/enrolled/sms")).await;
    match &e.state {
        OutboxState::Failed { reason, .. } => assert!(reason.contains("400"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.attempts, 1);
    // The member without consent got the offer, and no message at all.
    assert_eq!(app.status(&f, &silent).await["points"], 75);
    for channel in ["sms", "email"] {
        let id = format!("{silent}/welcome/enrolled/{channel}");
        assert!(app.store.outbox_entry(&id).await.unwrap().is_none());
    }
    assert_eq!(
        sms.requests().len(),
        1,
        "one attempt, for the consenting member"
    );
    let r = results(&app, &f).await;
    assert_eq!((r.fired, r.messages, r.delivered, r.failed), (2, 1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_every_attempt_is_dead_lettered_after_the_last() {
    let sms = HttpSink::start_with(HttpSinkOptions::failing(503, usize::MAX))
        .await
        .unwrap();
    let app = app_with(&sms, None, 3).await;
    let f = app.franchise_with("Café Lune", program()).await;
    let m = enrol(&app, &f, "+33612345604", json!({"sms": true})).await;
    let e = settled(&app, &format!("{m}/welcome/enrolled/sms")).await;
    assert!(matches!(e.state, OutboxState::Failed { .. }), "{e:?}");
    assert_eq!(e.attempts, 3);
    assert_eq!(sms.requests().len(), 3, "no attempt after the last");
    // The last attempt's error is kept with the dead letter.
    assert!(
        e.last_error.as_deref().unwrap_or("").contains("503"),
        "{e:?}"
    );
}
