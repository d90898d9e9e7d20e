//! Signing in again to the card with a one-time code (issue 13): the phone form, the code read
//! from the `dev` notifier, 303 to a fresh card link that opens the card with the balance;
//! wrong codes counted; a phone of no member answered exactly as a member's before the code
//! (and no code sent to it); code requests limited per phone (429 + Retry-After, the
//! self-enrolment page's bucket); forged or cross-site posts 403; the refused card link's page
//! links to the sign-in page.

use loyalty_tests::{spawn_app, TestApp, TestFranchise};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &TestApp, path: &str) -> Answer {
    let r = client()
        .get(app.url(path))
        .header("accept-language", "en")
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn post_with(app: &TestApp, path: &str, fields: &[(&str, &str)], fetch_site: &str) -> Answer {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let r = client()
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", fetch_site)
        .body(body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn post(app: &TestApp, path: &str, fields: &[(&str, &str)]) -> Answer {
    post_with(app, path, fields, "same-origin").await
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[at..].split('"').next().unwrap().to_owned()
}

fn sign_in(f: &TestFranchise) -> String {
    format!("/card/{}/sign-in", f.id)
}

/// Opens the sign-in page and asks for a code for `phone`: the code form.
async fn ask_code(app: &TestApp, f: &TestFranchise, phone: &str) -> Answer {
    let form = get(app, &sign_in(f)).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let csrf = hidden(&form.body, "csrf");
    post(
        app,
        &sign_in(f),
        &[("csrf", &csrf), ("lang", "en"), ("phone", phone)],
    )
    .await
}

async fn send_code(app: &TestApp, f: &TestFranchise, page: &str, code: &str) -> Answer {
    post(
        app,
        &format!("{}/code", sign_in(f)),
        &[
            ("csrf", &hidden(page, "csrf")),
            ("challenge", &hidden(page, "challenge")),
            ("lang", "en"),
            ("code", code),
        ],
    )
    .await
}

fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

async fn metrics(app: &TestApp) -> String {
    client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_signs_in_with_a_code_and_lands_on_the_card() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let phone = "+33611113333";
    let member = app.enrol_id(&f, phone).await;
    let r = app.purchase(&f, "signin-p1", &member, 1250).await;
    assert!(r.status().is_success());
    let points = app.status(&f, &member).await["points"].as_u64().unwrap();

    let form = get(&app, &sign_in(&f)).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("Open my card"), "{}", form.body);
    assert!(!form.body.contains("<script"));
    let csp = form.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let fr = client()
        .get(app.url(&format!("{}?lang=fr", sign_in(&f))))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(fr.contains("Retrouver ma carte"), "{fr}");

    let page = ask_code(&app, &f, phone).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("id=\"confirm\""));
    assert!(!page.body.contains(phone), "the phone is not echoed whole");
    let code = app.notifier.last_code(phone).expect("a code was sent");
    assert!(!page.body.contains(&code));

    let r = send_code(&app, &f, &page.body, &wrong(&code)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body.contains("Wrong code. 4 attempt(s) left."),
        "{}",
        r.body
    );
    assert!(r.body.contains("+*********33"), "masked: {}", r.body);

    let r = send_code(&app, &f, &page.body, &code).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let location = r.headers["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("/card/{}/{member}?expires=", f.id)),
        "{location}"
    );
    let card = get(&app, &location).await;
    assert_eq!(card.status, StatusCode::OK, "{}", card.body);
    assert!(
        card.body
            .contains(&format!("id=\"balance\" data-points=\"{points}\"")),
        "{}",
        card.body
    );

    // Single use.
    let r = send_code(&app, &f, &page.body, &code).await;
    assert_eq!(r.status, StatusCode::GONE);

    let m = metrics(&app).await;
    for result in ["sent", "wrong", "confirmed", "expired"] {
        assert!(
            m.contains(&format!(
                "loyalty_card_sign_ins_total{{result=\"{result}\"}} 1"
            )),
            "{result}: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_of_no_member_is_answered_as_a_members_and_gets_no_code() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    // Same last two digits: the masked phones are the same too.
    let (known, unknown) = ("+33633335599", "+33655555599");
    app.enrol(&f, known).await;
    let normal = |a: &Answer| {
        let mut b = a.body.clone();
        for name in ["csrf", "challenge"] {
            let v = hidden(&b, name);
            b = b.replace(&v, "X");
        }
        (a.status, b)
    };
    let a = ask_code(&app, &f, known).await;
    let b = ask_code(&app, &f, unknown).await;
    assert_eq!(normal(&a), normal(&b));
    assert!(app.notifier.last_code(known).is_some());
    assert!(
        app.notifier.last_code(unknown).is_none(),
        "no text to a non-member"
    );
    // A wrong code is as wrong for both (a code is held for the non-member too).
    let ra = send_code(&app, &f, &a.body, "000000").await;
    let rb = send_code(&app, &f, &b.body, "000000").await;
    assert_eq!(ra.status, StatusCode::BAD_REQUEST);
    assert_eq!(normal(&ra), normal(&rb));
    assert!(metrics(&app)
        .await
        .contains("loyalty_card_sign_ins_total{result=\"not_member\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_requests_are_limited_and_forged_posts_refused() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let phone = "+33698761111";
    app.enrol(&f, phone).await;
    for i in 0..3 {
        let r = ask_code(&app, &f, phone).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    let r = ask_code(&app, &f, phone).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    assert!(metrics(&app)
        .await
        .contains("loyalty_card_sign_ins_total{result=\"rate_limited\"} 1"));

    // A forged token, a cross-site post: 403, nothing sent.
    let other = "+33698762222";
    let r = post(&app, &sign_in(&f), &[("csrf", "1.AAAA"), ("phone", other)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let csrf = hidden(&get(&app, &sign_in(&f)).await.body, "csrf");
    let r = post_with(
        &app,
        &sign_in(&f),
        &[("csrf", &csrf), ("phone", other)],
        "cross-site",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(app.notifier.last_code(other).is_none());
    // An unknown franchise: 404.
    assert_eq!(
        get(&app, "/card/nosuchfranchise/sign-in").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_card_link_links_to_the_sign_in_page() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let member = app.enrol_id(&f, "+33612125656").await;
    let r = get(
        &app,
        &format!(
            "/card/{}/{member}?expires=1&sig=AAAAAAAAAAAAAAAAAAAAAAAAAA",
            f.id
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("Invalid link"), "{}", r.body);
    assert!(
        r.body
            .contains(&format!("href=\"/card/{}/sign-in?lang=en\"", f.id)),
        "{}",
        r.body
    );
}
