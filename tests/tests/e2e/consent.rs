//! Consent after enrolment and the opt-out link (README "Privacy", issues 12 and 13), through an
//! in-process platform: an enrolment with an e-mail address and consent, `PUT
//! /v1/members/{id}/consent` (idempotent by event id, refused for an erased member and for
//! e-mail consent without an address), the export showing it and the erasure removing it; the
//! opt-out link's confirmation page (GET changes nothing) and its POST (the page's form, or an
//! RFC 8058 one-click POST) withdrawing the channel once however often it is used, forged links
//! 403 without telling whether the member exists; and the card page's consent form.

use loyalty_core::identity;
use loyalty_core::ports::StateStore;
use loyalty_domain::{FranchiseId, MemberId};
use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Enrols `phone` with `extra` fields (e-mail, consent), waiting for it; the member id.
async fn enrol_with(app: &TestApp, f: &TestFranchise, phone: &str, extra: Value) -> String {
    let mut body = json!({ "phone": phone });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = app
        .post("/v1/members?wait_ms=5000", &f.store_key, &body)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    v["member_id"].as_str().unwrap().to_owned()
}

/// The member's export (HQ).
async fn export(app: &TestApp, f: &TestFranchise, member: &str) -> Value {
    let r = app
        .get(&format!("/v1/members/{member}/export"), &f.hq_key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn put_consent(app: &TestApp, key: &str, member: &str, body: Value) -> reqwest::Response {
    app.put(
        &format!("/v1/members/{member}/consent?wait_ms=5000"),
        key,
        &body,
    )
    .await
}

/// The opt-out link of `member` for `channel`, made with the franchise's secret (as the
/// campaigns will).
async fn opt_out_url(app: &TestApp, f: &TestFranchise, member: &str, channel: &str) -> String {
    let fid = FranchiseId::parse(&f.id).unwrap();
    let secret = app.store.franchise(&fid).await.unwrap().unwrap().secret;
    let m = MemberId::parse(member).unwrap();
    app.url(&identity::opt_out_path(&fid, &secret, &m, channel))
}

/// A page: its status, Content-Security-Policy and HTML.
async fn page(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "text/html; charset=utf-8");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, csp, r.text().await.unwrap())
}

/// `rb` with `fields` as an `application/x-www-form-urlencoded` body (letters, digits, `@`
/// and `.` only: all these tests send).
fn form(rb: reqwest::RequestBuilder, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('@', "%40")))
        .collect();
    rb.header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
}

/// The member's version in the store.
async fn version(app: &TestApp, member: &str) -> u64 {
    app.store
        .member(&MemberId::parse(member).unwrap())
        .await
        .unwrap()
        .unwrap()
        .version
}

#[tokio::test]
async fn consent_changes_through_the_api_are_idempotent_exported_and_erased() {
    let app = spawn_app().await;
    let f = app.franchise("Consent API").await;
    let m = enrol_with(
        &app,
        &f,
        "+33655508001",
        json!({"email": "Ana@Example.COM", "consent": {"sms": true}}),
    )
    .await;
    let e = export(&app, &f, &m).await;
    assert_eq!(e["profile"]["email"], "Ana@example.com", "{e}");
    assert_eq!(
        e["profile"]["consent"],
        json!({"sms": true, "email": false})
    );
    let v0 = version(&app, &m).await;

    // A store key changes both channels; a resend is a replay; other content a conflict.
    let change = json!({"event_id": "consent-1", "sms": false, "email": true});
    let r = put_consent(&app, &f.store_key, &m, change.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"member_id": m, "event_id": "consent-1", "status": "applied", "replayed": false,
               "consent": {"sms": false, "email": true}})
    );
    assert_eq!(version(&app, &m).await, v0 + 1, "one new version");
    let r = put_consent(&app, &f.store_key, &m, change).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["replayed"], true);
    let other = json!({"event_id": "consent-1", "sms": true});
    let r = put_consent(&app, &f.store_key, &m, other).await;
    assert_problem(r, StatusCode::CONFLICT, "idempotency-conflict").await;
    assert_eq!(version(&app, &m).await, v0 + 1);
    let e = export(&app, &f, &m).await;
    assert_eq!(
        e["profile"]["consent"],
        json!({"sms": false, "email": true})
    );
    assert!(
        app.ledger(&f, &m)
            .await
            .iter()
            .all(|l| l["event_id"] != "consent-1"),
        "no ledger entry"
    );

    // HQ too; a channel left out stays as it is.
    let r = put_consent(
        &app,
        &f.hq_key,
        &m,
        json!({"event_id": "consent-2", "sms": true}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["consent"],
        json!({"sms": true, "email": true})
    );

    // Refused before the log: a reserved event id, an implausible address, an array, a field
    // of another type, another franchise's member.
    for (body, why) in [
        (
            json!({"event_id": "optout.x.sms.1", "sms": false}),
            "reserved",
        ),
        (
            json!({"event_id": "consent-3", "email_address": "ana@localhost"}),
            "address",
        ),
        (json!({"event_id": "consent-3", "sms": "no"}), "type"),
        (json!({"event_id": "consent-3", "fax": true}), "field"),
    ] {
        let r = put_consent(&app, &f.store_key, &m, body).await;
        let p = assert_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-request").await;
        assert!(!p.to_string().contains("ana@"), "{why}: {p}");
    }
    let r = app
        .client
        .put(app.url(&format!("/v1/members/{m}/consent")))
        .bearer_auth(&f.store_key)
        .json(&json!([{"event_id": "consent-3"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let g = app.franchise("Consent API other").await;
    let r = put_consent(
        &app,
        &g.hq_key,
        &m,
        json!({"event_id": "consent-3", "sms": false}),
    )
    .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;

    // E-mail consent needs an address: refused without one, taken with one.
    let n = enrol_with(&app, &f, "+33655508002", json!({})).await;
    let r = put_consent(
        &app,
        &f.store_key,
        &n,
        json!({"event_id": "consent-4", "email": true}),
    )
    .await;
    assert_problem(r, StatusCode::CONFLICT, "email-required").await;
    let r = put_consent(
        &app,
        &f.store_key,
        &n,
        json!({"event_id": "consent-5", "email": true, "email_address": "bo@example.org"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        export(&app, &f, &n).await["profile"]["email"],
        "bo@example.org"
    );

    // The erasure takes the address and the consent; then a change is refused.
    let r = app
        .post(
            &format!("/v1/members/{m}/erasure?wait_ms=5000"),
            &f.hq_key,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let e = export(&app, &f, &m).await;
    assert_eq!(e["profile"]["email"], Value::Null);
    assert_eq!(e["profile"]["consent"], Value::Null);
    let stored = app
        .store
        .member(&MemberId::parse(&m).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.profile.email, None);
    let r = put_consent(
        &app,
        &f.hq_key,
        &m,
        json!({"event_id": "consent-6", "sms": true}),
    )
    .await;
    assert_problem(r, StatusCode::CONFLICT, "member-erased").await;
}

#[tokio::test]
async fn an_opt_out_link_confirms_on_get_and_withdraws_on_post_once() {
    let app = spawn_app().await;
    let f = app.franchise("Opt-out Café").await;
    let m = enrol_with(&app, &f, "+33655508011", json!({"consent": {"sms": true}})).await;
    let url = opt_out_url(&app, &f, &m, "sms").await;
    assert!(url.starts_with(&format!("{}/optout/{}/{m}/sms?sig=", app.address, f.id)));

    // GET: a confirmation form, no script, nothing fetched; and nothing changes.
    let v0 = version(&app, &m).await;
    let r = app
        .client
        .get(format!("{url}&lang=en"))
        .send()
        .await
        .unwrap();
    let (s, csp, html) = page(r).await;
    assert_eq!(s, StatusCode::OK);
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(html.contains("id=\"optout-confirm\""), "{html}");
    assert!(
        html.contains("id=\"optout-form\" method=\"post\""),
        "{html}"
    );
    assert!(
        html.contains("Opt-out Café") && html.contains("by SMS"),
        "{html}"
    );
    assert!(
        !html.contains("<script") && !html.contains("http"),
        "{html}"
    );
    assert!(!html.contains("+33655508011"), "no personal data");
    assert_eq!(version(&app, &m).await, v0);
    let e = export(&app, &f, &m).await;
    assert_eq!(e["profile"]["consent"]["sms"], true);

    // POST (the page's form): withdrawn, through the log, and said so (French by default).
    let r = form(app.client.post(&url), &[("List-Unsubscribe", "One-Click")])
        .send()
        .await
        .unwrap();
    let (s, _, html) = page(r).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains("id=\"optout-done\""), "{html}");
    assert!(html.contains("ne recevrez plus"), "{html}");
    let e = export(&app, &f, &m).await;
    assert_eq!(
        e["profile"]["consent"],
        json!({"sms": false, "email": false})
    );
    assert_eq!(version(&app, &m).await, v0 + 1);
    let recorded = app
        .store
        .processed(
            &FranchiseId::parse(&f.id).unwrap(),
            &[loyalty_domain::EventId::parse(&format!("optout.{m}.sms.{v0}")).unwrap()],
        )
        .await
        .unwrap();
    assert!(
        recorded[0].is_some(),
        "the event optout.<member>.sms.<version>"
    );

    // The same opt-out twice is harmless: the same page, nothing changes.
    let r = app.client.post(&url).send().await.unwrap();
    let (s, _, html) = page(r).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains("id=\"optout-done\""), "{html}");
    assert_eq!(version(&app, &m).await, v0 + 1);

    // Counted by channel and result.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for result in ["withdrawn", "already"] {
        assert!(
            metrics.contains(&format!(
                "loyalty_opt_outs_total{{channel=\"sms\",result=\"{result}\"}}"
            )),
            "{result}"
        );
    }
}

#[tokio::test]
async fn a_one_click_opt_out_post_withdraws_email_consent() {
    let app = spawn_app().await;
    let f = app.franchise("Opt-out one click").await;
    let m = enrol_with(
        &app,
        &f,
        "+33655508021",
        json!({"email": "cy@example.net", "consent": {"sms": true, "email": true}}),
    )
    .await;
    let url = opt_out_url(&app, &f, &m, "email").await;
    // What a mail client sends (RFC 8058): no cookie, no origin, this body.
    let r = app
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let e = export(&app, &f, &m).await;
    assert_eq!(
        e["profile"]["consent"],
        json!({"sms": true, "email": false}),
        "only the link's channel"
    );
    assert_eq!(e["profile"]["email"], "cy@example.net", "the address stays");
}

#[tokio::test]
async fn forged_opt_out_links_are_403_and_tell_nothing_about_the_member() {
    let app = spawn_app().await;
    let f = app.franchise("Opt-out forged").await;
    let m = enrol_with(&app, &f, "+33655508031", json!({"consent": {"sms": true}})).await;
    let good = opt_out_url(&app, &f, &m, "sms").await;
    let forged = format!("{}aaaa", &good[..good.len() - 4]);
    let stranger = "mzzzzzzzzzzzzzzzzzzzzzzzz";
    let forged_other = forged.replace(&m, stranger);
    let mut bodies = Vec::new();
    for url in [&forged, &forged_other] {
        for post in [false, true] {
            let rq = if post {
                app.client.post(url.as_str())
            } else {
                app.client.get(url.as_str())
            };
            let (s, _, html) = page(rq.send().await.unwrap()).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{url}");
            assert!(html.contains("data-status=\"403\""), "{html}");
            bodies.push(html);
        }
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "a member that exists and one that does not get the same page"
    );
    let without_sig = good.split('?').next().unwrap().to_owned();
    let r = app.client.get(&without_sig).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        export(&app, &f, &m).await["profile"]["consent"]["sms"],
        true,
        "no forged link withdrew anything"
    );
    // An unknown franchise, an unknown channel: 404 pages.
    for url in [
        good.replace(&f.id, "f_00000000000000000000"),
        good.replace("/sms?", "/fax?"),
    ] {
        let (s, _, _) = page(app.client.get(&url).send().await.unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{url}");
    }
    // An erased member's link: a neutral page, GET and POST.
    let r = app
        .post(
            &format!("/v1/members/{m}/erasure?wait_ms=5000"),
            &f.hq_key,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    for post in [false, true] {
        let rq = if post {
            app.client.post(&good)
        } else {
            app.client.get(&good)
        };
        let (s, _, html) = page(rq.send().await.unwrap()).await;
        assert_eq!(s, StatusCode::OK);
        assert!(html.contains("id=\"optout-neutral\""), "{html}");
    }
}

#[tokio::test]
async fn the_card_page_shows_the_consent_and_changes_it() {
    let app = spawn_app().await;
    let f = app.franchise("Consent card").await;
    let m = enrol_with(&app, &f, "+33655508041", json!({})).await;
    let r = app
        .get(&format!("/v1/members/{m}/card-link"), &f.store_key)
        .await;
    let url = r.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _, html) = page(app.client.get(&url).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        html.contains("id=\"consent\" data-sms=\"false\" data-email=\"false\""),
        "{html}"
    );
    assert!(
        html.contains("id=\"consent-form\" method=\"post\""),
        "{html}"
    );

    // The form posts to the card link, then 303 back to the card.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |fields: Vec<(&'static str, &'static str)>| {
        let (client, url) = (no_redirect.clone(), url.clone());
        async move { form(client.post(&url), &fields).send().await.unwrap() }
    };
    let r = post(vec![("consent_sms", "yes"), ("consent_email", "yes")]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.ends_with("consent=email-required#consent"), "{to}");
    assert_eq!(
        export(&app, &f, &m).await["profile"]["consent"],
        json!({"sms": false, "email": false}),
        "refused whole"
    );
    let r = form(
        no_redirect.post(&url),
        &[
            ("consent_sms", "yes"),
            ("consent_email", "yes"),
            ("email", "dee@example.com"),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.ends_with("consent=saved#consent"), "{to}");
    let e = export(&app, &f, &m).await;
    assert_eq!(e["profile"]["consent"], json!({"sms": true, "email": true}));
    assert_eq!(e["profile"]["email"], "dee@example.com");
    let (_, _, html) = page(
        app.client
            .get(app.url(to.split('#').next().unwrap()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        html.contains(
            "id=\"consent\" data-sms=\"true\" data-email=\"true\" data-has-email=\"true\""
        ),
        "{html}"
    );
    assert!(html.contains("id=\"consent-notice\""), "{html}");
    assert!(
        !html.contains("dee@example.com"),
        "the address is not shown"
    );

    // Unticked: withdrawn. A forged card link changes nothing.
    let r = post(vec![]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        export(&app, &f, &m).await["profile"]["consent"],
        json!({"sms": false, "email": false})
    );
    let forged = format!("{}aaaa", &url[..url.len() - 4]);
    let r = form(no_redirect.post(&forged), &[("consent_sms", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        export(&app, &f, &m).await["profile"]["consent"]["sms"],
        false
    );
}
