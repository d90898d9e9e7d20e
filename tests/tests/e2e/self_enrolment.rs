//! The self-enrolment page a store's QR code opens (issue 13): the whole flow through plain
//! HTML form posts (form-encoded, no script), the one-time code read from the `dev` notifier;
//! wrong, expired and used codes, too many tries (429), code requests limited per phone and per
//! address (429 + Retry-After), the same phone twice is the same member (and the member of the
//! till), a forged store token 404, forged or cross-site form posts 403, and a known phone
//! answered exactly as an unknown one before the code. Then the page in headless Chromium:
//! scan (open the URL the QR encodes), fill, confirm, land on the card with the signup bonus,
//! a purchase at the till moves the balance on reload; screenshot `target/enrolment-page.png`
//! (copied to `docs/img/enrolment-page.png` with `LOYALTY_UPDATE_SCREENSHOT=1`).

use std::path::PathBuf;
use std::time::Duration;

use loyalty_core::identity;
use loyalty_core::ports::StateStore;
use loyalty_domain::{FranchiseId, StoreId};
use loyalty_testkit::chromium::ChromeDriver;
use loyalty_tests::{spawn_app, spawn_app_with, TestApp, TestFranchise};
use reqwest::StatusCode;

const WAIT: Duration = Duration::from_secs(20);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The path of the store's enrolment URL (what its QR code encodes, after the host).
async fn join_path(app: &TestApp, f: &TestFranchise) -> String {
    let secret = app
        .store
        .franchise(&FranchiseId::parse(&f.id).unwrap())
        .await
        .unwrap()
        .expect("the franchise")
        .secret;
    let sid = StoreId::parse(&f.store_id).unwrap();
    format!(
        "/join/{}/{}",
        f.store_id,
        identity::store_enrolment_token(&secret, &sid)
    )
}

/// A client that does not follow redirects (the 303 to the card is checked as such).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn form_encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
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

async fn get(app: &TestApp, path: &str) -> Answer {
    get_url(&app.url(path)).await
}

async fn get_url(url: &str) -> Answer {
    let r = client()
        .get(url)
        .header("accept-language", "en")
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn post(app: &TestApp, path: &str, fields: &[(&str, &str)]) -> Answer {
    post_url(&app.url(path), fields).await
}

async fn post_url(url: &str, fields: &[(&str, &str)]) -> Answer {
    let r = client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_encode(fields))
        .send()
        .await
        .unwrap();
    answer(r).await
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

/// The value of the hidden field `name` of a page.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[at..].split('"').next().unwrap().to_owned()
}

/// Opens the form and asks for a code for `phone`: the code form.
async fn ask_code(app: &TestApp, join: &str, phone: &str) -> Answer {
    let form = get(app, join).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let csrf = hidden(&form.body, "csrf");
    post(
        app,
        join,
        &[
            ("csrf", &csrf),
            ("lang", "en"),
            ("phone", phone),
            ("name", "Camille"),
            ("birthday", "1990-04-17"),
            ("consent_sms", "yes"),
        ],
    )
    .await
}

async fn send_code(app: &TestApp, join: &str, page: &str, code: &str) -> Answer {
    post(
        app,
        &format!("{join}/code"),
        &[
            ("csrf", &hidden(page, "csrf")),
            ("challenge", &hidden(page, "challenge")),
            ("lang", "en"),
            ("code", code),
        ],
    )
    .await
}

/// A code that is not `code`.
fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

fn member_of(location: &str) -> String {
    // /card/<fid>/<member>?expires=…
    location
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_enrols_through_the_form_and_lands_on_the_card() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let join = join_path(&app, &f).await;
    let phone = "+33611112222";

    let form = get(&app, &join).await;
    assert_eq!(form.status, StatusCode::OK);
    let csp = form.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(!form.body.contains("<script"), "no script");
    assert!(form.body.contains("id=\"enrol\""));
    assert!(form.body.contains("Join the program"));
    let fr = client()
        .get(app.url(&format!("{join}?lang=fr")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(fr.contains("Rejoignez le programme"), "{fr}");

    let page = ask_code(&app, &join, phone).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("id=\"confirm\""));
    assert!(page.body.contains("+*********22"), "masked: {}", page.body);
    assert!(!page.body.contains(phone), "the phone is not echoed whole");
    assert!(page.body.contains("id=\"dev-notice\""), "dev says so");
    let code = app.notifier.last_code(phone).expect("a code was sent");
    assert_eq!(code.len(), 6);
    assert!(!page.body.contains(&code), "the code is not on the page");

    // A wrong code: the form again, with the tries left.
    let r = send_code(&app, &join, &page.body, &wrong(&code)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body.contains("Wrong code. 4 attempt(s) left."),
        "{}",
        r.body
    );

    // The right one: 303 to a signed card link, showing the signup bonus.
    let r = send_code(&app, &join, &page.body, &code).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let location = r.headers["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("/card/{}/", f.id)),
        "{location}"
    );
    assert!(location.contains("sig="), "{location}");
    let card = get(&app, &location).await;
    assert_eq!(card.status, StatusCode::OK);
    assert!(card.body.contains("data-points=\"50\""), "{}", card.body);
    let member = member_of(&location);
    // The consent ticked on the page is the member's, durably (in the store, the export).
    let r = app
        .get(&format!("/v1/members/{member}/export"), &f.hq_key)
        .await;
    let export: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        export["profile"]["consent"],
        serde_json::json!({ "sms": true, "email": false })
    );

    // Single use: the same code again is gone.
    let r = send_code(&app, &join, &page.body, &code).await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.body);
    assert!(r.body.contains("expired or was already used"));

    // The same phone again (here, then at the till): the same member, never a duplicate.
    let again = ask_code(&app, &join, phone).await;
    let code2 = app.notifier.last_code(phone).unwrap();
    let r = send_code(&app, &join, &again.body, &code2).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(member_of(r.headers["location"].to_str().unwrap()), member);
    let till = app.enrol(&f, phone).await;
    assert_eq!(till["member_id"], member.as_str());
    assert_eq!(till["created"], false);
    assert_eq!(app.status(&f, &member).await["points"], 50, "one bonus");

    // Counted.
    let m = client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("loyalty_enrolment_codes_total{result=\"sent\"}"),
        "{m}"
    );
    assert!(m.contains("loyalty_enrolment_codes_total{result=\"confirmed\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_phone_is_answered_as_an_unknown_one_before_the_code() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let join = join_path(&app, &f).await;
    // Same last two digits: the masked phones are the same too.
    let (known, unknown) = ("+33633334499", "+33655554499".to_owned());
    app.enrol(&f, known).await;
    let normal = |a: &Answer| {
        let mut b = a.body.clone();
        for name in ["csrf", "challenge"] {
            let v = hidden(&b, name);
            b = b.replace(&v, "X");
        }
        (a.status, b)
    };
    let a = ask_code(&app, &join, known).await;
    let b = ask_code(&app, &join, &unknown).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(normal(&a), normal(&b), "the same answer");
    assert!(app.notifier.last_code(known).is_some());
    assert!(
        app.notifier.last_code(&unknown).is_some(),
        "a code either way"
    );
    // A wrong code: the same answer too.
    let ca = app.notifier.last_code(known).unwrap();
    let cb = app.notifier.last_code(&unknown).unwrap();
    let wa = send_code(&app, &join, &a.body, &wrong(&ca)).await;
    let wb = send_code(&app, &join, &b.body, &wrong(&cb)).await;
    assert_eq!(normal(&wa), normal(&wb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_lock_the_code_and_expired_codes_are_gone() {
    let app = spawn_app_with(|c| c.enrolment_code_ttl_secs = 2).await;
    let f = app.franchise("Café Lumière").await;
    let join = join_path(&app, &f).await;
    let phone = "+33612340000";
    let page = ask_code(&app, &join, phone).await;
    let code = app.notifier.last_code(phone).unwrap();
    for i in 1..=4 {
        let r = send_code(&app, &join, &page.body, &wrong(&code)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "try {i}");
    }
    let r = send_code(&app, &join, &page.body, &wrong(&code)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    assert!(r.body.contains("Too many wrong codes"));
    // Even the right code now.
    let r = send_code(&app, &join, &page.body, &code).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);

    // Expired: the right code, too late.
    let page = ask_code(&app, &join, "+33612340001").await;
    let code = app.notifier.last_code("+33612340001").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = send_code(&app, &join, &page.body, &code).await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.body);
    assert!(r.body.contains("id=\"restart\""));
    // A challenge never issued.
    let r = post(
        &app,
        &format!("{join}/code"),
        &[
            ("csrf", &hidden(&page.body, "csrf")),
            ("challenge", "nosuchchallenge"),
            ("code", "123456"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::GONE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_requests_are_limited_per_phone_and_per_address() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let join = join_path(&app, &f).await;
    let phone = "+33698765432";
    for i in 0..3 {
        let r = ask_code(&app, &join, phone).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    let r = ask_code(&app, &join, phone).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(r.body.contains("Too many codes"));

    // Other phones from the same address: at most the address's burst (10) in all.
    let mut sent = 4;
    let limited = loop {
        let r = ask_code(&app, &join, &format!("+3369000000{sent:02}")).await;
        sent += 1;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers.contains_key("retry-after"));
            break sent;
        }
        assert_eq!(r.status, StatusCode::OK);
        assert!(sent <= 11, "the address is never limited");
    };
    assert_eq!(limited, 11, "10 requests, then 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_and_forms_are_refused() {
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let join = join_path(&app, &f).await;
    let forged = format!("/join/{}/aaaaaaaaaaaaaaaa", f.store_id);
    let r = get(&app, &forged).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("Unknown code"));
    let r = post(&app, &forged, &[("phone", "+33611110000")]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(&app, &format!("{forged}/code"), &[("code", "123456")]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(&app, "/join/s_nope/aaaaaaaaaaaaaaaa").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A form without its token, or with a forged one: 403, and no code sent.
    for csrf in ["", "1700000000.aaaaaaaaaaaaaaaaaaaaaaaaaa", "garbage"] {
        let r = post(
            &app,
            &join,
            &[("csrf", csrf), ("phone", "+33611110000"), ("name", "Eve")],
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{csrf:?}");
    }
    assert!(app.notifier.last_code("+33611110000").is_none());
    // A post a browser marks cross-site, even with a genuine token.
    let csrf = hidden(&get(&app, &join).await.body, "csrf");
    let r = client()
        .post(app.url(&join))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body(form_encode(&[
            ("csrf", &csrf),
            ("phone", "+33611110000"),
            ("name", "Eve"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Bad input: the form again, 400, what was typed kept.
    let r = post(
        &app,
        &join,
        &[
            ("csrf", &csrf),
            ("lang", "en"),
            ("phone", "0611"),
            ("name", "Eve"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("This number is not valid"), "{}", r.body);
    assert!(r.body.contains("value=\"Eve\""));
}

/// The text of a PNG QR code (greyscale, as the gateway draws it).
fn decode_png(bytes: &[u8]) -> String {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; dec.output_buffer_size().expect("size")];
    let info = dec.next_frame(&mut buf).expect("a frame");
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img =
        rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * info.line_size + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    grids[0].decode().expect("the code decodes").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_to_enrol_in_a_headless_browser() {
    if let Err(reason) = ChromeDriver::available() {
        println!("SKIPPED: {reason}");
        return;
    }
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    // Scanned: the URL the store's printed QR code encodes, decoded from its PNG.
    let r = app
        .get(
            &format!(
                "/v1/franchises/{}/stores/{}/enrolment-qr.png",
                f.id, f.store_id
            ),
            &f.hq_key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let url = decode_png(&r.bytes().await.unwrap());
    assert_eq!(url, format!("{}{}", app.address, join_path(&app, &f).await));
    let phone = "+33644445555";

    let driver = ChromeDriver::start().expect("chromedriver starts");
    let b = driver.browser().await.expect("a browser");
    b.resize(390, 844).await.expect("a phone's size");
    b.goto(&format!("{url}?lang=fr")).await.expect("loaded");
    let input = b.find("#phone").await.expect("the phone field");
    b.send_keys(&input, phone).await.unwrap();
    let name = b.find("#name").await.unwrap();
    b.send_keys(&name, "Camille").await.unwrap();
    let sms = b.find("#consent-sms").await.unwrap();
    b.click(&sms).await.unwrap();
    let png = b.screenshot_full_page().await.expect("screenshot");
    let target = repo_root().join("target");
    std::fs::create_dir_all(&target).expect("target/");
    std::fs::write(target.join("enrolment-page.png"), &png).expect("saved");
    println!(
        "screenshot: {}",
        target.join("enrolment-page.png").display()
    );
    if std::env::var("LOYALTY_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        std::fs::copy(
            target.join("enrolment-page.png"),
            repo_root().join("docs/img/enrolment-page.png"),
        )
        .expect("docs/img updated");
    }
    // Nothing was fetched: the page is one document.
    let loaded = b
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .expect("entries");
    assert_eq!(loaded, serde_json::json!([]), "no other request");
    let send = b.find("#send-code").await.unwrap();
    b.click(&send).await.unwrap();
    b.wait_for("return document.getElementById('code') !== null", WAIT)
        .await
        .expect("the code form");
    let notice = b
        .find("#dev-notice")
        .await
        .expect("dev says where the code is");
    assert!(b.text(&notice).await.unwrap().contains("journal"));
    let code = app.notifier.last_code(phone).expect("a code");
    let field = b.find("#code").await.unwrap();
    b.send_keys(&field, &code).await.unwrap();
    let ok = b.find("#confirm-code").await.unwrap();
    b.click(&ok).await.unwrap();
    assert_eq!(
        loyalty_tests::card_page_points(&b, WAIT).await,
        50,
        "the signup bonus"
    );
    let here = b.current_url().await.unwrap();
    assert!(here.contains("/card/"), "{here}");
    let member = member_of(&here.replace(&app.address, ""));

    // A purchase at the till through the API: the balance moves on reload.
    assert_eq!(
        app.purchase(&f, "self-1", &member, 1250).await.status(),
        StatusCode::OK
    );
    let now = app.status(&f, &member).await["points"].as_u64().unwrap();
    assert!(now > 50);
    b.goto(&here).await.expect("reloaded");
    assert_eq!(loyalty_tests::card_page_points(&b, WAIT).await, now);
    b.close().await.expect("closed");
    drop(driver);
}

/// A process whose adapters are not the embedded ones (here: `Mode::All` on the embedded ports,
/// but not as `loyalty dev`) has no SMS adapter, hence no notifier: the page says codes cannot
/// be sent (503), and a post sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_notifier_the_page_says_codes_cannot_be_sent() {
    use loyalty::configuration::DevConfig;
    use loyalty::startup::{Application, Mode, Ports};
    use loyalty_embedded::log::EmbeddedLog;
    use loyalty_embedded::{EmbeddedCache, EmbeddedNotifier, EmbeddedStore};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let config = DevConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        admin_key: loyalty_tests::ADMIN_KEY.into(),
        partitions: 4,
        http_workers: 2,
        demo: false,
        ..DevConfig::default()
    };
    let log = EmbeddedLog::open(dir.path().join("log")).unwrap();
    let store = EmbeddedStore::open(
        &dir.path().join("store"),
        loyalty_core::sealing::KeyRing::dev(),
    )
    .unwrap();
    let cache = Arc::new(EmbeddedCache::new(1000));
    let ports = Ports {
        log: log.clone(),
        store: store.clone(),
        cache: cache.clone(),
    };
    let app = Application::build_with(config, ports, None, Mode::All)
        .await
        .expect("the node starts");
    assert!(app.notifier.is_none(), "no dev notifier outside dev");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let app = TestApp {
        address,
        client: reqwest::Client::new(),
        data_dir: dir,
        store,
        cache,
        log,
        notifier: Arc::new(EmbeddedNotifier::new()),
        messages: Vec::new(),
    };
    app.wait_ready().await;
    let f = app.franchise("Café Lumière").await;
    let join = join_path(&app, &f).await;
    let r = get(&app, &join).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(
        r.body.contains("Confirmation codes cannot be sent"),
        "{}",
        r.body
    );
    let r = post(&app, &join, &[("phone", "+33611110000"), ("name", "Eve")]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// The distributed case: an engine and two gateways (in this test process, on one embedded
/// log and store as they would share Kafka and a store, and on one `redis-server`). The code
/// asked for through gateway A is confirmed through gateway B (a wrong try at B counted, then
/// the right code); used once, it is gone at A too. Without `redis-server`: `SKIPPED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_sent_by_one_gateway_is_confirmed_through_another() {
    use loyalty::startup::{Application, Embedded, Mode, Ports};
    use loyalty_testkit::redis::RedisServer;
    use std::sync::Arc;

    if let Err(reason) = RedisServer::available() {
        println!("SKIPPED: {reason}");
        return;
    }
    loyalty::telemetry::init_with_default("warn");
    let redis = RedisServer::start().expect("redis-server starts");
    let dir = tempfile::tempdir().unwrap();
    let config = loyalty::configuration::DevConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        admin_key: loyalty_tests::ADMIN_KEY.into(),
        partitions: 2,
        http_workers: 1,
        demo: false,
        redis_url: Some(redis.url()),
        ..Default::default()
    };
    let embedded = Embedded {
        log: loyalty_embedded::log::EmbeddedLog::open(dir.path().join("log")).unwrap(),
        store: loyalty_embedded::EmbeddedStore::open(
            &dir.path().join("store"),
            loyalty_core::sealing::KeyRing::dev(),
        )
        .unwrap(),
        cache: Arc::new(loyalty_embedded::EmbeddedCache::new(1000)),
    };
    let ports = Ports {
        log: embedded.log.clone(),
        store: embedded.store.clone(),
        cache: embedded.cache.clone(),
    };
    let start =
        |mode| Application::build_with(config.clone(), ports.clone(), Some(embedded.clone()), mode);
    let engine = start(Mode::Engine).await.expect("engine starts");
    let engine_url = format!("http://127.0.0.1:{}", engine.port());
    tokio::spawn(engine.run_until_stopped());
    let (a, b) = (
        start(Mode::Gateway).await.expect("gateway A"),
        start(Mode::Gateway).await.expect("gateway B"),
    );
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{}", a.port()),
        format!("http://127.0.0.1:{}", b.port()),
    );
    let notifier_a = a.notifier.clone().expect("the dev notifier of gateway A");
    tokio::spawn(a.run_until_stopped());
    tokio::spawn(b.run_until_stopped());
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    for base in [&engine_url, &url_a, &url_b] {
        while !http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
        {
            assert!(tokio::time::Instant::now() < deadline, "{base} never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let f: serde_json::Value = http
        .post(format!("{url_a}/v1/franchises"))
        .bearer_auth(loyalty_tests::ADMIN_KEY)
        .json(&serde_json::json!({"name": "Split", "program": loyalty_tests::demo_program()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fid = f["id"].as_str().unwrap().to_owned();
    let st: serde_json::Value = http
        .post(format!("{url_a}/v1/franchises/{fid}/stores"))
        .bearer_auth(f["hq_api_key"].as_str().unwrap())
        .json(&serde_json::json!({"name": "S1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = StoreId::parse(st["id"].as_str().unwrap()).unwrap();
    let secret = ports
        .store
        .franchise(&FranchiseId::parse(&fid).unwrap())
        .await
        .unwrap()
        .expect("the franchise")
        .secret;
    let join = format!(
        "/join/{sid}/{}",
        identity::store_enrolment_token(&secret, &sid)
    );

    let phone = "+33655556666";
    let form = get_url(&format!("{url_a}{join}")).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let page = post_url(
        &format!("{url_a}{join}"),
        &[
            ("csrf", &hidden(&form.body, "csrf")),
            ("lang", "en"),
            ("phone", phone),
            ("name", "Camille"),
        ],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let code = notifier_a.last_code(phone).expect("gateway A sent a code");
    let confirm_at = |base: &str, code: String| {
        let url = format!("{base}{join}/code");
        let fields = [
            ("csrf", hidden(&page.body, "csrf")),
            ("challenge", hidden(&page.body, "challenge")),
            ("lang", "en".to_owned()),
            ("code", code),
        ];
        async move {
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_url(&url, &fields).await
        }
    };
    let wrong_at_b = confirm_at(&url_b, wrong(&code)).await;
    assert_eq!(
        wrong_at_b.status,
        StatusCode::BAD_REQUEST,
        "{}",
        wrong_at_b.body
    );
    assert!(
        wrong_at_b.body.contains("4 attempt(s) left"),
        "{}",
        wrong_at_b.body
    );
    assert!(
        !wrong_at_b.body.contains(phone),
        "the phone is shown masked"
    );
    let right_at_b = confirm_at(&url_b, code.clone()).await;
    assert_eq!(
        right_at_b.status,
        StatusCode::SEE_OTHER,
        "{}",
        right_at_b.body
    );
    let location = right_at_b.headers["location"].to_str().unwrap();
    assert!(location.starts_with(&format!("/card/{fid}/")), "{location}");
    let again_at_a = confirm_at(&url_a, code).await;
    assert_eq!(
        again_at_a.status,
        StatusCode::GONE,
        "used once: {}",
        again_at_a.body
    );
}
