//! Members without an app (issue 13, first parts): a store's enrolment QR code as SVG and PNG
//! (decoded back to the store's enrolment URL), its printable poster, the signed card links
//! and the card page, through the API of an in-process platform; forged, expired and foreign
//! links and keys refused. Then the card page and the poster in a real headless Chromium: the
//! balance shown, moved by another purchase at the till on reload, nothing fetched from
//! anywhere, screenshots saved to `target/card-page.png` and `target/enrolment-poster.png`.

use std::path::PathBuf;
use std::time::Duration;

use loyalty_core::identity;
use loyalty_core::ports::StateStore;
use loyalty_domain::{FranchiseId, MemberId, StoreId};
use loyalty_testkit::chromium::{Browser, ChromeDriver};
use loyalty_tests::{assert_problem, spawn_app, TestApp, TestFranchise, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The franchise's secret, read from the store (what only the platform knows).
async fn secret(app: &TestApp, f: &TestFranchise) -> String {
    app.store
        .franchise(&FranchiseId::parse(&f.id).unwrap())
        .await
        .unwrap()
        .expect("the franchise")
        .secret
}

/// The text a QR code holds, from its modules (`dark(x, y)` over `side` modules, quiet zone
/// included), decoded by `rqrr`.
fn decode_modules(side: usize, px: usize, dark: impl Fn(usize, usize) -> bool) -> String {
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(side * px, side * px, |x, y| {
        if dark(x / px, y / px) {
            0
        } else {
            255
        }
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    grids[0].decode().expect("the code decodes").1
}

/// The text of a PNG QR code.
fn decode_png(bytes: &[u8]) -> String {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; dec.output_buffer_size().expect("size")];
    let info = dec.next_frame(&mut buf).expect("a frame");
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    assert_eq!(info.width, info.height, "square");
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img =
        rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * info.line_size + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    grids[0].decode().expect("the code decodes").1
}

/// The text of an SVG QR code (the renderer's one `<path>` of `M x y h w v h H x V y` rects
/// over a viewBox of one unit per module), after checking that it is an SVG document.
fn decode_svg(text: &str) -> String {
    let doc = roxmltree::Document::parse(text).expect("the SVG parses as XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let view: Vec<usize> = root
        .attribute("viewBox")
        .expect("a viewBox")
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(view[0..2], [0, 0]);
    assert_eq!(view[2], view[3], "square");
    let side = view[2];
    let d = root
        .descendants()
        .find(|n| n.has_tag_name("path"))
        .and_then(|n| n.attribute("d"))
        .expect("the modules' path");
    let mut dark = vec![false; side * side];
    // "M3 4h1v1H3V4M5 4h2v1H5V4…"
    for rect in d.split('M').filter(|r| !r.is_empty()) {
        let nums: Vec<usize> = rect
            .split(|c: char| c.is_ascii_alphabetic() || c == ' ')
            .filter(|s| !s.is_empty())
            .map(|n| n.parse().unwrap())
            .collect();
        let (x, y, w, h) = (nums[0], nums[1], nums[2], nums[3]);
        for yy in y..y + h {
            for xx in x..x + w {
                dark[yy * side + xx] = true;
            }
        }
    }
    decode_modules(side, 4, |x, y| dark[y * side + x])
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A page's answer: status, content type, CSP and body.
async fn fetch_page(app: &TestApp, url: &str, lang: &str) -> (StatusCode, String, String, String) {
    let r = app
        .client
        .get(url)
        .header("accept-language", lang)
        .send()
        .await
        .expect("sent");
    let (s, ct, csp) = (
        r.status(),
        header(&r, "content-type"),
        header(&r, "content-security-policy"),
    );
    (s, ct, csp, r.text().await.expect("text"))
}

/// A second store of `f`, with its key.
async fn another_store(app: &TestApp, f: &TestFranchise) -> (String, String) {
    let r = app
        .post(
            &format!("/v1/franchises/{}/stores", f.id),
            &f.hq_key,
            &json!({"name": "Store 2"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let s: Value = r.json().await.unwrap();
    (
        s["id"].as_str().unwrap().to_owned(),
        s["api_key"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn enrolment_qr_codes_decode_to_the_stores_enrolment_url_for_its_franchise_only() {
    let app = spawn_app().await;
    let a = app.franchise("Café Lumière").await;
    let b = app.franchise("Franchise B").await;
    let (other_store, other_key) = another_store(&app, &a).await;
    let token = identity::store_enrolment_token(
        &secret(&app, &a).await,
        &StoreId::parse(&a.store_id).unwrap(),
    );
    let expected = format!("{}/join/{}/{token}", app.address, a.store_id);
    let path = |f: &TestFranchise, sid: &str, what: &str| {
        format!("/v1/franchises/{}/stores/{sid}/{what}", f.id)
    };

    // SVG, with the HQ key and with the store's own key: the same code, the enrolment URL.
    let mut svgs = Vec::new();
    for key in [&a.hq_key, &a.store_key] {
        let r = app
            .get(&path(&a, &a.store_id, "enrolment-qr.svg"), key)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), "image/svg+xml");
        svgs.push(r.text().await.unwrap());
    }
    assert_eq!(svgs[0], svgs[1], "stable");
    assert_eq!(decode_svg(&svgs[0]), expected);

    // PNG: its signature, and the same URL decoded from its pixels.
    let r = app
        .get(&path(&a, &a.store_id, "enrolment-qr.png"), &a.store_key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "image/png");
    let png = r.bytes().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(decode_png(&png), expected);

    // Another store's code is another URL, and its token does not open this store.
    let r = app
        .get(&path(&a, &other_store, "enrolment-qr.png"), &a.hq_key)
        .await;
    let other_url = decode_png(&r.bytes().await.unwrap());
    assert_ne!(other_url, expected);
    let other_token = other_url.rsplit('/').next().unwrap().to_owned();

    // The URL opens the store's page; a forged or swapped token is 404.
    let (s, ct, csp, body) = fetch_page(&app, &expected, "fr").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(body.contains("Café Lumière") && body.contains("Store 1"));
    assert!(body.contains("50\u{a0}points offerts"), "{body}");
    for bad in [
        format!("{}/join/{}/aaaaaaaaaaaaaaaa", app.address, a.store_id),
        format!("{}/join/{}/{other_token}", app.address, a.store_id),
        format!("{}/join/{}/{token}", app.address, b.store_id),
        format!("{}/join/nope/{token}", app.address),
    ] {
        let (s, ct, _, body) = fetch_page(&app, &bad, "en").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
        assert!(ct.starts_with("text/html"), "{bad}: {ct}");
        assert!(body.contains("Unknown code"), "{bad}: {body}");
    }

    // Keys: another franchise's is 404, another store's 403, the admin's 403, none 401.
    for what in ["enrolment-qr.svg", "enrolment-qr.png", "enrolment-poster"] {
        let own = path(&a, &a.store_id, what);
        for key in [&b.hq_key, &b.store_key] {
            assert_problem(app.get(&own, key).await, StatusCode::NOT_FOUND, "not-found").await;
        }
        // B's store under A's franchise, with A's HQ key: unknown.
        let r = app.get(&path(&a, &b.store_id, what), &a.hq_key).await;
        assert_problem(r, StatusCode::NOT_FOUND, "not-found").await;
        assert_problem(
            app.get(&own, &other_key).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_problem(
            app.get(&own, ADMIN_KEY).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        let r = app.client.get(app.url(&own)).send().await.unwrap();
        assert_problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
        let r = app.get(&format!("{own}?size=a4"), &a.hq_key).await;
        assert_problem(r, StatusCode::BAD_REQUEST, "invalid-query").await;
    }

    // The poster: the franchise, the store, the promise, the code; in French by default.
    let r = app
        .get(&path(&a, &a.store_id, "enrolment-poster"), &a.hq_key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "content-type").starts_with("text/html"));
    let csp = header(&r, "content-security-policy");
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("<html lang=\"fr\">"));
    assert!(html.contains("Café Lumière") && html.contains("Store 1"));
    assert!(
        html.contains("50\u{a0}points offerts aujourd’hui"),
        "{html}"
    );
    assert!(html.contains(&format!("data-url=\"{expected}\"")), "{html}");
    assert!(html.contains("@page{size:A5 portrait"), "{html}");
    assert!(html.contains("<svg class=\"qr\""));
    let r = app
        .get(
            &format!(
                "{}?lang=en&size=a6",
                path(&a, &a.store_id, "enrolment-poster")
            ),
            &a.store_key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("<html lang=\"en\">"));
    assert!(html.contains("50\u{a0}points today"), "{html}");
    assert!(html.contains("@page{size:A6 portrait"), "{html}");
    let r = app
        .get(
            &format!("{}?lang=de", path(&a, &a.store_id, "enrolment-poster")),
            &a.hq_key,
        )
        .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid-query").await;
}

/// A card link (`GET /v1/members/{id}/card-link`) and what it opens.
async fn card_link(app: &TestApp, key: &str, member: &str) -> Value {
    let r = app
        .get(&format!("/v1/members/{member}/card-link"), key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "cache-control"), "no-store");
    r.json().await.unwrap()
}

#[tokio::test]
async fn card_links_open_the_members_card_and_forged_or_expired_ones_do_not() {
    let app = spawn_app().await;
    let a = app.franchise("Café Lumière").await;
    let b = app.franchise("Franchise B").await;
    let m = app.enrol(&a, "+33611111111").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.purchase(&a, "card-1", &m, 1250).await.status(),
        StatusCode::OK
    );
    let status = app.status(&a, &m).await;
    let points = status["points"].as_u64().unwrap();
    assert!(points > 50, "the bonus and the purchase: {status}");

    // A link from the store or from HQ; it opens the card, in the asked language.
    let link = card_link(&app, &a.store_key, &m).await;
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/card/{}/{m}?expires=", app.address, a.id)),
        "{url}"
    );
    let expires_at = link["expires_at"].as_str().unwrap();
    assert!(
        expires_at.ends_with('Z') && expires_at.len() == 20,
        "{expires_at}"
    );
    card_link(&app, &a.hq_key, &m).await;
    let (s, ct, csp, html) = fetch_page(&app, &url, "fr-FR,fr;q=0.9").await;
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(ct.starts_with("text/html"));
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert!(!html.contains("<script"), "no script");
    assert!(
        html.contains(&format!("id=\"balance\" data-points=\"{points}\"")),
        "{html}"
    );
    assert!(html.contains("Ma carte de fidélité"));
    assert!(html.contains("id=\"tier\">Bronze<"), "{html}");
    assert!(
        html.contains("data-stamps=\"1\" data-size=\"10\""),
        "{html}"
    );
    let token = identity::qr_token(&secret(&app, &a).await, &MemberId::parse(&m).unwrap());
    assert!(
        html.contains(&format!("data-token=\"{token}\"")),
        "the member's QR"
    );
    assert_eq!(
        html.matches("<li data-seq=").count(),
        2,
        "two ledger entries"
    );
    assert!(html.contains("Bonus de bienvenue") && html.contains("Achat"));
    let (_, _, _, en) = fetch_page(&app, &format!("{url}&lang=en"), "fr").await;
    assert!(
        en.contains("My loyalty card") && en.contains("Welcome bonus"),
        "{en}"
    );
    let (_, _, _, en) = fetch_page(&app, &url, "en-US,en;q=0.9").await;
    assert!(en.contains("<html lang=\"en\">"));

    // Forged: another signature, another expiry, another franchise, another member.
    let (base, query) = url.split_once('?').unwrap();
    let params: std::collections::HashMap<&str, &str> =
        query.split('&').filter_map(|p| p.split_once('=')).collect();
    let (expires, sig) = (params["expires"], params["sig"]);
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == 'a' {
                    'b'
                } else {
                    'a'
                }
            } else {
                c
            }
        })
        .collect();
    let other = app.enrol(&a, "+33622222222").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let later: i64 = expires.parse::<i64>().unwrap() + 86_400;
    for (forged, why) in [
        (
            format!("{base}?expires={expires}&sig={flipped}"),
            "signature",
        ),
        (format!("{base}?expires={later}&sig={sig}"), "expiry"),
        (
            format!(
                "{}/card/{}/{m}?expires={expires}&sig={sig}",
                app.address, b.id
            ),
            "franchise",
        ),
        (
            format!(
                "{}/card/{}/{other}?expires={expires}&sig={sig}",
                app.address, a.id
            ),
            "member",
        ),
    ] {
        let (s, ct, _, html) = fetch_page(&app, &forged, "en").await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{why}: {html}");
        assert!(ct.starts_with("text/html"), "{why}");
        assert!(html.contains("Invalid link"), "{why}: {html}");
        assert!(!html.contains("data-points"), "{why}: shows nothing");
    }

    // Expired: a genuine signature of a past expiry.
    let secret_a = secret(&app, &a).await;
    let member = MemberId::parse(&m).unwrap();
    let past = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64)
        - 60;
    let old = identity::card_link_signature(&secret_a, &member, past);
    let (s, _, _, html) = fetch_page(
        &app,
        &format!("{base}?expires={past}&sig={old}&lang=fr"),
        "en",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(html.contains("Lien expiré"), "{html}");

    // Unknown: no such member (signed all the same), franchise, or a link cut short.
    let stranger = MemberId::parse("mnosuchmember000000000000").unwrap();
    let future = past + 3600;
    let sig_stranger = identity::card_link_signature(&secret_a, &stranger, future);
    for (unknown, why) in [
        (
            format!(
                "{}/card/{}/{stranger}?expires={future}&sig={sig_stranger}",
                app.address, a.id
            ),
            "member",
        ),
        (
            format!(
                "{}/card/f_nope/{m}?expires={expires}&sig={sig}",
                app.address
            ),
            "franchise",
        ),
        (format!("{base}?expires={expires}"), "no signature"),
        (base.to_owned(), "no query"),
        (
            format!("{base}?expires=soon&sig={sig}"),
            "expiry not a number",
        ),
    ] {
        let (s, _, _, html) = fetch_page(&app, &unknown, "en").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{why}: {html}");
        assert!(html.contains("Card not found"), "{why}: {html}");
    }

    // The API: another franchise's key learns nothing; days are bounded.
    let r = app
        .get(&format!("/v1/members/{m}/card-link"), &b.store_key)
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "unknown-member").await;
    let r = app
        .get(&format!("/v1/members/{m}/card-link"), ADMIN_KEY)
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    for q in ["valid_days=0", "valid_days=91", "valid_days=x", "days=3"] {
        let r = app
            .get(&format!("/v1/members/{m}/card-link?{q}"), &a.store_key)
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
    }
    let r = app
        .get(
            &format!("/v1/members/{m}/card-link?valid_days=1"),
            &a.store_key,
        )
        .await;
    let v: Value = r.json().await.unwrap();
    let exp: i64 = v["url"].as_str().unwrap().split("expires=").nth(1).unwrap()[..10]
        .parse()
        .unwrap();
    assert!((exp - past - 60 - 86_400).abs() < 120, "a day from now");
}

/// Signs in to the dashboard with the HQ key (the poster page of a store is there).
async fn sign_in(b: &Browser, base: &str, key: &str) {
    b.goto(&format!("{base}/dashboard")).await.expect("loaded");
    let input = b.find("#sign-in input[name=key]").await.expect("the form");
    b.send_keys(&input, key).await.expect("typed");
    let submit = b
        .find("#sign-in button[type=submit]")
        .await
        .expect("button");
    b.click(&submit).await.expect("submitted");
    b.wait_for("return document.readyState === 'complete'", WAIT)
        .await
        .expect("answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_page_and_the_poster_in_a_headless_browser() {
    if let Err(reason) = ChromeDriver::available() {
        println!("SKIPPED: {reason}");
        return;
    }
    let app = spawn_app().await;
    let f = app.franchise("Café Lumière").await;
    let base = app.address.clone();

    // Enrolled and a purchase at the till, through the API.
    let m = app.enrol(&f, "+33633333333").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.purchase(&f, "b-1", &m, 1250).await.status(),
        StatusCode::OK
    );
    let first = app.status(&f, &m).await["points"].as_u64().unwrap();
    let url = card_link(&app, &f.store_key, &m).await["url"]
        .as_str()
        .unwrap()
        .to_owned();

    let driver = ChromeDriver::start().expect("chromedriver starts");
    let b = driver.browser().await.expect("a browser");
    b.resize(390, 844).await.expect("a phone's size");
    b.goto(&format!("{url}&lang=fr")).await.expect("loaded");
    assert_eq!(loyalty_tests::card_page_points(&b, WAIT).await, first);
    let shown = b
        .execute(
            "return [document.getElementById('balance').textContent, \
             document.getElementById('tier').textContent, \
             document.querySelectorAll('#stamp-card circle.stamp.filled').length, \
             document.querySelectorAll('#stamp-card circle.stamp').length, \
             document.querySelectorAll('#rewards li').length, \
             document.querySelectorAll('#activity li').length, \
             document.querySelector('#member-qr svg').getBoundingClientRect().width, \
             getComputedStyle(document.getElementById('balance')).fontSize, \
             document.documentElement.scrollWidth <= window.innerWidth, \
             document.querySelector('h1').textContent, \
             document.getElementById('tier-progress').value]",
            vec![],
        )
        .await
        .expect("the page's parts");
    assert_eq!(shown[0], json!(first.to_string()), "{shown}");
    assert_eq!(shown[1], json!("Bronze"), "{shown}");
    assert_eq!(shown[2], json!(1), "one stamp: {shown}");
    assert_eq!(shown[3], json!(10), "a card of 10: {shown}");
    assert_eq!(shown[4], json!(2), "the catalogue: {shown}");
    assert_eq!(shown[5], json!(2), "bonus and purchase: {shown}");
    assert!(
        shown[6].as_f64().unwrap() > 100.0,
        "the QR is drawn: {shown}"
    );
    assert_eq!(
        shown[7],
        json!("48px"),
        "the inline style applies (allowed by its hash): {shown}"
    );
    assert_eq!(shown[8], json!(true), "fits a phone: {shown}");
    assert_eq!(shown[9], json!("Ma carte de fidélité"), "{shown}");
    assert_eq!(shown[10], json!(1250), "progress in cents: {shown}");
    // Nothing was fetched: the page is one document.
    let loaded = b
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .expect("entries");
    assert_eq!(loaded, json!([]), "no other request");
    let png = b.screenshot_full_page().await.expect("screenshot");
    let target = repo_root().join("target");
    std::fs::create_dir_all(&target).expect("target/");
    std::fs::write(target.join("card-page.png"), &png).expect("saved");
    println!("screenshot: {}", target.join("card-page.png").display());

    // Another purchase at the till: the balance moves on reload.
    assert_eq!(
        app.purchase(&f, "b-2", &m, 9000).await.status(),
        StatusCode::OK
    );
    let second = app.status(&f, &m).await["points"].as_u64().unwrap();
    assert!(second > first);
    b.goto(&url).await.expect("reloaded");
    assert_eq!(loyalty_tests::card_page_points(&b, WAIT).await, second);
    let after = b
        .execute(
            "return [document.querySelectorAll('#activity li').length, \
             document.querySelectorAll('#stamp-card circle.stamp.filled').length, \
             document.querySelector('h1').textContent, \
             document.querySelector('#rewards li[data-reward=free-coffee]').dataset.available]",
            vec![],
        )
        .await
        .expect("the page's parts");
    assert_eq!(after[0], json!(3), "{after}");
    assert_eq!(after[1], json!(2), "{after}");
    assert_eq!(
        after[2],
        json!("My loyalty card"),
        "English, as the browser asks: {after}"
    );
    assert_eq!(
        after[3],
        json!(if second >= 100 { "true" } else { "false" }),
        "{after}"
    );

    // A forged link: the error page, nothing of the card.
    b.goto(&url.replace("sig=", "sig=x")).await.expect("loaded");
    let err = b.find("#error").await.expect("an error page");
    assert_eq!(
        b.attr(&err, "data-status").await.expect("attr").as_deref(),
        Some("403")
    );
    assert!(b.find_all("#balance").await.expect("find").is_empty());

    // The poster, printed from the dashboard (its HQ session): the store's link there.
    b.resize(1000, 1200).await.expect("resized");
    sign_in(&b, &base, &f.hq_key).await;
    let selector = format!(
        "#posters li[data-store-id='{}'] a[href$='/poster']",
        f.store_id
    );
    // The sign-in's answer may still be loading when the old page reads `complete`: wait for
    // the dashboard's link itself.
    b.wait_for(
        &format!("return document.querySelector(\"{selector}\") !== null"),
        WAIT,
    )
    .await
    .expect("the dashboard, signed in");
    let link = b
        .find(&selector)
        .await
        .expect("the store's poster on the dashboard");
    b.click(&link).await.expect("followed");
    let poster = b
        .wait_for(
            "const p = document.getElementById('poster'); return p && \
             [document.getElementById('promise').textContent, \
              document.getElementById('franchise').textContent, \
              document.getElementById('store').textContent, p.dataset.url, \
              document.querySelector('#enrolment-qr svg').getBoundingClientRect().width, \
              p.getBoundingClientRect().width, getComputedStyle(p).display]",
            WAIT,
        )
        .await
        .expect("the poster");
    assert_eq!(poster[0], json!("50\u{a0}points today"), "{poster}");
    assert_eq!(poster[1], json!("Café Lumière"), "{poster}");
    assert_eq!(poster[2], json!("Store 1"), "{poster}");
    assert!(
        poster[3]
            .as_str()
            .unwrap()
            .starts_with(&format!("{base}/join/{}/", f.store_id)),
        "{poster}"
    );
    assert!(poster[4].as_f64().unwrap() > 200.0, "a big code: {poster}");
    // 148 mm at 96 px per inch: the A5 sheet, styled.
    assert!(
        (poster[5].as_f64().unwrap() - 559.4).abs() < 2.0,
        "{poster}"
    );
    assert_eq!(poster[6], json!("flex"), "{poster}");
    let png = b.screenshot_full_page().await.expect("screenshot");
    std::fs::write(target.join("enrolment-poster.png"), &png).expect("saved");
    println!(
        "screenshot: {}",
        target.join("enrolment-poster.png").display()
    );
    if std::env::var("LOYALTY_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let img = repo_root().join("docs/img");
        for name in ["card-page.png", "enrolment-poster.png"] {
            std::fs::copy(target.join(name), img.join(name)).expect("docs/img updated");
        }
    }
    b.close().await.expect("closed");
    drop(driver);
}
